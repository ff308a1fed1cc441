"""One typed config object for every stage, loaded from a preset in configs/ plus CLI overrides.

OmegaConf structured configs give type checks and reject unknown keys, so a typo in a preset or in
`--set train.max_step=10` fails at load time instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf

from medasr.voices import held_out_violations, parse_voice
from medasr.prompts import check_prompts

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TinyModelConfig:
    """Sizes of the random-init, Canary-Qwen-shaped SALM used offline."""

    vocab_size: int = 512  # BPE merges trained locally; chat + audio tokens are added on top
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    encoder_d_model: int = 64
    encoder_layers: int = 2
    encoder_heads: int = 4
    mel_features: int = 80
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # Release-shape knobs (the canary-qwen-2.5b-shapes preset); defaults keep the tiny model as it was.
    llm_vocab_size: int = 0  # embedding rows; 0 = the local tokenizer's size + 1 (audio tag), else e.g. Qwen3's 151,936
    tie_word_embeddings: bool = False  # Qwen3-1.7B ties lm_head to the input embedding
    encoder_subsampling_channels: int = 0  # 0 = encoder_d_model; canary-1b-flash uses 256
    encoder_xscaling: bool = True


@dataclass
class TinyASRConfig:
    """Sizes of the random-init FastConformer-TDT (Parakeet-TDT layout) used offline by `tiny-parakeet`."""

    vocab_size: int = 128  # SentencePiece BPE trained locally
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    pred_hidden: int = 64
    joint_hidden: int = 64
    mel_features: int = 80
    tdt_durations: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


@dataclass
class WhisperSettings:
    """model.kind whisper (medasr/families/whisper.py): Hugging Face Whisper with a PEFT LoRA, or a full fine-tune."""

    lora_r: int = 32  # 0: a full fine-tune of every parameter model.freeze_params does not match
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_scope: str = "all"  # all: the targets in encoder and decoder; decoder: in the decoder only (encoder frozen)
    # with the encoder frozen, each utterance's encoder states are computed once and kept (fp16, CPU) for later
    # epochs and validations: a step then costs ~1/4 (bench/whisper_speed.py)
    cache_encoder_states: bool = True
    language: str = "en"  # a multilingual Whisper is prompted <|en|><|transcribe|><|notimestamps|>
    # `model.base: tiny`: a random-init Whisper of this size with tiny.en's tokenizer (offline machinery tests)
    tiny_d_model: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 2


# The model families (medasr/families/: one module each), checked here at config load without importing any model
# library; tests/test_structure.py keeps this equal to medasr.families.FAMILIES.
KINDS = {"salm": "Canary-Qwen LoRA", "asr": "Parakeet-TDT full fine-tune",
         "whisper": "Hugging Face Whisper, LoRA or full fine-tune"}


@dataclass
class ModelConfig:
    # salm: NeMo speechlm2 SALM (Canary-Qwen), LoRA + encoder + projection trained.
    # asr: NeMo ASRModel (Parakeet-TDT), full fine-tune, exported as adapted_model.nemo.
    kind: str = "salm"
    # salm: a Hub id or a local SALM directory (config.json + model.safetensors); "tiny" builds one into the run dir.
    # asr: a Hub id or a local .nemo file; "tiny" builds a FastConformer-TDT .nemo into the run dir.
    base: str = "tiny"
    # asr only: a SentencePiece tokenizer folder to switch to before fine-tuning (the base's own is kept when unset)
    tokenizer_dir: Optional[str] = None
    prompt: str = "Transcribe the following: <|audioplaceholder|>"
    # salm: per-source prompts (row `source` prefix → prompt ending with the audio tag), same at train and eval time;
    # a row's own `context` field wins over both (medasr/prompts.py)
    prompts_by_source: dict[str, str] = field(default_factory=dict)
    precision: str = "32-true"  # Lightning precision; bf16-true on a GPU pod
    # Parameters trained on top of the base's own freeze pattern: the release trains encoder + projection + LoRA.
    freeze_params: list[str] = field(default_factory=lambda: [r"^llm\..+$", r"^embed_tokens\..+$"])
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    tiny_asr: TinyASRConfig = field(default_factory=TinyASRConfig)
    whisper: WhisperSettings = field(default_factory=WhisperSettings)


@dataclass
class SynthConfig:
    train_voices: list[str] = field(default_factory=lambda: ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp+m3"])
    # test-only: a speaker and an accent (espeak language variant) used by no training voice
    # (tests/test_data.py checks its phonemes against every training voice)
    test_voices: list[str] = field(default_factory=lambda: ["en-us-nyc+f2"])
    unseen_fraction: float = 0.2
    train_per_term: int = 3
    val_per_term: int = 1
    # test rows per term, alternating test-only voice / training voice (so both term kinds see the same speaker mix)
    test_per_term: int = 2
    unseen_test_per_term: int = 2
    # extra test rows per term in a *training* carrier sentence (carrier_seen: true): what memorised patterns are worth
    test_seen_carrier_per_term: int = 1
    # non-medical test rows (generic WordNet sentences, half by the test voices, clean): does the fine-tune make the
    # model forget general speech? Sentences of at least generic_min_words words: long enough for a decoder that now
    # expects a drug name to show it
    generic_test_rows: int = 24
    generic_min_words: int = 15
    rate_min: int = 140
    rate_max: int = 190
    noise_levels: list[str] = field(default_factory=lambda: ["clean", "snr15", "snr5"])
    workers: int = 2  # synthesis processes, 0 = one per core up to 16 (how, not what: not in the data fingerprint)
    max_test: Optional[int] = None  # a seeded sample of the medical test rows (e.g. a rehearsal's small build)


@dataclass
class MixItem:
    """One component of `data.source: mix`: which splits of which source go into the run's manifests."""

    source: str = "synthetic"
    local: Optional[str] = None
    use: list[str] = field(default_factory=lambda: ["train", "val", "test"])


