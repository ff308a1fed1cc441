"""NeMo JSON manifests: one JSON object per line, `.json` suffix (NeMo's Lhotse loader takes a
`.jsonl` path for a Lhotse cut manifest, not a NeMo one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, TypedDict

from medasr.errors import InputError
from medasr.prompts import with_contexts


class Row(TypedDict, total=False):
    """One manifest row (a JSON object per line). NeMo reads the first three and ignores the rest, which medasr writes
    and reads by these names. Booleans are parsed once, by `read_manifest`."""

    audio_filepath: str  # required: absolute path of 16 kHz mono audio
    duration: float  # required: seconds (of the segment, from `offset` when given)
    text: str  # required: the reference transcript
    offset: float  # seconds into audio_filepath where the segment starts (NeMo's field)
    id: str  # unique within the corpus; pairs rows across evaluations
    source: str  # where the row came from: synthetic-kokoro, primock57, osce, hf:<id>, folder:…; picks the prompt
    speaker: str  # whose voice: rows of one speaker never straddle train and test
    cluster: str  # the unit a confidence interval resamples (a consultation, a recording, a synthetic term)
    term: str  # the medical term the row names (term error rate / KER rows)
    entity_category: str  # drug, condition, procedure, … (KER per category)
    term_seen: bool  # the term occurs in the training manifest
    speaker_seen: bool  # the speaker occurs in the training manifest
    carrier_seen: bool  # the sentence pattern is one of the training carriers (synthetic)
    carrier: str  # the carrier sentence's id (synthetic)
    voice_id: str  # `<engine>:<voice>:rate<wpm>` (synthetic)
    engine: str  # espeak or kokoro (synthetic)
    accent: str  # the voice's accent (synthetic)
    noise_level: str  # clean, snr15, snr5 (synthetic)
    context_type: str  # the carrier's clinical setting (synthetic)
    split: str  # the split a generic-speech row was planned for (generic_speech.py)
    context: str  # the SALM prompt's text before the audio tag (medasr.prompts), stamped for training and decoding
    pred_text: str  # a model's transcript (hyps.json, transcripts.json)


REQUIRED = ("audio_filepath", "duration", "text")
BOOLEANS = ("term_seen", "speaker_seen", "carrier_seen")


def _parse_booleans(row: dict, where: str) -> None:
    """JSON booleans, or the strings "true"/"false" a spreadsheet writes, become bools; anything else is refused
    (bool("false") would be True)."""
    for key in BOOLEANS:
        v = row.get(key)
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            row[key] = v.strip().lower() == "true"
        else:
            raise ManifestError(f"{where}: {key}={v!r} is not true/false; fix the manifest")


class ManifestError(InputError):
    pass


def read_manifest(path: str | Path, required: Iterable[str] = REQUIRED) -> list[Row]:
    """Read a manifest into Rows; any bad line raises with file:line and what to fix (nothing is skipped silently)."""
    path = Path(path)
    rows: list[Row] = []
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
            _parse_booleans(row, f"{path}:{lineno}")
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
