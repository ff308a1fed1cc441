"""Step 1 (README's workflow) — build: NeMo manifests (train / val / test) from the synthetic corpus or a real dataset reader.

Outputs under RUN/data/: audio/, train.json, val.json, test.json, build_report.json (+ selection.json for real
sources). Every build ends with the contamination check (training rows equal to, or sharing an 8-gram with, a
validation/test reference are dropped and counted). A finished build (report present, same config fingerprint,
every manifest row count matching) is skipped, so re-running the flywheel resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from rich.progress import Progress

from medasr.config import Config
from medasr.console import console
from medasr.data.contamination import decontaminate
from medasr.data.generic_speech import GenericUtterance, synthesize_generic
from medasr.data.generic_text import generic_sentences
from medasr.data.lexicon import core_lexicon
from medasr.data.manifest import read_manifest, write_manifest
from medasr.data.split import cluster_of, speaker_of, speakers, split_train_val, stratified_take
from medasr.data.sources import load_source
from medasr.data.synth import check_engines, plan_corpus, plan_voices, synthesize
from medasr.errors import InputError

SPLITS = ("train", "val", "test")


def fingerprint(cfg: Config) -> str:
    """What the data depends on (how many processes synthesise it does not change it)."""
    d = asdict(cfg.data)
    d["synth"].pop("workers", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def synth_workers(cfg: Config) -> int:
    """data.synth.workers, 0 = one per core up to 16 (a Kokoro worker holds ~0.4 GB: model, lexicons)."""
    return cfg.data.synth.workers or min(16, os.cpu_count() or 1)


def data_present(data_dir: Path) -> bool:
    """Every split's manifest and every row's audio is on disk (a pod restored from S3 has the manifests but not the
    audio, ops.s3_include_audio); whether they were built from today's settings is the build stage's record."""
    for s in SPLITS:
        p = data_dir / f"{s}.json"
        if not p.exists() or not all(Path(r["audio_filepath"]).exists() for r in read_manifest(p)):
            return False
    return True


def _summary(rows: list[dict]) -> dict:
    out = {
        "rows": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
        "by_source": dict(sorted(Counter(r.get("source", "?") for r in rows).items())),
        "speakers": len({speaker_of(r) for r in rows} - {None}),  # synthetic rows: their voices
    }
    if any("term" in r for r in rows):  # term-targeted rows
        out |= {
            "terms": len({r["term"] for r in rows if r.get("term")}),
            "by_category": dict(sorted(Counter(r["entity_category"] for r in rows if r.get("term")).items())),
            "by_noise": dict(sorted(Counter(r["noise_level"] for r in rows if "noise_level" in r).items())),
            "seen_terms_rows": sum(bool(r.get("term_seen")) for r in rows if r.get("term")),
            "unseen_terms_rows": sum(not r.get("term_seen") for r in rows if r.get("term")),
        }
    if any("engine" in r for r in rows):  # synthetic voices: what the held-out design varies
        out["by_engine"] = dict(sorted(Counter(r["engine"] for r in rows if r.get("engine")).items()))
        out["by_accent"] = dict(sorted(Counter(r["accent"] for r in rows if r.get("accent")).items()))
        out["by_voice"] = dict(sorted(Counter(speaker_of(r) for r in rows if r.get("engine")).items()))
    if any("cluster" in r for r in rows):
        keys = {r["cluster"] for r in rows if r.get("cluster")}
        out["clusters"] = {"n": len(keys), "by_kind": dict(sorted(Counter(k.split(":", 1)[0] for k in keys).items()))}
    if any("speaker_seen" in r for r in rows):
        out["speaker_seen_rows"] = sum(r.get("speaker_seen") is True for r in rows)
        out["speaker_new_rows"] = sum(r.get("speaker_seen") is False for r in rows)
    tagged = Counter(t["entity_category"] for r in rows for t in r.get("terms", []))
    if tagged:
        out["lexicon_term_occurrences"] = dict(sorted(tagged.items()))
    return out


def _build_real(cfg: Config, data_dir: Path, want: tuple[str, ...] = SPLITS) -> tuple[dict[str, list[dict]], dict]:
    d = cfg.data
    res = load_source(d.source, data_dir / "audio", Path(d.local) if d.local else None,
                      text_column=d.text_column, audio_column=d.audio_column, speaker_column=d.speaker_column)
    for note in res.notes:  # e.g. recordings too long to use, and how to make them usable
        console.print(f"{d.source}: {note}", highlight=False, markup=False)
    train_pool, val_pool, test = res.splits.get("train", []), res.splits.get("val", []), res.splits.get("test", [])
    if tuple(want) == ("test",):  # a test-only source (e.g. PriMock57 in the POC mix): every row is test
        test, train_pool, val_pool = train_pool + val_pool + test, [], []
    test_speakers = speakers(test)
    train_pool = [r for r in train_pool if str(r.get("speaker")) not in test_speakers or not r.get("speaker")]
    if "val" not in want:  # e.g. a mix component that only contributes training rows
        val = []
        train, _ = stratified_take(train_pool, min(d.max_train, len(train_pool)), d.seed + 1)
    elif val_pool:
        val, _ = stratified_take(val_pool, min(d.max_val, len(val_pool)), d.seed)
        val_spk = speakers(val)
        train, _ = stratified_take([r for r in train_pool if not r.get("speaker") or str(r["speaker"]) not in val_spk],
                                   min(d.max_train, len(train_pool)), d.seed + 1)
    else:
        train, val = split_train_val(train_pool, d.max_train, d.max_val, d.seed)
    selection = {"seed": d.seed, "max_train": d.max_train, "max_val": d.max_val,
                 "ids": {"train": [r["id"] for r in train], "val": [r["id"] for r in val], "test": [r["id"] for r in test]}}
    (data_dir / "selection.json").write_text(json.dumps(selection, indent=1))
    report = {"source": d.source, "local": d.local, "reader": res.report(),
              "selection": {"seed": d.seed, "pool": {"train": len(train_pool), "val": len(val_pool)},
                            "speaker_overlap": {"train&val": len(speakers(train) & speakers(val)),
                                                "train&test": len(speakers(train) & test_speakers)}}}
    return {"train": train, "val": val, "test": test}, report


def _build_mix(cfg: Config, data_dir: Path) -> tuple[dict[str, list[dict]], dict]:
    """Union of several sources, each contributing only the splits in its `use` list (e.g. OSCE train/val,
    PriMock57 test, synthetic everything)."""
    import copy

    if not cfg.data.mix:
        raise InputError("data.source=mix needs data.mix: a list of {source, local, use}")
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    components = []
    for item in cfg.data.mix:
        bad = set(item.use) - set(SPLITS)
        if bad:
            raise InputError(f"data.mix: {item.source}: use must list splits among {SPLITS}, got {sorted(bad)}")
        sub = copy.deepcopy(cfg)
        sub.data.source, sub.data.local = item.source, item.local
        parts, rep = _build_synthetic(sub, data_dir) if item.source == "synthetic" else _build_real(sub, data_dir, tuple(item.use))
        for s in item.use:
            by_split[s].extend(parts.get(s, []))
        components.append({"source": item.source, "use": list(item.use), "rows": {s: len(parts.get(s, [])) for s in item.use},
                           "report": rep})
    # one speaker must never be on two sides, across components too
    held = speakers(by_split["val"]) | speakers(by_split["test"])
    before = len(by_split["train"])
    by_split["train"] = [r for r in by_split["train"] if not r.get("speaker") or str(r["speaker"]) not in held]
    return by_split, {"source": "mix", "components": components,
                      "dropped_train_rows_of_held_out_speakers": before - len(by_split["train"])}


def _build_synthetic(cfg: Config, data_dir: Path) -> tuple[dict[str, list[dict]], dict]:
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
        test_seen_carrier_per_term=s.test_seen_carrier_per_term,
    )
    caps = {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": s.max_test}
    dropped, kept = {}, []
    for split in SPLITS:
        items = [u for u in plan if u.split == split]
        cap = caps[split]
        if cap is not None and len(items) > cap:
            dropped[split] = len(items) - cap  # deterministic: the plan order is seeded
            # train/val: the first rows of the plan; test: a seeded sample of each category in proportion, so every
            # category (the gate counts them) and voice kind stays in
            items = items[:cap] if split != "test" else _sample_by_category(items, cap, cfg.data.seed)
        kept.extend(items)
    workers = synth_workers(cfg)
    engines = check_engines(plan_voices(kept) | set(s.train_voices) | set(s.test_voices))
    if "kokoro" in engines:
        console.print(f"Kokoro-82M from the {engines['kokoro']['route']} copy ({engines['kokoro']['model']}, SHA-256 "
                      f"{engines['kokoro']['sha256'][:12]}…)")
    with Progress() as progress:
        task = progress.add_task(f"synthesising speech ({' + '.join(engines['engines'])}, {workers} workers)",
                                 total=len(kept))
        rows = synthesize(kept, data_dir / "audio", workers=workers, progress=lambda: progress.advance(task),
                          engines_checked=True)
    by_split = {sp: [r for r in rows if r["id"].startswith(sp + "-")] for sp in SPLITS}
    report = {"source": "synthetic-" + "+".join(engines["engines"]), "lexicon_terms": len(lexicon),
              "dropped_by_cap": dropped, "engines": engines,
              "voices": {"train": list(s.train_voices), "test_only": list(s.test_voices)}}
    if s.generic_test_rows > 0:
        by_split["test"] += _generic_test_rows(cfg, data_dir)
        report["generic_test_rows"] = s.generic_test_rows
    return by_split, report


def _sample_by_category(items: list, cap: int, seed: int) -> list:
    """A seeded sample of about `cap` items, each category in proportion (at least one), in plan order."""
    rng, by_cat = random.Random(seed), {}
    for u in items:
        by_cat.setdefault(u.term.entity_category, []).append(u)
    take = set()
    for cat in sorted(by_cat):
        group = by_cat[cat]
        k = min(len(group), max(1, round(cap * len(group) / len(items))))
        take |= {id(u) for u in rng.sample(group, k)}
    return [u for u in items if id(u) in take]


def _generic_test_rows(cfg: Config, data_dir: Path) -> list[dict]:
    """Non-medical test rows: generic WordNet sentences of at least `generic_min_words` words (never medical: the
    lexicon's terms are filtered out of the WordNet examples), spoken alternately by a test voice and a training
    voice, clean."""
    s = cfg.data.synth
    unused = sorted(x for x in generic_sentences().sentences if len(x.split()) >= s.generic_min_words)
    rng = random.Random(cfg.data.seed)
    rng.shuffle(unused)
    if len(unused) < s.generic_test_rows:
        raise InputError(f"data.synth.generic_test_rows={s.generic_test_rows}: only {len(unused)} generic sentences "
                         f"of at least data.synth.generic_min_words={s.generic_min_words} words; lower either")
    plan = [GenericUtterance(f"test-generic{i:04d}", "test", text,
                             rng.choice(list(s.test_voices) if i % 2 == 0 else list(s.train_voices)),
                             rng.randint(s.rate_min, s.rate_max), "clean", rng.randrange(2**31))
            for i, text in enumerate(unused[: s.generic_test_rows])]
    return synthesize_generic(plan, data_dir / "audio", workers=synth_workers(cfg))


def build(cfg: Config, run_dir: Path) -> dict:
    """Build RUN/data/ (always: whether a build is current is the flywheel's build stage, medasr.flywheel.build_data)."""
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.source == "synthetic":
        by_split, report = _build_synthetic(cfg, data_dir)
    elif cfg.data.source == "mix":
        by_split, report = _build_mix(cfg, data_dir)
    else:
        by_split, report = _build_real(cfg, data_dir)
    by_split["train"], report["contamination"] = decontaminate(
        by_split["train"], by_split["val"] + by_split["test"], n=cfg.data.contamination_ngram)
    train_terms = {r["term"] for r in by_split["train"] if r.get("term")}
    train_speakers = {speaker_of(r) for r in by_split["train"]} - {None}
    # term_seen / speaker_seen are computed from the final train manifest, so caps or decontamination can never
    # mislabel a row; evaluation slices on both (a new speaker and a new term are different failures).
    for sp in ("val", "test"):
        for r in by_split[sp]:
            if r.get("term"):
                r["term_seen"] = r["term"] in train_terms
            if (who := speaker_of(r)) is not None:
                r["speaker_seen"] = who in train_speakers
            r.setdefault("cluster", cluster_of(r))  # what confidence intervals resample (a consultation, a term, …)
    for sp in SPLITS:
        write_manifest(data_dir / f"{sp}.json", by_split[sp])
    report |= {"fingerprint": fingerprint(cfg), "seed": cfg.data.seed, "splits": {sp: _summary(by_split[sp]) for sp in SPLITS}}
    (data_dir / "build_report.json").write_text(json.dumps(report, indent=2))
    return report
