"""Stage 1 — build: the term-targeted synthetic medical corpus as NeMo manifests (train / val / test).

Outputs under RUN/data/: audio/, train.json, val.json, test.json, build_report.json. A finished build (report present,
same config fingerprint, every manifest row count matching) is skipped, so re-running the flywheel resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from rich.progress import Progress

from medasr.config import Config
from medasr.data.lexicon import core_lexicon
from medasr.data.manifest import read_manifest, write_manifest
from medasr.data.synth import plan_corpus, synthesize

SPLITS = ("train", "val", "test")


def fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg.data), sort_keys=True).encode()).hexdigest()[:16]


def build_is_done(data_dir: Path, cfg: Config) -> bool:
    report = data_dir / "build_report.json"
    if not report.exists():
        return False
    rep = json.loads(report.read_text())
    if rep.get("fingerprint") != fingerprint(cfg):
        return False
    for s in SPLITS:
        p = data_dir / f"{s}.json"
        if not p.exists() or len(read_manifest(p)) != rep["splits"][s]["rows"]:
            return False
    return True


def _summary(rows: list[dict]) -> dict:
    return {
        "rows": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "terms": len({r["term"] for r in rows}),
        "by_category": dict(sorted(Counter(r["entity_category"] for r in rows).items())),
        "by_noise": dict(sorted(Counter(r["noise_level"] for r in rows).items())),
        "seen_terms_rows": sum(bool(r["term_seen"]) for r in rows),
        "unseen_terms_rows": sum(not r["term_seen"] for r in rows),
    }


def build(cfg: Config, run_dir: Path, force: bool = False) -> dict:
    data_dir = run_dir / "data"
    if not force and build_is_done(data_dir, cfg):
        return json.loads((data_dir / "build_report.json").read_text()) | {"skipped": True}
    if cfg.data.source != "synthetic":
        raise NotImplementedError(f"data.source={cfg.data.source!r}: only 'synthetic' is available in this version")
    s = cfg.data.synth
    lexicon = core_lexicon()
    plan = plan_corpus(
        lexicon,
        seed=cfg.data.seed,
        train_voices=list(s.train_voices),
        test_voices=list(s.test_voices),
        unseen_fraction=s.unseen_fraction,
        train_per_term=s.train_per_term,
        val_per_term=s.val_per_term,
        test_per_term=s.test_per_term,
        unseen_test_per_term=s.unseen_test_per_term,
        rates=(s.rate_min, s.rate_max),
        noise_levels=list(s.noise_levels),
    )
    caps = {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": None}
    dropped = {}
    kept = []
    for split in SPLITS:
        items = [u for u in plan if u.split == split]
        cap = caps[split]
        if cap is not None and len(items) > cap:
            dropped[split] = len(items) - cap  # deterministic: the plan order is seeded
            items = items[:cap]
        kept.extend(items)
    with Progress() as progress:
        task = progress.add_task("synthesising speech (espeak-ng)", total=len(kept))
        rows = synthesize(kept, data_dir / "audio", progress=lambda: progress.advance(task))
    by_split = {sp: [r for r in rows if r["id"].startswith(sp + "-")] for sp in SPLITS}
    train_terms = {r["term"] for r in by_split["train"]}
    # term_seen is recomputed from the final train manifest, so caps can never mislabel a row.
    for sp in ("val", "test"):
        for r in by_split[sp]:
            r["term_seen"] = r["term"] in train_terms
    for sp in SPLITS:
        write_manifest(data_dir / f"{sp}.json", by_split[sp])
    report = {
        "source": "synthetic-espeak",
        "fingerprint": fingerprint(cfg),
        "lexicon_terms": len(lexicon),
        "seed": cfg.data.seed,
        "dropped_by_cap": dropped,
        "splits": {sp: _summary(by_split[sp]) for sp in SPLITS},
        "voices": {"train": list(s.train_voices), "test_only": list(s.test_voices)},
    }
    (data_dir / "build_report.json").write_text(json.dumps(report, indent=2))
    return report