@dataclass
class DataConfig:
    # synthetic | osce | primock57 | united-syn-med | kaggle-medical | eka | hf:<dataset id> | folder:<path> | mix
    source: str = "synthetic"
    mix: list[MixItem] = field(default_factory=list)  # components when source == "mix" (docs/DATASETS.md)
    local: Optional[str] = None  # offline copy of the source in its upstream layout
    text_column: Optional[str] = None  # hf:<id> sources
    audio_column: Optional[str] = None
    speaker_column: Optional[str] = None
    seed: int = 1234
    max_train: int = 2000
    max_val: int = 200
    contamination_ngram: int = 8
    skip_bad: bool = False  # preflight: continue without rejected rows (still reported) instead of stopping
    synth: SynthConfig = field(default_factory=SynthConfig)


# What train.optimizer.name / train.lr_scheduler.name may be, checked at load (before any data or model time):
# torch.optim classes that take lr, betas, eps and weight_decay and that NeMo's ASR optimizer registry also names (in
# lower case); NeMo schedulers (nemo.core.optim.lr_scheduler) built from warmup_steps, min_lr and max_steps alone.
# tests/test_recipe.py checks both lists against the installed torch and NeMo.
OPTIMIZERS = ("Adam", "AdamW", "Adamax")
SCHEDULERS = ("CosineAnnealing", "WarmupAnnealing", "SquareAnnealing", "SquareRootAnnealing",
              "InverseSquareRootAnnealing", "PolynomialDecayAnnealing", "WarmupPolicy")


@dataclass
class OptimizerConfig:
    """The optimizer that trains: a torch.optim class and its arguments, passed unchanged to every model family and to
    the smoke run (medasr/models/optim.py); RUN/train/recipe.json records the one that ran."""

    name: str = "AdamW"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 1e-3


@dataclass
class LRSchedulerConfig:
    """A NeMo scheduler (nemo.core.optim.lr_scheduler) by name, stepped every optimizer step up to train.max_steps;
    null keeps the learning rate constant. The smoke run always holds it constant."""

    name: Optional[str] = "CosineAnnealing"
    warmup_steps: int = 10
    min_lr: float = 1e-5


