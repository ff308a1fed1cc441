"""`folder:<path>`: your own recordings. Either a `transcripts.csv` (columns `audio` or `file_name`, `text` or
`transcription`, optional `speaker`, optional `split`) or one `<name>.txt` transcript beside each audio file."""

from __future__ import annotations

import csv
from pathlib import Path

from medasr.data.sources.common import SegmentWriter, SourceError, SourceResult, decode, tag_terms

AUDIO_EXT = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus"}


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        if row.get(n):
            return row[n]
    return None


def load_folder(root: Path, out_dir: Path) -> SourceResult:
    if not root.is_dir():
        raise SourceError(f"folder source: {root} is not a directory")
    res = SourceResult()
    writer = SegmentWriter(out_dir / f"folder-{root.name}", res)
    csv_path = root / "transcripts.csv"
    items: list[tuple[Path, str, str | None, str]] = []
    if csv_path.exists():
        with csv_path.open(encoding="utf-8") as f:
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                audio, text = _pick(row, ("audio", "file_name", "audio_filepath", "path")), _pick(row, ("text", "transcription", "sentence"))
                if not audio or text is None:
                    raise SourceError(f"{csv_path}:{lineno}: needs an audio column (audio/file_name) and a text column (text/transcription)")
                items.append((root / audio, text, row.get("speaker") or None, row.get("split") or "train"))
    else:
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in AUDIO_EXT:
                txt = p.with_suffix(".txt")
                if not txt.exists():
                    res.dropped["no transcript (.txt) beside the audio"] += 1
                    continue
                items.append((p, txt.read_text(encoding="utf-8").strip(), p.parent.name if p.parent != root else None, "train"))
    if not items:
        raise SourceError(f"folder source: nothing found in {root} (transcripts.csv or audio files with .txt transcripts)")
    for audio_path, text, speaker, split in items:
        if not audio_path.exists():
            res.dropped["audio file missing"] += 1
            continue
        if not text.strip():
            res.dropped["empty text"] += 1
            continue
        try:
            audio = decode(audio_path)
        except SourceError:
            res.dropped["undecodable audio"] += 1
            continue
        rel = audio_path.relative_to(root).with_suffix("")
        writer.add(split, f"folder-{rel}", audio, {"text": " ".join(text.split()), "speaker": speaker, "source": f"folder:{root.name}"})
    for rows in res.splits.values():
        tag_terms(rows)
    return res
