"""`medasr` command line: one subcommand per flywheel stage, plus `flywheel` that chains them."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from medasr.console import console
from medasr.errors import MedasrError
from medasr.data.lexicon import core_lexicon, lexicon_tsv
from medasr.data.lexicon_sources import extended_lexicon
from medasr.data.manifest import read_manifest, write_manifest
from medasr.ops.secrets import load_secrets
from medasr.ops.storage import (parse_uri, remote_checkpoint_current, remote_progress_token, remote_run_state,
                                restore as do_restore, sync_up)
from medasr.runstate import mark_failed

# The CLI is the lazy edge: modules that pull torch, NeMo or OmegaConf (config, the stages, ops that read a preset)
# are imported inside the commands that need them, so `medasr --help` stays under 0.5 s (tests/test_structure.py);
# every other module imports its dependencies at the top.

# A fresh medasr process must not attach to a parent's wandb-core service (inherited WANDB_SERVICE): after a crash
# that service still holds the killed run's id, and the relaunch would fail with "run ID is in use".
os.environ.pop("WANDB_SERVICE", None)

# What a user can get wrong (a path, a file, credentials) ends a command in one line naming it and the fix, exit 2;
# anything else is a bug and keeps its traceback. Matched by class name so the CLI imports no heavy module for it.
# Our own errors are MedasrError (medasr/errors.py: headline, exit code); these are the others' a user causes.
USER_ERROR_NAMES = {"FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "PermissionError",
                    "NoCredentialsError", "PartialCredentialsError", "HFValidationError"}
FIX = {  # per command: what to do when a file it needs is missing
    "eval": "build the data first (`medasr build -p P -d RUN`), or pass --manifest",
    "train": "build the data first (`medasr build -p P -d RUN`)",
    "preflight": "build the data first (`medasr build -p P -d RUN`)",
    "score": "give a manifest holding text and pred_text (the hyps.json `medasr eval` writes)",
    "compare": "give two eval folders, each holding the metrics.json `medasr eval` writes",
    "export": "give a checkpoint file (RUN/train/checkpoints/*.ckpt)",
    "average": "give checkpoint files (RUN/train/checkpoints/*.ckpt)",
    "transcribe": "give an export folder (medasr_adapter.json), a SALM folder, a .nemo file or a Hub id (org/name)",
    "sync": "give the run directory to upload",
}


def _user_message(e: BaseException, command: str) -> str:
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return f"{e}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment or .env)"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {(e.strerror or str(e)).lower()}" + (f"; {FIX[command]}" if command in FIX else "")
    return str(e)


class _App(typer.Typer):
    """Typer whose commands turn user errors into one line (MEDASR_DEBUG=1 keeps the traceback)."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                try:
                    return fn(*a, **k)
                except MedasrError as e:
                    if os.environ.get("MEDASR_DEBUG"):
                        raise
                    written = f" (stage {e.stage}: RUN/FAILED written)" if e.stage else ""
                    console.print((f"[red]{escape(e.headline)}[/] " if e.headline else "")
                                  + f"[red]{escape(str(e))}[/]{escape(written)}")
                    raise typer.Exit(e.exit_code)
                except Exception as e:  # noqa: BLE001 - sorted: user errors get a line, bugs their traceback
                    names = {c.__name__ for c in type(e).__mro__}
                    if not (names & USER_ERROR_NAMES) or os.environ.get("MEDASR_DEBUG"):
                        raise
                    console.print(f"[red]{escape(_user_message(e, fn.__name__.rstrip('_')))}[/]")
                    raise typer.Exit(2)

            register(guarded)
            return fn

        return decorate


