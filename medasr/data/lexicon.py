"""Medical lexicon: terms with an entity category, and a fast tagger that finds them in text.

Matching works on `term_tokens` (case-, hyphen- and punctuation-insensitive), longest term first, so
"type two diabetes" wins over a shorter overlapping entry. The tagger indexes terms by their first token, so
tagging costs O(tokens) dictionary look-ups per sentence.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medasr.evaluate.normalize import term_tokens

CATEGORIES = ("drug", "condition", "procedure", "anatomy", "lab")


@dataclass(frozen=True)
class Term:
    term: str
    entity_category: str
    source: str = "medasr-core"

    @property
    def tokens(self) -> tuple[str, ...]:
        return term_tokens(self.term)


@dataclass(frozen=True)
class Match:
    term: Term
    start: int  # token index in term_tokens(text)
    end: int


class Lexicon:
    def __init__(self, terms: list[Term]):
        seen: dict[tuple[str, ...], Term] = {}
        for t in terms:
            if t.entity_category not in CATEGORIES:
                raise ValueError(f"term {t.term!r}: unknown category {t.entity_category!r}; use one of {CATEGORIES}")
            if not t.tokens:
                raise ValueError(f"term {t.term!r} has no letters or digits")
            seen.setdefault(t.tokens, t)  # first source wins on duplicates
        self.terms = list(seen.values())
        self._by_first: dict[str, list[tuple[tuple[str, ...], Term]]] = {}
        for toks, t in seen.items():
            self._by_first.setdefault(toks[0], []).append((toks, t))
        for cands in self._by_first.values():
            cands.sort(key=lambda c: -len(c[0]))

    def __len__(self) -> int:
        return len(self.terms)

    def by_category(self) -> dict[str, list[Term]]:
        out: dict[str, list[Term]] = {c: [] for c in CATEGORIES}
        for t in self.terms:
            out[t.entity_category].append(t)
        return out

    def get(self, term: str) -> Term | None:
        toks = term_tokens(term)
        for cand, t in self._by_first.get(toks[0] if toks else "", []):
            if cand == toks:
                return t
        return None

    def tag_tokens(self, toks: tuple[str, ...]) -> list[Match]:
        out: list[Match] = []
        i, n = 0, len(toks)
        while i < n:
            for cand, t in self._by_first.get(toks[i], ()):
                if toks[i : i + len(cand)] == cand:
                    out.append(Match(t, i, i + len(cand)))
                    i += len(cand)
                    break
            else:
                i += 1
        return out

    def tag(self, text: str) -> list[Match]:
        """All non-overlapping term occurrences in `text`, left to right, longest match first."""
        return self.tag_tokens(term_tokens(text))

    @classmethod
    def from_tsv(cls, path: str | Path) -> "Lexicon":
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f if not ln.startswith("#")]
        reader = csv.DictReader(lines, delimiter="\t")
        terms = []
        for lineno, row in enumerate(reader, start=2):
            if not row.get("term") or not row.get("entity_category"):
                raise ValueError(f"{path}: row {lineno}: needs 'term' and 'entity_category' columns")
            terms.append(Term(row["term"].strip(), row["entity_category"].strip(), (row.get("source") or "").strip()))
        return cls(terms)


def lexicon_tsv(lex: Lexicon) -> str:
    """The lexicon in the TSV layout `Lexicon.from_tsv` reads."""
    return "term\tentity_category\tsource\n" + "".join(f"{t.term}\t{t.entity_category}\t{t.source}\n" for t in lex.terms)


def core_lexicon() -> Lexicon:
    """The bundled curated lexicon (CC0, see resources/LEXICON.md)."""
    with resources.as_file(resources.files("medasr.data.resources") / "lexicon_core.tsv") as p:
        return Lexicon.from_tsv(p)
