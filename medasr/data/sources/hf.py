"""`hf:<dataset id>` (and `kaggle-medical`): Hugging Face datasets stored as parquet with an audio struct
(`{bytes, path}`) and a text column. Read with pyarrow, row group by row group, so large sets stream."""

from __future__ import annotations

from pathlib import Path

from medasr.data.sources.common import SegmentWriter, SourceError, SourceResult, decode_bytes, hf_download, tag_terms

TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")


def _split_of(path: Path) -> str:
    name = path.as_posix().lower()
    for key, split in (("validation", "val"), ("valid", "val"), ("dev", "val"), ("test", "test"), ("train", "train")):
        if key in name:
            return split
    return "train"


def load_hf_parquet(repo_id: str, out_dir: Path, local: Path | None = None, text_column: str | None = None,
                    audio_column: str = "audio", speaker_column: str | None = None, source: str | None = None,
                    force_split: str | None = None) -> SourceResult:
    import pyarrow.parquet as pq

    source = source or f"hf:{repo_id}"
    root = Path(local) if local else hf_download(repo_id, source, ["*.parquet", "**/*.parquet", "README.md"])
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise SourceError(f"{source}: no parquet files under {root}")
    res = SourceResult()
    writer = SegmentWriter(out_dir / source.replace(":", "-").replace("/", "_"), res)
    for f in files:
        pf = pq.ParquetFile(f)
        cols = pf.schema_arrow.names
        tcol = text_column or next((c for c in TEXT_COLUMNS if c in cols), None)
        if tcol not in cols or audio_column not in cols:
            raise SourceError(f"{f}: columns are {cols}; pass --text-column / --audio-column (looked for {tcol!r}, {audio_column!r})")
        split = force_split or _split_of(f.relative_to(root))
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g).to_pylist()
            for i, row in enumerate(table):
                audio, text = row[audio_column], row[tcol]
                if not text or not str(text).strip():
                    res.dropped["empty text"] += 1
                    continue
                data = audio.get("bytes") if isinstance(audio, dict) else None
                if not data:
                    res.dropped["no audio bytes"] += 1
                    continue
                suffix = Path(audio.get("path") or "x.wav").suffix or ".wav"
                try:
                    wav = decode_bytes(data, suffix)
                except SourceError:
                    res.dropped["undecodable audio"] += 1
                    continue
                seg_id = f"{f.stem}-{g}-{i}"
                writer.add(split, seg_id, wav, {"text": " ".join(str(text).split()), "source": source,
                                                "speaker": row.get(speaker_column) if speaker_column else None})
    for rows in res.splits.values():
        tag_terms(rows)
    return res
