"""Step 3 (README's workflow) — gate: fine-tune only when the base model's medical-term errors warrant it (routing
and thresholds after NVIDIA's clinical-ASR evaluation skill, NVIDIA/skills `digital-health-clinical-asr-eval`).

Routing on the priority categories' KER: > threshold (0.3) → fine-tune; 0.1–0.3 → expand the term list first;
< 0.1 → make the evaluation harder. The gate also refuses to decide on too little evidence: at least `min_rows`
term rows, and at least `min_per_priority` rows in each priority category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from medasr.config import GateConfig


@dataclass
class GateResult:
    train: bool
    route: str  # fine_tune | expand_terms | harder_eval | insufficient_data
    priority_ker: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(metrics: dict, gate: GateConfig) -> GateResult:
    by_cat = metrics.get("ker_by_category", {})
    n_term_rows = sum(v["n"] for v in by_cat.values())
    if n_term_rows < gate.min_rows:
        return GateResult(False, "insufficient_data", None, f"only {n_term_rows} term rows (< {gate.min_rows}); build more")
    short = [c for c in gate.priority if by_cat.get(c, {}).get("n", 0) < gate.min_per_priority]
    if short:
        return GateResult(
            False, "insufficient_data", None, f"priority categories with < {gate.min_per_priority} rows: {', '.join(short)}"
        )
    n = sum(by_cat[c]["n"] for c in gate.priority)
    ker = sum(by_cat[c]["ker"] * by_cat[c]["n"] for c in gate.priority) / n
    cats = "+".join(gate.priority)
    if ker > gate.ker_threshold:
        return GateResult(True, "fine_tune", ker, f"{cats} KER {ker:.3f} > {gate.ker_threshold}: fine-tune")
    if ker >= 0.1:
        return GateResult(False, "expand_terms", ker, f"{cats} KER {ker:.3f} in [0.1, {gate.ker_threshold}]: expand terms first")
    return GateResult(False, "harder_eval", ker, f"{cats} KER {ker:.3f} < 0.1: make the evaluation harder")
