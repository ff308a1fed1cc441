"""Stage 2 / 5 — evaluate a model on the test manifest: hyps.json, metrics.json, report.md under RUN/eval/cycleN/."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.progress import Progress

from medasr.config import Config
from medasr.data.manifest import read_manifest, write_manifest
from medasr.evaluate.metrics import compute_metrics
from medasr.evaluate.report import metrics_markdown
from medasr.evaluate.report_html import eval_html, write


def load_lexicon(name: str):
    from medasr.data.lexicon import core_lexicon

    if name == "core":
        return core_lexicon()
    if name == "extended":
        from medasr.data.lexicon_sources import extended_lexicon

        return extended_lexicon()
    raise ValueError(f"eval.lexicon={name!r}: use core or extended")


def eval_is_done(out_dir: Path, n_rows: int) -> bool:
    m = out_dir / "metrics.json"
    return m.exists() and (out_dir / "hyps.json").exists() and json.loads(m.read_text()).get("n_rows") == n_rows


def score_manifest(rows: list[dict], out_dir: Path, cfg: Config, title: str) -> dict:
    metrics = compute_metrics(rows, normalizer=cfg.eval.normalizer, n_boot=cfg.eval.n_boot, lexicon=load_lexicon(cfg.eval.lexicon))
    metrics["lexicon"] = cfg.eval.lexicon
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "report.md").write_text(metrics_markdown(metrics, title))
    write(out_dir / "report.html", eval_html(metrics, rows, title))
    return metrics


def evaluate(cfg: Config, manifest: Path, out_dir: Path, load_model, title: str, run_dir: Path | None = None) -> dict:
    """`load_model() -> medasr.transcribe.Loaded` is called only when work is needed, so a finished evaluation costs
    no model load. Rows longer than the model's single-pass limit are chunked and merged (medasr.transcribe)."""
    from medasr.transcribe import POLICIES, model_decoder, stamp_prompts, transcribe_rows

    rows = read_manifest(manifest)
    if eval_is_done(out_dir, len(rows)):
        return json.loads((out_dir / "metrics.json").read_text()) | {"skipped": True}
    torch.set_num_threads(cfg.train.threads)
    loaded = load_model()
    decode = model_decoder(loaded, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.model.prompt,
                           cfg.eval.static_cache)
    rows = stamp_prompts(rows, loaded, cfg.model.prompt, cfg.model.prompts_by_source)  # the training prompts
    with Progress() as progress:
        results = transcribe_rows(rows, decode, POLICIES[loaded.kind], cfg.eval.batch_size, progress,
                                  f"transcribing {manifest.name}")
    scored = [r | {"pred_text": res.text} | ({"chunks": len(res.chunks)} if len(res.chunks) > 1 else {})
              for r, res in zip(rows, results)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir / "hyps.json", scored)
    metrics = score_manifest(scored, out_dir, cfg, title)
    if run_dir is not None:
        from medasr.ops.tracking import log_eval

        log_eval(cfg, run_dir, out_dir.name, metrics, scored)
    return metrics
