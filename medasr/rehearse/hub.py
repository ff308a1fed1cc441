"""A local Hugging Face Hub cache holding scaled-down replicas of the repos the real presets download, under their
real repo ids, revisions and file names, so `HF_HUB_OFFLINE=1` runs of the real presets read them exactly as they would
read the Hub (any file not replicated fails loudly).

What `SALM.from_pretrained("nvidia/canary-qwen-2.5b")` reads (NeMo 3.0.0, traced offline): from the canary repo
`config.json` and `model.safetensors` (it also probes `tokenizer_config.json` and `llm_backbone/config.json`, which the
release does not have), then, through `pretrained_llm: Qwen/Qwen3-1.7B`, Qwen's `config.json` (AutoConfig; weights are
never read) and its tokenizer (`tokenizer_config.json`, `tokenizer.json`, `vocab.json`, `merges.txt`).
`ASRModel.from_pretrained("nvidia/parakeet-tdt-0.6b-v2")` reads `parakeet-tdt-0.6b-v2.nemo` (repo name + `.nemo`).
`osce` reads the dataset repo `yfyeung/medical` with `snapshot_download`.

Replicas keep the release's config keys and values except sizes: layer counts and widths, the LoRA rank (its
alpha/rank ratio kept), the tokenizer's learned vocabulary (a small byte-level BPE with Qwen's 26 added tokens in
Qwen's order, `<|endoftext|>` pad, `<|im_end|>` eos; the embedding keeps Qwen's 267 spare rows). Weights are random,
written by NeMo's own `SALM.save_pretrained` in bf16 from a model whose lm_head is tied to embed_tokens, as the
release's Qwen3-1.7B is. Sources for every value: docs/MODEL.md ("The release pinned, and its offline replica").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from medasr.config import TinyASRConfig, TinyModelConfig, load_config
from medasr.models.tiny import salm_config, tokenizer_corpus
from medasr.models.tiny_asr import build_tiny_parakeet
from medasr.rehearse.datasets import osce_replica

CANARY, CANARY_REV = "nvidia/canary-qwen-2.5b", "b1469e1bba1cfe140205529c79c434ca47180960"
QWEN, QWEN_REV = "Qwen/Qwen3-1.7B", "70d244cc86ccca08cf5af4e1e306ecf908b1ad5e"
PARAKEET = "nvidia/parakeet-tdt-0.6b-v2"
MEDICAL = "yfyeung/medical"
REPLICA_REV = "0000000000000000000000000000000000000001"  # a revision we do not know: replicas of it say so

# Qwen3's added tokens (tokenizer.json added_tokens, ids 151643-151668 in this order); the first 14 are special.
QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
              "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
              "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
              "</tool_response>", "<think>", "</think>"]
QWEN_SPARE_ROWS = 151936 - 151669  # embedding rows beyond the tokenizer in Qwen3-1.7B
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def snapshot_dir(hub_cache: Path, repo_id: str, revision: str, repo_type: str = "model") -> Path:
    """The cache layout huggingface_hub reads offline: <type>s--org--name/refs/main + snapshots/<revision>/."""
    repo = hub_cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def qwen_replica(snap: Path, t: TinyModelConfig) -> None:
    """Qwen/Qwen3-1.7B's files a SALM reads: config.json, generation_config.json and the tokenizer files."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=t.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(s, special=i < 14, normalized=False) for i, s in enumerate(QWEN_ADDED)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, unk_token=None, model_max_length=131072,
                                 additional_special_tokens=QWEN_ADDED[1:14])
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(snap)
    tok.model.save(str(snap))  # vocab.json + merges.txt, as the release ships beside tokenizer.json
    conf = json.loads((snap / "tokenizer_config.json").read_text())
    (snap / "chat_template.jinja").unlink(missing_ok=True)  # the release keeps it inside tokenizer_config.json
    conf |= {"chat_template": CHAT_TEMPLATE, "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
             "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False}
    (snap / "tokenizer_config.json").write_text(json.dumps(conf, indent=2))
    eot, eos = hf.convert_tokens_to_ids("<|endoftext|>"), hf.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen3Config(vocab_size=len(hf) + QWEN_SPARE_ROWS, hidden_size=t.hidden_size,
                      intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                      num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim,
                      max_position_embeddings=40960, max_window_layers=t.num_layers, rope_theta=1000000,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eos,
                      attention_bias=False, use_sliding_window=False, sliding_window=None)
    cfg.architectures = ["Qwen3ForCausalLM"]
    cfg.torch_dtype = "bfloat16"
    cfg.save_pretrained(snap)
    (snap / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "do_sample": True, "eos_token_id": [eos, eot], "pad_token_id": eot, "temperature": 0.6,
         "top_k": 20, "top_p": 0.95}, indent=4))
    for name in ("LICENSE", "README.md"):
        (snap / name).write_text(f"Scaled-down replica of {QWEN} for offline rehearsal (medasr); not the model.\n")


