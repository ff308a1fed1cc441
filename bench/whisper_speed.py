"""Where a Whisper fine-tune's CPU time goes, for sizing the offline demo (issue 35): the training step with a LoRA in
encoder and decoder, with the LoRA in the decoder only (encoder frozen: its forward runs without gradients), and with
the frozen encoder's states cached (what an epoch after the first costs), plus batched greedy decoding.

    .venv/bin/python bench/whisper_speed.py [--release tiny.en] [--batch 8] [--steps 3] [--threads 2]

Prints seconds per step / per utterance and the ratios to the LoRA-everywhere step. Whisper always encodes a 30 s
window, so an utterance costs the same whatever its length.
"""

from __future__ import annotations

import argparse
import time

import torch

from medasr.config import load_config
from medasr.data.synth import speak
from medasr.families.whisper import WhisperModule, load_hf
from medasr.models.whisper_weights import hf_dir

SENTENCES = ["Start apixaban five milligrams twice daily.", "She takes amlodipine for her blood pressure.",
             "The scan showed hepatosplenomegaly.", "Continue levothyroxine and ramipril.",
             "Please take a seat and tell me what brings you in today.", "Empagliflozin was started last week.",
             "Any history of atrial fibrillation?", "We will repeat the echocardiogram in six months."]


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", default="tiny.en")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    audios = [speak(SENTENCES[i % len(SENTENCES)], "kokoro:af_heart", 170) for i in range(a.batch)]
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(a.batch)]
    rows = {}
    for name, scope, encoder_frozen in (("LoRA encoder+decoder", "all", False), ("LoRA decoder only", "decoder", True)):
        cfg = load_config("tiny-whisper", [f"model.whisper.lora_scope={scope}", "model.whisper.lora_r=32",
                                           "model.whisper.lora_alpha=64"])
        m = WhisperModule(load_hf(hf_dir(a.release)), cfg)
        m.train()
        feats = m.features(audios)
        width = max(len(m.labels(t)) for t in texts)
        labels = torch.tensor([m.labels(t) + [-100] * (width - len(m.labels(t))) for t in texts])
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)

        def step():
            opt.zero_grad()
            m.training_step({"input_features": feats, "labels": labels}, 0).backward()
            opt.step()

        rows[name] = timed(step, a.steps)
        if encoder_frozen:
            with torch.no_grad():
                states = m.whisper.model.encoder(feats).last_hidden_state

            def cached():
                opt.zero_grad()
                m.model(encoder_outputs=(states,), labels=labels).loss.backward()
                opt.step()

            rows["LoRA decoder only, encoder states cached"] = timed(cached, a.steps)
            rows["(encoder forward alone, no grad)"] = timed(lambda: m.whisper.model.encoder(feats), a.steps)
    decode = timed(lambda: m.transcribe(audios, a.batch, 48), 1)
    ref = rows["LoRA encoder+decoder"]
    print(f"Whisper {a.release}, batch {a.batch}, {a.threads} threads, {a.steps} timed steps (CPU)")
    for name, s in rows.items():
        print(f"  {name:44s} {s:7.2f} s/step  {s / a.batch:6.3f} s/utt  ×{s / ref:5.2f}")
    print(f"  {'greedy decoding (batched)':44s} {decode:7.2f} s/batch {decode / a.batch:6.3f} s/utt")


if __name__ == "__main__":
    main()
