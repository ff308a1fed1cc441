"""Issue 7, rail 6: per-row prompts from config, the same at train and eval time, recorded in the model card."""

import json

import numpy as np
import pytest

from medasr.config import load_config
from medasr.data.manifest import read_manifest
from medasr.prompts import context_for

BY = {"primock57": "Transcribe this doctor-patient conversation verbatim. <|audioplaceholder|>",
      "synthetic": "Transcribe this medical dictation verbatim. Write numbers as digits. <|audioplaceholder|>",
      "synthetic-espeak-noisy": "Noisy dictation. <|audioplaceholder|>"}
DEFAULT = "Transcribe the following: <|audioplaceholder|>"


def test_context_precedence_row_then_longest_source_prefix_then_default():
    assert context_for({"source": "primock57"}, DEFAULT, BY) == "Transcribe this doctor-patient conversation verbatim."
    assert context_for({"source": "synthetic-espeak"}, DEFAULT, BY).endswith("Write numbers as digits.")
    assert context_for({"source": "synthetic-espeak-noisy"}, DEFAULT, BY) == "Noisy dictation."  # longest key wins
    assert context_for({"source": "osce"}, DEFAULT, BY) == "Transcribe the following:"
    assert context_for({}, DEFAULT, BY) == "Transcribe the following:"
    assert context_for({"source": "primock57", "context": "Own prompt."}, DEFAULT, BY) == "Own prompt."
    with pytest.raises(ValueError, match=r"prompts_by_source\['x'\].*must end with"):
        load_config("tiny", ["model.prompts_by_source.x=no audio tag here"])


@pytest.mark.slow
def test_train_and_eval_use_the_same_per_source_prompt(tiny_run):
    cfg, run_dir, _ = tiny_run
    want = "Transcribe this medical dictation verbatim."  # configs/tiny.yaml, for source synthetic-*
    trained_on = read_manifest(run_dir / "train/data/train.json") + read_manifest(run_dir / "train/data/val.json")
    assert {r["context"] for r in trained_on} == {want}
    assert json.loads((run_dir / "train/preflight.json").read_text())["prompt"]["context"] == want
    for cycle in ("cycle0", "cycle1"):
        rows = read_manifest(run_dir / f"eval/{cycle}/hyps.json")
        assert {r["context"] for r in rows if r["source"].startswith("synthetic")} == {want}
        # the generic forgetting rows are not dictation: the default prompt, the same in both cycles
        assert {r["context"] for r in rows if r["source"] == "generic-espeak"} == {"Transcribe the following:"}
    meta = json.loads((run_dir / "canary-qwen-medical-lora/medasr_adapter.json").read_text())
    assert meta["prompts_by_source"] == {"synthetic": want + " <|audioplaceholder|>"}
    card = (run_dir / "canary-qwen-medical-lora/README.md").read_text()
    assert f"`synthetic`: `{want} <|audioplaceholder|>`" in card


@pytest.mark.slow
def test_each_row_in_a_batch_is_decoded_with_its_own_prompt(tiny_run):
    from medasr.audio import read_audio
    from medasr.models.salm import transcribe_arrays
    from medasr.models.load import load_adapted

    _, run_dir, _ = tiny_run
    model, _ = load_adapted(run_dir / "canary-qwen-medical-lora")
    seen = []  # the prompt token ids SALM.generate embeds (its first embed_tokens call per batch)
    model.embed_tokens.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    a = read_audio(read_manifest(run_dir / "data/test.json")[0]["audio_filepath"])
    other = "Transcribe this doctor-patient conversation verbatim."
    mixed = transcribe_arrays(model, [a, np.array(a)], DEFAULT, batch_size=2, max_new_tokens=6,
                              contexts=[None, other])
    prompts = [model.tokenizer.tokenizer.decode(row, skip_special_tokens=False) for row in seen[0]]
    # (the audio tag's position is embedded as token 0 and replaced by the audio frames afterwards)
    assert "<|im_start|>user\nTranscribe the following: " in prompts[0] and other not in prompts[0]
    assert f"<|im_start|>user\n{other} " in prompts[1] and "Transcribe the following" not in prompts[1]
    # and batching rows with different prompts gives what each prompt gives alone
    alone = [transcribe_arrays(model, [a], p, max_new_tokens=6)[0] for p in (DEFAULT, other + " <|audioplaceholder|>")]
    assert mixed == alone


def test_canary_preset_scores_the_base_with_its_own_prompt_and_trains_in_token_batches():
    """The release was trained on "Transcribe the following:"; every test source is scored with it (a per-source
    prompt for all sources handicapped cycle 0 and inflated the gain). Only OSCE rows, whose targets are lower-cased,
    get a prompt naming that style. Batches follow NVIDIA's recipe: 24,000 tokens."""
    from medasr.prompts import context_for

    cfg = load_config("canary-qwen-2.5b")
    ctx = {src: context_for({"source": src}, cfg.model.prompt, cfg.model.prompts_by_source)
           for src in ("primock57", "synthetic-espeak", "osce", "folder:mine")}
    assert ctx["primock57"] == ctx["synthetic-espeak"] == ctx["folder:mine"] == "Transcribe the following:"
    assert ctx["osce"] == "Transcribe the following in lower case without punctuation:"
    assert cfg.train.batch_tokens == 24000


def test_metrics_report_the_output_style():
    from medasr.evaluate.metrics import compute_metrics

    rows = [{"text": "Start metformin.", "pred_text": "start metformin"},
            {"text": "Check the INR, please.", "pred_text": "Check the INR please"},
            {"text": "ok", "pred_text": ""}]
    style = compute_metrics(rows, n_boot=10)["style"]
    assert style["hypotheses"] == {"n": 2, "cased": 0.5, "punctuated": 0.0}
    assert style["references"] == {"n": 3, "cased": 2 / 3, "punctuated": 2 / 3}
