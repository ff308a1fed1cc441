"""S3 sync against a real S3 HTTP endpoint on loopback (moto server): idempotence, verification, resume, restore."""

import hashlib
import json
import os

import boto3
import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.ops.storage import STATE, StorageError, files_to_sync, restore, sync_up


def _run_dir(tmp_path):
    rd = tmp_path / "run"
    (rd / "train/checkpoints").mkdir(parents=True)
    (rd / "data/audio/train").mkdir(parents=True)
    (rd / "train/wandb").mkdir()
    (rd / "train/checkpoints/last.ckpt").write_bytes(os.urandom(11 * 1024 * 1024 + 123))  # multipart at 5 MiB parts
    (rd / "train/checkpoints/step000010.ckpt.partial").write_bytes(b"half a save")
    (rd / "train/DONE").write_text('{"global_step": 10, "max_steps": 10}')
    (rd / "data/train.json").write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "x"}\n')
    (rd / "data/audio/train/a.wav").write_bytes(b"RIFF....")
    (rd / "train/wandb/run.wandb").write_bytes(b"w")
    return rd


def test_files_selected(tmp_path):
    rd = _run_dir(tmp_path)
    rels = {p.relative_to(rd).as_posix() for p in files_to_sync(rd)}
    assert rels == {"train/checkpoints/last.ckpt", "train/DONE", "data/train.json"}
    assert "data/audio/train/a.wav" in {p.relative_to(rd).as_posix() for p in files_to_sync(rd, include_audio=True)}


def test_sync_idempotent_verified_and_restorable(s3_server, tmp_path):
    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/one"
    r1 = sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert sorted(r1.uploaded) == ["runs/one/data/train.json", "runs/one/train/DONE", "runs/one/train/checkpoints/last.ckpt"]
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket="medasr-test", Key="runs/one/train/checkpoints/last.ckpt")
    local = (rd / "train/checkpoints/last.ckpt").read_bytes()
    assert head["ContentLength"] == len(local) and head["ETag"].strip('"').endswith("-3")  # 3 parts
    assert head["Metadata"]["medasr-md5"] == hashlib.md5(local).hexdigest()
    r2 = sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert r2.uploaded == [] and len(r2.skipped) == 3 and r2.bytes_uploaded == 0  # idempotent
    (rd / "train/DONE").write_text('{"global_step": 20, "max_steps": 20}')
    assert sync_up(rd, uri).uploaded == ["runs/one/train/DONE"]  # only what changed
    fresh = tmp_path / "fresh"
    pulled = restore(uri, fresh)
    assert sorted(pulled) == ["data/train.json", "train/DONE", "train/checkpoints/last.ckpt"]
    assert (fresh / "train/checkpoints/last.ckpt").read_bytes() == local
    assert restore(uri, fresh) == []  # nothing left to pull


def test_interrupted_upload_resumes(s3_server, tmp_path):
    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/two"
    with pytest.raises(StorageError, match="injected interruption after 1 part"):
        sync_up(rd, uri, part_size=5 * 1024 * 1024, only=[rd / "train/checkpoints/last.ckpt"], fail_after_parts=1)
    state = json.loads((rd / STATE).read_text())
    assert "runs/two/train/checkpoints/last.ckpt" in state  # the upload id survives the crash
    r = sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert [n for k, n in r.parts_uploaded if k.endswith("last.ckpt")] == [2, 3]  # part 1 was not sent again
    obj = boto3.client("s3").get_object(Bucket="medasr-test", Key="runs/two/train/checkpoints/last.ckpt")["Body"].read()
    assert obj == (rd / "train/checkpoints/last.ckpt").read_bytes()
    assert json.loads((rd / STATE).read_text()) == {}


def test_cli_sync_and_restore(s3_server, tmp_path):
    rd = _run_dir(tmp_path)
    r = CliRunner()
    res = r.invoke(app, ["sync", "--run-dir", str(rd), "--to", "s3://medasr-test/cli"])
    assert res.exit_code == 0 and "uploaded 3" in res.output
    res = r.invoke(app, ["restore", "--from", "s3://medasr-test/cli", "--run-dir", str(tmp_path / "back")])
    assert res.exit_code == 0 and "restored 3" in res.output
    assert r.invoke(app, ["sync", "--run-dir", str(rd), "--to", "not-a-uri"]).exit_code == 2


@pytest.mark.slow
def test_training_syncs_checkpoints_to_s3(s3_server, tiny_data_and_base):
    from medasr.config import load_config
    from medasr.train.trainer import train

    rd = tiny_data_and_base
    cfg = load_config("tiny", ["train.max_steps=6", "train.ckpt_every_n_steps=2", "train.val_every_n_steps=3",
                               "ops.s3_uri=s3://medasr-test/train-run"])
    assert train(cfg, rd, rd / "model/base")["global_step"] == 6
    objs = {o["Key"]: o["Size"] for o in boto3.client("s3").list_objects_v2(Bucket="medasr-test", Prefix="train-run/")["Contents"]}
    for name in ("step000002.ckpt", "step000004.ckpt", "step000006.ckpt", "last.ckpt"):
        key = f"train-run/train/checkpoints/{name}"
        assert objs[key] == (rd / "train/checkpoints" / name).stat().st_size
    assert "train-run/train/trainable_params.json" in objs and not any("/data/audio/" in k for k in objs)


def test_supervisor_restores_empty_run_dir_and_logs_read_s3(s3_server, tmp_path):
    from medasr.ops.supervisor import Supervisor

    rd = _run_dir(tmp_path)
    (rd / "supervisor.json").write_text('{"state": "running", "restarts": 2}')
    sync_up(rd, "s3://medasr-test/pod-run")
    fresh = tmp_path / "fresh-pod"  # a new pod: the volume is empty
    sup = Supervisor("tiny", fresh, ["ops.s3_uri=s3://medasr-test/pod-run"])
    sup._maybe_restore()
    assert (fresh / "train/checkpoints/last.ckpt").read_bytes() == (rd / "train/checkpoints/last.ckpt").read_bytes()
    res = CliRunner().invoke(app, ["runpod", "logs", "--s3", "s3://medasr-test/pod-run"])
    assert res.exit_code == 0 and '"restarts": 2' in res.output and "train/progress.json" in res.output
