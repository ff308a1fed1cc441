"""Preflight validation of a NeMo manifest: catch every bad row before a GPU hour is spent on it.

Each rejected row is reported with its 1-based line, its audio path and a reason that says what to do. Nothing is
dropped silently: `--skip-bad` writes the accepted rows to a clean manifest *and* still reports the rejected ones.
`--fix` repairs what can be repaired without guessing (resample to 16 kHz mono, re-measure `duration`), and lists each
repair in the report.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from medasr.audio import SAMPLE_RATE, read_audio

MAX_SECONDS = 40.0  # Canary-Qwen's training maximum (model card)


@dataclass
class ValidationReport:
    manifest: str
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)
    fixed: list[dict] = field(default_factory=list)
    accepted_rows: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"manifest": self.manifest, "accepted": self.accepted, "rejected": self.rejected, "fixed": self.fixed}

    @property
    def ok(self) -> bool:
        return not self.rejected


def _sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _fix_audio(path: Path, fix_dir: Path, line: int) -> Path:
    audio = read_audio(str(path))
    fix_dir.mkdir(parents=True, exist_ok=True)
    out = fix_dir / f"{line:06d}_{path.stem}.wav"
    sf.write(out, audio, SAMPLE_RATE, subtype="PCM_16")
    return out


def validate_manifest(path: str | Path, fix: bool = False, fix_dir: Path | None = None,
                      max_seconds: float = MAX_SECONDS, duration_tolerance: float = 0.1) -> ValidationReport:
    path = Path(path)
    rep = ValidationReport(manifest=str(path))
    fix_dir = fix_dir or path.parent / "fixed_audio"
    by_path: dict[str, int] = {}
    by_hash: dict[tuple[int, str], int] = {}

    def reject(line: int, audio: str | None, reason: str) -> None:
        rep.rejected.append({"line": line, "audio_filepath": audio, "reason": reason})

    with path.open("rb") as f:
        raw_lines = f.read().split(b"\n")
    for line, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            reject(line, None, f"invalid UTF-8 at byte {e.start}: re-save the manifest as UTF-8")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            reject(line, None, f"malformed JSON ({e.msg} at column {e.colno}): one JSON object per line")
            continue
        if not isinstance(row, dict):
            reject(line, None, f"expected a JSON object, got {type(row).__name__}")
            continue
        audio = row.get("audio_filepath")
        missing = [k for k in ("audio_filepath", "duration", "text") if k not in row]
        if missing:
            reject(line, audio, f"missing field(s): {', '.join(missing)}")
            continue
        if not isinstance(row["text"], str) or not row["text"].strip():
            reject(line, audio, "empty or whitespace-only text: transcribe the clip or remove the row")
            continue
        dur = row["duration"]
        if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not math.isfinite(dur):
            reject(line, audio, f"duration {dur!r} is not a number (seconds)")
            continue
        apath = Path(audio)
        if not apath.is_absolute():
            apath = path.parent / apath  # NeMo resolves relative paths against the manifest's folder
        if not apath.exists():
            reject(line, audio, f"audio file not found: {apath}")
            continue
        try:
            info = sf.info(str(apath))
        except Exception as e:  # noqa: BLE001 - any decoder error means the file is unusable
            reject(line, audio, f"unreadable or corrupt audio ({type(e).__name__}: {str(e)[:120]})")
            continue
        if info.frames == 0:
            reject(line, audio, "zero-length audio")
            continue
        real = info.frames / info.samplerate
        if "offset" in row:  # NeMo's reader cuts [offset, offset + duration) out of the file
            off = row["offset"]
            if isinstance(off, bool) or not isinstance(off, (int, float)) or not 0 <= off:
                reject(line, audio, f"offset {off!r} is not a number of seconds >= 0")
                continue
            if off + dur > real + duration_tolerance:
                reject(line, audio, f"offset {off} s + duration {dur} s runs past the end of the file ({real:.2f} s): "
                                    "NeMo cuts at offset from the file, so a row whose file is already the segment "
                                    "must have no offset")
                continue
            real = dur  # the segment, not the file, is what trains
        if real > max_seconds:
            reject(line, audio, f"audio is {real:.1f} s, longer than {max_seconds:.0f} s (Canary-Qwen's training maximum): split it")
            continue
        key = str(apath.resolve())
        if key in by_path:
            reject(line, audio, f"duplicate audio: same file as line {by_path[key]}")
            continue
        digest = (apath.stat().st_size, _sha1(apath))
        if digest in by_hash:
            reject(line, audio, f"duplicate audio: identical content to line {by_hash[digest]}")
            continue
        fixes = []
        if info.samplerate != SAMPLE_RATE or info.channels != 1:
            what = f"{info.samplerate} Hz, {info.channels} channel(s); expected {SAMPLE_RATE} Hz mono"
            if not fix:
                reject(line, audio, f"{what}: run `medasr validate --fix` to resample")
                continue
            new = _fix_audio(apath, fix_dir, line)
            fixes.append(f"resampled ({what}) -> {new}")
            row = row | {"audio_filepath": str(new.resolve())}
        if abs(real - dur) > max(duration_tolerance, 0.01 * real):
            if not fix:
                reject(line, audio, f"duration field {dur} s does not match the audio ({real:.3f} s): use --fix to re-measure")
                continue
            fixes.append(f"duration {dur} -> {real:.4f}")
            row = row | {"duration": round(real, 4)}
        by_path[key], by_hash[digest] = line, line  # only accepted rows count as originals
        if fixes:
            rep.fixed.append({"line": line, "audio_filepath": audio, "fixes": fixes})
        rep.accepted += 1
        rep.accepted_rows.append(row)
    return rep


def write_report(rep: ValidationReport, report_path: Path) -> None:
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(rep.to_dict(), indent=2))


def nemo_reader_check(path: str | Path) -> int:
    """Read every row of a NeMo manifest through NeMo's own Lhotse reader (the one SALM and Parakeet training use) and
    load its audio; raises naming the row that fails. Returns the number of rows read."""
    from nemo.collections.common.data.lhotse.nemo_adapters import LazyNeMoIterator

    n = 0
    for n, cut in enumerate(LazyNeMoIterator(str(path)), start=1):
        try:
            audio = cut.load_audio()
        except Exception as e:  # noqa: BLE001 - any failure here is a failure in training
            raise ValueError(f"{path}:{n}: NeMo's reader cannot load this row ({type(e).__name__}: {e})") from e
        if audio.shape[-1] == 0:
            raise ValueError(f"{path}:{n}: NeMo's reader loads no audio for this row")
    return n
