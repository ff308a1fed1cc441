"""Which lexicon's term error rate tracks the PriMock57 leaderboard's medical WER (issue 21: a lexicon that fits), and
how well does medasr's WER (its normaliser) rank the systems as the leaderboard's published WER does (issue 33)?

Scores every system's published long-form transcripts from a checkout of Omi-Health/medical-STT-eval (its
results/transcripts/<system>/<consultation>_conversation_transcript.txt against data/cleaned_transcripts/
<consultation>_pure_text.txt, the two excluded consultations left out) with medasr's term error rate, once per lexicon,
and prints, across systems, the Pearson and Spearman correlation of each with the leaderboard's M-WER
(results/comparisons/leaderboard.json, a hand-made 179-word list) plus how many term occurrences each lexicon tags;
then the same correlations of medasr's WER (corpus, and the per-consultation mean the leaderboard publishes) with the
published WER.

    git clone https://github.com/Omi-Health/medical-STT-eval /data/omi      # or any checkout / archive of it
    .venv/bin/python bench/lexicon_fit.py /data/omi [--out lexicon_fit.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medasr.data.sources.primock57 import LEADERBOARD_EXCLUDED
from medasr.evaluate.metrics import compute_metrics
from medasr.evaluate.stage import load_lexicon


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks for ties
        r[x == v] = r[x == v].mean()
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("omi", type=Path, help="checkout of Omi-Health/medical-STT-eval")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    board = json.loads((a.omi / "results/comparisons/leaderboard.json").read_text())
    refs = {p.name.replace("_pure_text.txt", ""): p.read_text()
            for p in sorted((a.omi / "data/cleaned_transcripts").glob("*_pure_text.txt"))}
    refs = {c: t for c, t in refs.items() if c not in LEADERBOARD_EXCLUDED}
    lexicons = {name: load_lexicon(name) for name in ("core", "extended")}
    systems, missing = [], []
    for m in board["models"]:
        d = a.omi / "results/transcripts" / m["name"]
        if not d.is_dir():
            missing.append(m["name"])
            continue
        rows = [{"id": c, "text": ref, "pred_text": (d / f"{c}_conversation_transcript.txt").read_text()}
                for c, ref in refs.items() if (d / f"{c}_conversation_transcript.txt").exists()]
        s = {"name": m["name"], "m_wer": m["m_wer"], "wer": m["wer"], "files": len(rows)}
        plain = compute_metrics(rows, n_boot=0)
        s["ours"] = {"wer": plain["wer"], "wer_mean_utt": plain["wer_mean_utt"]}
        for name, lex in lexicons.items():
            met = compute_metrics(rows, n_boot=0, lexicon=lex)
            s[name] = {"term_error_rate": met["term_error_rate"],
                       "occurrences": sum(v["occurrences"] for v in met["term_counts_by_category"].values())}
        systems.append(s)
        print(f"{m['name']:45s} M-WER {100 * m['m_wer']:5.2f}%  core {100 * s['core']['term_error_rate']:5.2f}%  "
              f"extended {100 * s['extended']['term_error_rate']:5.2f}%", flush=True)
    mwer = np.array([s["m_wer"] for s in systems])
    result = {"systems": len(systems), "not_found": missing, "consultations": len(refs), "by_lexicon": {}}
    for name in lexicons:
        ter = np.array([s[name]["term_error_rate"] for s in systems])
        result["by_lexicon"][name] = {
            "pearson": float(np.corrcoef(ter, mwer)[0, 1]),
            "spearman": float(np.corrcoef(_ranks(ter), _ranks(mwer))[0, 1]),
            "occurrences_in_references": systems[0][name]["occurrences"]}
    wer = np.array([s["wer"] for s in systems])
    result["wer_agreement"] = {
        agg: {"pearson": float(np.corrcoef(ours, wer)[0, 1]), "spearman": float(np.corrcoef(_ranks(ours), _ranks(wer))[0, 1])}
        for agg in ("wer", "wer_mean_utt") for ours in [np.array([s["ours"][agg] for s in systems])]}
    print(json.dumps({k: result[k] for k in ("by_lexicon", "wer_agreement")}, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result | {"per_system": systems}, indent=1))


if __name__ == "__main__":
    main()
