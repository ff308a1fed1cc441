"""The held-out design as one table, from two evaluations' `hyps.json` alone (`medasr table BEFORE AFTER`): what the
README's mini results show, re-scorable by anyone from the files in docs/results/mini/.

Cells: seen terms by voice (a training voice; a new speaker of a training accent; a new accent; a new engine) and
held-out terms by voice (training / new), split by carrier sentence only when the test set holds training carriers;
then the generic-English forgetting slice. Each cell: KER and WER before and after, the paired change with a 95 %
bootstrap interval (KER resamples terms, WER the rows' clusters), and the relative KER change with its own interval.
The issue's targets are judged on the same numbers and written beside them (met / missed), never adjusted.
"""

from __future__ import annotations

from pathlib import Path

from medasr.data.manifest import read_manifest
from medasr.data.split import speaker_of
from medasr.errors import InputError
from medasr.evaluate.compare import PairedScores
from medasr.evaluate.metrics import HELD_OUT_KINDS, held_out_voice_kinds

VOICE_KINDS = ("training voice",) + HELD_OUT_KINDS
TARGET_REL_DROP = 0.5  # seen-term KER on new speakers and on the new accent: at least halved, CI excluding zero
TARGET_GENERIC_RISE = 0.01  # generic-English WER: rises by at most 1 point


def read_hyps(path: Path) -> list[dict]:
    """An eval folder's hyps.json (or the file itself): the manifest reader's checks, `text` and `pred_text` required."""
    f = path / "hyps.json" if path.is_dir() else path
    if not f.is_file():
        raise InputError(f"{f}: no such file (pass an eval folder holding hyps.json, or the file)")
    return read_manifest(f, required=("text", "pred_text"))


def _cell(ps: PairedScores, name: str, mask: list[bool]) -> dict:
    rows = [r for r, m in zip(ps.rows, mask) if m]
    return {"name": name, "rows": len(rows), "terms": len({r["term"] for r in rows if r.get("term")}),
            "voices": sorted({speaker_of(r) for r in rows} - {None}),
            "ker": ps.ker(mask) if any(r.get("term") for r in rows) else None, "wer": ps.wer(mask)}


FORGETTING = "forgetting: generic English"


def _voice_kinds(rows: list[dict]) -> list[str | None]:
    return [k or ("training voice" if r.get("speaker_seen") is True and r.get("engine") else None)
            for r, k in zip(rows, held_out_voice_kinds(rows))]


def row_cells(rows: list[dict]) -> list[str | None]:
    """Each row's cell of the table (None: in none, e.g. a real recording): "seen term · new accent · new carrier",
    "held-out term · new voice · new carrier", FORGETTING, … (written into docs/results/mini's hyps files)."""
    split_carrier = any(r.get("term") and r.get("carrier_seen") is True for r in rows)
    out = []
    for r, kind in zip(rows, _voice_kinds(rows)):
        if r.get("term") and r.get("term_seen") in (True, False) and kind:
            voice = kind if r["term_seen"] or kind == "training voice" else "new voice"
            carrier = "training carrier" if split_carrier and r.get("carrier_seen") else "new carrier"
            out.append(f"{'seen term' if r['term_seen'] else 'held-out term'} · {voice} · {carrier}")
        else:
            out.append(FORGETTING if str(r.get("source", "")).startswith("generic") else None)
    return out


def design_table(before_rows: list[dict], after_rows: list[dict], n_boot: int = 1000, seed: int = 0,
                 lexicon=None, normalizer: str = "whisper") -> dict:
    ps = PairedScores(before_rows, after_rows, normalizer=normalizer, n_boot=n_boot, seed=seed, lexicon=lexicon)
    rows, labels = ps.rows, row_cells(ps.rows)
    carriers = ["training carrier", "new carrier"]
    cells = []
    for seen, term_name in ((True, "seen term"), (False, "held-out term")):
        for voice in (VOICE_KINDS if seen else ("training voice", "new voice")):
            for carrier in carriers:
                name = f"{term_name} · {voice} · {carrier}"
                mask = [x == name for x in labels]
                if any(mask):
                    cells.append(_cell(ps, name, mask) | {"term_seen": seen, "voice": voice, "carrier": carrier})
    generic = [x == FORGETTING for x in labels]
    forgetting = _cell(ps, FORGETTING, generic) if any(generic) else None
    return {"n_rows": len(rows), "n_outside": labels.count(None), "n_boot": n_boot, "seed": seed,
            "wer_clusters": ps.cluster_key, "cells": cells, "forgetting": forgetting,
            "targets": _targets(ps, labels, forgetting)}


