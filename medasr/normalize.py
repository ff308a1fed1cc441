"""Text normalisation for scoring: one normaliser for WER, CER, KER and the term error rate.

`normalize(text, kind)` prepares reference and hypothesis text; `term_tokens(text, kind)` is the same text split into
words, so a keyword is looked for in exactly the words WER aligned. A hypothesis with no WER edit therefore never
misses a keyword its reference holds (property-tested in tests/test_scoring.py), and a number, a hyphen, a curly
apostrophe or a possessive can never be a KER miss that WER forgives (or the other way round).

- `whisper` (default): the Whisper English normaliser (the convention of the Open ASR Leaderboard and of published
  medical ASR leaderboards): numbers as digits ("type two diabetes" = "type 2 diabetes"), letters and digits split
  ("HbA1c" = "hba 1 c"), British spellings Americanised, contractions expanded, hyphens and slashes split. Two steps run
  before it: curly apostrophes become straight (its contraction rules know only "'"), and a possessive "'s" is joined
  to its word ("Crohn's" = "Crohns", which sounds the same; Whisper alone reads it as "crohn is"); pronoun
  contractions ("it's", "that's") are left for Whisper to expand. One step runs after it: spoken variants that
  people and systems write differently for the same sound get one form (`SPOKEN_VARIANTS`: "okay" = "ok", "yeah" =
  "yes", "gonna" = "going to", "alright" = "all right", "mum" = "mom").
- `basic`: lower case, accents stripped, apostrophes dropped, hyphens and slashes split, letters and digits split,
  other punctuation removed.
- `none`: whitespace collapsed only.

Keyword matching (`contains_term`) allows one thing more: the last word of a term may carry a plural or possessive
"s" ("warfarin's dose" holds "warfarin"), on the reference and the hypothesis alike.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from medasr.errors import InputError

NORMALIZERS = ("whisper", "basic", "none")

# Spoken variants Whisper's normaliser leaves apart: one form each. The list is the Omi-Health/medical-STT-eval
# normaliser's (MIT; the PriMock57 leaderboard's), less "k" → "ok", which would touch the letter K (potassium) and
# spelled letters. Unifying curly apostrophes (above) had lowered the rank agreement of our WER with the leaderboard's
# published WER over its 42 systems from 0.993 to 0.990 (Spearman, per-consultation mean; the published WER charges
# "don’t" as two errors); with these variants it is 0.996 (bench/lexicon_fit.py, docs/results/lexicon_fit.json).
SPOKEN_VARIANTS = {
    "okay": "ok", "mum": "mom", "mummy": "mommy", "ohh": "oh", "ohhh": "oh", "ahh": "ah", "ahhh": "ah",
    "yeah": "yes", "yep": "yes", "yea": "yes", "yah": "yes", "nope": "no", "nah": "no", "kinda": "kind of",
    "sorta": "sort of", "dunno": "do not know", "gonna": "going to", "wanna": "want to", "gotta": "got to",
    "goodbye": "bye", "alright": "all right",
}

_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_POSSESSIVE = re.compile(r"\b([^\W\d_]+)'s\b")
# "'s" after these is a contraction ("it's" = "it is"), which Whisper expands; after any other word it is a possessive
_CONTRACTING = frozenset("""it he she that there what who where here how let when why this everyone everybody someone
somebody nobody everything something nothing""".split())
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def strip_accents(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c))


def unify_apostrophes(text: str) -> str:
    return text.translate(_APOSTROPHES)


def join_possessives(text: str) -> str:
    """"Crohn's disease" → "Crohns disease"; "it's" is left alone."""
    return _POSSESSIVE.sub(lambda m: m.group(0) if m.group(1).lower() in _CONTRACTING else m.group(1) + "s", text)


def basic_normalize(text: str) -> str:
    """Lowercase, unify apostrophes, drop punctuation (hyphens/slashes become spaces), split letters from digits."""
    text = unify_apostrophes(strip_accents(text).lower()).replace("'", "")  # "don't" -> "dont" on both sides
    text = _PUNCT.sub(" ", text.replace("_", " "))
    return _SPACES.sub(" ", _LETTER_DIGIT.sub(" ", text)).strip()


@lru_cache(maxsize=1)
def _whisper():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@lru_cache(maxsize=65536)
def normalize(text: str, kind: str = "whisper") -> str:
    if kind == "none":
        return _SPACES.sub(" ", text).strip()
    if kind == "basic":
        return basic_normalize(text)
    if kind == "whisper":
        words = _whisper()(join_possessives(unify_apostrophes(text))).split()
        return " ".join(SPOKEN_VARIANTS.get(w, w) for w in words)
    raise InputError(f"unknown normalizer {kind!r}; choose one of {', '.join(NORMALIZERS)}")


def term_tokens(text: str, kind: str = "whisper") -> tuple[str, ...]:
    """The words WER scores, as a tuple: what keywords are matched against."""
    return tuple(normalize(text, kind).split())


def _word_matches(word: str, term_word: str, last: bool) -> bool:
    return word == term_word or (last and word == term_word + "s")


def find_term(haystack: tuple[str, ...], needle: tuple[str, ...]) -> int:
    """Index of the first occurrence of `needle` in `haystack` (its last word may carry an "s"), or -1."""
    n = len(needle)
    if n == 0:
        return -1
    for i in range(len(haystack) - n + 1):
        if all(_word_matches(haystack[i + k], needle[k], k == n - 1) for k in range(n)):
            return i
    return -1


def contains_term(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    return find_term(haystack, needle) >= 0
