"""Build the `tiny` base model fully offline: a random-init SALM with the Canary-Qwen layout.

What the Hub release provides, we create locally and save in the same layout, so every later stage loads the base with
`SALM.from_pretrained(<dir>)` exactly as it loads `nvidia/canary-qwen-2.5b`:
  llm/        Qwen3-architecture config + byte-level BPE tokenizer trained here (Qwen chat tokens included)
  base/       SALM.save_pretrained output made self-contained (config.json points at ../llm)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medasr.config import Config, TinyModelConfig
from medasr.data.lexicon import core_lexicon
from medasr.data.templates import CONTEXT_TYPES, TEMPLATES, render

AUDIO_LOCATOR_TAG = "<|audioplaceholder|>"
# Qwen's special tokens: <|endoftext|> pads, <|im_end|> ends an assistant turn (the stop token for generate).
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Generic sentences so the tokenizer is not trained only on medical text.
_GENERIC = [
    "Transcribe the following:",
    "The quick brown fox jumps over the lazy dog.",
    "Please describe what happened, and when it started.",
    "Numbers such as one, two, three, ten, twenty and one hundred appear in speech.",
    "I am not sure, could you repeat that for me?",
]


def tokenizer_corpus() -> list[str]:
    texts = list(_GENERIC)
    for term in core_lexicon().terms:
        for ctx in CONTEXT_TYPES:
            texts.extend(render(t, term.term) for t in TEMPLATES[ctx][term.entity_category])
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int, corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus() if corpus is None else corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None, unk_token=None)
    hf.save_pretrained(out_dir)
    return hf


def build_llm_folder(out_dir: Path, t: TinyModelConfig, corpus: list[str] | None = None) -> None:
    """Tokenizer (trained on `corpus`, default: generic lines + the medical templates) + Qwen3 config."""
    from transformers import Qwen3Config

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, t.vocab_size, corpus)
    cfg = Qwen3Config(
        # +1: SALM adds the audio locator tag without resizing embeddings. A release-shaped model keeps Qwen3's
        # 151,936 rows whatever our small tokenizer uses: speed and memory depend on the shape, not the vocabulary.
        vocab_size=t.llm_vocab_size or len(tok) + 1,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        max_position_embeddings=2048,
        tie_word_embeddings=t.tie_word_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    cfg.save_pretrained(out_dir)


def salm_config(llm_dir: Path, t: TinyModelConfig) -> dict:
    """A Canary-Qwen-shaped SALM config: FastConformer perception (8x dw_striding) + linear projection + Qwen3 LLM."""
    return {
        "pretrained_llm": str(llm_dir),
        "pretrained_weights": False,
        "prompt_format": "qwen",
        "audio_locator_tag": AUDIO_LOCATOR_TAG,
        # The release's pattern: LLM frozen; encoder, projection and LoRA trained (LoRA kept by prevent_freeze_params).
        "freeze_params": [r"^llm\..+$", r"^embed_tokens\..+$"],
        "prevent_freeze_params": [],
        "lora": {
            "task_type": "CAUSAL_LM",
            "r": t.lora_r,
            "lora_alpha": t.lora_alpha,
            "lora_dropout": t.lora_dropout,
            "target_modules": list(t.lora_target_modules),
        },
        "perception": {
            "target": "nemo.collections.speechlm2.modules.perception.AudioPerceptionModule",
            "output_dim": t.hidden_size,
            "preprocessor": {
                "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                "sample_rate": 16000,
                "normalize": "per_feature",
                "window_size": 0.025,
                "window_stride": 0.01,
                "window": "hann",
                "features": t.mel_features,
                "n_fft": 512,
                "log": True,
                "frame_splicing": 1,
                "dither": 1e-05,
                "pad_to": 0,
                "pad_value": 0.0,
            },
            "encoder": {
                "_target_": "nemo.collections.asr.modules.ConformerEncoder",
                "feat_in": t.mel_features,
                "feat_out": -1,
                "n_layers": t.encoder_layers,
                "d_model": t.encoder_d_model,
                "subsampling": "dw_striding",
                "subsampling_factor": 8,
                "subsampling_conv_channels": t.encoder_subsampling_channels or t.encoder_d_model,
                "causal_downsampling": False,
                "ff_expansion_factor": 4,
                "self_attention_model": "rel_pos",
                "n_heads": t.encoder_heads,
                "att_context_size": [-1, -1],
                "xscaling": t.encoder_xscaling,
                "untie_biases": True,
                "pos_emb_max_len": 5000,
                "conv_kernel_size": 9,
                "conv_norm_type": "batch_norm",
                "conv_context_size": None,
                "dropout": 0.1,
                "dropout_pre_encoder": 0.1,
                "dropout_emb": 0.0,
                "dropout_att": 0.1,
            },
            "modality_adapter": {
                "_target_": "nemo.collections.speechlm2.modules.perception.IdentityConnector",
                "d_model": t.encoder_d_model,
            },
        },
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
    }


def new_salm(llm_dir: Path, t: TinyModelConfig, empty: bool = False, cls=None):
    """A random-init SALM of sizes `t` over the LLM folder `llm_dir` (build_llm_folder). `empty=True` allocates no
    weights (parameters on the meta device): enough to count a 2.5 B model's parameters on a laptop. `cls`: a SALM
    subclass to build (`medasr bench`: the MedasrSALM training runs)."""
    from nemo.collections.speechlm2.models import SALM

    klass = cls or SALM
    if not empty:
        return klass(salm_config(llm_dir.resolve(), t))
    # accelerate's context (not torch.device("meta")): NeMo's subsampling computes sizes with real tensors.
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = klass(salm_config(llm_dir.resolve(), t))
    if t.tie_word_embeddings:  # the context re-creates each registered parameter, which undoes HF's tying
        lm_head = next(m for n, m in model.llm.named_modules() if n.endswith("lm_head"))
        lm_head.weight = model.embed_tokens.weight
    return model


def build_tiny_base(cfg: Config, out_root: Path, seed: int = 0) -> Path:
    """Create (once) the tiny base model under out_root; returns the SALM directory to load with from_pretrained."""
    base_dir = out_root / "base"
    if (base_dir / "model.safetensors").exists() and (base_dir / "config.json").exists():
        return base_dir
    llm_dir = out_root / "llm"
    build_llm_folder(llm_dir, cfg.model.tiny)
    torch.manual_seed(seed)
    model = new_salm(llm_dir, cfg.model.tiny)
    save_base(model, base_dir, llm_dir.resolve())
    return base_dir


def save_base(model, base_dir: Path, pretrained_llm: Path | str) -> None:
    """SALM.save_pretrained, made loadable by from_pretrained(base_dir) with the LLM folder at `pretrained_llm`."""
    import shutil

    tmp = base_dir.with_name(base_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    conf = json.loads((tmp / "config.json").read_text())
    conf["pretrained_llm"] = str(pretrained_llm)
    conf["prevent_freeze_params"] = []  # maybe_install_lora appends the LoRA pattern again on load
    (tmp / "config.json").write_text(json.dumps(conf, indent=2))
    shutil.rmtree(base_dir, ignore_errors=True)
    tmp.replace(base_dir)
