"""Corpus WER/CER, sentence error rate, keyword error rate (KER) and lexicon term error rate, with bootstrap CIs.

- WER/CER are corpus-level: total edits / total reference words (characters); `wer_mean_utt` (mean of per-row WER,
  what some leaderboards report) is given beside it, never instead of it.
- One normaliser (`medasr.normalize`) makes the words of WER, KER and the term error rate, so a hypothesis
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

from medasr.data.lexicon import core_lexicon
from medasr.data.split import speaker_of
from medasr.normalize import contains_term, normalize, term_tokens

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


# The unit of independence: rows of one cluster (a consultation, a speaker's recording, a synthetic term's sentences)
# are correlated, so confidence intervals resample clusters, never rows. KER resamples terms.
def wer_clusters(rows: list[dict]) -> tuple[np.ndarray, str]:
    """Each row's WER cluster (its `cluster` field, set by `medasr build`) and the key's name; without the field every
    row is its own cluster ("row"), which is what the interval then claims."""
    if any(r.get("cluster") for r in rows):
        return np.array([str(r.get("cluster") or f"row:{i}") for i, r in enumerate(rows)], dtype=object), "cluster"
    return np.array([f"row:{i}" for i in range(len(rows))], dtype=object), "row"


def term_clusters(rows: list[dict]) -> np.ndarray:
    return np.array([str(r.get("term") or f"row:{i}").lower() for i, r in enumerate(rows)], dtype=object)


def cluster_totals(clusters, *cols) -> list[np.ndarray]:
    """Per-cluster sums of each column, clusters in sorted order."""
    _, inv = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    n = int(inv.max()) + 1 if len(inv) else 0
    return [np.bincount(inv, weights=np.asarray(c, float), minlength=n) for c in cols]


def resampled_totals(cols: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(cols)) column totals over clusters drawn with replacement (multinomial counts: the same draw as
    resampling indices, in blocks so 100k clusters stay within memory)."""
    n = len(cols[0])
    stacked = np.stack([np.asarray(c, float) for c in cols], axis=1)
    rng = np.random.default_rng(seed)
    out, block = [], max(1, 2_000_000 // max(1, n))
    for start in range(0, n_boot, block):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, n_boot - start))
        out.append(counts @ stacked)
    return np.concatenate(out)


