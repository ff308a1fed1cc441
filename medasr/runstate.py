"""A run's state on disk, read by the flywheel, the supervisor and the S3 sync (one place, so they agree).

- `RUN/FAILED` {"stage", "error", "reason", "kind": "permanent", "time"}: the run cannot succeed as configured
  (written by the flywheel for anything that would fail the same way again); never relaunched until cleared.
- `RUN/BUDGET`: the pod stopped itself at its budget cap (medasr.ops.spend).
- done: summary.json says done (or stopped at the gate), train/DONE reached max_steps, and the export summary.json
  names (`export_file`: the export's meta file, written last) exists.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from medasr.atomic import write_text_atomic

FAILED = "FAILED"
BUDGET = "BUDGET"


def run_is_done(run_dir: Path, max_steps: int) -> tuple[bool, str]:
    s = run_dir / "summary.json"
    if not s.exists():
        return False, "no summary.json yet"
    summary = json.loads(s.read_text())
    status = summary.get("status", "")
    if status.startswith("stopped at gate"):
        return True, status
    if status != "done":
        return False, f"summary status {status!r}"
    done = run_dir / "train" / "DONE"
    if not done.exists() or json.loads(done.read_text()).get("global_step") != max_steps:
        return False, "train/DONE missing or short of max_steps"
    # relative to the run: a run directory moves (S3 restore, copies); a summary written before `export_file` existed
    # names the export by its absolute path, whose name is the export's name inside the run
    marker = summary.get("export_file") or (Path(summary["export"]).name if summary.get("export") else None)
    if not marker or not (run_dir / marker).exists():
        return False, "model not exported"
    return True, "done"


def read_failed(run_dir: Path) -> dict | None:
    """RUN/FAILED, or None."""
    p = run_dir / FAILED
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return {"reason": f"{p} is unreadable"}


def mark_failed(run_dir: Path, stage_name: str, err: Exception) -> None:
    """RUN/FAILED: the supervisor stops (and the pod stops) instead of relaunching the run; fix the config and run
    `medasr supervise --retry-failed` (or delete the file)."""
    write_text_atomic(run_dir / FAILED, json.dumps({"stage": stage_name, "error": type(err).__name__, "reason": str(err),
                                                    "kind": "permanent",
                                                    "time": dt.datetime.now(dt.timezone.utc).isoformat()}, indent=2))


def clear_failed(run_dir: Path) -> None:
    (run_dir / FAILED).unlink(missing_ok=True)
