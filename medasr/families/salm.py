"""The SALM family (model.kind "salm"): Canary-Qwen (`nvidia/canary-qwen-2.5b`, NeMo speechlm2 SALM: FastConformer
encoder + projection + Qwen3-1.7B). Fine-tuned with the LLM frozen and the encoder, projection and a LoRA on the LLM
trained — our equivalent of NeMo's examples/speechlm2/salm_train.py without its launcher. Read top to bottom in the
order of the workflow (medasr/families/base.py): base → preflight → training → decoding → checkpoint → export.

Export layout, RUN/canary-qwen-medical-lora/ (what fine-tuning changed and nothing the base already has):
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
import shutil
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from medasr import __version__
from medasr.config import Config, ModelConfig
from medasr.data.manifest import prompted_manifests, read_manifest
from medasr.families.base import ChunkPolicy, Loaded, ModelFamily, ModelPreflightError, is_rank_zero
from medasr.families.card import by_source_lines, results_section, selection_lines, steps_line
from medasr.models.checkpoint import checkpoint_shapes, coverage, size_mismatches, tied_groups
from medasr.models.load import (PROMPTS_FILE, PROMPTS_FORMAT, AdapterError, FreezePatternError, apply_freeze,
                                export_base_ref, load_training_checkpoint, meta_path, read_meta_file,
                                trained_prompts)
from medasr.models.salm import hub_ref, load_base, prompt_ids, transcribe_arrays
from medasr.models.salm_train import MedasrSALM
from medasr.models.speed import apply_speed, state_key
from medasr.models.tiny import build_tiny_base
from medasr.prompts import AUDIO_TAG, with_contexts

EXPORT_NAME = "canary-qwen-medical-lora"
MERGED = "merged"
FORMAT = "medasr-salm-adapter/1"
META_FILE = "medasr_adapter.json"


def default_prompt() -> str:
    return ModelConfig().prompt


class SALMFamily(ModelFamily):
    kind = "salm"
    export_name = EXPORT_NAME
    # Canary-Qwen was trained on <= 40 s and degrades beyond it: 30 s chunks overlapping by 10 s (the setting of the
    # public PriMock57 leaderboard)
    chunk_policy = ChunkPolicy(40.0, 30.0, 10.0)
    optim_schema = "speechlm2"
    prompted = True

    # --- base --------------------------------------------------------------------------------------------------
    def build_tiny(self, cfg: Config, out_root: Path, seed: int) -> Path:
        return build_tiny_base(cfg, out_root, seed=seed)

    def load_base(self, base: str | Path):
        return load_base(base)

    def claims(self, path: Path, kind: Optional[str]) -> int:
        """A medasr adapter export; a folder with a config.json (the release's layout; merged/ too) or a Hub id given
        as salm or naming canary-qwen."""
        if path.suffix == ".nemo":
            return 0
        if (path / META_FILE).exists():
            return 3
        sure = (path / "config.json").exists() or kind == "salm" or (kind is None and "canary-qwen" in str(path).lower())
        return 2 if sure else 0

    def load(self, spec: str | Path) -> Loaded:
        p = Path(spec)
        if (p / META_FILE).exists():
            model, meta = load_adapted(p)
            return Loaded(model, self.kind, str(spec), meta["prompt"], meta.get("prompts_by_source") or {})
        trained = trained_prompts(p) or {}  # merged/ carries the prompts it was fine-tuned with
        return Loaded(load_base(spec), self.kind, str(spec), trained.get("prompt") or default_prompt(),
                      trained.get("prompts_by_source") or {})

    # --- preflight ---------------------------------------------------------------------------------------------
    def check_model(self, cfg: Config, run_dir: Path, base: str | Path) -> dict:
        """1. every tensor of the base checkpoint lands in the model with its shape and every model tensor comes from
        a checkpoint (`SALM.from_pretrained` loads with strict=False: a renamed key would be dropped silently, a
        missing one left random); 2. the freeze pattern (LLM frozen; encoder, projection, LoRA trained); 3. one
        training example rendered through SALM's own Lhotse pipeline, its prompt tokens equal to what decoding sends."""
        ckpt = checkpoint_file(base)
        try:
            model = load_base(base)
        except RuntimeError as e:
            if mism := size_mismatches(e):
                raise ModelPreflightError(f"checkpoint {ckpt} does not fit the model: {len(mism)} shape mismatch(es): "
                                          + "; ".join(f"{k} {a} vs model {b}" for k, a, b in mism[:10])) from e
            raise
        sd = model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        # With pretrained_weights the LLM comes from its own Hub checkpoint, so a SALM file may omit it.
        llm_elsewhere = ("llm.", "embed_tokens.") if model.cfg.get("pretrained_weights", False) else ()
        cov = coverage(shapes, checkpoint_shapes(ckpt), llm_elsewhere, tied_groups(sd)) | {"checkpoint": str(ckpt)}
        if cov["unknown"] or cov["shape_mismatch"] or cov["missing"]:
            raise ModelPreflightError(
                f"checkpoint {ckpt} does not fit the model (from_pretrained would silently drop or leave these): "
                f"{len(cov['unknown'])} unknown tensor(s) {cov['unknown'][:10]}, {len(cov['shape_mismatch'])} shape "
                f"mismatch(es) {cov['shape_mismatch'][:10]}, {len(cov['missing'])} model tensor(s) not in the "
                f"checkpoint {cov['missing'][:10]}. Use the base this preset was made for, or fix model.base.")
        try:
            groups = apply_freeze(model, list(cfg.model.freeze_params))
        except FreezePatternError as e:
            raise ModelPreflightError(str(e)) from e
        prompt = render_training_example(model, cfg, run_dir)
        if not prompt["prompt_matches_inference"]:
            raise ModelPreflightError(
                "the training prompt does not render to the tokens inference sends:\n  train: "
                f"{prompt['rendered_training_example']!r}\n  infer: {prompt['rendered_inference_prompt']!r}")
        if not prompt["audio_placeholder_in_example"]:
            raise ModelPreflightError("the rendered training example has no audio placeholder token")
        return {"coverage": cov, "groups": groups, "prompt": prompt}

    # --- training ----------------------------------------------------------------------------------------------
    def prepare(self, cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
        from nemo.collections.speechlm2 import DataModule, SALMDataset

        model = load_base(base, cls=MedasrSALM)  # NeMo's SALM with the training step that runs written out
        self.apply_recipe(model, cfg.train)
        table = apply_freeze(model, list(cfg.model.freeze_params))
        speed = apply_speed(model, cfg.train)  # after freezing: the wrappers rename parameters, not state-dict keys
        model.strict_loading = False  # slim checkpoints: frozen weights come from the base, checked on load

        # rank zero writes them before Lightning's launcher starts the other ranks, which read them
        prompted = prompted_manifests(cfg, data_dir, work_dir / "data") if is_rank_zero() else work_dir / "data"
        datamodule = DataModule(OmegaConf.create(data_config(model, cfg, prompted)), tokenizer=model.tokenizer,
                                dataset=SALMDataset(model.tokenizer))
        record = {"kind": self.kind, "groups": table, "freeze_params": list(cfg.model.freeze_params), "speed": speed,
                  "lora": OmegaConf.to_container(model.cfg.lora) if "lora" in model.cfg else None}
        return model, {"datamodule": datamodule}, record

    # --- decoding ----------------------------------------------------------------------------------------------
    def prompt_rows(self, rows: list[dict], prompt: Optional[str], by_source: Optional[dict]) -> list[dict]:
        """Each row's prompt in `context` (medasr.prompts: the row's own, else by source, else the default)."""
        return with_contexts(rows, prompt or default_prompt(), by_source or {})

    def decoder(self, loaded: Loaded, batch_size: int, max_new_tokens: int, prompt: Optional[str] = None,
                static_cache: bool = False):
        """`static_cache` (eval.static_cache): a fixed-size KV cache, which lets transformers compile the decode step
        on a GPU (docs/PERFORMANCE.md); same tokens."""
        p = prompt or loaded.prompt or default_prompt()
        extra = {"cache_implementation": "static"} if static_cache else {}
        return lambda audios, contexts: transcribe_arrays(loaded.model, audios, p, batch_size, max_new_tokens,
                                                          contexts=contexts, **extra)

    # --- checkpoints and export --------------------------------------------------------------------------------
    def load_checkpoint(self, cfg: Config, base: str | Path, ckpt: Path):
        model = load_base(base)
        apply_freeze(model, list(cfg.model.freeze_params))
        load_training_checkpoint(model, ckpt)
        return model.to("cuda" if torch.cuda.is_available() else "cpu")

    def export(self, cfg: Config, run_dir: Path, base: str | Path, ckpt: Path) -> Path:
        return export_adapter(cfg, run_dir, base, ckpt)

    def read_export_meta(self, export: Path) -> dict:
        return read_meta(export)

    def meta_file(self, export: Path) -> Path:
        return meta_path(export)

    def write_model_card(self, export: Path, meta: dict, build_report: dict, before: dict, after: dict,
                         compare: dict, date: str) -> Path:
        return write_model_card(export, meta, build_report, before, after, compare, date)


# --- preflight helpers -------------------------------------------------------------------------------------------
def checkpoint_file(base: str | Path) -> Path:
    local = Path(base)
    if local.is_dir():
        return local / "model.safetensors"
    from huggingface_hub import hf_hub_download

    repo, rev = hub_ref(base)
    return Path(hf_hub_download(repo, "model.safetensors", revision=rev))  # cached by from_pretrained already


def render_training_example(model, cfg: Config, run_dir: Path) -> dict:
    """The first training row as the model sees it, through SALM's own Lhotse pipeline, and the inference prompt."""
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config
    from nemo.collections.speechlm2 import SALMDataset

    data_dir = prompted_manifests(cfg, run_dir / "data", run_dir / "train" / "data")
    context = read_manifest(data_dir / "train.json")[0]["context"]
    train_cfg = OmegaConf.create(data_config(model, cfg, data_dir)).train_ds
    train_cfg.shuffle, train_cfg.batch_size, train_cfg.num_workers = False, 1, 0
    train_cfg.use_bucketing, train_cfg.batch_tokens = False, None  # one example is all this check needs
    dl = get_lhotse_dataloader_from_config(config=train_cfg, global_rank=0, world_size=1,
                                           dataset=SALMDataset(model.tokenizer), tokenizer=model.tokenizer)
    batch = next(iter(dl))
    ids = batch["input_ids"][0].tolist()
    hf = model.tokenizer.tokenizer  # raw decode keeps the chat and audio tokens visible
    infer_ids = prompt_ids(model, context).tolist()  # what decoding sends (medasr.models.salm.transcribe_arrays)
    return {"context": context, "rendered_training_example": hf.decode(ids, skip_special_tokens=False),
            "rendered_inference_prompt": hf.decode(infer_ids, skip_special_tokens=False),
            "training_prompt_ids": ids[: len(infer_ids)], "inference_prompt_ids": infer_ids,
            "prompt_matches_inference": ids[: len(infer_ids)] == infer_ids,
            "audio_placeholder_in_example": model.tokenizer.text_to_ids(AUDIO_TAG)[0] in ids}


# --- training helpers --------------------------------------------------------------------------------------------
def data_config(model, cfg: Config, data_dir: Path) -> dict:
    """SALM train/val loaders over `data_dir`'s manifests, whose rows carry their prompt in `context`
    (medasr.data.manifest.prompted_manifests): NeMo prepends it as the user text turn before the audio."""
    ted = model.token_equivalent_duration

    def input_cfg(manifest: Path) -> list[dict]:
        return [{"type": "lhotse_as_conversation", "manifest_filepath": str(manifest.resolve()),
                 "audio_locator_tag": AUDIO_TAG}]

    common = {"sample_rate": model.sampling_rate, "prompt_format": model.cfg.prompt_format, "token_equivalent_duration": ted}
    train = {
        **common,
        "input_cfg": input_cfg(data_dir / "train.json"),
        "seed": cfg.train.seed,
        "shuffle": True,
        "shard_seed": "randomized",
        "num_workers": cfg.train.num_workers,
        "batch_size": cfg.train.batch_size,
    }
    if cfg.train.bucketing or cfg.train.batch_tokens > 0:
        # Conversations have no single duration: Lhotse's multimodal sampling measures each row in tokens (audio at
        # token_equivalent_duration per token, plus prompt and transcript tokens), for batches and for buckets.
        train |= {"use_multimodal_sampling": True, "measure_total_length": True}
    if cfg.train.batch_tokens > 0:
        train |= {"batch_size": None, "batch_tokens": cfg.train.batch_tokens}
    if cfg.train.bucketing:  # bucket bins estimated from a first buffer of rows
        train |= {"use_bucketing": True, "num_buckets": cfg.train.num_buckets, "concurrent_bucketing": False}
    return {
        "train_ds": train,
        "validation_ds": {
            **common,
            "datasets": {"val": {"input_cfg": input_cfg(data_dir / "val.json")}},
            "seed": cfg.train.seed,
            "shard_seed": "randomized",
            "num_workers": cfg.train.num_workers,
            "batch_size": cfg.train.batch_size,
        },
    }


# --- export and reload -------------------------------------------------------------------------------------------
def export_keys(model) -> list[str]:
    """Trainable parameters plus the perception module's buffers (BatchNorm running stats change while training)."""
    keys = [state_key(n) for n, p in model.named_parameters() if p.requires_grad]
    keys += [n for n, _ in model.named_buffers() if n.startswith("perception.") and not n.startswith("perception.preprocessor.")]
    persistent = set(model.state_dict())  # non-persistent buffers (e.g. positional tables) are rebuilt, not saved
    return sorted(k for k in set(keys) if k in persistent)


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
        "base_model": export_base_ref(base, out),
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
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
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


def read_meta(adapter_dir: Path) -> dict:
    return read_meta_file(meta_path(adapter_dir), FORMAT,
                          f"{adapter_dir}: not a medasr adapter (no {META_FILE}); export one with `medasr export`")


def load_adapted(adapter_dir: str | Path, map_location: str = "cpu"):
    """Base + adapter. Refuses an adapter whose tensors do not all land in the model with the right shape."""
    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    ref = meta["base_model"]
    local = (adapter_dir / ref).resolve()
    model = load_base(str(local) if local.exists() else ref, map_location=map_location)
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


def write_model_card(out: Path, meta: dict, build_report: dict, before: dict, after: dict, compare: dict,
                     date: str) -> Path:
    tiny = meta.get("preset", "").startswith("tiny")
    note = " — random-init tiny model: this adapter proves the pipeline, not accuracy" if tiny else ""
    text = f"""# {EXPORT_NAME}

A medasr LoRA adapter for a NeMo speechlm2 SALM (Canary-Qwen layout): LoRA on the LLM's attention projections plus the
fine-tuned speech encoder and projection. The LLM itself is frozen and **not** included.

- Base model: `{meta['base_model']}`
- Preset: `{meta['preset']}`{note}
- Trained steps: {steps_line(meta)} · tensors: {meta['num_tensors']} · parameters: {meta['num_parameters']:,}
- LoRA: `{json.dumps(meta['lora'])}`
- Prompt (train and inference): `{meta['prompt']}` (prompt format `{meta['prompt_format']}`){by_source_lines(meta)}
{selection_lines(meta)}- Exported: {date} by medasr {meta['medasr_version']}

""" + results_section(build_report, before, after, compare) + f"""
## Use
```bash
medasr transcribe --model {EXPORT_NAME}/ recording.wav --out transcripts/
medasr transcribe --model {EXPORT_NAME}/merged/ recording.wav   # the merged weights: the same prompts
```
`merged/{PROMPTS_FILE}` records the prompts above for loaders that read `merged/` alone (NeMo, vLLM): serve each
source under its own prompt. Decoding under another prompt is refused unless `--allow-prompt-change`.
```python
from medasr.families.salm import load_adapted
model, meta = load_adapted("{EXPORT_NAME}")
```
"""
    card = out / "README.md"
    card.write_text(text)
    return card
