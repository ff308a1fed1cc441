"""What produced a result: content hashes of models and manifests plus the settings that change the numbers.

A stage records its inputs' fingerprint beside its outputs and re-runs when today's differs, so a result can never
describe another model, manifest or setting (re-training with more steps re-exports, and the new export is
re-evaluated: it was skipped on row counts alone before). Hashes are SHA-256 over file contents; a file's hash is
cached per (path, size, mtime) within a process, so a 5 GB model is read once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}
# files that describe a model but do not change what it computes (rewritten after evaluation: the model card)
_NOT_MODEL = (".md",)


def file_sha256(path: Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def digest(obj) -> str:
    """Short hash of a JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_digest(spec: str | Path) -> str:
    """A model's content hash: a file (.nemo, checkpoint) is hashed; a folder hashes every file the model is made of
    (not model cards; not a SALM adapter export's `merged/`, which is derived from the same weights), plus its base
    model when it is a medasr SALM adapter export; a Hub id is its own name (pin `@revision` to make it a content
    address)."""
    p = Path(spec)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        return f"ref:{spec}"
    h = hashlib.sha256()
    meta = p / "medasr_adapter.json"
    derived = ("merged",) if meta.exists() else ()  # a SALM export's merged/ is made from its adapter and base
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p)
        if f.suffix in _NOT_MODEL or rel.parts[0] in derived:
            continue
        h.update(f"{rel.as_posix()}\0{file_sha256(f)}\n".encode())
    if meta.exists():
        base = json.loads(meta.read_text()).get("base_model")
        if base:
            h.update(model_digest(p / base if (p / base).exists() else base).encode())
    return h.hexdigest()
