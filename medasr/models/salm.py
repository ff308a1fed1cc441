"""Load a SALM base (Hub id or local dir), apply a medasr adapter, and transcribe batches with `SALM.generate`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from medasr.audio import read_audio
from medasr.prompts import AUDIO_TAG, split_prompt


# Parameter groups of the Canary-Qwen layout, used for the trainable-parameter table and the freeze check.
GROUPS = (
    ("lora", re.compile(r".*\.lora_.+")),
    ("llm (frozen)", re.compile(r"^(llm|embed_tokens)\..+")),
    ("encoder", re.compile(r"^perception\.(preprocessor|encoder|spec_augmentation)\..+")),
    ("projection", re.compile(r"^perception\.(modality_adapter|proj)\..+")),
)


def quiet_nemo() -> None:
    """NeMo and its dependencies log a lot at import; keep our progress readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging as pylogging

    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(pylogging.WARNING)
    for name in ("transformers", "lhotse", "torchao", "lightning.pytorch.utilities.rank_zero"):
        pylogging.getLogger(name).setLevel(pylogging.ERROR)


def group_of(name: str) -> str:
    for group, pat in GROUPS:
        if pat.match(name):
            return group
    return "other"


def hub_ref(base: str | Path) -> tuple[str, str | None]:
    """`org/name@<commit>` → (org/name, commit): a preset pins the Hub revision it was made for. A local path or a
    plain id → (base, None)."""
    s = str(base)
    if "@" in s and not Path(s).exists():
        repo, rev = s.rsplit("@", 1)
        return repo, rev
    return s, None


def load_base(base: str | Path, map_location: str = "cpu", cls=None):
    """`SALM.from_pretrained` on a Hub id (`nvidia/canary-qwen-2.5b`, optionally `@<revision>`) or a local directory
    with the same layout; `cls`: a SALM subclass to build instead (training: medasr.models.salm_train.MedasrSALM)."""
    quiet_nemo()
    from nemo.collections.speechlm2.models import SALM

    cls = cls or SALM
    local = Path(base)
    if local.exists():
        return cls.from_pretrained(str(local.resolve()), map_location=map_location)
    repo, rev = hub_ref(base)
    return cls.from_pretrained(repo, revision=rev, map_location=map_location)


def _decode(model, ids: torch.Tensor) -> str:
    ids = ids.tolist()
    stop = {model.text_eos_id, model.text_pad_id}
    out = []
    for i in ids:
        if i in stop:
            break
        out.append(i)
    return model.tokenizer.ids_to_text(out).strip()


@torch.no_grad()
def prompt_turns(context: str) -> list[dict]:
    """The user turn decoding sends for a prompt context (medasr.prompts): the context, a space, the audio tag — as
    SALM's training pipeline joins them, even for an empty context (" <|audioplaceholder|>": stripping that space,
    as decoding once did, sent other tokens than training saw; preflight now compares the ids)."""
    return [{"role": "user", "content": f"{context} {AUDIO_TAG}"}]


def prompt_ids(model, context: str) -> torch.Tensor:
    """The token ids decoding sends for a prompt context: `prompt_turns` through the model's prompt formatter, as
    SALM.generate formats a prompt given as turns. transcribe_arrays sends exactly these ids, and preflight compares
    them with a rendered training example, so "the prompt matches inference" is about what is really sent."""
    from nemo.collections.common.prompts import PromptFormatter

    formatter = PromptFormatter.resolve(model.cfg.prompt_format)(model.tokenizer)
    return formatter.encode_dialog(turns=prompt_turns(context))["input_ids"]


def transcribe_arrays(
    model,
    audios: list[np.ndarray],
    prompt: str,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress=None,
    contexts: list[str | None] | None = None,
    **generation_kwargs,
) -> list[str]:
    """Greedy transcription of mono float arrays at the model's rate, batched longest-first (less padding); shorter
    audio in a batch is zero-padded and its true length passed to SALM. bf16 autocast on a GPU.
    `contexts[i]`, when given and not None, is audio i's prompt text (medasr.prompts); else `prompt`'s."""
    from nemo.collections.speechlm2.data.salm_dataset import left_collate_vectors

    default = split_prompt(prompt)
    contexts = contexts or [None] * len(audios)
    model.eval()
    dev = model.device
    dtype = next(model.perception.parameters()).dtype  # bf16 under Lightning's bf16-true (validation-time decoding)
    order = sorted(range(len(audios)), key=lambda i: -len(audios[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lens = torch.tensor([len(audios[i]) for i in idx], dtype=torch.long)
        batch = torch.zeros(len(idx), int(lens.max()))
        for j, i in enumerate(idx):
            batch[j, : len(audios[i])] = torch.from_numpy(np.asarray(audios[i], dtype=np.float32))
        prompts = left_collate_vectors([prompt_ids(model, default if contexts[i] is None else contexts[i]) for i in idx],
                                       padding_value=model.text_pad_id).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            ids = model.generate(
                prompts=prompts,
                audios=batch.to(dev, dtype=dtype),
                audio_lens=lens.to(dev),
                max_new_tokens=max_new_tokens,
                **generation_kwargs,
            )
        for j, i in enumerate(idx):
            out[i] = _decode(model, ids[j])
        if progress is not None:
            progress(len(idx))
    return [out[i] for i in range(len(audios))]


def transcribe_paths(model, paths: list[str], prompt: str, batch_size: int = 16, max_new_tokens: int = 128,
                     progress=None, **generation_kwargs) -> list[str]:
    """`transcribe_arrays` on audio files (each resampled to the model's rate, no chunking: see medasr.transcribe)."""
    audios = [read_audio(p, model.sampling_rate) for p in paths]
    return transcribe_arrays(model, audios, prompt, batch_size, max_new_tokens, progress, **generation_kwargs)