@dataclass
class TrainConfig:
    max_steps: int = 200
    smoke_steps: int = 20  # smoke run before the full run (medasr/train/smoke.py); 0 skips it
    batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_scheduler: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    grad_clip: float = 1.0
    ckpt_every_n_steps: int = 50
    keep_last: int = 3  # periodic checkpoints kept (older ones pruned; -1 keeps all); the best by val WER is kept too
    val_every_n_steps: int = 50
    select_rows: int = 64  # the fixed validation subset decoded at each validation for val_wer_norm (medasr/train/select.py)
    limit_val_batches: int = 50
    log_every_n_steps: int = 5
    num_workers: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    threads: int = 2  # torch CPU threads; on a shared 2-core box more threads only thrash
    seed: int = 42
    # Speed/memory switches (docs/PERFORMANCE.md), applied by medasr.models.speed to the fine-tune and `medasr bench`.
    encoder_sdpa: bool = False  # FastConformer attention through torch SDPA instead of NeMo's explicit softmax(QK^T)V
    activation_checkpointing: bool = False  # recompute encoder + LLM layer activations in backward (bigger batches fit)
    target_logits_only: bool = True  # project only the transcript positions onto the vocabulary (same loss, less memory)
    bucketing: bool = False  # Lhotse duration buckets: batches of similar length, less padding
    num_buckets: int = 10
    batch_tokens: int = 0  # > 0: Lhotse token-based batches of this many tokens (audio at 0.08 s/token + text)
    #                        instead of train.batch_size utterances (NVIDIA's SALM recipe: 24,000)
    wandb_project: str = "medical-asr-poc"
    price_per_hour: float = 0.0  # USD, for the cost-so-far metric; MEDASR_PRICE_PER_HOUR overrides (set by run.sh)


@dataclass
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 64
    normalizer: str = "whisper"
    # the lexicon that tags term occurrences for term_error_rate: core | extended | auto (core when every test row is
    # synthetic, whose terms come from the core list; extended for real speech: on real conversations the core list's
    # term error rate tracks the PriMock57 leaderboard's medical WER worse, bench/lexicon_fit.py)
    lexicon: str = "auto"
    redact_transcripts: bool = False  # W&B tables get SHA-256 prefixes instead of text (PHI)
    static_cache: bool = False  # fixed-size KV cache in generate (transformers compiles the decode step on a GPU)
    n_boot: int = 1000
    # decode an export under other prompts than it was fine-tuned with (refused otherwise: medasr.models.load)
    allow_prompt_change: bool = False


@dataclass
class GateConfig:
    priority: list[str] = field(default_factory=lambda: ["drug"])
    ker_threshold: float = 0.3
    min_rows: int = 100
    min_per_priority: int = 5
    # compare: fewer priority terms than this (the KER bootstrap's independent units) → "insufficient_evidence"
    min_clusters: int = 20


@dataclass
class OpsConfig:
    # s3://bucket/prefix for checkpoint/adapter/report sync; MEDASR_S3_URI from the environment when unset
    s3_uri: Optional[str] = None
    s3_include_audio: bool = False
    # the supervisor (medasr/ops/supervisor.py): budget check and supervisor.json every heartbeat_s; the heartbeat
    # pushed to S3 every heartbeat_sync_s; a stopped flywheel SIGKILLed after kill_grace_s; final sync attempts
    heartbeat_s: float = 10.0
    heartbeat_sync_s: float = 300.0
    kill_grace_s: float = 120.0
    sync_attempts: int = 6


@dataclass
class BenchConfig:
    """`medasr bench train|eval` (medasr/perf/bench.py): synthetic batches of fixed-length utterances."""

    utt_seconds: float = 10.0  # audio per utterance
    text_tokens_per_second: float = 3.5  # transcript tokens per audio second (~160 words/min, ~1.3 tokens/word)
    train_batch_tokens: list[int] = field(default_factory=lambda: [3000, 6000, 12000, 24000])  # Lhotse-style tokens
    eval_batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64])
    warmup_steps: int = 3
    steps: int = 10
    memory_limit_gb: float = 40.0  # the target card (A100-40GB): rows above it are flagged


