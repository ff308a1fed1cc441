"""`medasr bench train|eval`: speed and memory of a preset's SALM on this machine's accelerator.

The model is built from the preset's sizes with random weights (`canary-qwen-2.5b-shapes` = the release architecture,
nothing downloaded), frozen and sped up exactly as the fine-tune does it (trainer.apply_freeze, models/speed.py),
and fed synthetic batches of equal-length utterances (one duration bucket). Timing uses CUDA events around each step
after warm-up steps; nothing in the step reads a value back to the host. MFU = counted FLOPs (perf/flops.py) per
second over the bf16 matmul throughput measured on the same device a moment before (not the datasheet peak).
Writes bench_train.json / bench_eval.json and a Markdown table next to them.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from medasr.atomic import write_text_atomic
from medasr.config import Config
from medasr.console import console as shared
from medasr.errors import RunError
from medasr.models.load import apply_freeze
from medasr.models.optim import torch_optimizer
from medasr.models.salm import quiet_nemo
from medasr.models.salm_train import MedasrSALM
from medasr.models.speed import apply_speed, target_loss, step_inputs
from medasr.models.tiny import build_llm_folder, new_salm
from medasr.perf.flops import TOKEN_SECONDS, StepShape, generate_flops, train_step_flops
from medasr.prompts import AUDIO_TAG, split_prompt

# Transcript-like text: the synthetic targets are real tokens of the model's tokenizer, not random ids.
_TEXT = ("the patient reports chest pain since yesterday evening and was started on five milligrams of the medication "
         "twice a day with a follow up visit in two weeks ")


def device_and_dtype(cfg: Config) -> tuple[torch.device, torch.dtype]:
    """The GPU when there is one (in the preset's precision), else the CPU in fp32 (bf16 matmuls on a CPU measure
    the emulation, not the model)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if cfg.model.precision.startswith("bf16") else torch.float32
    return torch.device("cpu"), torch.float32


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.machine()}), {torch.get_num_threads()} threads"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_tflops(dev: torch.device, dtype: torch.dtype, n: int | None = None, iters: int = 20) -> float:
    """Measured dense matmul throughput (TFLOP/s) of an n x n x n product: the MFU denominator."""
    n = n or (8192 if dev.type == "cuda" else 768)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(dev)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


class BenchError(RunError):
    headline = "bench stopped:"


CPU_PARAM_LIMIT = 200_000_000  # beyond this a CPU step takes minutes and the optimizer state most of the RAM


def _llm_folder(cfg: Config, work: Path) -> Path:
    """work/llm: the preset's LLM config + tokenizer (built once)."""
    quiet_nemo()
    if not (work / "llm" / "config.json").exists():
        build_llm_folder(work / "llm", cfg.model.tiny)
    return work / "llm"


def count_params(cfg: Config, work: Path) -> int:
    """Parameters of the preset's model without allocating them (meta device)."""
    return sum(p.numel() for p in new_salm(_llm_folder(cfg, work), cfg.model.tiny, empty=True).parameters())


def check_device(cfg: Config, work: Path) -> None:
    if not torch.cuda.is_available() and (n := count_params(cfg, work)) > CPU_PARAM_LIMIT:
        raise BenchError(f"preset {cfg.name} has {n / 1e9:.2f} B parameters and there is no GPU here: run it on a GPU "
                         "(e.g. the RunPod pod, docs/DEPLOY.md), or try the harness on the CPU with -p tiny")


def build_model(cfg: Config, work: Path, dev: torch.device, dtype: torch.dtype):
    """Random-init SALM of the preset's sizes on `dev`, frozen as the fine-tune freezes it, speed switches applied."""
    llm_dir = _llm_folder(cfg, work)
    torch.manual_seed(0)
    with torch.device(dev):  # initialise in place: a 2.5 B model initialised on the CPU takes minutes
        model = new_salm(llm_dir, cfg.model.tiny, cls=MedasrSALM)  # the class the fine-tune trains
    model.to(dtype)
    table = apply_freeze(model, list(cfg.model.freeze_params))
    speed = apply_speed(model, cfg.train)
    return model, table, speed


