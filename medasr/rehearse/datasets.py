"""Replicas of the real presets' datasets in their upstream layouts, with synthetic speech.

- PriMock57 (babylonhealth/primock57, CC BY 4.0): the real TextGrids of three consultations, vendored unchanged in
  `medasr/resources/primock57/` (commit cd2ac707, with the licence), and 16 kHz mono WAVs per channel in which
  espeak-ng speech sits inside each TextGrid interval (the upstream audio is Git LFS, not fetchable here).
- yfyeung/medical (OSCE interviews, CC BY 4.0): `medical_{train,dev,test}.info` in the real line format
  (`audio/NAME.mp3[start,end]<TAB>TEXT IN CAPS`, as Lhotse's recipe parses it) and `audio.tar.gz` holding `audio/*.mp3`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE
from medasr.data.lexicon import core_lexicon
from medasr.data.sources.primock57 import clean_text
from medasr.data.synth import speak
from medasr.data.templates import TEMPLATES, render

PRIMOCK57_SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "primock57"
PRIMOCK57_COMMIT = "cd2ac707ad03cb4d2531f4ec6b90c659bf4357c5"


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """Speech squeezed (linear resampling) into n samples when longer; a replica needs timing, not natural pitch."""
    if len(audio) <= n:
        return audio
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)


def primock57_replica(out: Path, consultations: list[str] | None = None, voice_by_role: dict | None = None) -> Path:
    """out/transcripts/*.TextGrid (the vendored real ones) + out/audio/*.wav whose speech sits in each interval."""
    from praatio import textgrid

    voice_by_role = voice_by_role or {"doctor": "en-gb", "patient": "en-us+f3"}
    grids = sorted(PRIMOCK57_SAMPLE.glob("*.TextGrid"))
    if consultations:
        grids = [g for g in grids if g.stem.rsplit("_", 1)[0] in consultations]
    (out / "transcripts").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    shutil.copy(PRIMOCK57_SAMPLE / "LICENSE.md", out / "LICENSE.md")
    for grid in grids:
        shutil.copy(grid, out / "transcripts" / grid.name)
        wav = out / "audio" / f"{grid.stem}.wav"
        if wav.exists():
            continue
        tg = textgrid.openTextgrid(str(grid), includeEmptyIntervals=False)
        audio = np.zeros(int(round(tg.maxTimestamp * SAMPLE_RATE)), np.float32)
        voice = voice_by_role[grid.stem.rsplit("_", 1)[1]]
        for tier in tg.tierNames:
            for start, end, label in tg.getTier(tier).entries:
                a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
                if text := clean_text(label):
                    speech = _fit(speak(text, voice, 190), b - a)
                    audio[a : a + len(speech)] = speech
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
    return out


def osce_replica(out: Path, conversations: dict[str, list[str]] | None = None, seed: int = 0) -> Path:
    """out/medical_{train,dev,test}.info + out/audio.tar.gz (audio/<ID>.mp3), the yfyeung/medical layout.
    Conversations default to 4 train / 2 dev / 2 test interviews of 6 turns each (physician and patient voices)."""
    conversations = conversations or _default_conversations(seed)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        audio_dir = Path(tmp) / "audio"
        audio_dir.mkdir()
        for split, ids in (("train", list(conversations)[:4]), ("dev", list(conversations)[4:6]),
                           ("test", list(conversations)[6:])):
            lines = []
            for cid in ids:
                parts, t = [np.zeros(int(0.4 * SAMPLE_RATE), np.float32)], 0.4
                for i, sentence in enumerate(conversations[cid]):
                    speech = speak(sentence.lower(), ("en-gb", "en-us+f3")[i % 2], 170)
                    lines.append(f"audio/{cid}.mp3[{t:.2f},{t + len(speech) / SAMPLE_RATE:.2f}]\t{sentence.upper()}")
                    parts += [speech, np.zeros(int(0.6 * SAMPLE_RATE), np.float32)]
                    t += len(speech) / SAMPLE_RATE + 0.6
                wav = Path(tmp) / f"{cid}.wav"
                sf.write(wav, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
                subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-b:a", "64k",
                                str(audio_dir / f"{cid}.mp3")], check=True)
            (out / f"medical_{split}.info").write_text("\n".join(lines) + "\n", encoding="utf-8")
        with tarfile.open(out / "audio.tar.gz", "w:gz") as t:
            t.add(audio_dir, arcname="audio")
    return out


def _default_conversations(seed: int) -> dict[str, list[str]]:
    """Eight interviews (RES/GAS/CAR/MSK ids, as upstream names them) of lexicon-term sentences; punctuation removed
    as upstream has none."""
    rng = random.Random(seed)
    terms = core_lexicon().terms
    convs = {}
    for n, prefix in enumerate(["RES", "GAS", "CAR", "MSK", "RES", "GAS", "CAR", "DER"], start=1):
        sents = []
        for _ in range(6):
            term = rng.choice(terms)
            template = rng.choice(TEMPLATES["history"][term.entity_category])
            sents.append("".join(c for c in render(template, term.term) if c.isalnum() or c in " '"))
        convs[f"{prefix}{n:04d}"] = sents
    return convs
