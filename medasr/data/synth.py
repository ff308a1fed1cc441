"""Term-targeted synthetic speech: lexicon → sentences → espeak-ng voices → noise → 16 kHz mono WAV + manifest rows.

Split design (what makes the test set honest):
- a seeded share of every category's terms is held out: those terms appear **only** in test (`term_seen: false`);
- seen terms get train rows (training voices), validation rows (training voices, other sentences) and test rows;
- every term's test rows, seen or held out, are spoken half by a test-only voice (never in training) and half by a
  training voice, so seen vs held-out terms are compared on the same mix of speakers, and the speaker effect is
  reported on its own (`speaker_seen`, set by the build) instead of hiding inside the term effect.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE, to_mono_rate
from medasr.data.lexicon import Lexicon, Term
from medasr.data.templates import CONTEXT_TYPES, TEMPLATES, render

NOISE_LEVELS = {"clean": None, "snr15": 15.0, "snr5": 5.0}


class SynthError(RuntimeError):
    pass


@dataclass
class Utterance:
    id: str
    split: str
    text: str
    term: Term
    term_seen: bool
    voice_id: str
    rate: int
    noise_level: str
    context_type: str
    seed: int


def espeak_available() -> str:
    exe = shutil.which("espeak-ng")
    if not exe:
        raise SynthError("espeak-ng not found: run scripts/setup.sh (or apt-get install espeak-ng)")
    return exe


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=float)
    f[0] = 1.0
    spec = spec / np.sqrt(f)
    spec[0] = 0.0  # no DC: noise power must equal its variance for the SNR to be exact
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def add_noise(audio: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    if snr_db is None:
        return audio
    p_sig = float(np.mean(audio**2)) + 1e-12
    noise = _pink_noise(len(audio), rng) * np.sqrt(p_sig / 10 ** (snr_db / 10))
    out = audio + noise
    peak = np.max(np.abs(out))
    return out / peak * 0.95 if peak > 0.95 else out


def speak(text: str, voice: str, rate: int) -> np.ndarray:
    """espeak-ng → float32 mono at 16 kHz."""
    exe = espeak_available()
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        proc = subprocess.run([exe, "-v", voice, "-s", str(rate), "-w", tmp.name, text], capture_output=True)
        if proc.returncode != 0:
            raise SynthError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace')}")
        audio, sr = sf.read(tmp.name, dtype="float32")
    return to_mono_rate(audio, sr)


def plan_corpus(
    lexicon: Lexicon,
    *,
    seed: int,
    train_voices: list[str],
    test_voices: list[str],
    unseen_fraction: float,
    train_per_term: int,
    val_per_term: int,
    test_per_term: int,
    unseen_test_per_term: int,
    rates: tuple[int, int],
    noise_levels: list[str],
) -> list[Utterance]:
    """Deterministic plan of every utterance (text, voice, noise) before any audio is made."""
    rng = random.Random(seed)
    plan: list[Utterance] = []
    counters: dict[str, int] = {"train": 0, "val": 0, "test": 0}

    def add(split: str, term: Term, seen: bool, voices: list[str], used: set) -> None:
        options = [(c, tpl) for c in CONTEXT_TYPES for tpl in TEMPLATES[c][term.entity_category] if (c, tpl) not in used]
        ctx, tpl = rng.choice(options or [(c, tpl) for c in CONTEXT_TYPES for tpl in TEMPLATES[c][term.entity_category]])
        used.add((ctx, tpl))
        counters[split] += 1
        plan.append(
            Utterance(
                id=f"{split}-{counters[split]:05d}",
                split=split,
                text=render(tpl, term.term),
                term=term,
                term_seen=seen,
                voice_id=rng.choice(voices),
                rate=rng.randint(*rates),
                noise_level=rng.choice(noise_levels),
                context_type=ctx,
                seed=rng.randrange(2**31),
            )
        )

    for cat, terms in lexicon.by_category().items():
        terms = sorted(terms, key=lambda t: t.term)
        rng.shuffle(terms)
        n_unseen = max(1, round(len(terms) * unseen_fraction)) if terms and unseen_fraction > 0 else 0
        for i, term in enumerate(terms):
            used: set = set()  # no sentence repeated across a term's splits
            if i < n_unseen:
                for k in range(unseen_test_per_term):
                    add("test", term, False, test_voices if k % 2 == 0 else train_voices, used)
                continue
            for _ in range(train_per_term):
                add("train", term, True, train_voices, used)
            for _ in range(val_per_term):
                add("val", term, True, train_voices, used)
            for k in range(test_per_term):
                add("test", term, True, test_voices if k % 2 == 0 else train_voices, used)
    return plan


def render_utterance(u: Utterance, audio_dir: Path) -> dict:
    audio = speak(u.text, u.voice_id, u.rate)
    audio = add_noise(audio, NOISE_LEVELS[u.noise_level], np.random.default_rng(u.seed))
    path = audio_dir / u.split / f"{u.id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return {
        "audio_filepath": str(path.resolve()),
        "duration": round(len(audio) / SAMPLE_RATE, 4),
        "text": u.text,
        "term": u.term.term,
        "entity_category": u.term.entity_category,
        "term_seen": u.term_seen,
        "voice_id": f"espeak-ng:{u.voice_id}:rate{u.rate}",
        "noise_level": u.noise_level,
        "context_type": u.context_type,
        "source": "synthetic-espeak",
        "id": u.id,
    }


def synthesize(plan: list, audio_dir: Path, workers: int = 2, progress=None, render=None) -> list[dict]:
    """Render every planned utterance (`render(u, audio_dir)` → manifest row; default: the medical corpus's) in order,
    espeak-ng processes in parallel threads."""
    espeak_available()
    render = render or render_utterance
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(lambda u: render(u, audio_dir), plan):
            rows.append(row)
            if progress is not None:
                progress()
    return rows
