"""Transcription for real use: any medasr model family (medasr/families/), files of any length, txt / json / srt output.

Models: a SALM export (`canary-qwen-medical-lora/`), a SALM base (Hub id or local dir), a NeMo ASR `.nemo`
(`adapted_model.nemo`) or an ASR Hub id (nvidia/parakeet-tdt-0.6b-v2).

Long-form audio, cut as the family's `chunk_policy` says: Canary-Qwen was trained on <= 40 s and degrades beyond it,
so SALM audio longer than 40 s is cut into 30 s chunks that overlap by 10 s (the setting the public PriMock57
leaderboard used); Parakeet-TDT handles long audio natively and is only chunked beyond 20 minutes. Neighbouring chunk transcripts are merged on their
shared words: inside the overlap we look for the longest common run of (normalised) words between the end of the
previous chunk and the start of the next and cut both at the middle of that run, so words the model cut off at a
chunk edge are taken from the chunk that heard them whole. When no run of >= 2 words is found (silence, a garbled
edge), the cut falls at the middle of the overlap in time, estimated from each chunk's speaking rate. Each boundary
records which rule was used (`merge`: "words" | "time").
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Optional

import soundfile as sf

from medasr.audio import SAMPLE_RATE, read_audio
from medasr.data.manifest import read_manifest, write_manifest
from medasr.errors import InputError
from medasr.families import FAMILIES, family
from medasr.families.base import ChunkPolicy, Decoder, Loaded
from medasr.prompts import AUDIO_TAG

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus"}
SRT_MAX_WORDS = 12


POLICIES = {kind: fam.chunk_policy for kind, fam in FAMILIES.items()}  # each family says how it cuts long audio


def plan_chunks(duration_s: float, policy: ChunkPolicy) -> list[tuple[float, float]]:
    """[(start, end)] seconds covering the audio; one span when it fits in a single pass. The last chunk is pulled
    back to end exactly at the end of the audio (so it is full length and overlaps its neighbour more)."""
    if duration_s <= policy.max_single_s:
        return [(0.0, duration_s)]
    step = policy.chunk_s - policy.overlap_s
    n = math.ceil((duration_s - policy.overlap_s) / step)
    spans = []
    for i in range(n):
        start = min(i * step, duration_s - policy.chunk_s)
        spans.append((round(start, 3), round(min(start + policy.chunk_s, duration_s), 3)))
    return spans


def _norm(w: str) -> str:
    return re.sub(r"[^\w']", "", w.lower())


@dataclass
class Boundary:
    rule: str  # words | time
    matched_words: int


def merge_chunk_texts(chunks: list[tuple[float, float, str]]) -> tuple[list[list[str]], list[Boundary]]:
    """Merge overlapping chunk transcripts [(start_s, end_s, text)] (in time order). Returns the words each chunk
    contributes (concatenated in order they are the merged transcript) and how each boundary was merged."""
    kept: list[list[str]] = []
    bounds: list[Boundary] = []
    for i, (start, end, text) in enumerate(chunks):
        words = text.split()
        if i == 0:
            kept.append(words)
            continue
        p_start, p_end, p_text = chunks[i - 1]
        overlap = max(0.0, p_end - start)
        prev = kept[-1]
        if overlap <= 0 or not prev or not words:
            kept.append(words)
            bounds.append(Boundary("time", 0))
            continue
        # words expected inside the overlap, from each chunk's own speaking rate; search twice that, plus slack
        est_prev = len(p_text.split()) * overlap / max(p_end - p_start, 1e-6)
        est_next = len(words) * overlap / max(end - start, 1e-6)
        wp = min(len(prev), int(2 * est_prev) + 3)
        wn = min(len(words), int(2 * est_next) + 3)
        tail, head = prev[len(prev) - wp:], words[:wn]
        m = SequenceMatcher(None, [_norm(w) for w in tail], [_norm(w) for w in head], autojunk=False).find_longest_match(
            0, len(tail), 0, len(head))
        if m.size >= 2:
            k = m.size // 2
            kept[-1] = prev[: len(prev) - wp + m.a + k]
            kept.append(words[m.b + k:])
            bounds.append(Boundary("words", m.size))
        else:
            kept[-1] = prev[: max(0, len(prev) - round(est_prev / 2))]
            kept.append(words[round(est_next / 2):])
            bounds.append(Boundary("time", 0))
    return kept, bounds


def collect_inputs(inputs: list[Path]) -> list[dict]:
    """Files, folders (searched recursively for audio) and NeMo manifests (.json/.jsonl lines with audio_filepath)
    → rows {audio_filepath, ...manifest fields}. Missing paths are an error naming them."""
    rows: list[dict] = []
    missing = [str(i) for i in inputs if not i.exists()]
    if missing:
        raise FileNotFoundError(f"audio not found: {', '.join(missing)}")
    for i in inputs:
        if i.is_dir():
            found = sorted(f for f in i.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"{i}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this folder")
            rows += [{"audio_filepath": str(f)} for f in found]
        elif i.suffix.lower() in (".json", ".jsonl"):
            rows += read_manifest(i, required=("audio_filepath",))
        elif i.suffix.lower() in AUDIO_EXTENSIONS:
            rows.append({"audio_filepath": str(i)})
        else:
            raise InputError(f"{i}: not audio ({', '.join(sorted(AUDIO_EXTENSIONS))}), a folder or a .json manifest")
    return rows


def model_decoder(loaded: Loaded, batch_size: int, max_new_tokens: int, prompt: Optional[str] = None,
                  static_cache: bool = False) -> Decoder:
    """The loaded model's family decodes (SALM: `static_cache`, eval.static_cache, a fixed-size KV cache that lets
    transformers compile the decode step on a GPU; docs/PERFORMANCE.md)."""
    return family(loaded.kind).decoder(loaded, batch_size, max_new_tokens, prompt, static_cache)


def stamp_prompts(rows: list[dict], loaded: Loaded, prompt: Optional[str] = None,
                  by_source: Optional[dict] = None) -> list[dict]:
    """Rows with what the family decodes them under (SALM: each row's `context`, medasr.prompts: the row's own, else
    by source, else the default prompt); `prompt`/`by_source` None: the ones the model was fine-tuned with."""
    by = loaded.prompts_by_source if by_source is None else by_source
    return family(loaded.kind).prompt_rows(rows, prompt or loaded.prompt, by)


@dataclass
class Segment:
    file: int
    index: int
    start: float
    end: float
    text: str = ""
    decode_s: float = 0.0


@dataclass
class FileResult:
    audio_filepath: str
    duration: float
    text: str
    chunks: list[dict] = field(default_factory=list)
    boundaries: list[dict] = field(default_factory=list)

    def to_json(self, model: str = "", policy: Optional[ChunkPolicy] = None) -> dict:
        return {"audio_filepath": self.audio_filepath, "duration": self.duration, "text": self.text, "model": model,
                "chunking": vars(policy) if policy else None, "chunks": self.chunks, "boundaries": self.boundaries}


def transcribe_rows(rows: list[dict], decode: Decoder, policy: ChunkPolicy, batch_size: int, progress=None,
                    label: str = "transcribing") -> list[FileResult]:
    """Plan chunks for every file, decode all chunks longest-first in batches, merge each file's chunks.
    `progress`: a rich Progress to show a bar in (chunks done / planned)."""
    durations = [sf.info(r["audio_filepath"]).duration for r in rows]
    segs: list[Segment] = []
    for fi, d in enumerate(durations):
        segs += [Segment(fi, ci, s, e) for ci, (s, e) in enumerate(plan_chunks(d, policy))]
    order = sorted(segs, key=lambda s: -(s.end - s.start))
    task = progress.add_task(f"{label} ({len(rows)} files, {len(segs)} chunks)", total=len(segs)) if progress else None
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        audios = [read_audio(rows[s.file]["audio_filepath"], SAMPLE_RATE, s.start, s.end) for s in batch]
        t = time.perf_counter()
        texts = decode(audios, [rows[s.file].get("context") for s in batch])
        dt = time.perf_counter() - t
        total = sum(len(a) for a in audios) or 1
        for s, a, txt in zip(batch, audios, texts):
            s.text, s.decode_s = txt, dt * len(a) / total  # batch time shared by audio length
        if progress:
            progress.advance(task, len(batch))
    results = []
    for fi, r in enumerate(rows):
        mine = sorted((s for s in segs if s.file == fi), key=lambda s: s.index)
        kept, bounds = merge_chunk_texts([(s.start, s.end, s.text) for s in mine])
        chunks = [{"start": s.start, "end": s.end, "text": s.text, "kept": " ".join(k), "decode_s": round(s.decode_s, 4)}
                  for s, k in zip(mine, kept)]
        # a single pass is returned verbatim (the merge re-joins words with single spaces)
        text = mine[0].text if len(mine) == 1 else " ".join(w for k in kept for w in k)
        results.append(FileResult(r["audio_filepath"], round(durations[fi], 3), text, chunks, [vars(b) for b in bounds]))
    return results


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def to_srt(res: FileResult) -> str:
    """Cues from each chunk's kept words over the part of the chunk it owns (overlaps split at their middle), at most
    12 words per cue with times interpolated by word position: chunk-level accuracy, not word alignment."""
    cues = []
    ch = res.chunks
    for i, c in enumerate(ch):
        lo = (c["start"] + ch[i - 1]["end"]) / 2 if i > 0 and ch[i - 1]["end"] > c["start"] else c["start"]
        hi = (c["end"] + ch[i + 1]["start"]) / 2 if i + 1 < len(ch) and ch[i + 1]["start"] < c["end"] else c["end"]
        words = c["kept"].split()
        for j in range(0, len(words), SRT_MAX_WORDS):
            part = words[j : j + SRT_MAX_WORDS]
            a = lo + (hi - lo) * j / len(words)
            b = lo + (hi - lo) * (j + len(part)) / len(words)
            cues.append((a, b, " ".join(part)))
    return "".join(f"{n}\n{_srt_time(a)} --> {_srt_time(b)}\n{t}\n\n" for n, (a, b, t) in enumerate(cues, 1))


def write_outputs(results: list[FileResult], rows: list[dict], out_dir: Path, formats: list[str], model: str,
                  policy: ChunkPolicy) -> list[Path]:
    """Per file: <stem>.txt / .json / .srt (stems made unique); plus transcripts.json, a NeMo manifest with pred_text
    (the input rows' fields kept, so a manifest with `text` can go straight to `medasr score`)."""
    bad = set(formats) - {"txt", "json", "srt"}
    if bad:
        raise InputError(f"unknown output format(s) {sorted(bad)}: use txt, json, srt")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for row, res in zip(rows, results):
        stem = Path(res.audio_filepath).stem
        n, name = 1, stem
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        if "txt" in formats:
            written.append(out_dir / f"{name}.txt")
            written[-1].write_text(res.text + "\n")
        if "json" in formats:
            written.append(out_dir / f"{name}.json")
            written[-1].write_text(json.dumps(res.to_json(model, policy) | (
                {"prompt": f"{row['context']} {AUDIO_TAG}"} if "context" in row else {}), indent=2))
        if "srt" in formats:
            written.append(out_dir / f"{name}.srt")
            written[-1].write_text(to_srt(res))
    manifest = out_dir / "transcripts.json"
    write_manifest(manifest, [r | {"pred_text": res.text, "duration": res.duration} for r, res in zip(rows, results)])
    return written + [manifest]
