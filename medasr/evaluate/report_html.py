"""Self-contained HTML reports (inline CSS + SVG, no external assets), built from the JSON the stages wrote.

eval:    headline metrics with 95 % CIs · KER by category with CI bars · worst terms first · per-row WER histogram ·
         aligned error examples (substitutions, insertions, deletions marked)
compare: KER by category before/after with CI bars · paired deltas with CI and p · the decision
"""

from __future__ import annotations

import html
from pathlib import Path

import jiwer

from medasr.normalize import normalize
from medasr.evaluate.report import _pct, ci_range, fmt_p

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#1d2330}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #eef;text-align:left}
th{background:#f4f6fb}.num{text-align:right;font-variant-numeric:tabular-nums}
.sub{background:#ffe1a8}.ins{background:#c9f0c9}.del{background:#ffc9c9;text-decoration:line-through}
.ex{font-family:ui-monospace,Menlo,monospace;font-size:12.5px;margin:6px 0 14px}.muted{color:#667}
.decision{font-size:16px;padding:10px 14px;border-radius:6px;background:#eef3ff;display:inline-block}
"""

BEFORE, AFTER = "#8a97b4", "#2f6fdb"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def bar_chart(categories: list[str], series: list[tuple[str, str, dict]], width: int = 760) -> str:
    """Grouped horizontal bars, 0–100 %, with CI whiskers. series: (label, colour, {cat: (value, [lo, hi] | None)})."""
    row_h, bar_h, left, right = 18 * len(series) + 14, 14, 110, 50
    height = row_h * len(categories) + 40
    scale = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for tick in range(0, 101, 25):
        x = left + scale * tick / 100
        parts.append(f'<line x1="{x}" y1="10" x2="{x}" y2="{height - 25}" stroke="#e5e8f0"/>'
                     f'<text x="{x}" y="{height - 10}" font-size="11" text-anchor="middle" fill="#667">{tick}%</text>')
    for i, cat in enumerate(categories):
        y0 = 12 + i * row_h
        parts.append(f'<text x="{left - 8}" y="{y0 + row_h / 2}" font-size="12" text-anchor="end">{html.escape(cat)}</text>')
        for j, (label, colour, values) in enumerate(series):
            v, ci = values.get(cat, (None, None))
            if v is None:
                continue
            y = y0 + j * 18
            parts.append(f'<rect x="{left}" y="{y}" width="{scale * v:.1f}" height="{bar_h}" fill="{colour}">'
                         f'<title>{html.escape(label)} {cat}: {_pct(v)}</title></rect>'
                         f'<text x="{left + scale * v + 4:.1f}" y="{y + 11}" font-size="10.5" fill="#333">{_pct(v)}</text>')
            if ci:
                x1, x2, ym = left + scale * ci[0], left + scale * ci[1], y + bar_h / 2
                parts.append(f'<line x1="{x1:.1f}" y1="{ym}" x2="{x2:.1f}" y2="{ym}" stroke="#111" stroke-width="1.3"/>'
                             f'<line x1="{x1:.1f}" y1="{ym - 4}" x2="{x1:.1f}" y2="{ym + 4}" stroke="#111"/>'
                             f'<line x1="{x2:.1f}" y1="{ym - 4}" x2="{x2:.1f}" y2="{ym + 4}" stroke="#111"/>')
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">■</span> {html.escape(lbl)}' for lbl, c, _ in series)
    return f"<div>{''.join(parts)}</div><div class=muted>{legend} · whiskers: bootstrap 95 % CI</div>"


def histogram(values: list[float], bins: list[float], width: int = 760, height: int = 160) -> str:
    counts = [0] * (len(bins) - 1)
    for v in values:
        for k in range(len(bins) - 1):
            if bins[k] <= v < bins[k + 1] or (k == len(bins) - 2 and v >= bins[-1]):
                counts[k] += 1
                break
    top = max(counts) or 1
    bw = (width - 40) / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}">']
    for k, c in enumerate(counts):
        h = (height - 10) * c / top
        x = 20 + k * bw
        label = f"{int(100 * bins[k])}%" + ("+" if k == len(counts) - 1 else "")
        parts.append(f'<rect x="{x + 2:.1f}" y="{height - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" fill="{AFTER}">'
                     f'<title>{label}: {c} rows</title></rect>'
                     f'<text x="{x + bw / 2:.1f}" y="{height + 14}" font-size="10.5" text-anchor="middle">{label}</text>'
                     f'<text x="{x + bw / 2:.1f}" y="{height - h - 3:.1f}" font-size="10" text-anchor="middle">{c}</text>')
    parts.append("</svg>")
    return "".join(parts)


def aligned_example(ref: str, hyp: str, normalizer: str) -> str:
    r, h = normalize(ref, normalizer), normalize(hyp or "", normalizer)
    if not r or not h:
        return f'<div class=ex>REF {html.escape(r)}<br>HYP {html.escape(h) or "<i>(empty)</i>"}</div>'
    out = jiwer.process_words(r, h)
    rw, hw = out.references[0], out.hypotheses[0]
    ref_parts, hyp_parts = [], []
    for c in out.alignments[0]:
        rs, hs = rw[c.ref_start_idx : c.ref_end_idx], hw[c.hyp_start_idx : c.hyp_end_idx]
        esc = lambda ws: html.escape(" ".join(ws))  # noqa: E731
        if c.type == "equal":
            ref_parts.append(esc(rs))
            hyp_parts.append(esc(hs))
        elif c.type == "substitute":
            ref_parts.append(f"<span class=sub>{esc(rs)}</span>")
            hyp_parts.append(f"<span class=sub>{esc(hs)}</span>")
        elif c.type == "delete":
            ref_parts.append(f"<span class=del>{esc(rs)}</span>")
        else:
            hyp_parts.append(f"<span class=ins>{esc(hs)}</span>")
    return f"<div class=ex>REF {' '.join(ref_parts)}<br>HYP {' '.join(hyp_parts)}</div>"


def eval_html(metrics: dict, hyps: list[dict], title: str, max_examples: int = 25) -> str:
    m = metrics
    head = [("WER (corpus)", m["wer"], m["ci95"].get("wer")), ("WER (mean of rows)", m.get("wer_mean_utt"), None),
            ("CER", m["cer"], None), ("sentence error rate", m.get("ser"), None),
            ("KER", m["ker"], m["ci95"].get("ker")), ("KER, seen terms", m["ker_seen"], None),
            ("KER, held-out terms", m["ker_unseen"], None),
            ("medical term error rate (lexicon)", m.get("term_error_rate"), m["ci95"].get("term_error_rate"))]
    body = [f"<p class=muted>{m['n_rows']} rows · normaliser <code>{m['normalizer']}</code></p><table>"
            "<tr><th>metric</th><th class=num>value</th><th class=num>95 % CI</th></tr>"]
    body += [f"<tr><td>{n}</td><td class=num>{_pct(v)}</td><td class=num>{ci_range(ci)}</td></tr>" for n, v, ci in head]
    body.append("</table>")
    if m.get("by_speaker"):
        body.append("<h2>By speaker</h2><table><tr><th>speaker</th><th class=num>rows</th><th class=num>WER</th>"
                    "<th class=num>KER</th><th class=num>KER, seen terms</th><th class=num>KER, held-out terms</th></tr>")
        body += [f"<tr><td>{'training speaker' if k == 'seen' else 'new speaker'}</td><td class=num>{v['n_rows']}</td>"
                 f"<td class=num>{_pct(v['wer'])}</td><td class=num>{_pct(v['ker'])}</td>"
                 f"<td class=num>{_pct(v['ker_seen'])}</td><td class=num>{_pct(v['ker_unseen'])}</td></tr>"
                 for k, v in m["by_speaker"].items()]
        body.append("</table>")
    for factor in ("engine", "accent", "voice"):
        if m.get(f"by_{factor}"):
            body.append(f"<h2>By synthetic {factor}</h2><table><tr><th>{factor}</th><th class=num>rows</th>"
                        "<th class=num>WER</th><th class=num>95 % CI</th><th class=num>KER</th><th class=num>95 % CI</th></tr>")
            body += [f"<tr><td>{html.escape(k)}</td><td class=num>{v['n_rows']}</td><td class=num>{_pct(v['wer'])}</td>"
                     f"<td class=num>{ci_range(v['wer_ci95'])}</td><td class=num>{_pct(v['ker'])}</td>"
                     f"<td class=num>{ci_range(v['ker_ci95'])}</td></tr>" for k, v in m[f"by_{factor}"].items()]
            body.append("</table>")
    cats = list(m["ker_by_category"])
    if cats:
        body.append("<h2>KER by entity category</h2>")
        body.append(bar_chart(cats, [("KER", AFTER, {c: (v["ker"], v.get("ci95")) for c, v in m["ker_by_category"].items()})]))
    worst = [(t, v) for t, v in m["per_term"].items() if v["ker"] > 0][:30]
    if worst:
        body.append("<h2>Worst terms first</h2><table><tr><th>term</th><th>category</th><th class=num>KER</th><th class=num>rows</th></tr>")
        body += [f"<tr><td>{html.escape(t)}</td><td>{v['entity_category']}</td><td class=num>{_pct(v['ker'])}</td>"
                 f"<td class=num>{v['n']}</td></tr>" for t, v in worst]
        body.append("</table>")
    per_row = []
    scored = []
    for r in hyps:
        rn = normalize(r["text"], m["normalizer"])
        if not rn:
            continue
        o = jiwer.process_words(rn, normalize(r.get("pred_text") or "", m["normalizer"]) or "<empty>")
        w = (o.substitutions + o.deletions + o.insertions) / len(rn.split())
        per_row.append(w)
        scored.append((w, r))
    if per_row:
        body.append("<h2>Per-row WER distribution</h2>")
        body.append(histogram(per_row, [0, 0.0001, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5]))
    errs = [r for w, r in sorted(scored, key=lambda x: -x[0]) if w > 0][:max_examples]
    if errs:
        body.append("<h2>Aligned error examples</h2><p class=muted><span class=sub>substitution</span> "
                    "<span class=ins>insertion</span> <span class=del>deletion</span></p>")
        body += [aligned_example(r["text"], r.get("pred_text", ""), m["normalizer"]) for r in errs]
    return _page(title, "".join(body))


def compare_html(cmp: dict, before: dict, after: dict) -> str:
    cats = sorted(set(before["ker_by_category"]) | set(after["ker_by_category"]))
    series = [("before", BEFORE, {c: (v["ker"], v.get("ci95")) for c, v in before["ker_by_category"].items()}),
              ("after", AFTER, {c: (v["ker"], v.get("ci95")) for c, v in after["ker_by_category"].items()})]
    body = [f"<p class=decision><b>Decision: {html.escape(cmp['decision'])}</b> — {html.escape(cmp['reason'])}</p>",
            f"<p class=muted>Paired bootstrap over {cmp['n_rows']} shared rows ({cmp['n_boot']} resamples, seed {cmp['seed']}). "
            "A delta whose CI crosses zero is no measurable change.</p>"]
    if cats:
        body += ["<h2>KER by entity category, before vs after</h2>", bar_chart(cats, series)]
    body.append("<h2>Paired deltas</h2><table><tr><th>metric</th><th class=num>before</th><th class=num>after</th>"
                "<th class=num>Δ</th><th class=num>95 % CI (pt)</th><th class=num>p</th><th class=num>clusters</th></tr>")
    for name, d in cmp["deltas"].items():
        if d["delta"] is None:
            continue
        ci = d["ci95"]
        body.append(f"<tr><td>{html.escape(name)}</td><td class=num>{_pct(d['before'])}</td><td class=num>{_pct(d['after'])}</td>"
                    f"<td class=num>{100 * d['delta']:+.1f} pt</td><td class=num>{100 * ci[0]:+.1f} … {100 * ci[1]:+.1f}</td>"
                    f"<td class=num>{fmt_p(d['p_value'])}</td><td class=num>{d.get('n_clusters', '')}</td></tr>")
    body.append("</table>")
    return _page("Before vs after", "".join(body))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
