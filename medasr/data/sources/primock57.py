"""`primock57`: 57 mock GP consultations (babylonhealth/primock57, CC BY 4.0), the real held-out test of the POC.

Upstream layout: `audio/<day>_<consultation>_{doctor,patient}.wav` (16 kHz, one channel per speaker) and
`transcripts/<same stem>.TextGrid` (one utterance per interval; the tier is named "Speaker" in most files, so the role
comes from the file name). The audio is stored with Git LFS: a clone without `git lfs pull` holds ~130-byte pointer
files, which are refused with the fix. Transcriber tags are cleaned: `<UNSURE>x</UNSURE>` keeps x; `<UNIN/>`
(unintelligible) and `<INAUDIBLE_SPEECH/>` are removed, as is any other `<…/>` tag; intervals left empty (381 of
7,108 upstream, 366 of them `<INAUDIBLE_SPEECH/>` only) are dropped and counted. The two consultations that the public
PriMock57 leaderboard (Omi-Health medical-STT-eval) excludes are flagged `leaderboard_excluded`.

Each utterance is cut into its own WAV, which is the row's whole audio: rows carry no `offset` (NeMo's reader would
apply it to the cut file). The position in the consultation is kept as `source_start`/`source_end`.

`primock57-consultations` is the leaderboard's unit instead (Omi-Health/medical-STT-eval, "long-form"): one row per
consultation, its two channels mixed to one (as babylonhealth/primock57's `scripts/mix_audio.sh`, `sox -m`: each
input scaled by 1/2) and cut at the end of the last annotated utterance; the reference is both speakers' utterances
ordered by start time, tags stripped as Babylon's `textgrid_to_transcript.py` does, joined by spaces (byte-identical to
the leaderboard's `data/cleaned_transcripts/*_pure_text.txt`, tested on vendored files); its two excluded
consultations are left out and counted. The leaderboard's WER is the mean of per-consultation WERs: `wer_mean_utt`
of such a manifest (`wer` pools the words).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from rich.progress import track

from medasr.data.sources.common import SAMPLE_RATE, SegmentWriter, SourceError, SourceResult, decode, tag_terms

GIT_URL = "https://github.com/babylonhealth/primock57"
LEADERBOARD_EXCLUDED = {"day1_consultation07", "day3_consultation03"}
_TAGS = re.compile(r"</?UNSURE>|<[A-Z_]+/>", re.IGNORECASE)  # <UNIN/>, <INAUDIBLE_SPEECH/> and any other empty tag
LFS_POINTER = b"version https://git-lfs"


def clean_text(text: str) -> str:
    """Babylon's `strip_transcript_tags`: tags deleted (not replaced by a space), whitespace collapsed."""
    return " ".join(_TAGS.sub("", text).split())


def _clone() -> Path:
    if shutil.which("git") is None or subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0:
        raise SourceError("primock57: the audio is stored with Git LFS and `git lfs` is not installed: run "
                          "scripts/setup.sh (it installs git-lfs), or apt-get install git-lfs; or pass --local PATH "
                          "to a copy cloned with its LFS audio")
    dest = Path(tempfile.mkdtemp(prefix="primock57-"))
    try:
        subprocess.run(["git", "clone", "--depth", "1", GIT_URL, str(dest)], check=True, capture_output=True, timeout=1800)
        subprocess.run(["git", "lfs", "pull"], cwd=dest, check=True, capture_output=True, timeout=3600)
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise SourceError(
            f"primock57: could not fetch {GIT_URL} with git + git-lfs ({type(e).__name__}). "
            "Clone it elsewhere (git lfs install; git clone ...) and pass --local PATH."
        ) from e
    return dest


def _utterances(grid: Path) -> list[tuple[float, float, str]]:
    from praatio import textgrid

    tg = textgrid.openTextgrid(str(grid), includeEmptyIntervals=False)
    return [(start, end, label) for name in tg.tierNames for start, end, label in tg.getTier(name).entries]


def _check_audio(wav: Path, root: Path) -> None:
    with open(wav, "rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise SourceError(f"primock57: {wav} is a Git LFS pointer, not audio: run `git lfs pull` in {root} "
                              "(git-lfs installed), then build again")


