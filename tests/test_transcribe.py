"""Transcription for real use — long-form chunking and merge on a recording whose words are known,
txt/json/srt outputs, files/folders/manifests, both model kinds."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from medasr.cli import app
from medasr.data.lexicon import core_lexicon
from medasr.data.synth import speak
from medasr.data.templates import TEMPLATES, render
from medasr.audio import read_audio
from medasr.transcribe import POLICIES, ChunkPolicy, merge_chunk_texts, plan_chunks

SR = 16000


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    """~100 s of espeak speech, spoken word by word so every word's start and end time is known exactly."""
    terms = core_lexicon().terms
    sentences = [render(TEMPLATES["dictation"][t.entity_category][i % 3], t.term) for i, t in enumerate(terms[::7])]
    pieces, words, t = [], [], 0.0
    for s in sentences:
        for w in s.split():
            a = speak(w, "en-us", 175)
            pieces += [a, np.zeros(int(0.06 * SR), np.float32)]
            words.append((w, t, t + len(a) / SR))
            t += len(a) / SR + 0.06
        pieces.append(np.zeros(int(0.3 * SR), np.float32))
        t += 0.3
        if t > 100:
            break
    path = tmp_path_factory.mktemp("long") / "consultation.wav"
    sf.write(path, np.concatenate(pieces), SR, subtype="PCM_16")
    return path, words


