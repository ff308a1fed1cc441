"""The NeMo ASR family (model.kind "asr"): Parakeet-TDT (`nvidia/parakeet-tdt-0.6b-v2`) and other NeMo ASRModels, a
stock full fine-tune — what NeMo's examples/asr/speech_to_text_finetune.py does with
`+init_from_pretrained_model=nvidia/parakeet-tdt-0.6b-v2`, driven by our trainer so checkpointing, resume, W&B, S3 and
the supervisor are the same as for SALM. Read top to bottom in the order of the workflow (medasr/families/base.py).

Export: RUN/adapted_model.nemo (the whole fine-tuned model, tokenizer inside; `ASRModel.restore_from`) with
adapted_model.json (base, step, preset) and adapted_model.md (model card) beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from medasr import __version__
from medasr.config import Config
from medasr.data.manifest import read_manifest
from medasr.families.base import ChunkPolicy, Loaded, ModelFamily
from medasr.families.card import results_section, selection_lines, steps_line
from medasr.models import asr
from medasr.models.load import AdapterError, export_base_ref, load_training_checkpoint, meta_path, read_meta_file
from medasr.models.tiny_asr import build_tiny_parakeet

EXPORT_NAME = "adapted_model.nemo"
FORMAT = "medasr-nemo-sft/1"


class NemoASRFamily(ModelFamily):
    kind = "asr"
    export_name = EXPORT_NAME
    # Parakeet-TDT handles long audio natively: chunked only beyond 20 minutes
    chunk_policy = ChunkPolicy(1200.0, 600.0, 10.0)
    optim_schema = "modelpt"

    # --- base --------------------------------------------------------------------------------------------------
    def check_base(self, base: str | Path) -> None:
        asr.check_base(base)

    def build_tiny(self, cfg: Config, out_root: Path, seed: int) -> Path:
        return build_tiny_parakeet(cfg, out_root, seed=seed)

    def load_base(self, base: str | Path):
        return asr.load_base(base)

    def claims(self, path: Path, kind: Optional[str]) -> int:
        """A .nemo file; a file argument given as asr; or, as a fallback, a Hub id (NeMo ASR's catalogue)."""
        if path.suffix == ".nemo":
            return 3
        if kind == "asr" and not path.is_dir():
            return 2
        return 1 if not path.exists() and kind is None else 0

    def load(self, spec: str | Path) -> Loaded:
        return Loaded(asr.load_base(spec), self.kind, str(spec))  # an export is a .nemo like any base

    # --- preflight ---------------------------------------------------------------------------------------------
    def check_model(self, cfg: Config, run_dir: Path, base: str | Path) -> dict:
        """ASRModel.restore_from / from_pretrained load strictly (a missing, extra or reshaped key raises there); every
        parameter trains; the first training row through the model's tokenizer."""
        model = asr.load_base(base)
        n = len(model.state_dict())
        cov = {"checkpoint_tensors": n, "model_tensors": n, "unknown": [], "shape_mismatch": [], "missing": [],
               "note": "NeMo restore_from loads strictly"}
        row = read_manifest(run_dir / "data" / "train.json")[0]
        return {"coverage": cov, "groups": asr.param_table(model),
                "example": {"text": row["text"], "tokens": model.tokenizer.text_to_tokens(row["text"])}}

    # --- training ----------------------------------------------------------------------------------------------
    def prepare(self, cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
        """Full SFT through NeMo's own training step (EncDecRNNTModel.training_step)."""
        model = asr.load_base(base)
        table = asr.prepare_for_training(model, cfg)
        self.apply_recipe(model, cfg.train)
        record = {"kind": self.kind, "groups": table, "tokenizer_dir": cfg.model.tokenizer_dir,
                  "loss": type(model.loss._loss).__name__ if hasattr(model, "loss") else None}
        asr.setup_data(model, cfg, data_dir)
        return model, {}, record

    # --- decoding ----------------------------------------------------------------------------------------------
    def decoder(self, loaded: Loaded, batch_size: int, max_new_tokens: int, prompt: Optional[str] = None,
                static_cache: bool = False):
        return lambda audios, contexts: asr.transcribe_arrays(loaded.model, audios, batch_size)

    # --- checkpoints and export --------------------------------------------------------------------------------
    def load_checkpoint(self, cfg: Config, base: str | Path, ckpt: Path):
        model = asr.load_base(base)
        asr.switch_tokenizer(model, cfg.model.tokenizer_dir)
        load_training_checkpoint(model, ckpt)
        return model.to("cuda" if torch.cuda.is_available() else "cpu")

    def export(self, cfg: Config, run_dir: Path, base: str | Path, ckpt: Path) -> Path:
        return export_nemo(cfg, run_dir, base, ckpt)

    def read_export_meta(self, export: Path) -> dict:
        return read_nemo_meta(export)

    def meta_file(self, export: Path) -> Path:
        return meta_path(export)

    def write_model_card(self, export: Path, meta: dict, build_report: dict, before: dict, after: dict,
                         compare: dict, date: str) -> Path:
        return write_nemo_model_card(export, meta, build_report, before, after, compare, date)


def export_nemo(cfg: Config, run_dir: Path, base: str | Path, ckpt: Path | None = None) -> Path:
    """The base (with the preset's tokenizer switch, if any) + the trained weights → RUN/adapted_model.nemo."""
    out = run_dir / EXPORT_NAME
    ckpt = ckpt or run_dir / "train" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise AdapterError(f"no checkpoint at {ckpt}: run `medasr train` first")
    model = asr.load_base(base)
    asr.switch_tokenizer(model, cfg.model.tokenizer_dir)
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    state = load_training_checkpoint(model, ckpt)
    if all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k in before):
        raise AdapterError(f"{ckpt}: every weight equals the base model's: training changed nothing")
    partial = out.with_name(out.name + ".partial")
    model.save_to(str(partial))
    partial.replace(out)
    meta = {
        "format": FORMAT,
        "medasr_version": __version__,
        "base_model": export_base_ref(base, run_dir),
        "model_class": type(model).__name__,
        "tokenizer": cfg.model.tokenizer_dir or "the base model's own",
        "vocab_size": int(model.tokenizer.vocab_size),
        "global_step": int(state.get("global_step", -1)),
        "checkpoint": ckpt.name,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "preset": cfg.name,
    }
    meta_path(out).write_text(json.dumps(meta, indent=2))
    return out


def read_nemo_meta(nemo_path: Path) -> dict:
    p = meta_path(nemo_path)
    missing = f"{nemo_path}: no medasr export here (need the .nemo and {p.name}); run `medasr export`"
    if not Path(nemo_path).exists():
        raise AdapterError(missing)
    return read_meta_file(p, FORMAT, missing)


def write_nemo_model_card(nemo_path: Path, meta: dict, build_report: dict, before: dict, after: dict, compare: dict,
                          date: str) -> Path:
    tiny = meta.get("preset", "").startswith("tiny")
    text = f"""# {nemo_path.name}

A medasr full fine-tune (stock NeMo SFT recipe) of a NeMo ASR model ({meta['model_class']}).

- Base model: `{meta['base_model']}`
- Preset: `{meta['preset']}`{' — random-init tiny model: this export proves the pipeline, not accuracy' if tiny else ''}
- Trained steps: {steps_line(meta)} · parameters: {meta['num_parameters']:,} · tokenizer: {meta['tokenizer']} (vocab {meta['vocab_size']})
{selection_lines(meta)}- Exported: {date} by medasr {meta['medasr_version']}

""" + results_section(build_report, before, after, compare) + f"""
## Use
```bash
medasr transcribe --model {nemo_path.name} recording.wav --out transcripts/
```
```python
from nemo.collections.asr.models import ASRModel
model = ASRModel.restore_from("{nemo_path.name}")
```
Serving with NVIDIA Riva: docs/DEPLOY.md.
"""
    card = nemo_path.with_suffix(".md")
    card.write_text(text)
    return card
