"""What the flywheel and the CLI need from a model family, in one place: each `Family` names that family's own
functions for the steps where the families differ (refuse a base, build the offline base, prepare for training,
export, read an export's record, write its model card). The flywheel and the CLI call `family(cfg)` and never branch
on `model.kind` themselves; adding a family adds an entry here (and its preset and tests).

- salm (Canary-Qwen, `nvidia/canary-qwen-2.5b`): NeMo speechlm2 SALM; LoRA + encoder + projection trained
  (`MedasrSALM`, models/salm_train.py); exported as RUN/canary-qwen-medical-lora/ (adapter + merged/).
- asr (Parakeet-TDT, `nvidia/parakeet-tdt-0.6b-v2`): a NeMo ASRModel, stock full SFT; exported as
  RUN/adapted_model.nemo.
Decoding and reloading go through medasr.models.load.load_model, which tells the family from the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medasr.config import Config
from medasr.models.asr import check_base
from medasr.models.load import EXPORT_NAME, NEMO_EXPORT, read_meta, read_nemo_meta
from medasr.models.mini import install_mini
from medasr.models.tiny import build_tiny_base
from medasr.models.tiny_asr import build_tiny_parakeet
from medasr.train.export import export_adapter, export_nemo, write_model_card, write_nemo_model_card
from medasr.train.trainer import prepare_asr, prepare_salm


@dataclass(frozen=True)
class Family:
    kind: str  # the preset's model.kind
    export_name: str  # RUN/<export_name>: what `medasr export` writes and `transcribe --model` loads
    check_base: Callable[[str], None]  # refuse a base this family must not fine-tune, before any data or model time
    build_tiny: Callable[..., Path]  # (cfg, out_root, seed) → the offline random-init base (`model.base: tiny`)
    prepare: Callable  # (cfg, data_dir, base, work_dir) → (model ready to train, Trainer.fit kwargs, trainable record)
    export: Callable[..., Path]  # (cfg, run_dir, base, ckpt) → the export, with its meta file
    read_export_meta: Callable[[Path], dict]
    write_model_card: Callable  # (export, meta, build_report, before, after, compare, date)

    def export_path(self, run_dir: Path) -> Path:
        return run_dir / self.export_name


FAMILIES = {
    "salm": Family("salm", EXPORT_NAME, lambda base: None, build_tiny_base, prepare_salm, export_adapter, read_meta,
                   write_model_card),
    "asr": Family("asr", NEMO_EXPORT, check_base, build_tiny_parakeet, prepare_asr, export_nemo, read_nemo_meta,
                  write_nemo_model_card),
}


def family(cfg: Config) -> Family:
    return FAMILIES[cfg.model.kind]  # model.kind is checked at config load


def resolve_base(cfg: Config, run_dir: Path) -> str:
    """The base model to fine-tune: the Hub id / local path from the preset, the shipped mini base installed into the
    run (SALM), or the family's tiny model built into the run."""
    if cfg.model.base == "mini" and cfg.model.kind == "salm":
        return str(install_mini(run_dir / "model"))
    if cfg.model.base != "tiny":
        return cfg.model.base  # a refused base is stopped by Family.check_base
    return str(family(cfg).build_tiny(cfg, run_dir / "model", seed=cfg.train.seed))
