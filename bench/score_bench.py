"""Scoring throughput: `compute_metrics` on N synthetic short rows (default 100k), whisper normaliser, lexicon
term tagging, 1000 bootstrap resamples. Prints rows/s and the wall time; target < 60 s for 100k rows on 2 cores.

    .venv/bin/python bench/score_bench.py [--rows 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from medasr.data.lexicon import core_lexicon
from medasr.data.templates import CONTEXT_TYPES, TEMPLATES, render
from medasr.evaluate.metrics import compute_metrics


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    terms = core_lexicon().terms
    rows = []
    for i in range(n):
        t = rng.choice(terms)
        ref = render(rng.choice(TEMPLATES[rng.choice(CONTEXT_TYPES)][t.entity_category]), t.term) + f" Bed {i % 40}."
        words = ref.split()
        if rng.random() < 0.4:  # corrupt a word
            j = rng.randrange(len(words))
            words[j] = words[j][::-1]
        rows.append({"text": ref, "pred_text": " ".join(words), "term": t.term, "entity_category": t.entity_category})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    rows = make_rows(args.rows)
    t = time.perf_counter()
    m = compute_metrics(rows, n_boot=args.n_boot, workers=args.workers)
    dt = time.perf_counter() - t
    print(json.dumps({"rows": args.rows, "workers": args.workers, "seconds": round(dt, 2),
                      "rows_per_s": round(args.rows / dt), "wer": round(m["wer"], 4), "ker": round(m["ker"], 4),
                      "term_error_rate": round(m["term_error_rate"], 4)}))


if __name__ == "__main__":
    main()
