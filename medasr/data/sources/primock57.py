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
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rich.progress import track

from medasr.data.sources.common import SAMPLE_RATE, SegmentWriter, SourceError, SourceResult, decode, tag_terms

GIT_URL = "https://github.com/babylonhealth/primock57"
LEADERBOARD_EXCLUDED = {"day1_consultation07", "day3_consultation03"}
_TAGS = re.compile(r"</?UNSURE>|<[A-Z_]+/>", re.IGNORECASE)  # <UNIN/>, <INAUDIBLE_SPEECH/> and any other empty tag
LFS_POINTER = b"version https://git-lfs"


def clean_text(text: str) -> str:
    return " ".join(_TAGS.sub(" ", text).split())


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
        with open(wav, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                raise SourceError(f"primock57: {wav} is a Git LFS pointer, not audio: run `git lfs pull` in {root} "
                                  "(git-lfs installed), then build again")
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
