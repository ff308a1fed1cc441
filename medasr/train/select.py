"""Step 5 (README's workflow) — checkpoint selection by validation WER, and the export reload check (the export itself
is the model family's: `ModelFamily.export`, medasr/families/).

SALM's own validation gives loss and token accuracy only, and the lowest loss is not always the lowest WER. So at every
validation during training, `ValWER` decodes a fixed subset of the validation set (the first
`train.select_rows` rows, with their training prompts) with the model's own generate/transcribe and logs its corpus WER
as `val_wer_norm` (same normaliser as the test evaluation). Lightning's ModelCheckpoint keeps the best checkpoint by
that metric beside the last `train.keep_last` periodic ones (older ones are pruned).

After training, `select_checkpoint` decodes the same subset with the best checkpoint and with the uniform average of
the kept periodic ones (`medasr average`), and picks the lower WER (the single best on a tie). `reload_check` then
decodes the subset with the exported model, reloaded from disk, and refuses an export whose WER differs from the
in-memory model's by more than 0.1 point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from medasr.atomic import write_text_atomic
from medasr.config import Config
from medasr.console import console
from medasr.data.manifest import read_manifest
from medasr.errors import RunError
from medasr.evaluate.metrics import score_rows
from medasr.families import family, load_model
from medasr.families.base import Loaded
from medasr.models.load import AdapterError
from medasr.train.average import average_checkpoints
from medasr.transcribe import transcribe_rows

METRIC = "val_wer_norm"
RELOAD_TOLERANCE = 0.001  # 0.1 WER point
_STEP = re.compile(r"^step(\d+)\.ckpt$")


class SelectionError(RunError):
    headline = "checkpoint selection stopped:"


def selection_rows(cfg: Config, run_dir: Path) -> list[dict]:
    """The fixed validation subset: the first train.select_rows rows of val.json, with their training prompts."""
    rows = read_manifest(run_dir / "data" / "val.json")[: cfg.train.select_rows]
    if not rows:
        raise SelectionError(f"{run_dir / 'data' / 'val.json'} is empty: no rows to select checkpoints on")
    return family(cfg).prompt_rows(rows, cfg.model.prompt, cfg.model.prompts_by_source)


def corpus_wer(rows: list[dict], hyps: list[str], normalizer: str) -> float:
    scores = score_rows([r | {"pred_text": h} for r, h in zip(rows, hyps)], normalizer)
    return sum(s.word_edits for s in scores) / max(1, sum(s.ref_words for s in scores))


def decode_rows(cfg: Config, model, rows: list[dict]) -> list[str]:
    """Transcripts of `rows` by an in-memory model, as the evaluation decodes them (same policy, prompts, settings)."""
    fam = family(cfg)
    loaded = Loaded(model, fam.kind, "in-memory", cfg.model.prompt, dict(cfg.model.prompts_by_source))
    decode = fam.decoder(loaded, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.model.prompt, cfg.eval.static_cache)
    return [r.text for r in transcribe_rows(rows, decode, fam.chunk_policy, cfg.eval.batch_size)]


def model_wer(cfg: Config, model, rows: list[dict]) -> float:
    was_training = model.training
    try:
        return corpus_wer(rows, decode_rows(cfg, model, rows), cfg.eval.normalizer)
    finally:
        model.train(was_training)


class ValWER(Callback):
    """Logs `val_wer_norm` at every validation of the fit and appends {step: wer} to RUN/train/val_wer.json."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.rows, self.out = cfg, selection_rows(cfg, run_dir), run_dir / "train" / "val_wer.json"

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        wer = model_wer(self.cfg, pl_module, self.rows)
        # every DDP rank decodes the same rows; the mean is what ModelCheckpoint and the history both use
        pl_module.log(METRIC, wer, prog_bar=True, batch_size=1, sync_dist=True)
        if not trainer.is_global_zero:
            return
        wer = float(trainer.callback_metrics.get(METRIC, wer))
        hist = json.loads(self.out.read_text()) if self.out.exists() else {}
        hist[str(int(trainer.global_step))] = round(wer, 6)
        write_text_atomic(self.out, json.dumps(hist, indent=2))


