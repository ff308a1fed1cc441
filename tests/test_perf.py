"""The release-shaped preset, the FLOP accounting behind MFU, the speed switches, and the `medasr bench` harness
(on the CPU with the tiny preset: the numbers that matter come from a GPU, the harness is what is tested here)."""

import json
import resource

import pytest
import torch
from typer.testing import CliRunner

from medasr.cli import app
from medasr.config import load_config
from medasr.perf import bench
from medasr.perf.flops import StepShape, train_step_flops

DEV = torch.device("cpu")


def _maxrss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def test_release_shapes_count_2_5b_parameters_without_allocating(tmp_path):
    from medasr.models.tiny import build_llm_folder, new_salm

    cfg = load_config("canary-qwen-2.5b-shapes")
    build_llm_folder(tmp_path / "llm", cfg.model.tiny)
    before = _maxrss_gb()
    model = new_salm(tmp_path / "llm", cfg.model.tiny, empty=True)
    assert _maxrss_gb() - before < 2.0  # 2.56 B fp32 weights would be +10 GB
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        g = "lora" if ".lora_" in name else name.split(".")[0]
        groups[g] = groups.get(g, 0) + p.numel()
    # Qwen3-1.7B: 28 x (q 2048x2048, k/v 2048x1024, o 2048x2048, MLP 3 x 2048x6144, 2 norms 2048, q/k norms 128)
    # + final norm; the 151,936 x 2048 embedding counted once (lm_head tied to it).
    layer = 2048 * 2048 * 2 + 2048 * 1024 * 2 + 3 * 2048 * 6144 + 2 * 2048 + 2 * 128
    assert groups["llm"] + groups.get("embed_tokens", 0) == 28 * layer + 2048 + 151936 * 2048
    assert groups["lora"] == 28 * 128 * ((2048 + 2048) + (2048 + 1024))  # r 128 on q_proj and v_proj
    assert 0.80e9 < groups["perception"] < 0.83e9  # canary-1b-flash's 32-layer encoder (883 M with its decoder)
    total = sum(groups.values())
    assert 2.50e9 < total < 2.60e9, total
    lm_head = next(m for n, m in model.llm.named_modules() if n.endswith("lm_head"))
    assert lm_head.weight is model.embed_tokens.weight
    assert model.perception.encoder.layers[0].self_attn.h == 8 and len(model.perception.encoder.layers) == 32


