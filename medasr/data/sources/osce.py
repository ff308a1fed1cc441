"""`osce`: simulated OSCE patient–physician interviews (Fareez et al., Sci Data 2022; HF yfyeung/medical, CC BY 4.0).

Parsing is Lhotse's own recipe (`lhotse.recipes.medical.prepare_medical`): upstream ships
`medical_{train,dev,test}.info` with lines `audio/<ID>.mp3[<start>,<end>]<TAB><TEXT IN CAPS>` (no comma before `[`)
and the MP3s in `audio.tar.gz`. Before handing the files to Lhotse, each line is checked against the same grammar so a
bad line is reported as file:line (Lhotse's parser fails inside a worker process without saying which line).

Each MP3 is decoded once and cut at the supervisions' times; the cut WAV is the row's whole audio, so rows carry no
`offset` (NeMo would apply it to the cut file). The position in the recording is kept as `source_start`/`source_end`.

Target style: upstream text is ALL CAPS without punctuation, while Canary-Qwen writes cased, punctuated English. We
lower-case it (nothing is invented: no guessed capitals or punctuation) and keep the upstream text in `text_raw`; the
canary-qwen-2.5b preset gives OSCE rows their own prompt that names this style, so the model learns the plain style
under that prompt and keeps its cased style under the release prompt (docs/DATASETS.md). The conversation id
(RES0001, GAS0012, …) is the speaker group: both speakers of one interview always land in the same split.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from pathlib import Path

from rich.progress import track

from medasr.data.sources.common import SAMPLE_RATE, SegmentWriter, SourceError, SourceResult, decode, hf_download, tag_terms

REPO = "yfyeung/medical"
SPLITS = {"train": "train", "dev": "val", "test": "test"}
FORMAT = "audio/NAME.mp3[start,end]<TAB>TEXT"


def _fields(line: str) -> list[str]:
    """Lhotse's `_parse_utterance` split: ',' and '[' become field breaks, ']' is dropped, then tabs separate."""
    return line.replace(",", "\t").replace("[", "\t").replace("]", "").split("\t")


def check_info(path: Path) -> list[str]:
    """Every line must split the way Lhotse's `_parse_utterance` splits it (',' and '[' become field breaks, ']' is
    dropped, then 4 tab-separated fields: path, start, end, text). Returns the lines, blank ones left out."""
    out: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = _fields(line)
        ok = len(fields) == 4
        if ok:
            try:
                ok = 0 <= float(fields[1]) < float(fields[2])
            except ValueError:
                ok = False
        if not ok:
            raise SourceError(f"{path}:{lineno}: not of the form '{FORMAT}' (what Lhotse's medical recipe parses; "
                              f"the text may not contain ',' '[' or a tab): {line[:80]!r}")
        out.append(line)
    if not out:
        raise SourceError(f"{path}: empty; Lhotse's medical recipe needs lines in every split ({FORMAT})")
    return out


def _audio_of(line: str) -> str:
    return _fields(line)[0]


def _stage_for_lhotse(root: Path, lines: dict[str, list[str]], stage: Path, res: SourceResult) -> dict[str, int]:
    """A copy of the corpus layout for Lhotse's recipe: .info files without exact duplicate lines (its supervision ids
    hash the line, so a repeated line fails its validation) or lines whose MP3 is missing (counted), audio/ linked.
    Returns the lines handed to Lhotse per split."""
    stage.mkdir(parents=True, exist_ok=True)
    kept: dict[str, int] = {}
    for up, ls in lines.items():
        unique = list(dict.fromkeys(ls))
        res.dropped["duplicate line in .info"] += len(ls) - len(unique)
        present = [ln for ln in unique if (root / _audio_of(ln)).is_file()]
        res.dropped["audio file missing"] += len(unique) - len(present)
        if not present:
            raise SourceError(f"osce: no audio under {root} for any line of medical_{up}.info")
        (stage / f"medical_{up}.info").write_text("\n".join(present) + "\n", encoding="utf-8")
        kept[up] = len(present)
    link = stage / "audio"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((root / "audio").resolve(), target_is_directory=True)
    return kept


def _ensure_audio(root: Path) -> None:
    if (root / "audio").is_dir():
        return
    tar = root / "audio.tar.gz"
    if not tar.exists():
        raise SourceError(f"osce: {root} has neither audio/ nor audio.tar.gz")
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")


def load_osce(out_dir: Path, local: Path | None = None) -> SourceResult:
    from lhotse.recipes.medical import prepare_medical

    root = Path(local) if local else hf_download(REPO, "osce", ["medical_*.info", "audio.tar.gz", "README.md"])
    missing = [f"medical_{s}.info" for s in SPLITS if not (root / f"medical_{s}.info").exists()]
    if missing:
        raise SourceError(f"osce: {root} lacks {', '.join(missing)} (expected the {REPO} layout)")
    lines = {up: check_info(root / f"medical_{up}.info") for up in SPLITS}
    _ensure_audio(root)
    res = SourceResult()
    stage = out_dir / "osce-lhotse"
    handed = _stage_for_lhotse(root, lines, stage, res)
    manifests = prepare_medical(stage, num_jobs=1)
    writer = SegmentWriter(out_dir / "osce", res)
    for up, split in SPLITS.items():
        recordings, sups = manifests[up]["recordings"], manifests[up]["supervisions"]
        if len(sups) < handed[up]:
            res.dropped["dropped by Lhotse's fix_manifests"] += handed[up] - len(sups)
        by_rec: dict[str, list] = defaultdict(list)
        for s in sups:
            by_rec[s.recording_id].append(s)
        for rec_id, segs in track(sorted(by_rec.items()), description=f"osce {up}: cutting segments"):
            try:
                audio = decode(Path(recordings[rec_id].sources[0].source))
            except SourceError:
                res.dropped["undecodable audio"] += len(segs)
                continue
            for s in sorted(segs, key=lambda s: s.start):
                if not s.text.strip():
                    res.dropped["empty text"] += 1
                    continue
                start, end = s.start, s.start + s.duration
                seg = audio[int(round(start * SAMPLE_RATE)) : int(round(end * SAMPLE_RATE))]
                writer.add(split, f"osce-{rec_id}-{start:.2f}-{end:.2f}", seg,
                           {"text": " ".join(s.text.lower().split()), "text_raw": s.text, "speaker": rec_id,
                            "source": "osce", "source_start": round(start, 3), "source_end": round(end, 3),
                            "origin": f"medical_{up}.info"})
    for rows in res.splits.values():
        tag_terms(rows)
    res.dropped = +res.dropped  # only the reasons that happened
    res.notes.append("parsed with Lhotse's recipe lhotse.recipes.medical; targets lower-cased upstream text")
    return res
