"""Step 7 (README's workflow) — compare cycle N with cycle N+1 on the same rows, with a paired bootstrap, and decide.

Decision table (after NVIDIA's clinical-ASR evaluation skill, NVIDIA/skills `digital-health-clinical-asr-eval`), on the paired bootstrap over whole clusters (terms for KER): fewer than `min_clusters`
priority terms → "insufficient_evidence"; priority-category KER dropped ≥ 20 % relative (CI excluding zero) → keep; a significant
but smaller drop → grow the manifest; significantly worse → overfit, grow data; a delta whose CI crosses zero is
"no measurable change", whatever its sign → check the per-category numbers.
"""

from __future__ import annotations

import numpy as np

from medasr.data.lexicon import core_lexicon
from medasr.errors import InputError
from medasr.evaluate.metrics import (cluster_totals, design_cells, resampled_totals, score_rows, term_clusters,
                                     wer_clusters)

MIN_CLUSTERS = 20  # below this many independent units (terms for KER), a bootstrap interval is not evidence


def _paired(before: np.ndarray, after: np.ndarray, den: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of after/before rates: whole clusters are resampled, the same draw for both models."""
    keep = den > 0
    if not keep.any():
        return {"before": None, "after": None, "delta": None, "ci95": None, "p_value": None, "n_clusters": 0}
    b_tot, a_tot, d_tot = cluster_totals(clusters[keep], before[keep], after[keep], den[keep])
    b, a = b_tot.sum() / d_tot.sum(), a_tot.sum() / d_tot.sum()
    tot = resampled_totals([b_tot, a_tot, d_tot], n_boot, seed)
    ok = tot[:, 2] > 0
    deltas = (tot[ok, 1] - tot[ok, 0]) / tot[ok, 2]
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    # two-sided bootstrap p-value: how often the resampled delta falls on the other side of zero, counting the observed
    # delta as one draw, so it is never below 1 / (draws + 1): n_boot draws cannot show more than that
    other = min(np.sum(deltas <= 0), np.sum(deltas >= 0))
    p = min(1.0, 2 * (other + 1) / (len(deltas) + 1))
    return {"before": float(b), "after": float(a), "delta": float(a - b), "ci95": [float(lo), float(hi)],
            "p_value": float(p), "n_clusters": int(len(d_tot))}


def compare_rows(before_rows: list[dict], after_rows: list[dict], priority: list[str], normalizer: str = "whisper",
                 n_boot: int = 1000, seed: int = 0, keep_rel_drop: float = 0.2, lexicon=None,
                 min_clusters: int = MIN_CLUSTERS) -> dict:
    """`lexicon`: the one both evaluations tagged term occurrences with (default: the core lexicon). WER and term error
    rate resample the rows' WER clusters (consultation, recording, synthetic term); KER resamples terms."""
    key = lambda r: r.get("id") or r["audio_filepath"]  # noqa: E731
    after_by = {key(r): r for r in after_rows}
    pairs = [(r, after_by[key(r)]) for r in before_rows if key(r) in after_by]
    if not pairs:
        raise InputError("no rows in common between the two evaluations (matched on id / audio_filepath)")
    differ = [key(b) for b, a in pairs if b.get("text") != a.get("text") or b.get("term") != a.get("term")]
    if differ:  # the same id scored against another reference is not a paired comparison
        raise InputError(f"{len(differ)} row(s) have a different reference (text or term) in the two evaluations, "
                         f"e.g. {differ[:3]}: compare evaluations of the same test manifest")
    if lexicon is None:
        lexicon = core_lexicon()
    sb = score_rows([b for b, _ in pairs], normalizer, lexicon)
    sa = score_rows([a for _, a in pairs], normalizer, lexicon)
    rows = [b for b, _ in pairs]
    clusters, cluster_key = wer_clusters(rows)
    terms = term_clusters(rows)
    words = np.array([s.ref_words for s in sb], float)
    out = {"n_rows": len(pairs), "n_boot": n_boot, "seed": seed, "priority": list(priority), "min_clusters": min_clusters,
           "clusters": {"wer": cluster_key, "ker": "term"}, "deltas": {}}
    edits_b, edits_a = np.array([s.word_edits for s in sb], float), np.array([s.word_edits for s in sa], float)

    def wer(mask) -> dict:
        m = np.asarray(mask, float)
        return _paired(edits_b * m, edits_a * m, words * m, clusters, n_boot, seed)

    out["deltas"]["wer"] = wer(np.ones(len(rows)))
    occ = np.array([len(s.occurrences) for s in sb], float)
    out["deltas"]["term_error_rate"] = _paired(
        np.array([sum(1 - o[2] for o in s.occurrences) for s in sb], float),
        np.array([sum(1 - o[2] for o in s.occurrences) for s in sa], float), occ, clusters, n_boot, seed)
    has_term = np.array([s.term_hit is not None for s in sb], float)
    miss_b = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sb], float)
    miss_a = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sa], float)

    def ker(mask) -> dict:
        m = has_term * np.asarray(mask, float)
        return _paired(miss_b * m, miss_a * m, m, terms, n_boot, seed)

    out["deltas"]["ker"] = ker(np.ones(len(rows)))
    for c in sorted({r.get("entity_category") for r in rows if r.get("term")} - {None}):
        out["deltas"][f"ker[{c}]"] = ker([r.get("entity_category") == c for r in rows])
    for seen in (True, False):
        m = [r.get("term_seen") is seen for r in rows]
        if any(m):
            out["deltas"][f"ker[{'seen' if seen else 'unseen'}]"] = ker(m)
    if any("speaker_seen" in r for r in rows):
        for spk, name in ((True, "seen speaker"), (False, "new speaker")):
            sm = np.array([r.get("speaker_seen") is spk for r in rows], float)
            if not sm.sum():
                continue
            out["deltas"][f"wer[{name}]"] = wer(sm)
            for seen in (True, False):
                m = sm * np.array([r.get("term_seen") is seen for r in rows], float)
                if m.sum():
                    out["deltas"][f"ker[{'seen' if seen else 'unseen'}, {name}]"] = ker(m)
    for name, mask in design_cells(rows).items():
        out["deltas"][f"ker[{name}]"] = ker(mask)
        out["deltas"][f"wer[{name}]"] = wer(mask)
    sources = sorted({str(r.get("source")) for r in rows if r.get("source")})
    if len(sources) > 1:  # e.g. generic speech: did the fine-tune make the model forget it?
        for src in sources:
            out["deltas"][f"wer[{src}]"] = wer([str(r.get("source")) == src for r in rows])
    target = ker([bool(r.get("term")) and r.get("entity_category") in priority for r in rows])
    out["deltas"]["ker[priority]"] = target
    out["decision"], out["reason"] = _decide(target, keep_rel_drop, min_clusters)
    return out


