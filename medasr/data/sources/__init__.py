"""Source readers: each turns one upstream layout into 16 kHz mono WAV segments + NeMo manifest rows.

Every reader returns a `SourceResult`: rows per upstream split and a report that counts everything it did not keep
(too long, empty after cleaning, duplicate, undecodable) — nothing is dropped silently.
Online, readers download with huggingface_hub (HF_TOKEN from the environment for gated sets); offline, `local`
points at a copy in the upstream layout.
"""

from __future__ import annotations

from pathlib import Path

from medasr.data.sources.common import SourceError, SourceResult
from medasr.data.sources.folder import load_folder
from medasr.data.sources.hf import load_hf_parquet
from medasr.data.sources.osce import load_osce
from medasr.data.sources.primock57 import load_primock57, load_primock57_consultations
from medasr.data.sources.united_syn_med import load_united_syn_med


def available() -> list[str]:
    return ["osce", "primock57", "primock57-consultations", "united-syn-med", "kaggle-medical", "eka", "folder:<path>", "hf:<dataset id>"]


def load_source(name: str, out_dir: Path, local: Path | None = None, **opts) -> SourceResult:
    """Dispatch on the source name; `out_dir` receives the cut audio."""
    if name == "osce":
        return load_osce(out_dir, local)
    if name == "primock57":
        return load_primock57(out_dir, local)
    if name == "primock57-consultations":  # the leaderboard's long-form unit: whole consultations, channels mixed

        return load_primock57_consultations(out_dir, local)
    if name == "united-syn-med":
        return load_united_syn_med(out_dir, local)
    if name == "eka":
        # An evaluation-only set: every row goes to test. Column names are auto-detected (not verified offline).
        return load_hf_parquet("ekacare/eka-medical-asr-evaluation-dataset", out_dir, local,
                               text_column=opts.get("text_column"), audio_column=opts.get("audio_column") or "audio",
                               speaker_column=opts.get("speaker_column"), source="eka", force_split="test")
    if name == "kaggle-medical":
        return load_hf_parquet("Hani89/medical_asr_recording_dataset", out_dir, local,
                               text_column=opts.get("text_column") or "sentence", audio_column=opts.get("audio_column") or "audio",
                               source="kaggle-medical")
    if name.startswith("hf:"):
        return load_hf_parquet(name[3:], out_dir, local, text_column=opts.get("text_column"),
                               audio_column=opts.get("audio_column") or "audio", speaker_column=opts.get("speaker_column"))
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]), out_dir)
    raise SourceError(f"unknown source {name!r}; choose one of {', '.join(available())}")


__all__ = ["SourceError", "SourceResult", "available", "load_source"]
