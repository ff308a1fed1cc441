"""Step 5 (README's workflow) — export the fine-tuned model.

salm: `canary-qwen-medical-lora/`, what fine-tuning changed and nothing the base already has (below).
asr:  `adapted_model.nemo` (the whole fine-tuned Parakeet-TDT, tokenizer inside; `ASRModel.restore_from`) with
      `adapted_model.json` (base, step, preset) and `adapted_model.md` (model card) beside it.

SALM export layout:
  adapter.safetensors   LoRA matrices + trained perception (encoder, projection) weights and buffers, SALM key names
  lora/                 the same LoRA in Hugging Face PEFT format (adapter_config.json + adapter_model.safetensors)
  merged/               the whole fine-tuned model with the LoRA merged into the LLM, in the release's layout and made
                        self-contained (tokenizer + llm_backbone/config.json inside): `SALM.from_pretrained(dir)` with
                        NeMo alone, no medasr and no Hub (what NeMo's and vLLM's SALM serving paths read)
  medasr_adapter.json   base model (Hub id[@revision] or path relative to this folder), prompt, LoRA config, step, keys
  README.md             model card (written after the fine-tuned model has been evaluated)
Reload = `SALM.from_pretrained(base)` + these tensors (`load_adapted`); every key must land with the right shape.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from medasr import __version__
from medasr.config import Config
from medasr.models import asr
from medasr.models.load import (EXPORT_NAME, FORMAT, MERGED, NEMO_EXPORT, NEMO_FORMAT, PROMPTS_FILE, PROMPTS_FORMAT,
                                AdapterError, apply_freeze, load_training_checkpoint, meta_path)
from medasr.models.salm import load_base
from medasr.prompts import AUDIO_TAG
from medasr.models.speed import state_key


def export_keys(model) -> list[str]:
    """Trainable parameters plus the perception module's buffers (BatchNorm running stats change while training)."""
    keys = [state_key(n) for n, p in model.named_parameters() if p.requires_grad]
    keys += [n for n, _ in model.named_buffers() if n.startswith("perception.") and not n.startswith("perception.preprocessor.")]
    persistent = set(model.state_dict())  # non-persistent buffers (e.g. positional tables) are rebuilt, not saved
    return sorted(k for k in set(keys) if k in persistent)


def _base_ref(base: str | Path, out_dir: Path) -> str:
    p = Path(base)
    return os.path.relpath(p.resolve(), out_dir.resolve()) if p.exists() else str(base)


def check_trained(tensors: dict, base: dict, ckpt: Path) -> None:
    """Refuse to export an adapter that training did not change: PEFT initialises LoRA B to zeros, so an all-zero B
    means an untrained LoRA, and LoRA weights equal to the base's mean the checkpoint holds nothing new."""
    lora = sorted(k for k in tensors if ".lora_" in k)
    if not lora:
        raise AdapterError(f"{ckpt}: no LoRA tensors to export")
    zero_b = [k for k in lora if ".lora_B" in k and not tensors[k].abs().max() > 0]
    if zero_b:
        raise AdapterError(f"{ckpt}: {len(zero_b)} LoRA B matrices are all zeros (e.g. {zero_b[0]}): the adapter is "
                           "untrained (did training run? is the LoRA frozen by model.freeze_params?)")
    if all(k in base and torch.equal(tensors[k], base[k]) for k in lora):
        raise AdapterError(f"{ckpt}: every LoRA tensor equals the base model's: training changed nothing")


