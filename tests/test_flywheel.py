"""End-to-end on the tiny preset: the flywheel, export → reload, freeze pattern, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medasr.config import load_config
from medasr.data.manifest import read_manifest
from medasr.flywheel import run_flywheel
from medasr.models.salm import load_base, transcribe_paths
from medasr.families.salm import export_keys
from medasr.families.salm import load_adapted
from medasr.models.load import AdapterError
from medasr.models.load import FreezePatternError, apply_freeze, load_training_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_flywheel_outputs_and_learning(tiny_run):
    cfg, run_dir, summary = tiny_run
    assert summary["status"] == "done"
    for f in ["data/train.json", "data/val.json", "data/test.json", "eval/cycle0/hyps.json", "eval/cycle0/metrics.json",
              "eval/cycle0/report.md", "eval/cycle1/metrics.json", "eval/compare/compare.json", "train/DONE",
              "canary-qwen-medical-lora/adapter.safetensors", "canary-qwen-medical-lora/README.md",
              "canary-qwen-medical-lora/lora/adapter_config.json", "summary.json"]:
        assert (run_dir / f).exists(), f
    assert json.loads((run_dir / "train/DONE").read_text()) == {"global_step": cfg.train.max_steps, "max_steps": cfg.train.max_steps}
    smoke = json.loads((run_dir / "train/smoke.json").read_text())  # the smoke run passed before the full run
    assert smoke["ok"] and smoke["steps"] == 20 and len(smoke["losses"]) == 20 and smoke["losses"][-1] < smoke["losses"][0]
    assert smoke["peak_rss_gib"] > 0 and smoke["projected_train_hours"] == round(smoke["step_s_median"] * 300 / 3600, 3)
    val = json.loads((run_dir / "train/val_loss.json").read_text())
    assert val["final"] < val["base"] - 0.05, val  # the fine-tuned tiny model fits the validation set better
    m = json.loads((run_dir / "eval/cycle0/metrics.json").read_text())
    assert {"wer", "cer", "ker", "ker_by_category", "ker_seen", "ker_unseen"} <= m.keys()
    assert m["n_rows"] == len(read_manifest(run_dir / "data/test.json"))
    assert set(m["ker_by_category"]) == {"anatomy", "condition", "drug", "lab", "procedure"}
    gate = json.loads((run_dir / "eval/gate.json").read_text())
    assert gate["train"] is True and gate["route"] == "fine_tune"  # random-init base misses every term
    card = (run_dir / "canary-qwen-medical-lora/README.md").read_text()
    assert "proves the pipeline, not accuracy" in card and "KER, held-out terms" in card


def test_rerun_is_resume(tiny_run):
    cfg, run_dir, _ = tiny_run
    before = (run_dir / "eval/cycle1/metrics.json").stat().st_mtime
    t = time.time()
    summary = run_flywheel(cfg, run_dir)
    assert time.time() - t < 120
    assert summary["status"] == "done"
    assert (run_dir / "eval/cycle1/metrics.json").stat().st_mtime == before  # nothing recomputed
    assert "train" in summary["timings_s"] and summary["timings_s"]["train"] < 5
    # one record per computing stage, each naming the file that holds its result
    records = {p.stem: json.loads(p.read_text()) for p in (run_dir / "provenance").glob("*.json")}
    assert set(records) == {"build", "eval-cycle0", "preflight", "smoke", "train", "select", "export", "eval-cycle1",
                            "compare"}
    assert records["export"]["result"] == "canary-qwen-medical-lora/medasr_adapter.json"
    assert records["train"]["inputs"]["train"] == json.loads((run_dir / "train/inputs.json").read_text())["fingerprint"]


def test_trainable_groups_match_freeze_pattern(tiny_run):
    cfg, run_dir, _ = tiny_run
    table = json.loads((run_dir / "train/trainable_params.json").read_text())["groups"]
    assert table["llm (frozen)"]["trainable"] == 0 and table["llm (frozen)"]["frozen"] > 0
    assert table["lora"]["trainable"] > 0 and table["lora"]["frozen"] == 0
    assert table["encoder"]["trainable"] > 0 and table["projection"]["trainable"] > 0
    # LoRA r=8 on q_proj and v_proj of 2 layers: A (r x in) + B (out x r) per module
    t = cfg.model.tiny
    q = t.lora_r * t.hidden_size + t.num_heads * t.head_dim * t.lora_r
    v = t.lora_r * t.hidden_size + t.num_kv_heads * t.head_dim * t.lora_r
    assert table["lora"]["trainable"] == t.num_layers * (q + v)


def test_wrong_freeze_pattern_fails_loudly(tiny_run):
    _, run_dir, _ = tiny_run
    model = load_base(run_dir / "model/base")
    with pytest.raises(FreezePatternError, match="no trainable encoder"):
        apply_freeze(model, [r"^llm\..+$", r"^perception\.encoder\..+$"])


def test_export_reload_identical(tiny_run):
    cfg, run_dir, _ = tiny_run
    adapter = run_dir / "canary-qwen-medical-lora"
    # the in-memory fine-tuned model: base + the checkpoint the flywheel selected
    chosen = json.loads((run_dir / "train/selection.json").read_text())["chosen"]
    mem = load_base(run_dir / "model/base")
    apply_freeze(mem, list(cfg.model.freeze_params))
    load_training_checkpoint(mem, Path(chosen["path"]))
    reloaded, meta = load_adapted(adapter)
    assert meta["checkpoint"] == Path(chosen["path"]).name and meta["selection"]["trained_steps"] == cfg.train.max_steps
    paths = [r["audio_filepath"] for r in read_manifest(run_dir / "data/test.json")[:6]]
    kw = dict(prompt=cfg.model.prompt, batch_size=6, max_new_tokens=12, min_new_tokens=12)
    a = transcribe_paths(mem, paths, **kw)
    b = transcribe_paths(reloaded, paths, **kw)
    assert all(len(x) > 0 for x in a)
    assert a == b
    sd_mem, sd_re = mem.state_dict(), reloaded.state_dict()
    assert all(torch.equal(sd_mem[k], sd_re[k]) for k in export_keys(mem))
    base = transcribe_paths(load_base(run_dir / "model/base"), paths, **kw)
    assert base != a  # the adapter really changes the model


MERGED_SCRIPT = """
import json, sys
import soundfile as sf, torch
from nemo.collections.speechlm2.models import SALM
m = SALM.from_pretrained(sys.argv[1]).eval()
assert not any(".lora_" in n for n, _ in m.named_parameters()), "a merged export has no LoRA modules"
out = []
for path in sys.argv[3:]:
    a, _ = sf.read(path, dtype="float32")
    ids = m.generate(prompts=[[{"role": "user", "content": sys.argv[2] + " " + m.audio_locator_tag}]],
                     audios=torch.from_numpy(a)[None], audio_lens=torch.tensor([len(a)]), max_new_tokens=12)
    out.append(ids[0].tolist())
