"""Per-row SALM prompts: one rule, used at train time (the `context` field NeMo's `lhotse_as_conversation` reads from
each manifest row) and at eval/inference time (the user turn sent to `SALM.generate`), so the two cannot drift.

A row's prompt context is, first match wins:
1. the row's own `context` field (a manifest that brings its own prompts);
2. `model.prompts_by_source[<key>]` for the longest key that the row's `source` starts with
   (e.g. `primock57` → "Transcribe this doctor-patient conversation verbatim. <|audioplaceholder|>");
3. `model.prompt`.
Prompts are written with the audio tag at the end; the context is the text before it.
"""

from __future__ import annotations

from typing import Mapping, Optional

AUDIO_TAG = "<|audioplaceholder|>"  # SALM's audio locator tag (Canary-Qwen's config: audio_locator_tag)


def split_prompt(prompt: str) -> str:
    """The text before the audio tag. SALM's data pipeline joins consecutive user turns with a space, so training
    with context=<this> renders the same tokens as the inference prompt `<this> <|audioplaceholder|>`."""
    if not prompt.rstrip().endswith(AUDIO_TAG):
        raise ValueError(f"model.prompt must end with {AUDIO_TAG!r} (got {prompt!r})")
    return prompt.rstrip()[: -len(AUDIO_TAG)].rstrip()


def check_prompts(prompt: str, by_source: Mapping[str, str]) -> None:
    """Every configured prompt must end with the audio tag (raises ValueError naming the bad one)."""
    split_prompt(prompt)
    for key, p in by_source.items():
        try:
            split_prompt(p)
        except ValueError as e:
            raise ValueError(f"model.prompts_by_source[{key!r}]: {e}") from None


def context_for(row: Mapping, prompt: str, by_source: Optional[Mapping[str, str]] = None) -> str:
    if row.get("context"):
        return str(row["context"])
    src = str(row.get("source") or "")
    keys = sorted((k for k in (by_source or {}) if src.startswith(k)), key=len, reverse=True)
    return split_prompt(by_source[keys[0]] if keys else prompt)


def with_contexts(rows: list[dict], prompt: str, by_source: Optional[Mapping[str, str]] = None) -> list[dict]:
    return [r | {"context": context_for(r, prompt, by_source)} for r in rows]


def prompt_summary(rows: list[dict]) -> dict[str, int]:
    """How many rows get each context (for reports and the model card)."""
    from collections import Counter

    return dict(Counter(r["context"] for r in rows).most_common())
