"""Smoke run: `train.smoke_steps` (20) optimizer steps before the full run, so a doomed configuration costs minutes.

It trains a fresh copy of the prepared model (the real optimizer, precision and loss) at a constant learning rate on
the 2 x batch_size *longest* training rows, repeated: a healthy setup must fit a fixed tiny set, so the loss has to be
finite and falling, and the longest rows give the peak memory and an upper bound on the step time. Results go to
RUN/train/smoke.json (and to W&B with the training run); a failure raises SmokeRunError, which the flywheel turns
into RUN/FAILED with the reason.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from medasr.config import Config
from medasr.console import console
from medasr.data.manifest import read_manifest, write_manifest
from medasr.errors import RunError
from medasr.families import family
from medasr.ops.spend import price_per_hour
from medasr.train.callbacks import RecipeRecord


class SmokeRunError(RunError):
    pass


def smoke_rows(rows: list[dict], n: int) -> list[dict]:
    """The n longest rows (ties by position), the worst case for memory and step time."""
    order = sorted(range(len(rows)), key=lambda i: (-float(rows[i]["duration"]), i))
    return [rows[i] for i in order[:n]]


def loss_verdict(losses: list[float]) -> tuple[bool, str]:
    """Finite everywhere and the mean of the last quarter below the mean of the first quarter."""
    bad = [i + 1 for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad:
        return False, f"loss is not finite at step(s) {bad[:5]}"
    q = max(1, len(losses) // 4)
    first, last = statistics.fmean(losses[:q]), statistics.fmean(losses[-q:])
    if not last < first:
        return False, (f"loss is not falling on a fixed set of {len(losses)} steps: first-{q} mean {first:.4f}, "
                       f"last-{q} mean {last:.4f}")
    return True, f"loss falls from {first:.4f} to {last:.4f} (mean of first/last {q} steps)"


class StepRecorder(Callback):
    """Each step's loss and wall time (the device synchronised, so a step's time is its own)."""

    def __init__(self):
        self.losses: list[float] = []
        self.step_s: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_s.append(time.perf_counter() - self.t)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss) if loss is not None else float("nan"))


def _peak_memory_gib() -> dict:
    if torch.cuda.is_available():
        return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    import resource

    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}  # KiB on Linux


def smoke_run(cfg: Config, run_dir: Path, base: str | Path) -> dict:
    """Run the smoke steps; write RUN/train/smoke.json; raise SmokeRunError when the run would be doomed."""
    from lightning.pytorch import Trainer, seed_everything

    steps = cfg.train.smoke_steps
    work = run_dir / "train" / "smoke"
    rows = read_manifest(run_dir / "data" / "train.json")
    n = min(len(rows), 2 * cfg.train.batch_size)
    chosen = smoke_rows(rows, n)
    write_manifest(work / "input" / "train.json", chosen)
    write_manifest(work / "input" / "val.json", chosen[:1])  # the loaders want one; validation is off here
    torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, workers=True)
    fam = family(cfg)
    model, fit_kw, _ = fam.prepare(cfg, work / "input", base, work)
    fam.apply_recipe(model, cfg.train, constant_lr=True)  # the preset's optimizer, no schedule
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rec, recipe = StepRecorder(), RecipeRecord(work / "recipe.json")
    # one device even for a multi-device run: the check is the setup, and a DDP launch here would re-run the flywheel
    trainer = Trainer(max_steps=steps, accelerator=cfg.train.accelerator, devices=1,
                      precision=cfg.model.precision, logger=False, callbacks=[rec, recipe], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, gradient_clip_val=cfg.train.grad_clip, use_distributed_sampler=False,
                      default_root_dir=str(work))
    t0 = time.time()
    trainer.fit(model, **fit_kw)
    wall = time.time() - t0
    ok, reason = loss_verdict(rec.losses)
    if len(rec.losses) < steps:
        ok, reason = False, f"only {len(rec.losses)} of {steps} steps ran"
    steady = rec.step_s[2:] or rec.step_s  # the first steps pay for allocation / kernel selection
    step_s = round(statistics.median(steady), 4)
    hours = step_s * cfg.train.max_steps / 3600
    price = price_per_hour(cfg)
    result = {
        "ok": ok, "reason": reason, "base": str(base), "steps": len(rec.losses), "rows": n,
        "rows_seconds": round(sum(float(r["duration"]) for r in chosen), 2),
        "longest_row_s": round(float(chosen[0]["duration"]), 2) if chosen else 0.0,
        "losses": [round(x, 5) if math.isfinite(x) else str(x) for x in rec.losses],
        "step_s_median": step_s, "wall_s": round(wall, 1),
        **_peak_memory_gib(),
        # the longest rows make this an upper bound on the per-step time of the full run (validation not included)
        "projected_train_hours": round(hours, 3), "max_steps": cfg.train.max_steps,
        "price_per_hour": price, "projected_cost_usd": round(hours * price, 2),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "recipe": recipe.record,  # the optimizer that ran: the preset's train.optimizer at a constant lr
    }
    (run_dir / "train" / "smoke.json").write_text(json.dumps(result, indent=2))
    mem = result.get("peak_gpu_memory_gib", result.get("peak_rss_gib"))
    console.print(f"smoke run: {reason}; {step_s:.3f} s/step on the longest rows, peak memory {mem} GiB; "
                  f"full run ({cfg.train.max_steps} steps) <= {hours:.2f} h" + (f", <= ${hours * price:.2f}" if price else ""),
                  highlight=False)
    if not ok:
        raise SmokeRunError(f"smoke run failed: {reason}. Lower train.optimizer.lr, check the data (medasr validate) and "
                            f"precision; details in {run_dir / 'train' / 'smoke.json'}")
    return result
