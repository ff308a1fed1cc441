"""FLOPs of one SALM training step and of one generation call, from the sizes alone (no model needed).

Counted as multiply-adds x 2 of every matmul/convolution (attention score and value products included, over the full
square even where a mask discards half, the convention torch.utils.flop_counter and MFU reports use). Backward:
- trainable parts (subsampling, Conformer layers, projection, LoRA): activation gradient + weight gradient = 2x forward;
- the frozen LLM (and its tied lm_head): activation gradient only = 1x forward, because the gradient must flow through
  it back to the audio embeddings but no weight gradient is formed.
The preprocessor (STFT, mel) and elementwise ops are left out: they are <1 % at these sizes.
tests/test_perf.py checks these formulas against torch's FlopCounterMode on a real step of the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_SECONDS = 0.08  # one encoder frame after 8x subsampling of 10 ms mel frames = one LLM position


@dataclass(frozen=True)
class StepShape:
    batch: int  # utterances
    audio_s: float  # seconds per utterance (all the same length: a bucket)
    prompt_tokens: int  # chat template + instruction tokens around the audio
    text_tokens: int  # transcript tokens (+ end token) per utterance

    @property
    def mel_frames(self) -> int:
        return int(round(self.audio_s * 100))  # valid frames at NeMo's 10 ms hop (what the lengths say)

    @property
    def audio_frames(self) -> int:
        n = self.mel_frames
        for _ in range(3):  # three stride-2 convolutions
            n = _conv_out(n)
        return n

    @property
    def seq_len(self) -> int:
        return self.audio_frames + self.prompt_tokens + self.text_tokens

    @property
    def batch_tokens(self) -> int:
        """Tokens as Lhotse counts them for token-based batching (audio at TOKEN_SECONDS per token, plus text)."""
        return self.batch * (int(self.audio_s / TOKEN_SECONDS) + self.prompt_tokens + self.text_tokens)


def _conv_out(n: int) -> int:
    """Length after a stride-2, kernel-3, padding-1 convolution."""
    return (n - 1) // 2 + 1


def _vocab(t) -> int:
    """Embedding/lm_head rows, as tiny.build_llm_folder sets them (0 = our tokenizer + the audio tag)."""
    return t.llm_vocab_size or (t.vocab_size + 1)


def subsampling_macs(t, mel_frames: int) -> int:
    """NeMo dw_striding x8: conv 3x3/2 (1->C), then twice [depthwise 3x3/2, pointwise CxC], then Linear(C*F/8 -> d)."""
    c = t.encoder_subsampling_channels or t.encoder_d_model
    m, f = _conv_out(mel_frames), _conv_out(t.mel_features)
    macs = c * m * f * 9
    for _ in range(2):
        m, f = _conv_out(m), _conv_out(f)
        macs += c * m * f * 9 + c * m * f * c
    return macs + m * (c * f) * t.encoder_d_model


def conformer_layer_macs(d: int, n: int, kernel: int = 9) -> tuple[int, int]:
    """(per utterance, per batch) MACs of one FastConformer layer over n frames: two FF (x4), rel-pos MHSA (q,k,v,o
    projections; content, position and value products), conv module (pointwise d->2d, depthwise, pointwise). The
    position projection runs once per batch over 2n-1 relative positions."""
    ff = 2 * (d * 4 * d * 2)
    attn_proj = 4 * d * d
    conv = 2 * d * d + kernel * d + d * d
    scores = n * d + (2 * n - 1) * d + n * d  # QK^T, Q.P^T, AV — per frame
    return n * (ff + attn_proj + conv + scores), (2 * n - 1) * d * d


def encoder_macs(t, shape: StepShape) -> int:
    """One batch: subsampling + Conformer layers + the linear projection into the LLM."""
    n = shape.audio_frames
    per_utt, per_batch = conformer_layer_macs(t.encoder_d_model, n)
    utt = subsampling_macs(t, shape.mel_frames) + t.encoder_layers * per_utt + n * t.encoder_d_model * t.hidden_size
    return shape.batch * utt + t.encoder_layers * per_batch


def llm_token_macs(t, context: int, head: bool = True) -> dict:
    """MACs of one LLM position attending to `context` positions: frozen linear layers (+ lm_head), the attention
    products, LoRA."""
    h, q, kv = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, t.intermediate_size), "up_proj": (h, t.intermediate_size),
              "down_proj": (t.intermediate_size, h)}
    return {"linear": t.num_layers * sum(i * o for i, o in shapes.values()) + (h * _vocab(t) if head else 0),
            "attention": t.num_layers * 2 * context * q,
            "lora": t.num_layers * sum(t.lora_r * (shapes[m][0] + shapes[m][1])
                                       for m in t.lora_target_modules if m in shapes)}


def train_step_flops(t, shape: StepShape, target_logits_only: bool = False) -> dict:
    """FLOPs of one fine-tune step (forward + backward). Backward = 2x forward for trained weights and for every
    attention product (its operands are activations); 1x for the frozen LLM's linear layers (no weight gradient).
    `target_logits_only` (train.target_logits_only): lm_head runs on the transcript positions only."""
    s = shape.seq_len - 1  # SALM drops the last position (targets are shifted by one)
    tok = {k: shape.batch * s * v for k, v in llm_token_macs(t, s, head=False).items()}
    head_positions = shape.batch * (shape.text_tokens if target_logits_only else s)
    tok["linear"] += head_positions * t.hidden_size * _vocab(t)
    parts = {"encoder": 2 * 3 * encoder_macs(t, shape), "llm_frozen": 2 * 2 * tok["linear"],
             "llm_attention": 2 * 3 * tok["attention"], "lora": 2 * 3 * tok["lora"]}
    return parts | {"total": sum(parts.values())}


def generate_flops(t, shape: StepShape, new_tokens: int) -> int:
    """FLOPs of one batched greedy generation: encoder, prefill of prompt + audio (lm_head on the last position
    only), then `new_tokens` decode steps against a KV cache."""
    prefill = shape.audio_frames + shape.prompt_tokens
    macs = encoder_macs(t, shape) + shape.batch * prefill * sum(llm_token_macs(t, prefill, head=False).values())
    for i in range(new_tokens - 1):  # the first new token comes from the prefill's logits
        macs += shape.batch * sum(llm_token_macs(t, prefill + i + 1).values())
    return 2 * (macs + shape.batch * t.hidden_size * _vocab(t))