def canary_config(qwen_dir: Path, t: TinyModelConfig) -> dict:
    """The release config.json's keys and values (docs/MODEL.md), sizes scaled down."""
    cfg = salm_config(qwen_dir, t)
    enc, pre = cfg["perception"]["encoder"], cfg["perception"]["preprocessor"]
    enc |= {"feat_in": 128, "xscaling": False, "untie_biases": True}
    pre |= {"features": 128}
    rank = t.lora_r
    cfg |= {"pretrained_asr": "nvidia/canary-1b-flash", "torch_dtype": "bfloat16",
            "prevent_freeze_params": [],  # NeMo appends ^.+\.lora_.+$ itself, as the release config records
            "lora": {"task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.01,
                     "target_modules": ["q_proj", "v_proj"]}}
    return cfg


def canary_replica(snap: Path, qwen_dir: Path, t: TinyModelConfig, seed: int = 0) -> None:
    """config.json + model.safetensors written by NeMo's SALM.save_pretrained (bf16, tied lm_head), README, LICENSES."""
    from nemo.collections.speechlm2.models import SALM

    torch.manual_seed(seed)
    model = SALM(canary_config(qwen_dir, t))
    lm_head = next(m for n, m in model.llm.named_modules() if n.endswith("lm_head"))
    assert lm_head.weight is model.embed_tokens.weight, "lm_head must be tied to embed_tokens, as in Qwen3-1.7B"
    model = model.to(torch.bfloat16)
    tmp = snap.with_name(snap.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    conf = json.loads((tmp / "config.json").read_text())
    conf["pretrained_llm"] = QWEN  # resolved through the cache, as the release's is
    for k in ("model_type", "architectures"):  # NeMo 3.0.0 adds these; the 2025 release predates them
        conf.pop(k, None)
    (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    for name in ("config.json", "model.safetensors"):
        shutil.move(tmp / name, snap / name)
    shutil.rmtree(tmp)
    (snap / "README.md").write_text(f"Scaled-down replica of {CANARY}@{CANARY_REV} for offline rehearsal (medasr).\n"
                                    "Prompt: Transcribe the following: <|audioplaceholder|>\n")
    (snap / "LICENSES").write_text("CC-BY-4.0 (Canary), Apache-2.0 (Qwen3-1.7B): licences of the real release.\n")


def parakeet_replica(snap: Path, t: TinyASRConfig) -> None:
    """parakeet-tdt-0.6b-v2.nemo: a FastConformer-TDT in the release's class (EncDecRNNTBPEModel), TDT durations
    0-4, sizes scaled down, saved by NeMo's save_to under the release's file name."""
    cfg = load_config("tiny-parakeet")
    cfg.model.tiny_asr = t
    tmp = snap.parent / (snap.name + ".build")
    nemo = build_tiny_parakeet(cfg, tmp)
    shutil.move(nemo, snap / f"{PARAKEET.split('/')[1]}.nemo")
    shutil.rmtree(tmp, ignore_errors=True)


def build_hub_cache(hub_cache: Path, presets: tuple[str, ...] = ("canary-qwen-2.5b", "parakeet-tdt-0.6b-v2"),
                    t: TinyModelConfig | None = None, t_asr: TinyASRConfig | None = None) -> dict:
    """Write the replicas the given presets read into `hub_cache` (HF_HUB_CACHE); returns {repo: snapshot dir}.
    Existing snapshots are kept (a rehearsal re-run reuses them)."""
    t, t_asr = t or TinyModelConfig(), t_asr or TinyASRConfig()
    out = {}

    def once(repo, rev, build, repo_type="model"):
        snap = snapshot_dir(hub_cache, repo, rev, repo_type)
        if not (snap / ".medasr-replica").exists():
            build(snap)
            (snap / ".medasr-replica").write_text("complete\n")
        out[repo] = snap

    if "canary-qwen-2.5b" in presets:
        once(QWEN, QWEN_REV, lambda s: qwen_replica(s, t))
        once(CANARY, CANARY_REV, lambda s: canary_replica(s, out[QWEN], t))
    if "parakeet-tdt-0.6b-v2" in presets:
        once(PARAKEET, REPLICA_REV, lambda s: parakeet_replica(s, t_asr))
    once(MEDICAL, REPLICA_REV, lambda s: (osce_replica(s), (s / "README.md").write_text(
        "Scaled-down replica of yfyeung/medical (CC BY 4.0) for offline rehearsal (medasr).\n")), "dataset")
    return out
