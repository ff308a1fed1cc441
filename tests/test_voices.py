"""Synthetic voices by engine (espeak-ng, Kokoro-82M), the Kokoro install's checksum, the synthesis cache,
text normalisation for the synthesiser, parallel rendering, and held-out voices that are really new speakers."""

import hashlib

import numpy as np
import pytest

from medasr.config import load_config
from medasr.data import kokoro, synth
from medasr.data.lexicon import core_lexicon
from medasr.data.spoken import spoken
from medasr.voices import held_out_violations, parse_voice
from medasr.evaluate.metrics import design_cells, held_out_voice_kinds, voice_slices
from medasr.fingerprint import file_sha256

KOKORO = kokoro.installed(kokoro.default_dir())
needs_kokoro = pytest.mark.skipif(not KOKORO, reason="Kokoro not installed (scripts/setup.sh installs it)")


def test_voice_strings():
    v = parse_voice("kokoro:af_heart*3+af_bella")
    assert v.engine == "kokoro" and v.accent == "en-us" and dict(v.packs) == {"af_heart": 0.75, "af_bella": 0.25}
    assert v.components == {"kokoro:af_heart", "kokoro:af_bella"}
    e = parse_voice("en-gb-scotland+m3")  # a bare spec is espeak-ng, as the presets always wrote it
    assert e.engine == "espeak" and e.accent == "en-gb-scotland" and e.name == "espeak:en-gb-scotland+m3"
    assert parse_voice("kokoro:bm_george").accent == "en-gb"
    for bad, why in (("kokoro:zf_xiaobei", "not an English"), ("kokoro:af_heart+bm_lewis", "one accent"),
                     ("piper:amy", "unknown engine"), ("kokoro:af_heart*0", "> 0")):
        with pytest.raises(ValueError, match=why):
            parse_voice(bad)


def test_held_out_voices_are_new_speakers():
    train = ["kokoro:af_heart", "kokoro:am_adam*0.5+am_michael*0.5", "en-us"]
    assert held_out_violations(train, ["kokoro:af_bella", "kokoro:bf_emma", "espeak:en-us-nyc+f2"]) == []
    # a blend containing a training pack is not a new speaker; neither is a training voice under another spelling
    assert held_out_violations(train, ["kokoro:af_bella*0.5+af_heart*0.5", "espeak:en-us"]) == [
        "kokoro:af_bella*0.5+af_heart*0.5", "espeak:en-us"]
    with pytest.raises(ValueError, match="new speaker"):
        load_config("tiny", ["data.synth.train_voices=[kokoro:af_heart*0.5+af_bella*0.5]",
                             "data.synth.test_voices=[kokoro:af_bella]"])
    assert load_config("tiny", ["data.synth.test_voices=[kokoro:am_fenrir]"])


def test_held_out_voices_never_appear_in_training():
    train_voices = ["kokoro:af_heart", "kokoro:am_adam", "kokoro:af_bella*0.6+am_michael*0.4"]
    test_voices = ["kokoro:bf_emma", "kokoro:af_nicole", "espeak:en-us-nyc+f2"]  # new accent, new speaker, new engine
    plan = synth.plan_corpus(core_lexicon(), seed=1, train_voices=train_voices, test_voices=test_voices,
                             unseen_fraction=0.2, train_per_term=2, val_per_term=1, test_per_term=2,
                             unseen_test_per_term=2, rates=(140, 190), noise_levels=["clean"])
    trained = set().union(*(parse_voice(u.voice_id).components for u in plan if u.split in ("train", "val")))
    test = [u for u in plan if u.split == "test"]
    assert not trained & set().union(*(parse_voice(v).components for v in test_voices))
    assert {u.voice_id for u in test} >= set(test_voices)  # every held-out voice speaks test rows
    with pytest.raises(ValueError, match="new speaker"):
        synth.plan_corpus(core_lexicon(), seed=1, train_voices=train_voices, test_voices=["kokoro:am_michael"],
                          unseen_fraction=0.2, train_per_term=1, val_per_term=1, test_per_term=1,
                          unseen_test_per_term=1, rates=(140, 190), noise_levels=["clean"])


