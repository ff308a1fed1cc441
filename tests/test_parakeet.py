"""The Parakeet-TDT second path — CPU TDT loss, tiny-parakeet flywheel, resume, refusal, tokenizer switch."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medasr.config import load_config
from medasr.models.asr import UnsupportedBaseError, check_base
from medasr.models.tdt_loss import CPUTDTLoss, _transducer_logprob


def _nemo_reference(monkeypatch):
    # NeMo's pure-PyTorch reference moves tensors with .cuda(); on a CPU-only torch that is the identity we need.
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    from nemo.collections.asr.losses.rnnt_pytorch import RNNTLossPytorch, TDTLossPytorch

    return TDTLossPytorch, RNNTLossPytorch


def _inputs(seed=0, B=3, T=7, U=4, V=6, D=4):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, T, U + 1, V + 1 + D, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.randint(0, V, (B, U), generator=g)
    return acts, labels, torch.tensor([T, T - 2, T - 1]), torch.tensor([U, 2, 3]), V


def test_cpu_tdt_loss_matches_nemo_reference_values_and_gradients(monkeypatch):
    TDTLossPytorch, _ = _nemo_reference(monkeypatch)
    acts, labels, act_lens, label_lens, V = _inputs()
    durs = [0, 1, 2, 3]
    ref = TDTLossPytorch(blank=V, durations=durs, reduction="none", sigma=0.05)(
        acts=acts, labels=labels, act_lens=act_lens, label_lens=label_lens)
    ours = CPUTDTLoss(blank=V, durations=durs, sigma=0.05)(acts, labels, act_lens, label_lens)
    assert torch.allclose(ours.double(), ref, atol=1e-8), (ours, ref)
    g_ref, = torch.autograd.grad(ref.sum(), acts)
    g_ours, = torch.autograd.grad(ours.sum(), acts)
    assert (g_ref - g_ours).abs().max() < 1e-6


def test_sampled_rnnt_branch_matches_nemo_rnnt_loss(monkeypatch):
    _, RNNTLossPytorch = _nemo_reference(monkeypatch)
    acts, labels, act_lens, label_lens, V = _inputs(seed=1)
    a = acts[..., : V + 1].detach()
    ref = RNNTLossPytorch(blank=V, reduction="none")(acts=a, labels=labels, act_lens=act_lens, label_lens=label_lens)
    lp = torch.log_softmax(a, -1)
    B, T, U1, _ = lp.shape
    emit = torch.gather(lp[:, :, :-1], 3, labels[:, None, :, None].expand(B, T, U1 - 1, 1)).squeeze(3)
    ours = -_transducer_logprob(lp[..., V], emit, torch.zeros(B, T, U1, 2, dtype=lp.dtype), [0, 1], act_lens,
                                label_lens, plain_rnnt=True)
    assert torch.allclose(ours, ref, atol=1e-8)


def test_tdt_durations_must_include_0_and_1():
    with pytest.raises(ValueError, match="include 0 and 1"):
        CPUTDTLoss(blank=5, durations=[1, 2])


def test_tiny_parakeet_flywheel_end_to_end(tiny_parakeet_run):
    from nemo.collections.asr.models import ASRModel

    cfg, run_dir, summary = tiny_parakeet_run
    assert summary["status"] == "done" and summary["train_done"]
    assert summary["export"] == str(run_dir / "adapted_model.nemo")
    assert summary["val_loss"]["final"] < summary["val_loss"]["base"]  # full SFT moved the model on held-out rows
    meta = json.loads((run_dir / "adapted_model.json").read_text())
    sel = json.loads((run_dir / "train/selection.json").read_text())
    assert meta["selection"]["trained_steps"] == 60 and meta["model_class"] == "EncDecRNNTBPEModel"
    assert meta["checkpoint"] == Path(sel["chosen"]["path"]).name and meta["reload_check"]["ok"]
    assert {c["name"] for c in sel["candidates"]} == {"best", "average of 3"}  # steps 20/40/60 kept, best by WER
    rec = json.loads((run_dir / "train/trainable_params.json").read_text())
    assert rec["loss"] == "CPUTDTLoss" and all(g["frozen"] == 0 for g in rec["groups"].values())
    # the export reloads with NeMo alone, holds the trained weights, and differs from the base
    adapted = ASRModel.restore_from(str(run_dir / "adapted_model.nemo"), map_location="cpu")
    base = ASRModel.restore_from(str(run_dir / "model/base.nemo"), map_location="cpu")
    ckpt = torch.load(sel["chosen"]["path"], map_location="cpu", weights_only=False)
    sd = adapted.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ckpt["state_dict"].items() if k in sd)
    changed = [k for k, v in base.state_dict().items() if v.is_floating_point() and not torch.equal(v, sd[k])]
    assert len(changed) > 20
    assert adapted.cfg.loss.loss_name == "tdt"  # the CPU loss swap is a training detail, not part of the export
    # both evaluation cycles scored every test row and the model card reports them
    for c in ("cycle0", "cycle1"):
        m = json.loads((run_dir / "eval" / c / "metrics.json").read_text())
        assert m["n_rows"] == len((run_dir / "data/test.json").read_text().splitlines())
    card = (run_dir / "adapted_model.md").read_text()
    assert "Trained steps: 60" in card and "ASRModel.restore_from" in card
    from medasr.runstate import run_is_done

    assert run_is_done(run_dir, 60) == (True, "done")  # the supervisor recognises a finished ASR run


def test_refuses_streaming_nemotron_base(tmp_path):
    for name in ("nvidia/nemotron-speech-streaming-en-0.6b", "/models/nemotron-speech-streaming-en-0.6b.nemo"):
        with pytest.raises(UnsupportedBaseError, match="collapses"):
            check_base(name)
    check_base("nvidia/parakeet-tdt-0.6b-v2")
    from typer.testing import CliRunner

    from medasr.cli import app

    res = CliRunner().invoke(app, ["flywheel", "--preset", "parakeet-tdt-0.6b-v2", "--run-dir", str(tmp_path / "r"),
                                   "--set", "model.base=nvidia/nemotron-speech-streaming-en-0.6b"])
    assert res.exit_code == 2 and "parakeet-tdt-0.6b-v2" in res.output and "<unk>" in res.output
    assert not (tmp_path / "r").exists()  # refused before any data was built


def test_parakeet_preset_carries_the_stock_recipe():
    cfg = load_config("parakeet-tdt-0.6b-v2")
    assert (cfg.model.kind, cfg.model.base, cfg.model.precision) == ("asr", "nvidia/parakeet-tdt-0.6b-v2", "bf16-mixed")
    assert (cfg.train.optimizer.lr, cfg.train.batch_size, cfg.train.grad_clip) == (3e-4, 4, 1.0)
    assert cfg.model.tokenizer_dir is None  # the base's tokenizer is kept unless asked
    # 3 epochs of the 2,000-row training subset at batch 4
    assert cfg.train.max_steps == 3 * cfg.data.max_train // cfg.train.batch_size
    with pytest.raises(ValueError, match="model.kind"):
        load_config("tiny", ["model.kind=ctc"])


@pytest.mark.slow
def test_asr_training_resumes_after_sigterm(tiny_parakeet_data_and_base):
    rd = tiny_parakeet_data_and_base
    env = {k: v for k, v in __import__("os").environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "medasr.cli", "train", "--preset", "tiny-parakeet", "--run-dir", str(rd),
           "--set", "train.max_steps=40", "--set", "train.ckpt_every_n_steps=1000", "--set", "train.val_every_n_steps=1000"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def step():
        try:
            return json.loads((rd / "train/progress.json").read_text())["global_step"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.time() + 300
    while step() < 10 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    at_kill = step()
    assert 10 <= at_kill < 40
    assert torch.load(rd / "train/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"] == at_kill
    out = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    log = [json.loads(x) for x in (rd / "train/resume_log.jsonl").read_text().splitlines()]
    assert log[-1]["start_step"] == at_kill and log[-1]["resumed_from"].endswith("last.ckpt")
    assert json.loads((rd / "train/DONE").read_text()) == {"global_step": 40, "max_steps": 40}


def test_tokenizer_switch_is_applied_to_training_and_export(tiny_parakeet_data_and_base, tmp_path):
    """model.tokenizer_dir swaps the vocabulary before training; the export carries the new tokenizer."""
    from nemo.collections.asr.models import ASRModel

    from medasr.models.tiny_asr import train_tokenizer
    from medasr.families.asr import export_nemo
    from medasr.train.trainer import train

    rd = tiny_parakeet_data_and_base
    tok = train_tokenizer(tmp_path / "tok64", 64)
    cfg = load_config("tiny-parakeet", [f"model.tokenizer_dir={tok}", "train.max_steps=4", "train.ckpt_every_n_steps=2",
                                        "train.val_every_n_steps=2"])
    base = rd / "model/base.nemo"
    assert train(cfg, rd, base)["global_step"] == 4
    out = export_nemo(cfg, rd, base)
    m = ASRModel.restore_from(str(out), map_location="cpu")
    assert m.tokenizer.vocab_size == 64 != ASRModel.restore_from(str(base), map_location="cpu").tokenizer.vocab_size
    assert json.loads((rd / "adapted_model.json").read_text())["vocab_size"] == 64
    # NeMo's change_vocabulary leaves a plain RNN-T loss whose blank id counts the duration outputs; ours rebuilds it
    from medasr.models.asr import switch_tokenizer

    fresh = ASRModel.restore_from(str(base), map_location="cpu")
    switch_tokenizer(fresh, tok)
    assert fresh.loss._blank == 64 and type(fresh.loss._loss).__name__ == "TDTLossNumba"
