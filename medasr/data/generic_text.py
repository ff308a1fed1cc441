"""Generic, non-medical English sentences: the synthetic build's forgetting slice (`data.synth.generic_test_rows`).

Source: the usage examples of WordNet 3.0 (`/usr/share/wordnet/data.{noun,verb,adj,adv}`, Debian package
`wordnet-base`, installed by scripts/setup.sh). Licence: the WordNet 3.0 licence (Princeton University) — use, copy,
modify and distribute for any purpose without fee, keeping its copyright notice ("WordNet 3.0 Copyright 2006 by
Princeton University. All rights reserved.") and disclaimer; the full text is in /usr/share/doc/wordnet-base/copyright.
The examples are short natural sentences ("the oceans are teeming with life") across everyday vocabulary.

Every sentence that mentions a term of the medical lexicon (the core list *and* the extended drug/condition list) is
excluded, so the slice measures general English only; the exclusions are counted and reported with examples, never
dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medasr.data.lexicon_sources import extended_lexicon
from medasr.errors import MedasrError

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_LICENCE = "WordNet 3.0 licence (Princeton University); WordNet 3.0 Copyright 2006 by Princeton University"
_QUOTED = re.compile(r'"([^"]+)"')
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,'\-]*[A-Za-z][.?!]?$")


class GenericTextError(MedasrError, RuntimeError):
    pass


@dataclass
class GenericText:
    sentences: list[str]
    report: dict = field(default_factory=dict)


def wordnet_examples(wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """The quoted usage examples in the gloss field (after '|') of WordNet's data files, in file order."""
    files = [wordnet_dir / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise GenericTextError(f"WordNet data not found ({', '.join(missing)}): install the Debian package wordnet-base "
                               "(scripts/setup.sh does), or pass the folder holding data.noun … data.adv")
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:  # licence header lines start with two spaces
                continue
            out += _QUOTED.findall(line.split("|", 1)[1])
    return out


def clean(example: str, min_words: int = 4, max_words: int = 20) -> str | None:
    """A speakable sentence (letters and light punctuation only: digits, brackets and symbols read badly in TTS), first
    letter capitalised, ending in punctuation; None if it does not qualify."""
    s = " ".join(example.split()).strip(" ;:")
    if not _ALLOWED.match(s) or not min_words <= len(s.split()) <= max_words:
        return None
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".?!" else s + "."


def generic_sentences(wordnet_dir: Path = WORDNET_DIR, lexicon=None, max_examples: int = 20) -> GenericText:
    """Cleaned, de-duplicated WordNet examples minus every sentence naming a medical lexicon term."""
    if lexicon is None:
        lexicon = extended_lexicon()
    raw = wordnet_examples(wordnet_dir)
    seen: set[str] = set()
    kept, excluded, unqualified, dupes = [], [], 0, 0
    by_category: Counter = Counter()
    for ex in raw:
        s = clean(ex)
        if s is None:
            unqualified += 1
            continue
        if s.lower() in seen:
            dupes += 1
            continue
        seen.add(s.lower())
        if hits := lexicon.tag(s):
            excluded.append((s, hits[0].term.term, hits[0].term.entity_category))
            by_category.update(h.term.entity_category for h in hits)
            continue
        kept.append(s)
    report = {"source": f"WordNet 3.0 usage examples ({wordnet_dir})", "licence": WORDNET_LICENCE,
              "examples": len(raw), "not_speakable_or_length": unqualified, "duplicates": dupes,
              "excluded_medical": len(excluded), "excluded_by_category": dict(by_category.most_common()),
              "excluded_examples": [{"sentence": s, "term": t, "category": c} for s, t, c in excluded[:max_examples]],
              "lexicon_terms": len(lexicon), "kept": len(kept), "words": sum(len(s.split()) for s in kept)}
    return GenericText(kept, report)
