"""Money spent on a run, counted so that no restart can reset it.

- `WatchLedger` (the user's machine, `runpod watch`): RunPod reports a pod's `uptimeSeconds` and `costPerHr`; whether
  uptime restarts when a stopped pod is resumed is not documented, so every pod's last uptime is kept in a local file
  (`.medasr-spend.json`, beside `.medasr-pod.json`) and an uptime that went *down* banks the session it ended. Spend =
  banked + current session, summed over every pod of the run (recreations included); the file survives a restart of the
  watcher. A resume by the watcher itself starts a new session; one the watcher did not see (a restart by RunPod)
is noticed when uptime goes down, so one followed by a longer session between two checks is missed: keep the
interval short (the pod's own cap, below, does not depend on it).
- `PodLedger` (inside the pod, the supervisor): the pod's own wall time per container start, at the price `runpod up`
  passed (MEDASR_PRICE_PER_HOUR), in RUN/spend.json on the volume, so the pod stops itself at MEDASR_MAX_USD even when
  no watcher runs (a closed laptop cannot run up a bill).
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


class PodLedger:
    def __init__(self, path: Path, price_per_hour: float, max_usd: float, session: str):
        """`session`: the container's start time in epoch seconds (run.sh's MEDASR_CONTAINER_START)."""
        self.path, self.price, self.max_usd, self.session = path, price_per_hour, max_usd, session
        self.data = json.loads(path.read_text()) if path.exists() else {"sessions": {}}

    def tick(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        s = self.data["sessions"].setdefault(self.session, {"start": float(self.session), "last": now})
        s["last"] = max(s["last"], now)
        self.data |= {"price_per_hour": self.price, "max_usd": self.max_usd, "spent_usd": round(self.spent(), 4)}
        write_text_atomic(self.path, json.dumps(self.data, indent=2))
        return self.spent()

    def spent(self) -> float:
        return self.price * sum(s["last"] - s["start"] for s in self.data["sessions"].values()) / 3600

    def over(self) -> bool:
        return self.max_usd > 0 and self.spent() >= self.max_usd


def price_per_hour(cfg: Config) -> float:
    """The GPU's hourly price: what `runpod up` saw (MEDASR_PRICE_PER_HOUR on the pod), else the preset's."""
    return float(os.environ.get("MEDASR_PRICE_PER_HOUR") or cfg.train.price_per_hour)
