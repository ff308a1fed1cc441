import pytest

from medasr.evaluate.metrics import compute_metrics, score_row
from medasr.normalize import contains_term as contains
from medasr.normalize import basic_normalize, normalize, term_tokens


def test_wer_known_pair():
    # "the cat sat" -> "the cat sit on": 1 substitution + 1 insertion over 3 reference words
    s = score_row("The cat sat.", "the cat sit on", normalizer="basic")
    assert (s.subs, s.dels, s.ins, s.ref_words) == (1, 0, 1, 3)
    assert s.word_edits / s.ref_words == pytest.approx(2 / 3)


def test_cer_known_pair():
    s = score_row("abc", "abd", normalizer="basic")
    assert s.char_edits == 1 and s.ref_chars == 3


def test_corpus_wer_is_not_mean_of_rows():
    rows = [
        {"text": "a b c d e f g h i j", "pred_text": "a b c d e f g h i j"},  # 0/10
        {"text": "x", "pred_text": "y"},  # 1/1
    ]
    m = compute_metrics(rows, normalizer="basic", n_boot=50)
    assert m["wer"] == pytest.approx(1 / 11)  # corpus level; the mean of row WERs would be 0.5
    assert m["substitutions"] == 1 and m["ref_words"] == 11


def test_ker_multiword_hyphen_possessive():
    assert term_tokens("Piperacillin-Tazobactam") == ("piperacillin", "tazobactam")
    assert contains(term_tokens("gave piperacillin tazobactam at six"), term_tokens("piperacillin-tazobactam"))
    assert contains(term_tokens("check the patient's warfarin's dose"), term_tokens("warfarin"))
    assert contains(term_tokens("D-dimer was high"), term_tokens("d-dimer"))
    assert not contains(term_tokens("atrial flutter and fibrillation"), term_tokens("atrial fibrillation"))
    assert contains(term_tokens("type 2 / type two diabetes"), term_tokens("type two diabetes"))


def test_ker_by_category_seen_unseen():
    rows = [
        {"text": "start metformin", "pred_text": "start metformin", "term": "metformin", "entity_category": "drug", "term_seen": True},
        {"text": "start warfarin", "pred_text": "start war farm", "term": "warfarin", "entity_category": "drug", "term_seen": False},
        {"text": "pain in the femur", "pred_text": "pain in the femur", "term": "femur", "entity_category": "anatomy", "term_seen": False},
        {"text": "no term here", "pred_text": "no term here"},
    ]
    m = compute_metrics(rows, normalizer="basic", n_boot=100)
    assert m["ker"] == pytest.approx(1 / 3)
    assert {c: (v["ker"], v["n"]) for c, v in m["ker_by_category"].items()} == {"anatomy": (0.0, 1), "drug": (0.5, 2)}
    assert m["ker_seen"] == 0.0 and m["ker_unseen"] == 0.5
    assert m["per_term"]["warfarin"]["ker"] == 1.0
    lo, hi = m["ci95"]["ker"]
    assert 0.0 <= lo <= m["ker"] <= hi <= 1.0


def test_speaker_slices_separate_a_new_voice_from_a_new_term():
    rows = [
        {"text": "start metformin now", "pred_text": "start metformin now", "term": "metformin", "entity_category": "drug",
         "term_seen": True, "speaker_seen": True},
        {"text": "start metformin today", "pred_text": "start met forming today", "term": "metformin",
         "entity_category": "drug", "term_seen": True, "speaker_seen": False},
        {"text": "start warfarin", "pred_text": "start warfarin", "term": "warfarin", "entity_category": "drug",
         "term_seen": False, "speaker_seen": True},
        {"text": "start warfarin", "pred_text": "stop war farm", "term": "warfarin", "entity_category": "drug",
         "term_seen": False, "speaker_seen": False},
        {"text": "no term here", "pred_text": "no term here"},  # no speaker info: in neither slice
    ]
    m = compute_metrics(rows, normalizer="basic", n_boot=100)
    seen, new = m["by_speaker"]["seen"], m["by_speaker"]["new"]
    assert (seen["n_rows"], new["n_rows"]) == (2, 2)
    assert seen["wer"] == 0.0 and seen["ker"] == 0.0
    assert new["wer"] == pytest.approx((2 + 3) / (3 + 2))  # met forming: 1 sub + 1 ins; stop war farm: 2 sub + 1 ins
    assert (new["ker_seen"], new["ker_unseen"], new["n_ker_seen"], new["n_ker_unseen"]) == (1.0, 1.0, 1, 1)
    assert "by_speaker" not in compute_metrics(rows[-1:], normalizer="basic", n_boot=10)


