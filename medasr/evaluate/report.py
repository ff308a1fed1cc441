"""Human-readable reports, written only from the JSON that the stages saved (never recomputed)."""

from __future__ import annotations


def fmt_p(p) -> str:
    """A bootstrap cannot show p below 1/n_boot: report 0 as '< 0.001', not as zero."""
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci_range(ci) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def _ci(ci) -> str:
    return "" if not ci else f" (95% CI {ci_range(ci)})"


def metrics_markdown(m: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"Rows: {m['n_rows']} ({m.get('unit', 'utterance')}s) · normaliser: `{m['normalizer']}` · lexicon: `{m.get('lexicon', 'core')}`"
        + "".join(f" · {k} CI resamples {v['n']} {v['key']}s" for k, v in m.get("ci_clusters", {}).items()),
        "",
        "| metric | value |",
        "|---|---|",
        f"| WER (corpus) | {_pct(m['wer'])}{_ci(m['ci95'].get('wer'))} |",
        f"| WER (mean of rows) | {_pct(m.get('wer_mean_utt'))} |",
        f"| CER | {_pct(m['cer'])} |",
        f"| sentence error rate | {_pct(m.get('ser'))} |",
        f"| medical term error rate (lexicon-tagged) | {_pct(m.get('term_error_rate'))}{_ci(m['ci95'].get('term_error_rate'))} |",
        f"| KER (all term rows) | {_pct(m['ker'])}{_ci(m['ci95'].get('ker'))} |",
        f"| KER, terms seen in training ({m['n_ker_seen']} rows) | {_pct(m['ker_seen'])} |",
        f"| KER, held-out terms ({m['n_ker_unseen']} rows) | {_pct(m['ker_unseen'])} |",
        "",
        "## KER by entity category",
        "",
        "| category | KER | rows |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {_pct(v['ker'])} | {v['n']} |" for c, v in m["ker_by_category"].items()]
    if m.get("by_speaker"):
        lines += ["", "## By speaker (was the row's speaker in the training data?)", "",
                  "| speaker | rows | WER | KER | KER, seen terms | KER, held-out terms |", "|---|---|---|---|---|---|"]
        for name, v in m["by_speaker"].items():
            lines.append(f"| {'training speaker' if name == 'seen' else 'new speaker'} | {v['n_rows']} | {_pct(v['wer'])}"
                         f"{_ci(v['wer_ci95'])} | {_pct(v['ker'])} | {_pct(v['ker_seen'])} ({v['n_ker_seen']}) | "
                         f"{_pct(v['ker_unseen'])} ({v['n_ker_unseen']}) |")
    if m.get("by_design"):
        lines += ["", "## Held-out design (term × voice × carrier sentence, each seen in fine-tuning or new)", "",
                  "| cell | rows | terms | WER | KER |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {v['n_rows']} | {v['ker_terms']} | {_pct(v['wer'])}{_ci(v['wer_ci95'])} | "
                  f"{_pct(v['ker'])}{_ci(v['ker_ci95'])} |" for name, v in m["by_design"].items()]
    if m.get("by_source"):
        lines += ["", "## By source (generic speech measures forgetting)", "", "| source | rows | WER |", "|---|---|---|"]
        lines += [f"| {name} | {v['n_rows']} | {_pct(v['wer'])}{_ci(v['wer_ci95'])} |" for name, v in m["by_source"].items()]
    for factor in ("engine", "accent", "voice"):
        if m.get(f"by_{factor}"):
            lines += ["", f"## By synthetic {factor}", "", f"| {factor} | rows | WER | KER |", "|---|---|---|---|"]
            lines += [f"| {name} | {v['n_rows']} | {_pct(v['wer'])}{_ci(v['wer_ci95'])} | {_pct(v['ker'])}"
                      f"{_ci(v['ker_ci95'])} |" for name, v in m[f"by_{factor}"].items()]
    worst = [(t, v) for t, v in m["per_term"].items() if v["ker"] > 0][:15]
    if worst:
        lines += ["", "## Most-missed terms", "", "| term | category | KER | rows |", "|---|---|---|---|"]
        lines += [f"| {t} | {v['entity_category']} | {_pct(v['ker'])} | {v['n']} |" for t, v in worst]
    return "\n".join(lines) + "\n"


def compare_markdown(c: dict) -> str:
    lines = [
        "# Before vs after",
        "",
        f"**Decision: {c['decision']}** — {c['reason']}",
        "",
        f"Paired bootstrap over {c['n_rows']} shared rows ({c['n_boot']} resamples, seed {c['seed']}), resampling whole "
        f"clusters: {c.get('clusters', {}).get('wer', 'row')}s for WER, terms for KER.",
        "",
        "| metric | before | after | Δ (after − before) | 95% CI | p | clusters |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in c["deltas"].items():
        ci = d["ci95"]
        ci_s = "n/a" if ci is None else f"{100 * ci[0]:+.1f} … {100 * ci[1]:+.1f} pt"
        p = fmt_p(d["p_value"])
        if d["delta"] is None:
            continue
        lines.append(f"| {name} | {_pct(d['before'])} | {_pct(d['after'])} | {100 * d['delta']:+.1f} pt | {ci_s} | {p} "
                     f"| {d.get('n_clusters', '')} |")
    return "\n".join(lines) + "\n"
