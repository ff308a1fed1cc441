"""Rehearse a real preset offline: build the Hub and dataset replicas, run `medasr supervise --preset P` on them with
`HF_HUB_OFFLINE=1` (only sizes and steps changed with `--set`, plus CPU instead of GPU), then check what a paid run
needs: the run reaches done, the export reloads in a fresh process, every manifest row loads through NeMo's own Lhotse
reader, and (SALM) checkpoints hold no frozen tensor. Results: WORK/rehearse.json.

What it cannot show: numerics of the real weights, speed, memory, CUDA kernels. Those need a GPU (scripts/bench_gpu.sh).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medasr.console import console
from medasr.data.validate import nemo_reader_check
from medasr.errors import RunError
from medasr.rehearse.datasets import primock57_replica
from medasr.rehearse.hub import build_hub_cache

PRESETS = ("canary-qwen-2.5b", "parakeet-tdt-0.6b-v2")
# Hardware (the presets say gpu/bf16) and nothing else about the recipe.
CPU = ["train.accelerator=cpu", "model.precision=32-true", "train.num_workers=0", "train.threads=2"]
# Sizes and steps: a few minutes on 2 CPU cores.
SMALL = ["train.max_steps=20", "train.ckpt_every_n_steps=10", "train.val_every_n_steps=10", "train.limit_val_batches=2",
         "train.select_rows=8", "train.smoke_steps=4", "data.max_train=48", "data.max_val=8", "eval.batch_size=32",
         "eval.max_new_tokens=12", "eval.n_boot=50",
         # the preset's Kokoro voices, on a sample of the synthetic test rows (all of them: minutes of CPU synthesis),
         # and the gate's row minimum scaled with it (the gate itself still decides)
         "data.synth.max_test=40", "data.synth.generic_test_rows=2", "gate.min_rows=30"]
BY_PRESET = {"canary-qwen-2.5b": ["train.batch_tokens=1500"], "parakeet-tdt-0.6b-v2": ["train.batch_size=4"]}


class RehearsalError(RunError):
    pass


def offline_env(work: Path) -> dict:
    """The environment of the rehearsed run: the replica cache only, no network services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDASR_S3", "WANDB_API", "AWS_"))}
    return env | {"HF_HOME": str(work / "hf"), "HF_HUB_CACHE": str(work / "hf" / "hub"), "HF_HUB_OFFLINE": "1",
                  "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def overrides(preset: str, work: Path, extra: list[str] | None = None) -> list[str]:
    return [*CPU, *SMALL, *BY_PRESET[preset], f"data.mix.1.local={work / 'primock57'}", *(extra or [])]


def _cli(args: list[str], env: dict, log: Path, timeout: float) -> int:
    with open(log, "a") as f:
        f.write(f"\n$ medasr {' '.join(args)}\n")
        f.flush()
        child = subprocess.Popen([sys.executable, "-m", "medasr.cli", *args], env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # supervise, the flywheel under it and any training ranks
            child.wait()
            raise RehearsalError(f"medasr {args[0]} ran past {timeout:.0f} s (see {log})") from None


def _texts(out: Path) -> list[str]:
    return [json.loads(line)["pred_text"] for line in (out / "transcripts.json").read_text().splitlines() if line.strip()]


def check_manifests(run_dir: Path) -> dict:
    paths = [run_dir / "data" / f"{s}.json" for s in ("train", "val", "test")]
    paths += sorted((run_dir / "train" / "data").glob("*.json"))  # SALM: the prompted copies training reads
    return {str(p.relative_to(run_dir)): nemo_reader_check(p) for p in paths}


def check_slim(run_dir: Path) -> dict:
    import torch

    last = run_dir / "train" / "checkpoints" / "last.ckpt"
    keys = list(torch.load(last, map_location="cpu", weights_only=False)["state_dict"])
    frozen = [k for k in keys if k.startswith(("llm.", "embed_tokens.")) and ".lora_" not in k]
    return {"checkpoint": last.name, "tensors": len(keys), "frozen_tensors": frozen}


def rehearse(preset: str, work: Path, extra: list[str] | None = None, timeout_min: float = 40) -> dict:
    if preset not in PRESETS:
        raise RehearsalError(f"rehearse covers {', '.join(PRESETS)}; got {preset!r}")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "rehearse.log"
    t0 = time.time()
    console.print(f"replicas → {work / 'hf' / 'hub'} (Hub) and {work / 'primock57'}")
    repos = build_hub_cache(work / "hf" / "hub", (preset,))
    primock57_replica(work / "primock57")
    env, run_dir = offline_env(work), work / "run"
    sets = [a for o in overrides(preset, work, extra) for a in ("--set", o)]
    console.print(f"medasr supervise --preset {preset} (HF_HUB_OFFLINE=1; log: {log})")
    rc = _cli(["supervise", "--preset", preset, "--run-dir", str(run_dir), "--max-restarts", "0", *sets], env, log,
              timeout_min * 60)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    report: dict = {"preset": preset, "replicas": {k: str(v) for k, v in repos.items()}, "supervise_exit": rc,
                    "status": summary.get("status"), "overrides": overrides(preset, work, extra)}
    if rc != 0 or summary.get("status") != "done":
        failed = run_dir / "FAILED"
        why = failed.read_text() if failed.exists() else f"see {log}"
        raise RehearsalError(f"{preset}: supervise exited {rc}, status {summary.get('status')!r}: {why}")
    export = Path(summary["export"])
    test_rows = [json.loads(x) for x in (run_dir / "data" / "test.json").read_text().splitlines()[:2]]
    out = work / "transcripts"
    rc = _cli(["transcribe", "--model", str(export), *[r["audio_filepath"] for r in test_rows], "--out", str(out)],
              env, log, 600)
    if rc != 0 or not (out / "transcripts.json").exists():
        raise RehearsalError(f"{preset}: the export {export} did not reload in a fresh process (see {log})")
    report["export"] = {"path": str(export), "reloaded_in_fresh_process": True}
    if (export / "merged").is_dir():  # SALM: the merged form loads with NeMo alone and, under the prompts it
        out_m = work / "transcripts-merged"  # carries (merged/medasr_prompts.json), says the same
        rc = _cli(["transcribe", "--model", str(export / "merged"),
                   *[r["audio_filepath"] for r in test_rows], "--out", str(out_m)], env, log, 600)
        texts = [_texts(d) for d in (out, out_m) if (d / "transcripts.json").exists()]
        if rc != 0 or len(texts) != 2 or texts[0] != texts[1]:
            raise RehearsalError(f"{preset}: the merged export {export / 'merged'} did not reproduce the adapter's "
                                 f"transcripts ({texts}; see {log})")
        report["export"]["merged_matches_adapter"] = True
    report["nemo_reader_rows"] = check_manifests(run_dir)
    if (run_dir / "train" / "data").exists():
        report["slim_checkpoint"] = slim = check_slim(run_dir)
        if slim["frozen_tensors"]:
            raise RehearsalError(f"{preset}: {slim['checkpoint']} holds frozen tensors {slim['frozen_tensors'][:3]}")
    report["minutes"] = round((time.time() - t0) / 60, 1)
    (work / "rehearse.json").write_text(json.dumps(report, indent=2))
    return report
