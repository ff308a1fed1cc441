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
    """Paired bootstrap of after/before rates: whole clusters are resampled, the same draw for both models. `rel` is
    the change relative to before ((after − before) / before, −0.5 = halved), with its own percentile interval."""
    keep = den > 0
    if not keep.any():
        return {"before": None, "after": None, "delta": None, "ci95": None, "p_value": None, "n_clusters": 0,
                "rel": None, "rel_ci95": None}
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
    rel = rel_ci = None
    if b > 0:
        rel = float((a - b) / b)
        has = tot[:, 0] > 0  # a draw with no errors before has no relative change (rare unless n_boot is tiny)
        if has.any():
            rel_ci = [float(x) for x in np.percentile((tot[has, 1] - tot[has, 0]) / tot[has, 0], [2.5, 97.5])]
    return {"before": float(b), "after": float(a), "delta": float(a - b), "ci95": [float(lo), float(hi)],
            "p_value": float(p), "n_clusters": int(len(d_tot)), "rel": rel, "rel_ci95": rel_ci}


class PairedScores:
    """Two evaluations of the same rows, scored once; `wer(mask)` / `ker(mask)` are paired bootstraps over any subset
    of rows. `lexicon`: the one both evaluations tagged term occurrences with (default: the core lexicon). WER and
    term error rate resample the rows' WER clusters (consultation, recording, synthetic term); KER resamples terms."""

    def __init__(self, before_rows: list[dict], after_rows: list[dict], normalizer: str = "whisper", n_boot: int = 1000,
                 seed: int = 0, lexicon=None):
        key = lambda r: r.get("id") or r["audio_filepath"]  # noqa: E731
        after_by = {key(r): r for r in after_rows}
        pairs = [(r, after_by[key(r)]) for r in before_rows if key(r) in after_by]
        if not pairs:
            raise InputError("no rows in common between the two evaluations (matched on id / audio_filepath)")
        differ = [key(b) for b, a in pairs if b.get("text") != a.get("text") or b.get("term") != a.get("term")]
        if differ:  # the same id scored against another reference is not a paired comparison
            raise InputError(f"{len(differ)} row(s) have a different reference (text or term) in the two evaluations, "
                             f"e.g. {differ[:3]}: compare evaluations of the same test manifest")
        lexicon = core_lexicon() if lexicon is None else lexicon
        sb = score_rows([b for b, _ in pairs], normalizer, lexicon)
        sa = score_rows([a for _, a in pairs], normalizer, lexicon)
        self.rows = [b for b, _ in pairs]
        self.n_boot, self.seed = n_boot, seed
        self.clusters, self.cluster_key = wer_clusters(self.rows)
        self.terms = term_clusters(self.rows)
        self.words = np.array([s.ref_words for s in sb], float)
        self.edits_b = np.array([s.word_edits for s in sb], float)
        self.edits_a = np.array([s.word_edits for s in sa], float)
        self.occ = np.array([len(s.occurrences) for s in sb], float)
        self.occ_miss_b = np.array([sum(1 - o[2] for o in s.occurrences) for s in sb], float)
        self.occ_miss_a = np.array([sum(1 - o[2] for o in s.occurrences) for s in sa], float)
        self.has_term = np.array([s.term_hit is not None for s in sb], float)
        self.miss_b = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sb], float)
        self.miss_a = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sa], float)

    def wer(self, mask) -> dict:
        m = np.asarray(mask, float)
        return _paired(self.edits_b * m, self.edits_a * m, self.words * m, self.clusters, self.n_boot, self.seed)

    def term_error_rate(self) -> dict:
        return _paired(self.occ_miss_b, self.occ_miss_a, self.occ, self.clusters, self.n_boot, self.seed)

    def ker(self, mask) -> dict:
        m = self.has_term * np.asarray(mask, float)
        return _paired(self.miss_b * m, self.miss_a * m, m, self.terms, self.n_boot, self.seed)


def compare_rows(before_rows: list[dict], after_rows: list[dict], priority: list[str], normalizer: str = "whisper",
                 n_boot: int = 1000, seed: int = 0, keep_rel_drop: float = 0.2, lexicon=None,
                 min_clusters: int = MIN_CLUSTERS) -> dict:
    """Every delta the flywheel reports (overall, per category, seen/new term, speaker, design cell, source) and the
    decision on the priority categories' KER."""
    ps = PairedScores(before_rows, after_rows, normalizer, n_boot, seed, lexicon)
    rows, wer, ker = ps.rows, ps.wer, ps.ker
    out = {"n_rows": len(rows), "n_boot": n_boot, "seed": seed, "priority": list(priority), "min_clusters": min_clusters,
           "clusters": {"wer": ps.cluster_key, "ker": "term"}, "deltas": {}}
    out["deltas"]["wer"] = wer(np.ones(len(rows)))
    out["deltas"]["term_error_rate"] = ps.term_error_rate()
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
