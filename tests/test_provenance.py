"""Results record what produced them, and a stage re-runs when its inputs changed."""

import json
import shutil

import pytest

from medasr.config import load_config
from medasr.data.manifest import write_manifest
from medasr.fingerprint import model_digest


def _rows(n=4):
    return [{"id": f"r{i}", "audio_filepath": f"/x/{i}.wav", "duration": 1.0, "text": "start warfarin today",
             "term": "warfarin", "entity_category": "drug", "pred_text": "start warfarin today" if i % 2 else "start war"}
            for i in range(n)]


def test_evaluation_rescores_or_decodes_only_when_its_inputs_changed(tmp_path):
    from medasr import provenance
    from medasr.evaluate.stage import decode_inputs, score_manifest, transcripts_reusable
    from medasr.flywheel import eval_inputs, evaluate_stage

    cfg = load_config("tiny")
    manifest, model, out = tmp_path / "test.json", tmp_path / "model.nemo", tmp_path / "eval/cycle0"
    write_manifest(manifest, [{k: v for k, v in r.items() if k != "pred_text"} for r in _rows()])
    model.write_bytes(b"not a real model: loading it fails, so any decode attempt shows")
    write_manifest(out / "hyps.json", _rows())
    score_manifest(_rows(), out, cfg, "t", decode_inputs(cfg, manifest, model))
    provenance.write(tmp_path, "eval-cycle0", eval_inputs(cfg, manifest, model), "eval/cycle0/metrics.json")
    assert evaluate_stage(cfg, tmp_path, 0, model, "t", manifest)["skipped"]  # same inputs: nothing to do
    ext = load_config("tiny", ["eval.lexicon=extended"])
    m = evaluate_stage(ext, tmp_path, 0, model, "t", manifest)  # other scoring settings: the transcripts re-scored
    assert m["rescored"] and m["lexicon"] == "extended" and m["inputs"]["score"]["lexicon"] == "extended"
    assert "skipped" not in m and evaluate_stage(ext, tmp_path, 0, model, "t", manifest)["skipped"]  # recorded
    assert json.loads((out / "metrics.json").read_text())["inputs"]["decode"]["model_sha256"] == model_digest(model)
    model.write_bytes(b"another model")  # another model: decoding again (which fails on this fake file)
    with pytest.raises(Exception) as e:
        evaluate_stage(ext, tmp_path, 0, model, "t", manifest)
    assert "skipped" not in str(e.value)
    assert provenance.read(tmp_path, "eval-cycle0") is None  # a failed stage leaves no record claiming its result
    write_manifest(manifest, [{k: v for k, v in r.items() if k != "pred_text"} | {"text": "x"} for r in _rows()])
    assert not transcripts_reusable(out, decode_inputs(ext, manifest, model))


def test_a_stage_runs_again_exactly_when_its_record_is_not_current(tmp_path):
    """The one check every flywheel stage goes through (medasr.provenance.run_stage)."""
    from medasr.provenance import read, run_stage

    runs = []

    def stage(value):
        runs.append(value)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out/result.json").write_text(json.dumps({"value": value}))
        return {"value": value}

    def go(inputs, value, there=lambda: True):
        return run_stage(tmp_path, "s", lambda: stage(value), inputs, "out/result.json", there, say=lambda m: None)

    assert go({"a": 1}, 1) == {"value": 1} and runs == [1]
    assert go({"a": 1}, 2) == {"value": 1, "skipped": True} and runs == [1]  # same inputs: the recorded result
    assert read(tmp_path, "s")["inputs"] == {"a": 1}
    assert go({"a": 2}, 3) == {"value": 3} and runs == [1, 3]  # other inputs
    (tmp_path / "out/result.json").write_text('{"value": "edited"}')
    assert go({"a": 2}, 4) == {"value": 4} and runs == [1, 3, 4]  # the result file is not the recorded one
    assert go({"a": 2}, 5, there=lambda: False) == {"value": 5}  # what it describes is gone (audio after a restore)
    (tmp_path / "out/result.json").unlink()
    assert go({"a": 2}, 6) == {"value": 6} and runs == [1, 3, 4, 5, 6]
    with pytest.raises(ZeroDivisionError):
        run_stage(tmp_path, "s", lambda: 1 / 0, {"a": 3}, "out/result.json", say=lambda m: None)
    assert read(tmp_path, "s") is None and go({"a": 2}, 7) == {"value": 7}  # the failure left no record


def test_changed_training_inputs_start_a_new_run(tmp_path):
    from medasr.train.inputs import ensure_current

    run = tmp_path / "run"
    write_manifest(run / "data" / "train.json", _rows())
    write_manifest(run / "data" / "val.json", _rows(2))
    base = tmp_path / "base.nemo"
    base.write_bytes(b"base weights")
    cfg = load_config("tiny")
    fp = ensure_current(cfg, run, base)
    (run / "train" / "checkpoints").mkdir()
    (run / "train" / "checkpoints" / "last.ckpt").write_bytes(b"step 300")
    more = load_config("tiny", ["train.max_steps=600", "train.val_every_n_steps=100"])  # how long, not what: resume
    assert ensure_current(more, run, base) == fp and (run / "train/checkpoints/last.ckpt").exists()
    lr = load_config("tiny", ["train.optimizer.lr=1e-4"])
    said = []
    new = ensure_current(lr, run, base, say=said.append)
    assert new != fp and not (run / "train/checkpoints").exists()
    assert (run / f"train.stale-{fp}/checkpoints/last.ckpt").read_bytes() == b"step 300"  # kept, never deleted
    assert "recipe" in said[0] and json.loads((run / "train/inputs.json").read_text())["fingerprint"] == new
    write_manifest(run / "data" / "train.json", _rows(6))  # other training data
    assert ensure_current(lr, run, base) not in (fp, new)
    base.write_bytes(b"other base weights")
    assert len({ensure_current(lr, run, base), new, fp}) == 3


@pytest.mark.slow
def test_more_steps_re_export_and_re_evaluate(tiny_run, tmp_path):
    """Raising max_steps on a finished run resumes training, re-exports, and re-evaluates cycle 1 (the old code
    skipped cycle 1 on its row count, so compare, summary and model card described the previous model)."""
    from medasr.flywheel import run_flywheel

    cfg, done_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(done_dir, run, symlinks=True)
    old = json.loads((run / "eval/cycle1/metrics.json").read_text())
    cycle0 = (run / "eval/cycle0/metrics.json").stat().st_mtime
    more = load_config("tiny", ["train.max_steps=320", "train.smoke_steps=0"])
    summary = run_flywheel(more, run)
    new = json.loads((run / "eval/cycle1/metrics.json").read_text())
    export = run / "canary-qwen-medical-lora"
    assert new["inputs"]["decode"]["model_sha256"] == model_digest(export) != old["inputs"]["decode"]["model_sha256"]
    assert json.loads((export / "medasr_adapter.json").read_text())["selection"]["trained_steps"] == 320
    assert summary["after"]["wer"] == new["wer"] and summary["inputs"]["cycle1"] == new["inputs"]
    assert (run / "eval/cycle0/metrics.json").stat().st_mtime == cycle0  # the base did not change: not re-decoded
    assert not list(run.glob("train.stale-*"))  # the copied run is the same run: training resumed, not restarted
    assert "Trained steps: 320" in (export / "README.md").read_text()
