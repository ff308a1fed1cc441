"""Atomic file writes: a killed process never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside the target, then rename over it (rename is atomic on one filesystem). The temp
    name is the writer's own (process and thread), so two writers of one file never share a half-written temp."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
