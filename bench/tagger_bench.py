"""Lexicon tagger throughput on one core: sentences per second (target ≥ 10,000).

    .venv/bin/python bench/tagger_bench.py [--sentences 50000] [--extended]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from medasr.data.lexicon import core_lexicon
from medasr.data.templates import CONTEXT_TYPES, TEMPLATES, render


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=50_000)
    ap.add_argument("--extended", action="store_true", help="core + drugs + ICD-10-CM conditions (~18k terms)")
    args = ap.parse_args()
    if args.extended:
        from medasr.data.lexicon_sources import extended_lexicon

        lex = extended_lexicon()
    else:
        lex = core_lexicon()
    rng = random.Random(0)
    terms = core_lexicon().terms  # sentences built around the core terms either way
    sents = []
    for _ in range(args.sentences):
        t = rng.choice(terms)
        sents.append(render(rng.choice(TEMPLATES[rng.choice(CONTEXT_TYPES)][t.entity_category]), t.term)
                     + " The patient, who is 64, was seen again today and is doing well.")
    t0 = time.perf_counter()
    found = sum(len(lex.tag(s)) for s in sents)
    dt = time.perf_counter() - t0
    print(json.dumps({"sentences": len(sents), "lexicon_terms": len(lex), "seconds": round(dt, 2),
                      "sentences_per_s": round(len(sents) / dt), "matches": found}))


if __name__ == "__main__":
    main()