def _targets(ps: PairedScores, labels: list[str | None], forgetting: dict | None) -> list[dict]:
    """Judged on the table's own cells: seen terms by a new speaker / the new accent in new sentences."""
    out = []
    for kind in ("new speaker", "new accent"):
        mask = [x == f"seen term · {kind} · new carrier" for x in labels]
        if not any(mask):
            out.append({"name": f"seen-term KER, {kind}", "met": None, "why": "no such rows in the test set"})
            continue
        k = ps.ker(mask)
        if not k["before"]:
            out.append({"name": f"seen-term KER, {kind}", "met": None, "why": "the base misses no term there"})
            continue
        met = k["rel"] <= -TARGET_REL_DROP and k["ci95"][1] < 0
        out.append({"name": f"seen-term KER, {kind}", "rows": sum(mask), "ker": k, "met": met,
                    "target": f"falls by ≥ {100 * TARGET_REL_DROP:.0f} % relative, 95 % CI of the change excluding 0"})
    if forgetting is None:
        out.append({"name": "generic-English WER", "met": None, "why": "no generic rows in the test set"})
    else:
        w = forgetting["wer"]
        out.append({"name": "generic-English WER", "rows": forgetting["rows"], "wer": w,
                    "met": w["delta"] <= TARGET_GENERIC_RISE, "ci_within": w["ci95"][1] <= TARGET_GENERIC_RISE,
                    "target": f"rises by ≤ {100 * TARGET_GENERIC_RISE:.0f} point"})
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _pt(d: dict | None) -> str:
    if not d or d["delta"] is None:
        return "—"
    lo, hi = d["ci95"]
    return f"{100 * d['delta']:+.1f} pt ({100 * lo:+.1f} … {100 * hi:+.1f})".replace("-", "−")


def _rel(d: dict | None) -> str:
    if not d or d["rel"] is None:
        return "—"
    lo, hi = d["rel_ci95"]
    return f"{100 * d['rel']:+.0f} % ({100 * lo:+.0f} … {100 * hi:+.0f})".replace("-", "−")


def render_markdown(t: dict) -> str:
    lines = ["| test cell (term · voice · sentence) | rows | terms | base KER | fine-tuned KER | Δ KER (95 % CI) "
             "| relative (95 % CI) | base WER | fine-tuned WER | Δ WER (95 % CI) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in t["cells"]:
        k, w = c["ker"], c["wer"]
        bold = c["term_seen"] and c["voice"] in ("new speaker", "new accent")
        name = f"**{c['name']}**" if bold else c["name"]
        lines.append(f"| {name} | {c['rows']} | {c['terms']} | {_pct(k and k['before'])} | {_pct(k and k['after'])} "
                     f"| {_pt(k)} | {_rel(k)} | {_pct(w['before'])} | {_pct(w['after'])} | {_pt(w)} |")
    f = t["forgetting"]
    if f:
        w = f["wer"]
        lines.append(f"| {f['name']} | {f['rows']} | — | — | — | — | — | {_pct(w['before'])} | {_pct(w['after'])} "
                     f"| {_pt(w)} |")
    lines.append("")
    lines.append("The mini demo's targets, judged on this table:")
    lines.append("")
    for g in t["targets"]:
        verdict = {True: "**met**", False: "**missed**", None: "not measurable"}[g["met"]]
        if "ker" in g:
            k = g["ker"]
            lines.append(f"- {g['name']} ({g['rows']} rows, {k['n_clusters']} terms): {_pct(k['before'])} → "
                         f"{_pct(k['after'])}, {_rel(k)} relative, Δ {_pt(k)} — target: {g['target']}: {verdict}")
        elif "wer" in g:
            w = g["wer"]
            ci = ("" if not g["met"] else " (so is the upper end of its 95 % CI)" if g["ci_within"] else
                  " on the point estimate; its 95 % CI reaches above the target")
            lines.append(f"- {g['name']} ({g['rows']} sentences): {_pct(w['before'])} → {_pct(w['after'])}, Δ {_pt(w)} "
                         f"— target: {g['target']}: {verdict}{ci}")
        else:
            lines.append(f"- {g['name']}: {verdict} ({g['why']})")
    lines.append("")
    outside = f" ({t['n_outside']} in no cell: no synthetic voice or seen/new flags)" if t["n_outside"] else ""
    lines.append(f"{t['n_rows']} paired test rows{outside}; paired bootstrap, {t['n_boot']} resamples (seed {t['seed']}): KER "
                 f"resamples whole terms, WER whole clusters (rows' `{t['wer_clusters']}`). Voices: "
                 + "; ".join(f"{c['voice']}: {', '.join(c['voices'])}" for c in _voice_cells(t)) + ".")
    return "\n".join(lines) + "\n"


def _voice_cells(t: dict) -> list[dict]:
    """One seen-term cell per voice kind (their voices are the held-out design's)."""
    seen, out = set(), []
    for c in t["cells"]:
        if c["term_seen"] and c["voice"] not in seen:
            seen.add(c["voice"])
            out.append(c)
    return out


README_START, README_END = "<!-- medasr table: start -->", "<!-- medasr table: end -->"


def _check_markers(readme: str) -> None:
    if (readme.count(README_START), readme.count(README_END)) != (1, 1) or \
            readme.index(README_START) > readme.index(README_END):
        raise InputError(f"README: expected one {README_START}, then one {README_END}, around the results table")


def splice(readme: str, table_md: str) -> str:
    """README with the text between its table markers replaced by `table_md` (what scripts/mini_results.sh writes)."""
    _check_markers(readme)
    head, rest = readme.split(README_START)
    _, tail = rest.split(README_END)
    return f"{head}{README_START}\n{table_md}{README_END}{tail}"


def readme_table(readme: str) -> str:
    """The text between README's table markers (what a test holds equal to the table made from the hyps files)."""
    _check_markers(readme)
    return readme.split(README_START)[1].split(README_END)[0].lstrip("\n")
