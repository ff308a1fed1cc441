import json

import numpy as np
import pytest
import soundfile as sf

from medasr.config import load_config
from medasr.voices import parse_voice
from medasr.data.lexicon import CATEGORIES, Lexicon, Term, core_lexicon
from medasr.data.manifest import ManifestError, read_manifest, write_manifest
from medasr.data.synth import add_noise, plan_corpus


def test_manifest_round_trip(tmp_path):
    rows = [
        {"audio_filepath": "/a.wav", "duration": 1.5, "text": "Start metformin — 500 mg", "term": "metformin", "entity_category": "drug"},
        {"audio_filepath": "/b.wav", "duration": 2.0, "text": "naïve café", "extra": [1, 2]},
    ]
    p = tmp_path / "m.json"
    assert write_manifest(p, rows) == 2
    assert read_manifest(p) == rows


def test_manifest_errors_name_the_line(tmp_path):
    with pytest.raises(ManifestError, match="use the .json suffix"):
        write_manifest(tmp_path / "m.jsonl", [])
    p = tmp_path / "bad.json"
    p.write_text('{"audio_filepath": "a", "duration": 1, "text": "x"}\n{"audio_filepath": "b", "text": "y"}\n')
    with pytest.raises(ManifestError, match=r"bad.json:2: missing field\(s\) duration"):
        read_manifest(p)
    p.write_text('{"audio_filepath": "a", "duration": 1, "text": "x"}\nnot json\n')
    with pytest.raises(ManifestError, match="bad.json:2: malformed JSON"):
        read_manifest(p)


def test_core_lexicon_size_and_categories():
    lex = core_lexicon()
    assert len(lex) >= 150
    by = lex.by_category()
    assert set(by) == set(CATEGORIES) and all(len(v) >= 25 for v in by.values())


def test_lexicon_lookup_multiword_and_hyphen():
    lex = core_lexicon()
    assert lex.get("Piperacillin Tazobactam").term == "piperacillin-tazobactam"
    assert lex.get("D Dimer").entity_category == "lab"
    found = [(m.term.term, m.term.entity_category) for m in lex.tag("Hx of Type Two Diabetes; on insulin glargine and D-dimer pending.")]
    assert found == [("type two diabetes", "condition"), ("insulin glargine", "drug"), ("d-dimer", "lab")]


def test_lexicon_longest_match_first():
    lex = Lexicon([Term("heart", "anatomy"), Term("heart failure", "condition")])
    assert [m.term.term for m in lex.tag("acute heart failure and a big heart")] == ["heart failure", "heart"]
    with pytest.raises(ValueError, match="unknown category"):
        Lexicon([Term("x", "gadget")])


def _plan(seed):
    s = load_config("tiny").data.synth
    return plan_corpus(
        core_lexicon(), seed=seed, train_voices=list(s.train_voices), test_voices=list(s.test_voices),
        unseen_fraction=0.2, train_per_term=3, val_per_term=1, test_per_term=2, unseen_test_per_term=2,
        rates=(140, 190), noise_levels=["clean", "snr15", "snr5"], test_seen_carrier_per_term=1,
    )


def test_plan_is_deterministic_and_split_is_honest():
    a, b = _plan(7), _plan(7)
    assert [(u.text, u.voice_id, u.noise_level) for u in a] == [(u.text, u.voice_id, u.noise_level) for u in b]
    assert [u.text for u in _plan(8)] != [u.text for u in a]
    train_terms = {u.term.term for u in a if u.split == "train"}
    unseen = {u.term.term for u in a if u.split == "test" and not u.term_seen}
    assert unseen and not unseen & train_terms  # held-out terms never reach training
    train_voices = {u.voice_id for u in a if u.split == "train"}
    # every term, seen or held out, is tested once by a voice never used in training and once by a training voice:
    # both kinds of term meet the same speaker mix, so their KERs differ only by the term
    for seen in (True, False):
        test = [u for u in a if u.split == "test" and u.term_seen is seen and not u.carrier_seen]
        new = [u for u in test if u.voice_id not in train_voices]
        assert {u.voice_id for u in new} == set(load_config("tiny").data.synth.test_voices)
        assert len(new) * 2 == len(test)
        by_term: dict = {}
        for u in test:
            by_term.setdefault(u.term.term, set()).add(u.voice_id in train_voices)
        assert all(v == {True, False} for v in by_term.values())
    for u in a:  # every sentence really contains its term
        assert u.term.term.lower() in u.text.lower()


def test_test_sentences_are_new_carriers():
    """Every test row's sentence pattern is one no training or validation row used, except the rows
    that reuse a training carrier on purpose (carrier_seen), one per term, both voices across terms."""
    a = _plan(7)
    train, val = ({u.carrier for u in a if u.split == sp} for sp in ("train", "val"))
    new = [u for u in a if u.split == "test" and not u.carrier_seen]
    reused = [u for u in a if u.split == "test" and u.carrier_seen]
    assert new and not {u.carrier for u in new} & (train | val) and not train & val
    assert {u.carrier for u in reused} <= train
    assert len(reused) == len({u.term.term for u in a if u.split == "test"})  # one per term
    assert {u.voice_id in {v.voice_id for v in a if v.split == "train"} for u in reused} == {True, False}
    for u in reused:  # reused pattern, never the term's own training sentence
        assert u.text not in {t.text for t in a if t.split == "train" and t.term == u.term}