def oracle_decoder(path, words, policy):
    """Stands in for a perfect recogniser that mangles the words cut by a chunk edge (as real models do): it finds
    which planned chunk it was given by comparing samples, and returns the words heard inside it."""
    full = read_audio(str(path))
    spans = plan_chunks(sf.info(path).duration, policy)

    def decode(audios, contexts):
        out = []
        for a in audios:
            s, e = next((s, e) for s, e in spans if np.array_equal(a, full[round(s * SR): round(s * SR) + len(a)]))
            heard = []
            for w, ws, we in words:
                if ws >= s and we <= e:
                    heard.append(w)
                elif ws < e and we > s:  # cut by the edge: a fragment of the word
                    heard.append(w[: max(1, len(w) // 2)].lower() + "-")
            out.append(" ".join(heard))
        return out

    return decode


def test_plan_chunks_cover_the_audio_with_overlap():
    p = POLICIES["salm"]
    assert plan_chunks(35.0, p) == [(0.0, 35.0)]
    spans = plan_chunks(101.3, p)
    assert spans[0][0] == 0.0 and spans[-1][1] == 101.3
    assert all(e - s == pytest.approx(30.0) for s, e in spans)
    assert all(a[1] - b[0] >= 10.0 - 1e-9 for a, b in zip(spans, spans[1:]))  # every boundary overlaps >= 10 s
    with pytest.raises(ValueError):
        ChunkPolicy(40, 30, 30)


def test_long_form_merge_recovers_the_known_text(long_recording):
    from medasr.transcribe import transcribe_rows

    path, words = long_recording
    duration = sf.info(path).duration
    assert duration > 90
    policy = POLICIES["salm"]
    res = transcribe_rows([{"audio_filepath": str(path)}], oracle_decoder(path, words, policy), policy, batch_size=3)[0]
    assert len(res.chunks) == len(plan_chunks(duration, policy)) >= 4
    # every chunk edge cut a word into a fragment, and the merge took each word from the chunk that heard it whole
    assert any(c["text"].split()[-1].endswith("-") for c in res.chunks[:-1])
    assert res.text == " ".join(w for w, _, _ in words)
    assert [b["rule"] for b in res.boundaries] == ["words"] * (len(res.chunks) - 1)


def test_merge_falls_back_to_time_when_no_words_match():
    kept, bounds = merge_chunk_texts([(0, 30, "a b c d e f"), (20, 50, "u v w x y z")])
    # 6 words in 30 s → ~2 words in the 10 s overlap: each side gives up the half of them beyond the middle
    assert kept == [["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"]]
    assert bounds[0].rule == "time"


def _srt_cues(text):
    cues = []
    for block in text.strip().split("\n\n"):
        n, times, *lines = block.split("\n")
        a, b = (sum(float(x) * m for x, m in zip(re.split("[:,]", t)[:3], (3600, 60, 1))) + int(t[-3:]) / 1000
                for t in times.split(" --> "))
        cues.append((int(n), a, b, " ".join(lines)))
    return cues


def test_cli_transcribe_salm_export_long_form(tiny_run, long_recording, tmp_path):
    from medasr.models.salm import transcribe_arrays
    from medasr.families.salm import load_adapted

    _, run_dir, _ = tiny_run
    path, _ = long_recording
    adapter = run_dir / "canary-qwen-medical-lora"
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["transcribe", "--model", str(adapter), str(path), "--out", str(out),
                                   "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    j = json.loads((out / "consultation.json").read_text())
    duration = sf.info(path).duration
    assert [(c["start"], c["end"]) for c in j["chunks"]] == plan_chunks(duration, POLICIES["salm"])
    assert j["chunking"] == {"max_single_s": 40.0, "chunk_s": 30.0, "overlap_s": 10.0}
    assert all(c["decode_s"] > 0 for c in j["chunks"])
    # each chunk's text is what the model says for that span on its own
    model, meta = load_adapted(adapter)
    spans = [read_audio(str(path), start_s=c["start"], end_s=c["end"]) for c in j["chunks"]]
    assert [c["text"] for c in j["chunks"]] == transcribe_arrays(model, spans, meta["prompt"], 16, 12)
    assert (out / "consultation.txt").read_text().strip() == j["text"]
    cues = _srt_cues((out / "consultation.srt").read_text())
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    assert all(a < b <= duration + 1e-3 for _, a, b, _ in cues) and all(x[2] <= y[1] + 1e-3 for x, y in zip(cues, cues[1:]))
    assert " ".join(c[3] for c in cues) == j["text"]
    manifest = [json.loads(x) for x in (out / "transcripts.json").read_text().splitlines()]
    # the prompt each file was decoded with is recorded (no `source`: the export's default prompt)
    assert manifest == [{"audio_filepath": str(path), "context": "Transcribe the following:", "pred_text": j["text"],
                         "duration": j["duration"]}]


def test_cli_transcribe_nemo_folder_and_manifest(tiny_parakeet_run, long_recording, tmp_path):
    from nemo.collections.asr.models import ASRModel

    from medasr.data.manifest import read_manifest, write_manifest
    from medasr.models.asr import transcribe_arrays

    _, run_dir, _ = tiny_parakeet_run
    path, _ = long_recording
    rows = read_manifest(run_dir / "data/test.json")[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "consultation.wav").symlink_to(path)
    manifest = tmp_path / "rows.json"
    write_manifest(manifest, rows)
    out = tmp_path / "out"
    nemo = run_dir / "adapted_model.nemo"
    res = CliRunner().invoke(app, ["transcribe", "--model", str(nemo), str(folder), str(manifest), "--out", str(out),
                                   "--format", "json,txt", "--max-single-s", "40", "--chunk-s", "30", "--overlap-s", "10"])
    assert res.exit_code == 0, res.output
    got = read_manifest(out / "transcripts.json", required=("audio_filepath", "pred_text"))
    assert [r["audio_filepath"] for r in got] == [str(folder / "consultation.wav")] + [r["audio_filepath"] for r in rows]
    assert [r["text"] for r in got[1:]] == [r["text"] for r in rows]  # manifest fields kept: ready for `medasr score`
    long_json = json.loads((out / "consultation.json").read_text())
    assert len(long_json["chunks"]) == len(plan_chunks(sf.info(path).duration, ChunkPolicy(40, 30, 10)))
    assert not (out / "consultation.srt").exists()  # only the formats asked for
    model = ASRModel.restore_from(str(nemo), map_location="cpu")
    short = [read_audio(r["audio_filepath"]) for r in rows]
    assert [r["pred_text"] for r in got[1:]] == transcribe_arrays(model, short, 16)
    bad = CliRunner().invoke(app, ["transcribe", "--model", str(nemo), str(tmp_path / "missing.wav")])
    assert bad.exit_code == 2 and "audio not found" in bad.output
    bad = CliRunner().invoke(app, ["transcribe", "--model", str(nemo), str(path), "--out", str(out), "--format", "docx"])
    assert bad.exit_code == 2 and "docx" in bad.output