def consultation_reference(doctor: Path, patient: Path) -> tuple[str, float]:
    """The leaderboard's reference for one consultation and where its audio ends: both speakers' utterances by start
    time (stable: the doctor's first on a tie), tags stripped, empty ones dropped, joined by single spaces."""
    utts = sorted(_utterances(doctor) + _utterances(patient), key=lambda u: u[0])
    return " ".join(t for t in (clean_text(label) for _, _, label in utts) if t), max((e for _, e, _ in utts), default=0.0)


def load_primock57_consultations(out_dir: Path, local: Path | None = None) -> SourceResult:
    root = Path(local) if local else _clone()
    consultations = sorted({g.stem.rsplit("_", 1)[0] for g in (root / "transcripts").glob("*.TextGrid")})
    if not consultations:
        raise SourceError(f"primock57: no transcripts/*.TextGrid under {root}")
    res = SourceResult()
    writer = SegmentWriter(out_dir / "primock57-consultations", res, max_seconds=float("inf"))
    for c in track(consultations, description="primock57: mixing consultations"):
        if c in LEADERBOARD_EXCLUDED:
            res.dropped["excluded by the leaderboard"] += 1
            continue
        files = {role: (root / "transcripts" / f"{c}_{role}.TextGrid", root / "audio" / f"{c}_{role}.wav")
                 for role in ("doctor", "patient")}
        if not all(g.exists() and w.exists() for g, w in files.values()):
            res.dropped["a channel's audio or transcript missing"] += 1
            continue
        for _, wav in files.values():
            _check_audio(wav, root)
        text, end = consultation_reference(files["doctor"][0], files["patient"][0])
        n = int(round(end * SAMPLE_RATE))
        doctor, patient = (np.pad(a[:n], (0, max(0, n - len(a)))) for a in (decode(files[r][1]) for r in ("doctor", "patient")))
        writer.add("test", f"primock57-{c}", (doctor + patient) / 2,
                   {"text": text, "consultation": c, "source": "primock57-consultation", "unit": "consultation"})
    for rows in res.splits.values():
        tag_terms(rows)
    res.notes.append(f"long-form: one row per consultation, channels mixed; excluded as the leaderboard does: "
                     f"{', '.join(sorted(LEADERBOARD_EXCLUDED))}")
    return res


def load_primock57(out_dir: Path, local: Path | None = None) -> SourceResult:
    from praatio import textgrid

    root = Path(local) if local else _clone()
    grids = sorted((root / "transcripts").glob("*.TextGrid"))
    if not grids:
        raise SourceError(f"primock57: no transcripts/*.TextGrid under {root}")
    res = SourceResult()
    writer = SegmentWriter(out_dir / "primock57", res)
    for grid in track(grids, description="primock57: cutting utterances"):
        stem = grid.stem  # day1_consultation01_doctor
        consultation, role = stem.rsplit("_", 1)
        wav = root / "audio" / f"{stem}.wav"
        if not wav.exists():
            res.dropped["audio file missing"] += 1
            continue
        _check_audio(wav, root)
        audio = decode(wav)
        tg = textgrid.openTextgrid(str(grid), includeEmptyIntervals=False)
        for tier_name in tg.tierNames:
            for start, end, label in tg.getTier(tier_name).entries:
                text = clean_text(label)
                if not text:
                    res.dropped["only transcriber tags / empty"] += 1
                    continue
                seg = audio[int(round(start * SAMPLE_RATE)) : int(round(end * SAMPLE_RATE))]
                writer.add("test", f"primock57-{stem}-{start:.3f}", seg,
                           {"text": text, "text_raw": label, "speaker": f"{consultation}_{role}", "role": role,
                            "consultation": consultation, "source": "primock57",
                            "source_start": round(start, 4), "source_end": round(end, 4),
                            "leaderboard_excluded": consultation in LEADERBOARD_EXCLUDED})
    for rows in res.splits.values():
        tag_terms(rows)
    res.notes.append(f"flagged leaderboard_excluded: {', '.join(sorted(LEADERBOARD_EXCLUDED))}")
    return res
