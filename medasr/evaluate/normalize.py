"""Text normalisation for scoring.

Two jobs, kept apart on purpose:
- `normalize` prepares reference/hypothesis text for WER/CER (Whisper English normaliser by default, the convention
  of the Open ASR Leaderboard and of published medical ASR leaderboards).
- `term_tokens` prepares text for keyword matching (KER). It follows the NVIDIA clinical-ASR-eval rule (NFKD,
  lowercase, strip punctuation, collapse spaces) with two deliberate departures: hyphens and slashes split words
  ("piperacillin-tazobactam" == "piperacillin tazobactam") and a possessive "'s" is dropped ("warfarin's" contains
  "warfarin"), so a keyword is not counted as missed for punctuation the listener cannot hear.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

NORMALIZERS = ("whisper", "basic", "none")

_PUNCT = re.compile(r"[^\w\s']")
_SPACES = re.compile(r"\s+")
_POSSESSIVE = re.compile(r"(\w)'s\b")


def _strip_accents(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c))


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def unify_apostrophes(text: str) -> str:
    return text.translate(_APOSTROPHES)


def basic_normalize(text: str) -> str:
    """Lowercase, unify apostrophes, drop punctuation (hyphens/slashes become spaces), collapse whitespace."""
    text = unify_apostrophes(_strip_accents(text).lower())
    text = text.replace("-", " ").replace("/", " ")
    text = _PUNCT.sub(" ", text)
    text = text.replace("'", "")  # "don't" -> "dont" on both sides
    return _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _whisper():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str, kind: str = "whisper") -> str:
    if kind == "none":
        return _SPACES.sub(" ", text).strip()
    if kind == "basic":
        return basic_normalize(text)
    if kind == "whisper":  # its contraction rules know only the straight apostrophe: "don’t" became "don t"
        return _SPACES.sub(" ", _whisper()(unify_apostrophes(text))).strip()
    raise ValueError(f"unknown normalizer {kind!r}; choose one of {', '.join(NORMALIZERS)}")


def term_tokens(text: str) -> tuple[str, ...]:
    """Tokens for keyword matching: NFKD, lowercase, possessive 's dropped, hyphen/slash split, punctuation removed."""
    text = unify_apostrophes(_strip_accents(text).lower())
    text = _POSSESSIVE.sub(r"\1", text)
    text = text.replace("-", " ").replace("/", " ")
    text = _PUNCT.sub(" ", text).replace("'", "")
    return tuple(text.split())
