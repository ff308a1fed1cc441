"""Stage 5b — compare cycle N with cycle N+1 on the same rows, with a paired bootstrap, and decide.

Decision table (FACTS §4): priority-category KER dropped ≥ 20 % relative (CI excluding zero) → keep; a significant
but smaller drop → grow the manifest; significantly worse → overfit, grow data; a delta whose CI crosses zero is
"no measurable change", whatever its sign → check the per-category numbers.
"""

from __future__ import annotations

import numpy as np

from medasr.evaluate.metrics import score_rows


def _paired(before: np.ndarray, after: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> dict:
    if den.sum() == 0:
        return {"before": None, "after": None, "delta": None, "ci95": None, "p_value": None}
    b, a = before.sum() / den.sum(), after.sum() / den.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(den), size=(n_boot, len(den)))
    d = den[idx].sum(axis=1)
    ok = d > 0
    deltas = (after[idx].sum(axis=1)[ok] - before[idx].sum(axis=1)[ok]) / d[ok]
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    # two-sided bootstrap p-value: how often the resampled delta falls on the other side of zero, counting the observed
    # delta as one draw, so it is never below 1 / (draws + 1): n_boot draws cannot show more than that
    other = min(np.sum(deltas <= 0), np.sum(deltas >= 0))
    p = min(1.0, 2 * (other + 1) / (len(deltas) + 1))
    return {"before": float(b), "after": float(a), "delta": float(a - b), "ci95": [float(lo), float(hi)], "p_value": float(p)}


def compare_rows(before_rows: list[dict], after_rows: list[dict], priority: list[str], normalizer: str = "whisper",
                 n_boot: int = 1000, seed: int = 0, keep_rel_drop: float = 0.2, lexicon=None) -> dict:
    """`lexicon`: the one both evaluations tagged term occurrences with (default: the core lexicon)."""
    key = lambda r: r.get("id") or r["audio_filepath"]  # noqa: E731
    after_by = {key(r): r for r in after_rows}
    pairs = [(r, after_by[key(r)]) for r in before_rows if key(r) in after_by]
    if not pairs:
        raise ValueError("no rows in common between the two evaluations (matched on id / audio_filepath)")
    differ = [key(b) for b, a in pairs if b.get("text") != a.get("text") or b.get("term") != a.get("term")]
    if differ:  # the same id scored against another reference is not a paired comparison
        raise ValueError(f"{len(differ)} row(s) have a different reference (text or term) in the two evaluations, "
                         f"e.g. {differ[:3]}: compare evaluations of the same test manifest")
    if lexicon is None:
        from medasr.data.lexicon import core_lexicon

        lexicon = core_lexicon()
    lex = lexicon
    sb = score_rows([b for b, _ in pairs], normalizer, lex)
    sa = score_rows([a for _, a in pairs], normalizer, lex)
    words = np.array([s.ref_words for s in sb], float)
    out = {"n_rows": len(pairs), "n_boot": n_boot, "seed": seed, "priority": list(priority), "deltas": {}}
    edits_b, edits_a = np.array([s.word_edits for s in sb], float), np.array([s.word_edits for s in sa], float)
    out["deltas"]["wer"] = _paired(edits_b, edits_a, words, n_boot, seed)
    occ = np.array([len(s.occurrences) for s in sb], float)
    out["deltas"]["term_error_rate"] = _paired(
        np.array([sum(1 - o[2] for o in s.occurrences) for s in sb], float),
        np.array([sum(1 - o[2] for o in s.occurrences) for s in sa], float), occ, n_boot, seed)
    has_term = np.array([s.term_hit is not None for s in sb])
    miss_b = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sb], float)
    miss_a = np.array([0 if s.term_hit is None else 1 - s.term_hit for s in sa], float)
    out["deltas"]["ker"] = _paired(miss_b, miss_a, has_term.astype(float), n_boot, seed)
    cats = sorted({b.get("entity_category") for b, _ in pairs if b.get("term")} - {None})
    for c in cats:
        m = np.array([b.get("entity_category") == c and bool(b.get("term")) for b, _ in pairs], float)
        out["deltas"][f"ker[{c}]"] = _paired(miss_b * m, miss_a * m, m, n_boot, seed)
    term_kind = {seen: np.array([bool(b.get("term")) and b.get("term_seen") is seen for b, _ in pairs], float)
                 for seen in (True, False)}
    for seen, m in term_kind.items():
        if m.sum():
            out["deltas"][f"ker[{'seen' if seen else 'unseen'}]"] = _paired(miss_b * m, miss_a * m, m, n_boot, seed)
    if any("speaker_seen" in b for b, _ in pairs):
        for spk, name in ((True, "seen speaker"), (False, "new speaker")):
            sm = np.array([b.get("speaker_seen") is spk for b, _ in pairs], float)
            if not sm.sum():
                continue
            out["deltas"][f"wer[{name}]"] = _paired(edits_b * sm, edits_a * sm, words * sm, n_boot, seed)
            for seen, kind in term_kind.items():
                m = sm * kind
                if m.sum():
                    key = f"ker[{'seen' if seen else 'unseen'}, {name}]"
                    out["deltas"][key] = _paired(miss_b * m, miss_a * m, m, n_boot, seed)
    pm = np.array([bool(b.get("term")) and b.get("entity_category") in priority for b, _ in pairs], float)
    target = _paired(miss_b * pm, miss_a * pm, pm, n_boot, seed)
    out["deltas"]["ker[priority]"] = target
    out["decision"], out["reason"] = _decide(target, keep_rel_drop)
    return out


def _decide(t: dict, keep_rel_drop: float) -> tuple[str, str]:
    if t["delta"] is None:
        return "no_change", "no priority-category term rows to compare"
    lo, hi = t["ci95"]
    rel = -t["delta"] / t["before"] if t["before"] else 0.0
    desc = f"priority KER {t['before']:.3f} → {t['after']:.3f} (Δ {t['delta']:+.3f}, 95% CI {lo:+.3f} … {hi:+.3f})"
    if lo <= 0 <= hi:
        return "no_change", f"{desc}: no measurable change; check the per-category numbers"
    if t["delta"] > 0:
        return "overfit", f"{desc}: got worse; likely overfitting, grow and diversify the data"
    if rel >= keep_rel_drop:
        return "keep", f"{desc}: {100 * rel:.0f}% relative drop ≥ {100 * keep_rel_drop:.0f}%; keep the adapter"
    return "grow_data", f"{desc}: {100 * rel:.0f}% relative drop < {100 * keep_rel_drop:.0f}%; grow the manifest"
