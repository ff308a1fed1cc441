"""Model preflight refuses doomed runs before any training time."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from medasr.cli import app
from medasr.config import load_config
from medasr.train.preflight import ModelPreflightError, model_preflight


def _base_copy(run_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(run_dir / "model/base", base)
    return base


def _rewrite(base, fn):
    sd = load_file(str(base / "model.safetensors"))
    fn(sd)
    save_file(sd, str(base / "model.safetensors"))


def test_preflight_passes_on_the_tiny_base_and_renders_the_prompt(tiny_data_and_base):
    rd = tiny_data_and_base
    rep = model_preflight(load_config("tiny"), rd, rd / "model/base")
    assert rep["coverage"]["unknown"] == rep["coverage"]["missing"] == rep["coverage"]["shape_mismatch"] == []
    assert rep["coverage"]["checkpoint_tensors"] == rep["coverage"]["model_tensors"] > 100
    ex = rep["prompt"]["rendered_training_example"]
    first = json.loads((rd / "data/train.json").read_text().splitlines()[0])["text"]
    # the tiny preset's per-source prompt for synthetic rows, rendered as NeMo's pipeline builds the training example
    assert rep["prompt"]["context"] == "Transcribe this medical dictation verbatim."
    assert ex.startswith("<|im_start|>user\nTranscribe this medical dictation verbatim. <|audioplaceholder|><|im_end|>")
    assert first in ex
    assert rep["prompt"]["prompt_matches_inference"]
    assert rep["groups"]["llm (frozen)"]["trainable"] == 0 and rep["groups"]["lora"]["trainable"] > 0
    assert rep["validation"]["validations"] == 300 // 50
    assert json.loads((rd / "train/preflight.json").read_text())["base"] == str(rd / "model/base")


def test_mismatched_checkpoint_is_refused_with_the_list(tiny_data_and_base, tmp_path):
    rd = tiny_data_and_base
    cfg = load_config("tiny")
    # a renamed tensor: from_pretrained (strict=False) would drop it silently and leave the model's own random
    base = _base_copy(rd, tmp_path)
    _rewrite(base, lambda sd: sd.__setitem__("perception.proj.weight_renamed", sd.pop("perception.proj.weight")))
    with pytest.raises(ModelPreflightError) as e:
        model_preflight(cfg, rd, base)
    assert "perception.proj.weight_renamed" in str(e.value) and "perception.proj.weight'" in str(e.value)
    # a reshaped tensor
    base2 = tmp_path / "b2"
    shutil.copytree(rd / "model/base", base2)
    _rewrite(base2, lambda sd: sd.__setitem__("perception.proj.bias", torch.zeros(3)))
    with pytest.raises(ModelPreflightError, match=r"perception\.proj\.bias"):
        model_preflight(cfg, rd, base2)
    assert not (rd / "train" / "checkpoints").exists()  # nothing trained


def test_preflight_refuses_blind_validation_and_a_wrong_freeze_pattern(tiny_data_and_base):
    rd = tiny_data_and_base
    with pytest.raises(ModelPreflightError, match="validation would never run"):
        model_preflight(load_config("tiny", ["train.max_steps=40", "train.val_every_n_steps=50"]), rd, rd / "model/base")
    # a freeze pattern that also freezes the speech encoder and projection (a typo'd regex does this)
    with pytest.raises(ModelPreflightError, match="no trainable encoder parameters"):
        model_preflight(load_config("tiny", [r"model.freeze_params=['^llm\..+$', '^perception\..+$']"]), rd, rd / "model/base")


def test_cli_preflight_exit_codes(tiny_data_and_base, tmp_path):
    rd = tiny_data_and_base
    ok = CliRunner().invoke(app, ["preflight", "--preset", "tiny", "--run-dir", str(rd), "--smoke"])
    assert ok.exit_code == 0, ok.output
    assert "<|audioplaceholder|>" in ok.output and "preflight passed" in ok.output
    assert json.loads((rd / "train/smoke.json").read_text())["ok"] and "smoke run: loss falls" in ok.output
    bad = CliRunner().invoke(app, ["preflight", "--preset", "tiny", "--run-dir", str(rd), "--set", "train.val_every_n_steps=1000"])
    assert bad.exit_code == 1 and "validation would never run" in bad.output


def test_tied_embeddings_pass_preflight_and_stay_out_of_slim_checkpoints(tiny_data_and_base, tmp_path):
    """Qwen3-1.7B ties lm_head to embed_tokens; NeMo's save_pretrained writes that tensor once, so the checkpoint lacks
    one of the two names. The preflight must accept that, and a slim checkpoint must drop the frozen tensor under
    both names (named_parameters() lists a shared parameter once)."""
    from medasr.models.tiny import build_tiny_base
    from medasr.models.salm import load_base
    from medasr.models.checkpoint import checkpoint_shapes
    from medasr.train.callbacks import SlimCheckpoints
    from medasr.models.load import apply_freeze

    rd = tiny_data_and_base
    cfg = load_config("tiny", ["model.tiny.tie_word_embeddings=true"])
    base = build_tiny_base(cfg, tmp_path / "tied")
    names = set(checkpoint_shapes(base / "model.safetensors"))
    pair = {"embed_tokens.weight", "llm.base_model.model.lm_head.weight"}
    assert len(pair & names) == 1  # written once, as NeMo's save_pretrained does for tied weights
    rep = model_preflight(cfg, rd, base)
    assert rep["coverage"]["missing"] == [] and sorted(pair) in rep["coverage"]["tied"]
    model = load_base(base)
    apply_freeze(model, list(cfg.model.freeze_params))
    ckpt = {"state_dict": model.state_dict()}
    SlimCheckpoints().on_save_checkpoint(None, model, ckpt)
    assert not pair & set(ckpt["state_dict"]) and any(".lora_" in k for k in ckpt["state_dict"])


def test_preflight_compares_the_token_ids_decoding_really_sends(tiny_data_and_base):
    """Preflight built its own inference prompt (f"{context} {AUDIO_TAG}") beside the decoder's
    (which strips a leading space), so "prompt matches inference" did not prove what decoding sends. Now one function
    makes the ids for both; here they are caught where SALM embeds them, and an empty prompt is checked as well."""
    import numpy as np

    from medasr.models.salm import load_base, transcribe_arrays

    rd = tiny_data_and_base
    model = load_base(rd / "model/base")
    audio = np.zeros(16000, dtype=np.float32)
    for empty in (False, True):
        cfg = load_config("tiny")
        if empty:
            cfg.model.prompt, cfg.model.prompts_by_source = "<|audioplaceholder|>", {}
        rep = model_preflight(cfg, rd, rd / "model/base")["prompt"]
        seen = []
        hook = model.embed_tokens.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
        transcribe_arrays(model, [audio], cfg.model.prompt, max_new_tokens=1, contexts=[rep["context"]])
        hook.remove()
        tag = model.audio_locator_tag_id  # SALM embeds the audio tag's position as token 0
        assert seen[0][0].tolist() == [0 if t == tag else t for t in rep["inference_prompt_ids"]]
        assert rep["prompt_matches_inference"] and rep["training_prompt_ids"] == rep["inference_prompt_ids"]
    assert rep["context"] == "" and rep["rendered_inference_prompt"].startswith("<|im_start|>user\n <|audioplaceholder|>")
