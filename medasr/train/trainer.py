"""Stage 4 — fine-tune under Lightning, for both model kinds:
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
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from medasr.atomic import write_text_atomic
from medasr.config import Config, s3_uri, to_dict
from medasr.console import console
from medasr.models import asr
from medasr.models.load import CheckpointError, apply_freeze, missing_trainable, print_param_table
from medasr.models.salm import load_base, quiet_nemo
from medasr.models.speed import apply_speed, state_key
from medasr.ops.spend import price_per_hour
from medasr.ops.storage import BackgroundSync
from medasr.ops.tracking import offline, run_id
from medasr.prompts import AUDIO_TAG, prompted_manifests
from medasr.train.select import checkpoint_callbacks, val_wer_callback


def data_config(model, cfg: Config, data_dir: Path) -> dict:
    """SALM train/val loaders over `data_dir`'s manifests, whose rows carry their prompt in `context`
    (medasr.prompts.prompted_manifests): NeMo prepends it as the user text turn before the audio."""
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


class AtomicCheckpointIO:
    """Lightning CheckpointIO that writes to a temp file and renames, so a kill during a save never leaves a
    truncated checkpoint under a name that resume would pick up. Beside `last.ckpt` it writes `last.json` (its step),
    which S3 sync uploads first, so the watcher can tell how current the checkpoint on S3 is."""

    def __new__(cls):
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        class _Atomic(TorchCheckpointIO):
            def save_checkpoint(self, checkpoint, path, storage_options=None):
                path = Path(path)
                tmp = path.with_name(path.name + ".partial")
                super().save_checkpoint(checkpoint, tmp, storage_options)
                os.replace(tmp, path)
                if path.name == "last.ckpt":
                    write_text_atomic(path.with_name("last.json"), json.dumps(
                        {"global_step": int(checkpoint.get("global_step", 0)), "time": time.time()}))

        return _Atomic()


def resume_log_callback(train_dir: Path, resumed_from: str | None):
    """Appends one line per launch to train/resume_log.jsonl: the global step training (re)starts from."""
    from lightning.pytorch.callbacks import Callback

    class _ResumeLog(Callback):
        def on_train_start(self, trainer, pl_module):
            if not trainer.is_global_zero:
                return
            with open(train_dir / "resume_log.jsonl", "a") as f:
                f.write(json.dumps({"start_step": int(trainer.global_step), "resumed_from": resumed_from, "pid": os.getpid()}) + "\n")

    return _ResumeLog()


def slim_checkpoint_callback():
    """Checkpoints hold what training changes: trainable parameters (LoRA, encoder, projection), all buffers,
    optimizer/scheduler state and loop position. The frozen LLM is dropped (for the real model that is 1.7 B
    parameters per checkpoint) and comes back on resume from the base model, which is always loaded first.
    Resume refuses a checkpoint that lacks any trainable parameter."""
    from lightning.pytorch.callbacks import Callback

    class _Slim(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            # every name of a frozen tensor: a tied one (Qwen3's lm_head = embed_tokens) is listed once by default
            frozen = {state_key(n) for n, p in pl_module.named_parameters(remove_duplicate=False) if not p.requires_grad}
            sd = checkpoint["state_dict"]
            for k in [k for k in sd if k in frozen]:
                del sd[k]
            checkpoint["medasr_slim"] = {"dropped_frozen_tensors": len(frozen), "kept_tensors": len(sd)}

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            if missing := missing_trainable(pl_module, checkpoint["state_dict"]):
                raise CheckpointError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[:3]}): "
                                      "it does not belong to this model/preset")

    return _Slim()


def stop_signal_checkpoint(ckpt_dir: Path):
    """Lightning turns SIGTERM into SIGTERMException at the next batch boundary and saves nothing (FACTS §6).
    On SIGTERM or Ctrl-C this writes `last.ckpt` (atomically) so the next launch resumes from the very step."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class _StopCheckpoint(Callback):
        def on_exception(self, trainer, pl_module, exception):
            if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and trainer.global_step > 0:
                trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"))
                console.print(f"[yellow]stop signal: saved last.ckpt at step {trainer.global_step}")

    return _StopCheckpoint()


def throughput_callback(price_per_hour: float):
    """Logs samples/s, audio seconds per second of wall time, and the money this launch has cost so far."""
    from lightning.pytorch.callbacks import Callback

    class _Throughput(Callback):
        def on_train_start(self, trainer, pl_module):
            self.t0 = self.t = time.time()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            dt = max(time.time() - self.t, 1e-6)
            if isinstance(batch, dict):  # SALMDataset
                lens, sr = batch["audio_lens"], pl_module.sampling_rate
            else:  # NeMo ASR datasets: (audio, audio_lens, tokens, token_lens)
                lens, sr = batch[1], pl_module.cfg.sample_rate
            pl_module.log_dict({"throughput/samples_per_s": len(lens) / dt,
                                "throughput/audio_s_per_s": float(lens.sum()) / sr / dt,
                                "cost/usd_this_launch": price_per_hour * (time.time() - self.t0) / 3600},
                               on_step=True, batch_size=1)

    return _Throughput()


class TrainingWatchdogError(RuntimeError):
    """The run cannot succeed as configured (non-finite loss, validation not running): stop instead of burning hours."""


