"""`medasr table`: the held-out design table made from two hyps.json files (what README's mini table is), its cells,
the relative KER change and its interval, and the targets judged on it."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.data.lexicon import core_lexicon
from medasr.errors import InputError
from medasr.evaluate.design_table import (FORGETTING, design_table, readme_table, read_hyps, render_markdown, row_cells,
                                          splice, README_END, README_START)

DRUGS = [t.term for t in core_lexicon().terms if t.entity_category == "drug" and t.term.isalpha()][:40]
VOICES = {"training voice": ("kokoro:af_heart", "en-us", True), "new speaker": ("kokoro:af_jessica", "en-us", False),
          "new accent": ("kokoro:bf_emma", "en-gb", False), "new engine": ("espeak-ng:en-us-nyc+f2", "en-us-nyc", False)}


def _rows(after_miss: dict[str, float], generic_after_wrong: int = 0) -> tuple[list[dict], list[dict]]:
    """Every seen drug said once by each voice kind; the base misses every term; the fine-tune misses the first
    `after_miss[kind]` fraction of them. 30 seen terms, 10 held-out (never learnt); 20 generic sentences."""
    before, after = [], []
    for kind, (voice, accent, seen_spk) in VOICES.items():
        engine = voice.split(":")[0].replace("-ng", "")
        for i, d in enumerate(DRUGS):
            seen = i < 30
            row = {"id": f"{kind}-{d}", "text": f"Start {d} today.", "term": d, "entity_category": "drug",
                   "term_seen": seen, "speaker_seen": seen_spk, "carrier_seen": False, "engine": engine,
                   "accent": accent, "voice_id": f"{voice}:rate160", "cluster": f"term:{d}", "source": f"synthetic-{engine}"}
            wrong = f"start {d[:3]} {d[3:]} today"
            before.append(row | {"pred_text": wrong})
            fixed = seen and i >= round(30 * after_miss.get(kind, 1.0))
            after.append(row | {"pred_text": f"start {d} today" if fixed else wrong})
    for j in range(20):
        row = {"id": f"generic-{j}", "text": f"the quiet river runs past the old mill number {j}",
               "speaker_seen": j % 2 == 0, "engine": "kokoro", "accent": "en-us", "cluster": f"sentence:{j}",
               "voice_id": "kokoro:af_heart:rate150" if j % 2 == 0 else "kokoro:af_jessica:rate150",
               "source": "generic-kokoro"}
        before.append(row | {"pred_text": row["text"]})
        after.append(row | {"pred_text": row["text"].replace("river", "liver") if j < generic_after_wrong else row["text"]})
    return before, after


def test_cells_relative_change_and_targets_met():
    before, after = _rows({"training voice": 0.1, "new speaker": 0.2, "new accent": 0.3, "new engine": 0.9})
    t = design_table(before, after, n_boot=300)
    cells = {c["name"]: c for c in t["cells"]}
    assert list(cells) == ["seen term · training voice · new carrier", "seen term · new speaker · new carrier",
                           "seen term · new accent · new carrier", "seen term · new engine · new carrier",
                           "held-out term · training voice · new carrier", "held-out term · new voice · new carrier"]
    spk = cells["seen term · new speaker · new carrier"]
    assert (spk["rows"], spk["terms"], spk["voices"]) == (30, 30, ["kokoro:af_jessica"])
    assert spk["ker"]["before"] == 1.0 and spk["ker"]["after"] == pytest.approx(0.2)
    assert spk["ker"]["rel"] == pytest.approx(-0.8)
    lo, hi = spk["ker"]["rel_ci95"]
    assert lo < -0.8 < hi < -0.5
    held = cells["held-out term · new voice · new carrier"]
    assert held["rows"] == 30 and held["ker"]["delta"] == 0.0  # 10 terms × 3 new voices, never learnt
    assert t["forgetting"]["rows"] == 20 and t["forgetting"]["wer"]["delta"] == 0.0
    targets = {g["name"]: g["met"] for g in t["targets"]}
    assert targets == {"seen-term KER, new speaker": True, "seen-term KER, new accent": True,
                       "generic-English WER": True}
    md = render_markdown(t)
    assert "| **seen term · new speaker · new carrier** | 30 | 30 | 100.0 % | 20.0 % |" in md
    assert Counter(row_cells(before)) == {"seen term · training voice · new carrier": 30, FORGETTING: 20,
                                          "seen term · new speaker · new carrier": 30,
                                          "seen term · new accent · new carrier": 30,
                                          "seen term · new engine · new carrier": 30,
                                          "held-out term · training voice · new carrier": 10,
                                          "held-out term · new voice · new carrier": 30}
    assert "−80 % (" in md and md.count("**met**") == 3


def test_targets_missed_when_the_drop_is_small_or_generic_speech_is_forgotten():
    before, after = _rows({"training voice": 0.1, "new speaker": 0.6, "new accent": 0.3}, generic_after_wrong=6)
    t = design_table(before, after, n_boot=300)
    targets = {g["name"]: g for g in t["targets"]}
    assert targets["seen-term KER, new speaker"]["met"] is False  # −40 % relative: under the −50 % target
    assert targets["seen-term KER, new accent"]["met"] is True
    g = targets["generic-English WER"]
    assert g["met"] is False and g["wer"]["delta"] > 0.01 and not g["ci_within"]
    assert render_markdown(t).count("**missed**") == 2


def test_training_carriers_split_the_cells():
    before, after = _rows({"training voice": 0.1})
    for rows in (before, after):
        for r in rows[:15]:
            r["carrier_seen"] = True
    t = design_table(before, after, n_boot=100)
    names = [c["name"] for c in t["cells"]]
    assert names[:3] == ["seen term · training voice · training carrier", "seen term · training voice · new carrier",
                         "seen term · new speaker · new carrier"]
    # the targets are judged on the new-carrier cells the table shows, never on rows in a training sentence
    for rows in (before, after):
        for r in rows[40:45]:  # 5 of the 30 seen-term new-speaker rows in a training carrier: out of the target
            r["carrier_seen"] = True
    t = design_table(before, after, n_boot=100)
    cell = next(c for c in t["cells"] if c["name"] == "seen term · new speaker · new carrier")
    target = next(g for g in t["targets"] if g["name"] == "seen-term KER, new speaker")
    assert target["rows"] == cell["rows"] == 25 and target["ker"] == cell["ker"]


def test_cli_writes_the_table_and_splices_the_readme(tmp_path):
    before, after = _rows({"training voice": 0.1, "new speaker": 0.2, "new accent": 0.3})
    for name, rows in (("b", before), ("a", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hyps.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold table\n{README_END}\n\nafter\n")
    res = CliRunner().invoke(app, ["table", str(tmp_path / "b"), str(tmp_path / "a" / "hyps.json"), "--n-boot", "200",
                                   "--out", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json"),
                                   "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "t.md").read_text()
    text = readme.read_text()
    assert readme_table(text) == md and "old table" not in text and text.endswith("\nafter\n")
    assert json.loads((tmp_path / "t.json").read_text())["targets"][0]["met"] is True
    assert splice(text, md) == text  # idempotent


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_hyps(tmp_path / "nope")
    f = tmp_path / "hyps.json"
    f.write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match=r"hyps.json:1: missing field\(s\) pred_text"):
        read_hyps(f)
    f.write_text('{"text": "a", "pred_text": "a"}\nnot json\n')
    with pytest.raises(InputError, match=r"hyps.json:2: malformed JSON"):
        read_hyps(f)
    with pytest.raises(InputError, match="around the results table"):
        splice("no markers", "t")
    with pytest.raises(InputError, match="around the results table"):
        readme_table(f"{README_END} then {README_START}")
