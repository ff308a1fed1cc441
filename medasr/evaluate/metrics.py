"""Corpus WER/CER and keyword error rate (KER), with bootstrap confidence intervals.

- WER/CER are corpus-level: total edits / total reference words (characters), not a mean of per-row rates.
- KER (NVIDIA clinical-ASR-eval rule): a row whose `term` tokens do not occur contiguously in the hypothesis scores 1,
  else 0; aggregated per row, per entity category, per term, and for seen vs unseen terms (`term_seen` column,
  written by `medasr build`: True when the term occurs in the training manifest).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import jiwer
import numpy as np

from medasr.evaluate.normalize import normalize, term_tokens


@dataclass
class RowScore:
    ref_words: int
    word_edits: int
    subs: int
    dels: int
    ins: int
    ref_chars: int
    char_edits: int
    term_hit: int | None  # 1 = term reproduced, 0 = missed, None = row has no term


def contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    return any(haystack[i] == first and haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def score_row(ref: str, hyp: str, term: str | None = None, normalizer: str = "whisper") -> RowScore:
    r, h = normalize(ref, normalizer), normalize(hyp, normalizer)
    if r:
        w = jiwer.process_words(r, h)
        subs, dels, ins = w.substitutions, w.deletions, w.insertions
        c = jiwer.process_characters(r, h)
        char_edits = c.substitutions + c.deletions + c.insertions
    else:  # empty reference: every hypothesis word is an insertion
        subs, dels, ins = 0, 0, len(h.split())
        char_edits = len(h)
    hit = None
    if term:
        hit = int(contains(term_tokens(hyp), term_tokens(term)))
    return RowScore(len(r.split()), subs + dels + ins, subs, dels, ins, len(r), char_edits, hit)


def _rate(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def bootstrap_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of sum(num)/sum(den) with rows resampled with replacement."""
    if len(num) == 0 or den.sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    d = den[idx].sum(axis=1)
    ratios = np.where(d > 0, num[idx].sum(axis=1) / np.maximum(d, 1), np.nan)
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return [float(lo), float(hi)]


def compute_metrics(rows: list[dict], normalizer: str = "whisper", n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics over manifest rows holding `text` and `pred_text` (and optionally `term`, `entity_category`, `term_seen`)."""
    scores = [score_row(r["text"], r.get("pred_text", ""), r.get("term"), normalizer) for r in rows]
    ref_words = sum(s.ref_words for s in scores)
    out: dict = {
        "n_rows": len(rows),
        "normalizer": normalizer,
        "wer": _rate(sum(s.word_edits for s in scores), ref_words),
        "cer": _rate(sum(s.char_edits for s in scores), sum(s.ref_chars for s in scores)),
        "substitutions": sum(s.subs for s in scores),
        "deletions": sum(s.dels for s in scores),
        "insertions": sum(s.ins for s in scores),
        "ref_words": ref_words,
    }
    termed = [(r, s) for r, s in zip(rows, scores) if s.term_hit is not None]
    miss = np.array([1 - s.term_hit for _, s in termed], dtype=float)
    out["ker"] = float(miss.mean()) if len(miss) else None
    by_cat: dict[str, list[int]] = defaultdict(list)
    by_term: dict[str, list[int]] = defaultdict(list)
    seen: dict[bool, list[int]] = {True: [], False: []}
    term_cat: dict[str, str] = {}
    for r, s in termed:
        m = 1 - s.term_hit
        cat = r.get("entity_category") or "unknown"
        by_cat[cat].append(m)
        by_term[r["term"]].append(m)
        term_cat[r["term"]] = cat
        if "term_seen" in r:
            seen[bool(r["term_seen"])].append(m)
    out["ker_by_category"] = {c: {"ker": float(np.mean(v)), "n": len(v)} for c, v in sorted(by_cat.items())}
    out["ker_seen"] = float(np.mean(seen[True])) if seen[True] else None
    out["ker_unseen"] = float(np.mean(seen[False])) if seen[False] else None
    out["n_seen"], out["n_unseen"] = len(seen[True]), len(seen[False])
    out["per_term"] = {
        t: {"ker": float(np.mean(v)), "n": len(v), "entity_category": term_cat[t]}
        for t, v in sorted(by_term.items(), key=lambda kv: (-np.mean(kv[1]), kv[0]))
    }
    edits = np.array([s.word_edits for s in scores], dtype=float)
    words = np.array([s.ref_words for s in scores], dtype=float)
    out["ci95"] = {
        "wer": bootstrap_ci(edits, words, n_boot, seed),
        "ker": bootstrap_ci(miss, np.ones_like(miss), n_boot, seed) if len(miss) else None,
    }
    return out
