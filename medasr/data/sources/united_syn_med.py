"""`united-syn-med` (united-we-care/United-Syn-Med, gated, CC BY-SA 4.0): TTS sentences rich in drug names.

Upstream layout: `data/{train,validation,test}.csv` with columns `file_name, transcription`, and the MP3s in
`data/audio/{train,validation,test}.tar.gz`. Tarball members are matched to CSV rows by base name. For the ungated
parquet mirrors (Shamus/United-Syn-Med*) use `hf:<mirror id>` instead.
"""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

from medasr.data.sources.common import SegmentWriter, SourceError, SourceResult, decode_bytes, hf_download, tag_terms

REPO = "united-we-care/United-Syn-Med"
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def load_united_syn_med(out_dir: Path, local: Path | None = None) -> SourceResult:
    root = Path(local) if local else hf_download(REPO, "united-syn-med", ["data/*.csv", "data/audio/*.tar.gz", "README.md"])
    data = root / "data" if (root / "data").is_dir() else root
    res = SourceResult()
    writer = SegmentWriter(out_dir / "united-syn-med", res)
    found = False
    for up, split in SPLITS.items():
        csv_path, tar_path = data / f"{up}.csv", data / "audio" / f"{up}.tar.gz"
        if not csv_path.exists():
            continue
        found = True
        if not tar_path.exists():
            raise SourceError(f"united-syn-med: {csv_path} has no audio tarball at {tar_path}")
        with csv_path.open(encoding="utf-8") as f:
            wanted = {}
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                if "file_name" not in row or "transcription" not in row:
                    raise SourceError(f"{csv_path}:{lineno}: expected columns file_name, transcription")
                wanted[Path(row["file_name"]).name] = row["transcription"]
        seen = set()
        with tarfile.open(tar_path) as t:
            for member in t:
                name = Path(member.name).name
                if not member.isfile() or name not in wanted:
                    continue
                seen.add(name)
                text = " ".join((wanted[name] or "").split())
                if not text:
                    res.dropped["empty text"] += 1
                    continue
                try:
                    audio = decode_bytes(t.extractfile(member).read(), Path(name).suffix or ".mp3")
                except SourceError:
                    res.dropped["undecodable audio"] += 1
                    continue
                writer.add(split, f"usm-{up}-{Path(name).stem}", audio, {"text": text, "source": "united-syn-med", "speaker": None})
        res.dropped["listed in CSV but missing from the tarball"] += len(set(wanted) - seen)
    if not found:
        raise SourceError(f"united-syn-med: no data/{{train,validation,test}}.csv under {root}")
    res.dropped = +res.dropped  # drop zero counts
    for rows in res.splits.values():
        tag_terms(rows)
    return res