@dataclass
class Config:
    name: str = "tiny"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def s3_uri(cfg: "Config") -> Optional[str]:
    import os

    return cfg.ops.s3_uri or os.environ.get("MEDASR_S3_URI") or None


# Numeric settings divide, loop or schedule: each must be at least 1 (an int) or above 0 (a float) unless listed here
# with what it may be.
# Checked at load, so a 0 or -1 names its key instead of ending in a ZeroDivisionError later.
ZERO_OK = {
    "train.smoke_steps", "train.lr_scheduler.warmup_steps", "train.lr_scheduler.min_lr",
    "train.optimizer.weight_decay", "train.grad_clip",
    "train.num_workers", "train.batch_tokens", "train.price_per_hour", "data.synth.test_per_term",
    "data.synth.unseen_test_per_term", "data.synth.test_seen_carrier_per_term", "data.synth.generic_test_rows",
    "data.synth.workers", "gate.min_rows", "gate.min_per_priority", "model.tiny.llm_vocab_size",
    "model.tiny.encoder_subsampling_channels", "bench.warmup_steps", "ops.kill_grace_s",
    "model.tiny_asr.tdt_durations", "model.whisper.lora_r",
}
ANY_NUMBER = {"train.seed", "data.seed"}
FRACTIONS = {"data.synth.unseen_fraction": (0.0, 1.0, False), "gate.ker_threshold": (0.0, 1.0, True),
             "model.tiny.lora_dropout": (0.0, 1.0, False), "model.whisper.lora_dropout": (0.0, 1.0, False),
             "train.optimizer.betas": (0.0, 1.0, False)}
# keys that moved: a preset or --set still using the old name is told the new one (the schema rejects unknown keys)
RENAMED = {"train.lr": "train.optimizer.lr", "train.weight_decay": "train.optimizer.weight_decay",
           "train.warmup_steps": "train.lr_scheduler.warmup_steps", "train.min_lr": "train.lr_scheduler.min_lr"}
MINUS_ONE_OK = {"train.keep_last": "-1 keeps every checkpoint"}
# settings that are gone, with what to do instead (a run dir's config.yaml from before says so, not "unknown key")
RETIRED = {"pretrain": "the from-scratch mini base's pretraining section, retired with `medasr pretrain-mini` (the "
                       "mini demo fine-tunes Whisper tiny.en now, docs/MINI.md): delete the section"}


