"""`medasr pretrain-mini`: train the `mini` base (a scaled-down Canary-Qwen SALM) from scratch on generic espeak speech,
and continue it on Kokoro speech (pretrain.neural_*; the espeak-ng rows are replayed beside it).

Why a plain PyTorch loop and not the Lightning fine-tune path: pretraining trains *every* base parameter (the LLM too,
which the fine-tune freezes) plus an auxiliary CTC head on the encoder (hybrid CTC/attention training: the CTC loss
gives the encoder token-aligned features early, so the randomly initialised decoder finds the audio in a few hundred
steps instead of first learning a text-only language model). The head is dropped at the end; what ships is a plain
SALM that the fine-tune and the evaluation load like any other base.

Inputs are built exactly as NeMo's SALM data pipeline builds them (the `qwen` prompt formatter, left padding, the
audio placeholder replaced by `replace_placeholders_and_build_targets`), so the shipped model sees the same token
layout at fine-tune and inference time. Resumable: a checkpoint every `pretrain.ckpt_every` steps is picked up by a
re-run of the same command. `--init-from` continues a shipped base (its weights, tokenizer, step count and curve) in a
fresh work dir: the way to train the shipped base longer (on a lent GPU, say) without its lost optimizer checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medasr.atomic import write_text_atomic
from medasr.config import Config, OptimizerConfig, to_dict
from medasr.console import console as shared
from medasr.data.build import synth_workers
from medasr.data.generic_speech import plan_generic, synthesize_generic
from medasr.data.generic_text import generic_sentences
from medasr.data.manifest import read_manifest, write_manifest
from medasr.errors import RunError
from medasr.models.mini import LLM_PLACEHOLDER, MINI_DIR, install_mini, shipped, write_card
from medasr.models.optim import torch_optimizer
from medasr.models.salm import load_base, quiet_nemo
from medasr.models.tiny import build_llm_folder, new_salm, save_base
from medasr.perf.bench import device_name
from medasr.prompts import AUDIO_TAG, split_prompt
from medasr.train.select import model_wer

SPLITS = ("train", "heldout_seen_voice", "heldout_new_voice")
NEURAL_SPLITS = ("train_neural", "heldout_neural_seen_voice", "heldout_neural_new_voice")
DATA_KEYS = ("n_train", "n_heldout", "max_words", "voices", "heldout_voice", "rate_min", "rate_max", "noise_levels", "seed",
             "neural_voices", "neural_train", "neural_heldout_voice")
# what a continuation may change: more training text (espeak-ng or neural), and a neural voice set added to a base
# that had none
GROWABLE = ("n_train", "neural_train")
NEURAL_KEYS = ("neural_voices", "neural_heldout_voice")


def splits(p) -> tuple[str, ...]:
    return SPLITS + (NEURAL_SPLITS if p.neural_train else ())


class PretrainError(RunError):
    headline = "pretrain-mini stopped:"


def claim_audio(audio: Path, settings: dict) -> None:
    """A work dir's audio is reused file by file (a re-run speaks only what is missing, and a file is found by its row
    id), so an interrupted build may only be resumed with the plan it was made for: other data settings would pair
    old audio with new rows. Growing the training text moves no row, so that is allowed."""
    f = audio / "settings.json"
    if f.exists():
        old = json.loads(f.read_text())
        changed = sorted(k for k in settings.keys() & old.keys() if k not in GROWABLE and settings[k] != old[k])
        if changed:
            raise PretrainError(f"{audio} holds audio spoken for other pretrain settings ({', '.join(changed)}): use a "
                                "new --work-dir, or the settings it was made with")
    audio.mkdir(parents=True, exist_ok=True)
    write_text_atomic(f, json.dumps(settings, indent=2))


def build_data(cfg: Config, work: Path, console=None) -> dict:
    """Generic text (medical terms excluded, reported) → synthetic speech → manifests in work/data/. Idempotent."""
    from rich.progress import Progress

    p = cfg.pretrain
    data = work / "data"
    # the neural keys only when there is a neural set: an espeak-only work dir's data stays valid whatever they say
    settings = {k: v for k, v in to_dict(cfg)["pretrain"].items()
                if k in DATA_KEYS and (p.neural_train or k not in (*NEURAL_KEYS, "neural_train"))}
    if all((data / f"{s}.json").exists() for s in splits(p)) and (data / "text_report.json").exists():
        report = json.loads((data / "text_report.json").read_text())
        if report.get("data_settings") != settings:  # never train on data made for other settings without saying so
            changed = sorted(k for k in settings if settings[k] != report.get("data_settings", {}).get(k))
            raise PretrainError(f"{work} holds data made with other pretrain settings ({', '.join(changed)}): use a new "
                                "--work-dir, or the settings it was made with")
        return report
    claim_audio(work / "audio", settings)
    text = generic_sentences()
    plan = plan_generic(text.sentences, seed=p.seed, n_train=p.n_train, n_heldout=p.n_heldout, voices=list(p.voices),
                        heldout_voice=p.heldout_voice, rates=(p.rate_min, p.rate_max),
                        noise_levels=list(p.noise_levels), max_words=p.max_words, neural_voices=list(p.neural_voices),
                        neural_train=p.neural_train, neural_heldout_voice=p.neural_heldout_voice)
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("speaking generic sentences", total=len(plan))
        rows = synthesize_generic(plan, work / "audio", workers=synth_workers(cfg),
                                  progress=lambda: prog.advance(task))
    for split in splits(p):
        write_manifest(data / f"{split}.json", [r for r in rows if r["split"] == split])
    report = text.report | {"train_rows": sum(r["split"] == "train" for r in rows),
                            "heldout_rows_per_voice_set": p.n_heldout, "data_settings": settings,
                            "train_hours": round(sum(r["duration"] for r in rows if r["split"] == "train") / 3600, 3)}
    if p.neural_train:
        report |= {"neural_train_rows": sum(r["split"] == "train_neural" for r in rows),
                   "neural_train_hours": round(sum(r["duration"] for r in rows if r["split"] == "train_neural") / 3600, 3)}
    write_text_atomic(data / "text_report.json", json.dumps(report, indent=2))
    return report


def new_model(cfg: Config, work: Path):
    """A random-init SALM of model.tiny's sizes whose tokenizer is trained on the generic training text only."""
    quiet_nemo()
    llm_dir = work / "model" / "llm"
    if not (llm_dir / "config.json").exists():
        corpus = [r["text"] for r in read_manifest(work / "data" / "train.json")]
        build_llm_folder(llm_dir, cfg.model.tiny, corpus=corpus)
    torch.manual_seed(cfg.pretrain.seed)
    return new_salm(llm_dir, cfg.model.tiny)


