"""Generic (non-medical) English speech for pretraining the `mini` base: WordNet sentences spoken by synthetic voices
(espeak-ng or Kokoro, medasr.voices).

Train sentences are spoken by the pretraining voices (one voice, rate and noise level per sentence, seeded); a disjoint
set of held-out sentences is spoken twice: by a pretraining voice (new text) and by a voice never used in pretraining
(new text *and* new speaker, the harder number). The medical corpus's test voice is kept out of pretraining so the
medical test set stays a new speaker for the mini model too.

A second, neural voice set (Kokoro) can speak the first `neural_train` training sentences again, and the held-out
sentences twice more (a neural training voice; a neural speaker never trained on). Its draws come from their own
seeded generators (training rows, held-out rows), so adding it moves no row of the first set and growing it moves no
earlier row: a base pretrained on espeak-ng alone can be continued on the same plan plus neural speech, and a neural
base on more neural text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE
from medasr.data.manifest import Row
from medasr.data.synth import NOISE_LEVELS, add_noise, speak, synthesize, voice_id
from medasr.voices import held_out_violations, parse_voice


@dataclass
class GenericUtterance:
    id: str
    split: str  # train | heldout_seen_voice | heldout_new_voice, and with neural voices train_neural | heldout_neural_*
    text: str
    voice: str
    rate: int
    noise_level: str
    seed: int


def plan_generic(sentences: list[str], *, seed: int, n_train: int, n_heldout: int, voices: list[str],
                 heldout_voice: str, rates: tuple[int, int], noise_levels: list[str],
                 max_words: int, neural_voices: list[str] = (), neural_train: int = 0,
                 neural_heldout_voice: str = "") -> list[GenericUtterance]:
    """Deterministic plan: held-out sentences are drawn first, so growing n_train never moves them."""
    trained = [*voices, *neural_voices] if neural_train else list(voices)
    for held in [heldout_voice, *([neural_heldout_voice] if neural_train else [])]:
        if held_out_violations(trained, [held]):
            raise ValueError(f"held-out voice {held!r} shares a speaker with the pretraining voices; pick one "
                             f"outside {trained}")
    if neural_train and not (neural_voices and neural_heldout_voice):
        raise ValueError("pretrain.neural_train > 0 needs pretrain.neural_voices and pretrain.neural_heldout_voice")
    pool = [s for s in sentences if len(s.split()) <= max_words]
    rng = random.Random(seed)
    rng.shuffle(pool)
    if len(pool) < n_heldout + 1:
        raise ValueError(f"only {len(pool)} sentences of ≤{max_words} words; need more than {n_heldout} held out")
    heldout, train = pool[:n_heldout], pool[n_heldout : n_heldout + n_train]
    plan: list[GenericUtterance] = []

    def add(split: str, i: int, text: str, voice: str, noise: str) -> None:
        plan.append(GenericUtterance(f"{split}-{i:06d}", split, text, voice, rng.randint(*rates), noise,
                                     rng.randrange(2**31)))

    for i, s in enumerate(train):
        add("train", i, s, rng.choice(voices), rng.choice(noise_levels))
    for i, s in enumerate(heldout):  # held-out audio is clean: it measures recognition, not noise robustness
        add("heldout_seen_voice", i, s, rng.choice(voices), "clean")
        add("heldout_new_voice", i, s, heldout_voice, "clean")
    if neural_train:
        # their own streams: the rows above are the same with or without them, and growing neural_train moves no
        # held-out neural row (nor any earlier neural training row)
        rng = random.Random(f"{seed}-neural")
        for i, s in enumerate(train[:neural_train]):
            add("train_neural", i, s, rng.choice(neural_voices), rng.choice(noise_levels))
        rng = random.Random(f"{seed}-neural-heldout")
        for i, s in enumerate(heldout):
            add("heldout_neural_seen_voice", i, s, rng.choice(neural_voices), "clean")
            add("heldout_neural_new_voice", i, s, neural_heldout_voice, "clean")
    return plan


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
