"""`folder:<path>`: your own recordings. Either a `transcripts.csv` (columns `audio` or `file_name`, `text` or
`transcription`, optional `speaker`, optional `split`, optional `start`/`end` in seconds to cut one segment out of a
longer recording) or one `<name>.txt` transcript beside each audio file.

`split` takes train, val or test (validation, dev and valid mean val); any other value is refused with its line.
A recording longer than 40 s (Canary-Qwen's training maximum) cannot be one row: give it several CSV lines with
`start`/`end` around each utterance. Such recordings are counted, named in the report's notes, and if nothing else is
left the build stops with that instruction.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medasr.audio import SAMPLE_RATE
from medasr.data.sources.common import MAX_SECONDS, SegmentWriter, SourceError, SourceResult, decode, tag_terms

AUDIO_EXT = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "valid": "val", "test": "test"}
TOO_LONG = f"longer than {MAX_SECONDS:.0f} s (rejected)"


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        if row.get(n):
            return row[n]
    return None


def _seconds(row: dict, key: str, where: str) -> float | None:
    if not (row.get(key) or "").strip():
        return None
    try:
        return float(row[key])
    except ValueError:
        raise SourceError(f"{where}: {key}={row[key]!r} is not a number of seconds") from None


def _read_csv(root: Path, csv_path: Path) -> list[tuple]:
    items = []
    with csv_path.open(encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            where = f"{csv_path}:{lineno}"
            audio, text = _pick(row, ("audio", "file_name", "audio_filepath", "path")), _pick(row, ("text", "transcription", "sentence"))
            if not audio or text is None:
                raise SourceError(f"{where}: needs an audio column (audio/file_name) and a text column (text/transcription)")
            split = (row.get("split") or "train").strip().lower()
            if split not in SPLIT_NAMES:
                raise SourceError(f"{where}: split {row.get('split')!r} is not one of train, val (validation, dev), test")
            start, end = _seconds(row, "start", where), _seconds(row, "end", where)
            if (start is None) != (end is None) or (start is not None and not 0 <= start < end):
                raise SourceError(f"{where}: give both start and end (seconds, start < end) or neither")
            items.append((root / audio, text, row.get("speaker") or None, SPLIT_NAMES[split], start, end))
    return items


def load_folder(root: Path, out_dir: Path) -> SourceResult:
    if not root.is_dir():
        raise SourceError(f"folder source: {root} is not a directory")
    res = SourceResult()
    writer = SegmentWriter(out_dir / f"folder-{root.name}", res)
    csv_path = root / "transcripts.csv"
    items: list[tuple] = []
    if csv_path.exists():
        items = _read_csv(root, csv_path)
    else:
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in AUDIO_EXT:
                txt = p.with_suffix(".txt")
                if not txt.exists():
                    res.dropped["no transcript (.txt) beside the audio"] += 1
                    continue
                items.append((p, txt.read_text(encoding="utf-8").strip(), p.parent.name if p.parent != root else None,
                              "train", None, None))
    if not items:
        raise SourceError(f"folder source: nothing found in {root} (transcripts.csv or audio files with .txt transcripts)")
    too_long: list[str] = []
    decoded: dict[Path, object] = {}  # the last recording decoded: its utterances are usually consecutive lines
    for audio_path, text, speaker, split, start, end in items:
        if not audio_path.exists():
            res.dropped["audio file missing"] += 1
            continue
        if not text.strip():
            res.dropped["empty text"] += 1
            continue
        if audio_path not in decoded:
            try:
                decoded = {audio_path: decode(audio_path)}
            except SourceError:
                decoded = {audio_path: None}
        audio = decoded[audio_path]
        if audio is None:
            res.dropped["undecodable audio"] += 1
            continue
        rel = str(audio_path.relative_to(root).with_suffix(""))
        extra = {}
        if start is not None:
            if end > len(audio) / SAMPLE_RATE + 0.05:
                raise SourceError(f"{csv_path}: {audio_path.name} start={start} end={end} runs past the end of the "
                                  f"recording ({len(audio) / SAMPLE_RATE:.2f} s): fix the times")
            audio = audio[int(round(start * SAMPLE_RATE)) : int(round(end * SAMPLE_RATE))]
            rel += f"-{start:.2f}-{end:.2f}"
            extra = {"source_start": start, "source_end": end,
                     "recording": str(audio_path.relative_to(root))}  # segments of one recording: one CI cluster
        if writer.add(split, f"folder-{rel}", audio, {"text": " ".join(text.split()), "speaker": speaker,
                                                      "source": f"folder:{root.name}"} | extra) is None \
                and len(audio) / SAMPLE_RATE > MAX_SECONDS:
            too_long.append(rel)
    if too_long:
        fix = (f"{len(too_long)} recording(s) longer than {MAX_SECONDS:.0f} s were not used ({', '.join(too_long[:5])}"
               f"{', …' if len(too_long) > 5 else ''}): Canary-Qwen trains on at most {MAX_SECONDS:.0f} s. List each "
               f"utterance of a long recording as its own line of {csv_path.name} with start and end columns (seconds)")
        if not any(res.splits.values()):
            raise SourceError(f"folder source {root}: no usable rows. {fix}")
        res.notes.append(fix)
    for rows in res.splits.values():
        tag_terms(rows)
    return res
