"""`osce`: simulated OSCE patient–physician interviews (Fareez et al., Sci Data 2022; HF yfyeung/medical, CC BY 4.0).

Upstream layout: `medical_{train,dev,test}.info` with lines `audio/<ID>.mp3,[<start>,<end>]<TAB><TEXT IN CAPS>` and
the MP3s in `audio.tar.gz` (or an extracted `audio/`). Each MP3 is decoded once and cut by the given times. The
ALL-CAPS text becomes sentence case for training targets; the raw text is kept in `text_raw`. The conversation id
(RES0001, GAS0012, …) is the speaker group: both speakers of one interview always land in the same split.
"""

from __future__ import annotations

import re
import tarfile
from collections import defaultdict
from pathlib import Path

from rich.progress import track

from medasr.data.sources.common import SAMPLE_RATE, SegmentWriter, SourceError, SourceResult, decode, hf_download, tag_terms

REPO = "yfyeung/medical"
SPLITS = {"train": "train", "dev": "val", "test": "test"}
LINE = re.compile(r"^(?P<path>[^,\t]+),\s*\[\s*(?P<start>[\d.]+)\s*,\s*(?P<end>[\d.]+)\s*\]\s*\t(?P<text>.*)$")


def sentence_case(text: str) -> str:
    t = " ".join(text.strip().lower().split())
    t = re.sub(r"\bi\b", "I", t)
    t = re.sub(r"\bi'(m|ve|ll|d)\b", lambda m: "I'" + m.group(1), t)
    return t[:1].upper() + t[1:] if t else t


def parse_info(path: Path) -> list[tuple[str, float, float, str, int]]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = LINE.match(line)
        if not m:
            raise SourceError(f"{path}:{lineno}: not of the form 'audio/X.mp3,[start,end]<TAB>text': {line[:80]!r}")
        out.append((m["path"], float(m["start"]), float(m["end"]), m["text"], lineno))
    return out


def _ensure_audio(root: Path) -> None:
    if (root / "audio").is_dir():
        return
    tar = root / "audio.tar.gz"
    if not tar.exists():
        raise SourceError(f"osce: {root} has neither audio/ nor audio.tar.gz")
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")


def load_osce(out_dir: Path, local: Path | None = None) -> SourceResult:
    root = Path(local) if local else hf_download(REPO, "osce", ["medical_*.info", "audio.tar.gz", "README.md"])
    missing = [f"medical_{s}.info" for s in SPLITS if not (root / f"medical_{s}.info").exists()]
    if missing:
        raise SourceError(f"osce: {root} lacks {', '.join(missing)} (expected the {REPO} layout)")
    _ensure_audio(root)
    res = SourceResult()
    writer = SegmentWriter(out_dir / "osce", res)
    for up, split in SPLITS.items():
        by_file: dict[str, list] = defaultdict(list)
        for item in parse_info(root / f"medical_{up}.info"):
            by_file[item[0]].append(item)
        for rel, items in track(sorted(by_file.items()), description=f"osce {up}: cutting segments"):
            mp3 = root / rel
            if not mp3.exists():
                res.dropped["audio file missing"] += len(items)
                continue
            try:
                audio = decode(mp3)
            except SourceError:
                res.dropped["undecodable audio"] += len(items)
                continue
            conv = Path(rel).stem
            for _, start, end, text, lineno in items:
                if not text.strip():
                    res.dropped["empty text"] += 1
                    continue
                seg = audio[int(round(start * SAMPLE_RATE)) : int(round(end * SAMPLE_RATE))]
                writer.add(split, f"osce-{conv}-{start:.2f}-{end:.2f}", seg,
                           {"text": sentence_case(text), "text_raw": text, "speaker": conv, "source": "osce",
                            "offset": start, "origin": f"medical_{up}.info:{lineno}"})
    for rows in res.splits.values():
        tag_terms(rows)
    return res