def _numbers(obj, prefix: str = ""):
    """(key, value) for every numeric setting (lists of numbers item by item), walking the dataclasses."""
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        v, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(v):
            yield from _numbers(v, key + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield key, v
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            yield from ((key, x) for x in v)


def check_numbers(cfg: "Config") -> None:
    """Refuse numeric settings that would divide by zero, loop no times or schedule backwards: one ValueError naming
    every bad key, its value and what it may be (all of them at once, not one per try)."""
    problems = []
    for key, v in _numbers(cfg):
        if key in ANY_NUMBER or (key in MINUS_ONE_OK and v == -1):
            continue
        if key in FRACTIONS:
            lo, hi, closed = FRACTIONS[key]
            if not (lo <= v <= hi if closed else lo <= v < hi):
                problems.append(f"{key}={v}: must be in [{lo}, {hi}{']' if closed else ')'}")
        elif key in ZERO_OK:
            if v < 0:
                problems.append(f"{key}={v}: must be 0 or more")
        elif (v < 1 if isinstance(v, int) else v <= 0):
            extra = f" ({MINUS_ONE_OK[key]})" if key in MINUS_ONE_OK else ""
            problems.append(f"{key}={v}: must be {'at least 1' if isinstance(v, int) else 'above 0'}{extra}: it "
                            "divides, counts or schedules something")
    if cfg.data.synth.rate_min > cfg.data.synth.rate_max:
        problems.append(f"data.synth.rate_min={cfg.data.synth.rate_min} is above "
                        f"data.synth.rate_max={cfg.data.synth.rate_max}")
    if cfg.data.synth.max_test is not None and cfg.data.synth.max_test < 1:
        problems.append(f"data.synth.max_test={cfg.data.synth.max_test}: must be at least 1 (or null for all rows)")
    opt, sched = cfg.train.optimizer, cfg.train.lr_scheduler
    if opt.name not in OPTIMIZERS:
        problems.append(f"train.optimizer.name={opt.name!r}: use one of {', '.join(OPTIMIZERS)}")
    if len(opt.betas) != 2:
        problems.append(f"train.optimizer.betas={list(opt.betas)}: give two, e.g. [0.9, 0.98]")
    if sched.name is not None and sched.name not in SCHEDULERS:
        problems.append(f"train.lr_scheduler.name={sched.name!r}: use one of {', '.join(SCHEDULERS)}, or null for a "
                        "constant learning rate")
    if problems:
        raise ValueError("; ".join(problems))


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(preset: str, overrides: Optional[list[str]] = None) -> Config:
    """Preset name (configs/<name>.yaml) or a YAML path, then `a.b=value` overrides."""
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = CONFIG_DIR / f"{preset}.yaml"  # preset names may contain dots (canary-qwen-2.5b)
    if not path.exists():
        raise FileNotFoundError(f"no preset {preset!r}: choose one of {', '.join(available_presets())} or pass a .yaml path")
    schema = OmegaConf.structured(Config)
    loaded = OmegaConf.load(path)
    for old, new in RENAMED.items():
        if OmegaConf.select(loaded, old) is not None:
            raise ValueError(f"{path}: {old} is now {new}")
    for old, why in RETIRED.items():
        if OmegaConf.select(loaded, old) is not None:
            raise ValueError(f"{path}: {old}: {why}")
    merged = OmegaConf.merge(schema, loaded)
    for o in overrides or []:
        key, sep, value = o.partition("=")
        if not sep:
            raise ValueError(f"override {o!r}: expected key=value, e.g. train.max_steps=50")
        if key.strip() in RENAMED:
            raise ValueError(f"override {o!r}: {key.strip()} is now {RENAMED[key.strip()]}")
        if key.strip().split(".")[0] in RETIRED:
            raise ValueError(f"override {o!r}: {RETIRED[key.strip().split('.')[0]]}")
        # update() understands list indices (data.mix.0.local=...) and, on a structured config, rejects unknown keys
        OmegaConf.update(merged, key.strip(), yaml.safe_load(value) if value.strip() else None, merge=True)
    cfg = OmegaConf.to_object(merged)
    if cfg.model.kind not in KINDS:
        raise ValueError(f"model.kind={cfg.model.kind!r}: use " + " or ".join(f"{k} ({v})" for k, v in KINDS.items()))
    if cfg.model.kind == "asr" and cfg.train.devices > 1:
        # NeMo builds the ASR loaders before the DDP process group exists, so every rank would read the same batches;
        # wiring their sharding is not done (a first attempt hung in validation on CPU/gloo). SALM presets shard.
        raise ValueError("train.devices > 1 is supported for SALM presets (canary-qwen-2.5b, tiny); the Parakeet "
                         "path trains on one device: set train.devices=1")
    if cfg.model.base == "mini":
        raise ValueError("model.base: mini was the from-scratch SALM demo base, retired: `-p mini` now fine-tunes "
                         "Whisper tiny.en (model.kind: whisper, model.base: tiny.en; docs/MINI.md)")
    check_prompts(cfg.model.prompt, cfg.model.prompts_by_source)
    check_numbers(cfg)
    s = cfg.data.synth
    for key, voices in (("train_voices", s.train_voices), ("test_voices", s.test_voices)):
        for v in voices:
            try:
                parse_voice(v)
            except ValueError as e:
                raise ValueError(f"data.synth.{key}: {e}") from None
    if bad := held_out_violations(list(s.train_voices), list(s.test_voices)):
        raise ValueError(f"data.synth.test_voices {bad} share a speaker with data.synth.train_voices: a held-out voice "
                         "must be a new speaker (for a Kokoro blend: none of its packs may be a training voice's)")
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)
