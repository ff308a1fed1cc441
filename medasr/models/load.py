"""What loading shares across the model families (medasr/families/): the freeze pattern training and loading apply, a
slim training checkpoint into a model built from its base, where an export's meta file lives and how it names its base,
the prompts an export was fine-tuned with, and telling a local path from a Hub id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from rich.table import Table

from medasr.console import console
from medasr.errors import InputError, MedasrError
from medasr.models.salm import group_of
from medasr.models.speed import state_key


class FreezePatternError(MedasrError, RuntimeError):
    pass


def apply_freeze(model, freeze_params: list[str]) -> dict:
    """Freeze exactly as NeMo's configure_optimizers will, then count parameters per group and check the pattern."""
    from nemo.collections.speechlm2.parts.optim_setup import freeze_and_subset

    model.cfg.freeze_params = list(freeze_params)
    list(freeze_and_subset(model.named_parameters(), model.cfg.freeze_params, model.cfg.get("prevent_freeze_params")))
    table: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        g = table.setdefault(group_of(name), {"trainable": 0, "frozen": 0})
        g["trainable" if p.requires_grad else "frozen"] += p.numel()
    problems = []
    if table.get("llm (frozen)", {}).get("trainable", 0):
        problems.append("LLM base weights are trainable (they must be frozen)")
    for must in ("lora", "encoder", "projection"):
        g = table.get(must, {"trainable": 0, "frozen": 0})
        if g["trainable"] == 0:
            problems.append(f"no trainable {must} parameters")
        elif must != "encoder" and g["frozen"]:
            problems.append(f"{g['frozen']} {must} parameters are frozen")
    if table.get("other", {}).get("trainable", 0):
        problems.append("parameters outside the known groups are trainable")
    if problems:
        raise FreezePatternError(
            "freeze pattern is not the intended one (LLM frozen; encoder, projection, LoRA trained): "
            + "; ".join(problems)
            + f". Check model.freeze_params ({freeze_params}) and the base's prevent_freeze_params."
        )
    return table


def print_param_table(table: dict) -> None:
    t = Table(title="trainable parameters")
    t.add_column("group")
    t.add_column("trainable", justify="right")
    t.add_column("frozen", justify="right")
    for g, v in table.items():
        t.add_row(g, f"{v['trainable']:,}", f"{v['frozen']:,}")
    console.print(t)


class CheckpointError(MedasrError, RuntimeError):
    pass


def missing_trainable(model, state_dict: dict) -> list[str]:
    trainable = (state_key(n) for n, p in model.named_parameters() if p.requires_grad)
    return sorted(n for n in trainable if n not in state_dict)


def load_training_checkpoint(model, path: Path) -> dict:
    """Weights from a (slim) training checkpoint into a model built from the base: every trainable tensor must be
    there, and nothing unknown may be."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    sd = state["state_dict"]
    missing = missing_trainable(model, sd)
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{path}: {len(missing)} trainable tensors missing {missing[:3]}, "
                              f"{len(unexpected)} unknown {unexpected[:3]}")
    model.load_state_dict(sd, strict=False)
    return state

class AdapterError(MedasrError, RuntimeError):
    pass


PROMPTS_FILE = "medasr_prompts.json"  # in merged/: the prompts the model was fine-tuned with (NeMo ignores the file)
PROMPTS_FORMAT = "medasr-prompts/1"


class PromptChangeError(InputError):
    """Decoding an export under other prompts than it was fine-tuned with (allow it explicitly)."""


def trained_prompts(spec: str | Path) -> dict | None:
    """{"prompt", "prompts_by_source"} a medasr export was fine-tuned with (its adapter meta, or merged/'s
    medasr_prompts.json); None for a base model or a Hub id (nothing recorded: the release's own prompt applies)."""
    p = Path(spec)
    for f in (p / "medasr_adapter.json", p / PROMPTS_FILE):
        if f.is_file():
            meta = json.loads(f.read_text())
            return {"prompt": meta["prompt"], "prompts_by_source": dict(meta.get("prompts_by_source") or {}),
                    "preset": meta.get("preset")}
    return None


def check_prompt_change(spec: str | Path, prompt: str | None, by_source: dict | None, allow: bool) -> dict | None:
    """Refuse prompts other than the ones `spec` was fine-tuned with (PromptChangeError naming both), unless `allow`.
    `prompt` None: the trained ones are used; `by_source` None: only the default prompt is given (it then applies to
    every row, so any trained per-source prompt would be dropped). Returns the trained prompts (None: none recorded)."""
    trained = trained_prompts(spec)
    if trained is None or allow or prompt is None:
        return trained
    asked = {"prompt": prompt, "prompts_by_source": dict(by_source or {})}
    if asked != {k: trained[k] for k in asked}:
        raise PromptChangeError(
            f"{spec} was fine-tuned with prompt {trained['prompt']!r}"
            + (f" and per-source prompts {trained['prompts_by_source']}" if trained["prompts_by_source"] else "")
            + f"; asked to decode with {asked['prompt']!r}"
            + (f" and {asked['prompts_by_source']}" if asked["prompts_by_source"] else "")
            + ": decode with the prompts it was fine-tuned with (transcribe: leave out --prompt; eval: its preset"
            + (f" {trained['preset']!r}" if trained.get("preset") else "") + " without prompt overrides), or allow the "
            "change (--allow-prompt-change)")
    return trained


def export_base_ref(base: str | Path, out_dir: Path) -> str:
    """How an export names its base: a local base relative to the export (the run directory moves as a whole), a Hub
    id as it is."""
    p = Path(base)
    return os.path.relpath(p.resolve(), Path(out_dir).resolve()) if p.exists() else str(base)


def read_meta_file(p: Path, fmt: str, missing: str) -> dict:
    """An export's meta record `p` of format `fmt`; AdapterError(`missing`) when there is none."""
    if not p.exists():
        raise AdapterError(missing)
    meta = json.loads(p.read_text())
    if meta.get("format") != fmt:
        raise AdapterError(f"{p}: unsupported format {meta.get('format')!r} (expected {fmt})")
    return meta


def meta_path(export: Path) -> Path:
    """The meta file of an export: `X.json` beside `X.nemo`, or `medasr_adapter.json` inside a SALM adapter folder."""
    export = Path(export)
    return export.with_suffix(".json") if export.suffix == ".nemo" else export / "medasr_adapter.json"


def looks_like_path(spec: str) -> bool:
    """A model argument meant as a local path: absolute, relative (./ ../ ~), a file name with a model suffix, or more
    than one slash. A Hub id is org/name."""
    return (spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1
            or Path(spec).suffix in (".nemo", ".json", ".safetensors", ".ckpt") or "\\" in spec
            or (spec.count("/") == 1 and Path(spec).parent.is_dir()))  # runs/x where runs/ is a local folder
