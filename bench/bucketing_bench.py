"""Padding with and without duration bucketing (train.bucketing), through the fine-tune's own data pipeline.
Prints, per setting, the fraction of audio samples and token positions that are padding, and the ratio of padded
audio seconds (what the encoder processes) to real ones.

    .venv/bin/python bench/bucketing_bench.py [--run-dir runs/tiny] [--preset tiny] [--batches 30]
      [--set train.batch_tokens=1500]

--run-dir must hold a built run (data/train.json, model/base): run `medasr flywheel -p tiny` once first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from medasr.config import load_config
from medasr.models.salm import load_base
from medasr.perf.padding import padding_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    model = load_base(a.run_dir / "model" / "base")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("no bucketing", []), ("bucketing", ["train.bucketing=true"])):
            cfg = load_config(a.preset, a.set + extra)
            out[name] = padding_stats(cfg, model, a.run_dir / "data", Path(tmp) / name, a.batches)
    for name, s in out.items():
        print(f"{name:>13}: audio padding {s['audio_padding']:.1%}, token padding {s['token_padding']:.1%}, "
              f"mean batch {s['mean_batch']}, encoder audio / real audio {s['padded_audio_seconds'] / s['audio_seconds']:.2f}x")
    base, buck = out["no bucketing"], out["bucketing"]
    saved = 1 - (buck["padded_audio_seconds"] / buck["audio_seconds"]) / (base["padded_audio_seconds"] / base["audio_seconds"])
    print(f"encoder work per real audio second: {saved:.1%} less with bucketing")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
