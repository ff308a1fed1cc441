"""NeMo JSON manifests: one JSON object per line, `.json` suffix (NeMo's Lhotse loader takes a
`.jsonl` path for a Lhotse cut manifest, not a NeMo one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from medasr.errors import InputError
from medasr.prompts import with_contexts

REQUIRED = ("audio_filepath", "duration", "text")


class ManifestError(InputError):
    pass


def read_manifest(path: str | Path, required: Iterable[str] = REQUIRED) -> list[dict]:
    """Read a manifest; any bad line raises with file:line and what to fix (nothing is skipped silently)."""
    path = Path(path)
    rows: list[dict] = []
    required = tuple(required)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid UTF-8 ({e}); re-save the manifest as UTF-8") from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: malformed JSON ({e.msg}); one JSON object per line") from e
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ManifestError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def write_manifest(path: str | Path, rows: Iterable[dict]) -> int:
    """Atomic write (tmp + rename) so a killed stage never leaves a half manifest that looks valid."""
    path = Path(path)
    if path.suffix == ".jsonl":
        raise ManifestError(f"{path}: NeMo reads .jsonl as a Lhotse manifest; use the .json suffix")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def prompted_manifests(cfg, data_dir: Path, out: Path) -> Path:
    """out/{train,val}.json (RUN/train/data for a run): data_dir's manifests with each row's `context` stamped from the
    config, which is what SALM training reads. Rewritten on every launch so a changed prompt config takes effect."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        rows = with_contexts(read_manifest(data_dir / f"{split}.json"), cfg.model.prompt, cfg.model.prompts_by_source)
        write_manifest(out / f"{split}.json", rows)
    return out
