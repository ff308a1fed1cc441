"""Term-targeted synthetic speech: lexicon → sentences → voices (espeak-ng or Kokoro, medasr.voices) → noise →
16 kHz mono WAV + manifest rows.

Synthesis is cached by (engine, voice, rate, the text the engine reads, the engine's own identity: espeak-ng's version
or the Kokoro model's SHA-256) in `MEDASR_TTS_CACHE` (default ~/.cache/medasr/tts), as 24-bit FLAC, so re-runs and
larger builds reuse audio; noise is added after the cache. Kokoro reads `medasr.data.spoken.spoken(text)` (units,
doses, abbreviations as said); espeak-ng reads the written text with its own front end (the published espeak numbers
were made that way). Rows keep the written text as the reference. Kokoro renders in worker processes.

Split design (what makes the test set honest; three factors, each reported apart by the evaluation):
- terms: a seeded share of every category's terms is held out: those terms appear **only** in test (`term_seen: false`);
- carriers: training, validation and test rows draw their sentences from three disjoint pools (medasr.data.templates),
  so the test measures the term in a sentence the model never heard (`carrier_seen: false`); `test_seen_carrier_per_term`
  extra test rows per term reuse a training carrier (`carrier_seen: true`) to measure what memorised patterns are worth;
- voices: every term's test rows are spoken alternately by a test-only voice (a speaker never used in fine-tuning;
  some presets' test voices are a new accent or engine too) and by a training voice, so seen vs held-out terms see the same mix of speakers and the
  speaker effect (`speaker_seen`, set by the build) does not hide inside the term effect.
Validation rows (seen terms, training voices) use the validation carriers, so every recipe choice made on them
(checkpoint, steps, data mix) rewards generalising to new sentences, not remembering the training ones.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from medasr.audio import SAMPLE_RATE, to_mono_rate
from medasr.data import kokoro
from medasr.data.lexicon import Lexicon, Term
from medasr.data.manifest import Row
from medasr.data.spoken import spoken
from medasr.data.templates import TEMPLATES, TEST_TEMPLATES, VAL_TEMPLATES, pool, render
from medasr.voices import Voice, held_out_violations, parse_voice
from medasr.errors import MedasrError
from medasr.fingerprint import file_sha256

NOISE_LEVELS = {"clean": None, "snr15": 15.0, "snr5": 5.0}


class SynthError(MedasrError, RuntimeError):
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


NORMAL_WPM = 165  # Kokoro's speed 1.0 is its pack's own pace, about conversational speech: plan rate / 165


def _espeak(text: str, voice: str, rate: int) -> np.ndarray:
    """espeak-ng → float32 mono at 16 kHz."""
    exe = espeak_available()
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        proc = subprocess.run([exe, "-v", voice, "-s", str(rate), "-w", tmp.name, text], capture_output=True)
        if proc.returncode != 0:
            raise SynthError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace')}")
        audio, sr = sf.read(tmp.name, dtype="float32")
    return to_mono_rate(audio, sr)


@functools.lru_cache(maxsize=1)
def _kokoro() -> kokoro.Kokoro:
    return kokoro.Kokoro()  # one per worker process


@functools.lru_cache(maxsize=None)
def engine_identity(engine: str) -> str:
    """What else decides the audio besides text, voice and rate (part of the cache key)."""
    if engine == "espeak":
        return subprocess.run([espeak_available(), "--version"], capture_output=True, text=True).stdout.strip()
    k = _kokoro()
    return f"kokoro {file_sha256(k.model_path)} voices {k.voices_dir}"


def cache_dir() -> Path:
    return Path(os.environ.get("MEDASR_TTS_CACHE") or Path.home() / ".cache" / "medasr" / "tts")


def engine_text(text: str, voice: Voice) -> str:
    """What the engine reads for a written `text`."""
    return spoken(text, voice.accent) if voice.engine == "kokoro" else text


def speak(text: str, voice: str, rate: int) -> np.ndarray:
    """One utterance, float32 mono at 16 kHz, from the cache when it was made before."""
    v = parse_voice(voice)
    said = engine_text(text, v)
    key = hashlib.sha256("\x1f".join([v.engine, v.spec, str(rate), said, engine_identity(v.engine)]).encode()).hexdigest()
    path = cache_dir() / key[:2] / f"{key}.flac"
    if not path.exists():
        audio = _espeak(said, v.spec, rate) if v.engine == "espeak" else _kokoro().speak(said, v, rate / NORMAL_WPM)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp.flac")
        sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_24")
        tmp.replace(path)
    audio, _ = sf.read(path, dtype="float32")  # cached or not, the same samples
    return audio


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
    if bad := held_out_violations(train_voices, test_voices):
        raise ValueError(f"test voices {bad} share a speaker (a voice or a blended pack) with the training voices "
                         f"{train_voices}: a held-out voice must be a new speaker")
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


def render_utterance(u: Utterance, audio_dir: Path) -> Row:
    v = parse_voice(u.voice_id)
    audio = speak(u.text, u.voice_id, u.rate)
    audio = add_noise(audio, NOISE_LEVELS[u.noise_level], np.random.default_rng(u.seed))
    path = audio_dir / u.split / f"{u.id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return Row(audio_filepath=str(path.resolve()), duration=round(len(audio) / SAMPLE_RATE, 4), text=u.text,
               term=u.term.term, entity_category=u.term.entity_category, term_seen=u.term_seen,
               voice_id=voice_id(u.voice_id, u.rate), engine=v.engine, accent=v.accent, noise_level=u.noise_level,
               context_type=u.context_type, carrier_seen=u.carrier_seen, carrier=u.carrier,
               source=f"synthetic-{v.engine}", id=u.id)


def voice_id(voice: str, rate: int) -> str:
    """A row's `voice_id`: `<engine>:<voice>:rate<wpm>` (speaker = the first two fields, medasr.data.split)."""
    v = parse_voice(voice)
    return f"{'espeak-ng' if v.engine == 'espeak' else v.engine}:{v.spec}:rate{rate}"


