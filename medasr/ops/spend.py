"""Money spent on a run, counted so that no restart can reset it.

- `WatchLedger` (the user's machine, `runpod watch`): RunPod reports a pod's `uptimeSeconds` and `costPerHr`; whether
  uptime restarts when a stopped pod is resumed is not documented, so every pod's last uptime is kept in a local file
  (`.medasr-spend.json`, beside `.medasr-pod.json`) and an uptime that went *down* banks the session it ended. Spend =
  banked + current session, summed over every pod of the run (recreations included); the file survives a restart of the
  watcher. A resume by the watcher itself starts a new session; one the watcher did not see (a restart by RunPod)
is noticed when uptime goes down, so one followed by a longer session between two checks is missed: keep the
interval short (the pod's own cap, below, does not depend on it).
- `PodLedger` (inside the pod, the supervisor): the pod's own wall time per container session, from the moment the
  container started (setup included), at the price `runpod up` passed (MEDASR_PRICE_PER_HOUR), so the pod stops itself
  at MEDASR_MAX_USD even when no watcher runs (a closed laptop cannot run up a bill). One file per session,
  RUN/spend/<pod>-<start>.session = "<start> <last> <usd_per_hour> <pod>", the format scripts/pod_guard.sh (the
  wall-clock guard outside Python) writes and reads too; synced to S3 and restored on a replacement pod, so the spend
  of earlier pods carries over (and MEDASR_SPENT_BEFORE_USD, the watcher's count when it recreated the pod, covers the
  time before the restore). This pod's sessions + the larger of the other pods' sessions and that number.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from medasr.atomic import write_text_atomic
from medasr.config import Config

LEDGER_FILE = Path(".medasr-spend.json")


class WatchLedger:
    def __init__(self, path: Path = LEDGER_FILE):
        self.path = path
        self.pods: dict = json.loads(path.read_text()) if path.exists() else {}

    def observe(self, pod_id: str, pod: dict) -> float:
        """Record one status of a pod; returns the run's total spend so far."""
        uptime, rate = float(pod.get("uptimeSeconds") or 0), float(pod.get("costPerHr") or 0)
        p = self.pods.setdefault(pod_id, {"banked_usd": 0.0, "uptime_s": 0.0, "cost_per_hr": rate, "sessions": 1})
        if (resumed := p.pop("resumed_at_uptime_s", None)) is not None and uptime >= resumed:
            # uptime carried on across the resume (it is cumulative on this pod): un-bank what new_session banked
            p["banked_usd"] -= p["cost_per_hr"] * resumed / 3600
            p["sessions"] -= 1
        elif uptime < p["uptime_s"]:  # a new session began: the previous one's spend is banked, never lost
            p["banked_usd"] += p["cost_per_hr"] * p["uptime_s"] / 3600
            p["sessions"] += 1
        p["uptime_s"], p["cost_per_hr"] = uptime, rate or p["cost_per_hr"]
        write_text_atomic(self.path, json.dumps(self.pods, indent=2))
        return self.total()

    def new_session(self, pod_id: str) -> None:
        """The watcher resumed the pod: whatever uptime the API reports next belongs to a new session."""
        if p := self.pods.get(pod_id):
            p["banked_usd"] += p["cost_per_hr"] * p["uptime_s"] / 3600
            p["resumed_at_uptime_s"] = p["uptime_s"]  # if the next uptime is not below this, it never restarted
            p["uptime_s"], p["sessions"] = 0.0, p["sessions"] + 1
            write_text_atomic(self.path, json.dumps(self.pods, indent=2))

    def total(self) -> float:
        return sum(p["banked_usd"] + p["cost_per_hr"] * p["uptime_s"] / 3600 for p in self.pods.values())


SPEND_DIR = "spend"


class PodLedger:
    def __init__(self, spend_dir: Path, price_per_hour: float, max_usd: float, session_start: float,
                 pod_id: str = "local", spent_before: float = 0.0):
        """`session_start`: when this container started, epoch seconds (run.sh's MEDASR_CONTAINER_START)."""
        self.dir, self.price, self.max_usd = spend_dir, price_per_hour, max_usd
        self.start, self.pod, self.before = int(session_start), pod_id or "local", spent_before
        self.path = spend_dir / f"{self.pod}-{self.start}.session"
        self.write_error: str | None = None

    def sessions(self) -> list[tuple[float, float, float, str]]:
        out = []
        for f in sorted(self.dir.glob("*.session")) if self.dir.exists() else []:
            try:
                start, last, price, pod = f.read_text().split()[:4]
                out.append((float(start), float(last), float(price), pod))
            except (OSError, ValueError):  # a torn or foreign file: skipped (our own session is counted from memory)
                continue
        return out

    def tick(self, now: float | None = None) -> float:
        """Record this session up to now (a failed write, e.g. a full disk, is remembered, never raised) and return
        the run's spend."""
        now = time.time() if now is None else now
        price = max([self.price] + [p for s, _, p, pod in self.sessions() if pod == self.pod and s == self.start])
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, f"{self.start} {now:.0f} {price} {self.pod}\n")
            self.write_error = None
        except OSError as e:
            self.write_error = f"{type(e).__name__}: {e}"
        return self.spent(now)

    def spent(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        mine = others = 0.0
        seen = False
        for start, last, price, pod in self.sessions():
            if pod == self.pod and int(start) == self.start:
                seen, last, price = True, max(last, now), max(price, self.price)
            usd = (last - start) * price / 3600
            if pod == self.pod:
                mine += usd
            else:
                others += usd
        if not seen:
            mine += (now - self.start) * self.price / 3600
        return mine + max(others, self.before)

    def over(self, margin_usd: float = 0.0, now: float | None = None) -> bool:
        return self.max_usd > 0 and self.spent(now) >= self.max_usd - margin_usd


def price_per_hour(cfg: Config) -> float:
    """The GPU's hourly price: what `runpod up` saw (MEDASR_PRICE_PER_HOUR on the pod), else the preset's."""
    return float(os.environ.get("MEDASR_PRICE_PER_HOUR") or cfg.train.price_per_hour)
