"""Synthesis throughput: audio seconds made per wall-clock second, espeak-ng vs Kokoro-82M, at 1 and 2 worker processes,
through the corpus builder's own path (`medasr.data.synth.synthesize`, cache off: a fresh cache directory per run).
Also Kokoro's real-time factor on one core. Prints a table and writes JSON.

    .venv/bin/python bench/synth_bench.py [--rows 24] [--out docs/results/synth_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from medasr.data import synth
from medasr.data.lexicon import core_lexicon

VOICES = {"espeak": (["en-us", "en-gb", "en-us+f3"], ["en-us-nyc+f2"]),
          "kokoro": (["kokoro:af_heart", "kokoro:am_adam", "kokoro:af_bella*0.5+af_nicole*0.5"], ["kokoro:bf_emma"])}


def plan(engine: str, rows: int) -> list:
    train, test = VOICES[engine]
    p = synth.plan_corpus(core_lexicon(), seed=7, train_voices=train, test_voices=test, unseen_fraction=0.2,
                          train_per_term=1, val_per_term=0, test_per_term=1, unseen_test_per_term=1, rates=(150, 180),
                          noise_levels=["clean"])
    return p[:rows]


def run(engine: str, workers: int, rows: int) -> dict:
    utterances = plan(engine, rows)  # the lexicon loads outside the clock
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDASR_TTS_CACHE"] = str(Path(tmp) / "cache")  # nothing cached: every row is synthesised
        synth.engine_identity.cache_clear()
        t = time.perf_counter()  # engine start-up (a Kokoro session per process) is part of a build: inside
        out = synth.synthesize(utterances, Path(tmp) / "audio", workers=workers)
        wall = time.perf_counter() - t
    audio = sum(r["duration"] for r in out)
    return {"engine": engine, "workers": workers, "rows": len(out), "audio_s": round(audio, 1), "wall_s": round(wall, 1),
            "audio_s_per_wall_s": round(audio / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    results = [run(e, w, a.rows) for e in ("espeak", "kokoro") for w in (1, 2)]
    print(f"{'engine':8} {'workers':>7} {'rows':>5} {'audio s':>8} {'wall s':>7} {'audio s / wall s':>17}")
    for r in results:
        print(f"{r['engine']:8} {r['workers']:>7} {r['rows']:>5} {r['audio_s']:>8} {r['wall_s']:>7} {r['audio_s_per_wall_s']:>17}")
    by = {(r["engine"], r["workers"]): r["audio_s_per_wall_s"] for r in results}
    ratios = {"kokoro_vs_espeak_1_worker": round(by["kokoro", 1] / by["espeak", 1], 3),
              "kokoro_2_vs_1_workers": round(by["kokoro", 2] / by["kokoro", 1], 2),
              "espeak_2_vs_1_workers": round(by["espeak", 2] / by["espeak", 1], 2),
              "kokoro_rtf_1_worker": round(1 / by["kokoro", 1], 2)}
    print(json.dumps(ratios))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"results": results, "ratios": ratios, "cpu": platform.processor() or platform.machine(),
                                     "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
