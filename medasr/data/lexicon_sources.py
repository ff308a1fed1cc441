"""Grow the lexicon from offline resources that ship as pinned PyPI packages.

- drugs: `drug-named-entity-recognition` (MIT; dictionary built from DrugBank open data, MeSH and MedlinePlus):
  its canonical drug names of 1–3 words.
- conditions: `simple-icd-10-cm` (MIT; CDC ICD-10-CM descriptions, a US-government work in the public domain):
  descriptions reduced to the condition name ("Pneumonia, unspecified organism" → "pneumonia"), 1–4 words, without
  "other/unspecified/with/without …" qualifiers.
The derived list is built on the user's machine from the installed packages and cached (not committed), so no
third-party list is redistributed by medasr. The curated core list always wins on conflicts.
"""

from __future__ import annotations

import bz2
import pickle
import re
from importlib import resources
from pathlib import Path

from medasr.atomic import write_text_atomic
from medasr.data.lexicon import Lexicon, Term, core_lexicon, lexicon_tsv

# Everyday words that DrugBank lists as substances; tagging them as drugs would flood conversational speech.
EVERYDAY = {
    "water", "oxygen", "air", "salt", "sugar", "iron", "zinc", "copper", "silver", "gold", "alcohol", "caffeine",
    "honey", "coffee", "tea", "milk", "carbon", "charcoal", "nitrogen", "helium", "sulfur", "sulphur", "chlorine",
    "iodine", "lead", "tin", "aluminum", "aluminium", "lime", "lemon", "orange", "apple", "garlic", "ginger", "mint",
    "peppermint", "cinnamon", "wheat", "rice", "corn", "oats", "soy", "egg", "fish", "beef", "pork", "chicken",
    "cotton", "wool", "latex", "rubber", "wax", "oil", "fat", "starch", "gelatin", "glycerin", "vinegar", "soap",
    "sodium", "calcium", "magnesium", "potassium", "glucose", "fructose", "lactose", "sucrose", "protein", "fiber",
    "vitamin", "minerals", "cocoa", "chocolate", "wine", "beer", "nicotine", "tobacco", "cannabis", "ethanol",
    "acetone", "ammonia", "bleach", "chalk", "clay", "sand", "stone", "glass", "plastic", "paper", "white", "black",
    "red", "blue", "green", "yellow", "pink", "brown", "gray", "grey", "may", "will", "max", "plan", "one", "today",
    "ultra", "care", "relief", "cold", "heat", "sleep", "night", "day", "advance", "bright", "clear", "fresh", "pure",
}
_WORDY = re.compile(r"^[a-z][a-z\- ]*[a-z]$")
_QUALIFIERS = re.compile(r"\b(other|unspecified|specified|certain|without|with|due|following|not|elsewhere|classified|"
                         r"and|or|in|of|by|to|for|at|from|sequela|encounter|history|subsequent|initial|stage|type [a-z]+)\b")


def drug_terms() -> list[Term]:
    p = resources.files("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2"
    with resources.as_file(p) as f, bz2.open(f) as fh:
        d = pickle.load(fh)
    out = []
    for name in d["drug_canonical_to_data"]:
        n = name.strip().lower()
        if len(n) < 5 or not _WORDY.match(n) or len(n.split()) > 3 or n in EVERYDAY or any(w in EVERYDAY for w in n.split()):
            continue
        out.append(Term(n, "drug", "drug-named-entity-recognition (DrugBank/MeSH/MedlinePlus)"))
    return out


_DROPPABLE_TAILS = ("unspecified", "site not specified", "not elsewhere", "uncomplicated", "without", "with ",
                    "initial", "subsequent", "sequela", "not specified", "bilateral", "left", "right")


def condition_name(description: str) -> str | None:
    t = re.sub(r"\([^)]*\)", " ", description).lower()
    head, _, tail = t.partition(",")
    if tail and not tail.strip().startswith(_DROPPABLE_TAILS):
        return None  # "Sedative, hypnotic, or anxiolytic …": the head alone is not the condition
    t = head
    t = " ".join(t.split())
    if not t or not re.fullmatch(r"[a-z0-9][a-z0-9\- ']*", t) or _QUALIFIERS.search(t):
        return None
    return t if 1 <= len(t.split()) <= 4 and len(t) >= 4 else None


def condition_terms() -> list[Term]:
    import simple_icd_10_cm as cm

    seen, out = set(), []
    for code in cm.get_all_codes(with_dots=False):
        if code[0] in "STVWXYZ":  # injuries, external causes, status codes: not condition names people say
            continue
        name = condition_name(cm.get_description(code))
        if name and name not in seen:
            seen.add(name)
            out.append(Term(name, "condition", "simple-icd-10-cm (CDC ICD-10-CM, public domain)"))
    return out


def extended_lexicon(cache: Path | None = None) -> Lexicon:
    """Core list + drugs + ICD-10-CM conditions; cached as TSV after the first build."""
    cache = cache or Path.home() / ".cache" / "medasr" / "lexicon_extended.tsv"
    if cache.exists():
        return Lexicon.from_tsv(cache)
    terms = core_lexicon().terms + drug_terms() + condition_terms()
    lex = Lexicon(terms)  # first occurrence wins: the curated core list has precedence
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cache, lexicon_tsv(lex))
    return lex