def encode_rows(model, rows: list[dict], prompt: str) -> list[dict]:
    """Token ids + loss mask of each row's dialogue (user: prompt + audio tag; assistant: transcript), as NeMo builds
    them for SALM training."""
    from nemo.collections.common.prompts import PromptFormatter

    fmt = PromptFormatter.resolve(model.cfg.prompt_format)(model.tokenizer)
    user = f"{split_prompt(prompt)} {AUDIO_TAG}".strip()
    out = []
    for r in rows:
        enc = fmt.encode_dialog([{"role": "user", "slots": {"message": user}},
                                 {"role": "assistant", "slots": {"message": r["text"]}}])
        out.append({"input_ids": enc["input_ids"], "mask": enc["mask"].bool(),
                    "ctc": torch.tensor(model.tokenizer.text_to_ids(r["text"]), dtype=torch.long)})
    return out


def load_audio(rows: list[dict]) -> list[np.ndarray]:
    """All training audio in memory as int16 (≈ 1 GB per 10 h): the loop never waits on disk."""
    import soundfile as sf

    return [sf.read(r["audio_filepath"], dtype="int16")[0] for r in rows]


def batches(durations: list[float], batch_size: int, rng: random.Random, repeat: list[int] | None = None) -> list[list[int]]:
    """Shuffled batches of similar duration (sorted within pools of 50 batches): little padding, still random. One
    pass draws row i `repeat[i]` times (default once)."""
    idx = [i for i in range(len(durations)) for _ in range(repeat[i] if repeat else 1)]
    rng.shuffle(idx)
    pool = batch_size * 50
    out = []
    for s in range(0, len(idx), pool):
        chunk = sorted(idx[s : s + pool], key=lambda i: durations[i])
        out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(ids: list[int], audio: list[np.ndarray], enc: list[dict], pad_id: int) -> dict:
    from torch.nn.utils.rnn import pad_sequence

    lens = torch.tensor([len(audio[i]) for i in ids], dtype=torch.long)
    wav = torch.zeros(len(ids), int(lens.max()))
    for j, i in enumerate(ids):
        wav[j, : len(audio[i])] = torch.from_numpy(audio[i].astype(np.float32) / 32768.0)
    return {
        "audios": wav, "audio_lens": lens,
        "input_ids": pad_sequence([enc[i]["input_ids"] for i in ids], batch_first=True, padding_value=pad_id,
                                  padding_side="left"),
        "loss_mask": pad_sequence([enc[i]["mask"] for i in ids], batch_first=True, padding_value=False,
                                  padding_side="left"),
        "ctc_targets": torch.cat([enc[i]["ctc"] for i in ids]),
        "ctc_lens": torch.tensor([len(enc[i]["ctc"]) for i in ids], dtype=torch.long),
    }