def test_flop_formulas_match_torch_counter_on_a_real_forward(tmp_path):
    """perf/flops.py against torch.utils.flop_counter on the tiny model's training forward (eager attention so every
    product is a counted matmul; the preprocessor's mel matmul is excluded on both sides)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config("tiny", ["bench.utt_seconds=2.0"])
    model, _, _ = bench.build_model(cfg, tmp_path, DEV, torch.float32)
    model.llm.config._attn_implementation = "eager"
    model.train()
    shape = bench.shape_for(model, cfg, batch=3)
    batch = bench.train_batch(model, cfg, shape, DEV)
    assert model.prepare_inputs(batch)["input_embeds"].shape[1] == shape.seq_len - 1
    counted = {}
    for target_only in (False, True):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            bench._loss(model, batch, target_only)
        counted[target_only] = (counter.get_total_flops()
                                - sum(counter.get_flop_counts()["AudioPerceptionModule.preprocessor"].values()))
    sizes = bench._sizes_with_vocab(cfg, model)
    f = train_step_flops(sizes, shape)
    forward = f["encoder"] / 3 + f["llm_frozen"] / 2 + f["llm_attention"] / 3 + f["lora"] / 3
    assert abs(counted[False] - forward) / counted[False] < 0.05, (counted, forward)
    # logits only at the transcript positions: lm_head (hidden x vocab) runs on n_targets rows instead of all of them
    n_targets = int((model.prepare_inputs(batch)["target_ids"] != -100).sum())
    head = 2 * sizes.hidden_size * sizes.llm_vocab_size
    assert counted[False] - counted[True] == head * (shape.batch * (shape.seq_len - 1) - n_targets)
    saved = f["llm_frozen"] - train_step_flops(sizes, shape, target_logits_only=True)["llm_frozen"]
    assert saved == 2 * head * shape.batch * (shape.seq_len - 1 - shape.text_tokens)


def test_train_flops_of_the_release_shape_at_24k_tokens():
    """The frozen LLM costs 2x its forward, the trained encoder 3x: at 24k tokens per batch of 10 s utterances the
    step is ~0.3 PFLOP (the figure docs/PERFORMANCE.md predicts step times from)."""
    t = load_config("canary-qwen-2.5b-shapes").model.tiny
    shape = StepShape(batch=136, audio_s=10.0, prompt_tokens=17, text_tokens=39)
    assert 23_000 < shape.batch_tokens < 25_000
    f = train_step_flops(t, shape)
    assert 0.2e15 < f["total"] < 0.4e15
    # 2 x (forward of 1.41 B LLM matmul params + lm_head) per position, within 10 %
    llm = 2 * 2 * shape.batch * (shape.seq_len - 1) * (28 * (2048 * 2048 * 2 + 2048 * 1024 * 2 + 3 * 2048 * 6144)
                                                       + 2048 * 151936)
    assert abs(f["llm_frozen"] - llm) / llm < 0.01


def test_speed_switches_change_speed_not_math(tmp_path):
    from medasr.models.speed import state_key
    from medasr.models.load import missing_trainable

    plain_cfg = load_config("tiny", ["train.target_logits_only=false"])
    fast_cfg = load_config("tiny", ["train.encoder_sdpa=true", "train.activation_checkpointing=true"])
    plain, _, off = bench.build_model(plain_cfg, tmp_path, DEV, torch.float32)
    fast, _, on = bench.build_model(fast_cfg, tmp_path, DEV, torch.float32)
    assert off == {"encoder_sdpa": False, "activation_checkpointing": False, "target_logits_only": False}
    assert on == {"encoder_sdpa": True, "activation_checkpointing": True, "target_logits_only": True}
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    assert all(m.use_pytorch_sdpa for m in fast.perception.encoder.modules() if hasattr(m, "use_pytorch_sdpa"))
    assert all(isinstance(layer, CheckpointWrapper) for layer in fast.perception.encoder.layers)
    assert fast.llm.is_gradient_checkpointing and not plain.llm.is_gradient_checkpointing
    assert not any(isinstance(layer, CheckpointWrapper) for layer in plain.perception.encoder.layers)
    batch = bench.train_batch(plain, plain_cfg, bench.shape_for(plain, plain_cfg, batch=2), DEV)
    plain.train()
    fast.train()
    # the step Lightning runs: NeMo's own SALM.training_step on the plain model, MedasrSALM's target-logits one on the
    # fast (a method of the class, nothing swapped in on the instance)
    from nemo.collections.speechlm2.models import SALM

    assert not plain.target_logits_only and fast.target_logits_only and "training_step" not in vars(fast)
    torch.manual_seed(1)
    a_out = SALM.training_step(plain, batch, 0)
    a_out["loss"].backward()
    torch.manual_seed(1)
    b_out = fast.training_step(batch, 0)
    b_out["loss"].backward()
    a, b = a_out["loss"], b_out["loss"]
    assert torch.allclose(a, b, atol=1e-5) and a_out["num_frames"] == b_out["num_frames"] > 0
    torch.manual_seed(1)  # dropout draws the same masks
    assert bench._loss(fast, batch, True).item() == pytest.approx(b.item(), abs=1e-5)  # what bench times
    grads_plain = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    grads_fast = {state_key(n): p.grad for n, p in fast.named_parameters() if p.requires_grad}
    assert grads_plain.keys() == grads_fast.keys()
    worst = max((grads_plain[k] - grads_fast[k]).abs().max().item() for k in grads_plain)
    assert worst < 1e-5
    # checkpoints keep their keys: a wrapped model's state dict is the plain one's, and resume finds every tensor
    assert set(fast.state_dict()) == set(plain.state_dict())
    assert missing_trainable(fast, fast.state_dict()) == []


def test_bench_train_and_eval_on_cpu_with_tiny(tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "train", "-p", "tiny", "-o", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "bench_train.json").read_text())
    assert r["device"].startswith("CPU") and r["dtype"] == "float32" and r["matmul_tflops"] > 0
    cfg = load_config("tiny")
    assert [x["batch"] for x in r["rows"]] == [1, 3]  # 150 and 300 tokens of 79-token (3 s) utterances
    for x in r["rows"]:
        assert x["batch_tokens"] <= 300 and x["step_s"] > 0
        assert x["tokens_per_s"] == pytest.approx(x["batch_tokens"] / x["step_s"], rel=0.01)
        assert x["audio_s_per_s"] == pytest.approx(x["batch"] * 3.0 / x["step_s"], rel=0.01)
        assert 0 < x["mfu"] < 1 and x["peak_gb"] is None
    assert r["trainable"]["llm (frozen)"]["trainable"] == 0
    table = (out / "bench_train.md").read_text()
    assert "| tokens/batch |" in table and table.count("\n| ") == 3  # header + 2 rows
    res = CliRunner().invoke(app, ["bench", "eval", "-p", "tiny", "-o", str(out)])
    assert res.exit_code == 0, res.output
    e = json.loads((out / "bench_eval.json").read_text())
    assert [x["batch"] for x in e["rows"]] == cfg.bench.eval_batch_sizes
    for x in e["rows"]:
        assert x["generated"] == x["new_tokens"] == 11  # ceil(3.5 tokens/s x 3 s), forced: min = max
        assert x["rtfx"] == pytest.approx(x["batch"] * 3.0 / x["call_s"], rel=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bench_refuses_the_release_shape_on_a_cpu(tmp_path):
    res = CliRunner().invoke(app, ["bench", "train", "-p", "canary-qwen-2.5b-shapes", "-o", str(tmp_path)])
    assert res.exit_code == 1
    assert "2.56 B parameters" in res.output and not (tmp_path / "bench_train.json").exists()


def test_bucketing_cuts_padding_in_the_training_pipeline(tiny_run, tmp_path):
    """Measured with the fine-tune's own data config and NeMo's Lhotse sampler on the tiny corpus."""
    from medasr.models.salm import load_base
    from medasr.perf.padding import padding_stats

    _, run_dir, _ = tiny_run
    model = load_base(run_dir / "model/base")
    plain = padding_stats(load_config("tiny"), model, run_dir / "data", tmp_path / "a", n_batches=20)
    bucketed = padding_stats(load_config("tiny", ["train.bucketing=true"]), model, run_dir / "data", tmp_path / "b",
                             n_batches=20)
    assert plain["mean_batch"] == 8.0 and 6 <= bucketed["mean_batch"] <= 8.0
    assert bucketed["audio_padding"] < 0.6 * plain["audio_padding"], (plain, bucketed)
    tokens = padding_stats(load_config("tiny", ["train.batch_tokens=1500", "train.bucketing=true"]), model,
                           run_dir / "data", tmp_path / "c", n_batches=10)
    assert tokens["mean_batch"] > 8.0  # 1,500 tokens hold more than 8 of these short rows


def test_fine_tune_with_every_speed_switch_trains_and_resumes(tiny_data_and_base):
    """Bucketing + token batches + encoder SDPA + activation checkpointing + target logits (the default) through the
    real trainer: the checkpoint keeps the plain keys and a re-run resumes from it to the new max_steps."""
    from medasr.train.trainer import train

    run_dir = tiny_data_and_base
    sets = ["train.bucketing=true", "train.batch_tokens=800", "train.encoder_sdpa=true",
            "train.activation_checkpointing=true", "train.ckpt_every_n_steps=3", "train.val_every_n_steps=3",
            "train.select_rows=4", "eval.max_new_tokens=4"]
    done = train(load_config("tiny", sets + ["train.max_steps=3"]), run_dir, run_dir / "model/base")
    assert done["global_step"] == 3
    record = json.loads((run_dir / "train/trainable_params.json").read_text())
    assert record["speed"] == {"encoder_sdpa": True, "activation_checkpointing": True, "target_logits_only": True}
    sd = torch.load(run_dir / "train/checkpoints/last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    assert sd and not [k for k in sd if "_checkpoint_wrapped_module" in k]
    assert any(k.startswith("perception.encoder.layers.0.") for k in sd)
    done = train(load_config("tiny", sets + ["train.max_steps=5"]), run_dir, run_dir / "model/base")
    assert done["global_step"] == 5
    log = [json.loads(x) for x in (run_dir / "train/resume_log.jsonl").read_text().splitlines()]
    assert log[-1]["start_step"] == 3 and log[-1]["resumed_from"].endswith("last.ckpt")


def test_static_kv_cache_decodes_the_same_transcripts(tiny_run):
    """eval.static_cache changes how the KV cache is held (so a GPU can compile the decode step), not the tokens:
    the fine-tuned tiny model's transcripts of test rows are identical either way."""
    from medasr.audio import read_audio
    from medasr.data.manifest import read_manifest
    from medasr.transcribe import model_decoder
    from medasr.families import load_model

    _, run_dir, _ = tiny_run
    loaded = load_model(run_dir / "canary-qwen-medical-lora")
    rows = read_manifest(run_dir / "data/test.json")[:6]
    audios = [read_audio(r["audio_filepath"], loaded.model.sampling_rate) for r in rows]
    seen = []  # what transformers' generate is asked for (the call itself is the real one)
    real_generate = loaded.model.llm.generate

    def recording_generate(*args, **kwargs):
        seen.append(kwargs.get("cache_implementation"))
        return real_generate(*args, **kwargs)

    loaded.model.llm.generate = recording_generate
    dynamic = model_decoder(loaded, 4, 24)(audios, [None] * len(rows))
    static = model_decoder(loaded, 4, 24, static_cache=True)(audios, [None] * len(rows))
    assert seen == [None, None, "static", "static"]  # 6 rows in batches of 4, without then with the switch
    assert static == dynamic and any(t.strip() for t in dynamic)


def test_preflight_plan_counts_rows_per_token_batch(tmp_path):
    from medasr.data.manifest import write_manifest
    from medasr.train.preflight import validation_plan

    rows = [{"audio_filepath": f"{i}.wav", "duration": 4.0, "text": "x"} for i in range(25)]
    write_manifest(tmp_path / "train.json", rows)
    write_manifest(tmp_path / "val.json", rows[:2])
    plain = validation_plan(load_config("tiny", ["train.max_steps=30"]), tmp_path)
    assert (plain["rows_per_batch"], plain["batches_per_epoch"], plain["epochs"]) == (8, 4, 7.5)
    tokens = validation_plan(load_config("tiny", ["train.max_steps=30", "train.batch_tokens=1100"]), tmp_path)
    # a 4 s row is 50 audio tokens + ~60 prompt/transcript tokens: 10 rows per 1,100 tokens
    assert (tokens["rows_per_batch"], tokens["batches_per_epoch"], tokens["epochs"]) == (10, 3, 10.0)