def _ipa(voice: str, text: str) -> str:
    import subprocess

    return subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice, text], capture_output=True, text=True, check=True).stdout


def test_test_voice_is_a_new_speaker_and_accent():
    """The old test voice (en-gb-scotland+f2) was a pitch variant of two training voices, with
    byte-identical phonemes. The test voice's language variant must be used by no training voice, and its phonemes
    must differ from every one of theirs."""
    said = "The water in the car was hot. Bad dog, start the warfarin."
    used = set()
    for preset in ("tiny", "mini", "canary-qwen-2.5b"):
        cfg = load_config(preset)
        used |= set(cfg.data.synth.train_voices)
    espeak = {parse_voice(v).spec for v in used if parse_voice(v).engine == "espeak"}  # Kokoro: test_voices.py
    accents = {v.split("+")[0] for v in espeak}
    for preset in ("tiny", "mini", "canary-qwen-2.5b"):
        for voice in map(parse_voice, load_config(preset).data.synth.test_voices):
            if voice.engine != "espeak":
                continue
            assert voice.spec not in espeak and voice.accent not in accents, (preset, voice)
            ipa = _ipa(voice.spec, said)
            assert all(ipa != _ipa(a, said) for a in accents), voice


def test_noise_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    noisy = add_noise(clean, 5.0, np.random.default_rng(1))
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(5.0, abs=0.2)
    assert add_noise(clean, None, rng) is clean


def test_built_corpus(tiny_run):
    cfg, run_dir, _ = tiny_run
    rep = json.loads((run_dir / "data" / "build_report.json").read_text())
    train = read_manifest(run_dir / "data" / "train.json")
    test = read_manifest(run_dir / "data" / "test.json")
    assert rep["splits"]["train"]["rows"] == len(train) > 300
    generic = [r for r in test if r["source"] == "generic-espeak"]  # the forgetting slice: no term, clean
    assert len(generic) == cfg.data.synth.generic_test_rows and not any("term" in r for r in generic)
    test = [r for r in test if r["source"] == "synthetic-espeak"]
    assert all(r["cluster"] == f"term:{r['term'].lower()}" for r in test)
    for r in train[:20] + test[:20] + generic[:3]:
        info = sf.info(r["audio_filepath"])
        assert info.samplerate == 16000 and info.channels == 1
        assert r["duration"] == pytest.approx(info.frames / 16000, abs=1e-3)
    for r in train[:20] + test[:20]:
        assert {"term", "entity_category", "voice_id", "noise_level", "context_type", "carrier_seen"} <= r.keys()
    assert any(not r["term_seen"] for r in test) and any(r["term_seen"] for r in test)
    train_terms = {r["term"] for r in train}
    assert all(r["term_seen"] == (r["term"] in train_terms) for r in test)
    val = read_manifest(run_dir / "data" / "val.json")
    train_voices = {r["voice_id"].split(":")[1] for r in train}
    assert all(r["speaker_seen"] == (r["voice_id"].split(":")[1] in train_voices) for r in test + generic + val)
    assert all(r["speaker_seen"] for r in val)
    assert all(not r["carrier_seen"] for r in val)  # validation carriers: selection rewards new sentences
    test += generic
    # synthetic rows have no `speaker` column: the report counts their voices (it said 0)
    assert rep["splits"]["train"]["speakers"] == len(train_voices) == len(cfg.data.synth.train_voices)
    assert rep["splits"]["test"]["speakers"] == len({r["voice_id"].split(":")[1] for r in test}) == len(train_voices) + 1
    assert rep["splits"]["test"]["speaker_new_rows"] == sum(not r["speaker_seen"] for r in test) > 0
    assert rep["splits"]["test"]["speaker_seen_rows"] == sum(r["speaker_seen"] for r in test) > 0


def test_extended_lexicon(tmp_path):
    import time
    from collections import Counter

    from medasr.data.lexicon_sources import condition_name, extended_lexicon

    lex = extended_lexicon(tmp_path / "ext.tsv")
    n = Counter(t.entity_category for t in lex.terms)
    assert n["drug"] > 10_000 and n["condition"] > 2_000 and len(lex) >= len(core_lexicon())
    assert lex.get("metformin").source == "medasr-core"  # curated entries win
    assert lex.get("istradefylline").entity_category == "drug"
    assert [m.term.term for m in lex.tag("I drink water and coffee and sleep at night")] == []  # everyday words
    assert [m.term.term for m in lex.tag("type 2 diabetes mellitus and essential hypertension")] == ["type 2 diabetes mellitus", "essential hypertension"]
    assert condition_name("Pneumonia, unspecified organism") == "pneumonia"
    assert condition_name("Sedative, hypnotic, or anxiolytic related disorders") is None
    assert (tmp_path / "ext.tsv").exists() and len(extended_lexicon(tmp_path / "ext.tsv")) == len(lex)  # cache
    sents = ["She has asthma and takes atorvastatin, had pneumonia last year, is 64 and doing well today."] * 5000
    t = time.perf_counter()
    for s in sents:
        lex.tag(s)
    assert len(sents) / (time.perf_counter() - t) >= 10_000  # sentences per second on one core