def test_assembly_refuses_a_wrong_checksum(tmp_path):
    parts = []
    for i, data in enumerate((b"kokoro ", b"part ", b"bytes")):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(data)
    good = hashlib.sha256(b"kokoro part bytes").hexdigest()
    assert kokoro.assemble(parts, tmp_path / "m.onnx", good).read_bytes() == b"kokoro part bytes"
    with pytest.raises(kokoro.KokoroError, match="SHA-256"):
        kokoro.assemble(parts[::-1], tmp_path / "bad.onnx", good)  # out of order
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.partial"))
    with pytest.raises(kokoro.KokoroError, match="SHA-256"):
        kokoro.assemble(parts, tmp_path / "m2.onnx")  # the real pin: these are not the published parts


@needs_kokoro
def test_the_installed_model_is_the_published_one():
    d = kokoro.default_dir()
    assert file_sha256(d / kokoro.MODEL_FILE) == kokoro.KOKORO_SHA256
    packs = sorted(p.stem for p in (d / "voices").glob("*.bin"))
    assert len(packs) == 28 and {p[:2] for p in packs} == {"af", "am", "bf", "bm"}
    assert (d / "voices" / "af_heart.bin").stat().st_size == 510 * 256 * 4


@pytest.mark.parametrize("written, said", [
    ("Give 2 g now.", "Give 2 grams now."),
    ("Take 5 mL orally.", "Take 5 milliliters orally."),
    ("Give 1 g IV", "Give 1 gram I V"),
    ("BP 120/80 mmHg", "B P 120 over 80 millimeters of mercury"),
    ("Start 500mg PO b.i.d.", "Start 500 milligrams P O b.i.d."),
    ("q4h PRN", "every 4 hours P R N"),
    ("COPD with T2DM and B12", "C O P D with T 2 D M and B 12"),
    ("COVID-19 and NSAIDs", "COVID-19 and NSAIDs"),
    ("glucose 5.4 mmol/L", "glucose 5.4 millimoles per liter"),
])
def test_normalisation_for_the_synthesiser(written, said):
    assert spoken(written, "en-gb") == said


def test_drug_stress_overrides_are_american_only():
    assert spoken("Continue lisinopril daily.") == "Continue [lisinopril](/lIsˈɪnəpɹɪl/) daily."
    assert spoken("Continue lisinopril daily.", "en-gb") == "Continue lisinopril daily."


def test_synthesis_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDASR_TTS_CACHE", str(tmp_path / "cache"))
    first = synth.speak("Continue warfarin daily.", "en-us", 160)
    assert len(list((tmp_path / "cache").rglob("*.flac"))) == 1

    def boom(*a, **k):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(synth, "_espeak", boom)
    assert np.array_equal(synth.speak("Continue warfarin daily.", "en-us", 160), first)  # from the cache
    with pytest.raises(AssertionError, match="again"):
        synth.speak("Continue warfarin daily.", "en-us", 161)  # another rate is other audio


