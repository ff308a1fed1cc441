"""Does a checkpoint fit a model? Tensor names and shapes read from a safetensors header, tied weights, and the
coverage report the model preflight refuses a base on (medasr/families/salm.py)."""

from __future__ import annotations

import re
from pathlib import Path


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def tied_groups(state_dict: dict) -> list[list[str]]:
    """Names that share one tensor (Qwen3-1.7B ties lm_head to embed_tokens). save_pretrained writes such a tensor once,
    under one of its names, so a checkpoint legitimately lacks the others."""
    by_storage: dict[tuple, list[str]] = {}
    for k, v in state_dict.items():
        by_storage.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    return [sorted(g) for g in by_storage.values() if len(g) > 1]


def coverage(model_shapes: dict[str, tuple], ckpt_shapes: dict[str, tuple], may_be_missing: tuple[str, ...] = (),
             tied: list[list[str]] = ()) -> dict:
    unknown = sorted(set(ckpt_shapes) - set(model_shapes))
    mismatched = sorted(f"{k}: checkpoint {ckpt_shapes[k]} vs model {model_shapes[k]}"
                        for k in set(ckpt_shapes) & set(model_shapes) if tuple(ckpt_shapes[k]) != tuple(model_shapes[k]))
    via_tie = {k for g in tied if set(g) & set(ckpt_shapes) for k in g}
    missing = sorted(k for k in set(model_shapes) - set(ckpt_shapes) - via_tie if not k.startswith(may_be_missing))
    return {"checkpoint_tensors": len(ckpt_shapes), "model_tensors": len(model_shapes), "unknown": unknown,
            "shape_mismatch": mismatched, "missing": missing, "tied": [list(g) for g in tied]}


def size_mismatches(err: RuntimeError) -> list[str]:
    return re.findall(r"size mismatch for ([^:]+): copying a param with shape (torch.Size\(\[[^\]]*\]\))[^,]*, the shape "
                      r"in current model is (torch.Size\(\[[^\]]*\]\))", str(err))
