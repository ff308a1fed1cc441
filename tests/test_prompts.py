"""Per-row prompts from config, the same at train and eval time, recorded in the model card."""

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
    from medasr.families.salm import load_adapted

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


def _small_test_manifest(run_dir, path, n_synthetic=12, n_generic=4):
    from medasr.data.manifest import write_manifest

    rows = read_manifest(run_dir / "data/test.json")
    pick = [r for r in rows if r["source"].startswith("synthetic")][:n_synthetic] + \
        [r for r in rows if r["source"].startswith("generic")][:n_generic]
    write_manifest(path, pick)
    return pick


def test_merged_carries_its_prompts_and_decodes_as_the_adapter_does(tiny_run, tmp_path):
    """`transcribe --model …/merged` (the form NeMo and vLLM load) decoded every row with the default
    prompt, also rows whose source was fine-tuned under another (8 of 32 on a tiny run). merged/ now carries
    medasr_prompts.json; each row gets its trained prompt and the same transcript as from the adapter."""
    from typer.testing import CliRunner

    from medasr.cli import app

    _, run_dir, _ = tiny_run
    export = run_dir / "canary-qwen-medical-lora"
    saved = json.loads((export / "merged/medasr_prompts.json").read_text())
    assert saved["prompts_by_source"] == {"synthetic": "Transcribe this medical dictation verbatim. <|audioplaceholder|>"}
    manifest = tmp_path / "m.json"
    _small_test_manifest(run_dir, manifest)
    outs = {}
    for name, model in (("adapter", export), ("merged", export / "merged")):
        res = CliRunner().invoke(app, ["transcribe", "--model", str(model), str(manifest), "--out", str(tmp_path / name),
                                       "--format", "json", "--max-new-tokens", "12"])
        assert res.exit_code == 0, res.output
        outs[name] = read_manifest(tmp_path / name / "transcripts.json")
    contexts = {r["source"].split("-")[0]: r["context"] for r in outs["merged"]}
    assert contexts == {"synthetic": "Transcribe this medical dictation verbatim.", "generic": "Transcribe the following:"}
    assert [r["context"] for r in outs["merged"]] == [r["context"] for r in outs["adapter"]]
    assert [r["pred_text"] for r in outs["merged"]] == [r["pred_text"] for r in outs["adapter"]]
    one = json.loads(next((tmp_path / "merged").glob("*.json")).read_text())
    assert one["prompt"].endswith(" <|audioplaceholder|>")  # each output says which prompt decoded it


def test_an_export_is_not_decoded_under_other_prompts_unless_allowed(tiny_run, tmp_path):
    """`eval --model EXPORT` with a prompt override exited 0 and decoded with it (18 of 32 rows
    changed). Now eval and transcribe refuse, naming both prompts, unless --allow-prompt-change; metrics say which."""
    from typer.testing import CliRunner

    from medasr.cli import app

    _, run_dir, _ = tiny_run
    export = run_dir / "canary-qwen-medical-lora"
    manifest = tmp_path / "m.json"
    _small_test_manifest(run_dir, manifest, 4, 2)
    other = "Say what you hear. <|audioplaceholder|>"
    args = ["eval", "-p", "tiny", "--model", str(export), "--manifest", str(manifest), "--run-dir", str(tmp_path / "r"),
            "--set", f"model.prompt={other}", "--set", "eval.max_new_tokens=8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "fine-tuned with prompt 'Transcribe the following: <|audioplaceholder|>'" in res.output
    assert other in res.output and "--allow-prompt-change" in res.output and not (tmp_path / "r/eval").exists()
    res = CliRunner().invoke(app, args + ["--allow-prompt-change"])
    assert res.exit_code == 0, res.output
    used = json.loads((tmp_path / "r/eval/cycle0/metrics.json").read_text())["prompts_used"]
    assert used["changed_from_trained"] and used["prompt"] == other and used["trained"]["prompt"] != other
    res = CliRunner().invoke(app, ["transcribe", "--model", str(export / "merged"), str(manifest), "--prompt", other])
    assert res.exit_code == 2 and "fine-tuned with prompt" in res.output
    res = CliRunner().invoke(app, ["transcribe", "--model", str(export / "merged"), str(manifest), "--prompt", other,
                                   "--allow-prompt-change", "--max-new-tokens", "8"])
    assert res.exit_code == 0 and {json.loads(x)["context"] for x in res.output.splitlines() if x.startswith("{")} == \
        {"Say what you hear."}
