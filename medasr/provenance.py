"""One provenance record per stage: RUN/provenance/<stage key>.json says what the stage was made from (the fingerprint
of its inputs, and the inputs themselves), which file holds its result (with that file's SHA-256) and when. The
flywheel's stage wrapper is the one place that checks and writes them (`run_stage`): a stage whose record matches
today's inputs, and whose result file is the one recorded, is not run again; anything else runs it and records it.

What "inputs" means is the stage's to say (medasr/flywheel.py: the data settings for build, the training fingerprint
for preflight/smoke/train, the selection for export, the decode and scoring settings for an evaluation, both
evaluations' transcripts for compare); content hashes, not paths, so a moved or restored run directory is the same run.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Callable

from medasr.atomic import write_text_atomic
from medasr.fingerprint import digest, file_sha256

DIR = "provenance"


def record_path(run_dir: Path, key: str) -> Path:
    return run_dir / DIR / f"{key}.json"


def read(run_dir: Path, key: str) -> dict | None:
    try:
        return json.loads(record_path(run_dir, key).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def current(run_dir: Path, key: str, inputs) -> dict | None:
    """The stage's record when it was made from `inputs` and its result file is still the one it wrote; else None."""
    rec = read(run_dir, key)
    if rec is None or rec.get("fingerprint") != digest(inputs):
        return None
    result = run_dir / rec.get("result", "")
    if not result.is_file() or file_sha256(result) != rec.get("result_sha256"):
        return None
    return rec


def write(run_dir: Path, key: str, inputs, result: str) -> dict:
    rec = {"stage": key, "fingerprint": digest(inputs), "inputs": inputs, "result": result,
           "result_sha256": file_sha256(run_dir / result), "time": dt.datetime.now(dt.timezone.utc).isoformat()}
    record_path(run_dir, key).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record_path(run_dir, key), json.dumps(rec, indent=2, default=str))
    return rec


def forget(run_dir: Path, key: str) -> None:
    record_path(run_dir, key).unlink(missing_ok=True)


def run_stage(run_dir: Path, key: str, fn: Callable[[], object], inputs, result: str,
              still_there: Callable[[], bool] = lambda: True, say: Callable[[str], None] = print):
    """Run `fn` unless the stage is current (record matches `inputs`, result file unchanged, and `still_there()`:
    what the result describes is still on disk, e.g. the audio a restored run lacks); then record it. Returns the
    result file's JSON (the stage writes it) with "skipped": True when not run."""
    if (rec := current(run_dir, key, inputs)) is not None and still_there():
        say(f"{key}: current (inputs {rec['fingerprint']}, {rec['time'][:19]}; {record_path(run_dir, key).relative_to(run_dir)})")
        return json.loads((run_dir / result).read_text()) | {"skipped": True}
    forget(run_dir, key)  # a stage that fails half-way leaves no record claiming its old result
    out = fn()
    write(run_dir, key, inputs, result)
    return out
