"""Step 4 (README's workflow) — fine-tune under Lightning, for both model kinds:
- salm: a SALM with LoRA (LLM frozen; encoder, projection, LoRA trained) — our equivalent of NeMo's
  examples/speechlm2/salm_train.py (SALM + SALMDataset + DataModule + Trainer) without DDP/NCCL;
- asr: a NeMo ASRModel (Parakeet-TDT) full SFT — what examples/asr/speech_to_text_finetune.py does.
The same code runs on 2 CPU cores (tiny presets) and on one GPU, with the same machinery for both kinds:
- a checkpoint every `train.ckpt_every_n_steps` (the last `train.keep_last` kept) and a `last.ckpt`, plus the best by
  validation WER (medasr/train/select.py); re-running resumes from `last.ckpt`;
- W&B logger (online when WANDB_API_KEY is set, offline otherwise) with one stable run id across restarts;
- `train/DONE` = {"global_step": N, "max_steps": N} only when max_steps is reached (never inferred from exit code).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from medasr.atomic import write_text_atomic
from medasr.config import Config, s3_uri, to_dict
from medasr.console import console
from medasr.data.manifest import prompted_manifests
from medasr.models import asr
from medasr.models.load import apply_freeze, print_param_table
from medasr.models.optim import apply_recipe
from medasr.models.salm import load_base, quiet_nemo
from medasr.models.salm_train import MedasrSALM
from medasr.models.speed import apply_speed
from medasr.ops.spend import price_per_hour
from medasr.ops.tracking import offline, run_id
from medasr.prompts import AUDIO_TAG
from medasr.train.callbacks import (AtomicCheckpointIO, Progress, RecipeRecord, ResumeLog, S3Sync, SlimCheckpoints,
                                    StopSignalCheckpoint, Throughput, TrainingWatchdog)
from medasr.train.select import ValWER, checkpoint_callbacks


def data_config(model, cfg: Config, data_dir: Path) -> dict:
    """SALM train/val loaders over `data_dir`'s manifests, whose rows carry their prompt in `context`
    (medasr.data.manifest.prompted_manifests): NeMo prepends it as the user text turn before the audio."""
    ted = model.token_equivalent_duration

    def input_cfg(manifest: Path) -> list[dict]:
        return [
            {
                "type": "lhotse_as_conversation",
                "manifest_filepath": str(manifest.resolve()),
                "audio_locator_tag": AUDIO_TAG,
            }
        ]

    common = {"sample_rate": model.sampling_rate, "prompt_format": model.cfg.prompt_format, "token_equivalent_duration": ted}
    train = {
        **common,
        "input_cfg": input_cfg(data_dir / "train.json"),
        "seed": cfg.train.seed,
        "shuffle": True,
        "shard_seed": "randomized",
        "num_workers": cfg.train.num_workers,
        "batch_size": cfg.train.batch_size,
    }
    if cfg.train.bucketing or cfg.train.batch_tokens > 0:
        # Conversations have no single duration: Lhotse's multimodal sampling measures each row in tokens (audio at
        # token_equivalent_duration per token, plus prompt and transcript tokens), for batches and for buckets.
        train |= {"use_multimodal_sampling": True, "measure_total_length": True}
    if cfg.train.batch_tokens > 0:
        train |= {"batch_size": None, "batch_tokens": cfg.train.batch_tokens}
    if cfg.train.bucketing:  # bucket bins estimated from a first buffer of rows
        train |= {"use_bucketing": True, "num_buckets": cfg.train.num_buckets, "concurrent_bucketing": False}
    return {
        "train_ds": train,
        "validation_ds": {
            **common,
            "datasets": {"val": {"input_cfg": input_cfg(data_dir / "val.json")}},
            "seed": cfg.train.seed,
            "shard_seed": "randomized",
            "num_workers": cfg.train.num_workers,
            "batch_size": cfg.train.batch_size,
        },
    }


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


def is_rank_zero() -> bool:
    """Before the Trainer exists: Lightning's DDP launcher starts ranks > 0 with LOCAL_RANK/NODE_RANK set."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def is_done(train_dir: Path, max_steps: int) -> bool:
    done = train_dir / "DONE"
    if not done.exists():
        return False
    d = json.loads(done.read_text())
    return d.get("global_step") == max_steps == d.get("max_steps")


def prepare_salm(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    from nemo.collections.speechlm2 import DataModule, SALMDataset

    model = load_base(base, cls=MedasrSALM)  # NeMo's SALM with our training step written out (models/salm_train.py)
    apply_recipe(model, cfg.train, "salm")
    table = apply_freeze(model, list(cfg.model.freeze_params))
    speed = apply_speed(model, cfg.train)  # after freezing: the wrappers rename parameters, not state-dict keys
    model.strict_loading = False  # slim checkpoints: frozen weights come from the base, checked in on_load_checkpoint

    # rank zero writes them before Lightning's launcher starts the other ranks, which read them
    prompted = prompted_manifests(cfg, data_dir, work_dir / "data") if is_rank_zero() else work_dir / "data"
    datamodule = DataModule(OmegaConf.create(data_config(model, cfg, prompted)), tokenizer=model.tokenizer,
                            dataset=SALMDataset(model.tokenizer))
    record = {"kind": "salm", "groups": table, "freeze_params": list(cfg.model.freeze_params), "speed": speed,
              "lora": OmegaConf.to_container(model.cfg.lora) if "lora" in model.cfg else None}
    return model, {"datamodule": datamodule}, record


def prepare_asr(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    model = asr.load_base(base)
    table = asr.prepare_for_training(model, cfg)
    record = {"kind": "asr", "groups": table, "tokenizer_dir": cfg.model.tokenizer_dir,
              "loss": type(model.loss._loss).__name__ if hasattr(model, "loss") else None}
    asr.setup_data(model, cfg, data_dir)
    return model, {}, record


def prepare(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    """(model ready to train, Trainer.fit kwargs, trainable-parameter record) for the preset's model kind, reading
    data_dir/{train,val}.json; work_dir holds derived files (SALM: the prompted manifests)."""
    fn = prepare_asr if cfg.model.kind == "asr" else prepare_salm
    return fn(cfg, data_dir, base, work_dir)


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
    model, fit_kw, record = prepare(cfg, run_dir / "data", base, train_dir)
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
