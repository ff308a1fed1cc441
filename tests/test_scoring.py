"""The scorer's keys, agreement with an independent implementation, long rows, HTML rendering."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medasr.cli import app
from medasr.data.manifest import write_manifest
from medasr.data.lexicon import core_lexicon
from medasr.evaluate.metrics import compute_metrics, score_row

SCORE_KEYS = {"n_rows", "wer", "wer_mean_utt", "cer", "ser", "substitutions", "deletions", "insertions", "ref_words",
              "ker", "ker_by_category", "ker_seen", "ker_unseen", "per_term", "term_error_rate", "term_recall",
              "term_counts_by_category", "ci95"}

words = st.lists(st.sampled_from(["a", "b", "c", "dose", "metformin", "of", "the", "x"]), min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(ref=words.filter(bool), hyp=words)
def test_edit_counts_match_nemo(ref, hyp):
    """Our word edits (jiwer alignment) equal NeMo's editdistance-based word_error_rate on random pairs."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    r, h = " ".join(ref), " ".join(hyp)
    s = score_row(r, h, normalizer="none")
    assert s.ref_words == len(ref)
    assert s.word_edits == round(word_error_rate([h], [r]) * len(ref))


@settings(max_examples=100, deadline=None)
@given(ref=st.text(alphabet="abcde ", min_size=1, max_size=30).filter(str.strip), hyp=st.text(alphabet="abcde ", max_size=30))
def test_char_edits_match_nemo(ref, hyp):
    from nemo.collections.asr.metrics.wer import word_error_rate

    r, h = " ".join(ref.split()), " ".join(hyp.split())
    s = score_row(r, h, normalizer="none")
    assert s.char_edits == round(word_error_rate([h], [r], use_cer=True) * len(r))


def test_score_cli_keys_and_long_row(tmp_path):
    long_ref = " ".join(["the patient takes metformin and reports chest pain"] * 200)  # ~1,600 words, one row
    long_hyp = long_ref.replace("metformin", "met foreman", 50)
    rows = [
        {"audio_filepath": "consult.wav", "duration": 600, "text": long_ref, "pred_text": long_hyp},
        {"audio_filepath": "b.wav", "duration": 2, "text": "Start warfarin.", "pred_text": "start warfarin",
         "term": "warfarin", "entity_category": "drug", "term_seen": False},
    ]
    write_manifest(tmp_path / "hyps.json", rows)
    res = CliRunner().invoke(app, ["score", str(tmp_path / "hyps.json"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "s/metrics.json").read_text())
    assert SCORE_KEYS <= m.keys()
    assert m["term_counts_by_category"]["drug"]["occurrences"] == 201  # 200 metformin + 1 warfarin
    assert m["term_counts_by_category"]["drug"]["errors"] == 50
    assert m["ker_unseen"] == 0.0 and m["n_rows"] == 2
    assert (tmp_path / "s/report.html").exists() and (tmp_path / "s/report.md").exists()


def _screenshot(page, png):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium missing: run ./scripts/setup.sh --test"
    profile = tempfile.mkdtemp()
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--window-size=1000,1200", f"--screenshot={png}", f"file://{page}"],
                   capture_output=True, timeout=120, check=True)
    shutil.rmtree(profile, ignore_errors=True)
    return png.stat().st_size


