"""The continuous command: keep the flywheel running until the run is really done, whatever happens to it.

- The flywheel runs in a child process in its own process group; SIGTERM/SIGINT to the supervisor is forwarded to
  that group (the trainer then writes `last.ckpt`); a child that has not exited `kill_grace_s` later (a trainer stuck
  in a collective ignores SIGTERM) is SIGKILLed (`ops.kill_grace_s`). The supervisor then syncs what it can and exits without restarting.
- "Done" is decided only from files — `summary.json` status done + `train/DONE` at max_steps + the exported adapter,
  or a flywheel that stopped at the gate — never from an exit code (Lightning exits 0 on SIGTERM). Done means synced:
  the supervisor exits 0 only once the final sync to S3 succeeded (retried with backoff); exit 4 says the run is done
  on this volume but not on S3.
- A permanent error (RUN/FAILED, written by the flywheel for anything that would fail the same way again) is never
  relaunched: the marker is synced to S3 first (so `runpod watch` sees it), then the supervisor exits and run.sh stops
  the pod. Any other exit is transient (a killed or preempted child, a network error) and is restarted with
  exponential backoff, up to `max_restarts`; `supervisor.json` says which kind it saw.
- Before each launch, unfinished checkpoint writes are removed and an unreadable `last.ckpt` is replaced by the
  newest readable step checkpoint.
- Budget: on a pod (`runpod up` passes MEDASR_PRICE_PER_HOUR and MEDASR_MAX_USD) the supervisor counts the run's spend
  from the container's start (medasr.ops.spend.PodLedger, RUN/spend/, the files the wall-clock guard
  scripts/pod_guard.sh keeps too); a margin before the cap (5 min of pod time, at most a tenth of the cap) it stops
  the child (which saves last.ckpt), writes RUN/BUDGET, syncs and exits 3, and run.sh stops the pod; the guard stops
  the pod at the cap itself if Python cannot. The budget check runs in its own heartbeat thread, survives any
  exception (a full disk), and wakes the restart back-off. A raised cap lets it go on (BUDGET is then cleared, on S3
  too).
- Restore: whenever the local run has no `last.ckpt` (a new pod, an empty or fresh volume), every file S3 holds that
  the run dir lacks is pulled first (checkpoints, spend of earlier pods, results), so a replacement pod resumes at the
  newest checkpoint on S3 and its spend carries over.
- The heartbeat (supervisor.json, train/progress.json, the spend files) is pushed to S3 every `heartbeat_sync_s`, so
  the watcher can tell progress from a pod that stops without getting anywhere.
- `supervisor.json` = {"state": running|backoff|done|done_unsynced|failed|budget|stopped, "restarts", "last_exit",
  "heartbeat", "spent_usd", ...}.
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

import yaml

from medasr.atomic import write_text_atomic
from medasr.config import load_config, s3_uri
from medasr.console import console
from medasr.ops.failures import is_transient
from medasr.ops.spend import SPEND_DIR, PodLedger
from medasr.ops.storage import HEARTBEAT_FILES, StorageError, delete_remote, remote_text, restore, sync_up
from medasr.runstate import BUDGET, FAILED, read_failed, run_is_done


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
                 backoff_base: float = 5.0, backoff_max: float = 300.0, retry_failed: bool = False):
        self.cfg = load_config(preset, overrides)
        self.preset, self.run_dir, self.overrides = preset, run_dir, overrides
        self.max_restarts, self.backoff_base, self.backoff_max = max_restarts, backoff_base, backoff_max
        ops = self.cfg.ops
        self.heartbeat_s, self.heartbeat_sync_s = ops.heartbeat_s, ops.heartbeat_sync_s
        self.kill_grace_s, self.sync_attempts, self.retry_failed = ops.kill_grace_s, ops.sync_attempts, retry_failed
        self.uri = s3_uri(self.cfg)
        self.state = {"state": "starting", "restarts": 0, "last_exit": None, "heartbeat": now(), "child_pid": None,
                      "started": now(), "reason": None, "cleanups": []}
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()  # a stop signal
        self._budget = threading.Event()  # the cap (less the margin) is reached
        self._wake = threading.Event()  # either: ends any wait at once
        self._finished = threading.Event()
        self.ledger, self.margin_usd = None, 0.0
        price, cap = (float(os.environ.get(k) or 0) for k in ("MEDASR_PRICE_PER_HOUR", "MEDASR_MAX_USD"))
        if price > 0 and cap > 0:
            self.ledger = PodLedger(run_dir / SPEND_DIR, price, cap,
                                    float(os.environ.get("MEDASR_CONTAINER_START") or time.time()),
                                    os.environ.get("RUNPOD_POD_ID") or "local",
                                    float(os.environ.get("MEDASR_SPENT_BEFORE_USD") or 0))
            # stop gracefully before the guard's hard stop at the cap: 5 min of pod time, at most a tenth of the cap
            self.margin_usd = min(price * 300 / 3600, cap / 10)

    # --- state, heartbeat, budget ---------------------------------------------------------------------------------
    def _write(self, **kw) -> None:
        self.state.update(kw, heartbeat=now())
        if self.ledger is not None:
            self.state["spent_usd"] = round(self.ledger.spent(), 4)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "supervisor.json", json.dumps(self.state, indent=2))
        except OSError as e:  # a full disk must not stop the supervisor (nor its budget check)
            console.print(f"[red]could not write supervisor.json: {e}")

    def _heartbeat(self) -> None:
        while not self._finished.wait(self.heartbeat_s):
            for step in (self._check_budget, self._write):  # the budget first: it must not depend on the disk
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - one bad tick must not end the thread that enforces the cap
                    console.print(f"[red]heartbeat: {step.__name__} failed: {type(e).__name__}: {e}")

    def _push_heartbeats(self) -> None:
        while not self._finished.wait(self.heartbeat_sync_s):
            files = [self.run_dir / r for r in HEARTBEAT_FILES] + sorted((self.run_dir / SPEND_DIR).glob("*.session"))
            try:
                sync_up(self.run_dir, self.uri, only=[f for f in files if f.exists()], remember=False)
            except Exception as e:  # noqa: BLE001 - retried at the next beat
                console.print(f"[yellow]could not push the heartbeat to {self.uri}: {type(e).__name__}: {e}")

    def _check_budget(self) -> bool:
        """True when the run has spent its cap (less the margin): the child is stopped (it saves last.ckpt) and
        RUN/BUDGET written."""
        if self.ledger is None:
            return False
        spent = self.ledger.tick()
        if self.ledger.over(self.margin_usd) and not self._budget.is_set():
            self._budget.set()
            self._wake.set()
            self._terminate_child("budget cap")
            try:
                write_text_atomic(self.run_dir / BUDGET, json.dumps(
                    {"spent_usd": round(spent, 2), "max_usd": self.ledger.max_usd, "time": now(), "by": "supervisor"},
                    indent=2))
            except OSError as e:
                console.print(f"[red]could not write {BUDGET}: {e}")
        return self._budget.is_set()

    def _terminate_child(self, why: str) -> None:
        """SIGTERM the flywheel's process group (the trainer saves last.ckpt), SIGKILL it if it is still there
        `kill_grace_s` later; in a thread, so neither the heartbeat nor a signal handler waits."""
        child = self.child
        if child is None or child.poll() is not None:
            return

        def escalate():
            try:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(self.kill_grace_s)
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                console.print(f"[red]the flywheel ignored SIGTERM ({why}) for {self.kill_grace_s:.0f}s: SIGKILL")
                self.state["killed"] = f"SIGKILL after {self.kill_grace_s:.0f}s ({why})"
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        threading.Thread(target=escalate, daemon=True).start()

    def _forward(self, signum, frame) -> None:
        self._stop.set()
        self._wake.set()
        self._terminate_child(f"signal {signum}")

    # --- S3 ---------------------------------------------------------------------------------------------------------
    def _sync(self, attempts: int | None = None) -> bool:
        """Push the run to S3, its markers first (they decide what the watcher does); transient failures are retried
        with backoff. True when S3 holds it all (or no S3 is configured)."""
        if not self.uri:
            return True
        attempts = attempts or self.sync_attempts
        for i in range(1, attempts + 1):
            try:
                markers = [self.run_dir / n for n in (FAILED, "supervisor.json", BUDGET) if (self.run_dir / n).exists()]
                sync_up(self.run_dir, self.uri, only=markers)
                sync_up(self.run_dir, self.uri, include_audio=self.cfg.ops.s3_include_audio)
                self.state.pop("sync_error", None)
                return True
            except Exception as e:  # noqa: BLE001 - sorted below
                retry = is_transient(e) or isinstance(e, StorageError)  # a checksum refusal: the file changed
                self.state["sync_error"] = f"{type(e).__name__}: {e}"
                console.print(f"[red]sync to {self.uri} failed (attempt {i}/{attempts}, "
                              f"{'transient' if retry else 'permanent'}): {type(e).__name__}: {e}")
                if not retry:
                    return False
                if i < attempts:
                    time.sleep(min(self.backoff_max, self.backoff_base * 2 ** (i - 1)))
        return False

    def _clear_marker(self, name: str) -> None:
        """A marker cleared here is deleted on S3 too: sync never deletes, and the watcher would stop the run again."""
        (self.run_dir / name).unlink(missing_ok=True)
        if self.uri:
            try:
                delete_remote(self.uri, [name])
            except Exception as e:  # noqa: BLE001 - the next sync of markers does not delete it: say so
                console.print(f"[red]could not delete {name} on {self.uri} ({e}): delete it there, or the watcher "
                              "will stop this run again")

    def _maybe_restore(self) -> int | None:
        """Pull what S3 has and this run dir lacks, whenever it has no last.ckpt. An exit code when S3 cannot be read
        (starting from scratch would pay again for work S3 holds)."""
        if not self.uri or (self.run_dir / "train" / "checkpoints" / "last.ckpt").exists():
            return None
        for i in range(1, self.sync_attempts + 1):
            try:
                theirs = yaml.safe_load(remote_text(self.uri, "config.yaml") or "{}") or {}
                if theirs.get("name", self.cfg.name) != self.cfg.name:
                    # another run's prefix: restoring it would resume (or finish) that run; nothing is written there
                    self._write(state="failed", reason=f"{self.uri} holds a run of preset {theirs['name']!r}, this run "
                                f"is {self.cfg.name!r}: give it its own prefix (MEDASR_S3_URI, `runpod up --run-name`)")
                    return 1
                pulled = restore(self.uri, self.run_dir, only_missing=True)
                if pulled:
                    console.print(f"restored {len(pulled)} file(s) from {self.uri}")
                self.state["restored"] = len(pulled)
                return None
            except Exception as e:  # noqa: BLE001
                console.print(f"[red]restore from {self.uri} failed (attempt {i}): {type(e).__name__}: {e}")
                if not (is_transient(e) or isinstance(e, StorageError)) or self._stop.is_set():
                    break
                if i < self.sync_attempts:
                    self._wake.wait(min(self.backoff_max, self.backoff_base * 2 ** (i - 1)))
        self._write(state="failed", reason=f"could not restore the run from {self.uri}: not starting from scratch")
        return 75

    # --- endings ----------------------------------------------------------------------------------------------------
    def _over_budget(self) -> int:
        self._write(state="budget", child_pid=None, reason=f"budget cap ${self.ledger.max_usd:.2f} reached "
                    f"(${self.ledger.spent():.2f} spent by this run); raise MEDASR_MAX_USD to go on")
        self._sync(attempts=2)
        return 3

    def _failed(self, failed: dict, prefix: str) -> int:
        self._write(state="failed", child_pid=None,
                    reason=f"{prefix}: permanent error in {failed.get('stage', '?')}: {failed['reason']}; "
                           "fix it, then supervise --retry-failed")
        self._sync()
        return 1

    def _done(self, why: str) -> int:
        self._write(state="done", reason=why, child_pid=None)
        if self._sync():
            self._write()  # the heartbeat that says done, pushed too
            self._sync(attempts=1)
            return 0
        self._write(state="done_unsynced", reason=f"done here, but the final sync to {self.uri} failed: "
                    f"{self.state.get('sync_error')}; `medasr sync` from this volume, or resume the pod")
        return 4

    def _stopped(self) -> int:
        self._write(state="stopped", reason="stop signal received", child_pid=None)
        self._sync(attempts=1)  # best effort: a container stop leaves seconds, not minutes
        return 143

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "medasr.cli", "flywheel", "--preset", self.preset, "--run-dir", str(self.run_dir)]
        for o in self.overrides:
            cmd += ["--set", o]
        return cmd

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        threading.Thread(target=self._heartbeat, daemon=True).start()
        if self.uri:
            threading.Thread(target=self._push_heartbeats, daemon=True).start()
        try:
            return self._run()
        finally:
            self._finished.set()

    def _run(self) -> int:
        if (rc := self._maybe_restore()) is not None:
            return rc
        failures = 0
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
        if self.retry_failed:
            self._clear_marker(FAILED)
        elif failed := read_failed(self.run_dir):  # e.g. a pod restart after a doomed run: do not pay for it again
            return self._failed(failed, "run marked FAILED")
        if self.ledger is not None:
            if self._check_budget():
                return self._over_budget()
            if (self.run_dir / BUDGET).exists():
                self._clear_marker(BUDGET)  # the cap was raised: go on
        while True:
            done, why = run_is_done(self.run_dir, self.cfg.train.max_steps)
            if done:
                return self._done(why)
            if self._budget.is_set():
                return self._over_budget()
            if self._stop.is_set():
                return self._stopped()
            if self.state["restarts"] > self.max_restarts:
                self._write(state="failed", reason=f"gave up after {self.max_restarts} restarts ({why})", child_pid=None)
                self._sync()
                return 1
            cleaned = clean_checkpoints(self.run_dir / "train" / "checkpoints")
            if cleaned:
                self.state["cleanups"] = (self.state["cleanups"] + cleaned)[-20:]
            started = time.time()
            self.child = subprocess.Popen(self.command(), env=env, start_new_session=True)
            self._write(state="running", child_pid=self.child.pid)
            if self._stop.is_set() or self._budget.is_set():  # a signal between the checks above and the launch
                self._terminate_child("stop requested at launch")
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
            self._wake.wait(delay)  # a stop signal or the budget ends the wait at once
