"""How the shipped mini base hears each synthetic engine: its WER on the first N of its own held-out generic sentences
(never trained on), spoken by a pretraining espeak-ng voice, by its held-out espeak-ng voice, and by Kokoro-82M voices
(American and British). Prints WER per voice set and the ratio to the pretraining voice; writes JSON. Which Kokoro
voices a base was pretrained on is on its card (pretrain.neural_voices): af_heart and am_michael are among them for a
base continued on Kokoro speech; af_jessica and bf_emma are medical test voices, which no base has heard.

    .venv/bin/python bench/mini_voice_probe.py [--sentences 50] [--base DIR] [--work runs/mini-voice-probe] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from medasr.config import load_config
from medasr.data.generic_speech import GenericUtterance, plan_generic, synthesize_generic
from medasr.data.generic_text import generic_sentences
from medasr.models.mini import MINI_DIR, install_mini
from medasr.models.salm import load_base
from medasr.train.select import model_wer

VOICE_SETS = {"espeak pretraining voice (en-us)": "en-us", "espeak held-out voice (en-gb-scotland+f2)": None,
              "kokoro af_heart (US)": "kokoro:af_heart", "kokoro am_michael (US)": "kokoro:am_michael",
              "kokoro af_jessica (US)": "kokoro:af_jessica", "kokoro bf_emma (UK)": "kokoro:bf_emma"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("runs/mini-voice-probe"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=MINI_DIR, help="a mini base folder (pretrain-mini --out); default: shipped")
    a = ap.parse_args()
    cfg = load_config("mini")
    p = cfg.pretrain
    # the pretraining plan's own held-out sentences (drawn first from the seeded shuffle, so the first N of them)
    held = [u.text for u in plan_generic(generic_sentences().sentences, seed=p.seed, n_train=1, n_heldout=p.n_heldout,
                                         voices=list(p.voices), heldout_voice=p.heldout_voice,
                                         rates=(p.rate_min, p.rate_max), noise_levels=["clean"], max_words=p.max_words)
            if u.split == "heldout_new_voice"][: a.sentences]
    model = load_base(install_mini(a.work / "model", src=a.base, fresh=True))
    results = {}
    for name, voice in VOICE_SETS.items():
        voice = voice or p.heldout_voice
        rng = random.Random(1)  # the same rates for every voice set
        plan = [GenericUtterance(f"probe-{i:04d}", "heldout", text, voice, rng.randint(p.rate_min, p.rate_max), "clean", 0)
                for i, text in enumerate(held)]
        t = time.perf_counter()
        rows = synthesize_generic(plan, a.work / "audio" / voice.replace(":", "_"))
        synth_s = time.perf_counter() - t
        results[name] = {"voice": voice, "rows": len(rows), "wer": round(model_wer(cfg, model, rows), 4),
                         "synth_s": round(synth_s, 1)}
        print(f"{name:45} WER {results[name]['wer']:.1%}  ({len(rows)} sentences)", flush=True)
    ref = results["espeak pretraining voice (en-us)"]["wer"]
    for r in results.values():
        r["vs_pretraining_voice"] = round(r["wer"] / ref, 2) if ref else None
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"sentences": a.sentences, "date": time.strftime("%Y-%m-%d"), "base": str(a.base),
                                     "base_steps": json.loads((a.base / "pretrain.json").read_text())["steps"],
                                     "results": results},
                                    indent=2))


if __name__ == "__main__":
    main()