def _demo_pair(tmp_path):
    before, after = [], []
    drugs = [t.term for t in core_lexicon().terms if t.entity_category == "drug" and t.term.isalpha() and len(t.term) > 5]
    for i in range(60):
        d = drugs[i // 2]  # 30 drug terms (the KER bootstrap's clusters), each spoken once as "drug", once as "lab"
        base = {"id": f"r{i}", "audio_filepath": f"/x/{i}.wav", "duration": 2, "text": f"Start {d} today.", "term": d,
                "source": "synthetic-espeak",
                "entity_category": "drug" if i % 2 == 0 else "lab", "term_seen": i % 3 > 0, "speaker_seen": i < 30}
        # 30 drug rows (even i): before, only i % 8 == 0 right (8 of 30: KER 22/30); after, only i % 10 == 0 wrong (6/30)
        before.append(base | {"pred_text": f"start {d[:3]} {d[3:]} today" if i % 8 else f"start {d} today"})
        after.append(base | {"pred_text": f"start {d} today" if i % 10 else f"start {d[:3]} today"})
    write_manifest(tmp_path / "before.json", before)
    write_manifest(tmp_path / "after.json", after)
    r = CliRunner()
    assert r.invoke(app, ["score", str(tmp_path / "before.json"), "--out", str(tmp_path / "b")]).exit_code == 0
    assert r.invoke(app, ["score", str(tmp_path / "after.json"), "--out", str(tmp_path / "a")]).exit_code == 0
    for d, rows in (("b", before), ("a", after)):  # compare reads hyps.json beside metrics.json
        write_manifest(tmp_path / d / "hyps.json", rows)
    return tmp_path / "b", tmp_path / "a"


def test_compare_cli_and_html_render(tmp_path):
    b, a = _demo_pair(tmp_path)
    res = CliRunner().invoke(app, ["compare", str(b), str(a), "--out", str(tmp_path / "c"), "--priority", "drug"])
    assert res.exit_code == 0, res.output
    c = json.loads((tmp_path / "c/compare.json").read_text())
    d = c["deltas"]["ker[priority]"]
    assert d["before"] == pytest.approx(22 / 30) and d["after"] == pytest.approx(6 / 30)
    assert c["decision"] == "keep" and d["ci95"][1] < 0 and d["p_value"] < 0.05
    assert {"wer", "ker", "term_error_rate", "ker[drug]", "ker[lab]", "ker[seen]", "ker[unseen]"} <= c["deltas"].keys()
    # speaker slices: rows 0–29 by a training speaker; seen terms there are i % 3 > 0 (20 rows)
    rows = [i for i in range(30) if i % 3]
    s = c["deltas"]["ker[seen, seen speaker]"]
    assert s["before"] == pytest.approx(sum(i % 8 > 0 for i in rows) / 20)
    assert s["after"] == pytest.approx(sum(i % 10 == 0 for i in rows) / 20)
    assert {"wer[seen speaker]", "wer[new speaker]", "ker[unseen, new speaker]"} <= c["deltas"].keys()
    html = (tmp_path / "c/compare.html").read_text()
    assert "Decision: keep" in html and "<svg" in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    eval_html = (b / "report.html").read_text()
    assert "Worst terms first" in eval_html and 'class=sub' in eval_html  # aligned examples mark substitutions
    assert _screenshot(tmp_path / "c/compare.html", tmp_path / "c.png") > 10_000
    assert _screenshot(b / "report.html", tmp_path / "b.png") > 10_000


def test_gate_exit_codes(tmp_path):
    b, a = _demo_pair(tmp_path)
    m = compute_metrics([json.loads(x) for x in (tmp_path / "before.json").read_text().splitlines()], n_boot=10)
    assert m["ker_by_category"]["drug"]["ker"] == pytest.approx(22 / 30)
    r = CliRunner()
    res = r.invoke(app, ["gate", str(b), "--min-rows", "50"])  # drug KER 0.73 > 0.3 with 60 rows
    assert res.exit_code == 0 and "fine-tune" in res.output
    res = r.invoke(app, ["gate", str(a), "--min-rows", "50", "--priority", "drug"])  # 0.2: expand terms first
    assert res.exit_code == 1 and "expand terms" in res.output
    assert r.invoke(app, ["gate", str(tmp_path / "nope")]).exit_code == 2


def test_compare_floors_p_and_refuses_other_references():
    """A bootstrap of n draws cannot show p below 1/(n+1) (three fixed rows gave p = 0.0), and rows
    with the same id but another reference are not a paired comparison."""
    from medasr.evaluate.compare import compare_rows

    before = [{"id": f"r{i}", "text": "start warfarin today", "term": "warfarin", "entity_category": "drug",
               "pred_text": "start war far in today"} for i in range(3)]
    after = [r | {"pred_text": "start warfarin today"} for r in before]
    c = compare_rows(before, after, priority=["drug"], n_boot=200)
    d = c["deltas"]["ker[priority]"]
    assert d["delta"] == -1.0 and d["p_value"] == pytest.approx(2 / 201)
    assert d["n_clusters"] == 1 and c["decision"] == "insufficient_evidence"  # one term, however many rows: not evidence
    other = [after[0], after[1] | {"text": "start heparin today"}, after[2]]
    with pytest.raises(ValueError, match=r"1 row\(s\) have a different reference.*\['r1'\]"):
        compare_rows(before, other, priority=["drug"], n_boot=50)


def test_compare_uses_the_lexicon_the_evaluations_used(tmp_path):
    """compare tags term occurrences with the lexicon recorded in both metrics.json (it always used the core one),
    records it, and refuses evaluations scored with different lexicons."""
    b, a = _demo_pair(tmp_path)
    res = CliRunner().invoke(app, ["compare", str(b), str(a), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c/compare.json").read_text())["lexicon"] == "core"
    m = json.loads((a / "metrics.json").read_text())
    (a / "metrics.json").write_text(json.dumps(m | {"lexicon": "extended"}))
    res = CliRunner().invoke(app, ["compare", str(b), str(a), "--out", str(tmp_path / "c2")])
    assert res.exit_code == 2 and "different lexicons (core, extended)" in res.output


# --- one normaliser for WER, KER and term error rate -------------------------------------------
@pytest.mark.parametrize("said, written", [
    ("type two diabetes", "type 2 diabetes"), ("HbA1c", "hba 1 c"), ("A1c", "a 1 c"), ("vitamin B12", "vitamin b 12"),
    ("Crohn's disease", "crohns disease"), ("Crohn’s disease", "Crohn's disease"), ("x-ray", "X ray"),
])
def test_a_keyword_written_differently_but_scored_equal_by_wer_is_a_hit(said, written):
    s = score_row(f"Known {said} noted.", f"known {written} noted", term=said)
    assert s.word_edits == 0 and s.term_hit == 1 and s.term_in_ref
    occ = score_row(f"Known {said} noted.", f"known {written} noted", lexicon=core_lexicon()).occurrences
    assert all(hit for *_, hit in occ)


def test_curly_apostrophes_cost_no_word_errors():
    assert score_row("Don’t stop the warfarin.", "don't stop the warfarin").word_edits == 0


def test_possessive_rule_is_symmetric():
    """The apostrophe is not heard: "crohns" reproduces "Crohn's"; "crohn" (another word) does not, for WER and KER."""
    same = score_row("Known Crohn's disease.", "known crohns disease", term="Crohn's disease")
    other = score_row("Known Crohn's disease.", "known crohn disease", term="Crohn's disease")
    assert (same.word_edits, same.term_hit) == (0, 1)
    assert (other.word_edits, other.term_hit) == (1, 0)
    assert score_row("Check the warfarin's dose.", "check the warfarins dose", term="warfarin").term_hit == 1


_SLOTS = [  # each slot: surface forms a transcript may use for the same spoken words
    ("Start", "start"), ("type two diabetes", "type 2 diabetes", "Type-2 diabetes"), ("HbA1c", "hba 1 c", "HBA1C"),
    ("Crohn's disease", "crohns disease", "Crohn’s disease"), ("vitamin B12", "vitamin b 12"), ("x-ray", "X ray"),
    ("don't", "don’t", "do not"), ("warfarin", "Warfarin,"), ("co-amoxiclav", "co amoxiclav"), ("today.", "today"),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(_SLOTS))), min_size=2, max_size=6), st.data())
