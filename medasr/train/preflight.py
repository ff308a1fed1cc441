"""Model preflight: refuse a run that is doomed from step 0, before any training time is spent.

Checks (all written to RUN/train/preflight.json, printed, and run by the flywheel before `train`):
1. checkpoint coverage — every tensor of the base checkpoint lands in the model with the same shape, and every model
   tensor comes from a checkpoint. `SALM.from_pretrained` loads with strict=False, so a renamed or extra key would be
   dropped silently and a missing one would stay random: we refuse with the list instead;
2. trainable groups — the freeze pattern gives what the preset intends (SALM: LLM frozen; encoder, projection and
   LoRA trained. ASR: everything trained);
3. prompt — one training example rendered through the real data pipeline, and a check that its prompt tokens equal
   what inference sends (SALM);
4. validation will run — validation rows exist and max_steps >= val_every_n_steps, so the run is never blind.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from medasr.config import Config
from medasr.console import console
from medasr.data.manifest import prompted_manifests, read_manifest
from medasr.errors import RunError
from medasr.models import asr
from medasr.models.asr import param_table
from medasr.models.load import FreezePatternError, apply_freeze, print_param_table
from medasr.models.salm import hub_ref, load_base, prompt_ids
from medasr.prompts import AUDIO_TAG
from medasr.train.trainer import data_config



class ModelPreflightError(RunError):
    headline = "model preflight failed:"


def salm_checkpoint_file(base: str | Path) -> Path:
    local = Path(base)
    if local.is_dir():
        return local / "model.safetensors"
    from huggingface_hub import hf_hub_download

    repo, rev = hub_ref(base)
    return Path(hf_hub_download(repo, "model.safetensors", revision=rev))  # cached by from_pretrained already


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def tied_groups(state_dict: dict) -> list[list[str]]:
    """Names that share one tensor (Qwen3-1.7B ties lm_head to embed_tokens). save_pretrained writes such a tensor once,
    under one of its names, so a checkpoint legitimately lacks the others."""
    by_storage: dict[tuple, list[str]] = {}
    for k, v in state_dict.items():
        by_storage.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    return [sorted(g) for g in by_storage.values() if len(g) > 1]


def coverage(model_shapes: dict[str, tuple], ckpt_shapes: dict[str, tuple], may_be_missing: tuple[str, ...] = (),
             tied: list[list[str]] = ()) -> dict:
    unknown = sorted(set(ckpt_shapes) - set(model_shapes))
    mismatched = sorted(f"{k}: checkpoint {ckpt_shapes[k]} vs model {model_shapes[k]}"
                        for k in set(ckpt_shapes) & set(model_shapes) if tuple(ckpt_shapes[k]) != tuple(model_shapes[k]))
    via_tie = {k for g in tied if set(g) & set(ckpt_shapes) for k in g}
    missing = sorted(k for k in set(model_shapes) - set(ckpt_shapes) - via_tie if not k.startswith(may_be_missing))
    return {"checkpoint_tensors": len(ckpt_shapes), "model_tensors": len(model_shapes), "unknown": unknown,
            "shape_mismatch": mismatched, "missing": missing, "tied": [list(g) for g in tied]}


def _size_mismatches(err: RuntimeError) -> list[str]:
    return re.findall(r"size mismatch for ([^:]+): copying a param with shape (torch.Size\(\[[^\]]*\]\))[^,]*, the shape "
                      r"in current model is (torch.Size\(\[[^\]]*\]\))", str(err))


def load_checked(cfg: Config, base: str | Path):
    """Load the base and check checkpoint coverage; returns (model, coverage report)."""
    if cfg.model.kind == "asr":
        # ASRModel.restore_from / from_pretrained load strictly: a missing, extra or reshaped key raises there.
        model = asr.load_base(base)
        n = len(model.state_dict())
        return model, {"checkpoint_tensors": n, "model_tensors": n, "unknown": [], "shape_mismatch": [], "missing": [],
                       "note": "NeMo restore_from loads strictly"}

    ckpt = salm_checkpoint_file(base)
    try:
        model = load_base(base)
    except RuntimeError as e:
        if mism := _size_mismatches(e):
            raise ModelPreflightError(f"checkpoint {ckpt} does not fit the model: {len(mism)} shape mismatch(es): "
                                      + "; ".join(f"{k} {a} vs model {b}" for k, a, b in mism[:10])) from e
        raise
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    # With pretrained_weights the LLM comes from its own Hub checkpoint, so a SALM file may omit it.
    llm_elsewhere = ("llm.", "embed_tokens.") if model.cfg.get("pretrained_weights", False) else ()
    rep = coverage(shapes, checkpoint_shapes(ckpt), llm_elsewhere, tied_groups(sd)) | {"checkpoint": str(ckpt)}
    if rep["unknown"] or rep["shape_mismatch"] or rep["missing"]:
        raise ModelPreflightError(
            f"checkpoint {ckpt} does not fit the model (from_pretrained would silently drop or leave these): "
            f"{len(rep['unknown'])} unknown tensor(s) {rep['unknown'][:10]}, {len(rep['shape_mismatch'])} shape "
            f"mismatch(es) {rep['shape_mismatch'][:10]}, {len(rep['missing'])} model tensor(s) not in the checkpoint "
            f"{rep['missing'][:10]}. Use the base this preset was made for, or fix model.base.")
    return model, rep


def render_training_example(model, cfg: Config, run_dir: Path) -> dict:
    """The first training row as the model sees it, through SALM's own Lhotse pipeline, and the inference prompt."""
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config
    from nemo.collections.speechlm2 import SALMDataset
    from omegaconf import OmegaConf

    data_dir = prompted_manifests(cfg, run_dir / "data", run_dir / "train" / "data")
    context = read_manifest(data_dir / "train.json")[0]["context"]
    train_cfg = OmegaConf.create(data_config(model, cfg, data_dir)).train_ds
    train_cfg.shuffle, train_cfg.batch_size, train_cfg.num_workers = False, 1, 0
    train_cfg.use_bucketing, train_cfg.batch_tokens = False, None  # one example is all this check needs
    dl = get_lhotse_dataloader_from_config(config=train_cfg, global_rank=0, world_size=1,
                                           dataset=SALMDataset(model.tokenizer), tokenizer=model.tokenizer)
    batch = next(iter(dl))
    ids = batch["input_ids"][0].tolist()
    hf = model.tokenizer.tokenizer  # raw decode keeps the chat and audio tokens visible
    infer_ids = prompt_ids(model, context).tolist()  # what decoding sends (medasr.models.salm.transcribe_arrays)
    return {"context": context, "rendered_training_example": hf.decode(ids, skip_special_tokens=False),
            "rendered_inference_prompt": hf.decode(infer_ids, skip_special_tokens=False),
            "training_prompt_ids": ids[: len(infer_ids)], "inference_prompt_ids": infer_ids,
            "prompt_matches_inference": ids[: len(infer_ids)] == infer_ids,
            "audio_placeholder_in_example": model.tokenizer.text_to_ids(AUDIO_TAG)[0] in ids}


