"""RUN/train/inputs.json: what a training run was made from (manifests, base model, recipe), so a changed input starts
a new run instead of resuming the old one's checkpoints (and the export, evaluation and comparison follow).

Settings that only say how or how long to run (max_steps, checkpoint and validation cadence, devices, threads, W&B
project) are not part of the recipe: raising max_steps continues the same run.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from medasr.config import Config
from medasr.fingerprint import digest, file_sha256, model_digest

OPERATIONAL = {"max_steps", "smoke_steps", "ckpt_every_n_steps", "keep_last", "val_every_n_steps", "select_rows",
               "limit_val_batches", "log_every_n_steps", "num_workers", "accelerator", "devices", "threads",
               "wandb_project"}


# The optimizer fields that were fixed before train.optimizer / train.lr_scheduler existed: a recipe that keeps them is
# fingerprinted as it was then (flat lr, weight_decay, warmup_steps, min_lr), so a run made before the move resumes.
FIXED_BEFORE = {"optimizer.name": "AdamW", "optimizer.betas": [0.9, 0.98], "optimizer.eps": 1e-8,
                "lr_scheduler.name": "CosineAnnealing"}


def recipe(train) -> dict:
    """What training computes from (train.* less OPERATIONAL), in its fingerprint form."""
    r = {k: v for k, v in asdict(train).items() if k not in OPERATIONAL}
    opt, sched = r.pop("optimizer"), r.pop("lr_scheduler")
    r |= {"lr": opt.pop("lr"), "weight_decay": opt.pop("weight_decay"), "warmup_steps": sched.pop("warmup_steps"),
          "min_lr": sched.pop("min_lr")}
    rest = {f"optimizer.{k}": v for k, v in opt.items()} | {f"lr_scheduler.{k}": v for k, v in sched.items()}
    return r | {k: v for k, v in rest.items() if FIXED_BEFORE.get(k, object()) != v}


def train_inputs(cfg: Config, run_dir: Path, base: str | Path) -> dict:
    data = run_dir / "data"
    return {"train_manifest_sha256": file_sha256(data / "train.json"), "val_manifest_sha256": file_sha256(data / "val.json"),
            "base_sha256": model_digest(base),  # content, not path: a copied or moved run dir is the same run
            "recipe": recipe(cfg.train),
            "model": asdict(cfg.model) | {"base": None}}  # the base is its hash above, not its path


def recorded(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "train" / "inputs.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_current(cfg: Config, run_dir: Path, base: str | Path, say=print) -> str:
    """Record this run's training inputs; if RUN/train was made from other inputs, move it to RUN/train.stale-<fp>
    (never deleted: it may be all a budget bought) so training starts afresh. Returns the fingerprint."""
    inputs = train_inputs(cfg, run_dir, base)
    fp = digest(inputs)
    train_dir, old = run_dir / "train", recorded(run_dir)
    if old is not None and old.get("fingerprint") != fp:
        changed = sorted(k for k in inputs if inputs[k] != old.get("inputs", {}).get(k))
        stale = run_dir / f"train.stale-{old.get('fingerprint', 'unknown')}"
        shutil.rmtree(stale, ignore_errors=True)
        train_dir.rename(stale)
        say(f"training inputs changed ({', '.join(changed)}): the old run moved to {stale.name}; training afresh")
    train_dir.mkdir(parents=True, exist_ok=True)
    if old is None or old.get("fingerprint") != fp:
        (train_dir / "inputs.json").write_text(json.dumps(
            {"fingerprint": fp, "inputs": inputs, "time": dt.datetime.now(dt.timezone.utc).isoformat()}, indent=2))
    return fp
