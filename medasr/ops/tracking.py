"""Weights & Biases: one stable run per run directory, online when WANDB_API_KEY is set, offline otherwise.

Training (Lightning's WandbLogger) and the evaluation stages log into the same run id (`RUN/train/wandb_id`), so a
restarted pod continues the same W&B run. Evaluation tables carry reference and hypothesis per row; with
`eval.redact_transcripts` (for PHI) they carry a SHA-256 prefix of each text instead, so rows can still be matched
across cycles without the words leaving the machine.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def run_id(run_dir: Path) -> str:
    f = run_dir / "train" / "wandb_id"
    f.parent.mkdir(parents=True, exist_ok=True)
    if not f.exists():
        f.write_text(uuid.uuid4().hex[:12])
    return f.read_text().strip()


def offline() -> bool:
    # Lightning's WandbLogger(offline=True) sets WANDB_MODE=dryrun (the old spelling of offline)
    return not os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def log_eval(cfg, run_dir: Path, cycle: str, metrics: dict, rows: list[dict], max_rows: int = 2000) -> None:
    """Log an evaluation's headline metrics and its per-row table to the run's W&B run."""
    import wandb

    redact = cfg.eval.redact_transcripts
    columns = ["id", "reference", "hypothesis", "term", "entity_category", "term_seen"]
    table = wandb.Table(columns=columns)
    for r in rows[:max_rows]:
        ref, hyp = r.get("text", ""), r.get("pred_text", "")
        table.add_data(r.get("id") or Path(r.get("audio_filepath", "")).name, digest(ref) if redact else ref,
                       digest(hyp) if redact else hyp, r.get("term"), r.get("entity_category"), r.get("term_seen"))
    scalars = {f"eval/{cycle}/{k}": metrics[k] for k in ("wer", "cer", "ker", "ker_seen", "ker_unseen", "term_error_rate")
               if metrics.get(k) is not None}
    scalars |= {f"eval/{cycle}/ker_{c}": v["ker"] for c, v in metrics.get("ker_by_category", {}).items()}
    run = wandb.init(project=cfg.train.wandb_project, id=run_id(run_dir), resume="allow", dir=str(run_dir / "train"),
                     mode="offline" if offline() else "online", reinit="finish_previous")
    run.log(scalars | {f"eval/{cycle}/transcripts": table})
    run.summary.update(scalars)
    run.finish()