def _decide(t: dict, keep_rel_drop: float, min_clusters: int = MIN_CLUSTERS) -> tuple[str, str]:
    if t["delta"] is None:
        return "no_change", "no priority-category term rows to compare"
    lo, hi = t["ci95"]
    rel = -t["delta"] / t["before"] if t["before"] else 0.0
    desc = f"priority KER {t['before']:.3f} → {t['after']:.3f} (Δ {t['delta']:+.3f}, 95% CI {lo:+.3f} … {hi:+.3f})"
    if t["n_clusters"] < min_clusters:
        return "insufficient_evidence", (f"{desc} over {t['n_clusters']} term(s), fewer than {min_clusters}: a bootstrap "
                                         "over so few independent units is not evidence; add terms to the test set")
    if lo <= 0 <= hi:
        return "no_change", f"{desc}: no measurable change; check the per-category numbers"
    if t["delta"] > 0:
        return "overfit", f"{desc}: got worse; likely overfitting, grow and diversify the data"
    if rel >= keep_rel_drop:
        return "keep", f"{desc}: {100 * rel:.0f}% relative drop ≥ {100 * keep_rel_drop:.0f}%; keep the adapter"
    return "grow_data", f"{desc}: {100 * rel:.0f}% relative drop < {100 * keep_rel_drop:.0f}%; grow the manifest"
