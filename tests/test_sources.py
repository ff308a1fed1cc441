"""Each source reader on a small fixture in its upstream layout, selection, contamination, preflight."""

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from medasr.config import load_config
from medasr.data.build import build
from medasr.flywheel import build_data
from medasr.data.manifest import read_manifest, write_manifest
from medasr.data.split import speakers, split_train_val
from medasr.data.sources import SourceError, load_source
from medasr.data.sources.primock57 import clean_text
from medasr.data.synth import speak

SR = 16000


def _conversation(sentences, gap=0.7, tail=0.0, rate=160):
    """Speech for each sentence separated by silence; returns audio and [(start, end)] of each sentence."""
    parts, bounds, t = [], [], 0.5
    parts.append(np.zeros(int(0.5 * SR), np.float32))
    for s in sentences:
        a = speak(s, "en-us", rate)
        bounds.append((round(t, 3), round(t + len(a) / SR, 3)))
        parts += [a, np.zeros(int(gap * SR), np.float32)]
        t += len(a) / SR + gap
    parts.append(np.zeros(int(tail * SR), np.float32))
    return np.concatenate(parts), bounds


def _lag_ms(a, b):
    n = min(len(a), len(b))
    c = np.correlate(a[:n], b[:n], mode="full")
    return abs(int(np.argmax(c)) - (n - 1)) / SR * 1000


@pytest.fixture(scope="module")
def osce_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("osce")
    (root / "audio").mkdir()
    convs = {
        "RES0001": ["START METFORMIN TWICE DAILY", "I HAVE HAD A COUGH FOR A WEEK", "ANY CHEST PAIN"],
        "GAS0002": ["THE PAIN IS IN MY ABDOMEN", "I TOOK SOME IBUPROFEN"],
        "CAR0003": ["DO YOU HAVE HEART FAILURE", "I TOOK SOME IBUPROFEN"],
    }
    truth = {}
    for cid, sents in convs.items():
        audio, bounds = _conversation(sents, tail=45.0 if cid == "CAR0003" else 0.0)
        wav = root / f"{cid}.wav"
        sf.write(wav, audio, SR)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-b:a", "128k", str(root / "audio" / f"{cid}.mp3")], check=True)
        wav.unlink()
        truth[cid] = (audio, bounds)
    def line(cid, i):  # the real format, as Lhotse's recipe (lhotse/recipes/medical.py::_parse_utterance) parses it
        s, e = truth[cid][1][i]
        return f"audio/{cid}.mp3[{s},{e}]\t{convs[cid][i]}"
    (root / "medical_train.info").write_text("\n".join([line("RES0001", 0), line("RES0001", 1), line("RES0001", 2),
                                                        line("RES0001", 1)]) + "\n")  # last: duplicate segment
    (root / "medical_dev.info").write_text("\n".join([line("GAS0002", 0), line("GAS0002", 1)]) + "\n")
    long_end = round(len(truth["CAR0003"][0]) / SR - 0.1, 2)
    (root / "medical_test.info").write_text("\n".join([line("CAR0003", 0), line("CAR0003", 1),
                                                       f"audio/CAR0003.mp3[0.0,{long_end}]\tTHE WHOLE THING"]) + "\n")
    with tarfile.open(root / "audio.tar.gz", "w:gz") as t:  # upstream ships the MP3s as a tarball
        t.add(root / "audio", arcname="audio")
    for f in (root / "audio").iterdir():
        f.unlink()
    (root / "audio").rmdir()
    return root, truth


def test_osce_reader(osce_root, tmp_path):
    root, truth = osce_root
    res = load_source("osce", tmp_path, local=root)
    assert {k: len(v) for k, v in res.splits.items()} == {"train": 3, "val": 2, "test": 2}
    assert res.dropped == {"duplicate line in .info": 1, "longer than 40 s (rejected)": 1}
    r0 = res.splits["train"][0]
    # lower-cased upstream text (nothing invented); the preset's OSCE prompt names that style
    assert r0["text"] == "start metformin twice daily" and r0["text_raw"] == "START METFORMIN TWICE DAILY"
    assert r0["speaker"] == "RES0001" and r0["terms"] == [{"term": "metformin", "entity_category": "drug"}]
    assert res.splits["test"][0]["terms"] == [{"term": "heart failure", "entity_category": "condition"}]
    for row, (s, e) in zip(res.splits["train"], truth["RES0001"][1]):
        assert row["duration"] == pytest.approx(e - s, abs=0.01)  # boundaries to ±10 ms
        cut, _ = sf.read(row["audio_filepath"], dtype="float32")
        ref = truth["RES0001"][0][int(s * SR) : int(e * SR)]
        assert _lag_ms(cut, ref) <= 10  # the right audio, not shifted (MP3 decoder delay included)
    assert "offset" not in r0 and (r0["source_start"], r0["source_end"]) == pytest.approx(truth["RES0001"][1][0], abs=0.01)


