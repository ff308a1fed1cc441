"""Generic (non-medical) English speech: WordNet sentences spoken by synthetic voices (espeak-ng or Kokoro,
medasr.voices), clean or noisy, one seeded draw per sentence. The synthetic build's forgetting slice
(`data.synth.generic_test_rows`, medasr/data/build.py): does the fine-tune make the model forget general speech?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE
from medasr.data.manifest import Row
from medasr.data.synth import NOISE_LEVELS, add_noise, speak, synthesize, voice_id
from medasr.voices import parse_voice


@dataclass
class GenericUtterance:
    id: str
    split: str  # the split it is planned for (the audio lands in audio_dir/<split>/)
    text: str
    voice: str
    rate: int
    noise_level: str
    seed: int


def render(u: GenericUtterance, audio_dir: Path) -> Row:
    path = audio_dir / u.split / f"{u.id}.wav"
    if not path.exists():  # resumable: a re-run only speaks what is missing
        audio = add_noise(speak(u.text, u.voice, u.rate), NOISE_LEVELS[u.noise_level], np.random.default_rng(u.seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
        tmp.replace(path)
    info = sf.info(path)
    return Row(audio_filepath=str(path.resolve()), duration=round(info.frames / SAMPLE_RATE, 4), text=u.text,
               voice_id=voice_id(u.voice, u.rate), noise_level=u.noise_level,
               source=f"generic-{parse_voice(u.voice).engine}", id=u.id, split=u.split)


def synthesize_generic(plan: list[GenericUtterance], audio_dir: Path, workers: int = 2, progress=None) -> list[Row]:
    return synthesize(plan, audio_dir, workers, progress, render=render)