def test_normalizers():
    assert basic_normalize("Dr. Smith's  BP: 120/80!") == "dr smiths bp 120 80"
    assert normalize("Hello,   World", "none") == "Hello, World"
    # Whisper's English normaliser spells out titles and writes numbers as digits
    assert normalize("Mr. Smith has two cats.", "whisper") == normalize("Mister Smith has 2 cats", "whisper") == "mister smith has 2 cats"
    with pytest.raises(ValueError, match="unknown normalizer"):
        normalize("x", "bogus")


def test_sentence_and_mean_utterance_rates():
    rows = [
        {"text": "a b c d", "pred_text": "a b c d"},
        {"text": "a b", "pred_text": "a x"},
    ]
    m = compute_metrics(rows, normalizer="basic", n_boot=0)
    assert m["ser"] == 0.5
    assert m["wer"] == pytest.approx(1 / 6) and m["wer_mean_utt"] == pytest.approx(0.25)
    assert (m["substitutions"], m["deletions"], m["insertions"]) == (1, 0, 0)


def test_term_error_rate_without_term_column():
    rows = [  # no `term` column: the lexicon finds the terms in the references
        {"text": "Patient on metformin and warfarin, history of atrial fibrillation.",
         "pred_text": "patient on metformin and war farin history of atrial fibrillation"},
        {"text": "Check the D-dimer and troponin.", "pred_text": "check the d dimer and troponin"},
        # the term word appears in the hypothesis, but not aligned to the reference occurrence: still an error
        {"text": "metformin was stopped, no insulin", "pred_text": "it was stopped no insulin metformin"},
    ]
    m = compute_metrics(rows, normalizer="basic", n_boot=100)
    # occurrences: metformin, warfarin, atrial fibrillation, d-dimer, troponin, metformin -> misses: warfarin, metformin#2
    assert m["term_error_rate"] == pytest.approx(2 / 6) and m["term_recall"] == pytest.approx(4 / 6)
    c = m["term_counts_by_category"]
    assert c["drug"] == {"occurrences": 3, "errors": 2, "term_error_rate": pytest.approx(2 / 3), "term_recall": pytest.approx(1 / 3)}
    assert c["lab"]["occurrences"] == 2 and c["lab"]["errors"] == 0
    assert c["condition"]["occurrences"] == 1 and m["ker"] is None  # no term column, no KER
    assert m["ci95"]["term_error_rate"][0] <= m["term_error_rate"] <= m["ci95"]["term_error_rate"][1]


def test_ker_slash_and_partial_multiword():
    assert contains(term_tokens("given piperacillin/tazobactam"), term_tokens("piperacillin-tazobactam"))
    assert not contains(term_tokens("given piperacillin only"), term_tokens("piperacillin-tazobactam"))
    assert contains(term_tokens("the CABG: coronary-artery bypass graft"), term_tokens("coronary artery bypass graft"))


def test_parallel_scoring_matches_serial():
    from medasr.evaluate.metrics import score_rows

    rows = [{"text": f"start metformin {i} times", "pred_text": f"start met for men {i} times" if i % 3 else f"start metformin {i}"}
            for i in range(300)]
    from medasr.data.lexicon import core_lexicon

    lex = core_lexicon()
    serial = score_rows(rows, "whisper", lex, workers=1)
    import medasr.evaluate.metrics as mm

    old = mm.PARALLEL_MIN_ROWS
    mm.PARALLEL_MIN_ROWS = 10
    try:
        parallel = score_rows(rows, "whisper", lex, workers=2)
    finally:
        mm.PARALLEL_MIN_ROWS = old
    assert parallel == serial


def test_curly_apostrophes_score_like_straight_ones():
    """The Whisper normaliser expands only straight-apostrophe contractions, so "don’t" vs
    "don't" cost 2 word errors."""
    from medasr.evaluate.metrics import score_row
    from medasr.normalize import normalize

    assert normalize("I don\u2019t take warfarin") == normalize("I don't take warfarin") == "i do not take warfarin"
    assert score_row("I don't take warfarin", "I don\u2019t take warfarin", "warfarin").word_edits == 0
