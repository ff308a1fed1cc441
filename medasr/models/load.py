"""Loading a model, whatever it is: a base (SALM from the Hub or a folder, NeMo ASR .nemo), a medasr SALM adapter
export, a fine-tuned .nemo, a slim training checkpoint into its base, and the freeze pattern training and loading
share. transcribe, train (selection, export, training) and evaluate all load through here, so no stage imports
another to get a model.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from rich.table import Table
from safetensors.torch import load_file

from medasr.config import ModelConfig
from medasr.console import console
from medasr.errors import InputError, MedasrError
from medasr.models import asr, salm
from medasr.models.salm import group_of, load_base
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



EXPORT_NAME = "canary-qwen-medical-lora"


MERGED = "merged"


FORMAT = "medasr-salm-adapter/1"


NEMO_EXPORT = "adapted_model.nemo"


NEMO_FORMAT = "medasr-nemo-sft/1"


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


def meta_path(export: Path) -> Path:
    """The meta file of an export: `X.json` beside `X.nemo`, or `medasr_adapter.json` inside a SALM adapter folder."""
    export = Path(export)
    return export.with_suffix(".json") if export.suffix == ".nemo" else export / "medasr_adapter.json"


def read_nemo_meta(nemo_path: Path) -> dict:
    p = meta_path(nemo_path)
    if not p.exists() or not Path(nemo_path).exists():
        raise AdapterError(f"{nemo_path}: no medasr export here (need the .nemo and {p.name}); run `medasr export`")
    meta = json.loads(p.read_text())
    if meta.get("format") != NEMO_FORMAT:
        raise AdapterError(f"{p}: unsupported format {meta.get('format')!r} (expected {NEMO_FORMAT})")
    return meta


def read_meta(adapter_dir: Path) -> dict:
    p = meta_path(adapter_dir)
    if not p.exists():
        raise AdapterError(f"{adapter_dir}: not a medasr adapter (no medasr_adapter.json); export one with `medasr export`")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{p}: unsupported format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def export_base(adapter_dir: Path, meta: dict) -> str:
    ref = meta["base_model"]
    local = (Path(adapter_dir) / ref).resolve()
    return str(local) if local.exists() else ref


def load_adapted(adapter_dir: str | Path, map_location: str = "cpu"):
    """Base + adapter. Refuses an adapter whose tensors do not all land in the model with the right shape."""
    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    model = load_base(export_base(adapter_dir, meta), map_location=map_location)
    tensors = load_file(str(adapter_dir / "adapter.safetensors"))
    sd = model.state_dict()
    unknown = [k for k in tensors if k not in sd]
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}" for k, v in tensors.items() if k in sd and v.shape != sd[k].shape]
    if unknown or bad:
        raise AdapterError(
            f"{adapter_dir}: adapter does not fit the base {meta['base_model']!r}: "
            f"{len(unknown)} unknown keys {unknown[:5]}, {len(bad)} shape mismatches {bad[:5]}"
        )
    model.load_state_dict(tensors, strict=False)
    return model, meta



@dataclass
class Loaded:
    model: object
    kind: str  # salm | asr
    source: str
    prompt: Optional[str] = None
    prompts_by_source: dict = field(default_factory=dict)


def load_model(spec: str | Path, kind: Optional[str] = None, device: Optional[str] = None) -> Loaded:
    """Resolve a model argument: SALM export dir, SALM base dir, .nemo file, or a Hub id (kind guessed from the id
    unless given: canary-qwen → salm, anything else → asr). Moves the model to `device` (default: cuda if present)."""
    p = Path(spec)
    if not p.exists() and looks_like_path(str(spec)):  # never sent to the Hub as a repo id
        raise FileNotFoundError(errno.ENOENT, "no such model (a local path that does not exist; a Hub id reads "
                                "org/name)", str(spec))
    if (p / "medasr_adapter.json").exists():
        model, meta = load_adapted(p)
        loaded = Loaded(model, "salm", str(spec), meta["prompt"], meta.get("prompts_by_source") or {})
    elif p.suffix == ".nemo" or kind == "asr" and not p.is_dir():
        loaded = Loaded(asr.load_base(spec), "asr", str(spec))
    elif (p / "config.json").exists() or kind == "salm" or (kind is None and "canary-qwen" in str(spec).lower()):
        trained = trained_prompts(p)  # merged/ carries the prompts it was fine-tuned with
        loaded = Loaded(salm.load_base(spec), "salm", str(spec), (trained or {}).get("prompt") or salm_default_prompt(),
                        (trained or {}).get("prompts_by_source") or {})
    elif p.exists():
        raise FileNotFoundError(errno.ENOENT, "not a model (expected a medasr SALM export with medasr_adapter.json, "
                                "a SALM folder with config.json, or a .nemo file)", str(spec))
    else:
        loaded = Loaded(asr.load_base(spec), "asr", str(spec))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded.model = loaded.model.to(device)
    return loaded


def looks_like_path(spec: str) -> bool:
    """A model argument meant as a local path: absolute, relative (./ ../ ~), a file name with a model suffix, or more
    than one slash. A Hub id is org/name."""
    return (spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1
            or Path(spec).suffix in (".nemo", ".json", ".safetensors", ".ckpt") or "\\" in spec
            or (spec.count("/") == 1 and Path(spec).parent.is_dir()))  # runs/x where runs/ is a local folder


def salm_default_prompt() -> str:
    return ModelConfig().prompt


