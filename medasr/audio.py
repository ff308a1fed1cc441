"""Audio as every stage needs it: float32 mono at 16 kHz (the rate of every model medasr trains)."""

from __future__ import annotations

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def to_mono_rate(audio: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mix channels (axis 1) down to mono and resample (polyphase) to `sample_rate`."""
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != sample_rate:
        from scipy.signal import resample_poly

        g = np.gcd(sr, sample_rate)
        audio = resample_poly(audio, sample_rate // g, sr // g).astype(np.float32)
    return audio


def read_audio(path: str, sample_rate: int = SAMPLE_RATE, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """A file (or the span [start_s, end_s) of it) as float32 mono at `sample_rate`."""
    start = stop = None
    if start_s or end_s is not None:
        file_sr = sf.info(path).samplerate
        start = round(start_s * file_sr)
        stop = None if end_s is None else round(end_s * file_sr)
    audio, sr = sf.read(path, start=start or 0, stop=stop, dtype="float32", always_2d=True)
    return to_mono_rate(audio, sr, sample_rate)