def test_zero_wer_edits_never_leave_a_keyword_missed(slots, data):
    pick = lambda i: data.draw(st.sampled_from(_SLOTS[i]))  # noqa: E731
    ref_words = [pick(i) for i in slots]
    hyp_words = [pick(i) for i in slots]
    term = ref_words[data.draw(st.integers(0, len(slots) - 1))].strip(".,")
    s = score_row(" ".join(ref_words), " ".join(hyp_words), term=term, lexicon=core_lexicon())
    assert s.term_in_ref
    if s.word_edits == 0:
        assert s.term_hit == 1, (ref_words, hyp_words, term)
        assert all(hit for *_, hit in s.occurrences)


def test_every_core_term_is_found_in_its_own_sentence():
    lex = core_lexicon()
    for t in lex.terms:
        s = score_row(f"The {t.term} was noted.", f"the {t.term.upper()} was noted", term=t.term, lexicon=lex)
        assert s.term_in_ref and s.term_hit == 1 and s.word_edits == 0, t.term
        assert [o[0] for o in s.occurrences] == [t.term], t.term


# --- clustered confidence intervals --------------------------------------------------------------
def _clustered_rows(copies: int = 1):
    """40 terms, each said twice (correlated: the same term), by the same model; `copies` duplicates every row."""
    rows = []
    drugs = [t.term for t in core_lexicon().terms if t.entity_category == "drug" and t.term.isalpha()][:40]
    for i, d in enumerate(drugs):
        for k in range(2):
            hyp = f"start {d} today" if (i * 7) % 5 < 2 else f"start {d[:3]} {d[3:]} today"
            row = {"id": f"r{i}-{k}", "text": f"Start {d} today.", "pred_text": hyp, "term": d, "entity_category": "drug",
                   "cluster": f"term:{d}"}
            rows += [row | {"id": f"{row['id']}-c{c}"} for c in range(copies)]
    return rows


