"""Steps 2 and 6 (README's workflow) — evaluate a model on the test manifest: hyps.json, metrics.json, report.md
under RUN/eval/cycleN/."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.progress import Progress

from medasr.config import Config
from medasr.data.lexicon import core_lexicon
from medasr.data.lexicon_sources import extended_lexicon
from medasr.data.manifest import read_manifest, write_manifest
from medasr.errors import InputError
from medasr.evaluate.metrics import compute_metrics
from medasr.evaluate.report import metrics_markdown
from medasr.evaluate.report_html import eval_html, write
from medasr.fingerprint import digest, file_sha256, model_digest
from medasr.families import family, load_model
from medasr.models.load import check_prompt_change
from medasr.ops.tracking import log_eval
from medasr.prompts import prompt_summary
from medasr.transcribe import POLICIES, model_decoder, stamp_prompts, transcribe_rows


def resolve_lexicon(name: str, rows: list[dict]) -> str:
    """`auto`: the core list for an all-synthetic test set (its terms come from it), the extended one otherwise."""
    if name != "auto":
        return name
    synthetic = all(str(r.get("source") or "").startswith(("synthetic", "generic")) for r in rows)
    return "core" if rows and synthetic else "extended"


def load_lexicon(name: str):
    if name == "core":
        return core_lexicon()
    if name == "extended":
        return extended_lexicon()
    raise InputError(f"eval.lexicon={name!r}: use core, extended or auto")


def decode_inputs(cfg: Config, manifest: Path, model_spec: str | Path) -> dict:
    """What the transcripts depend on: the model's files, the manifest's bytes, the prompts and decoding settings."""
    return {"model": str(model_spec), "model_sha256": model_digest(model_spec), "manifest": str(manifest),
            "manifest_sha256": file_sha256(manifest),
            "decoding": {"kind": cfg.model.kind, "prompt": cfg.model.prompt, "prompts_by_source": dict(cfg.model.prompts_by_source),
                         "max_new_tokens": cfg.eval.max_new_tokens}}


def score_inputs(cfg: Config) -> dict:
    """What the numbers depend on beyond the transcripts."""
    return {"normalizer": cfg.eval.normalizer, "lexicon": cfg.eval.lexicon, "n_boot": cfg.eval.n_boot}


def decode_fingerprint(decode: dict) -> str:
    """Content only: a run dir moved or copied elsewhere holds the same evaluation."""
    return digest({k: v for k, v in decode.items() if k not in ("model", "manifest")})


def transcripts_reusable(out_dir: Path, decode: dict) -> bool:
    """The saved transcripts (hyps.json) were decoded from these inputs: re-scoring them needs no model. (Whether the
    evaluation as a whole is current is the flywheel's stage record, medasr.provenance.)"""
    m = out_dir / "metrics.json"
    if not (m.exists() and (out_dir / "hyps.json").exists()):
        return False
    return json.loads(m.read_text()).get("inputs", {}).get("decode_fingerprint") == decode_fingerprint(decode)


def score_manifest(rows: list[dict], out_dir: Path, cfg: Config, title: str, decode: dict | None = None) -> dict:
    lexicon = resolve_lexicon(cfg.eval.lexicon, rows)
    metrics = compute_metrics(rows, normalizer=cfg.eval.normalizer, n_boot=cfg.eval.n_boot, lexicon=load_lexicon(lexicon))
    metrics["lexicon"], metrics["lexicon_setting"] = lexicon, cfg.eval.lexicon
    score = score_inputs(cfg)
    metrics["inputs"] = {"score": score, "score_fingerprint": digest(score)} | (
        {"decode": decode, "decode_fingerprint": decode_fingerprint(decode)} if decode else {})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "report.md").write_text(metrics_markdown(metrics, title))
    write(out_dir / "report.html", eval_html(metrics, rows, title))
    return metrics


def evaluate(cfg: Config, manifest: Path, out_dir: Path, model_spec: str | Path, title: str,
             run_dir: Path | None = None) -> dict:
    """Transcribe `manifest` with `model_spec` (medasr.families.load_model: export, base folder, .nemo or Hub id) and
    score it. Transcripts decoded from the same inputs are re-scored without loading a model; another model, manifest
    or prompt decodes again. Rows longer than the model's single-pass limit are chunked and merged (medasr.transcribe).
    Skipping a current evaluation altogether is the flywheel's (medasr.flywheel.evaluate_stage)."""
    decode = decode_inputs(cfg, manifest, model_spec)
    if transcripts_reusable(out_dir, decode):
        kept = {k: v for k, v in json.loads((out_dir / "metrics.json").read_text()).items() if k == "prompts_used"}
        metrics = score_manifest(read_manifest(out_dir / "hyps.json"), out_dir, cfg, title, decode) | kept
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))  # the transcripts' prompts, kept
        return metrics | {"rescored": True}
    rows = read_manifest(manifest)
    # an export decoded under other prompts than it was fine-tuned with gives other numbers: refused unless allowed
    trained = check_prompt_change(model_spec, cfg.model.prompt, cfg.model.prompts_by_source, cfg.eval.allow_prompt_change)
    torch.set_num_threads(cfg.train.threads)
    loaded = load_model(model_spec, kind=cfg.model.kind)
    decode_fn = model_decoder(loaded, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.model.prompt,
                              cfg.eval.static_cache)
    rows = stamp_prompts(rows, loaded, cfg.model.prompt, cfg.model.prompts_by_source)  # the training prompts
    with Progress() as progress:
        results = transcribe_rows(rows, decode_fn, POLICIES[loaded.kind], cfg.eval.batch_size, progress,
                                  f"transcribing {manifest.name}")
    scored = [r | {"pred_text": res.text} | ({"chunks": len(res.chunks)} if len(res.chunks) > 1 else {})
              for r, res in zip(rows, results)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir / "hyps.json", scored)
    metrics = score_manifest(scored, out_dir, cfg, title, decode)
    if family(loaded.kind).prompted:  # the prompts the rows were decoded with (each row's `context` in hyps.json)
        used = {"prompt": cfg.model.prompt, "prompts_by_source": dict(cfg.model.prompts_by_source)}
        metrics["prompts_used"] = used | {"rows_by_prompt": prompt_summary(rows), "trained": trained,
                                          "changed_from_trained": trained is not None and
                                          used != {k: trained[k] for k in used}}
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if run_dir is not None:
        log_eval(cfg, run_dir, out_dir.name, metrics, scored)
    return metrics