def plan_voices(plan: list) -> set[str]:
    return {getattr(u, "voice_id", None) or u.voice for u in plan}


def check_engines(voices: set[str]) -> dict:
    """Fail before any audio when an engine is missing; say where Kokoro comes from (offline install or Hub)."""
    parsed = [parse_voice(v) for v in voices]
    engines = {v.engine for v in parsed}
    out = {"engines": sorted(engines)}
    if "espeak" in engines:
        espeak_available()
    if "kokoro" in engines:
        model, voices_dir, route = kokoro.locate()
        out["kokoro"] = {"route": route, "model": str(model), "sha256": file_sha256(model)}
        have = {p.stem for p in voices_dir.glob("*.bin")}
        missing = sorted({p for v in parsed for p, _ in v.packs} - have)  # espeak voices have no packs
        if missing:
            raise SynthError(f"Kokoro voice packs {missing} are not in {voices_dir}")
    return out


def _render_one(args):
    render, u, audio_dir = args
    return render(u, audio_dir)


def synthesize(plan: list, audio_dir: Path, workers: int = 2, progress=None, render=None,
               engines_checked: bool = False) -> list[dict]:
    """Render every planned utterance (`render(u, audio_dir)` → manifest row; default: the medical corpus's) in plan
    order. Kokoro runs in `workers` processes (each loads its own session; G2P and onnxruntime hold the GIL or a core);
    espeak-ng alone in threads, each waiting on its espeak-ng process (spawning Python workers costs more than it
    saves: bench/synth_bench.py)."""
    voices = plan_voices(plan)
    if not engines_checked:  # a caller that reported check_engines() already need not hash the model again
        check_engines(voices)
    render = render or render_utterance
    rows: list[dict] = []
    jobs = [(render, u, audio_dir) for u in plan]
    if workers <= 1 or len(plan) < 2:
        pool = None
        results = map(_render_one, jobs)
    elif any(parse_voice(v).engine == "kokoro" for v in voices):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_render_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(_render_one, jobs)
    try:
        for row in results:
            rows.append(row)
            if progress is not None:
                progress()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows
