"""Contamination check: drop any training row equal to, or sharing an 8-gram with, a validation or test reference.

Text is compared after `basic_normalize`. Rows shorter than n words can only match exactly. Synthetic rows share
carrier sentences across splits by design (the held-out dimension is the term and the voice), so for sources listed in
`template_sources` only exact duplicates are dropped; their n-gram overlaps are counted and reported, not dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from medasr.normalize import basic_normalize


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def decontaminate(train: list[dict], held_out: list[dict], n: int = 8,
                  template_sources: frozenset[str] = frozenset({"synthetic-espeak", "synthetic-kokoro"})) -> tuple[list[dict], dict]:
    held_text = set()
    held_grams: set[tuple[str, ...]] = set()
    for r in held_out:
        toks = basic_normalize(r["text"]).split()
        held_text.add(" ".join(toks))
        held_grams |= ngrams(toks, n)
    kept: list[dict] = []
    counts: dict[str, Counter] = defaultdict(Counter)
    examples = []
    for r in train:
        src = r.get("source", "?")
        toks = basic_normalize(r["text"]).split()
        if " ".join(toks) in held_text:
            counts[src]["dropped_exact"] += 1
            examples.append({"id": r.get("id"), "text": r["text"], "why": "equal to a held-out reference"})
            continue
        if held_grams & ngrams(toks, n):
            if src in template_sources:
                counts[src]["template_overlap_kept"] += 1
            else:
                counts[src][f"dropped_{n}gram"] += 1
                examples.append({"id": r.get("id"), "text": r["text"], "why": f"shares an {n}-gram with a held-out reference"})
                continue
        counts[src]["kept"] += 1
        kept.append(r)
    report = {
        "ngram": n,
        "train_rows_in": len(train),
        "train_rows_kept": len(kept),
        "dropped": len(train) - len(kept),
        "by_source": {s: dict(c) for s, c in sorted(counts.items())},
        "examples": examples[:20],
    }
    return kept, report