def test_osce_rejects_a_line_lhotse_cannot_parse(osce_root, tmp_path):
    import shutil

    root = tmp_path / "osce"
    shutil.copytree(osce_root[0], root)
    info = root / "medical_dev.info"
    good = info.read_text().splitlines()
    info.write_text(good[0] + "\n" + good[1].replace(".mp3[", ".mp3,[") + "\n")  # the format FACTS.md once claimed
    with pytest.raises(SourceError, match=r"medical_dev.info:2: not of the form 'audio/NAME.mp3\[start,end\]<TAB>TEXT'"):
        load_source("osce", tmp_path / "out", local=root)


def test_osce_build_selection_and_contamination(osce_root, tmp_path):
    root, _ = osce_root
    cfg = load_config("tiny", ["data.source=osce", f"data.local={root}", "data.max_train=2", "data.max_val=1"])
    rep = build(cfg, tmp_path)
    train, val, test = (read_manifest(tmp_path / f"data/{s}.json") for s in ("train", "val", "test"))
    assert (len(val), len(test)) == (1, 2)
    assert len(train) <= 2 and rep["selection"]["speaker_overlap"] == {"train&val": 0, "train&test": 0}
    assert not speakers(train) & speakers(val) and not speakers(train) & speakers(test)
    sel = json.loads((tmp_path / "data/selection.json").read_text())
    assert sel["seed"] == cfg.data.seed and sel["ids"]["train"] == [r["id"] for r in train]
    assert rep["reader"]["dropped"]["longer than 40 s (rejected)"] == 1
    assert rep["contamination"]["train_rows_in"] == len(train) + rep["contamination"]["dropped"]
    assert "skipped" not in build_data(cfg, tmp_path)  # no record yet: the build stage builds and records it
    assert build_data(cfg, tmp_path)["skipped"] is True


def test_contamination_drops_exact_and_ngram():
    from medasr.data.contamination import decontaminate

    held = [{"text": "Okay so take the tablets twice a day with food please", "source": "osce"}]
    train = [
        {"text": "okay, so take the tablets twice a day with food please!", "source": "osce"},   # exact after normalising
        {"text": "and then take the tablets twice a day with food after that", "source": "osce"},  # shares an 8-gram
        {"text": "take the tablets once a day", "source": "osce"},                                 # fine
        {"text": "so take the tablets twice a day with food or not", "source": "synthetic-espeak"},  # template overlap: kept
    ]
    kept, rep = decontaminate(train, held, n=8)
    assert [r["text"] for r in kept] == [train[2]["text"], train[3]["text"]]
    assert rep["by_source"]["osce"] == {"dropped_exact": 1, "dropped_8gram": 1, "kept": 1}
    assert rep["by_source"]["synthetic-espeak"] == {"template_overlap_kept": 1, "kept": 1}


def test_primock57_reader_on_the_real_textgrids(tmp_path):
    """The real TextGrids of two consultations (vendored from babylonhealth/primock57, CC BY 4.0) with synthetic speech
    in each interval. Upstream counts (all tags): day3_consultation06 doctor 29 intervals / 2 tag-only, patient 25 / 3;
    day1_consultation07 doctor 95 / 5, patient 80 / 5 — 15 tag-only, 12 of them <INAUDIBLE_SPEECH/> or <UNIN/>."""
    from medasr.rehearse.datasets import primock57_replica

    root = primock57_replica(tmp_path / "primock57", ["day3_consultation06", "day1_consultation07"])
    res = load_source("primock57", tmp_path / "out", local=root)
    rows = res.splits["test"]
    assert list(res.splits) == ["test"]
    assert res.dropped["only transcriber tags / empty"] == 15
    assert len(rows) + sum(res.dropped.values()) == 29 + 25 + 95 + 80
    assert not [r["text"] for r in rows if "<" in r["text"] or ">" in r["text"]]
    assert any("<INAUDIBLE_SPEECH/>" in r["text_raw"] for r in rows)  # cleaned, not dropped, where words remain
    assert {r["role"] for r in rows} == {"doctor", "patient"}
    assert {r["consultation"] for r in rows if r["leaderboard_excluded"]} == {"day1_consultation07"}
    r0 = rows[0]
    assert "offset" not in r0 and r0["source_end"] > r0["source_start"]
    assert r0["duration"] == pytest.approx(r0["source_end"] - r0["source_start"], abs=0.01)
    assert clean_text("<UNSURE>Come</UNSURE> and go <UNIN/> <INAUDIBLE_SPEECH/>") == "Come and go"


