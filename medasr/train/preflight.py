"""Step 3b (README's workflow) — model preflight: refuse a run that is doomed from step 0, before any training time is
spent. The checks of the model itself are the family's (`ModelFamily.check_model`, medasr/families/).

Checks (all written to RUN/train/preflight.json, printed, and run by the flywheel before `train`):
1. checkpoint coverage — every tensor of the base checkpoint lands in the model with the same shape, and every model
   tensor comes from a checkpoint. `SALM.from_pretrained` loads with strict=False, so a renamed or extra key would be
   dropped silently and a missing one would stay random: we refuse with the list instead;
2. trainable groups — the freeze pattern gives what the preset intends (SALM: LLM frozen; encoder, projection and
   LoRA trained. ASR: everything trained);
3. prompt — one training example rendered through the real data pipeline, and a check that its prompt tokens equal
   what inference sends (SALM);
4. validation will run — validation rows exist and max_steps >= val_every_n_steps, so the run is never blind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from medasr.config import Config
from medasr.console import console
from medasr.data.manifest import read_manifest
from medasr.families import family
from medasr.families.base import ModelPreflightError
from medasr.models.load import print_param_table

__all__ = ["ModelPreflightError", "model_preflight", "validation_plan"]


def validation_plan(cfg: Config, data_dir: Path) -> dict:
    train = read_manifest(data_dir / "train.json")
    n_train, n_val = len(train), len(read_manifest(data_dir / "val.json"))
    t = cfg.train
    per_batch = t.batch_size
    if t.batch_tokens > 0:  # token batches: rows per batch from the mean row (audio at 0.08 s per token + ~60 text)
        mean_tokens = sum(r["duration"] for r in train) / max(1, n_train) / 0.08 + 60
        per_batch = max(1, int(t.batch_tokens // mean_tokens))
    batches = max(1, math.ceil(n_train / per_batch))
    return {"train_rows": n_train, "val_rows": n_val, "rows_per_batch": per_batch, "batches_per_epoch": batches,
            "epochs": round(t.max_steps / batches, 2),
            "val_every_n_steps": t.val_every_n_steps, "validations": t.max_steps // t.val_every_n_steps if n_val else 0,
            # check_val_every_n_epoch=None: the interval counts steps across epochs, so short epochs cannot skip it
            "counted_across_epochs": True}


def model_preflight(cfg: Config, run_dir: Path, base: str | Path) -> dict:
    """Run every check; raise ModelPreflightError with the reason on the first failure. Returns the report."""
    data_dir = run_dir / "data"
    problems = []
    plan = validation_plan(cfg, data_dir)
    if plan["val_rows"] == 0:
        problems.append(f"{data_dir / 'val.json'} is empty: training would run without validation")
    elif plan["validations"] == 0:
        problems.append(f"train.val_every_n_steps={cfg.train.val_every_n_steps} > train.max_steps={cfg.train.max_steps}: "
                        "validation would never run; lower val_every_n_steps")
    if cfg.train.limit_val_batches <= 0:
        problems.append("train.limit_val_batches must be > 0")
    if problems:
        raise ModelPreflightError("; ".join(problems))
    checked = family(cfg).check_model(cfg, run_dir, base)  # coverage, trainable groups, the family's own checks
    report: dict = {"kind": cfg.model.kind, "base": str(base), "validation": plan} | checked
    groups = checked["groups"]
    print_param_table(groups)
    if "prompt" in report:
        console.print("[bold]training example as the model sees it:[/]")
        console.print(report["prompt"]["rendered_training_example"], highlight=False, markup=False)
        console.print("[bold]the prompt decoding sends for it (the same token ids):[/]")
        console.print(report["prompt"]["rendered_inference_prompt"], highlight=False, markup=False)
    console.print(f"validation: {plan['validations']} run(s), every {plan['val_every_n_steps']} steps "
                  f"({plan['batches_per_epoch']} batches per epoch, {plan['epochs']} epochs)", highlight=False)
    out = run_dir / "train" / "preflight.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
