"""Peak memory and step time of one fine-tune step with logits at every position vs only at the transcript positions
(train.target_logits_only), through `medasr bench`'s own model, batch and loss. Each setting runs in a fresh process so
its peak resident memory (ru_maxrss) is its own; the step's peak is the process peak minus the memory held before it.

    .venv/bin/python bench/target_logits_bench.py [--preset tiny] [--vocab 151936] [--batch-tokens 2000] [--steps 3]

The default is the tiny model with the release's 151,936-word vocabulary (the logits' width), which is what makes
the full logits large; on a GPU, `medasr bench train -p canary-qwen-2.5b-shapes --set train.target_logits_only=…`
measures the real model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(preset: str, overrides: list[str], batch_tokens: int, steps: int) -> dict:
    import torch

    from medasr.config import load_config
    from medasr.perf import bench

    cfg = load_config(preset, overrides)
    torch.set_num_threads(cfg.train.threads)
    dev = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model, _, speed = bench.build_model(cfg, Path(tmp), dev, torch.float32)
        model.train()
        shape = bench.shape_for(model, cfg, batch_tokens=batch_tokens)
        batch = bench.train_batch(model, cfg, shape, dev)
        held = _rss_gb()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            bench._loss(model, batch, speed["target_logits_only"]).backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    return {"target_logits_only": speed["target_logits_only"], "batch": shape.batch, "batch_tokens": shape.batch_tokens,
            "step_peak_gb": round(_peak_gb() - held, 3), "step_s": round(sorted(times)[len(times) // 2], 3)}


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch-tokens", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    base = [f"model.tiny.llm_vocab_size={a.vocab}"]
    if a.child is not None:
        print(json.dumps(one(a.preset, base + [f"train.target_logits_only={a.child}"], a.batch_tokens, a.steps)))
        return
    res = {}
    for flag in ("false", "true"):
        out = subprocess.run([sys.executable, __file__, "--child", flag, "--preset", a.preset, "--vocab", str(a.vocab),
                              "--batch-tokens", str(a.batch_tokens), "--steps", str(a.steps)],
                             check=True, capture_output=True, text=True).stdout
        res[flag] = json.loads(out.strip().splitlines()[-1])
    full, tgt = res["false"], res["true"]
    print(f"preset {a.preset}, vocabulary {a.vocab:,}, batch of {full['batch']} utterances ({full['batch_tokens']} tokens)")
    for name, r in (("logits at every position", full), ("logits at transcript positions", tgt)):
        print(f"{name:>31}: step peak {r['step_peak_gb']:.2f} GB, step {r['step_s']:.2f} s")
    print(f"memory ratio {tgt['step_peak_gb'] / full['step_peak_gb']:.2f}x, speed-up {full['step_s'] / tgt['step_s']:.2f}x")


if __name__ == "__main__":
    main()