def test_primock57_consultations_are_the_leaderboards_long_form_unit(tmp_path):
    """One row per consultation, the two channels mixed (sox -m: each scaled by 1/2) up to the end of
    the last annotated utterance, the reference byte-identical to the leaderboard's own (Omi-Health/medical-STT-eval
    c0e6c11 data/cleaned_transcripts/*_pure_text.txt, MIT, vendored in tests/data/omi_medical_stt_eval), and its two
    excluded consultations left out and counted."""
    import shutil

    from medasr.data.sources.primock57 import consultation_reference
    from medasr.evaluate.metrics import compute_metrics
    from medasr.rehearse.datasets import PRIMOCK57_SAMPLE, primock57_replica

    root = primock57_replica(tmp_path / "primock57", ["day3_consultation06"])
    for role in ("doctor", "patient"):  # an excluded consultation: transcripts only, it must never be opened
        shutil.copy(PRIMOCK57_SAMPLE / f"day1_consultation07_{role}.TextGrid", root / "transcripts")
    omi = Path(__file__).parent / "data" / "omi_medical_stt_eval"
    for c in ("day1_consultation01", "day1_consultation07", "day3_consultation06"):
        ref, _ = consultation_reference(*(PRIMOCK57_SAMPLE / f"{c}_{r}.TextGrid" for r in ("doctor", "patient")))
        assert ref == (omi / f"{c}_pure_text.txt").read_text(), c
    res = load_source("primock57-consultations", tmp_path / "out", local=root)
    [row] = res.splits["test"]
    assert res.dropped["excluded by the leaderboard"] == 1
    assert row["text"] == (omi / "day3_consultation06_pure_text.txt").read_text()
    assert row["duration"] == pytest.approx(225.7304, abs=1e-3) and row["unit"] == "consultation"
    mixed, sr = sf.read(row["audio_filepath"], dtype="float32")
    doctor, patient = (sf.read(root / "audio" / f"day3_consultation06_{r}.wav", dtype="float32")[0][: len(mixed)]
                       for r in ("doctor", "patient"))
    assert sr == 16000 and np.abs(mixed - (doctor + patient) / 2).max() < 2 / 32767
    m = compute_metrics([row | {"pred_text": row["text"]}, row | {"id": "b", "pred_text": ""}], n_boot=10)
    assert m["unit"] == "consultation" and m["wer_mean_utt"] == 0.5  # the leaderboard's WER: the mean over files


def test_primock57_refuses_git_lfs_pointers(tmp_path, monkeypatch):
    from medasr.rehearse.datasets import primock57_replica

    root = primock57_replica(tmp_path / "primock57", ["day3_consultation06"])
    wav = root / "audio" / "day3_consultation06_doctor.wav"  # what a clone without `git lfs pull` holds
    wav.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 7315244\n")
    with pytest.raises(SourceError, match=r"Git LFS pointer, not audio: run `git lfs pull`"):
        load_source("primock57", tmp_path / "out", local=root)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # neither git nor git-lfs
    with pytest.raises(SourceError, match=r"`git lfs` is not installed: run scripts/setup.sh"):
        load_source("primock57", tmp_path / "out2")


def test_hf_parquet_reader(tmp_path):
    root = tmp_path / "hfset" / "data"
    root.mkdir(parents=True)
    for split, texts in (("train", ["my chest hurts", "I take lisinopril", ""]), ("test", ["my knee is sore"])):
        rows = []
        for i, t in enumerate(texts):
            buf = io.BytesIO()
            sf.write(buf, speak(t or "silence", "en-gb", 170), SR, format="WAV")
            rows.append({"audio": {"bytes": buf.getvalue(), "path": f"{i}.wav"}, "sentence": t, "spk": f"s{i}"})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}-00000-of-00001.parquet")
    res = load_source("hf:someone/medical-set", tmp_path / "out", local=root.parent, speaker_column="spk")
    assert {k: len(v) for k, v in res.splits.items()} == {"test": 1, "train": 2}
    assert res.dropped == {"empty text": 1}
    assert res.splits["train"][1]["terms"][0]["term"] == "lisinopril" and res.splits["train"][1]["speaker"] == "s1"
    with pytest.raises(SourceError, match="--text-column"):
        load_source("hf:someone/medical-set", tmp_path / "out2", local=root.parent, text_column="nope")


