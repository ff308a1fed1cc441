import json

import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.config import GateConfig, load_config
from medasr.data.manifest import write_manifest
from medasr.evaluate.compare import compare_rows
from medasr.evaluate.gate import decide


def _metrics(drug_ker, n_drug=20, other=100):
    return {"ker_by_category": {"drug": {"ker": drug_ker, "n": n_drug}, "anatomy": {"ker": 0.0, "n": other}}}


def test_gate_routes():
    g = GateConfig()
    assert decide(_metrics(0.5), g).route == "fine_tune"
    assert decide(_metrics(0.2), g).route == "expand_terms"
    assert decide(_metrics(0.05), g).route == "harder_eval"
    assert decide(_metrics(0.9, other=10), g).route == "insufficient_data"  # 30 rows < 100
    assert decide(_metrics(0.9, n_drug=3), g).route == "insufficient_data"  # < 5 priority rows
    assert decide(_metrics(0.5), g).train is True and decide(_metrics(0.2), g).train is False


def _rows(n, hit_before, hit_after):
    """n rows, each its own made-up drug term (the KER bootstrap resamples terms)."""
    before, after = [], []
    for i in range(n):
        t = "metfor" + "".join(chr(97 + int(c)) for c in str(i))
        base = {"id": f"r{i}", "audio_filepath": f"/x/{i}.wav", "text": f"start {t} today", "term": t,
                "entity_category": "drug", "term_seen": True}
        before.append(base | {"pred_text": f"start {t} today" if hit_before(i) else "start met for men today"})
        after.append(base | {"pred_text": f"start {t} today" if hit_after(i) else "start met for men today"})
    return before, after


def test_compare_decisions():
    b, a = _rows(100, lambda i: i < 20, lambda i: i < 90)  # KER 0.8 -> 0.1
    c = compare_rows(b, a, ["drug"], normalizer="basic", n_boot=500)
    assert c["decision"] == "keep"
    d = c["deltas"]["ker[priority]"]
    assert d["before"] == pytest.approx(0.8) and d["after"] == pytest.approx(0.1) and d["ci95"][1] < 0
    b, a = _rows(100, lambda i: i < 50, lambda i: i < 20)  # worse
    assert compare_rows(b, a, ["drug"], normalizer="basic", n_boot=500)["decision"] == "overfit"
    b, a = _rows(100, lambda i: i % 2 == 0, lambda i: i % 2 == 1)  # same rate, different rows
    assert compare_rows(b, a, ["drug"], normalizer="basic", n_boot=500)["decision"] == "no_change"
    b, a = _rows(400, lambda i: i < 200, lambda i: i < 240)  # 0.5 -> 0.4: significant but < 20 % relative
    assert compare_rows(b, a, ["drug"], normalizer="basic", n_boot=500)["decision"] == "grow_data"


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="max_step"):
        load_config("tiny", ["train.max_step=3"])
    assert load_config("tiny", ["train.max_steps=3"]).train.max_steps == 3
    real = load_config("canary-qwen-2.5b")
    assert real.model.base == "nvidia/canary-qwen-2.5b@b1469e1bba1cfe140205529c79c434ca47180960"  # pinned release
    assert real.model.precision == "bf16-true"
    assert [(m.source, m.use) for m in real.data.mix] == [("osce", ["train", "val"]), ("primock57", ["test"]),
                                                          ("synthetic", ["train", "test"])]
    local = load_config("canary-qwen-2.5b", ["data.mix.0.local=/data/osce"])
    assert local.data.mix[0].local == "/data/osce" and local.data.mix[1].local is None


def test_cli_score(tmp_path):
    rows = [
        {"audio_filepath": "a.wav", "duration": 1, "text": "Start metformin.", "pred_text": "start metformin", "term": "metformin", "entity_category": "drug"},
        {"audio_filepath": "b.wav", "duration": 1, "text": "Give warfarin now.", "pred_text": "give war farin now", "term": "warfarin", "entity_category": "drug"},
    ]
    write_manifest(tmp_path / "hyp.json", rows)
    res = CliRunner().invoke(app, ["score", str(tmp_path / "hyp.json"), "--out", str(tmp_path / "out"), "--normalizer", "basic"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["wer"] == pytest.approx(2 / 5) and m["ker"] == 0.5
    res = CliRunner().invoke(app, ["gate", str(tmp_path / "out")])
    assert res.exit_code == 1 and "term rows" in res.output  # 2 rows: not enough evidence


def test_cli_errors_keep_a_long_path_on_one_line(tmp_path, monkeypatch):
    # Rich hard-wraps at the terminal width by default, which split paths in error messages (and made a CI
    # assertion depend on the temp dir's length): errors must keep the path whole at any width.
    from medasr import cli

    monkeypatch.setattr(cli.console, "width", 40)
    bad = tmp_path / ("d" * 60) / "preset[1].yaml"  # [1]: rich markup in a path must print literally
    res = CliRunner().invoke(app, ["eval", "--preset", str(bad)])
    assert res.exit_code == 2 and f"no preset '{bad}'" in res.output


def test_multi_device_is_refused_for_the_parakeet_path():
    """NeMo builds the ASR loaders before DDP exists, so every rank would read the same batches: refused, with the fix."""
    with pytest.raises(ValueError, match="train.devices > 1 is supported for SALM presets.*set train.devices=1"):
        load_config("parakeet-tdt-0.6b-v2", ["train.devices=2"])
    assert load_config("canary-qwen-2.5b", ["train.devices=2"]).train.devices == 2
