"""The shipped `mini` base: a scaled-down Canary-Qwen SALM pretrained by `medasr pretrain-mini` on generic speech.

It lives in medasr/resources/mini/ (≤ 20 MB): llm/ (tokenizer + Qwen3 config), base/ (model.safetensors + SALM
config), pretrain.json (how it was made and its held-out WER), MODEL_CARD.md. A run installs a copy into
RUN/model/mini/ with the LLM path filled in, then loads it with `SALM.from_pretrained` like any other base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medasr.errors import MedasrError

LLM_PLACEHOLDER = "@MINI_LLM@"  # pretrained_llm in the shipped config: the LLM folder's path depends on the install
MINI_DIR = Path(__file__).resolve().parent.parent / "resources" / "mini"


class MiniModelError(MedasrError, RuntimeError):
    pass


def shipped(src: Path = MINI_DIR) -> bool:
    return (src / "base" / "model.safetensors").exists() and (src / "llm" / "config.json").exists()


def install_mini(out_root: Path, src: Path = MINI_DIR, fresh: bool = False) -> Path:
    """Copy the shipped mini base into out_root/mini (once; `fresh` replaces an earlier copy) and return the SALM
    directory for from_pretrained."""
    if not shipped(src):
        raise MiniModelError(f"the mini base is not in {src}: run `medasr pretrain-mini` (it writes it there), or "
                             "use --preset tiny")
    dst = out_root / "mini"
    base = dst / "base"
    if not fresh and (base / "model.safetensors").exists() and (base / "config.json").exists():
        return base
    tmp = out_root / "mini.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    conf_file = tmp / "base" / "config.json"
    conf = json.loads(conf_file.read_text())
    conf["pretrained_llm"] = str((dst / "llm").resolve())
    conf_file.write_text(json.dumps(conf, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    return base


def _grown(x: dict) -> str:
    a, b = x.get("n_train", (0, 0))
    return f"; pretrain.n_train raised from {a:,} to {b:,} (more training text)" if b > a else ""


def _neural(x: dict) -> str:
    a, b = x.get("neural_train", (0, 0))
    if b <= a:
        return ""
    return (f"; Kokoro speech added: {b:,} training sentences spoken again by Kokoro voices" if not a else
            f"; pretrain.neural_train raised from {a:,} to {b:,} (more Kokoro speech)")


def _start(x: dict, p: dict) -> str:
    if "start_heldout_wer" not in x:
        return ""
    redrawn = (" (its held-out voices and rates re-drawn: the curve below uses that audio from here on)"
               if _grown(x) else "")
    neural = (f", {x['start_heldout_wer_neural']:.1%} by the Kokoro training voices"
              if "start_heldout_wer_neural" in x else "")
    return f"; held-out WER at the start {x['start_heldout_wer']:.1%}{neural} on {p['eval_rows']} rows{redrawn}"


def write_card(out_dir: Path, r: dict) -> None:
    t, p, text = r["sizes"], r["pretrain"], r["text"]
    size_mb = (out_dir / "base" / "model.safetensors").stat().st_size / 1e6
    neural = bool(p.get("neural_train"))
    hist = "\n".join(f"| {h['step']} | {h['ce']} | {h['ctc']} | {h['heldout_wer']:.1%} | "
                     + (f"{h['heldout_wer_neural']:.1%} | " if neural else "")
                     + f"{h['minutes']} |" for h in r["history"] if not neural or "heldout_wer_neural" in h)
    resumes = "".join(
        f" Continued at step {x['step']} ({x['at']}) from the shipped base `{x['continued_from']}` (`--init-from`: new "
        f"AdamW state and CTC head, warm-up {x['warmup']}, then cosine to the new plan of {x['steps']} steps, peak lr "
        f"{x['lr']:g}{_grown(x)}{_neural(x)}{_start(x, p)})." if "continued_from" in x else
        f" Resumed at step {x['step']} ({x['at']}) with the plan set to {x['steps']} steps, peak lr "
        f"{x['lr']:g} (the cosine schedule recomputed for the new plan)." for x in r.get("resumes", []))
    if r["steps"] < p["steps"]:  # cut short by pretrain.max_minutes: say so, the plan's last steps never ran
        resumes += (f" Stopped by pretrain.max_minutes ({p['max_minutes']:g} min for that run) at step {r['steps']} of "
                    f"the planned {p['steps']}")
        if r["history"]:
            resumes += f" (learning rate {r['history'][-1]['lr']:g} at step {r['history'][-1]['step']})"
        resumes += "."
    voices_line = (f" {text['neural_train_rows']:,} of those sentences ({text['neural_train_hours']} h) spoken again by "
                   f"{len(r['neural_voices'])} Kokoro-82M voices ({', '.join(v.removeprefix('kokoro:') for v in r['neural_voices'])}), "
                   f"drawn {p['neural_repeat']}× per pass over the data." if neural else "")
    neural_rows = (f"| Kokoro training voices (new sentences) | {r['heldout_wer_neural_seen_voice']:.1%} |\n"
                   f"| {r['neural_heldout_voice']} (never heard in pretraining) | {r['heldout_wer_neural_new_voice']:.1%} |\n"
                   if neural else "")
    curve = ("held-out WER on {n} sentences by the espeak-ng and by the Kokoro training voices; rows from when the Kokoro "
             "voices joined" if neural else "held-out WER on {n} sentences, pretraining voices").format(n=p["eval_rows"])
    card = f"""# medasr mini base (pretrained from scratch, generic English {'espeak-ng and Kokoro' if neural else 'espeak-ng'} speech)