def export_adapter(cfg: Config, run_dir: Path, base: str | Path, ckpt: Path | None = None) -> Path:
    out = run_dir / EXPORT_NAME
    ckpt = ckpt or run_dir / "train" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise AdapterError(f"no checkpoint at {ckpt}: run `medasr train` first")
    model = load_base(base)
    apply_freeze(model, list(cfg.model.freeze_params))
    keys = export_keys(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k in set(keys)}
    state = load_training_checkpoint(model, ckpt)
    sd = model.state_dict()
    tensors = {k: sd[k].detach().contiguous().cpu() for k in keys}
    check_trained(tensors, before, ckpt)
    tmp = run_dir / (EXPORT_NAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter.safetensors"))
    # PEFT format too, for tools that speak it. target_modules must be a plain list (OmegaConf ListConfig breaks it).
    lora_cfg = model.llm.peft_config["default"]
    lora_cfg.target_modules = sorted(lora_cfg.target_modules)
    model.llm.save_pretrained(str(tmp / "lora"))
    meta = {
        "format": FORMAT,
        "medasr_version": __version__,
        "base_model": _base_ref(base, out),
        "prompt": cfg.model.prompt,
        "prompts_by_source": dict(cfg.model.prompts_by_source),
        "prompt_format": model.cfg.prompt_format,
        "lora": OmegaConf.to_container(model.cfg.lora) if "lora" in model.cfg else None,
        "freeze_params": list(cfg.model.freeze_params),
        "global_step": int(state.get("global_step", -1)),
        "checkpoint": ckpt.name,
        "num_tensors": len(tensors),
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "preset": cfg.name,
    }
    meta["audio_tag"] = AUDIO_TAG
    meta["merged"] = write_merged(model, tmp / MERGED, torch.bfloat16 if cfg.model.precision.startswith("bf16") else None)
    # merged/ is what NeMo and vLLM load: it carries the prompts too, so `transcribe --model merged/` decodes each row
    # under the prompt it was fine-tuned with (medasr.models.load.trained_prompts)
    (tmp / MERGED / PROMPTS_FILE).write_text(json.dumps(
        {"format": PROMPTS_FORMAT, "prompt": meta["prompt"], "prompts_by_source": meta["prompts_by_source"],
         "audio_tag": AUDIO_TAG, "prompt_format": meta["prompt_format"], "preset": cfg.name,
         "rule": "a row's own context, else prompts_by_source for the longest key its source starts with, else prompt"},
        indent=2))
    (tmp / "medasr_adapter.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def write_merged(model, out: Path, dtype: torch.dtype | None = None) -> dict:
    """The fine-tuned SALM as one checkpoint NeMo loads by itself: LoRA merged into q/v (PEFT merge_and_unload, whose
    result replaces model.llm), the `lora` block dropped from the config (else from_pretrained would install a fresh,
    zero LoRA beside the merged weights), and the tokenizer and LLM config saved inside, which
    `SALM.from_pretrained` picks up in place of the Hub's. Mutates `model` (call it last)."""
    from omegaconf import DictConfig

    model.llm = model.llm.merge_and_unload()
    conf = OmegaConf.to_container(model.cfg)
    conf.pop("lora", None)
    conf["prevent_freeze_params"] = [p for p in conf.get("prevent_freeze_params", []) if "lora_" not in p]
    model.cfg = DictConfig(conf)
    if dtype is not None:
        model = model.to(dtype)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    model.tokenizer.tokenizer.save_pretrained(out)
    model.llm.config.save_pretrained(out / "llm_backbone")
    return {"path": MERGED, "dtype": str(next(model.perception.parameters()).dtype).replace("torch.", ""),
            "lora_merged": True}


def export_nemo(cfg: Config, run_dir: Path, base: str | Path, ckpt: Path | None = None) -> Path:
    """The base (with the preset's tokenizer switch, if any) + the trained weights → RUN/adapted_model.nemo."""
    out = run_dir / NEMO_EXPORT
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
        "format": NEMO_FORMAT,
        "medasr_version": __version__,
        "base_model": _base_ref(base, run_dir),
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


def _results_section(build_report: dict, before: dict, after: dict, compare: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("WER (corpus)", before["wer"], after["wer"]),
        ("CER", before["cer"], after["cer"]),
        ("KER, all term rows", before["ker"], after["ker"]),
        ("KER, terms seen in training", before["ker_seen"], after["ker_seen"]),
        ("KER, held-out terms", before["ker_unseen"], after["ker_unseen"]),
    ]
    for name, label in (("seen", "training speaker"), ("new", "new speaker")):
        b, a = (before.get("by_speaker") or {}).get(name), (after.get("by_speaker") or {}).get(name)
        if b and a and b["n_rows"]:
            rows += [(f"WER, {label} ({a['n_rows']} rows)", b["wer"], a["wer"]),
                     (f"KER, seen terms, {label}", b["ker_seen"], a["ker_seen"]),
                     (f"KER, held-out terms, {label}", b["ker_unseen"], a["ker_unseen"])]
    for name, a in (after.get("by_design") or {}).items():
        if b := (before.get("by_design") or {}).get(name):
            rows.append((f"KER, {name} ({a['n_rows']} rows, {a['ker_terms']} terms)", b["ker"], a["ker"]))
    for name, a in (after.get("by_source") or {}).items():
        if b := (before.get("by_source") or {}).get(name):
            rows.append((f"WER, source {name} ({a['n_rows']} rows)", b["wer"], a["wer"]))
    made = (after.get("inputs") or {}).get("decode") or {}
    provenance = (f"\nScored on manifest sha256 `{made['manifest_sha256'][:16]}…`, model sha256 "
                  f"`{made['model_sha256'][:16]}…` (metrics.json `inputs`).\n" if made else "")
    return f"""## Training data
Source `{build_report.get('source')}`: {build_report['splits']['train']['rows']} training rows
({build_report['splits']['train']['terms']} terms), {build_report['splits']['val']['rows']} validation rows.
The test set holds terms never seen in training as well as seen terms; where rows say whether their speaker was in
the training data (`speaker_seen`; synthetic rows: half a training voice, half a voice never used in training),
the speaker rows below separate a new voice from a new term.

## Results on the test set ({after['n_rows']} rows, normaliser `{after['normalizer']}`)

| metric | base | fine-tuned |
|---|---|---|
""" + "\n".join(f"| {n} | {pct(b)} | {pct(a)} |" for n, b, a in rows) + f"""

Decision: **{compare['decision']}** — {compare['reason']}
""" + provenance


def _steps(meta: dict) -> str:
    trained = (meta.get("selection") or {}).get("trained_steps", meta["global_step"])
    return f"{trained}" + (f" (exported weights: step {meta['global_step']})" if trained != meta["global_step"] else "")


def _selection_lines(meta: dict) -> str:
    sel, chk = meta.get("selection"), meta.get("reload_check")
    if not sel:
        return ""
    cands = ", ".join(f"{c['name']} (`{c['checkpoint']}`) {100 * c['val_wer']:.2f}%" for c in sel["candidates"])
    text = f"- Checkpoint: `{meta['checkpoint']}`, chosen by {sel['metric']}: {cands}\n"
    if chk:
        text += (f"- Reload check: the exported model reloaded from disk scores {100 * chk['reloaded_wer']:.2f}% on those "
                 f"rows vs {100 * chk['in_memory_wer']:.2f}% in memory (tolerance {100 * chk['tolerance']:.1f} point)\n")
    return text


def _by_source(meta: dict) -> str:
    by = meta.get("prompts_by_source") or {}
    if not by:
        return ""
    return "; per data source (a row's `source` starting with the key), the same in training and evaluation:\n" + \
        "\n".join(f"  - `{k}`: `{v}`" for k, v in sorted(by.items()))


def write_model_card(out: Path, meta: dict, build_report: dict, before: dict, after: dict, compare: dict, date: str) -> None:
    tiny = meta.get("preset", "").startswith("tiny")
    note = (" — random-init tiny model: this adapter proves the pipeline, not accuracy" if tiny else
            " — the mini base (medasr/resources/mini, pretrained on generic espeak-ng and Kokoro speech): a demo of real "
            "adaptation on synthetic speech, not a model for real recordings" if meta.get("preset") == "mini" else "")
    text = f"""# {EXPORT_NAME}

A medasr LoRA adapter for a NeMo speechlm2 SALM (Canary-Qwen layout): LoRA on the LLM's attention projections plus the
fine-tuned speech encoder and projection. The LLM itself is frozen and **not** included.

- Base model: `{meta['base_model']}`
- Preset: `{meta['preset']}`{note}
- Trained steps: {_steps(meta)} · tensors: {meta['num_tensors']} · parameters: {meta['num_parameters']:,}
- LoRA: `{json.dumps(meta['lora'])}`
- Prompt (train and inference): `{meta['prompt']}` (prompt format `{meta['prompt_format']}`){_by_source(meta)}
{_selection_lines(meta)}- Exported: {date} by medasr {meta['medasr_version']}

""" + _results_section(build_report, before, after, compare) + f"""
## Use
```bash
medasr transcribe --model {EXPORT_NAME}/ recording.wav --out transcripts/
medasr transcribe --model {EXPORT_NAME}/merged/ recording.wav   # the merged weights: the same prompts
```
`merged/{PROMPTS_FILE}` records the prompts above for loaders that read `merged/` alone (NeMo, vLLM): serve each
source under its own prompt. Decoding under another prompt is refused unless `--allow-prompt-change`.
```python
from medasr.models.load import load_adapted
model, meta = load_adapted("{EXPORT_NAME}")
```
"""
    (out / "README.md").write_text(text)


def write_nemo_model_card(nemo_path: Path, meta: dict, build_report: dict, before: dict, after: dict, compare: dict,
                          date: str) -> Path:
    tiny = meta.get("preset", "").startswith("tiny")
    text = f"""# {nemo_path.name}

A medasr full fine-tune (stock NeMo SFT recipe) of a NeMo ASR model ({meta['model_class']}).

- Base model: `{meta['base_model']}`
- Preset: `{meta['preset']}`{' — random-init tiny model: this export proves the pipeline, not accuracy' if tiny else ''}
- Trained steps: {_steps(meta)} · parameters: {meta['num_parameters']:,} · tokenizer: {meta['tokenizer']} (vocab {meta['vocab_size']})
{_selection_lines(meta)}- Exported: {date} by medasr {meta['medasr_version']}

""" + _results_section(build_report, before, after, compare) + f"""
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