def prompt_and_answer(model, prompt: str, n_text: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, loss_mask, answer start) of one training dialogue whose answer has `n_text` transcript tokens,
    laid out by NeMo's prompt formatter as SALM training lays it out (the loss covers the assistant turn, header
    included). ids[:answer start] is the generation prompt (user turn + assistant header)."""
    from nemo.collections.common.prompts import PromptFormatter

    fmt = PromptFormatter.resolve(model.cfg.prompt_format)(model.tokenizer)
    user = f"{split_prompt(prompt)} {AUDIO_TAG}".strip()
    probe = "a"  # a one-token answer, then replaced by the transcript tokens
    enc = fmt.encode_dialog([{"role": "user", "slots": {"message": user}},
                             {"role": "assistant", "slots": {"message": probe}}])
    ids, mask = enc["input_ids"].tolist(), enc["mask"].bool().tolist()
    probe_ids = model.tokenizer.text_to_ids(probe)
    at = next(i for i in range(mask.index(True), len(ids)) if ids[i : i + len(probe_ids)] == probe_ids)
    text = model.tokenizer.text_to_ids(_TEXT * (1 + n_text // 10))[:n_text]
    new_ids = ids[:at] + text + ids[at + len(probe_ids) :]
    new_mask = mask[:at] + [True] * len(text) + mask[at + len(probe_ids) :]
    return torch.tensor(new_ids), torch.tensor(new_mask), at


def train_batch(model, cfg: Config, shape: StepShape, dev: torch.device) -> dict:
    ids, mask, _ = prompt_and_answer(model, cfg.model.prompt, transcript_tokens(cfg))
    samples = int(shape.audio_s * model.sampling_rate)
    g = torch.Generator().manual_seed(0)
    return {"audios": (0.05 * torch.randn(shape.batch, samples, generator=g)).to(dev),
            "audio_lens": torch.full((shape.batch,), samples, dtype=torch.long, device=dev),
            "input_ids": ids.repeat(shape.batch, 1).to(dev), "loss_mask": mask.repeat(shape.batch, 1).to(dev)}


def transcript_tokens(cfg: Config) -> int:
    return max(1, math.ceil(cfg.bench.text_tokens_per_second * cfg.bench.utt_seconds))


def shape_for(model, cfg: Config, batch_tokens: int | None = None, batch: int | None = None) -> StepShape:
    """The batch of equal utterances (bench.utt_seconds each) that fills `batch_tokens` Lhotse tokens."""
    b = cfg.bench
    ids, mask, start = prompt_and_answer(model, cfg.model.prompt, transcript_tokens(cfg))
    prompt_tokens = start - 1  # user turn + assistant header; the audio tag itself becomes the audio frames
    text_tokens = len(ids) - start  # the transcript + the end-of-turn tokens
    per_utt = int(b.utt_seconds / TOKEN_SECONDS) + prompt_tokens + text_tokens
    n = batch if batch is not None else max(1, batch_tokens // per_utt)
    return StepShape(batch=n, audio_s=b.utt_seconds, prompt_tokens=prompt_tokens, text_tokens=text_tokens)


def _loss(model, batch: dict, target_logits_only: bool) -> torch.Tensor:
    """SALM.training_step's loss without its Lightning logging (which would need a Trainer)."""
    inputs = step_inputs(model, batch)
    if target_logits_only:  # what the fine-tune's training step computes with train.target_logits_only
        return target_loss(model, inputs)[0]
    logits = model(inputs["input_embeds"], attention_mask=inputs["attention_mask"])["logits"]
    n = (inputs["target_ids"] != -100).sum()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), inputs["target_ids"].flatten(0, 1),
                                             reduction="sum", ignore_index=-100) / n