@needs_kokoro
def test_kokoro_speaks_deterministically_and_blends_are_new_voices(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDASR_TTS_CACHE", str(tmp_path / "cache"))
    k = synth._kokoro()
    v = parse_voice("kokoro:af_heart")
    a, b = k.speak("Start metoprolol twice daily.", v), k.speak("Start metoprolol twice daily.", v)
    assert np.array_equal(a, b) and 1.0 < len(a) / 16000 < 4.0
    blend = k.speak("Start metoprolol twice daily.", parse_voice("kokoro:af_heart*0.5+af_bella*0.5"))
    assert not np.array_equal(a[: len(blend)], blend[: len(a)])
    slow = k.speak("Start metoprolol twice daily.", v, speed=0.8)
    assert len(slow) > 1.15 * len(a)
    long = " ".join(["Continue the current medication and review the blood results next week."] * 12)
    chunks = k.chunks(k.phonemes(long, "en-us"))  # > 510 phonemes is split at word boundaries
    assert len(chunks) > 1 and all(0 < len(k.ids(c)) <= kokoro.MAX_PHONEMES for c in chunks)
    assert "".join(chunks).replace(" ", "") == k.phonemes(long, "en-us").replace(" ", "")


@pytest.mark.parametrize("engine", ["espeak", pytest.param("kokoro", marks=needs_kokoro)])
def test_parallel_rendering_matches_one_worker(engine, tmp_path, monkeypatch):
    """Kokoro renders in worker processes, espeak-ng in threads; either way the rows, in plan order, and the audio
    are those of one worker."""
    monkeypatch.setenv("MEDASR_TTS_CACHE", str(tmp_path / "cache"))
    train, test = (["en-us", "en-gb"], ["en-us-nyc+f2"]) if engine == "espeak" else (["kokoro:af_heart"], ["kokoro:bm_lewis"])
    plan = synth.plan_corpus(core_lexicon(), seed=3, train_voices=train, test_voices=test, unseen_fraction=0.2,
                             train_per_term=1, val_per_term=0, test_per_term=1, unseen_test_per_term=1,
                             rates=(150, 170), noise_levels=["clean", "snr15"])[: 8 if engine == "espeak" else 3]
    one = synth.synthesize(plan, tmp_path / "a", workers=1)
    monkeypatch.setenv("MEDASR_TTS_CACHE", str(tmp_path / "cache2"))  # synthesised again, not read back
    two = synth.synthesize(plan, tmp_path / "b", workers=2)
    assert len(list((tmp_path / "cache2").rglob("*.flac"))) == len(plan)
    assert [r["id"] for r in two] == [u.id for u in plan]  # plan order
    for r1, r2 in zip(one, two):
        assert r1["duration"] == r2["duration"] and r1["voice_id"] == r2["voice_id"] and r1["engine"] == engine
        assert open(r1["audio_filepath"], "rb").read() == open(r2["audio_filepath"], "rb").read()


def test_metrics_slice_by_engine_accent_and_voice():
    rows = [{"engine": "kokoro", "accent": "en-us", "voice_id": "kokoro:af_heart:rate150"},
            {"engine": "kokoro", "accent": "en-gb", "voice_id": "kokoro:bf_emma:rate150"},
            {"engine": "espeak", "accent": "en-us-nyc", "voice_id": "espeak-ng:en-us-nyc+f2:rate160"},
            {"source": "primock57", "speaker": "d1"}]
    s = voice_slices(rows)
    assert s["engine"] == {"espeak": [False, False, True, False], "kokoro": [True, True, False, False]}
    assert set(s["accent"]) == {"en-us", "en-gb", "en-us-nyc"}
    assert s["voice"]["kokoro:bf_emma"] == [False, True, False, False]  # real speech is not a synthetic voice


def test_design_cells_split_held_out_voices_by_distance():
    """A new Kokoro speaker of the training accent, a new accent and a new engine are reported apart, inside the
    "voice new" cells; with one kind of held-out voice (the espeak-ng presets) the cells are as before."""
    def row(engine, accent, seen, term_seen=True):
        return {"engine": engine, "accent": accent, "speaker_seen": seen, "term": "warfarin", "term_seen": term_seen,
                "carrier_seen": False}

    rows = [row("kokoro", "en-us", True), row("kokoro", "en-us", False), row("kokoro", "en-gb", False),
            row("espeak", "en-us-nyc", False), row("kokoro", "en-gb", False, term_seen=False)]
    assert held_out_voice_kinds(rows) == [None, "new speaker", "new accent", "new engine", "new accent"]
    cells = design_cells(rows)
    assert cells["term seen · voice new · carrier new"] == [False, True, True, True, False]
    assert cells["term seen · voice new (new speaker) · carrier new"] == [False, True, False, False, False]
    assert cells["term seen · voice new (new accent) · carrier new"] == [False, False, True, False, False]
    assert cells["term seen · voice new (new engine) · carrier new"] == [False, False, False, True, False]
    assert cells["term new · voice new (new accent) · carrier new"] == [False, False, False, False, True]
    assert "term new · voice new (new engine) · carrier new" not in cells  # no such rows: no empty cell
    espeak_only = [row("espeak", "en-us", True), row("espeak", "en-us-nyc", False)]
    assert list(design_cells(espeak_only)) == ["term seen · voice seen · carrier new", "term seen · voice new · carrier new"]


def test_kokoro_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(kokoro.KokoroError, match="medasr.data.kokoro install"):
        kokoro.locate(tmp_path / "nothing")