def checkpoint_callbacks(cfg: Config, ckpt_dir: Path) -> list:
    """The last `train.keep_last` periodic checkpoints (plus last.ckpt) and the best by `val_wer_norm`.

    No version counter: in a run dir that moved (a copy, a restore from S3 to another path) Lightning does not restore
    its callback state, finds last.ckpt already there and writes last-v1.ckpt beside it, so the next resume after a
    kill would restart from the stale last.ckpt (caught by the pod's transient-kill rehearsal)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    periodic = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step:06d}", auto_insert_metric_name=False,
                               every_n_train_steps=cfg.train.ckpt_every_n_steps, every_n_epochs=None, save_last=True,
                               monitor="step", mode="max", save_top_k=cfg.train.keep_last,
                               enable_version_counter=False)
    best = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best-step{step:06d}", auto_insert_metric_name=False,
                           monitor=METRIC, mode="min", save_top_k=1, save_on_train_epoch_end=False,
                           enable_version_counter=False)
    return [periodic, best]


def kept_periodic(ckpt_dir: Path) -> list[Path]:
    """The periodic checkpoints ModelCheckpoint keeps, from its state in last.ckpt (a checkpoint it pruned but that
    a restore from S3 brought back is not one of them); by step."""
    files = {p.name: p for p in ckpt_dir.glob("step*.ckpt") if _STEP.match(p.name)}
    last = ckpt_dir / "last.ckpt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        for key, cb in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint{'monitor': 'step'"):
                files = {n: p for n, p in files.items() if n in {Path(k).name for k in cb.get("best_k_models", {})}}
    return sorted(files.values(), key=lambda p: int(_STEP.match(p.name)[1]))


def best_checkpoint(run_dir: Path) -> Path | None:
    """best-step<N>.ckpt for the step with the lowest val_wer_norm in RUN/train/val_wer.json (earliest on a tie, as
    ModelCheckpoint replaces its best only on a strict improvement)."""
    ckpt_dir = run_dir / "train" / "checkpoints"
    hist_file = run_dir / "train" / "val_wer.json"
    if hist_file.exists() and (hist := json.loads(hist_file.read_text())):
        step = min(hist, key=lambda s: (hist[s], int(s)))
        if (p := ckpt_dir / f"best-step{int(step):06d}.ckpt").exists():
            return p
    found = sorted(ckpt_dir.glob("best-step*.ckpt"))
    return found[-1] if found else None


def choose(candidates: list[dict]) -> dict:
    """Lowest val WER; on a tie the earlier candidate (the single best checkpoint before the average)."""
    return min(candidates, key=lambda c: c["val_wer"])


def select_checkpoint(cfg: Config, run_dir: Path, base: str | Path, trained_steps: int) -> dict:
    """Best-by-WER vs the average of the kept periodic checkpoints of a training run of `trained_steps` steps
    → RUN/train/selection.json; returns it."""
    ckpt_dir = run_dir / "train" / "checkpoints"
    rows = selection_rows(cfg, run_dir)
    cands: list[dict] = []
    if best := best_checkpoint(run_dir):
        cands.append({"name": "best", "path": str(best)})
    else:  # no validation ran (should not happen after preflight): fall back to the final weights
        cands.append({"name": "last", "path": str(ckpt_dir / "last.ckpt")})
    periodic = kept_periodic(ckpt_dir)
    if len(periodic) >= 2:
        avg = run_dir / "train" / "selection" / "average.ckpt"
        average_checkpoints(periodic, avg)
        cands.append({"name": f"average of {len(periodic)}", "path": str(avg), "sources": [p.name for p in periodic]})
    for c in cands:
        model = family(cfg).load_checkpoint(cfg, base, Path(c["path"]))
        c["val_wer"] = round(model_wer(cfg, model, rows), 6)
        del model
    chosen = choose(cands)
    result = {"metric": f"corpus WER ({cfg.eval.normalizer} normaliser) on the first {len(rows)} validation rows",
              "rows": len(rows), "candidates": cands, "chosen": chosen,
              "history": json.loads((run_dir / "train" / "val_wer.json").read_text())
              if (run_dir / "train" / "val_wer.json").exists() else {}, "trained_steps": trained_steps}
    (run_dir / "train" / "selection.json").write_text(json.dumps(result, indent=2))
    console.print("checkpoint selection: " + ", ".join(f"{c['name']} {100 * c['val_wer']:.2f}%" for c in cands)
                  + f" → {chosen['name']} ({Path(chosen['path']).name})", highlight=False)
    return result


def reload_check(cfg: Config, run_dir: Path, export: Path, expected_wer: float) -> dict:
    """Decode the subset with the export reloaded from disk; refuse it when its WER is off by > 0.1 point."""
    rows = selection_rows(cfg, run_dir)
    loaded = load_model(export, kind=cfg.model.kind)
    wer = model_wer(cfg, loaded.model, rows)
    res = {"rows": len(rows), "in_memory_wer": round(expected_wer, 6), "reloaded_wer": round(wer, 6),
           "tolerance": RELOAD_TOLERANCE, "ok": abs(wer - expected_wer) <= RELOAD_TOLERANCE}
    if not res["ok"]:
        raise AdapterError(f"{export}: reloaded WER {100 * wer:.2f}% differs from the in-memory model's "
                           f"{100 * expected_wer:.2f}% by more than {100 * RELOAD_TOLERANCE:.1f} point: the export does "
                           "not reproduce the trained model (missing tensors? different prompt?)")
    return res
