"""The Whisper family through the same flywheel, selection, export and reload as the NeMo families: a random-init
Whisper with tiny.en's tokenizer (tiny-whisper) proves the machinery; the decoder prompt and labels follow Hugging
Face's Whisper conventions; the export loads with transformers alone and decodes as the trained model did."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medasr.config import load_config
from medasr.data.manifest import read_manifest

READER = """
import json, sys
import soundfile as sf, torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
d, paths = sys.argv[1], json.loads(sys.argv[2])
model = WhisperForConditionalGeneration.from_pretrained(d).eval()
proc = WhisperProcessor.from_pretrained(d)
feats = proc([sf.read(p, dtype="float32")[0] for p in paths], sampling_rate=16000, return_tensors="pt").input_features
nots = proc.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
prompt = torch.tensor([[model.generation_config.decoder_start_token_id, nots]] * len(paths))
with torch.no_grad():
    ids = model.generate(input_features=feats, decoder_input_ids=prompt, max_new_tokens=20, num_beams=1, do_sample=False)
print(json.dumps([t.strip() for t in proc.tokenizer.batch_decode(ids, skip_special_tokens=True)]))
assert "medasr" not in sys.modules
"""


@pytest.mark.slow
def test_tiny_whisper_runs_the_flywheel_and_exports_a_lora(tiny_whisper_run):
    cfg, run_dir, summary = tiny_whisper_run
    assert summary["status"] == "done" and summary["export_file"] == "whisper-medical/medasr_whisper.json"
    val = json.loads((run_dir / "train/val_loss.json").read_text())
    assert val["final"] < val["base"]  # the LoRA learned something
    trainable = json.loads((run_dir / "train/trainable_params.json").read_text())["groups"]
    assert trainable["lora"]["trainable"] > 0 and trainable["encoder"]["trainable"] == 0  # LoRA only
    adapter = json.loads((run_dir / "whisper-medical/adapter/adapter_config.json").read_text())
    # lora_scope decoder: one regex PEFT matches in full, q/v of the decoder's self- and cross-attention only
    assert adapter["r"] == cfg.model.whisper.lora_r and adapter["target_modules"].startswith(r".*decoder\.layers")
    assert adapter["target_modules"].endswith("(q_proj|v_proj)")
    meta = json.loads((run_dir / "whisper-medical/medasr_whisper.json").read_text())
    assert meta["reload_check"]["ok"] and meta["decoder_prompt"] == [50257, 50362]
    assert "LoRA (r=8" in (run_dir / "whisper-medical/README.md").read_text()
    recipe = json.loads((run_dir / "train/recipe.json").read_text())
    assert (recipe["optimizer"], recipe["lr"], recipe["lr_scheduler"]) == ("AdamW", 2e-3, "CosineAnnealing")


@pytest.mark.slow
def test_whisper_export_loads_with_transformers_alone_and_decodes_as_trained(tiny_whisper_run):
    from medasr.families import family

    cfg, run_dir, _ = tiny_whisper_run
    rows = read_manifest(run_dir / "data/val.json")[:3]
    out = subprocess.run([sys.executable, "-c", READER, str(run_dir / "whisper-medical/merged"),
                          json.dumps([r["audio_filepath"] for r in rows])], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fam = family(cfg)
    chosen = Path(json.loads((run_dir / "train/selection.json").read_text())["chosen"]["path"])
    module = fam.load_checkpoint(cfg, run_dir / "model/base", chosen)
    from medasr.audio import read_audio

    trained = module.transcribe([read_audio(r["audio_filepath"]) for r in rows], batch_size=3, max_new_tokens=20)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == trained


def test_labels_and_decoder_prompt_follow_whispers_conventions():
    """English-only tiny.en: <|startoftranscript|><|notimestamps|>; multilingual base: <|en|><|transcribe|> first.
    Labels = the prompt after <|startoftranscript|> (the model shifts it in), the text with its space, <|endoftext|>."""
    from medasr.families.whisper import WhisperModule, load_hf
    from medasr.models.whisper_weights import hf_dir, special_ids

    for release, expected in (("tiny.en", ["sot", "no_timestamps"]), ("base", ["sot", "en", "transcribe", "no_timestamps"])):
        ids = special_ids(hf_dir(release).parent / "ct2" / "tokenizer.json")
        module = WhisperModule(load_hf(hf_dir(release)), load_config("tiny-whisper", ["model.whisper.lora_r=0"]))
        assert module.prompt_ids() == [ids[k] for k in expected]
        labels = module.labels("Start apixaban today.")
        assert labels[: len(expected) - 1] == [ids[k] for k in expected[1:]] and labels[-1] == ids["eot"]
        assert module.processor.tokenizer.decode(labels[len(expected) - 1 : -1]) == " Start apixaban today."
        assert all(p.requires_grad for p in module.parameters())  # lora_r 0: a full fine-tune


def test_load_model_picks_the_family_that_claims_the_argument(tmp_path):
    from medasr.families import FAMILIES
    from medasr.models.whisper_weights import hf_dir

    (tmp_path / "salm").mkdir()
    (tmp_path / "salm/config.json").write_text('{"pretrained_llm": "x"}')

    def pick(spec, kind=None):
        best = max(FAMILIES.values(), key=lambda f: f.claims(Path(spec), kind))
        return best.kind if best.claims(Path(spec), kind) else None

    assert pick(hf_dir("tiny.en")) == "whisper"  # a config.json SALM would also take, but it says whisper
    assert pick(tmp_path / "salm") == "salm" and pick("nvidia/canary-qwen-2.5b") == "salm"
    assert pick("openai/whisper-large-v3-turbo") == "whisper" and pick("tiny.en") == "whisper"
    assert pick("nvidia/parakeet-tdt-0.6b-v2") == "asr" and pick("x.nemo", "salm") == "asr"
    assert pick("nvidia/canary-qwen-2.5b", "asr") == "asr" and pick(tmp_path, "asr") is None


def test_cached_encoder_states_give_the_same_loss_and_gradients(tmp_path):
    """Decoder-only LoRA: the frozen encoder runs once per utterance (bench/whisper_speed.py: a step ×0.11 of a
    LoRA in encoder and decoder); the loss and the LoRA gradients equal those of the uncached forward."""
    import torch

    from medasr.families.whisper import WhisperModule, build_tiny_whisper, load_hf

    cfg = load_config("tiny-whisper", ["model.whisper.lora_scope=decoder", "model.whisper.lora_dropout=0"])
    base = build_tiny_whisper(cfg, tmp_path)
    m = WhisperModule(load_hf(base), cfg)
    assert m.encoder_states_fixed() and m.groups()["encoder"]["trainable"] == 0
    torch.manual_seed(0)
    for p in m.parameters():  # PEFT starts LoRA B at zero: give it values so gradients reach every LoRA matrix
        if p.requires_grad:
            p.data.normal_(0, 0.02)
    feats = torch.randn(2, 80, 3000)
    labels = torch.tensor([m.labels("start apixaban today"), m.labels("stop the ramipril")])
    batch = {"input_features": feats, "labels": labels, "keys": ["a", "b"]}

    def loss_and_grads(b):
        m.zero_grad()
        loss = m.loss(b)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}

    plain, g_plain = loss_and_grads({k: v for k, v in batch.items() if k != "keys"})
    first, g_first = loss_and_grads(batch)
    calls = []
    m.whisper.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    again, g_again = loss_and_grads(batch)
    assert not calls and set(m._states) == {"a", "b"}  # the second pass read the cache
    assert torch.allclose(plain, first, atol=1e-3) and torch.allclose(first, again)
    assert all(torch.allclose(g_plain[n], g_again[n], atol=1e-3, rtol=1e-2) for n in g_plain)
    m.cache_encoder = False  # off: the encoder runs every time
    loss_and_grads(batch)
    assert calls
