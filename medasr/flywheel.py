"""The clinical ASR flywheel: build → eval (cycle 0) → gate → train → select → export → eval (cycle 1) → compare →
model card.

Every stage runs under its key (`STAGES`) through one wrapper: a stage that computes something records what it was
made from in RUN/provenance/<key>.json (medasr.provenance) and is skipped while that record matches today's inputs, so
re-running the same command resumes an interrupted run, re-running a finished run only re-reads JSON, and a changed
input redoes exactly the stages it reaches. Training itself resumes from last.ckpt (medasr.train.trainer).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from medasr.config import Config, s3_uri, save_config
from medasr.console import console
from medasr.data.build import build, data_present
from medasr.data.build import fingerprint as data_fingerprint
from medasr.data.manifest import read_manifest, write_manifest
from medasr.data.validate import MAX_SECONDS, validate_manifest, write_report
from medasr.errors import InputError, MedasrError, RunError
from medasr.evaluate.compare import compare_rows
from medasr.evaluate.gate import decide
from medasr.evaluate.report import compare_markdown
from medasr.evaluate.report_html import compare_html
from medasr.evaluate.report_html import write as write_html
from medasr.evaluate.stage import decode_fingerprint, decode_inputs, evaluate, load_lexicon, score_inputs
from medasr.fingerprint import digest, file_sha256
from medasr.ops.failures import is_transient
from medasr.ops.storage import delete_remote, sync_up
from medasr import provenance
from medasr.provenance import run_stage
from medasr.runstate import FAILED, clear_failed, mark_failed, read_failed
from medasr.families import family, resolve_base
from medasr.train.inputs import ensure_current
from medasr.train.preflight import model_preflight
from medasr.train.select import reload_check, select_checkpoint
from medasr.train.smoke import smoke_run
from medasr.train.callbacks import TrainingWatchdogError
from medasr.train.trainer import is_done, train

# Every flywheel stage by its key (RUN/FAILED's "stage", summary.json's timings_s), with the title shown for it: a
# title can change without changing what a supervisor, a watcher or a test reads.
STAGES = {"build": "build", "validate": "validate manifests", "base": "base model",
          "eval-cycle0": "eval cycle0 (base)", "preflight": "preflight (model)", "smoke": "smoke run", "train": "train",
          "select": "select checkpoint", "export": "export", "eval-cycle1": "eval cycle1 (fine-tuned)", "compare": "compare",
          "sync": "sync to S3"}
SUMMARY_KEYS = ("wer", "cer", "ker", "ker_seen", "ker_unseen", "term_error_rate")


def run_compare(cfg: Config, before_dir: Path, after_dir: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (before_dir, after_dir))
    lexicons = {m.get("lexicon", "core") for m in (before, after)}
    if len(lexicons) > 1:
        raise InputError(f"the evaluations tagged terms with different lexicons ({', '.join(sorted(lexicons))}): "
                         "score both with the same eval.lexicon")
    c = compare_rows(
        read_manifest(before_dir / "hyps.json"),
        read_manifest(after_dir / "hyps.json"),
        priority=list(cfg.gate.priority),
        normalizer=cfg.eval.normalizer,
        n_boot=cfg.eval.n_boot,
        lexicon=load_lexicon(lexicons.pop()),
        min_clusters=cfg.gate.min_clusters,
    )
    c["lexicon"] = before.get("lexicon", "core")
    (out_dir / "compare.json").write_text(json.dumps(c, indent=2))
    (out_dir / "compare.md").write_text(compare_markdown(c))
    write_html(out_dir / "compare.html", compare_html(c, before, after))
    return c


def train_ddp(cfg: Config, run_dir: Path) -> dict:
    """Training on several devices: `medasr train` on the run's own config.yaml in a child process, which Lightning's
    DDP launcher re-runs once per extra device (re-running the whole flywheel there would repeat every stage)."""
    if not is_done(run_dir / "train", cfg.train.max_steps):
        cmd = [sys.executable, "-m", "medasr.cli", "train", "--preset", str(run_dir / "config.yaml"), "--run-dir", str(run_dir)]
        # A stop signal reaches the ranks (the supervisor signals the process group); this process waits for them to
        # save last.ckpt instead of dying first. A Python handler, unlike SIG_IGN, is not inherited by the child.
        held = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            rc = subprocess.Popen(cmd).wait()
        finally:
            for s, h in held.items():
                signal.signal(s, h)
        if failed := read_failed(run_dir):  # the watchdog stopped it (`medasr train` marked the run)
            raise TrainingWatchdogError(failed["reason"])
        if rc != 0 or not is_done(run_dir / "train", cfg.train.max_steps):
            raise RuntimeError(f"training on {cfg.train.devices} devices exited {rc} before max_steps; re-run to resume")
    return json.loads((run_dir / "train" / "DONE").read_text())


def release_memory() -> None:
    """Free what a finished stage held before the next one loads its own model: eval, preflight, smoke, train, select
    and eval each load one (a 2.5 B SALM is ~5 GB in bf16, more with optimizer state), and NeMo/Lightning objects sit in
    reference cycles that only a collection frees; then hand the freed CUDA blocks back."""
    gc.collect()
    torch = sys.modules.get("torch")  # not imported: nothing to free
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ManifestValidationError(RunError):
    """Bad manifest rows: the report names them (data.skip_bad=true continues without them)."""

    headline = "manifest validation stopped the run:"


def validate_manifests(cfg: Config, run_dir: Path) -> dict:
    """Validate every manifest before any model time; stop with the report unless data.skip_bad is set."""
    out = {}
    for split in ("train", "val", "test"):
        m = run_dir / "data" / f"{split}.json"
        # test rows are only decoded, and decoding chunks long ones (whole consultations); training rows must fit
        rep = validate_manifest(m, max_seconds=float("inf") if split == "test" else MAX_SECONDS)
        report_path = run_dir / "data" / "preflight" / f"{split}.json"
        write_report(rep, report_path)
        out[split] = {"accepted": rep.accepted, "rejected": len(rep.rejected), "report": str(report_path)}
        if rep.rejected:
            if not cfg.data.skip_bad:
                raise ManifestValidationError(
                    f"{len(rep.rejected)} bad row(s) in {m}, e.g. line {rep.rejected[0]['line']}: {rep.rejected[0]['reason']}. "
                    f"Full list: {report_path}. Fix them, or set data.skip_bad=true to continue without them (still reported)."
                )
            m.replace(m.with_suffix(".with_rejected.json"))
            write_manifest(m, rep.accepted_rows)
    return out


def build_data(cfg: Config, run_dir: Path, force: bool = False, say=console.print) -> dict:
    """The build stage (also `medasr build`): skipped while its record matches the data settings and every manifest
    and its audio is on disk (a run restored from S3 has the manifests but not the audio: ops.s3_include_audio)."""
    if force:
        provenance.forget(run_dir, "build")
    return run_stage(run_dir, "build", lambda: build(cfg, run_dir), {"data": data_fingerprint(cfg)},
                     "data/build_report.json", lambda: data_present(run_dir / "data"), say)


def eval_inputs(cfg: Config, manifest: Path, model: str | Path) -> dict:
    """What an evaluation's numbers are made from: the transcripts' inputs and the scoring settings."""
    return {"decode": decode_fingerprint(decode_inputs(cfg, manifest, model)), "score": digest(score_inputs(cfg))}


def evaluate_stage(cfg: Config, run_dir: Path, cycle: int, model: str | Path, title: str,
                   manifest: Path | None = None, stage=None) -> dict:
    """Evaluation cycle N (also `medasr eval`): RUN/eval/cycle<N>/, skipped while its record matches the model, the
    manifest, the prompts and the scoring settings."""
    manifest, out = manifest or run_dir / "data" / "test.json", run_dir / "eval" / f"cycle{cycle}"
    stage = stage or (lambda key, fn, **kw: run_stage(run_dir, key, fn, say=console.print, **kw))
    return stage(f"eval-cycle{cycle}", lambda: evaluate(cfg, manifest, out, model, title, run_dir),
                 inputs=eval_inputs(cfg, manifest, model), result=f"eval/cycle{cycle}/metrics.json",
                 still_there=(out / "hyps.json").exists)  # compare reads the transcripts


def train_record(cfg: Config, train_fp: str) -> dict:
    """What the train stage is made from: the training fingerprint (data, base, recipe: medasr.train.inputs) and how
    far it runs."""
    return {"train": train_fp, "max_steps": cfg.train.max_steps}


def check_before_training(cfg: Config, run_dir: Path, base: str, train_fp: str, smoke: bool, stage=None) -> None:
    """Model preflight, then (`smoke`, train.smoke_steps > 0, nothing trained yet) the smoke run; each skipped while
    its record matches the training fingerprint (also `medasr preflight [--smoke]`)."""
    stage = stage or (lambda key, fn, **kw: run_stage(run_dir, key, fn, say=console.print, **kw))
    t = cfg.train  # beyond the fingerprint: the settings whose checks these are (whether validation will run)
    plan = {k: getattr(t, k) for k in ("max_steps", "val_every_n_steps", "limit_val_batches")}
    stage("preflight", lambda: model_preflight(cfg, run_dir, base), inputs={"train": train_fp, "plan": plan},
          result="train/preflight.json")
    if smoke and t.smoke_steps > 0 and not (run_dir / "train" / "checkpoints" / "last.ckpt").exists():
        stage("smoke", lambda: smoke_run(cfg, run_dir, base), inputs={"train": train_fp, "steps": t.smoke_steps},
              result="train/smoke.json")


def select_and_export(cfg: Config, run_dir: Path, base: str, step: int, train_fp: str | None, stage=None) -> dict:
    """Select (best by val WER, or the average if better) → export it → reload check; the export's meta records
    both. Two stages, each with its record: a restart after the selection does not decode the candidates again."""
    fam = family(cfg)
    stage = stage or (lambda key, fn, **kw: run_stage(run_dir, key, fn, say=console.print, **kw))
    def chosen_there() -> bool:  # a moved or restored run, a pruned checkpoint: select again
        sel = json.loads((run_dir / "train" / "selection.json").read_text())
        return Path(sel["chosen"]["path"]).is_file()

    sel = stage("select", lambda: select_checkpoint(cfg, run_dir, base, step),
                inputs={"train": train_fp, "trained_steps": step}, result="train/selection.json",
                still_there=chosen_there)
    export = fam.export_path(run_dir)
    stage("export", lambda: export_checked(cfg, run_dir, base, sel, train_fp),
          inputs={"train": train_fp, "selection": file_sha256(run_dir / "train" / "selection.json"),
                  "checkpoint": file_sha256(Path(sel["chosen"]["path"]))},
          result=str(fam.meta_file(export).relative_to(run_dir)), still_there=export.exists)
    return sel


def export_checked(cfg: Config, run_dir: Path, base: str, sel: dict, train_fp: str | None) -> dict:
    fam = family(cfg)
    out = fam.export(cfg, run_dir, base, Path(sel["chosen"]["path"]))
    mf = fam.meta_file(out)
    try:
        check = reload_check(cfg, run_dir, out, sel["chosen"]["val_wer"])
    except Exception:
        mf.unlink(missing_ok=True)  # never leave an export that failed its check looking valid
        raise
    meta = json.loads(mf.read_text()) | {
        "train_inputs": train_fp,  # RUN/train/inputs.json's fingerprint: the training run this export came from
        "selection": {"trained_steps": sel["trained_steps"], "rows": sel["rows"], "metric": sel["metric"],
                      "candidates": [{k: c[k] for k in ("name", "val_wer")} | {"checkpoint": Path(c["path"]).name}
                                     for c in sel["candidates"]], "chosen": sel["chosen"]["name"]},
        "reload_check": check}
    mf.write_text(json.dumps(meta, indent=2))
    return meta


def run_flywheel(cfg: Config, run_dir: Path, force_train: bool = False) -> dict:
    """The whole flywheel. An exception that will fail the same way on a retry (medasr.ops.failures) marks the run
    FAILED with the stage it came from, so the supervisor stops (and the pod with it) instead of retrying; a transient
    one (network, hub 5xx) is left to the supervisor's bounded retries."""
    current = ["start"]
    try:
        return _run_flywheel(cfg, run_dir, force_train, current)
    except Exception as e:
        # (a base refused before the run dir exists leaves nothing behind; on a pod run.sh has made the dir)
        if not is_transient(e) and run_dir.exists() and not read_failed(run_dir):
            mark_failed(run_dir, current[0], e)
            if isinstance(e, MedasrError):
                e.stage = current[0]
        raise


