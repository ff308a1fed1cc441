"""Speaker-disjoint, source-stratified subset selection (`--max-train 2000 --val 200`).

Rows are grouped by `speaker` (a row without one is its own group). Groups are shuffled with the seed and taken whole,
so no speaker is on both sides of a split; only the last group taken may be cut short to hit the size exactly (its
remaining rows go nowhere, which keeps the sides disjoint). With several sources, each gets a share of the quota
proportional to its size.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    g: dict[str, list[dict]] = defaultdict(list)
    for i, r in enumerate(rows):
        g[str(r.get("speaker") or f"__row{i}")].append(r)
    return g


def _take_groups(groups: list[list[dict]], n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Take ~n rows as whole groups; returns (taken, rows of the groups not taken)."""
    order = list(range(len(groups)))
    rng.shuffle(order)
    taken, rest = [], []
    for i in order:
        if len(taken) < n:
            taken.extend(groups[i][: n - len(taken)])  # a group cut short leaves its other rows unused
        else:
            rest.extend(groups[i])
    return taken, rest


def stratified_take(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Speaker groups are formed over all sources first (one speaker never spans two strata), then each source
    stratum, holding the groups whose rows are mostly from it, gets a quota proportional to its size."""
    rng = random.Random(seed)
    by_stratum: dict[str, list[list[dict]]] = defaultdict(list)
    for key in sorted(groups := _groups(rows)):
        g = groups[key]
        stratum = Counter(r.get("source", "?") for r in g).most_common(1)[0][0]
        by_stratum[stratum].append(g)
    total = len(rows)
    taken, rest = [], []
    for stratum in sorted(by_stratum):
        size = sum(len(g) for g in by_stratum[stratum])
        t, r = _take_groups(by_stratum[stratum], round(n * size / total) if total else 0, rng)
        taken += t
        rest += r
    return taken, rest


def split_train_val(pool: list[dict], max_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Validation first (speaker groups), then training from speakers not used for validation."""
    val, rest = stratified_take(pool, min(n_val, len(pool)), seed)
    train, _ = stratified_take(rest, min(max_train, len(rest)), seed + 1)
    return train, val


def speakers(rows: list[dict]) -> set[str]:
    return {str(r["speaker"]) for r in rows if r.get("speaker")}


def speaker_of(row: dict) -> str | None:
    """Who speaks a row: its `speaker`, else the voice of a synthetic `voice_id` (`espeak-ng:<voice>:rate<wpm>`, the
    rate is not a new speaker). Synthetic rows carry no `speaker` on purpose: the speaker-disjoint split rules for real
    data would otherwise drop every synthetic training row whose voice also speaks validation rows."""
    if row.get("speaker"):
        return str(row["speaker"])
    vid = row.get("voice_id")
    if not vid:
        return None
    parts = str(vid).split(":")
    return ":".join(parts[:2]) if len(parts) >= 2 else str(vid)


def cluster_of(row: dict) -> str:
    """The unit of independence a row belongs to, for confidence intervals (medasr.evaluate.metrics): a consultation
    (PriMock57), a synthetic term (its sentences share the term), a generic sentence (spoken by two voices), a speaker,
    a long recording its segments were cut from, else the row itself."""
    src = str(row.get("source") or "")
    if row.get("consultation"):
        return f"consultation:{row['consultation']}"
    if src.startswith("synthetic") and row.get("term"):
        return f"term:{str(row['term']).lower()}"
    if src.startswith("generic"):
        return f"sentence:{str(row.get('text', '')).lower()}"
    if row.get("speaker"):
        return f"speaker:{row['speaker']}"
    if row.get("recording"):
        return f"recording:{row['recording']}"
    return f"row:{row.get('id') or row.get('audio_filepath')}"
