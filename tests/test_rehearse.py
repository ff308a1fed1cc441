"""The real presets, unchanged but for sizes, steps and CPU, run offline against replicas of the Hub repos and
datasets they download (HF_HUB_OFFLINE=1): supervise reaches done, the export reloads in a fresh process, every
manifest row loads through NeMo's own Lhotse reader, SALM checkpoints hold no frozen tensor."""

import json

import pytest
from safetensors import safe_open

from medasr.config import load_config
from medasr.rehearse.hub import CANARY, CANARY_REV, QWEN
from medasr.rehearse.run import rehearse

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("preset", ["canary-qwen-2.5b", "parakeet-tdt-0.6b-v2"])
def test_rehearse_real_preset(preset, tmp_path):
    rep = rehearse(preset, tmp_path / "w")
    run = tmp_path / "w" / "run"
    assert rep["status"] == "done" and rep["export"]["reloaded_in_fresh_process"]
    for name, n in rep["nemo_reader_rows"].items():
        assert n == len((run / name).read_text().splitlines()) > 0, name
    sources = json.loads((run / "data" / "build_report.json").read_text())["splits"]
    assert set(sources["train"]["by_source"]) == {"osce", "synthetic-kokoro"}  # OSCE from the Hub replica
    # + forgetting; the synthetic test rows by held-out Kokoro voices and by espeak-ng, a held-out engine
    assert set(sources["test"]["by_source"]) <= {"primock57", "synthetic-kokoro", "synthetic-espeak", "generic-kokoro",
                                                 "generic-espeak"}
    assert {"primock57", "synthetic-kokoro"} <= set(sources["test"]["by_source"])
    assert set(sources["train"]["by_accent"]) == {"en-us"} and "en-gb" in sources["test"]["by_accent"]  # held out
    synth = load_config(str(run / "config.yaml")).data.synth
    voices = {sp: {v.replace("espeak-ng:", "espeak:") for v in sources[sp]["by_voice"]} for sp in ("train", "test")}
    assert voices["train"] <= set(synth.train_voices) and not voices["train"] & set(synth.test_voices)
    assert voices["test"] & set(synth.test_voices)  # the held-out voices speak test rows
    # only sizes, steps and hardware were changed
    assert all(o.split("=")[0].split(".")[0] in ("train", "data", "eval", "model") for o in rep["overrides"]
               if o != "gate.min_rows=30")  # the gate's minimum, scaled with the data
    assert [o for o in rep["overrides"] if o.startswith("model.")] == ["model.precision=32-true"]
    if preset == "canary-qwen-2.5b":
        assert rep["slim_checkpoint"]["frozen_tensors"] == []  # tied embed_tokens/lm_head included
        cfg = load_config(str(run / "config.yaml"))
        assert cfg.model.base == f"{CANARY}@{CANARY_REV}"  # the pinned revision, read from the cache offline
        snap = rep["replicas"][CANARY]
        with safe_open(f"{snap}/model.safetensors", "pt") as f:  # written by SALM.save_pretrained, bf16, tied once
            assert "embed_tokens.weight" in f.keys() and "llm.base_model.model.lm_head.weight" not in f.keys()
            assert str(f.get_tensor("perception.proj.weight").dtype) == "torch.bfloat16"
        release = json.loads(open(f"{snap}/config.json").read())
        assert release["pretrained_llm"] == QWEN and release["prompt_format"] == "qwen"
        assert release["lora"]["lora_alpha"] == 2 * release["lora"]["r"] and release["torch_dtype"] == "bfloat16"
        meta = json.loads((run / "canary-qwen-medical-lora" / "medasr_adapter.json").read_text())
        assert meta["base_model"] == f"{CANARY}@{CANARY_REV}"
