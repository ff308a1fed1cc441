"""The parts of a model card every family writes alike: the training data, the before/after table on the test set with
the decision, the checkpoint selection and the steps trained (each family's card is in its module)."""

from __future__ import annotations


def results_section(build_report: dict, before: dict, after: dict, compare: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("WER (corpus)", before["wer"], after["wer"]),
        ("CER", before["cer"], after["cer"]),
        ("KER, all term rows", before["ker"], after["ker"]),
        ("KER, terms seen in training", before["ker_seen"], after["ker_seen"]),
        ("KER, held-out terms", before["ker_unseen"], after["ker_unseen"]),
    ]
    for name, label in (("seen", "training speaker"), ("new", "new speaker")):
        b, a = (before.get("by_speaker") or {}).get(name), (after.get("by_speaker") or {}).get(name)
        if b and a and b["n_rows"]:
            rows += [(f"WER, {label} ({a['n_rows']} rows)", b["wer"], a["wer"]),
                     (f"KER, seen terms, {label}", b["ker_seen"], a["ker_seen"]),
                     (f"KER, held-out terms, {label}", b["ker_unseen"], a["ker_unseen"])]
    for name, a in (after.get("by_design") or {}).items():
        if b := (before.get("by_design") or {}).get(name):
            rows.append((f"KER, {name} ({a['n_rows']} rows, {a['ker_terms']} terms)", b["ker"], a["ker"]))
    for name, a in (after.get("by_source") or {}).items():
        if b := (before.get("by_source") or {}).get(name):
            rows.append((f"WER, source {name} ({a['n_rows']} rows)", b["wer"], a["wer"]))
    made = (after.get("inputs") or {}).get("decode") or {}
    provenance = (f"\nScored on manifest sha256 `{made['manifest_sha256'][:16]}…`, model sha256 "
                  f"`{made['model_sha256'][:16]}…` (metrics.json `inputs`).\n" if made else "")
    synthetic = ("\nSynthetic speech only (TTS voices reading template sentences): the numbers below say what was learnt "
                 "on such speech, not how the model does on real recordings; evaluate it on your own audio before use.\n"
                 if str(build_report.get("source", "")).startswith("synthetic") else "")
    return f"""## Training data
Source `{build_report.get('source')}`: {build_report['splits']['train']['rows']} training rows
({build_report['splits']['train']['terms']} terms), {build_report['splits']['val']['rows']} validation rows.
The test set holds terms never seen in training as well as seen terms; where rows say whether their speaker was in
the training data (`speaker_seen`; synthetic rows: half a training voice, half a voice never used in training),
the speaker rows below separate a new voice from a new term.
{synthetic}
## Results on the test set ({after['n_rows']} rows, normaliser `{after['normalizer']}`)

| metric | base | fine-tuned |
|---|---|---|
""" + "\n".join(f"| {n} | {pct(b)} | {pct(a)} |" for n, b, a in rows) + f"""

Decision: **{compare['decision']}** — {compare['reason']}
""" + provenance


def steps_line(meta: dict) -> str:
    trained = (meta.get("selection") or {}).get("trained_steps", meta["global_step"])
    return f"{trained}" + (f" (exported weights: step {meta['global_step']})" if trained != meta["global_step"] else "")


def selection_lines(meta: dict) -> str:
    sel, chk = meta.get("selection"), meta.get("reload_check")
    if not sel:
        return ""
    cands = ", ".join(f"{c['name']} (`{c['checkpoint']}`) {100 * c['val_wer']:.2f}%" for c in sel["candidates"])
    text = f"- Checkpoint: `{meta['checkpoint']}`, chosen by {sel['metric']}: {cands}\n"
    if chk:
        text += (f"- Reload check: the exported model reloaded from disk scores {100 * chk['reloaded_wer']:.2f}% on those "
                 f"rows vs {100 * chk['in_memory_wer']:.2f}% in memory (tolerance {100 * chk['tolerance']:.1f} point)\n")
    return text


def by_source_lines(meta: dict) -> str:
    by = meta.get("prompts_by_source") or {}
    if not by:
        return ""
    return "; per data source (a row's `source` starting with the key), the same in training and evaluation:\n" + \
        "\n".join(f"  - `{k}`: `{v}`" for k, v in sorted(by.items()))
