"""Medical lexicon: terms with an entity category, and a fast tagger that finds them in text.

Two taggers share one index layout (terms by first token, longest first, so "type two diabetes" wins over a shorter
overlapping entry; O(tokens) dictionary look-ups per sentence):
- `tag`/`tag_tokens` on `lexicon_tokens` (case-, hyphen- and punctuation-insensitive, possessive dropped): building
  data (term columns, the generic slice's medical-sentence exclusion), which must not move when scoring rules change;
- `scorer(kind)`: the same terms in the words of the evaluation normaliser (`medasr.normalize`), so the term
  error rate is counted on exactly the words WER aligned; a term's last word may carry a plural/possessive "s".
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medasr.normalize import find_term, strip_accents, term_tokens, unify_apostrophes

CATEGORIES = ("drug", "condition", "procedure", "anatomy", "lab")

_PUNCT = re.compile(r"[^\w\s']")
_POSSESSIVE = re.compile(r"(\w)'s\b")


def lexicon_tokens(text: str) -> tuple[str, ...]:
    """Data-side tokens: NFKD, lowercase, possessive 's dropped, hyphen/slash split, punctuation removed."""
    text = _POSSESSIVE.sub(r"\1", unify_apostrophes(strip_accents(text).lower()))
    text = _PUNCT.sub(" ", text.replace("-", " ").replace("/", " ")).replace("'", "")
    return tuple(text.split())


@dataclass(frozen=True)
class Term:
    term: str
    entity_category: str
    source: str = "medasr-core"

    @property
    def tokens(self) -> tuple[str, ...]:
        return lexicon_tokens(self.term)


@dataclass(frozen=True)
class Match:
    term: Term
    start: int  # token index in the tagged tokens
    end: int


class _Index:
    """Terms by first token, longest first. `plural_last`: a term's last word may carry an extra "s"."""

    def __init__(self, keyed: list[tuple[tuple[str, ...], Term]], plural_last: bool):
        self.plural_last = plural_last
        self.by_first: dict[str, list[tuple[tuple[str, ...], Term]]] = {}
        for toks, t in keyed:
            self.by_first.setdefault(toks[0], []).append((toks, t))
        for cands in self.by_first.values():
            cands.sort(key=lambda c: -len(c[0]))

    def _at(self, toks: tuple[str, ...], i: int) -> tuple[tuple[str, ...], Term] | None:
        for cand, t in self.by_first.get(toks[i], ()):
            if (toks[i : i + len(cand)] == cand or
                    (self.plural_last and find_term(toks[i : i + len(cand)], cand) == 0)):
                return cand, t
        if self.plural_last and toks[i].endswith("s"):  # a one-word term with a plural/possessive "s"
            for cand, t in self.by_first.get(toks[i][:-1], ()):
                if len(cand) == 1:
                    return cand, t
        return None

    def tag_tokens(self, toks: tuple[str, ...]) -> list[Match]:
        out: list[Match] = []
        i, n = 0, len(toks)
        while i < n:
            hit = self._at(toks, i)
            if hit is None:
                i += 1
                continue
            out.append(Match(hit[1], i, i + len(hit[0])))
            i += len(hit[0])
        return out


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
        self._index = _Index(list(seen.items()), plural_last=False)
        self._scorers: dict[str, _Index] = {}

    def __len__(self) -> int:
        return len(self.terms)

    def by_category(self) -> dict[str, list[Term]]:
        out: dict[str, list[Term]] = {c: [] for c in CATEGORIES}
        for t in self.terms:
            out[t.entity_category].append(t)
        return out

    def get(self, term: str) -> Term | None:
        toks = lexicon_tokens(term)
        for cand, t in self._index.by_first.get(toks[0] if toks else "", []):
            if cand == toks:
                return t
        return None

    def tag_tokens(self, toks: tuple[str, ...]) -> list[Match]:
        return self._index.tag_tokens(toks)

    def tag(self, text: str) -> list[Match]:
        """All non-overlapping term occurrences in `text`, left to right, longest match first."""
        return self.tag_tokens(lexicon_tokens(text))

    def scorer(self, kind: str = "whisper") -> _Index:
        """A tagger over the words of evaluation normaliser `kind` (built once per kind)."""
        if kind not in self._scorers:
            keyed: dict[tuple[str, ...], Term] = {}
            for t in self.terms:
                if toks := term_tokens(t.term, kind):
                    keyed.setdefault(toks, t)
            self._scorers[kind] = _Index(list(keyed.items()), plural_last=True)
        return self._scorers[kind]

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