app = _App(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _main():
    """Load `.env` and redact secret values from every log line, before any command runs."""
    load_secrets()


PresetOpt = typer.Option("tiny", "--preset", "-p", help="configs/<preset>.yaml or a YAML path")
RunDirOpt = typer.Option(None, "--run-dir", "-d", help="run directory (default runs/<preset>)")
SetOpt = typer.Option(None, "--set", "-s", help="config override, e.g. --set train.max_steps=50 (repeatable)")


def _cfg(preset: str, overrides: Optional[List[str]]):
    from medasr.config import load_config

    try:
        return load_config(preset, overrides or [])
    except Exception as e:  # unknown preset / key / type: say which and stop
        console.print(f"[red]config error:[/] {escape(str(e))}")
        raise typer.Exit(2)


def _run_dir(cfg, run_dir: Optional[Path]) -> Path:
    return run_dir or Path("runs") / cfg.name


def _need_file(path: Path, what: str) -> Path:
    """A file the command reads, checked before it creates or loads anything (a wrong path must not build a model)."""
    if not Path(path).is_file():
        raise FileNotFoundError(errno.EISDIR if Path(path).is_dir() else errno.ENOENT,
                                f"{'a folder, not ' if Path(path).is_dir() else 'no '}{what}", str(path))
    return path


@app.command()
def presets():
    """List the available presets."""
    from medasr.config import available_presets, load_config

    for p in available_presets():
        console.print(f"[bold]{p}[/]: {load_config(p).description}")


@app.command()
def flywheel(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
             force: bool = typer.Option(False, help="train even when the gate says it is not warranted"),
             skip_bad: bool = typer.Option(False, help="manifest validation: continue without rejected rows (still reported)"),
             redact_transcripts: bool = typer.Option(False, help="W&B eval tables get SHA-256 prefixes instead of text (PHI)")):
    """Run every stage: build → validate → eval → gate → preflight → train → export → re-eval → compare. Re-running
    resumes."""
    from medasr.flywheel import run_flywheel

    cfg = _cfg(preset, list(set_ or []) + (["data.skip_bad=true"] if skip_bad else [])
               + (["eval.redact_transcripts=true"] if redact_transcripts else []))
    run_flywheel(cfg, _run_dir(cfg, run_dir), force_train=force)


@app.command()
def build(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
          source: Optional[str] = typer.Option(None, help="synthetic | osce | primock57 | kaggle-medical | hf:<id> | folder:<path>"),
          local: Optional[Path] = typer.Option(None, help="offline copy of the source in its upstream layout"),
          max_train: Optional[int] = typer.Option(None, help="training rows (default 2000)"),
          val: Optional[int] = typer.Option(None, help="validation rows (default 200)"),
          text_column: Optional[str] = typer.Option(None), audio_column: Optional[str] = typer.Option(None),
          speaker_column: Optional[str] = typer.Option(None),
          force: bool = typer.Option(False, help="rebuild even if a valid build exists")):
    """Build the data: NeMo manifests train/val/test.json (+ audio) under RUN/data/, contamination-checked."""
    from medasr.flywheel import build_data

    extra = [f"data.{k}={v}" for k, v in (("source", source), ("local", local and local.resolve()), ("max_train", max_train),
                                          ("max_val", val), ("text_column", text_column), ("audio_column", audio_column),
                                          ("speaker_column", speaker_column)) if v is not None]
    cfg = _cfg(preset, list(set_ or []) + extra)
    rep = build_data(cfg, _run_dir(cfg, run_dir), force=force)
    console.print_json(json.dumps({"splits": rep["splits"], "contamination_dropped": rep["contamination"]["dropped"],
                                   "reader_dropped": rep.get("reader", {}).get("dropped", {})}))



@app.command("eval")
def eval_(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
          adapter: Optional[Path] = typer.Option(None, "--adapter", "--model",
                                                 help="evaluate this export (SALM adapter folder or .nemo) instead of the base"),
          cycle: int = typer.Option(0, help="cycle number: results go to RUN/eval/cycle<N>/"),
          manifest: Optional[Path] = typer.Option(None, help="manifest to evaluate (default RUN/data/test.json)"),
          allow_prompt_change: bool = typer.Option(False, help="decode an export under other prompts than it was "
                                                   "fine-tuned with (refused otherwise)")):
    """Transcribe a manifest and score it (WER, CER, KER by category, seen vs unseen terms). An export is decoded
    under the prompts it was fine-tuned with; other prompts (the preset's, or --set model.prompt=…) are refused
    unless --allow-prompt-change; metrics.json → prompts_used says which."""
    from medasr.families import resolve_base
    from medasr.flywheel import evaluate_stage

    cfg = _cfg(preset, set_)
    cfg.eval.allow_prompt_change = cfg.eval.allow_prompt_change or allow_prompt_change
    rd = _run_dir(cfg, run_dir)
    _need_file(manifest or rd / "data" / "test.json", "manifest")
    m = evaluate_stage(cfg, rd, cycle, adapter or resolve_base(cfg, rd), f"Cycle {cycle}", manifest)
    console.print((rd / "eval" / f"cycle{cycle}" / "report.md").read_text())
    return m


@app.command()
def gate(eval_dir: Path = typer.Argument(..., help="directory holding metrics.json"),
         priority: List[str] = typer.Option(["drug"], help="priority entity categories (repeatable)"),
         threshold: float = typer.Option(0.3), min_rows: int = typer.Option(100), min_per_priority: int = typer.Option(5)):
    """Decide whether fine-tuning is warranted. Exit 0 = fine-tune, 1 = not warranted, 2 = bad input."""
    from medasr.config import GateConfig
    from medasr.evaluate.gate import decide

    m = eval_dir / "metrics.json"
    if not m.exists():
        console.print(f"[red]{m} not found[/]: run `medasr eval` first")
        raise typer.Exit(2)
    g = decide(json.loads(m.read_text()), GateConfig(list(priority), threshold, min_rows, min_per_priority))
    console.print(g.reason)
    raise typer.Exit(0 if g.train else 1)


@app.command()
def preflight(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
              smoke: bool = typer.Option(False, "--smoke", help="then the smoke run (train.smoke_steps steps): loss "
                                         "finite and falling, peak memory, projected time and cost")):
    """Check the model before training: checkpoint coverage, trainable groups, the rendered prompt, that validation
    will run (and with --smoke, a short training run). Builds the data first if needed. Exit 1 with the reason when
    the run would be doomed."""
    from medasr.families import resolve_base
    from medasr.flywheel import build_data, check_before_training
    from medasr.train.inputs import ensure_current

    cfg = _cfg(preset, set_)
    rd = _run_dir(cfg, run_dir)
    build_data(cfg, rd)
    base = resolve_base(cfg, rd)
    check_before_training(cfg, rd, base, ensure_current(cfg, rd, base, say=console.print), smoke)
    console.print(f"[green]preflight passed[/]: {rd / 'train' / 'preflight.json'}"
                  + (f", {rd / 'train' / 'smoke.json'}" if smoke else ""))


@app.command("train")
def train_(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt):
    """Fine-tune: SALM LoRA or ASR full SFT, per the preset (resumes from RUN/train/checkpoints/last.ckpt)."""
    from medasr import provenance
    from medasr.families import resolve_base
    from medasr.flywheel import train_record
    from medasr.train.inputs import ensure_current
    from medasr.train.callbacks import TrainingWatchdogError
    from medasr.train.trainer import is_rank_zero, train

    cfg = _cfg(preset, set_)
    rd = _run_dir(cfg, run_dir)
    for split in ("train", "val"):
        _need_file(rd / "data" / f"{split}.json", "manifest")
    base = resolve_base(cfg, rd)
    if is_rank_zero():  # other DDP ranks re-run this command after rank zero has checked
        train_fp = ensure_current(cfg, rd, base, say=console.print)
    try:
        console.print(train(cfg, rd, base))
        if is_rank_zero():  # the flywheel then knows this training run is done (RUN/provenance/train.json)
            provenance.write(rd, "train", train_record(cfg, train_fp), "train/DONE")
    except TrainingWatchdogError as e:  # the run cannot succeed as configured: the supervisor must not relaunch it
        if is_rank_zero():
            mark_failed(rd, "train", e)
            e.stage = "train"
        raise


bench_app = _App(no_args_is_help=True, help="Speed and memory of a preset's model on this machine (docs/PERFORMANCE.md).")
app.add_typer(bench_app, name="bench")
BenchOutOpt = typer.Option(None, "--out", "-o", help="where bench_*.json/.md go (default runs/bench/<preset>)")


def _bench(kind: str, preset: str, out: Optional[Path], set_: Optional[List[str]]) -> None:
    from medasr.perf.bench import bench_eval, bench_train

    cfg = _cfg(preset, set_)
    out = out or Path("runs") / "bench" / cfg.name
    (bench_train if kind == "train" else bench_eval)(cfg, out, console)
    console.print((out / f"bench_{kind}.md").read_text())
    console.print(f"results: {out / f'bench_{kind}.json'}")


@bench_app.command("train")
def bench_train_(preset: str = PresetOpt, out: Optional[Path] = BenchOutOpt, set_: Optional[List[str]] = SetOpt):
    """Fine-tune step speed over bench.train_batch_tokens: step time, tokens/s, audio s/s, peak memory, MFU."""
    _bench("train", preset, out, set_)


@bench_app.command("eval")
def bench_eval_(preset: str = PresetOpt, out: Optional[Path] = BenchOutOpt, set_: Optional[List[str]] = SetOpt):
    """Batched generation speed over bench.eval_batch_sizes: RTFx, tokens/s, peak memory."""
    _bench("eval", preset, out, set_)


@app.command()
def export(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
           ckpt: Optional[Path] = typer.Option(None, help="export this checkpoint as it is (default: the flywheel's "
                                               "choice, best by validation WER or the average, with the reload check)")):
    """Write RUN/canary-qwen-medical-lora/ (SALM: LoRA + encoder/projection) or RUN/adapted_model.nemo (ASR)."""
    from medasr.families import family, resolve_base
    from medasr.flywheel import select_and_export

    cfg = _cfg(preset, set_)
    rd = _run_dir(cfg, run_dir)
    if ckpt:
        _need_file(ckpt, "checkpoint file")
        console.print(family(cfg).export(cfg, rd, resolve_base(cfg, rd), ckpt))
        return
    done = rd / "train" / "DONE"
    if not done.exists():
        console.print(f"[red]{done} not found[/]: finish training first (`medasr train`), or pass --ckpt")
        raise typer.Exit(2)
    from medasr.train.inputs import recorded

    sel = select_and_export(cfg, rd, resolve_base(cfg, rd), json.loads(done.read_text())["global_step"],
                            (recorded(rd) or {}).get("fingerprint"))
    console.print(f"{family(cfg).export_path(rd)} ← {sel['chosen']['name']} ({Path(sel['chosen']['path']).name})", highlight=False)


@app.command()
def average(ckpts: List[Path] = typer.Argument(..., help="training checkpoints of one run (e.g. the last K step*.ckpt)"),
            out: Path = typer.Option(..., "--out", help="where to write the averaged checkpoint")):
    """Uniform average of the weights in several checkpoints (export it with `medasr export --ckpt OUT`)."""
    from medasr.train.average import average_checkpoints

    for c in ckpts:
        _need_file(c, "checkpoint file")
    console.print_json(json.dumps(average_checkpoints(list(ckpts), out)))


@app.command()
def transcribe(inputs: List[Path] = typer.Argument(..., help="audio files, folders of audio, or NeMo manifests"),
               model: Optional[str] = typer.Option(None, "--model", "--adapter", "--base",
                                                   help="SALM export folder, SALM folder, .nemo file, or Hub id"),
               kind: Optional[str] = typer.Option(None, help="salm | asr | whisper, for a Hub id (default: guessed from the id)"),
               out: Optional[Path] = typer.Option(None, help="write per-file outputs + transcripts.json here"),
               format_: str = typer.Option("txt,json,srt", "--format", help="comma-separated: txt, json, srt"),
               prompt: Optional[str] = typer.Option(None, help="SALM only; default: the prompts the export was "
                                                    "fine-tuned with (each row by its source)"),
               allow_prompt_change: bool = typer.Option(False, help="use --prompt although the export was fine-tuned "
                                                        "with other prompts (refused otherwise)"),
               batch_size: int = 16, max_new_tokens: int = 256,
               chunk_s: Optional[float] = typer.Option(None, help="long-form chunk length (default SALM 30, ASR 600)"),
               overlap_s: Optional[float] = typer.Option(None, help="chunk overlap (default 10)"),
               max_single_s: Optional[float] = typer.Option(None, help="longest audio done in one pass (SALM 40, ASR 1200)")):
    """Transcribe files of any length (long audio chunked with overlap and merged). Without --out: JSON lines
    {audio_filepath, pred_text, duration, chunks} on stdout."""
    from dataclasses import replace

    from rich.progress import Progress

    from medasr.transcribe import POLICIES, collect_inputs, model_decoder, stamp_prompts, transcribe_rows, write_outputs
    from medasr.families import load_model
    from medasr.models.load import check_prompt_change

    if not model:
        console.print("[red]give --model[/] (a SALM export folder, a SALM folder, a .nemo file or a Hub id)")
        raise typer.Exit(2)
    rows = collect_inputs(inputs)
    formats = [f.strip() for f in format_.split(",") if f.strip()]
    if bad := sorted(set(formats) - {"txt", "json", "srt"}):
        console.print(f"[red]unknown --format {', '.join(bad)}[/]: use txt, json, srt (comma-separated)")
        raise typer.Exit(2)
    check_prompt_change(model, prompt, None, allow_prompt_change)  # before the model loads
    loaded = load_model(model, kind=kind)
    policy = replace(POLICIES[loaded.kind], **{k: v for k, v in (("chunk_s", chunk_s), ("overlap_s", overlap_s),
                                                                 ("max_single_s", max_single_s)) if v is not None})
    decode = model_decoder(loaded, batch_size, max_new_tokens, prompt)
    # an explicit --prompt applies to every row (a manifest row's own `context` still wins); else the export's
    # per-source prompts, as in training
    rows = stamp_prompts(rows, loaded, prompt, {} if prompt else None)
    with Progress(console=Console(stderr=True)) as progress:
        results = transcribe_rows(rows, decode, policy, batch_size, progress)
    if out:
        written = write_outputs(results, rows, out, formats, loaded.source, policy)
        console.print(f"{len(results)} file(s) → {out} ({len(written)} files written)", highlight=False)
    else:
        for row, res in zip(rows, results):
            sys.stdout.write(json.dumps({"audio_filepath": res.audio_filepath, "pred_text": res.text,
                                         "duration": res.duration, "chunks": len(res.chunks)}
                                        | ({"context": row["context"]} if "context" in row else {})) + "\n")


@app.command()
def score(manifest: Path, out: Path = typer.Option(..., "--out"),
          normalizer: str = typer.Option("whisper", help="whisper | basic | none"),
          lexicon: str = typer.Option("auto", help="auto (as eval: core for an all-synthetic manifest, else extended) | "
                                      "core (174 curated terms) | extended (+ drugs, ICD-10-CM conditions)")):
    """Score a manifest that holds `text` and `pred_text` (and optionally `term`, `entity_category`); metrics.json
    records the lexicon used."""
    from medasr.config import Config
    from medasr.evaluate.stage import score_manifest

    cfg = Config()
    cfg.eval.normalizer = normalizer
    cfg.eval.lexicon = lexicon
    m = score_manifest(read_manifest(manifest, required=("text", "pred_text")), out, cfg, f"Scores for {manifest.name}")
    console.print((out / "report.md").read_text())
    return m


@app.command()
def compare(before_dir: Path, after_dir: Path, out: Path = typer.Option(..., "--out"),
            priority: List[str] = typer.Option(["drug"]), preset: str = PresetOpt):
    """Paired bootstrap before vs after on the same rows, and the decision (keep / grow_data / overfit / no_change /
    insufficient_evidence), resampling whole clusters (terms for KER; consultations, recordings or synthetic terms
    for WER)."""
    from medasr.flywheel import run_compare

    cfg = _cfg(preset, None)
    cfg.gate.priority = list(priority)
    for d in (before_dir, after_dir):
        for name in ("metrics.json", "hyps.json"):
            _need_file(d / name, f"{name} (an eval folder?)")
    c = run_compare(cfg, before_dir, after_dir, out)  # refuses rows not in common, or scored on other references
    console.print((out / "compare.md").read_text())
    return c


@app.command("table")
def table_(before: Path, after: Path, out: Optional[Path] = typer.Option(None, help="write the Markdown table here"),
           json_out: Optional[Path] = typer.Option(None, "--json", help="write the numbers as JSON"),
           readme: Optional[Path] = typer.Option(None, help="replace the table between this file's table markers"),
           n_boot: int = typer.Option(1000, min=1), seed: int = typer.Option(0),
           normalizer: str = typer.Option("whisper", help="the text normaliser the evaluations were scored with")):
    """The held-out design table from two evaluations (eval folders or their hyps.json): KER and WER per cell (seen /
    held-out term × training voice / new speaker / new accent / new engine), generic-English forgetting, paired 95 %
    CIs and the relative KER change, and the demo's targets judged on it."""
    from medasr.evaluate.design_table import design_table, read_hyps, render_markdown, splice

    t = design_table(read_hyps(before), read_hyps(after), n_boot=n_boot, seed=seed, normalizer=normalizer)
    md = render_markdown(t)
    if out:
        out.write_text(md)
    if json_out:
        json_out.write_text(json.dumps(t, indent=2))  # plain floats, lists and strings
    if readme:
        readme.write_text(splice(readme.read_text(), md))
    console.print(escape(md))
    return t


@app.command("lexicon")
def lexicon_(extended: bool = typer.Option(False, help="add drugs and ICD-10-CM conditions from the pinned packages"),
             out: Optional[Path] = typer.Option(None, help="write the lexicon as TSV"),
             tag: Optional[str] = typer.Option(None, help="tag this sentence and print the matches")):
    """Show the medical lexicon (sizes per category), export it, or tag a sentence."""
    from collections import Counter

    lex = extended_lexicon() if extended else core_lexicon()
    console.print(f"{len(lex)} terms: {dict(sorted(Counter(t.entity_category for t in lex.terms).items()))}")
    if out:
        out.write_text(lexicon_tsv(lex))
        console.print(f"written: {out}")
    if tag:
        for m in lex.tag(tag):
            console.print(escape(f"{m.term.term} [{m.term.entity_category}] ({m.term.source})"))


@app.command()
def validate(manifest: Path, report: Path = typer.Option(..., "--report", help="where to write the JSON report"),
             fix: bool = typer.Option(False, help="resample to 16 kHz mono and re-measure durations (listed in the report)"),
             skip_bad: bool = typer.Option(False, help="write the accepted rows to --out and exit 0 (rejections still reported)"),
             out: Optional[Path] = typer.Option(None, help="clean manifest to write (default MANIFEST.valid.json)")):
    """Preflight a manifest: exit 1 if any row is rejected; R.json = {accepted, rejected: [{line, audio_filepath, reason}]}."""
    from medasr.data.validate import validate_manifest, write_report

    if not manifest.exists():
        console.print(f"[red]{manifest} not found[/]")
        raise typer.Exit(2)
    rep = validate_manifest(manifest, fix=fix)
    write_report(rep, report)
    for r in rep.rejected[:20]:
        console.print(f"[red]line {r['line']}[/] {r['audio_filepath']}: {r['reason']}")
    if len(rep.rejected) > 20:
        console.print(f"… and {len(rep.rejected) - 20} more in {report}")
    console.print(f"accepted {rep.accepted}, rejected {len(rep.rejected)}, fixed {len(rep.fixed)} → {report}")
    if fix or skip_bad:
        dest = out or manifest.with_suffix(".valid.json")
        write_manifest(dest, rep.accepted_rows)
        console.print(f"clean manifest: {dest}")
    raise typer.Exit(0 if rep.ok or skip_bad else 1)


@app.command()
def supervise(preset: str = PresetOpt, run_dir: Optional[Path] = RunDirOpt, set_: Optional[List[str]] = SetOpt,
              max_restarts: int = typer.Option(20, help="give up after this many restarts"),
              backoff: float = typer.Option(5.0, help="first restart delay in seconds (doubles each time, max 300)"),
              retry_failed: bool = typer.Option(False, help="clear RUN/FAILED (after fixing the cause) and try again")):
    """Keep the flywheel alive until the run is done (decided from files, never from exit codes) and synced to S3;
    restart transient crashes with backoff; forward SIGTERM (SIGKILL after ops.kill_grace_s); state in
    RUN/supervisor.json. The pod's continuous command. Exit 0 done (and synced), 1 failed: a run marked RUN/FAILED
    (any permanent error: a bad dataset, a preflight refusal, diverged loss) is not relaunched, 3 budget (on a pod,
    MEDASR_PRICE_PER_HOUR and MEDASR_MAX_USD), 4 done but the final sync failed, 75 S3 could not be read to restore,
    143 stopped by a signal."""
    from medasr.ops.supervisor import Supervisor

    cfg = _cfg(preset, set_)
    sup = Supervisor(preset, _run_dir(cfg, run_dir), list(set_ or []), max_restarts=max_restarts, backoff_base=backoff,
                     retry_failed=retry_failed)
    raise typer.Exit(sup.run())


@app.command()
def rehearse(preset: str = PresetOpt, work: Path = typer.Option(None, "--work", "-w", help="work folder (default runs/rehearse-<preset>)"),
             set_: Optional[List[str]] = SetOpt):
    """Run a real preset (canary-qwen-2.5b, parakeet-tdt-0.6b-v2) offline against scaled-down replicas of the Hub
    models and datasets it downloads (HF_HUB_OFFLINE=1): supervise to done, the export reloaded in a fresh process,
    every manifest row through NeMo's own reader. WORK/rehearse.json; exit 1 with the reason otherwise."""
    from medasr.rehearse.run import rehearse as do_rehearse

    rep = do_rehearse(preset, work or Path("runs") / f"rehearse-{preset}", list(set_ or []))
    console.print_json(json.dumps({k: rep[k] for k in ("preset", "status", "export", "nemo_reader_rows", "minutes")}))
    console.print(f"[green]rehearsal of {preset} passed[/]")


@app.command()
def sync(run_dir: Path = typer.Option(..., "--run-dir", "-d"), to: str = typer.Option(..., "--to", help="s3://bucket/prefix"),
         include_audio: bool = typer.Option(False, help="also upload data/audio/")):
    """Upload a run dir to S3 (checkpoints, adapter, reports, manifests): idempotent, verified, resumable."""
    if not run_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such run directory", str(run_dir))
    r = sync_up(run_dir, to, include_audio=include_audio)
    console.print(f"uploaded {len(r.uploaded)} ({r.bytes_uploaded:,} bytes), already there {len(r.skipped)} → {to}")


@app.command()
def restore(from_: str = typer.Option(..., "--from", help="s3://bucket/prefix"),
            run_dir: Path = typer.Option(..., "--run-dir", "-d")):
    """Pull a run dir back from S3 (only what is missing or different locally)."""
    pulled = do_restore(from_, run_dir)
    console.print(f"restored {len(pulled)} file(s) into {run_dir}")


runpod_app = _App(no_args_is_help=True, help="Run the POC on a RunPod GPU pod: up, status, logs, cost, watch, down.")
app.add_typer(runpod_app, name="runpod")


def _spec(preset, run_name, gpu, gpu_count, cloud, image, volume_gb, network_volume, data_center, repo):
    from medasr.ops.pods import PodSpec

    return PodSpec(name=f"medasr-{run_name}", image=image, gpu_type=gpu, gpu_count=gpu_count, cloud_type=cloud.upper(),
                   volume_gb=volume_gb, network_volume_id=network_volume, data_center_id=data_center, repo_url=repo,
                   preset=preset, run_name=run_name)


_GPU = typer.Option("NVIDIA A100 80GB PCIe", help="RunPod GPU id, e.g. 'NVIDIA H100 80GB HBM3', 'NVIDIA L40S'")


@runpod_app.command("up")
def runpod_up(preset: str = typer.Option("canary-qwen-2.5b", "--preset", "-p"), run_name: str = typer.Option("poc", "--run-name"),
              gpu: str = _GPU, gpu_count: int = 1, cloud: str = typer.Option("SECURE", help="SECURE | COMMUNITY | ALL "
                                                                               "(ALL is priced at the higher price)"),
              image: str = typer.Option("runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"),
              volume_gb: int = 200, network_volume: Optional[str] = typer.Option(None, help="network volume id (survives the pod)"),
              data_center: Optional[str] = None,
              repo: str = typer.Option(..., "--repo", help="git URL the pod clones (this project)"),
              max_usd: float = typer.Option(25.0, "--max-usd", help="budget cap: the pod stops itself here (and the watcher "
                                            "stops it too)"),
              set_: Optional[List[str]] = SetOpt,
              torch_index: Optional[str] = typer.Option(None, "--torch-index", help="pip index for torch on the pod "
                                                        "(MEDASR_TORCH_INDEX), e.g. https://download.pytorch.org/whl/cu128 "
                                                        "for hosts older than CUDA 13 (PyPI's torch 2.13.0 needs 13)"),
              ssh: bool = typer.Option(False, "--ssh", help="also start the image's SSH service (/start.sh)"),
              yes: bool = typer.Option(False, "--yes", help="really create the pod (it costs money)"),
              watch_: bool = typer.Option(False, "--watch", help="then watch it until done or over budget")):
    """Show the price and the estimated cost, then (with --yes) create the pod running run.sh. --set overrides are
    checked here and passed to the pod's supervise command."""
    from medasr.ops.pods import create, estimate_hours, hourly_price, save_state

    cfg = _cfg(preset, set_)  # unknown keys are refused here, not on the pod
    spec = _spec(preset, run_name, gpu, gpu_count, cloud, image, volume_gb, network_volume, data_center, repo)
    spec.ssh = ssh
    if set_:
        spec.env["MEDASR_SET"] = "\n".join(set_)  # run.sh passes each line as --set
    if torch_index:
        spec.env["MEDASR_TORCH_INDEX"] = torch_index
    cuda = spec.allowed_cuda()  # a PodError names a CUDA pin it cannot read
    price = hourly_price(spec)
    est = estimate_hours(cfg.train.max_steps, cfg.train.batch_size, batch_tokens=cfg.train.batch_tokens,
                         kind=cfg.model.kind)
    cost = price * est["total_hours"]
    console.print(f"{gpu} x{gpu_count} ({cloud.lower()} cloud): ${price:.2f}/h, on hosts whose driver runs CUDA "
                  f"{', '.join(cuda)} (the image's and torch's CUDA)")
    console.print(f"estimate: {est['total_hours']:.1f} h ({est['train_hours']:.1f} h training + {est['overhead_hours']} h "
                  f"overhead) ≈ ${cost:.2f}; budget cap ${max_usd:.2f}")
    if cost > max_usd:
        console.print("[yellow]the estimate is above the budget cap: the watcher will stop the pod at the cap")
    if not yes:
        console.print("nothing created: add --yes to create the pod")
        raise typer.Exit(1)
    # the pod logs its cost so far to W&B, and stops itself at the cap even when no watcher runs (ops/spend.py)
    spec.env |= {"MEDASR_PRICE_PER_HOUR": f"{price:.4f}", "MEDASR_MAX_USD": f"{max_usd:.2f}"}
    if base := os.environ.get("MEDASR_S3_URI"):
        # one prefix per run: a pod restores whatever its prefix holds, so a second run must not share the first's
        spec.env["MEDASR_S3_URI"] = f"{base.rstrip('/')}/{run_name}"
    pod = create(spec)
    public_env = {k: v for k, v in spec.env.items() if k.startswith("MEDASR_")}  # no secrets in the local state
    save_state({"pod_id": pod["id"], "preset": preset, "run_name": run_name, "max_usd": max_usd, "price_per_hour": price,
                "overrides": list(set_ or []), "spec": spec.__dict__ | {"env": public_env},
                "s3_uri": spec.env.get("MEDASR_S3_URI")})
    console.print(f"pod {pod['id']} created; state in .medasr-pod.json")
    if watch_:
        runpod_watch(pod_id=None, max_usd=max_usd, interval=60, max_iterations=None)


def _pod_id(pod_id: Optional[str]) -> str:
    from medasr.ops.pods import load_state

    return pod_id or load_state()["pod_id"]


@runpod_app.command("status")
def runpod_status(pod_id: Optional[str] = typer.Option(None, "--pod-id")):
    """Pod state, GPU, uptime and money spent."""
    from medasr.ops.pods import spent_usd, status

    pid = _pod_id(pod_id)
    pod = status(pid)
    if pod is None:
        console.print(f"[red]pod {pid} does not exist (terminated)")
        raise typer.Exit(2)
    console.print_json(json.dumps({k: pod.get(k) for k in ("id", "name", "desiredStatus", "gpuCount", "costPerHr", "uptimeSeconds")}
                                  | {"spent_usd": round(spent_usd(pod), 2)}))


@runpod_app.command("cost")
def runpod_cost(pod_id: Optional[str] = typer.Option(None, "--pod-id")):
    """Money spent on this run so far: every session of every pod of the run (the watcher's .medasr-spend.json)."""
    from medasr.ops.pods import status
    from medasr.ops.spend import WatchLedger

    pid = _pod_id(pod_id)
    pod = status(pid)
    ledger = WatchLedger()
    console.print(f"${ledger.observe(pid, pod) if pod else ledger.total():.2f} spent")


@runpod_app.command("down")
def runpod_down(pod_id: Optional[str] = typer.Option(None, "--pod-id"),
                terminate_: bool = typer.Option(False, "--terminate", help="delete the pod (and its non-network volume)")):
    """Stop the pod (billing stops; the volume stays), or terminate it."""
    from medasr.ops.pods import stop, terminate

    pid = _pod_id(pod_id)
    if terminate_:
        terminate(pid)
        console.print(f"pod {pid} terminated")
    else:
        stop(pid)  # verified: the pod's state is read back


@runpod_app.command("logs")
def runpod_logs(s3: Optional[str] = typer.Option(None, "--s3", help="the run's S3 prefix (default: the one `runpod "
                                                                   "up` gave the pod, MEDASR_S3_URI/<run name>)")):
    """The run's progress as synced to S3 (supervisor state, training heartbeat, summary)."""
    import boto3

    from medasr.ops.pods import STATE_FILE, load_state

    uri = s3 or (load_state().get("s3_uri") if STATE_FILE.exists() else None) or os.environ.get("MEDASR_S3_URI")
    if not uri:
        console.print("[red]no S3 prefix: pass --s3 or set MEDASR_S3_URI; RunPod's own container logs are in its web console")
        raise typer.Exit(2)
    bucket, prefix = parse_uri(uri)
    c = boto3.client("s3")
    for rel in ("supervisor.json", "train/progress.json", "summary.json"):
        try:
            console.print(f"[bold]{rel}[/]: " + c.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read().decode())
        except c.exceptions.NoSuchKey:
            console.print(f"[bold]{rel}[/]: (not synced yet)")


@runpod_app.command("watch")
def runpod_watch(pod_id: Optional[str] = typer.Option(None, "--pod-id"), max_usd: Optional[float] = typer.Option(None, "--max-usd"),
                 interval: float = typer.Option(60.0, help="seconds between checks"),
                 max_iterations: Optional[int] = typer.Option(None, help="stop watching after this many checks")):
    """Resume an EXITED pod that is not done (never one marked FAILED or BUDGET on S3), recreate one whose host has no
    GPU when its work is safe, stop at the budget cap (spend over every session, .medasr-spend.json) or when done."""
    from medasr.config import load_config
    from medasr.ops.pods import PodSpec, load_state, watch

    state = load_state()
    if pod_id:
        state["pod_id"] = pod_id
    spec = PodSpec(**{k: v for k, v in state["spec"].items() if k in PodSpec.__dataclass_fields__})
    cfg = load_config(state["preset"], state.get("overrides") or [])
    uri = state.get("s3_uri") or os.environ.get("MEDASR_S3_URI")
    if not uri:
        console.print("[red]watch needs MEDASR_S3_URI: 'done' is read from the run's markers synced to S3")
        raise typer.Exit(2)
    why = watch(spec, state, lambda: remote_run_state(uri, cfg.train.max_steps), max_usd or state["max_usd"],
                interval_s=interval, max_iterations=max_iterations, progress=lambda: remote_progress_token(uri),
                work_is_safe=lambda: bool(spec.network_volume_id) or remote_checkpoint_current(
                    uri, cfg.train.ckpt_every_n_steps, state.get("seen_running_at"), cfg.ops.heartbeat_sync_s))
    console.print(f"watch ended: {why}")
    if why in ("api_error", "s3_error", "pod_gone", "stuck"):
        raise typer.Exit(2)


if __name__ == "__main__":
    app()