print(json.dumps(out))
"""


def test_merged_export_loads_with_nemo_alone(tiny_run, tmp_path):
    """canary-qwen-medical-lora/merged/ is what NeMo's (and vLLM's) SALM paths read: SALM.from_pretrained(dir) in a
    process that never imports medasr, offline and with no base folder to lean on, decodes as base + adapter does.
    (The old DEPLOY.md recipe discarded merge_and_unload's result and kept cfg.lora: q/v reloaded at random init.)"""
    import shutil

    cfg, run_dir, _ = tiny_run
    merged = tmp_path / "merged"
    shutil.copytree(run_dir / "canary-qwen-medical-lora" / "merged", merged)  # self-contained: moved away from the run
    conf = json.loads((merged / "config.json").read_text())
    assert "lora" not in conf and (merged / "llm_backbone" / "config.json").exists()
    rows = read_manifest(run_dir / "data/test.json")[:4]
    context = "Transcribe this medical dictation verbatim."
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "nohub")}
    shutil.move(str(run_dir / "model"), str(tmp_path / "model-away"))
    try:
        proc = subprocess.run([sys.executable, "-c", MERGED_SCRIPT, str(merged), context,
                               *[r["audio_filepath"] for r in rows]], capture_output=True, text=True, env=env, cwd=tmp_path)
    finally:
        shutil.move(str(tmp_path / "model-away"), str(run_dir / "model"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    adapted, _ = load_adapted(run_dir / "canary-qwen-medical-lora")
    adapted.eval()
    want = []
    for r in rows:
        import soundfile as sf

        a, _ = sf.read(r["audio_filepath"], dtype="float32")
        ids = adapted.generate(prompts=[[{"role": "user", "content": f"{context} {adapted.audio_locator_tag}"}]],
                               audios=torch.from_numpy(a)[None], audio_lens=torch.tensor([len(a)]), max_new_tokens=12)
        want.append(ids[0].tolist())
    assert got == want


def test_adapter_that_does_not_fit_is_refused(tiny_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, run_dir, _ = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(run_dir / "canary-qwen-medical-lora", bad)
    meta = json.loads((bad / "medasr_adapter.json").read_text())
    meta["base_model"] = str((run_dir / "model/base").resolve())
    (bad / "medasr_adapter.json").write_text(json.dumps(meta))
    t = load_file(str(bad / "adapter.safetensors"))
    k = next(k for k in t if "lora_A" in k)
    t[k] = torch.zeros(3, 3)
    save_file(t, str(bad / "adapter.safetensors"))
    with pytest.raises(AdapterError, match="shape mismatches"):
        load_adapted(bad)


def test_sigkill_then_resume(tiny_data_and_base):
    run_dir = tiny_data_and_base
    overrides = ["--set", "train.max_steps=40", "--set", "train.ckpt_every_n_steps=10", "--set", "train.val_every_n_steps=20"]
    cmd = [sys.executable, "-m", "medasr.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir), *overrides]
    env = os.environ | {"WANDB_MODE": "offline"}
    last = run_dir / "train/checkpoints/last.ckpt"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "train/DONE").exists()
    step_at_kill = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 10 <= step_at_kill < 40
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = [json.loads(x) for x in (run_dir / "train/resume_log.jsonl").read_text().splitlines()]
    assert log[0]["start_step"] == 0 and log[0]["resumed_from"] is None
    assert log[-1]["start_step"] == step_at_kill and log[-1]["resumed_from"].endswith("last.ckpt")
    assert json.loads((run_dir / "train/DONE").read_text()) == {"global_step": 40, "max_steps": 40}


def test_cli_transcribe_with_adapter(tiny_run):
    from typer.testing import CliRunner

    from medasr.cli import app

    cfg, run_dir, _ = tiny_run
    rows = read_manifest(run_dir / "data/test.json")[:3]
    adapter = run_dir / "canary-qwen-medical-lora"
    args = ["transcribe", "--adapter", str(adapter), "--max-new-tokens", "10", *[r["audio_filepath"] for r in rows]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["audio_filepath"] for x in lines] == [r["audio_filepath"] for r in rows]
    model, meta = load_adapted(adapter)
    expected = transcribe_paths(model, [r["audio_filepath"] for r in rows], meta["prompt"], 16, 10)
    assert [x["pred_text"] for x in lines] == expected
    bad = CliRunner().invoke(app, ["transcribe", "--adapter", str(adapter), "/nonexistent.wav"])
    assert bad.exit_code == 2 and "audio not found" in bad.output


def test_gate_stops_the_flywheel_unless_forced(tiny_data_and_base):
    run_dir = tiny_data_and_base
    cfg = load_config("tiny", ["gate.ker_threshold=1.0", "train.max_steps=4", "train.ckpt_every_n_steps=2",
                               "train.val_every_n_steps=2", "eval.max_new_tokens=4"])
    s = run_flywheel(cfg, run_dir)
    assert s["status"].startswith("stopped at gate (expand_terms)")
    assert not (run_dir / "train/checkpoints").exists() and not (run_dir / "train/DONE").exists()  # nothing trained
    gate = json.loads((run_dir / "eval/gate.json").read_text())
    assert gate["train"] is False and gate["forced"] is False
    s = run_flywheel(cfg, run_dir, force_train=True)
    assert s["status"] == "done" and json.loads((run_dir / "eval/gate.json").read_text())["forced"] is True
    assert json.loads((run_dir / "train/DONE").read_text())["global_step"] == 4


def test_checkpoints_are_slim(tiny_run):
    """Checkpoints hold trainable tensors, buffers and optimizer state, not the frozen LLM."""
    cfg, run_dir, _ = tiny_run
    ck = torch.load(run_dir / "train/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    sd = ck["state_dict"]
    assert not [k for k in sd if k.startswith("llm.") and ".lora_" not in k]  # frozen LLM weights dropped
    assert not [k for k in sd if k.startswith("embed_tokens.")]
    assert any(".lora_A" in k for k in sd) and any(k.startswith("perception.encoder.") for k in sd)
    assert ck["medasr_slim"]["dropped_frozen_tensors"] > 0 and "optimizer_states" in ck
    model = load_base(run_dir / "model/base")
    apply_freeze(model, list(cfg.model.freeze_params))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert set(sd) == set(model.state_dict()) - frozen  # exactly: everything but the frozen parameters


def test_no_model_outlives_its_stage(tiny_run):
    """Eval, preflight, smoke, train, select and eval each load a model in one process; on a 40-48 GB card the real
    model must be freed between them. The session's tiny run counted the models alive at each stage start with the
    cyclic collector off (conftest.models_alive_at_each_stage): a stage that starts while an earlier stage's model is
    still alive fails here."""
    alive = json.loads((tiny_run[1].parent / "models_alive.json").read_text())
    stages = [k for k in alive if "smoke" in k or "train" in k or "eval cycle1" in k]
    assert len(stages) == 3 and all(n == 0 for n in alive.values()), alive