def test_folder_adapter_csv(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    sf.write(root / "a.wav", speak("start warfarin tonight", "en-us", 150), SR)
    sf.write(root / "b.flac", speak("check the troponin", "en-us", 150), SR)
    (root / "transcripts.csv").write_text("audio,text,speaker\na.wav,Start warfarin tonight.,dr1\nb.flac,Check the troponin.,dr2\nmissing.wav,x,dr3\n")
    res = load_source(f"folder:{root}", tmp_path / "out")
    assert len(res.splits["train"]) == 2 and res.dropped == {"audio file missing": 1}
    assert sf.info(res.splits["train"][1]["audio_filepath"]).samplerate == SR


def test_folder_splits_by_any_usual_name_and_long_recordings_say_what_to_do(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    words, bounds = _conversation(["start warfarin tonight", "check the troponin"], tail=41.0)  # a 45 s recording
    sf.write(root / "long.wav", words, SR)
    sf.write(root / "a.wav", speak("start warfarin tonight", "en-us", 150), SR)
    (root / "transcripts.csv").write_text("audio,text,speaker,split\na.wav,Start warfarin tonight.,dr1,validation\n"
                                          "long.wav,Start warfarin tonight. Check the troponin.,dr2,Dev\n")
    res = load_source(f"folder:{root}", tmp_path / "out")
    assert {k: len(v) for k, v in res.splits.items()} == {"val": 1}  # 'validation' was dropped silently before
    assert res.dropped == {"longer than 40 s (rejected)": 1} and "start and end columns" in res.notes[0]
    (s0, e0), (s1, e1) = bounds
    (root / "transcripts.csv").write_text(f"audio,text,speaker,split,start,end\nlong.wav,Start warfarin tonight.,dr2,dev,{s0},{e0}\n"
                                          f"long.wav,Check the troponin.,dr2,test,{s1},{e1}\n")
    res = load_source(f"folder:{root}", tmp_path / "out2")
    assert [r["text"] for r in res.splits["val"] + res.splits["test"]] == ["Start warfarin tonight.", "Check the troponin."]
    assert res.splits["test"][0]["duration"] == pytest.approx(e1 - s1, abs=0.01) and not res.notes
    (root / "transcripts.csv").write_text("audio,text,split\nlong.wav,Whole thing.,train\n")
    with pytest.raises(SourceError, match="no usable rows.*longer than 40 s.*start and end columns"):
        load_source(f"folder:{root}", tmp_path / "out3")
    (root / "transcripts.csv").write_text("audio,text,split\na.wav,Hi.,holdout\n")
    with pytest.raises(SourceError, match=r"transcripts.csv:2: split 'holdout' is not one of"):
        load_source(f"folder:{root}", tmp_path / "out4")


def test_download_failure_names_dataset_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match=r"osce: could not download yfyeung/medical.*--local PATH"):
        load_source("osce", tmp_path)


def test_split_train_val_is_speaker_disjoint():
    rows = [{"id": f"r{i}", "speaker": f"spk{i % 17}", "source": "a" if i % 3 else "b", "text": "x", "duration": 1} for i in range(400)]
    train, val = split_train_val(rows, max_train=200, n_val=50, seed=3)
    assert len(train) == 200 and len(val) == 50
    assert not speakers(train) & speakers(val)
    again = split_train_val(rows, max_train=200, n_val=50, seed=3)
    assert [r["id"] for r in again[0]] == [r["id"] for r in train]


def test_flywheel_validation_stops_on_bad_rows(tiny_data_and_base):
    from medasr.flywheel import ManifestValidationError, validate_manifests

    run_dir = tiny_data_and_base
    rows = read_manifest(run_dir / "data/train.json")
    rows[3]["text"] = "  "
    write_manifest(run_dir / "data/train.json", rows)
    cfg = load_config("tiny")
    with pytest.raises(ManifestValidationError, match=r"line 4: empty or whitespace-only text"):
        validate_manifests(cfg, run_dir)
    cfg = load_config("tiny", ["data.skip_bad=true"])
    out = validate_manifests(cfg, run_dir)
    assert out["train"] == {"accepted": len(rows) - 1, "rejected": 1, "report": str(run_dir / "data/preflight/train.json")}
    assert len(read_manifest(run_dir / "data/train.json")) == len(rows) - 1
    assert len(read_manifest(run_dir / "data/train.with_rejected.json")) == len(rows)


def test_united_syn_med_reader(tmp_path):
    root = tmp_path / "usm"
    (root / "data" / "audio").mkdir(parents=True)
    for split, items in (("train", [("a1.mp3", "Take amoxicillin three times a day"), ("a2.mp3", "Apixaban five milligrams")]),
                         ("test", [("t1.mp3", "Continue furosemide"), ("gone.mp3", "not in the tarball")])):
        with (root / "data" / f"{split}.csv").open("w") as f:
            f.write("file_name,transcription\n" + "".join(f"{n},{t}\n" for n, t in items))
        stage = tmp_path / f"stage-{split}"
        stage.mkdir()
        for n, t in items:
            if n == "gone.mp3":
                continue
            sf.write(stage / "x.wav", speak(t, "en-us", 160), SR)
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(stage / "x.wav"), str(stage / n)], check=True)
        with tarfile.open(root / "data" / "audio" / f"{split}.tar.gz", "w:gz") as t:
            for n, _ in items:
                if (stage / n).exists():
                    t.add(stage / n, arcname=f"{split}/{n}")
    res = load_source("united-syn-med", tmp_path / "out", local=root)
    assert {k: len(v) for k, v in res.splits.items()} == {"train": 2, "test": 1}
    assert res.dropped == {"listed in CSV but missing from the tarball": 1}
    assert res.splits["train"][0]["terms"] == [{"term": "amoxicillin", "entity_category": "drug"}]
    assert res.splits["train"][0]["duration"] > 1.0


