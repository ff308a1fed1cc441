"""Step 4 (README's workflow) — fine-tune under Lightning. The model family (medasr/families/) prepares the model, its
data loaders and its optimizer (`ModelFamily.prepare`); everything else is the same for every family, on 2 CPU cores
(tiny presets) and on GPUs:
- a checkpoint every `train.ckpt_every_n_steps` (the last `train.keep_last` kept) and a `last.ckpt`, plus the best by
  validation WER (medasr/train/select.py); re-running resumes from `last.ckpt`;
- W&B logger (online when WANDB_API_KEY is set, offline otherwise) with one stable run id across restarts;
- `train/DONE` = {"global_step": N, "max_steps": N} only when max_steps is reached (never inferred from exit code).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from medasr.atomic import write_text_atomic
from medasr.config import Config, s3_uri, to_dict
from medasr.console import console
from medasr.families import family
from medasr.families.base import is_rank_zero
from medasr.models.load import print_param_table
from medasr.models.salm import quiet_nemo
from medasr.ops.spend import price_per_hour
from medasr.ops.tracking import offline, run_id
from medasr.train.callbacks import (AtomicCheckpointIO, Progress, RecipeRecord, ResumeLog, S3Sync, SlimCheckpoints,
                                    StopSignalCheckpoint, Throughput, TrainingWatchdog)
from medasr.train.select import ValWER, checkpoint_callbacks


def wandb_logger(cfg: Config, train_dir: Path):
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        project=cfg.train.wandb_project,
        name=f"{cfg.name}-{train_dir.parent.name}",
        id=run_id(train_dir.parent),
        resume="allow",
        save_dir=str(train_dir),
        offline=offline(),
        # Lightning's offline flag only sets WANDB_MODE in the environment, which wandb no longer reads once an earlier
        # wandb.init (the cycle-0 eval log) has run in this process: pass the mode to wandb.init itself.
        mode="offline" if offline() else "online",
        config=to_dict(cfg),
    )


def is_done(train_dir: Path, max_steps: int) -> bool:
    done = train_dir / "DONE"
    if not done.exists():
        return False
    d = json.loads(done.read_text())
    return d.get("global_step") == max_steps == d.get("max_steps")


def train(cfg: Config, run_dir: Path, base: str | Path) -> dict:
    """Train (or resume) into RUN/train; returns the DONE record. Re-running a finished train returns at once."""
    train_dir = run_dir / "train"
    ckpt_dir = train_dir / "checkpoints"
    if is_done(train_dir, cfg.train.max_steps):
        return json.loads((train_dir / "DONE").read_text()) | {"skipped": True}
    train_dir.mkdir(parents=True, exist_ok=True)
    quiet_nemo()
    torch.set_num_threads(cfg.train.threads)
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import LearningRateMonitor

    seed_everything(cfg.train.seed, workers=True)
    model, fit_kw, record = family(cfg).prepare(cfg, run_dir / "data", base, train_dir)
    print_param_table(record["groups"])
    zero = is_rank_zero()
    if zero:
        (train_dir / "trainable_params.json").write_text(json.dumps(record, indent=2))
        for stale in ckpt_dir.glob("*.partial"):  # left by a kill during a save
            stale.unlink()
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if last.exists() else None
    trainer = Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        # more than one device: Lightning's DDP (NCCL on GPUs, gloo on CPU), its launcher starting one process per
        # device by re-running this command (the flywheel runs training as `medasr train` for that reason)
        strategy="ddp" if cfg.train.devices > 1 else "auto",
        precision=cfg.model.precision,
        logger=wandb_logger(cfg, train_dir),
        callbacks=[*checkpoint_callbacks(cfg, ckpt_dir), ValWER(cfg, run_dir),
                   LearningRateMonitor(logging_interval="step"), ResumeLog(train_dir, resume_from),
                   RecipeRecord(train_dir / "recipe.json"), StopSignalCheckpoint(ckpt_dir), Progress(train_dir),
                   SlimCheckpoints(), TrainingWatchdog(cfg.train.val_every_n_steps), Throughput(price_per_hour(cfg))]
        + ([S3Sync(run_dir, s3_uri(cfg))] if s3_uri(cfg) and zero else []),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=sys.stderr.isatty(),
        check_val_every_n_epoch=None,  # an epoch of a finite manifest is a few batches: count steps, or never validate
        val_check_interval=cfg.train.val_every_n_steps,
        limit_val_batches=cfg.train.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.train.log_every_n_steps,
        gradient_clip_val=cfg.train.grad_clip,
        use_distributed_sampler=False,
        enable_model_summary=False,
        default_root_dir=str(train_dir),
    )
    if (smoke := train_dir / "smoke.json").exists():  # the smoke run's verdict and projections, beside the curves
        s = json.loads(smoke.read_text())
        trainer.logger.log_hyperparams({"smoke": {k: v for k, v in s.items() if k != "losses"}})
    metrics_file = train_dir / "val_loss.json"
    vals = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if "base" not in vals and not last.exists():
        # Validation loss of the untouched base, on the same val set, for the before/after check.
        vals["base"] = float(trainer.validate(model, verbose=False, **fit_kw)[0]["val_loss"])
        if zero:
            metrics_file.write_text(json.dumps(vals, indent=2))
    if resume_from:
        console.print(f"[bold]resuming[/] from {last}")
    trainer.fit(model, ckpt_path=resume_from, **fit_kw)
    step = int(trainer.global_step)
    if step < cfg.train.max_steps:
        raise RuntimeError(f"training stopped at step {step} of {cfg.train.max_steps}; re-run to resume from {last}")
    vals["final"] = float(trainer.validate(model, verbose=False, **fit_kw)[0]["val_loss"])
    done = {"global_step": step, "max_steps": cfg.train.max_steps}
    if trainer.is_global_zero:  # one writer for the shared files (every DDP rank gets here)
        metrics_file.write_text(json.dumps(vals, indent=2))
        import wandb

        wandb.finish()  # close the run so a later launch (resume, next cycle) can continue the same id
        write_text_atomic(train_dir / "DONE", json.dumps(done))
    return done
