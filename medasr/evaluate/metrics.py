"""Corpus WER/CER, sentence error rate, keyword error rate (KER) and lexicon term error rate, with bootstrap CIs.

- WER/CER are corpus-level: total edits / total reference words (characters); `wer_mean_utt` (mean of per-row WER,
  what some leaderboards report) is given beside it, never instead of it.
- One normaliser (`medasr.evaluate.normalize`) makes the words of WER, KER and the term error rate, so a hypothesis
  with no WER edit never misses a keyword.
- KER (NVIDIA clinical-ASR-eval rule): a row whose `term` words do not occur contiguously in the hypothesis scores 1;
  aggregated per row, per entity category, per term, and for seen vs held-out terms (`term_seen`); WER and KER are
  also sliced by whether a training speaker said the row (`speaker_seen`), so a new voice is not read as a new term.
- Term error rate needs no `term` column: the lexicon tags every medical term occurrence in each reference, and an
  occurrence counts as reproduced only if each of its words is aligned to an identical hypothesis word (word
  alignment of the term-normalised texts). That scores conversational test sets whose rows carry no single term.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import jiwer
import numpy as np

from medasr.evaluate.normalize import contains_term, normalize, term_tokens

PARALLEL_MIN_ROWS = 4000  # below this, process start-up costs more than it saves


@dataclass
class RowScore:
    ref_words: int
    subs: int
    dels: int
    ins: int
    ref_chars: int
    char_edits: int
    term_hit: int | None  # 1 = the row's `term` reproduced, 0 = missed, None = row has no term
    occurrences: list[tuple[str, str, int]] = field(default_factory=list)  # (term, category, reproduced 0/1)
    term_in_ref: bool = True  # False: the row's `term` is not in its own reference (a data error, counted)

    @property
    def word_edits(self) -> int:
        return self.subs + self.dels + self.ins


def aligned_equal_mask(ref_toks: tuple[str, ...], hyp_toks: tuple[str, ...]) -> list[bool]:
    """For each reference token: is it aligned to an identical hypothesis token?"""
    mask = [False] * len(ref_toks)
    if not ref_toks or not hyp_toks:
        return mask
    out = jiwer.process_words(" ".join(ref_toks), " ".join(hyp_toks))
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            mask[chunk.ref_start_idx : chunk.ref_end_idx] = [True] * (chunk.ref_end_idx - chunk.ref_start_idx)
    return mask


def score_row(ref: str, hyp: str, term: str | None = None, normalizer: str = "whisper", lexicon=None) -> RowScore:
    r, h = normalize(ref, normalizer), normalize(hyp or "", normalizer)
    ref_toks, hyp_toks = tuple(r.split()), tuple(h.split())
    if r:
        w = jiwer.process_words(r, h) if h else None
        subs, dels, ins = (w.substitutions, w.deletions, w.insertions) if w else (0, len(r.split()), 0)
        char_edits = _char_edits(r, h)
    else:  # empty reference: every hypothesis word is an insertion
        subs, dels, ins = 0, 0, len(h.split())
        char_edits = len(h)
    hit, in_ref = None, True
    if term:
        term_toks = term_tokens(term, normalizer)
        hit, in_ref = int(contains_term(hyp_toks, term_toks)), contains_term(ref_toks, term_toks)
    occ: list[tuple[str, str, int]] = []
    if lexicon is not None:
        matches = lexicon.scorer(normalizer).tag_tokens(ref_toks)
        if matches:
            mask = aligned_equal_mask(ref_toks, hyp_toks)
            occ = [(m.term.term, m.term.entity_category, int(all(mask[m.start : m.end]))) for m in matches]
    return RowScore(len(ref_toks), subs, dels, ins, len(r), char_edits, hit, occ, in_ref)


def _char_edits(r: str, h: str) -> int:
    if not h:
        return len(r)
    c = jiwer.process_characters(r, h)
    return c.substitutions + c.deletions + c.insertions


# --- parallel scoring (fork: workers inherit the lexicon and the loaded normaliser) -------------------------------
_WORKER_ARGS: dict = {}


def _score_chunk(chunk: list[tuple[str, str, str | None]]) -> list[RowScore]:
    a = _WORKER_ARGS
    return [score_row(r, h, t, a["normalizer"], a["lexicon"]) for r, h, t in chunk]


def score_rows(rows: list[dict], normalizer: str = "whisper", lexicon=None, workers: int | None = None) -> list[RowScore]:
    triples = [(r["text"], r.get("pred_text") or "", r.get("term")) for r in rows]
    workers = workers or min(os.cpu_count() or 1, 8)
    if len(rows) < PARALLEL_MIN_ROWS or workers < 2:
        return [score_row(r, h, t, normalizer, lexicon) for r, h, t in triples]
    _WORKER_ARGS.update(normalizer=normalizer, lexicon=lexicon)
    normalize("warm up", normalizer)  # load the normaliser once, before the fork
    size = max(500, len(triples) // (workers * 4))
    chunks = [triples[i : i + size] for i in range(0, len(triples), size)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        return [s for part in pool.map(_score_chunk, chunks) for s in part]


# --- aggregation ------------------------------------------------------------------------------------------------
def _rate(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


def bootstrap_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of sum(num)/sum(den) with rows resampled with replacement."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if len(num) == 0 or den.sum() == 0 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    # resample in blocks to bound memory on 100k-row sets
    ratios = []
    block = max(1, 2_000_000 // max(1, len(num)))
    for start in range(0, n_boot, block):
        idx = rng.integers(0, len(num), size=(min(block, n_boot - start), len(num)))
        d = den[idx].sum(axis=1)
        ratios.append(np.where(d > 0, num[idx].sum(axis=1) / np.maximum(d, 1e-12), np.nan))
    lo, hi = np.nanpercentile(np.concatenate(ratios), [2.5, 97.5])
    return [float(lo), float(hi)]


def _slice(scores: list[RowScore], mask: list[bool], rows: list[dict], n_boot: int, seed: int) -> dict:
    """WER and KER (all / seen / held-out terms) of the rows where `mask` holds, with bootstrap CIs."""
    sub = [(r, s) for r, s, m in zip(rows, scores, mask) if m]
    edits = np.array([s.word_edits for _, s in sub], float)
    words = np.array([s.ref_words for _, s in sub], float)
    out: dict = {"n_rows": len(sub), "wer": _rate(edits.sum(), words.sum()),
                 "wer_ci95": bootstrap_ci(edits, words, n_boot, seed) if len(sub) else None}
    for key, keep in (("ker", lambda r: True), ("ker_seen", lambda r: r.get("term_seen") is True),
                      ("ker_unseen", lambda r: r.get("term_seen") is False)):
        miss = np.array([1 - s.term_hit for r, s in sub if s.term_hit is not None and keep(r)], float)
        out[key] = float(miss.mean()) if len(miss) else None
        out[f"n_{key}"] = len(miss)
        out[f"{key}_ci95"] = bootstrap_ci(miss, np.ones_like(miss), n_boot, seed) if len(miss) else None
    return out


_PUNCT = set(".,?!;:")


def output_style(texts: list[str]) -> dict:
    """How much of the text is written in Canary-Qwen's style (capitals, punctuation). Normalised WER cannot see a
    fine-tune that taught the model to drop them (e.g. on lower-cased OSCE targets); this can."""
    words = [t for t in texts if any(c.isalpha() for c in t)]
    if not words:
        return {"n": 0, "cased": None, "punctuated": None}
    return {"n": len(words), "cased": sum(any(c.isupper() for c in t) for t in words) / len(words),
            "punctuated": sum(any(c in _PUNCT for c in t) for t in words) / len(words)}


def compute_metrics(rows: list[dict], normalizer: str = "whisper", n_boot: int = 1000, seed: int = 0,
                    lexicon=None, workers: int | None = None) -> dict:
    """Metrics over manifest rows holding `text` and `pred_text` (optionally `term`, `entity_category`, `term_seen`,
    `speaker_seen`: then `by_speaker` repeats WER/KER for rows spoken by a training speaker and by a new one).
    `lexicon`: tag medical terms in references for the term error rate (default: the bundled core lexicon)."""
    if lexicon is None:
        from medasr.data.lexicon import core_lexicon

        lexicon = core_lexicon()
    scores = score_rows(rows, normalizer, lexicon, workers)
    ref_words = sum(s.ref_words for s in scores)
    edits = np.array([s.word_edits for s in scores], float)
    words = np.array([s.ref_words for s in scores], float)
    with_ref = words > 0
    out: dict = {
        "n_rows": len(rows),
        "normalizer": normalizer,
        "wer": _rate(edits.sum(), ref_words),
        "wer_mean_utt": float(np.mean(edits[with_ref] / words[with_ref])) if with_ref.any() else None,
        "cer": _rate(sum(s.char_edits for s in scores), sum(s.ref_chars for s in scores)),
        "ser": float(np.mean(edits > 0)) if len(scores) else None,
        "substitutions": sum(s.subs for s in scores),
        "deletions": sum(s.dels for s in scores),
        "insertions": sum(s.ins for s in scores),
        "ref_words": ref_words,
    }
    # KER on rows with a `term`
    termed = [(r, s) for r, s in zip(rows, scores) if s.term_hit is not None]
    miss = np.array([1 - s.term_hit for _, s in termed], float)
    out["ker"] = float(miss.mean()) if len(miss) else None
    lost = [r.get("id") or r.get("audio_filepath") for r, s in termed if not s.term_in_ref]
    out["term_not_in_reference"] = {"rows": len(lost), "examples": lost[:5]}  # rows whose KER cannot be earned
    by_cat: dict[str, list[int]] = defaultdict(list)
    by_term: dict[str, list[int]] = defaultdict(list)
    seen: dict[bool, list[int]] = {True: [], False: []}
    term_cat: dict[str, str] = {}
    for r, s in termed:
        m = 1 - s.term_hit
        cat = r.get("entity_category") or "unknown"
        by_cat[cat].append(m)
        by_term[r["term"]].append(m)
        term_cat[r["term"]] = cat
        if "term_seen" in r:
            seen[bool(r["term_seen"])].append(m)
    out["ker_by_category"] = {
        c: {"ker": float(np.mean(v)), "n": len(v), "ci95": bootstrap_ci(np.array(v, float), np.ones(len(v)), n_boot, seed)}
        for c, v in sorted(by_cat.items())
    }
    out["ker_seen"] = float(np.mean(seen[True])) if seen[True] else None
    out["ker_unseen"] = float(np.mean(seen[False])) if seen[False] else None
    out["n_seen"], out["n_unseen"] = len(seen[True]), len(seen[False])
    out["per_term"] = {
        t: {"ker": float(np.mean(v)), "n": len(v), "entity_category": term_cat[t]}
        for t, v in sorted(by_term.items(), key=lambda kv: (-np.mean(kv[1]), kv[0]))
    }
    # lexicon-tagged term occurrences in the references
    occ_err = np.array([sum(1 - o[2] for o in s.occurrences) for s in scores], float)
    occ_n = np.array([len(s.occurrences) for s in scores], float)
    out["term_error_rate"] = _rate(occ_err.sum(), occ_n.sum())
    out["term_recall"] = None if out["term_error_rate"] is None else 1 - out["term_error_rate"]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in scores:
        for _, cat, hit in s.occurrences:
            counts[cat][0] += 1
            counts[cat][1] += 1 - hit
    out["term_counts_by_category"] = {
        c: {"occurrences": n, "errors": e, "term_error_rate": e / n, "term_recall": 1 - e / n}
        for c, (n, e) in sorted(counts.items())
    }
    if any("speaker_seen" in r for r in rows):
        out["by_speaker"] = {
            name: _slice(scores, [r.get("speaker_seen") is flag for r in rows], rows, n_boot, seed)
            for name, flag in (("seen", True), ("new", False))
        }
    out["style"] = {"hypotheses": output_style([r.get("pred_text") or "" for r in rows]),
                    "references": output_style([r.get("text") or "" for r in rows])}
    out["ci95"] = {
        "wer": bootstrap_ci(edits, words, n_boot, seed),
        "ker": bootstrap_ci(miss, np.ones_like(miss), n_boot, seed) if len(miss) else None,
        "term_error_rate": bootstrap_ci(occ_err, occ_n, n_boot, seed),
    }
    return out
