"""`medasr average CKPT...`: a uniform average of the weights in several training checkpoints of one run.

Averaging the last few checkpoints is a cheap, often-better alternative to any single one (NVIDIA's SALM fine-tuning
toolkit ships the same tool). Floating-point tensors are averaged in float64 and cast back; integer buffers (e.g.
BatchNorm's num_batches_tracked) come from the last checkpoint. Optimizer state is dropped: the result is for export
and evaluation (`medasr export --ckpt AVG`), not for resuming.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medasr.errors import InputError


class AverageError(InputError):
    pass


def average_checkpoints(paths: list[Path], out: Path) -> dict:
    if len(paths) < 2:
        raise AverageError("give at least two checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    ref_shapes: dict[str, tuple] = {}
    last_state: dict = {}
    for i, p in enumerate(paths):
        state = torch.load(p, map_location="cpu", weights_only=False)
        sd = state["state_dict"]
        if i == 0:
            ref_shapes = {k: tuple(v.shape) for k, v in sd.items()}
        elif {k: tuple(v.shape) for k, v in sd.items()} != ref_shapes:
            diff = sorted(set(sd) ^ set(ref_shapes)) or [k for k in sd if tuple(sd[k].shape) != ref_shapes[k]]
            raise AverageError(f"{p} does not match {paths[0]} (e.g. {diff[:3]}): average checkpoints of one run only")
        for k, v in sd.items():
            if v.is_floating_point():
                total[k] = total[k] + v.double() if k in total else v.double()
        last_state = state
        del state, sd
    n = len(paths)
    last_sd = last_state["state_dict"]
    avg = {k: (total[k] / n).to(v.dtype) if k in total else v for k, v in last_sd.items()}
    meta = {"sources": [str(p) for p in paths], "n": n}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save({"state_dict": avg, "global_step": last_state.get("global_step", -1), "medasr_average": meta}, partial)
    os.replace(partial, out)
    return meta | {"out": str(out), "tensors": len(avg), "averaged": len(total)}