class _Timer:
    """Per-step wall time: CUDA events (no host sync inside the step), perf_counter on the CPU."""

    def __init__(self, dev: torch.device):
        self.dev, self.marks = dev, []

    def mark(self) -> None:
        if self.dev.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        _sync(self.dev)
        if self.dev.type == "cuda":
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _peak_gb(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _sizes_with_vocab(cfg: Config, model):
    return replace(cfg.model.tiny, llm_vocab_size=model.text_vocab_size)


def _setup(cfg: Config, work: Path, console):
    """(console, device, dtype, measured matmul TFLOP/s, model, trainable table, speed switches) for one bench."""
    check_device(cfg, work)
    dev, dtype = device_and_dtype(cfg)
    ceiling = matmul_tflops(dev, dtype)
    return (console or shared, dev, dtype, ceiling, *build_model(cfg, work, dev, dtype))


def bench_train(cfg: Config, work: Path, console=None) -> dict:
    """Sweep bench.train_batch_tokens: median step time, tokens/s, audio s/s, peak memory, MFU per batch size."""
    console, dev, dtype, ceiling, model, table, speed = _setup(cfg, work, console)
    sizes = _sizes_with_vocab(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch_optimizer(params, cfg.train.optimizer, fused=dev.type == "cuda")
    model.train()
    rows = []
    for tokens in cfg.bench.train_batch_tokens:
        shape = shape_for(model, cfg, batch_tokens=tokens)
        batch = train_batch(model, cfg, shape, dev)
        flops = train_step_flops(sizes, shape, speed["target_logits_only"])
        row = {"batch_tokens": shape.batch_tokens, "batch": shape.batch, "audio_s": shape.audio_s,
               "seq_len": shape.seq_len, "tflop_per_step": round(flops["total"] / 1e12, 3)}
        _reset_peak(dev)
        try:
            timer = _Timer(dev)
            for i in range(cfg.bench.warmup_steps + cfg.bench.steps):
                if i == cfg.bench.warmup_steps:
                    timer.mark()
                opt.zero_grad(set_to_none=True)
                _loss(model, batch, speed["target_logits_only"]).backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip, foreach=True)
                opt.step()
                if i >= cfg.bench.warmup_steps:
                    timer.mark()
            secs = statistics.median(timer.step_seconds())
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            rows.append(row | {"oom": True})
            console.print(f"[yellow]{shape.batch_tokens} tokens/batch: out of memory[/]")
            break  # larger batches will not fit either
        peak = _peak_gb(dev)
        row |= {"step_s": round(secs, 4), "tokens_per_s": round(shape.batch_tokens / secs, 1),
                "audio_s_per_s": round(shape.batch * shape.audio_s / secs, 1), "peak_gb": peak,
                "fits_limit": None if peak is None else peak <= cfg.bench.memory_limit_gb,
                "tflops": round(flops["total"] / secs / 1e12, 2),
                "mfu": round(flops["total"] / secs / 1e12 / ceiling, 4)}
        rows.append(row)
        console.print(row)
    result = {"kind": "train", "preset": cfg.name, "device": device_name(dev), "dtype": str(dtype).split(".")[-1],
              "matmul_tflops": round(ceiling, 2), "speed": speed, "trainable": table,
              "params": sum(p.numel() for p in model.parameters()), "utt_seconds": cfg.bench.utt_seconds,
              "memory_limit_gb": cfg.bench.memory_limit_gb, "rows": rows, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__}
    _write(work, "bench_train", result, _train_markdown(result))
    return result


def bench_eval(cfg: Config, work: Path, console=None) -> dict:
    """Batched greedy generation of a fixed number of tokens per audio second: RTFx per batch size."""
    from transformers import GenerationConfig

    console, dev, dtype, ceiling, model, _, speed = _setup(cfg, work, console)
    speed["static_cache"] = cfg.eval.static_cache
    model.eval()
    sizes = _sizes_with_vocab(cfg, model)
    new_tokens = transcript_tokens(cfg)
    # min = max: a random-init model would stop at a random end token; real transcripts have this many tokens
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=model.text_eos_id, pad_token_id=model.text_pad_id,
                           cache_implementation="static" if cfg.eval.static_cache else None)
    rows = []
    for b in cfg.bench.eval_batch_sizes:
        shape = shape_for(model, cfg, batch=b)
        ids, mask, start = prompt_and_answer(model, cfg.model.prompt, 1)
        prompt = ids[: start].repeat(b, 1).to(dev)  # user turn + assistant header: generation starts here
        batch = train_batch(model, cfg, shape, dev)
        flops = generate_flops(sizes, shape, new_tokens)
        _reset_peak(dev)
        try:
            timer = _Timer(dev)
            with torch.inference_mode():
                for i in range(cfg.bench.warmup_steps + cfg.bench.steps):
                    if i == cfg.bench.warmup_steps:
                        timer.mark()
                    out = model.generate(prompts=prompt, audios=batch["audios"], audio_lens=batch["audio_lens"],
                                         generation_config=gen)
                    if i >= cfg.bench.warmup_steps:
                        timer.mark()
            secs = statistics.median(timer.step_seconds())
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "oom": True})
            console.print(f"[yellow]batch {b}: out of memory[/]")
            break
        row = {"batch": b, "audio_s": shape.audio_s, "new_tokens": new_tokens, "generated": int(out.shape[1]),
               "call_s": round(secs, 4), "rtfx": round(b * shape.audio_s / secs, 1),
               "tokens_per_s": round(b * new_tokens / secs, 1), "peak_gb": _peak_gb(dev),
               "mfu": round(flops / secs / 1e12 / ceiling, 4)}
        rows.append(row)
        console.print(row)
    result = {"kind": "eval", "preset": cfg.name, "device": device_name(dev), "dtype": str(dtype).split(".")[-1],
              "matmul_tflops": round(ceiling, 2), "speed": speed, "utt_seconds": cfg.bench.utt_seconds,
              "new_tokens_per_utt": new_tokens, "rows": rows, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__}
    _write(work, "bench_eval", result, _eval_markdown(result))
    return result