A scaled-down Canary-Qwen SALM — FastConformer encoder (d_model {t['encoder_d_model']}, {t['encoder_layers']} layers,
8× subsampling, {t['mel_features']} mel) → linear projection → Qwen3-architecture LLM (hidden {t['hidden_size']},
{t['num_layers']} layers, {t['num_heads']} heads / {t['num_kv_heads']} KV heads, head_dim {t['head_dim']}, intermediate
{t['intermediate_size']}, byte-level BPE vocabulary of {t['vocab_size']} + chat tokens) — **{r['params']:,} parameters,
{size_mb:.1f} MB** (model.safetensors, stored in fp16; loads as fp32). It exists so the offline demo
(`medasr flywheel --preset mini`) can show a medical fine-tune on a base that knows generic speech; it is not a usable
ASR model for real recordings.

## How it was made

`medasr pretrain-mini` (medasr/train/pretrain_mini.py): every base parameter trained from random init with a hybrid
loss (decoder cross-entropy + {p['ctc_weight']} × CTC on the encoder; the CTC head is dropped), AdamW (final plan:
peak lr {p['lr']}, warm-up {p['warmup_steps']}, cosine to {p['min_lr']}), batch {r['batch_size']}, **{r['steps']} steps in
{r['minutes']} min on {r['hardware']}**.{resumes} LoRA (r={t['lora_r']} on {', '.join(t['lora_target_modules'])}) is left at
its identity init for the fine-tune. Prompt: `{r['prompt']}`.

## Data

- Text: {text['source']}; licence: {text['licence']}. {text['kept']:,} cleaned sentences; **{text['excluded_medical']}
  sentences excluded for naming a term of the medical lexicon** ({text['lexicon_terms']:,} terms, core + extended),
  so every medical term the fine-tuned model gets right was learnt in the fine-tune. The tokenizer is trained on the
  pretraining text only.
- Speech: {text['train_rows']:,} sentences of ≤ {p['max_words']} words ({text['train_hours']} h), each spoken by one of
  {len(r['voices'])} espeak-ng voices ({', '.join(r['voices'])}) at {p['rate_min']}–{p['rate_max']} wpm, each with a noise level
  drawn uniformly from {p['noise_levels']} (pink noise at that SNR in dB).{voices_line}

## Held-out generic speech ({r['heldout_rows']} sentences never trained on, clean audio)

These sentences steered the pretraining (when to continue, with which settings): read them as a validation set, not
a test set. medasr's medical test set measures general speech on other sentences (longer than any pretraining one).

| voice | WER (whisper-normalised) |
|---|---|
| pretraining voices (new sentences) | {r['heldout_wer_seen_voice']:.1%} |
| {r['heldout_voice']} (never heard in pretraining) | {r['heldout_wer_new_voice']:.1%} |
{neural_rows}
## Training curve ({curve})

| step | CE | CTC | held-out WER | {'Kokoro held-out WER | ' if neural else ''}minutes |
|---|---|---|---|{'---|' if neural else ''}---|
{hist}
"""
    (out_dir / "MODEL_CARD.md").write_text(card)
