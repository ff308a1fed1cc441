"""The continuous command: keep the flywheel running until the run is really done, whatever happens to it.

- The flywheel runs in a child process in its own process group; SIGTERM/SIGINT to the supervisor is forwarded to
  that group (the trainer then writes `last.ckpt`), and the supervisor exits without restarting.
- "Done" is decided only from files — `summary.json` status done + `train/DONE` at max_steps + the exported adapter,
  or a flywheel that stopped at the gate — never from an exit code (Lightning exits 0 on SIGTERM).
- A permanent error (RUN/FAILED, written by the flywheel for anything that would fail the same way again) is never
  relaunched: the marker is synced to S3 first (so `runpod watch` sees it), then the supervisor exits and run.sh stops
  the pod. Any other exit is transient (a killed or preempted child, a network error) and is restarted with
  exponential backoff, up to `max_restarts`; `supervisor.json` says which kind it saw.
- Before each launch, unfinished checkpoint writes are removed and an unreadable `last.ckpt` is replaced by the
  newest readable step checkpoint.
- Budget: on a pod (`runpod up` passes MEDASR_PRICE_PER_HOUR and MEDASR_MAX_USD) the supervisor counts the pod's own
  wall time (medasr.ops.spend.PodLedger, RUN/spend.json); at the cap it stops the child (which saves last.ckpt), writes
  RUN/BUDGET, syncs it and exits 3, and run.sh stops the pod, with or without a watcher. A raised cap lets it go on.
- On a fresh machine whose run dir is empty, the run is first restored from S3 (when an S3 URI is configured).
- `supervisor.json` = {"state": running|backoff|done|failed|stopped, "restarts", "last_exit", "heartbeat", ...}.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from medasr.atomic import write_text_atomic
from medasr.config import load_config, s3_uri
from medasr.console import console
from medasr.ops.spend import PodLedger
from medasr.ops.storage import restore, sync_up
from medasr.runstate import BUDGET, FAILED, clear_failed, read_failed, run_is_done



def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def clean_checkpoints(ckpt_dir: Path) -> list[str]:
    """Remove unfinished writes; make sure `last.ckpt`, if present, is loadable (else fall back to the newest step)."""
    import torch

    actions = []
    if not ckpt_dir.exists():
        return actions
    for p in ckpt_dir.glob("*.partial"):
        p.unlink()
        actions.append(f"removed unfinished {p.name}")

    def loads(p: Path) -> bool:
        try:
            torch.load(p, map_location="cpu", weights_only=False, mmap=True)
            return True
        except Exception:  # noqa: BLE001 - any failure means unusable
            return False

    last = ckpt_dir / "last.ckpt"
    if last.exists() and not loads(last):
        last.unlink()
        actions.append("removed unreadable last.ckpt")
        for step in sorted(ckpt_dir.glob("step*.ckpt"), reverse=True):
            if loads(step):
                os.link(step, last) if hasattr(os, "link") else step.replace(last)
                actions.append(f"last.ckpt <- {step.name}")
                break
    return actions


class Supervisor:
    def __init__(self, preset: str, run_dir: Path, overrides: list[str], max_restarts: int = 20,
                 backoff_base: float = 5.0, backoff_max: float = 300.0, heartbeat_s: float = 10.0,
                 retry_failed: bool = False):
        self.cfg = load_config(preset, overrides)
        self.preset, self.run_dir, self.overrides = preset, run_dir, overrides
        self.max_restarts, self.backoff_base, self.backoff_max, self.heartbeat_s = max_restarts, backoff_base, backoff_max, heartbeat_s
        self.retry_failed = retry_failed
        self.state = {"state": "starting", "restarts": 0, "last_exit": None, "heartbeat": now(), "child_pid": None,
                      "started": now(), "reason": None, "cleanups": []}
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._budget = threading.Event()
        self.ledger = None
        price, cap = (float(os.environ.get(k) or 0) for k in ("MEDASR_PRICE_PER_HOUR", "MEDASR_MAX_USD"))
        if price > 0 and cap > 0:
            self.ledger = PodLedger(run_dir / "spend.json", price, cap,
                                    os.environ.get("MEDASR_CONTAINER_START") or f"{time.time():.0f}")

    def _write(self, **kw) -> None:
        self.state.update(kw, heartbeat=now())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "supervisor.json", json.dumps(self.state, indent=2))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write()
            self._check_budget()

    def _check_budget(self) -> bool:
        """True when the pod has spent its cap: the child is stopped (it saves last.ckpt) and RUN/BUDGET written."""
        if self.ledger is None:
            return False
        spent = self.ledger.tick()
        if self.ledger.over() and not self._budget.is_set():
            self._budget.set()
            write_text_atomic(self.run_dir / BUDGET, json.dumps(
                {"spent_usd": round(spent, 2), "max_usd": self.ledger.max_usd, "time": now()}, indent=2))
            if self.child and self.child.poll() is None:
                os.killpg(self.child.pid, signal.SIGTERM)
        return self._budget.is_set()

    def _over_budget(self) -> int:
        self._write(state="budget", child_pid=None, reason=f"budget cap ${self.ledger.max_usd:.2f} reached "
                    f"(${self.ledger.spent():.2f} spent on this pod); raise MEDASR_MAX_USD to go on")
        self._sync_marker()
        return 3

    def _forward(self, signum, frame) -> None:
        self._stop.set()
        if self.child and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)  # the trainer saves last.ckpt on SIGTERM

    def _sync_marker(self) -> None:
        """Push the run's markers (FAILED, BUDGET, supervisor.json) to S3 before the pod stops, then the rest of the run:
        the watcher reads them there, and a stopped pod cannot be asked."""
        if uri := s3_uri(self.cfg):
            try:
                markers = [self.run_dir / n for n in (FAILED, "supervisor.json", BUDGET) if (self.run_dir / n).exists()]
                sync_up(self.run_dir, uri, only=markers)  # the markers first: they decide what the watcher does
                sync_up(self.run_dir, uri, include_audio=self.cfg.ops.s3_include_audio)  # then whatever is left
            except Exception as e:  # noqa: BLE001 - the pod still stops; the watcher then sees a stopped, undone run
                console.print(f"[red]could not sync the run's markers to {uri}: {e}")

    def _failed(self, failed: dict, prefix: str) -> int:
        self._write(state="failed", child_pid=None,
                    reason=f"{prefix}: permanent error in {failed.get('stage', '?')}: {failed['reason']}; "
                           "fix it, then supervise --retry-failed")
        self._sync_marker()
        return 1

    def _maybe_restore(self) -> None:
        uri = s3_uri(self.cfg)
        if uri and not any(self.run_dir.glob("*")):
            pulled = restore(uri, self.run_dir)
            console.print(f"restored {len(pulled)} file(s) from {uri}")

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "medasr.cli", "flywheel", "--preset", self.preset, "--run-dir", str(self.run_dir)]
        for o in self.overrides:
            cmd += ["--set", o]
        return cmd

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        self._maybe_restore()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        failures = 0
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
        if self.retry_failed:
            clear_failed(self.run_dir)
        elif failed := read_failed(self.run_dir):  # e.g. a pod restart after a doomed run: do not pay for it again
            return self._failed(failed, "run marked FAILED")
        if self.ledger is not None:
            if self._check_budget():
                return self._over_budget()
            (self.run_dir / BUDGET).unlink(missing_ok=True)  # the cap was raised: go on
        while True:
            done, why = run_is_done(self.run_dir, self.cfg.train.max_steps)
            if done:
                self._write(state="done", reason=why, child_pid=None)
                return 0
            if self._budget.is_set():
                return self._over_budget()
            if self._stop.is_set():
                self._write(state="stopped", reason="stop signal received", child_pid=None)
                return 143
            if self.state["restarts"] > self.max_restarts:
                self._write(state="failed", reason=f"gave up after {self.max_restarts} restarts ({why})", child_pid=None)
                self._sync_marker()
                return 1
            cleaned = clean_checkpoints(self.run_dir / "train" / "checkpoints")
            if cleaned:
                self.state["cleanups"] = (self.state["cleanups"] + cleaned)[-20:]
            started = time.time()
            self.child = subprocess.Popen(self.command(), env=env, start_new_session=True)
            self._write(state="running", child_pid=self.child.pid)
            rc = self.child.wait()
            self._write(last_exit=rc, child_pid=None)
            if failed := read_failed(self.run_dir):
                return self._failed(failed, "not relaunched")
            done, why = run_is_done(self.run_dir, self.cfg.train.max_steps)
            if done or self._stop.is_set() or self._budget.is_set():
                continue
            # a child that ran for a while made progress: start the backoff again from the bottom
            failures = 1 if time.time() - started > 600 else failures + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1))
            self.state["restarts"] += 1
            kind = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
            self._write(state="backoff", reason=f"transient: {kind}; not done ({why}); retry in {delay:.0f}s")
            console.print(f"[yellow]flywheel {kind} (transient; {why}); restart {self.state['restarts']} in {delay:.0f}s")
            self._stop.wait(delay)