def _write(work: Path, name: str, result: dict, md: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / f"{name}.json", json.dumps(result, indent=2))
    write_text_atomic(work / f"{name}.md", md)


def _head(r: dict) -> str:
    on = [k for k, v in r["speed"].items() if v] or ["none"]
    return (f"{r['preset']} on {r['device']}, {r['dtype']}, {r['date']} (torch {r['torch']}); measured matmul ceiling "
            f"{r['matmul_tflops']} TFLOP/s; speed switches: {', '.join(on)}; {r['utt_seconds']} s utterances\n\n")


def _fmt(v) -> str:
    return "—" if v is None else str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]], key_cols: int) -> str:
    """Markdown table of `rows`, columns (header, row key), MFU as a percentage; an out-of-memory row keeps its first
    `key_cols` cells."""
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---:|" * len(cols)]
    for x in rows:
        cells = [f"{x[k]:.1%}" if h == "MFU" and k in x else _fmt(x.get(k)) for h, k in cols]
        if x.get("oom"):
            cells = cells[:key_cols] + ["out of memory"] + [""] * (len(cols) - key_cols - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _train_markdown(r: dict) -> str:
    cols = [("tokens/batch", "batch_tokens"), ("utterances", "batch"), ("step (s)", "step_s"),
            ("tokens/s", "tokens_per_s"), ("audio s/s", "audio_s_per_s"), ("peak GB", "peak_gb"),
            ("TFLOP/s", "tflops"), ("MFU", "mfu")]
    return _head(r) + _table(r["rows"], cols, 2)


def _eval_markdown(r: dict) -> str:
    cols = [("batch", "batch"), ("call (s)", "call_s"), ("RTFx", "rtfx"), ("tokens/s", "tokens_per_s"),
            ("peak GB", "peak_gb"), ("MFU", "mfu")]
    return _head(r) + f"{r['new_tokens_per_utt']} tokens generated per utterance\n\n" + _table(r["rows"], cols, 1)
