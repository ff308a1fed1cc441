"""Term-targeted synthetic speech: lexicon → sentences → espeak-ng voices → noise → 16 kHz mono WAV + manifest rows.

Split design (what makes the test set honest; three factors, each reported apart by the evaluation):
- terms: a seeded share of every category's terms is held out: those terms appear **only** in test (`term_seen: false`);
- carriers: training, validation and test rows draw their sentences from three disjoint pools (medasr.data.templates),
  so the test measures the term in a sentence the model never heard (`carrier_seen: false`); `test_seen_carrier_per_term`
  extra test rows per term reuse a training carrier (`carrier_seen: true`) to measure what memorised patterns are worth;
- voices: every term's test rows are spoken alternately by a test-only voice (a speaker *and* an accent never used in
  pretraining or fine-tuning) and by a training voice, so seen vs held-out terms see the same mix of speakers and the
  speaker effect (`speaker_seen`, set by the build) does not hide inside the term effect.
Validation rows (seen terms, training voices) use the validation carriers, so every recipe choice made on them
(checkpoint, steps, data mix) rewards generalising to new sentences, not remembering the training ones.
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
from medasr.data.templates import TEMPLATES, TEST_TEMPLATES, VAL_TEMPLATES, pool, render

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
    carrier_seen: bool = True  # the sentence pattern is one of the training carriers
    carrier: str = ""  # the template ("{t}" for the term)


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
    test_seen_carrier_per_term: int = 0,
) -> list[Utterance]:
    """Deterministic plan of every utterance (text, voice, noise) before any audio is made."""
    if set(test_voices) & set(train_voices):
        raise ValueError(f"test voices {sorted(set(test_voices) & set(train_voices))} are also training voices")
    rng = random.Random(seed)
    plan: list[Utterance] = []
    counters: dict[str, int] = {"train": 0, "val": 0, "test": 0}
    carriers = {"train": TEMPLATES, "val": VAL_TEMPLATES, "test": TEST_TEMPLATES}

    def add(split: str, term: Term, seen: bool, voices: list[str], used: set, carrier: str | None = None) -> None:
        carrier = carrier or split
        full = pool(carriers[carrier], term.entity_category)
        options = [o for o in full if o not in used]
        if not options:
            raise ValueError(f"{term.term}: more {carrier} rows per term than the {len(full)} {carrier} carriers of "
                             f"category {term.entity_category} (medasr/data/templates.py); lower the per-term count")
        ctx, tpl = rng.choice(options)
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
                carrier_seen=carrier == "train",
                carrier=tpl,
            )
        )

    for cat, terms in lexicon.by_category().items():
        terms = sorted(terms, key=lambda t: t.term)
        rng.shuffle(terms)
        n_unseen = max(1, round(len(terms) * unseen_fraction)) if terms and unseen_fraction > 0 else 0
        for i, term in enumerate(terms):
            used: set = set()  # no sentence repeated across a term's splits
            seen = i >= n_unseen
            if seen:
                for _ in range(train_per_term):
                    add("train", term, True, train_voices, used)
                for _ in range(val_per_term):
                    add("val", term, True, train_voices, used)
            for k in range(test_per_term if seen else unseen_test_per_term):
                add("test", term, seen, test_voices if k % 2 == 0 else train_voices, used)
            for k in range(test_seen_carrier_per_term):  # the voice alternates across terms as well as rows
                add("test", term, seen, test_voices if (k + i) % 2 == 0 else train_voices, used, carrier="train")
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
        "carrier_seen": u.carrier_seen,
        "carrier": u.carrier,
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