def validation_plan(cfg: Config, data_dir: Path) -> dict:
    train = read_manifest(data_dir / "train.json")
    n_train, n_val = len(train), len(read_manifest(data_dir / "val.json"))
    t = cfg.train
    per_batch = t.batch_size
    if t.batch_tokens > 0:  # token batches: rows per batch from the mean row (audio at 0.08 s per token + ~60 text)
        mean_tokens = sum(r["duration"] for r in train) / max(1, n_train) / 0.08 + 60
        per_batch = max(1, int(t.batch_tokens // mean_tokens))
    batches = max(1, math.ceil(n_train / per_batch))
    return {"train_rows": n_train, "val_rows": n_val, "rows_per_batch": per_batch, "batches_per_epoch": batches,
            "epochs": round(t.max_steps / batches, 2),
            "val_every_n_steps": t.val_every_n_steps, "validations": t.max_steps // t.val_every_n_steps if n_val else 0,
            # check_val_every_n_epoch=None: the interval counts steps across epochs, so short epochs cannot skip it
            "counted_across_epochs": True}


def model_preflight(cfg: Config, run_dir: Path, base: str | Path) -> dict:
    """Run every check; raise ModelPreflightError with the reason on the first failure. Returns the report."""
    data_dir = run_dir / "data"
    problems = []
    plan = validation_plan(cfg, data_dir)
    if plan["val_rows"] == 0:
        problems.append(f"{data_dir / 'val.json'} is empty: training would run without validation")
    elif plan["validations"] == 0:
        problems.append(f"train.val_every_n_steps={cfg.train.val_every_n_steps} > train.max_steps={cfg.train.max_steps}: "
                        "validation would never run; lower val_every_n_steps")
    if cfg.train.limit_val_batches <= 0:
        problems.append("train.limit_val_batches must be > 0")
    if problems:
        raise ModelPreflightError("; ".join(problems))
    model, cov = load_checked(cfg, base)
    report: dict = {"kind": cfg.model.kind, "base": str(base), "coverage": cov, "validation": plan}
    if cfg.model.kind == "asr":
        groups = param_table(model)
        row = read_manifest(data_dir / "train.json")[0]
        report["example"] = {"text": row["text"], "tokens": model.tokenizer.text_to_tokens(row["text"])}
    else:
        try:
            groups = apply_freeze(model, list(cfg.model.freeze_params))
        except FreezePatternError as e:
            raise ModelPreflightError(str(e)) from e
        report["prompt"] = render_training_example(model, cfg, run_dir)
        if not report["prompt"]["prompt_matches_inference"]:
            raise ModelPreflightError(
                "the training prompt does not render to the tokens inference sends:\n  train: "
                f"{report['prompt']['rendered_training_example']!r}\n  infer: {report['prompt']['rendered_inference_prompt']!r}")
        if not report["prompt"]["audio_placeholder_in_example"]:
            raise ModelPreflightError("the rendered training example has no audio placeholder token")
    report["groups"] = groups
    print_param_table(groups)
    if "prompt" in report:
        console.print("[bold]training example as the model sees it:[/]")
        console.print(report["prompt"]["rendered_training_example"], highlight=False, markup=False)
        console.print("[bold]the prompt decoding sends for it (the same token ids):[/]")
        console.print(report["prompt"]["rendered_inference_prompt"], highlight=False, markup=False)
    console.print(f"validation: {plan['validations']} run(s), every {plan['val_every_n_steps']} steps "
                  f"({plan['batches_per_epoch']} batches per epoch, {plan['epochs']} epochs)", highlight=False)
    out = run_dir / "train" / "preflight.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