def bootstrap_ci(num, den, n_boot: int = 1000, seed: int = 0, clusters=None) -> list[float] | None:
    """95 % percentile interval of sum(num)/sum(den), resampling `clusters` (default: every row its own)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if len(num) == 0 or den.sum() == 0 or n_boot <= 0:
        return None
    if clusters is not None:
        num, den = cluster_totals(clusters, num, den)
    tot = resampled_totals([num, den], n_boot, seed)
    ok = tot[:, 1] > 0
    lo, hi = np.percentile(tot[ok, 0] / tot[ok, 1], [2.5, 97.5])
    return [float(lo), float(hi)]


def n_clusters(clusters, den) -> int:
    return len({c for c, d in zip(clusters, den) if d})


def _ker(rows: list[dict], scores: list[RowScore], terms: np.ndarray, keep, n_boot: int, seed: int) -> dict:
    idx = [i for i, (r, s) in enumerate(zip(rows, scores)) if s.term_hit is not None and keep(r)]
    miss = np.array([1 - scores[i].term_hit for i in idx], float)
    if not len(miss):
        return {"ker": None, "n": 0, "n_terms": 0, "ci95": None}
    return {"ker": float(miss.mean()), "n": len(miss), "n_terms": len(set(terms[idx])),
            "ci95": bootstrap_ci(miss, np.ones_like(miss), n_boot, seed, terms[idx])}


def _slice(scores: list[RowScore], mask: list[bool], rows: list[dict], n_boot: int, seed: int) -> dict:
    """WER (resampling WER clusters) and KER (all / seen / held-out terms, resampling terms) where `mask` holds."""
    idx = [i for i, m in enumerate(mask) if m]
    sub_rows, sub_scores = [rows[i] for i in idx], [scores[i] for i in idx]
    clusters, key = wer_clusters(sub_rows)
    terms = term_clusters(sub_rows)
    edits = np.array([s.word_edits for s in sub_scores], float)
    words = np.array([s.ref_words for s in sub_scores], float)
    out: dict = {"n_rows": len(idx), "wer": _rate(edits.sum(), words.sum()),
                 "wer_ci95": bootstrap_ci(edits, words, n_boot, seed, clusters) if idx else None,
                 "wer_clusters": {"key": key, "n": n_clusters(clusters, words)}}
    for name, keep in (("ker", lambda r: True), ("ker_seen", lambda r: r.get("term_seen") is True),
                       ("ker_unseen", lambda r: r.get("term_seen") is False)):
        k = _ker(sub_rows, sub_scores, terms, keep, n_boot, seed)
        out |= {name: k["ker"], f"n_{name}": k["n"], f"{name}_ci95": k["ci95"], f"{name}_terms": k["n_terms"]}
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
        lexicon = core_lexicon()
    scores = score_rows(rows, normalizer, lexicon, workers)
    ref_words = sum(s.ref_words for s in scores)
    edits = np.array([s.word_edits for s in scores], float)
    words = np.array([s.ref_words for s in scores], float)
    with_ref = words > 0
    out: dict = {
        "n_rows": len(rows),
        # what a row is: an utterance, or a whole consultation (PriMock57 leaderboard's long-form unit, whose WER is
        # wer_mean_utt: the mean over consultations)
        "unit": "/".join(sorted({str(r.get("unit") or "utterance") for r in rows})) or "utterance",
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
    clusters, cluster_key = wer_clusters(rows)
    terms = term_clusters(rows)
    # KER on rows with a `term` (clusters: terms)
    termed = [(r, s) for r, s in zip(rows, scores) if s.term_hit is not None]
    all_ker = _ker(rows, scores, terms, lambda r: True, n_boot, seed)
    out["ker"] = all_ker["ker"]
    lost = [r.get("id") or r.get("audio_filepath") for r, s in termed if not s.term_in_ref]
    out["term_not_in_reference"] = {"rows": len(lost), "examples": lost[:5]}  # rows whose KER cannot be earned
    by_term: dict[str, list[int]] = defaultdict(list)
    term_cat: dict[str, str] = {}
    for r, s in termed:
        by_term[r["term"]].append(1 - s.term_hit)
        term_cat[r["term"]] = r.get("entity_category") or "unknown"
    cats = sorted({r.get("entity_category") or "unknown" for r, _ in termed})
    out["ker_by_category"] = {c: _ker(rows, scores, terms, lambda r, c=c: (r.get("entity_category") or "unknown") == c,
                                      n_boot, seed) for c in cats}
    seen = {f: _ker(rows, scores, terms, lambda r, f=f: r.get("term_seen") is f, n_boot, seed) for f in (True, False)}
    out["ker_seen"], out["ker_unseen"] = seen[True]["ker"], seen[False]["ker"]
    out["n_ker_seen"], out["n_ker_unseen"] = seen[True]["n"], seen[False]["n"]  # as in each breakdown
    out["per_term"] = {
        t: {"ker": float(np.mean(v)), "n": len(v), "entity_category": term_cat[t]}
        for t, v in sorted(by_term.items(), key=lambda kv: (-np.mean(kv[1]), kv[0]))
    }
    # lexicon-tagged term occurrences in the references (clusters: the WER clusters, e.g. consultations)
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
            name: _slice(scores, [r.get("speaker_seen") is f for r in rows], rows, n_boot, seed)
            for name, f in (("seen", True), ("new", False))
        }
    if design := design_cells(rows):
        out["by_design"] = {name: _slice(scores, mask, rows, n_boot, seed) for name, mask in design.items()}
    sources = sorted({str(r.get("source")) for r in rows if r.get("source")})
    if len(sources) > 1:  # e.g. the generic (non-medical) slice that measures forgetting
        out["by_source"] = {src: _slice(scores, [str(r.get("source")) == src for r in rows], rows, n_boot, seed)
                            for src in sources}
    for factor, masks in voice_slices(rows).items():  # synthetic voices: engine, accent and voice, each apart
        out[f"by_{factor}"] = {v: _slice(scores, mask, rows, n_boot, seed) for v, mask in masks.items()}
    out["style"] = {"hypotheses": output_style([r.get("pred_text") or "" for r in rows]),
                    "references": output_style([r.get("text") or "" for r in rows])}
    out["ci95"] = {
        "wer": bootstrap_ci(edits, words, n_boot, seed, clusters),
        "ker": all_ker["ci95"],
        "term_error_rate": bootstrap_ci(occ_err, occ_n, n_boot, seed, clusters),
    }
    out["ci_clusters"] = {"wer": {"key": cluster_key, "n": n_clusters(clusters, words)},
                          "term_error_rate": {"key": cluster_key, "n": n_clusters(clusters, occ_n)},
                          "ker": {"key": "term", "n": all_ker["n_terms"]}}
    return out


def voice_slices(rows: list[dict]) -> dict[str, dict[str, list[bool]]]:
    """Row masks per synthetic engine, accent and voice, for each factor that takes more than one value."""
    getters = {"engine": lambda r: r.get("engine"), "accent": lambda r: r.get("accent"), "voice": speaker_of}
    out = {}
    for factor, get in getters.items():
        values = [str(get(r)) if r.get("engine") else None for r in rows]
        distinct = sorted(set(values) - {None})
        if len(distinct) > 1:
            out[factor] = {v: [x == v for x in values] for v in distinct}
    return out


DESIGN_FACTORS = (("term_seen", "term"), ("speaker_seen", "voice"), ("carrier_seen", "carrier"))


def design_cells(rows: list[dict]) -> dict[str, list[bool]]:
    """The held-out design's cells, e.g. "term seen · voice new · carrier new": term rows split by every seen/new
    factor they carry (a new term, a new voice and a new sentence are different failures, each reported apart)."""
    present = [(k, name) for k, name in DESIGN_FACTORS if any(r.get("term") and k in r for r in rows)]
    if not present:
        return {}
    cells: dict[str, list[bool]] = {}
    keys = [tuple(r.get(k) for k, _ in present) if r.get("term") else None for r in rows]
    kinds = held_out_voice_kinds(rows)
    split = len(set(kinds) - {None}) > 1
    for combo in sorted({k for k in keys if k is not None and None not in k}, key=lambda c: [not v for v in c]):
        name = " · ".join(f"{n} {'seen' if v else 'new'}" for (_, n), v in zip(present, combo))
        cells[name] = [k == combo for k in keys]
        if split and "voice new" in name:  # a new speaker, a new accent and a new engine are different distances
            for kind in sorted(set(kinds) - {None}, key=HELD_OUT_KINDS.index):
                mask = [m and x == kind for m, x in zip(cells[name], kinds)]
                if any(mask):
                    cells[name.replace("voice new", f"voice new ({kind})")] = mask
    return cells


HELD_OUT_KINDS = ("new speaker", "new accent", "new engine")


def held_out_voice_kinds(rows: list[dict]) -> list[str | None]:
    """How far each held-out synthetic voice is from the training voices: another engine ("new engine"), else an
    accent no training voice has ("new accent"), else only another speaker ("new speaker"). None: not a synthetic
    row, or a training voice. Training engines and accents are read off the rows of seen speakers."""
    seen = [r for r in rows if r.get("engine") and r.get("speaker_seen") is True]
    engines, accents = {r["engine"] for r in seen}, {(r["engine"], r.get("accent")) for r in seen}

    def kind(r: dict) -> str | None:
        if not r.get("engine") or r.get("speaker_seen") is not False:
            return None
        if r["engine"] not in engines:
            return "new engine"
        return "new accent" if (r["engine"], r.get("accent")) not in accents else "new speaker"

    return [kind(r) for r in rows]