def losses(model, ctc_head, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder cross-entropy per target token, encoder CTC loss per target token)."""
    from nemo.collections.speechlm2.models.salm import replace_placeholders_and_build_targets

    embs, emb_lens, enc = model.perception(input_signal=batch["audios"], input_signal_length=batch["audio_lens"],
                                           return_encoder_emb=True)
    ids = batch["input_ids"]
    text_embs = model.embed_tokens(torch.where(ids == model.audio_locator_tag_id, 0, ids))
    input_embs, target_ids, attn = replace_placeholders_and_build_targets(
        input_ids=ids, embeds=text_embs, padding_id=model.text_pad_id, placeholder_id=model.audio_locator_tag_id,
        replacements=[e[:n] for e, n in zip(embs, emb_lens)], target_ids=ids.where(batch["loss_mask"], -100))
    logits = model(input_embs[:, :-1], attention_mask=attn[:, :-1])["logits"]
    target_ids = target_ids[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(0, 1), ignore_index=-100)
    logp = ctc_head(enc).float().log_softmax(-1).transpose(0, 1)  # (T, B, V+1); losses in fp32 under bf16 autocast
    ctc = torch.nn.functional.ctc_loss(logp, batch["ctc_targets"], emb_lens, batch["ctc_lens"],
                                       blank=ctc_head.out_features - 1, reduction="sum", zero_infinity=True)
    return ce, ctc / batch["ctc_lens"].sum()


def lr_at(step: int, p, start: int = 0) -> float:
    """Linear warm-up, then cosine from pretrain.lr to pretrain.min_lr at pretrain.steps. A run continued from a shipped
    base (`start` > 0) warms up again: its AdamW moments start from zero."""
    s = step - start
    if s < p.warmup_steps:
        return p.lr * (s + 1) / p.warmup_steps
    t = min(1.0, (s - p.warmup_steps) / max(1, p.steps - start - p.warmup_steps))
    return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * t))


def trainable(model) -> list[torch.nn.Parameter]:
    """Every base parameter; LoRA stays at its identity init (B = 0) for the fine-tune to train."""
    params = []
    for name, prm in model.named_parameters():
        prm.requires_grad_(".lora_" not in name)
        if prm.requires_grad:
            params.append(prm)
    return params


def continue_from(cfg: Config, work: Path, src: Path) -> dict:
    """Take over the shipped base in `src` as this work dir's starting point: its tokenizer is copied (a new one would
    renumber every token) and its record (steps, minutes, curve, resumes) is kept in work/init.json, so the new card
    tells the whole history. Refused when the base was made with other sizes or data settings: a different data plan
    would put its held-out sentences into training and the held-out WER would lie."""
    if not shipped(src) or not (src / "pretrain.json").exists():
        raise PretrainError(f"--init-from {src}: no shipped mini base there (base/, llm/ and pretrain.json): give the "
                            "folder `medasr pretrain-mini --out` wrote, e.g. medasr/resources/mini")
    meta = json.loads((src / "pretrain.json").read_text())
    mine = to_dict(cfg)
    # n_train may grow: plan_generic draws the held-out sentences first, so more training text never takes one of them;
    # a neural voice set may be added to a base that had none (its rows come from their own generator: nothing moves)
    theirs_neural = bool(meta["pretrain"].get("neural_train"))
    fixed = [k for k in DATA_KEYS if k not in GROWABLE and (theirs_neural or k not in NEURAL_KEYS)]
    for what, theirs, ours in (("model.tiny", meta["sizes"], mine["model"]["tiny"]),
                               ("pretrain", meta["pretrain"], {k: mine["pretrain"][k] for k in fixed})):
        changed = sorted(k for k in ours if ours[k] != theirs.get(k))
        if changed:
            raise PretrainError(f"--init-from {src} was made with other {what} settings ({', '.join(changed)}): "
                                f"continue it with the settings in its pretrain.json")
    for k in GROWABLE:
        if getattr(cfg.pretrain, k) < meta["pretrain"].get(k, 0):
            raise PretrainError(f"--init-from {src} was trained on pretrain.{k}={meta['pretrain'][k]} sentences: "
                                "a continuation may add training text, not drop it (set it to that or more)")
    if cfg.pretrain.steps <= meta["steps"]:
        raise PretrainError(f"--init-from {src} has trained {meta['steps']} steps already: set pretrain.steps above "
                            f"that (e.g. --set pretrain.steps={meta['steps'] + 2000})")
    llm_dir = work / "model" / "llm"
    shutil.rmtree(llm_dir, ignore_errors=True)
    shutil.copytree(src / "llm", llm_dir)
    init = {"from": str(src), "steps": meta["steps"], "minutes": meta["minutes"], "hardware": meta["hardware"],
            "n_train": meta["pretrain"]["n_train"], "neural_train": meta["pretrain"].get("neural_train", 0),
            "history": meta.get("history", []), "resumes": meta.get("resumes", []),
            "heldout_wer_seen_voice": meta["heldout_wer_seen_voice"]}
    # the weights, copied too: the run must not depend on `src`, which it may overwrite when it ships
    shutil.copy(src / "base" / "model.safetensors", work / "init.safetensors")
    write_text_atomic(work / "init.json", json.dumps(init, indent=2))
    return init


def pretrain(cfg: Config, work: Path, out_dir: Path = MINI_DIR, console=None, init_from: Path | None = None) -> dict:
    """Data → model → training (resumable) → the shipped base in `out_dir`, its held-out WER measured after reload.
    `init_from`: a shipped base to continue (fresh work dirs only; a work dir with a checkpoint resumes that)."""
    console = console or shared
    p = cfg.pretrain
    torch.set_num_threads(cfg.train.threads)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, hist_file, init_file = work / "ckpt.pt", work / "history.jsonl", work / "init.json"
    if init_from is not None:  # checked before the data is spoken: a refusal costs nothing
        if ckpt.exists():
            console.print(f"[yellow]{work} has a checkpoint: resuming it (--init-from applies to a fresh work dir)[/]")
        else:
            continue_from(cfg, work, init_from)
    init = json.loads(init_file.read_text()) if init_file.exists() else None
    text_report = build_data(cfg, work, console)
    console.print(f"generic text: {text_report['kept']} sentences kept, {text_report['excluded_medical']} excluded for "
                  f"naming a medical term; {text_report['train_rows']} training rows, {text_report['train_hours']} h")
    rows = {s: read_manifest(work / "data" / f"{s}.json") for s in splits(p)}
    neural = bool(p.neural_train)
    model = new_model(cfg, work)
    ctc_head = torch.nn.Linear(cfg.model.tiny.encoder_d_model, model.text_vocab_size + 1)  # + CTC blank
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a lent GPU when there is one (bf16 autocast)
    model.to(dev)
    ctc_head.to(dev)
    params = trainable(model) + list(ctc_head.parameters())
    opt = torch_optimizer(params, OptimizerConfig(lr=p.lr, betas=list(p.betas), weight_decay=p.weight_decay))
    step, elapsed, start = 0, 0.0, 0
    if init and not ckpt.exists():
        from safetensors.torch import load_file

        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(work / "init.safetensors").items()}
        model.load_state_dict(sd, strict=True)
        step = start = init["steps"]
        elapsed = init["minutes"] * 60
        console.print(f"continuing {init['from']} from step {step} ({init['heldout_wer_seen_voice']:.1%} held-out "
                      "WER on its card)")
        if not (work / "resumes.jsonl").exists():  # once per continuation, not again on a re-run before a checkpoint
            # the starting point measured on this run's held-out audio: the baseline the continuation's curve is read
            # against (growing n_train re-draws the held-out rows' voices and rates, never their sentences)
            wer0 = model_wer(cfg, model, rows["heldout_seen_voice"][: p.eval_rows])
            rec = {"step": step, "steps": p.steps, "lr": p.lr, "warmup": p.warmup_steps, "continued_from": init["from"],
                   "n_train": [init.get("n_train", p.n_train), p.n_train], "start_heldout_wer": round(wer0, 4)}
            if neural:
                rec["neural_train"] = [init.get("neural_train", 0), p.neural_train]
                rec["start_heldout_wer_neural"] = round(model_wer(cfg, model, rows["heldout_neural_seen_voice"][: p.eval_rows]), 4)
            console.print(f"held-out WER at the start: {wer0:.1%} on {p.eval_rows} rows"
                          + (f", {rec['start_heldout_wer_neural']:.1%} by the neural voices" if neural else ""))
            with (work / "resumes.jsonl").open("a") as f:
                f.write(json.dumps(rec | {"at": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        ctc_head.load_state_dict(state["ctc_head"])
        opt.load_state_dict(state["opt"])
        step, elapsed, start = state["step"], state["elapsed_s"], state.get("start", 0)
        console.print(f"resumed from {ckpt} at step {step}")
        if step < p.steps:
            with (work / "resumes.jsonl").open("a") as f:  # the card says when training resumed and with what plan
                f.write(json.dumps({"step": step, "steps": p.steps, "lr": p.lr, "at": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    todo = step < p.steps  # a finished run re-run only re-ships and re-measures: no need to load 20 h of audio
    train_rows = rows["train"] + (rows["train_neural"] if neural else [])
    enc = encode_rows(model, train_rows, cfg.model.prompt) if todo else []
    audio = load_audio(train_rows) if todo else []
    durations = [r["duration"] for r in train_rows]
    repeat = [1] * len(rows["train"]) + ([p.neural_repeat] * len(rows["train_neural"]) if neural else [])
    rng = random.Random(p.seed + step)
    queue: list[list[int]] = []
    started = time.monotonic() - elapsed
    this_run = time.monotonic()  # pretrain.max_minutes bounds this invocation, not the base's whole history
    eval_rows = rows["heldout_seen_voice"][: p.eval_rows]
    eval_neural = rows["heldout_neural_seen_voice"][: p.eval_rows] if neural else []
    window: list[tuple[float, float]] = []

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ctc_head": ctc_head.state_dict(), "opt": opt.state_dict(),
                    "step": step, "start": start, "elapsed_s": time.monotonic() - started}, tmp)
        tmp.replace(ckpt)

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    model.train()
    with Progress(TextColumn("pretrain-mini"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
                  TimeRemainingColumn(), console=console) as prog:
        task = prog.add_task("steps", total=p.steps, completed=step, info="")
        while step < p.steps:
            if p.max_minutes and time.monotonic() - this_run > p.max_minutes * 60:
                console.print(f"[yellow]pretrain.max_minutes={p.max_minutes} reached at step {step}[/]")
                break
            if not queue:
                queue = batches(durations, p.batch_size, rng, repeat)
            batch = {k: v.to(dev) for k, v in collate(queue.pop(), audio, enc, model.text_pad_id).items()}
            for g in opt.param_groups:
                g["lr"] = lr_at(step, p, start)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                ce, ctc = losses(model, ctc_head, batch)
            loss = ce + p.ctc_weight * ctc
            if not torch.isfinite(loss):
                raise PretrainError(f"non-finite loss at step {step} (ce={ce.item()}, ctc={ctc.item()}): lower pretrain.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            window.append((ce.item(), ctc.item()))
            prog.update(task, completed=step, info=f"ce {ce.item():.3f} ctc {ctc.item():.3f}")
            if step % p.ckpt_every == 0:
                save()
            if step % p.eval_every == 0 or step == p.steps:
                wer = model_wer(cfg, model, eval_rows)
                model.train()
                ce_m, ctc_m = (float(np.mean([w[k] for w in window])) for k in (0, 1))
                rec = {"step": step, "ce": round(ce_m, 4), "ctc": round(ctc_m, 4), "heldout_wer": round(wer, 4)}
                if neural:
                    rec["heldout_wer_neural"] = round(model_wer(cfg, model, eval_neural), 4)
                    model.train()
                rec |= {"lr": round(lr_at(step, p, start), 6), "minutes": round((time.monotonic() - started) / 60, 2)}
                window.clear()
                with hist_file.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                console.print(rec)
    save()
    minutes = (time.monotonic() - started) / 60
    # Ship first, then measure the shipped copy: the numbers on the card are those of the weights a user loads.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    ship(model, work / "model" / "llm", tmp)

    reloaded = load_base(install_mini(work / "install-check", src=tmp, fresh=True))
    result = {
        "steps": step, "minutes": round(minutes, 1), "batch_size": p.batch_size,
        "params": sum(prm.numel() for n, prm in reloaded.named_parameters() if ".lora_" not in n),
        "heldout_wer_seen_voice": round(model_wer(cfg, reloaded, rows["heldout_seen_voice"]), 4),
        "heldout_wer_new_voice": round(model_wer(cfg, reloaded, rows["heldout_new_voice"]), 4),
        "heldout_rows": len(rows["heldout_seen_voice"]),
        "heldout_voice": p.heldout_voice, "voices": list(p.voices),
        **({"heldout_wer_neural_seen_voice": round(model_wer(cfg, reloaded, rows["heldout_neural_seen_voice"]), 4),
            "heldout_wer_neural_new_voice": round(model_wer(cfg, reloaded, rows["heldout_neural_new_voice"]), 4),
            "neural_voices": list(p.neural_voices), "neural_heldout_voice": p.neural_heldout_voice} if neural else {}),
        "hardware": device_name(dev) if not init or init["hardware"] == device_name(dev)
        else f"{init['hardware']}, then {device_name(dev)}", "text": {k: v for k, v in text_report.items() if k != "excluded_examples"},
        "excluded_examples": text_report.get("excluded_examples", [])[:5],
        "sizes": asdict(cfg.model.tiny), "pretrain": to_dict(cfg)["pretrain"], "prompt": cfg.model.prompt,
        "history": (init["history"] if init else [])
        + ([json.loads(line) for line in hist_file.read_text().splitlines()] if hist_file.exists() else []),
        "resumes": (init["resumes"] if init else [])
        + ([json.loads(line) for line in (work / "resumes.jsonl").read_text().splitlines()]
           if (work / "resumes.jsonl").exists() else []),
    }
    write_text_atomic(work / "result.json", json.dumps(result, indent=2))
    write_text_atomic(tmp / "pretrain.json", json.dumps(result, indent=2))
    write_card(tmp, result)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    console.print({k: v for k, v in result.items() if k in ("steps", "minutes") or k.startswith("heldout_wer")})
    return result


def ship(model, llm_dir: Path, out_dir: Path) -> None:
    """out/llm (tokenizer + Qwen3 config) and out/base (SALM config whose pretrained_llm is filled in at install time,
    model.safetensors in fp16: half the bytes in git; the LoRA tensors stay in it, at their identity init, because
    the model preflight rightly refuses a base checkpoint that leaves model tensors uninitialised)."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(llm_dir, out_dir / "llm")
    save_base(model, out_dir / "base", LLM_PLACEHOLDER)
    (out_dir / "base" / "README.md").unlink(missing_ok=True)  # huggingface_hub's generic stub; MODEL_CARD.md says it all
    weights = out_dir / "base" / "model.safetensors"
    sd = load_file(weights)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, weights,
              metadata={"format": "pt"})
