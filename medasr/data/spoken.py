"""Written clinical text → what a clinician says, for the synthesiser only (the manifest keeps the written form as the
reference).

Kokoro's G2P (hibari's port of misaki) already reads plain numbers, decimals, "%", "mg", "mcg", dotted abbreviations
("b.i.d." → B I D) and most capitals; measured here (2026-12-03) it reads "2 g" as "two G", "5 mL" as "five M L",
"120/80 mmHg" as "one hundred twenty eighty M M H G", "COPD" as a word, "T2DM" as a word and "PO" as "po". This
module fixes those before G2P: units after a number, blood pressure, route and frequency abbreviations, acronyms
spelled as letters (except the ones said as words), and drug names whose stress the lexicon gets wrong
(`PRONUNCIATIONS`, as Kokoro's inline `[word](/phonemes/)` overrides, American accent only: the overrides are written
in American phonemes and would make a British voice rhotic).
"""

from __future__ import annotations

import re

# unit after a number → spoken (singular, plural)
UNITS = {
    "g": ("gram", "grams"), "mg": ("milligram", "milligrams"), "mcg": ("microgram", "micrograms"),
    "µg": ("microgram", "micrograms"), "ug": ("microgram", "micrograms"), "kg": ("kilogram", "kilograms"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"), "L": ("liter", "liters"),
    "IU": ("international unit", "international units"), "units": ("unit", "units"), "U": ("unit", "units"),
    "mmHg": ("millimeter of mercury", "millimeters of mercury"), "mEq": ("milliequivalent", "milliequivalents"),
    "mmol/L": ("millimole per liter", "millimoles per liter"), "mg/dL": ("milligram per deciliter",
                                                                         "milligrams per deciliter"),
    "mg/kg": ("milligram per kilogram", "milligrams per kilogram"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "bpm": ("beat per minute", "beats per minute"), "h": ("hour", "hours"),
    "hrs": ("hour", "hours"), "min": ("minute", "minutes"),
}
# said as letters (the G2P reads some of them as words)
SPELLED = {"PO": "P O", "PR": "P R", "SL": "S L", "NPO": "N P O", "COPD": "C O P D", "BP": "B P", "HR": "H R",
           "qhs": "Q H S", "QHS": "Q H S", "qd": "Q D", "QD": "Q D", "bid": "B I D", "BID": "B I D", "tid": "T I D",
           "TID": "T I D", "qid": "Q I D", "QID": "Q I D", "prn": "P R N"}
# acronyms clinicians say as words: left to the G2P
SAID_AS_WORDS = {"COVID", "NSAID", "NSAIDs", "MRSA", "SARS", "AIDS", "ACE", "GERD", "CABG", "NICE", "SOAP"}
# Drug names whose stress the G2P's lexicon or OOV net gets wrong (checked against its output on 2026-12-03), with
# the stressed syllable of their usual American pronunciation, in Kokoro's phoneme notation.
PRONUNCIATIONS = {
    "metformin": "mɛtfˈɔɹmɪn", "lisinopril": "lIsˈɪnəpɹɪl", "atorvastatin": "ətˈɔɹvəstˌætɪn",
    "amlodipine": "æmlˈOdəpˌin", "omeprazole": "OmˈɛpɹəzˌOl", "levothyroxine": "lˌivOθIɹˈɑksin",
    "apixaban": "əpˈɪksəbˌæn", "rivaroxaban": "ɹˌɪvəɹˈɑksəbˌæn", "clopidogrel": "klOpˈɪdəɡɹˌɛl",
    "losartan": "lOsˈɑɹtæn", "carvedilol": "kˈɑɹvədˌɪlɔl", "amiodarone": "ˌæmiˈOdəɹˌOn",
    "empagliflozin": "ˌɛmpəɡlɪflˈOzɪn", "sitagliptin": "sˌɪtəɡlˈɪptɪn", "semaglutide": "sˌɛməɡlˈutId",
    "ceftriaxone": "sˌɛftɹIˈæksOn", "ciprofloxacin": "sˌɪpɹOflˈɑksəsɪn", "sertraline": "sˈɜɹtɹəlin",
    "escitalopram": "ˌɛsItˈæləpɹˌæm", "quetiapine": "kwətˈIəpin", "ondansetron": "ɑndˈænsətɹˌɑn",
    "pantoprazole": "pæntˈOpɹəzˌOl", "enoxaparin": "ɪnˌɑksəpˈæɹɪn", "tiotropium": "tˌIOtɹˈOpiəm",
    "montelukast": "mˌɑntəlˈukæst", "tamsulosin": "tæmsˈuləsɪn", "metoprolol": "mətˈOpɹəlˌɔl",
    "azithromycin": "əzˌɪθɹəmˈIsɪn",
}

_NUM = r"\d+(?:\.\d+)?"
_UNIT_RE = re.compile(rf"\b({_NUM})\s?({'|'.join(sorted(map(re.escape, UNITS), key=len, reverse=True))})(?![\w/])")
_BP_RE = re.compile(r"\b(\d{2,3})/(\d{2,3})\b(?=\s*(?:mmHg|mm Hg)?)")
_QH_RE = re.compile(r"\bq(\d+)h\b", re.I)
_ACRONYM_RE = re.compile(r"\b(?=[A-Z0-9]*[A-Z][A-Z0-9]*[A-Z0-9])[A-Z][A-Z0-9]{1,5}\b")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z-]*")


def _unit(m: re.Match) -> str:
    n, unit = m.group(1), m.group(2)
    one, many = UNITS[unit]
    return f"{n} {one if n == '1' else many}"


def _spell(m: re.Match) -> str:
    tok = m.group(0)
    if tok in SAID_AS_WORDS or tok in SPELLED:
        return tok
    # letters apart, digit runs kept together ("T2DM" → "T 2 D M"; the G2P reads the numbers)
    return " ".join(re.findall(r"[A-Z]|\d+", tok))


def spoken(text: str, accent: str = "en-us") -> str:
    """The text to synthesise for `text` (written form)."""
    s = _BP_RE.sub(lambda m: f"{m.group(1)} over {m.group(2)}", text)
    s = _UNIT_RE.sub(_unit, s)
    s = _QH_RE.sub(lambda m: f"every {m.group(1)} hours", s)
    s = re.sub(r"\b[A-Za-z]+\b", lambda m: SPELLED.get(m.group(0), m.group(0)), s)
    s = _ACRONYM_RE.sub(_spell, s)
    if accent == "en-us":
        s = _WORD_RE.sub(lambda m: (f"[{m.group(0)}](/{PRONUNCIATIONS[m.group(0).lower()]}/)"
                                    if m.group(0).lower() in PRONUNCIATIONS else m.group(0)), s)
    return s
