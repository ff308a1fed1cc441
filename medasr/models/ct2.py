"""Our reader of CTranslate2 model files (`model.bin`, binary spec version 6), and the Whisper spec mapped onto Hugging
Face's `WhisperForConditionalGeneration` — so a Whisper published only as a CTranslate2 model (faster-whisper's
format) becomes a PyTorch model we can fine-tune, with no ctranslate2 at run time (tests hold the conversion against
ctranslate2's own decoding of the original file).

The file, little-endian: u32 binary version, string spec name, u32 spec revision, u32 variable count; per variable a
string name, u8 rank, rank × u32 dims, u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count and the
raw data; then u32 alias count and (alias, target) string pairs. A string is a u16 length (with its NUL) and the bytes.
Whisper spec: self-attention Q/K/V fused in `linear_0` (rows q, k, v), cross-attention K/V fused in `linear_1`,
`linear_2` its output; LayerNorm `gamma`/`beta`; Whisper's key projections have no bias (the fused bias holds zeros
there, checked).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medasr.errors import InputError

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 (bf16) handled below
SUPPORTED_VERSION = 6


class CT2FormatError(InputError):
    pass


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # what a conversion read: every tensor must be (whisper_state_dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        self.used.add(name)
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(-1)[0])


def read_ct2(path: Path) -> CT2Model:
    """Every variable of a CTranslate2 model.bin as a numpy array (bf16 widened to f32)."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        try:
            value = struct.unpack_from(fmt, data, pos)[0]
        except struct.error as e:
            raise CT2FormatError(f"{path}: truncated at byte {pos} (not a whole CTranslate2 model.bin)") from e
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("<H")
        s = data[pos : pos + n - 1].decode()
        pos += n
        return s

    version = take("<I")
    if version != SUPPORTED_VERSION:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}; this reader reads version "
                             f"{SUPPORTED_VERSION} (ctranslate2 >= 3)")
    spec, revision, count = text(), take("<I"), take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype, nbytes = take("<B"), take("<I")
        if pos + nbytes > len(data):
            raise CT2FormatError(f"{path}: truncated at byte {len(data)} inside {name} (not a whole CTranslate2 "
                                 "model.bin)")
        raw = data[pos : pos + nbytes]
        pos += nbytes
        if dtype == 5:  # bfloat16: the high half of a float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in DTYPES:
            arr = np.frombuffer(raw, DTYPES[dtype])
        else:
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {dtype}")
        if arr.size != int(np.prod(dims, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name}: {arr.size} values for dims {dims}")
        variables[name] = arr.reshape(dims)
    aliases = {}
    if pos < len(data):
        for _ in range(take("<I")):
            alias = text()
            aliases[alias] = text()
    if pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - pos} bytes after the last alias")
    return CT2Model(spec, revision, variables, aliases)


def whisper_config(m: CT2Model) -> dict:
    """The WhisperConfig fields the spec determines (sizes from the tensors; heads from num_heads)."""
    def layers(side: str) -> int:
        return len({k.split("/")[1] for k in m.variables if re.match(rf"{side}/layer_\d+/", k)})

    enc_layers, dec_layers = layers("encoder"), layers("decoder")
    vocab, d_model = m.get("decoder/embeddings/weight").shape
    return {"vocab_size": int(vocab), "d_model": int(d_model), "num_mel_bins": int(m.get("encoder/conv1/weight").shape[1]),
            "encoder_layers": enc_layers, "decoder_layers": dec_layers,
            "encoder_attention_heads": m.scalar("encoder/num_heads"),
            "decoder_attention_heads": m.scalar("decoder/num_heads"),
            "encoder_ffn_dim": int(m.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
            "decoder_ffn_dim": int(m.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
            "max_source_positions": int(m.get("encoder/position_encodings/encodings").shape[0]),
            "max_target_positions": int(m.get("decoder/position_encodings/encodings").shape[0])}


def _norm(m: CT2Model, src: str, dst: str) -> dict:
    return {f"{dst}.weight": m.get(f"{src}/gamma"), f"{dst}.bias": m.get(f"{src}/beta")}


def _linear(m: CT2Model, src: str, dst: str) -> dict:
    return {f"{dst}.weight": m.get(f"{src}/weight"), f"{dst}.bias": m.get(f"{src}/bias")}


def _split(m: CT2Model, src: str, dsts: list[str], d_model: int) -> dict:
    """A fused projection (rows stacked in `dsts` order) split into its parts; "k_proj" gets no bias (it has none)."""
    w, b = m.get(f"{src}/weight"), m.get(f"{src}/bias")
    if w.shape[0] != d_model * len(dsts):
        raise CT2FormatError(f"{src}: {w.shape[0]} rows, expected {len(dsts)} × {d_model} (fused {dsts})")
    out = {}
    for i, dst in enumerate(dsts):
        rows = slice(i * d_model, (i + 1) * d_model)
        out[f"{dst}.weight"] = w[rows]
        if dst.endswith("k_proj"):
            if np.any(b[rows] != 0):
                raise CT2FormatError(f"{src}: the key projection's bias is not zero (Whisper's keys have no bias)")
        else:
            out[f"{dst}.bias"] = b[rows]
    return out


def whisper_state_dict(m: CT2Model) -> dict[str, np.ndarray]:
    """The WhisperForConditionalGeneration state dict (float32) of a CTranslate2 WhisperSpec model."""
    if m.spec != "WhisperSpec":
        raise CT2FormatError(f"a {m.spec} model, not a Whisper (WhisperSpec) one")
    cfg = whisper_config(m)
    d = cfg["d_model"]
    sd: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = m.get(f"{side}/position_encodings/encodings")
        sd |= _norm(m, f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(cfg[f"{side}_layers"]):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            sd |= _split(m, f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"], d)
            sd |= _linear(m, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            sd |= _norm(m, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                sd |= _linear(m, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                sd |= _split(m, f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"], d)
                sd |= _linear(m, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                sd |= _norm(m, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            sd |= _linear(m, f"{src}/ffn/linear_0", f"{dst}.fc1")
            sd |= _linear(m, f"{src}/ffn/linear_1", f"{dst}.fc2")
            sd |= _norm(m, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        sd |= _linear(m, f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = m.get("decoder/embeddings/weight")
    if m.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":  # HF ties proj_out to the embeddings
        raise CT2FormatError("decoder/projection/weight is not an alias of decoder/embeddings/weight: an untied output "
                             "projection, which WhisperForConditionalGeneration does not have")
    if left := sorted(k for k, v in m.variables.items() if v.ndim > 0 and k not in m.used):
        raise CT2FormatError(f"{len(left)} tensor(s) of the model would be dropped by the conversion: {left[:5]}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}