def test_duplicating_rows_leaves_the_confidence_intervals_unchanged():
    one, two = (compute_metrics(_clustered_rows(c), n_boot=400) for c in (1, 2))
    for key in ("wer", "ker", "term_error_rate"):
        assert one["ci95"][key] == pytest.approx(two["ci95"][key]), key
        assert one["ci95"][key][1] > one["ci95"][key][0]
    assert one["ci_clusters"] == two["ci_clusters"] == {"wer": {"key": "cluster", "n": 40},
                                                         "term_error_rate": {"key": "cluster", "n": 40},
                                                         "ker": {"key": "term", "n": 40}}
    from medasr.evaluate.compare import compare_rows

    c1, c2 = (compare_rows(_clustered_rows(c), [r | {"pred_text": r["text"]} for r in _clustered_rows(c)],
                           priority=["drug"], n_boot=400) for c in (1, 2))
    for key in ("wer", "ker[priority]"):
        assert c1["deltas"][key]["ci95"] == pytest.approx(c2["deltas"][key]["ci95"]), key
    assert c1["deltas"]["ker[priority]"]["n_clusters"] == 40 and c1["decision"] == "keep"


def test_row_resampling_would_narrow_the_interval():
    """Without the cluster key every row is its own unit: duplicated rows then narrow the interval by about 1/sqrt(2),
    the overconfidence the cluster key removes."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "cluster"} for r in rows]  # noqa: E731
    one, two = (compute_metrics(strip(_clustered_rows(c)), n_boot=400) for c in (1, 2))
    w1, w2 = (m["ci95"]["wer"][1] - m["ci95"]["wer"][0] for m in (one, two))
    assert one["ci_clusters"]["wer"] == {"key": "row", "n": 80} and 0.6 < w2 / w1 < 0.8


def test_seen_flags_are_parsed_once_on_read(tmp_path):
    """A spreadsheet writes "false": the manifest reader makes it a bool once, so every reader after it (metrics,
    compare) sees one type; anything else is refused with file:line."""
    from medasr.data.manifest import ManifestError, read_manifest

    m = tmp_path / "hyps.json"
    m.write_text(json.dumps({"id": "a", "text": "start warfarin", "pred_text": "start warfarin", "term": "warfarin",
                             "term_seen": "false", "speaker_seen": True}) + "\n" + json.dumps({"id": "b", "text": "x",
                                                                                              "pred_text": "x"}) + "\n")
    rows = read_manifest(m, required=("text", "pred_text"))
    assert (rows[0]["term_seen"], rows[0]["speaker_seen"], "term_seen" in rows[1]) == (False, True, False)
    assert compute_metrics(rows, n_boot=10)["ker_unseen"] == 0.0  # bool("false") would have made it a seen term
    m.write_text(json.dumps({"id": "r7", "text": "x", "pred_text": "x", "term_seen": "yes"}) + "\n")
    with pytest.raises(ManifestError, match=r"hyps.json:1: term_seen='yes' is not true/false"):
        read_manifest(m, required=("text", "pred_text"))


def test_build_gives_every_row_its_unit_of_independence():
    from medasr.data.split import cluster_of

    assert cluster_of({"source": "primock57", "consultation": "day1_consultation01", "speaker": "day1_consultation01_doctor"}) \
        == "consultation:day1_consultation01"  # both channels of a consultation: one unit
    assert cluster_of({"source": "synthetic-espeak", "term": "Warfarin", "voice_id": "espeak-ng:en-us:rate150"}) == "term:warfarin"
    assert cluster_of({"source": "generic-espeak", "text": "The oceans are teeming."}) == "sentence:the oceans are teeming."
    assert cluster_of({"source": "osce", "speaker": "RES0001"}) == "speaker:RES0001"
    assert cluster_of({"source": "folder:x", "speaker": None, "recording": "a/b.wav"}) == "recording:a/b.wav"
    assert cluster_of({"source": "hf:x", "id": "r1"}) == "row:r1"


def test_the_default_lexicon_fits_the_source():
    """eval.lexicon=auto: the core list for synthetic test sets (their terms come from it), the extended one for real
    speech, where the core list's term error rate tracks the PriMock57 leaderboard's medical WER worse
    (bench/lexicon_fit.py); the choice is recorded in metrics.json."""
    import tempfile
    from pathlib import Path

    from medasr.config import load_config
    from medasr.evaluate.stage import score_manifest

    cfg = load_config("tiny")
    synthetic = [{"id": "a", "text": "start warfarin", "pred_text": "start warfarin", "source": "synthetic-espeak"},
                 {"id": "g", "text": "the sea is calm", "pred_text": "the sea is calm", "source": "generic-espeak"}]
    real = synthetic + [{"id": "p", "text": "any ibuprofen", "pred_text": "any", "source": "primock57"}]
    with tempfile.TemporaryDirectory() as d:
        assert score_manifest(synthetic, Path(d), cfg, "t")["lexicon"] == "core"
        m = score_manifest(real, Path(d), cfg, "t")
    assert (m["lexicon"], m["lexicon_setting"]) == ("extended", "auto") and m["term_error_rate"] == 0.5


OMI = Path(__file__).parent / "data" / "omi-medical-stt-eval"


def test_spoken_variants_are_one_word_on_a_real_consultation(monkeypatch):
    """Our WER ranked the PriMock57 leaderboard's systems against their published WER at Spearman 0.993
    before curly apostrophes were straightened and 0.990 after; one form for spoken variants ("okay"/"ok", "yeah"/"yes",
    "alright"/"all right", ...) brings it to 0.997 (bench/lexicon_fit.py). Here on one real consultation (vendored, MIT):
    the variants are what moves these two systems' WER, and the letter K (potassium) is left alone."""
    from medasr import normalize as N

    ref = (OMI / "day1_consultation01_pure_text.txt").read_text()
    want = {"nvidia_canary-qwen-2.5b": (0.1578, 0.1624), "google-gemini-2.5-pro": (0.1088, 0.1134)}
    for system, (with_variants, without) in want.items():
        hyp = (OMI / f"{system}.day1_consultation01_conversation_transcript.txt").read_text()
        assert round(compute_metrics([{"text": ref, "pred_text": hyp}], n_boot=0)["wer"], 4) == with_variants
        monkeypatch.setattr(N, "SPOKEN_VARIANTS", {})
        N.normalize.cache_clear()
        assert round(compute_metrics([{"text": ref, "pred_text": hyp}], n_boot=0)["wer"], 4) == without
        monkeypatch.undo()
        N.normalize.cache_clear()
    assert N.normalize("Okay, yeah, alright, I'm gonna check your K, it's 4.2.") == \
        "ok yes all right i am going to check your k it is 4.2"


def test_score_defaults_to_the_lexicon_eval_uses(tmp_path):
    """`medasr score` defaulted to the core lexicon while `eval` defaults to auto (extended for real
    speech), so scoring real transcripts gave the weaker term error rate by default."""
    ref = (OMI / "day1_consultation01_pure_text.txt").read_text()
    hyp = (OMI / "google-gemini-2.5-pro.day1_consultation01_conversation_transcript.txt").read_text()
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"audio_filepath": "c1.wav", "duration": 450, "text": ref, "pred_text": hyp}) + "\n")
    synth = tmp_path / "synth.json"
    synth.write_text(json.dumps({"audio_filepath": "s.wav", "duration": 2, "text": "Start apixaban today.",
                                 "pred_text": "Start apixaban today.", "source": "synthetic"}) + "\n")
    for manifest, lexicon in ((real, "extended"), (synth, "core")):
        res = CliRunner().invoke(app, ["score", str(manifest), "--out", str(tmp_path / manifest.stem)])
        assert res.exit_code == 0, res.output
        m = json.loads((tmp_path / manifest.stem / "metrics.json").read_text())
        assert m["lexicon"] == lexicon and m["lexicon_setting"] == "auto"