def _run_flywheel(cfg: Config, run_dir: Path, force_train: bool, current: list) -> dict:
    fam = family(cfg)
    fam.check_base(cfg.model.base)  # a refused base stops before any data or model time
    run_dir.mkdir(parents=True, exist_ok=True)
    if read_failed(run_dir):  # a new attempt (the supervisor decides whether to make one)
        clear_failed(run_dir)
        if uri := s3_uri(cfg):  # on S3 too, or the watcher would stop this attempt (sync never deletes)
            delete_remote(uri, [FAILED])
    save_config(cfg, run_dir / "config.yaml")
    timings: dict[str, float] = {}

    def stage(key: str, fn, inputs=None, result: str | None = None, still_there=lambda: True):
        """Run one stage under its key; with `inputs`, skipped while RUN/provenance/<key>.json is current."""
        current[0] = key
        console.rule(f"[bold]{STAGES[key]}")
        t = time.time()
        try:
            if inputs is None:
                return fn()
            return run_stage(run_dir, key, fn, inputs, result, still_there, say=console.print)
        finally:
            release_memory()
            timings[key] = round(time.time() - t, 1)

    report = stage("build", lambda: build(cfg, run_dir), {"data": data_fingerprint(cfg)}, "data/build_report.json",
                   lambda: data_present(run_dir / "data"))
    summary_validation = stage("validate", lambda: validate_manifests(cfg, run_dir))
    base = stage("base", lambda: resolve_base(cfg, run_dir))
    test = run_dir / "data" / "test.json"
    before = evaluate_stage(cfg, run_dir, 0, base, "Cycle 0 — base model", test, stage)
    gate = decide(before, cfg.gate)
    (run_dir / "eval" / "gate.json").write_text(json.dumps(gate.to_dict() | {"forced": force_train and not gate.train}, indent=2))
    console.print(f"gate: {gate.reason}")
    summary = {"preset": cfg.name, "run_dir": str(run_dir), "gate": gate.to_dict(), "base_model": base,
               "validation": summary_validation, "contamination_dropped": report["contamination"]["dropped"]}
    if not gate.train and not force_train:
        summary["status"] = f"stopped at gate ({gate.route}); use --force to train anyway"
    else:
        if not gate.train:
            console.print("[yellow]gate says no; training anyway because --force was given (logged in gate.json)")

        train_fp = ensure_current(cfg, run_dir, base, say=console.print)  # other inputs: train afresh, not resume
        if provenance.current(run_dir, "train", train_record(cfg, train_fp)) is None:  # trained: no check again
            check_before_training(cfg, run_dir, base, train_fp, smoke=True, stage=stage)
        done = stage("train", lambda: train(cfg, run_dir, base) if cfg.train.devices == 1 else train_ddp(cfg, run_dir),
                     train_record(cfg, train_fp), "train/DONE")
        selection = select_and_export(cfg, run_dir, base, done["global_step"], train_fp, stage)
        adapter = fam.export_path(run_dir)
        after = evaluate_stage(cfg, run_dir, 1, adapter, "Cycle 1 — fine-tuned", test, stage)
        evals = run_dir / "eval"
        cmp = stage("compare", lambda: run_compare(cfg, evals / "cycle0", evals / "cycle1", evals / "compare"),
                    {"before": file_sha256(evals / "cycle0" / "metrics.json"),
                     "after": file_sha256(evals / "cycle1" / "metrics.json"), "gate": asdict(cfg.gate),
                     "eval": {"normalizer": cfg.eval.normalizer, "n_boot": cfg.eval.n_boot}},
                    "eval/compare/compare.json")
        fam.write_model_card(adapter, fam.read_export_meta(adapter), report, before, after, cmp,
                             dt.date.today().isoformat())
        val = json.loads((run_dir / "train" / "val_loss.json").read_text())
        summary |= {
            "status": "done",
            "decision": cmp["decision"],
            "reason": cmp["reason"],
            "val_loss": val,
            "selection": {c["name"]: c["val_wer"] for c in selection["candidates"]} | {"chosen": selection["chosen"]["name"]},
            "before": {k: before.get(k) for k in SUMMARY_KEYS},
            "after": {k: after.get(k) for k in SUMMARY_KEYS},
            "deltas": {k: cmp["deltas"][k] for k in ("wer", "ker", "term_error_rate", "ker[priority]", "ker[seen]",
                                                    "ker[unseen]", "ker[seen, seen speaker]", "ker[seen, new speaker]")
                       if k in cmp["deltas"]},
            "export": str(adapter),
            "export_file": str(fam.meta_file(adapter).relative_to(run_dir)),  # what says "exported" (runstate.run_is_done)
            "inputs": {"train": train_fp, "cycle0": before.get("inputs"), "cycle1": after.get("inputs")},
            "train_done": is_done(run_dir / "train", cfg.train.max_steps),
        }
    summary["timings_s"] = timings
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if uri := s3_uri(cfg):
        res = stage("sync", lambda: sync_up(run_dir, uri, include_audio=cfg.ops.s3_include_audio))
        console.print(f"S3: {len(res.uploaded)} uploaded, {len(res.skipped)} already there → {uri}")
    console.rule("[bold]summary")
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "gate"}))
    return summary