def test_mix_build(osce_root, tmp_path):
    root, _ = osce_root
    mine = tmp_path / "mine"
    mine.mkdir()
    sf.write(mine / "a.wav", speak("the patient takes warfarin", "en-gb", 150), SR)
    (mine / "transcripts.csv").write_text("audio,text,speaker\na.wav,The patient takes warfarin.,gp1\n")
    cfg = load_config("tiny", ["data.source=mix"])

    from medasr.config import MixItem

    cfg.data.mix = [MixItem("osce", str(root), ["train", "val"]), MixItem(f"folder:{mine}", None, ["train"])]
    cfg.data.mix.append(MixItem(f"folder:{mine}", None, ["test"]))  # the same speaker as a test source
    rep = build(cfg, tmp_path / "run")
    train, val, test = (read_manifest(tmp_path / f"run/data/{s}.json") for s in ("train", "val", "test"))
    assert {r["source"] for r in train} == {"osce"}  # gp1 is a test speaker, so its training row was removed
    assert rep["dropped_train_rows_of_held_out_speakers"] == 1
    assert len(val) == 2 and [r["source"] for r in test] == ["folder:mine"]
    assert [c["source"] for c in rep["components"]] == ["osce", f"folder:{mine}", f"folder:{mine}"]


def test_real_source_rows_load_through_nemos_reader(osce_root, tmp_path):
    """NeMo's Lhotse reader applies a row's `offset` to its audio file. Rows of cut segments must not carry the
    recording position as `offset` (it failed with "Recording's duration 2.0s is smaller than the requested offset")."""
    from medasr.data.validate import nemo_reader_check, validate_manifest
    from medasr.rehearse.datasets import primock57_replica

    rows = load_source("osce", tmp_path / "o", local=osce_root[0]).splits["train"]
    rows += load_source("primock57", tmp_path / "p",
                        local=primock57_replica(tmp_path / "pm", ["day3_consultation06"])).splits["test"]
    write_manifest(tmp_path / "m.json", rows)
    assert nemo_reader_check(tmp_path / "m.json") == len(rows) > 40
    assert validate_manifest(tmp_path / "m.json").ok
    late = [rows[-1] | {"offset": 120.0}]  # what the readers used to write
    write_manifest(tmp_path / "late.json", late)
    with pytest.raises(ValueError, match=r"late.json:1: NeMo's reader cannot load this row"):
        nemo_reader_check(tmp_path / "late.json")
    assert "runs past the end of the file" in validate_manifest(tmp_path / "late.json").rejected[0]["reason"]
