"""Helpers shared by the source readers: decoding, cutting, length policy, de-duplication, term tagging."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE
from medasr.data.lexicon import core_lexicon
from medasr.data.manifest import Row
from medasr.errors import MedasrError

MAX_SECONDS = 40.0


class SourceError(MedasrError, RuntimeError):
    pass


@dataclass
class SourceResult:
    splits: dict[str, list[dict]] = field(default_factory=dict)  # upstream split name -> rows
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {
            "rows": {k: len(v) for k, v in self.splits.items()},
            "dropped": dict(sorted(self.dropped.items())),
            "hours": {k: round(sum(r["duration"] for r in v) / 3600, 3) for k, v in self.splits.items()},
            "notes": self.notes,
        }


def decode(path: Path) -> np.ndarray:
    """Any audio file → float32 mono 16 kHz, via ffmpeg (MP3 included); WAV/FLAC at 16 kHz are read directly."""
    try:
        info = sf.info(str(path))
        if info.samplerate == SAMPLE_RATE:
            audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
            return audio.mean(axis=1)
    except Exception:  # noqa: BLE001 - fall through to ffmpeg for formats libsndfile lacks
        pass
    exe = shutil.which("ffmpeg")
    if not exe:
        raise SourceError("ffmpeg not found: run scripts/setup.sh (apt-get install ffmpeg)")
    proc = subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE),
                           "-f", "f32le", "-"], capture_output=True)
    if proc.returncode != 0:
        raise SourceError(f"cannot decode {path}: {proc.stderr.decode(errors='replace')[:200]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def decode_bytes(data: bytes, suffix: str = ".wav") -> np.ndarray:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        return decode(Path(tmp.name))


class SegmentWriter:
    """Writes segments as 16 kHz PCM WAV, enforcing the 40 s limit and removing duplicate audio (counted)."""

    def __init__(self, out_dir: Path, result: SourceResult, max_seconds: float = MAX_SECONDS):
        self.out_dir, self.result, self.max_seconds = out_dir, result, max_seconds
        self._seen: dict[str, str] = {}
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, split: str, seg_id: str, audio: np.ndarray, row: Row) -> Row | None:
        dur = len(audio) / SAMPLE_RATE
        if dur <= 0.05:
            self.result.dropped["empty or < 50 ms audio"] += 1
            return None
        if dur > self.max_seconds:
            self.result.dropped[f"longer than {self.max_seconds:.0f} s (rejected)"] += 1
            return None
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        digest = hashlib.sha1(pcm.tobytes()).hexdigest()
        if digest in self._seen:
            self.result.dropped["duplicate audio"] += 1
            return None
        self._seen[digest] = seg_id
        path = self.out_dir / f"{safe_name(seg_id)}.wav"
        sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
        full: Row = {"audio_filepath": str(path.resolve()), "duration": round(dur, 4), **row, "id": seg_id}
        self.result.splits.setdefault(split, []).append(full)
        return full


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(s: str) -> str:
    return _UNSAFE.sub("_", s)[:150]


def tag_terms(rows: list[dict], lexicon=None) -> None:
    """Add `terms: [{term, entity_category}]` found by the lexicon in each row's text."""
    if lexicon is None:
        lexicon = core_lexicon()
    for r in rows:
        r["terms"] = [{"term": m.term.term, "entity_category": m.term.entity_category} for m in lexicon.tag(r["text"])]


def hf_download(repo_id: str, name: str, allow_patterns: list[str]) -> Path:
    """Download a dataset snapshot from the Hugging Face Hub; a failure names the dataset, the reason and the fix."""
    try:
        from huggingface_hub import snapshot_download

        # huggingface_hub reads HF_HUB_OFFLINE once at import; honour it per call as well
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=allow_patterns,
                                      token=os.environ.get("HF_TOKEN") or None, local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - every failure gets the same actionable message
        reason = " ".join(str(e).split())[:200]
        raise SourceError(
            f"{name}: could not download {repo_id} from the Hugging Face Hub ({type(e).__name__}: {reason}). "
            f"If the set is gated, accept its terms and export HF_TOKEN; or download it elsewhere and pass "
            f"--local PATH (a folder in the upstream layout)."
        ) from e