def watchdog_callback(val_every_n_steps: int, max_nonfinite_steps: int = 3):
    """Stops training with a reason when the training loss is NaN/inf for `max_nonfinite_steps` steps in a row, when
    the validation loss is NaN/inf, or when validation has not run for 2x its interval."""
    import math

    from lightning.pytorch.callbacks import Callback

    class _Watchdog(Callback):
        def on_train_start(self, trainer, pl_module):
            self.last_val_step, self.bad = int(trainer.global_step), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            step = int(trainer.global_step)
            nonfinite = loss is not None and not math.isfinite(float(loss))
            # every DDP rank must stop at the same step, or the others wait in the next all-reduce: agree first
            if trainer.strategy.reduce_boolean_decision(nonfinite, all=False):
                self.bad += 1
                if self.bad >= max_nonfinite_steps:
                    shown = float(loss) if nonfinite else "not finite on another rank"
                    raise TrainingWatchdogError(
                        f"training loss is {shown} for {self.bad} steps in a row (step {step}): the run diverged. "
                        "Lower train.lr, check the data (preflight) and the precision (bf16 for TDT, not fp16)")
            else:
                self.bad = 0
            if step - self.last_val_step > 2 * val_every_n_steps:
                raise TrainingWatchdogError(
                    f"validation has not run since step {self.last_val_step} (now {step}, interval {val_every_n_steps}): "
                    "the run is blind; check train.val_every_n_steps and the validation manifest")

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or trainer.state.fn != "fit":  # not the before/after trainer.validate calls
                return
            self.last_val_step = int(trainer.global_step)
            v = trainer.callback_metrics.get("val_loss")
            if v is not None and not math.isfinite(float(v)):
                raise TrainingWatchdogError(f"validation loss is {float(v)} at step {self.last_val_step}: the run diverged. "
                                            "Lower train.lr or check the data and precision")

    return _Watchdog()


def progress_callback(train_dir: Path):
    """`train/progress.json` = {global_step, max_steps, time, pid} after every step: a heartbeat for supervisors."""
    from lightning.pytorch.callbacks import Callback

    class _Progress(Callback):
        def on_train_batch_end(self, trainer, *args):
            if not trainer.is_global_zero:
                return
            write_text_atomic(train_dir / "progress.json", json.dumps(
                {"global_step": int(trainer.global_step), "max_steps": int(trainer.max_steps), "time": time.time(),
                 "pid": os.getpid()}))

    return _Progress()


def s3_sync_callback(run_dir: Path, uri: str):
    """After every checkpoint (and at the end of training), sync the run to S3 in the background."""
    from lightning.pytorch.callbacks import Callback

    class _S3Sync(Callback):
        def __init__(self):
            self.sync = BackgroundSync(run_dir, uri)
            self._pending = False

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            self._pending = True

        def on_train_batch_end(self, trainer, *args):
            if self._pending:  # runs after ModelCheckpoint wrote the file (callback order)
                self._pending = False
                self.sync.request()

        def on_train_end(self, trainer, pl_module):
            self.sync.request()
            self.sync.join(timeout=600)
            if self.sync.errors:
                console.print(f"[yellow]S3 sync errors (will retry on the next sync): {self.sync.errors[-1]}")

    return _S3Sync()


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


def _prepare_salm(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    from nemo.collections.speechlm2 import DataModule, SALMDataset

    model = load_base(base)
    model.cfg.optimizer = {
        "_target_": "torch.optim.AdamW",
        "lr": cfg.train.lr,
        "betas": [0.9, 0.98],
        "weight_decay": cfg.train.weight_decay,
    }
    model.cfg.lr_scheduler = {
        "_target_": "nemo.core.optim.lr_scheduler.CosineAnnealing",
        "warmup_steps": cfg.train.warmup_steps,
        "min_lr": cfg.train.min_lr,
        "max_steps": cfg.train.max_steps,
    }
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


def _prepare_asr(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    model = asr.load_base(base)
    table = asr.prepare_for_training(model, cfg)
    record = {"kind": "asr", "groups": table, "tokenizer_dir": cfg.model.tokenizer_dir,
              "loss": type(model.loss._loss).__name__ if hasattr(model, "loss") else None}
    asr.setup_data(model, cfg, data_dir)
    return model, {}, record


def prepare(cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
    """(model ready to train, Trainer.fit kwargs, trainable-parameter record) for the preset's model kind, reading
    data_dir/{train,val}.json; work_dir holds derived files (SALM: the prompted manifests)."""
    fn = _prepare_asr if cfg.model.kind == "asr" else _prepare_salm
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
        callbacks=[*checkpoint_callbacks(cfg, ckpt_dir), val_wer_callback(cfg, run_dir),
                   LearningRateMonitor(logging_interval="step"), resume_log_callback(train_dir, resume_from),
                   stop_signal_checkpoint(ckpt_dir), progress_callback(train_dir), slim_checkpoint_callback(),
                   watchdog_callback(cfg.train.val_every_n_steps),
                   throughput_callback(price_per_hour(cfg))]
        + ([s3_sync_callback(run_dir, s3_uri(cfg))] if s3_uri(cfg) and zero else []),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=sys.stderr.isatty(),
        check_val_every_n_epoch=None,  # finite manifests: an epoch is a few batches (FACTS §7)
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
