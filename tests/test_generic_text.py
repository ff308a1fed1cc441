"""The generic (non-medical) text of the forgetting slice — WordNet examples minus medical terms."""

from medasr.data.generic_text import WORDNET_LICENCE, clean, generic_sentences
from medasr.data.lexicon_sources import extended_lexicon


def test_clean_keeps_speakable_sentences_only():
    assert clean("the oceans are teeming with life") == "The oceans are teeming with life."
    assert clean("how big is that part compared to the whole?") == "How big is that part compared to the whole?"
    assert clean("a fine day") is None  # too short to be a sentence (4 to 20 words)
    assert clean("he paid $20 for it") is None and clean("it was 3 feet long") is None  # digits/symbols read badly
    assert clean("  the  team ;") is None and clean("the team is  a unit ;") == "The team is a unit."


def test_generic_text_holds_no_medical_term_and_reports_what_it_excluded():
    lex = extended_lexicon()
    g = generic_sentences(lexicon=lex)
    r = g.report
    assert r["kept"] == len(g.sentences) > 30000 and r["licence"] == WORDNET_LICENCE
    assert r["examples"] == r["kept"] + r["excluded_medical"] + r["not_speakable_or_length"] + r["duplicates"]
    assert not [s for s in g.sentences if lex.tag(s)]  # the exclusion check itself: no lexicon term anywhere
    excluded = {e["sentence"]: e["term"] for e in generic_sentences(lexicon=lex, max_examples=10**6).report["excluded_examples"]}
    assert len(excluded) == r["excluded_medical"] > 100
    assert excluded["He had a kidney transplant."] == "kidney"
    assert "The oceans are teeming with life." in g.sentences
    assert len(set(s.lower() for s in g.sentences)) == len(g.sentences)
