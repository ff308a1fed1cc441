"""Synthetic voices, by engine: what a preset's voice string means, which speaker and accent it is.

A voice string is `engine:spec`; a bare spec is espeak-ng (the presets' historical form):
- `espeak:en-gb-scotland+m3` (or `en-gb-scotland+m3`): an espeak-ng voice; its accent is the language variant
  (`en-gb-scotland`), its speaker the whole string.
- `kokoro:af_heart`: a Kokoro-82M v1.0 voice pack; the first letter is the accent (a = American, b = British English),
  the second the sex (f/m). `kokoro:af_heart*0.6+am_adam*0.4` is a weighted blend of packs (weights normalised): a new
  speaker whose accent is its packs' accent (all packs of a blend must share one).
Speed comes from the plan (espeak words per minute; Kokoro's `speed`, 1.0 = the pack's own rate).

A held-out voice must be a new *speaker*: no pack or espeak voice of a test voice may appear in any training voice,
blends included (`held_out_violations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ENGINES = ("espeak", "kokoro")
KOKORO_ACCENTS = {"a": "en-us", "b": "en-gb"}
_PACK = re.compile(r"^[ab][fm]_[a-z]+$")


@dataclass(frozen=True)
class Voice:
    engine: str
    spec: str  # the part after "engine:"
    packs: tuple[tuple[str, float], ...] = ()  # kokoro: (pack, weight), weights summing to 1

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.spec}"

    @property
    def accent(self) -> str:
        if self.engine == "kokoro":
            return KOKORO_ACCENTS[self.packs[0][0][0]]
        return self.spec.split("+")[0]

    @property
    def components(self) -> frozenset[str]:
        """The recorded speakers this voice is made of (a blend is made of its packs)."""
        if self.engine == "kokoro":
            return frozenset(f"kokoro:{p}" for p, _ in self.packs)
        return frozenset([self.name])


def parse_voice(s: str) -> Voice:
    engine, sep, spec = s.partition(":")
    if not sep:
        engine, spec = "espeak", s
    if engine not in ENGINES:
        raise ValueError(f"voice {s!r}: unknown engine {engine!r} (one of {', '.join(ENGINES)}; e.g. kokoro:af_heart, "
                         "espeak:en-us+f3)")
    if not spec:
        raise ValueError(f"voice {s!r}: no voice after '{engine}:'")
    if engine == "espeak":
        return Voice("espeak", spec)
    packs = []
    for part in spec.split("+"):
        name, star, w = part.partition("*")
        if not _PACK.match(name):
            raise ValueError(f"voice {s!r}: {name!r} is not an English Kokoro v1.0 pack (af_*, am_*, bf_*, bm_*)")
        try:
            weight = float(w) if star else 1.0
        except ValueError:
            raise ValueError(f"voice {s!r}: weight {w!r} of {name} is not a number") from None
        if weight <= 0:
            raise ValueError(f"voice {s!r}: weight of {name} must be > 0")
        packs.append((name, weight))
    if len({p[0] for p, _ in packs}) > 1:
        raise ValueError(f"voice {s!r}: a blend mixes American and British packs; keep one accent per voice")
    total = sum(w for _, w in packs)
    return Voice("kokoro", spec, tuple((p, w / total) for p, w in packs))


def held_out_violations(train: list[str], test: list[str]) -> list[str]:
    """Test voices that share a recorded speaker with a training voice (empty when every test voice is new)."""
    seen = set().union(*(parse_voice(v).components for v in train)) if train else set()
    return [v for v in test if parse_voice(v).components & seen]
