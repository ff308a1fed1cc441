"""The Lightning callbacks and checkpoint IO every training run carries (medasr/train/trainer.py lists them), each a
plain class a reader can find: checkpoint safety (atomic writes, slim checkpoints, a checkpoint on a stop signal),
rails (the watchdog), and records (resume log, progress heartbeat, throughput and cost, the recipe that ran, S3 sync).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medasr.atomic import write_text_atomic
from medasr.console import console
from medasr.errors import RunError
from medasr.models.load import CheckpointError, missing_trainable
from medasr.models.optim import recipe_record
from medasr.models.speed import state_key
from medasr.ops.storage import BackgroundSync


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temp file and renames, so a kill during a save never leaves a truncated checkpoint under a name
    that resume would pick up. Beside `last.ckpt` it writes `last.json` (its step), which S3 sync uploads first, so
    the watcher can tell how current the checkpoint on S3 is."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
        if path.name == "last.ckpt":
            write_text_atomic(path.with_name("last.json"), json.dumps(
                {"global_step": int(checkpoint.get("global_step", 0)), "time": time.time()}))


class ResumeLog(Callback):
    """Appends one line per launch to train/resume_log.jsonl: the global step training (re)starts from."""

    def __init__(self, train_dir: Path, resumed_from: str | None):
        self.train_dir, self.resumed_from = train_dir, resumed_from

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        with open(self.train_dir / "resume_log.jsonl", "a") as f:
            f.write(json.dumps({"start_step": int(trainer.global_step), "resumed_from": self.resumed_from,
                                "pid": os.getpid()}) + "\n")


class RecipeRecord(Callback):
    """Writes the optimizer and schedule the trainer actually built (class, lr, betas, eps, weight decay, warmup,
    min lr) to `path` when training starts: the preset's `train.optimizer` / `train.lr_scheduler`, as they ran."""

    def __init__(self, path: Path):
        self.path = path
        self.record: dict | None = None

    def on_train_start(self, trainer, pl_module):
        self.record = recipe_record(trainer)
        if trainer.is_global_zero:
            write_text_atomic(self.path, json.dumps(self.record, indent=2))


class SlimCheckpoints(Callback):
    """Checkpoints hold what training changes: trainable parameters (LoRA, encoder, projection), all buffers,
    optimizer/scheduler state and loop position. The frozen LLM is dropped (for the real model that is 1.7 B
    parameters per checkpoint) and comes back on resume from the base model, which is always loaded first.
    Resume refuses a checkpoint that lacks any trainable parameter."""

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


class StopSignalCheckpoint(Callback):
    """Lightning turns SIGTERM into SIGTERMException at the next batch boundary and saves nothing. On SIGTERM or
    Ctrl-C this writes `last.ckpt` (atomically) so the next launch resumes from the very step."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = ckpt_dir

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and trainer.global_step > 0:
            trainer.save_checkpoint(str(self.ckpt_dir / "last.ckpt"))
            console.print(f"[yellow]stop signal: saved last.ckpt at step {trainer.global_step}")


class Throughput(Callback):
    """Logs samples/s, audio seconds per second of wall time, and the money this launch has cost so far."""

    def __init__(self, price_per_hour: float):
        self.price_per_hour = price_per_hour

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
                            "cost/usd_this_launch": self.price_per_hour * (time.time() - self.t0) / 3600},
                           on_step=True, batch_size=1)


class TrainingWatchdogError(RunError):
    """The run cannot succeed as configured (non-finite loss, validation not running): stop instead of burning hours."""

    headline = "training stopped:"


class TrainingWatchdog(Callback):
    """Stops training with a reason when the training loss is NaN/inf for `max_nonfinite_steps` steps in a row, when
    the validation loss is NaN/inf, or when validation has not run for 2x its interval."""

    def __init__(self, val_every_n_steps: int, max_nonfinite_steps: int = 3):
        self.val_every_n_steps, self.max_nonfinite_steps = val_every_n_steps, max_nonfinite_steps

    def on_train_start(self, trainer, pl_module):
        self.last_val_step, self.bad = int(trainer.global_step), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        step = int(trainer.global_step)
        nonfinite = loss is not None and not math.isfinite(float(loss))
        # every DDP rank must stop at the same step, or the others wait in the next all-reduce: agree first
        if trainer.strategy.reduce_boolean_decision(nonfinite, all=False):
            self.bad += 1
            if self.bad >= self.max_nonfinite_steps:
                shown = float(loss) if nonfinite else "not finite on another rank"
                raise TrainingWatchdogError(
                    f"training loss is {shown} for {self.bad} steps in a row (step {step}): the run diverged. Lower "
                    "train.optimizer.lr, check the data (`medasr validate`, `medasr preflight`) and the precision (bf16 for TDT, not fp16)")
        else:
            self.bad = 0
        if step - self.last_val_step > 2 * self.val_every_n_steps:
            raise TrainingWatchdogError(
                f"validation has not run since step {self.last_val_step} (now {step}, interval "
                f"{self.val_every_n_steps}): the run is blind; check train.val_every_n_steps and the validation manifest")

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the before/after trainer.validate calls
            return
        self.last_val_step = int(trainer.global_step)
        v = trainer.callback_metrics.get("val_loss")
        if v is not None and not math.isfinite(float(v)):
            raise TrainingWatchdogError(f"validation loss is {float(v)} at step {self.last_val_step}: the run "
                                        "diverged. Lower train.optimizer.lr or check the data and precision")


class Progress(Callback):
    """`train/progress.json` = {global_step, max_steps, time, pid} after every step: a heartbeat for supervisors."""

    def __init__(self, train_dir: Path):
        self.train_dir = train_dir

    def on_train_batch_end(self, trainer, *args):
        if not trainer.is_global_zero:
            return
        write_text_atomic(self.train_dir / "progress.json", json.dumps(
            {"global_step": int(trainer.global_step), "max_steps": int(trainer.max_steps), "time": time.time(),
             "pid": os.getpid()}))


class S3Sync(Callback):
    """After every checkpoint (and at the end of training), sync the run to S3 in the background."""

    def __init__(self, run_dir: Path, uri: str):
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
