"""S3 sync against S3 on loopback that verifies signatures and checksums as S3 does (tests/s3_standin.py):
idempotence, verification by S3's own checksum, resume, restore, markers."""

import base64
import hashlib
import json
import os

import boto3
import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.ops import storage
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
    head = s3.head_object(Bucket="medasr-test", Key="runs/one/train/checkpoints/last.ckpt", ChecksumMode="ENABLED")
    local = (rd / "train/checkpoints/last.ckpt").read_bytes()
    assert head["ContentLength"] == len(local) and head["ETag"].strip('"').endswith("-3")  # 3 parts
    # S3's composite checksum: SHA-256 over the parts' SHA-256 digests, "-3" (computed here independently)
    mib5 = 5 * 1024 * 1024
    digests = b"".join(hashlib.sha256(local[i:i + mib5]).digest() for i in range(0, len(local), mib5))
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(digests).digest()).decode() + "-3"
    r2 = sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert r2.uploaded == [] and len(r2.skipped) == 3 and r2.bytes_uploaded == 0  # idempotent
    (rd / "train/DONE").write_text('{"global_step": 20, "max_steps": 20}')
    assert sync_up(rd, uri, part_size=5 * 1024 * 1024).uploaded == ["runs/one/train/DONE"]  # only what changed
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
    assert "runs/two/train/checkpoints/last.ckpt" in state["uploads"]  # the upload id survives the crash
    r = sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert [n for k, n in r.parts_uploaded if k.endswith("last.ckpt")] == [2, 3]  # part 1 was not sent again
    obj = boto3.client("s3").get_object(Bucket="medasr-test", Key="runs/two/train/checkpoints/last.ckpt")["Body"].read()
    assert obj == (rd / "train/checkpoints/last.ckpt").read_bytes()
    assert json.loads((rd / STATE).read_text())["uploads"] == {}


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


def test_a_file_replaced_during_upload_is_refused_by_s3_not_reported_verified(s3_server, tmp_path, monkeypatch):
    """Verification re-read the MD5 metadata the client itself wrote, so a file replaced between
    hashing and upload was reported verified, and restore later failed. Now S3 checks the body against the SHA-256
    computed before the upload (BadDigest), for a single PUT and for each part of a multipart upload."""
    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/replaced"
    real = storage.s3_checksum
    for rel in ("train/DONE", "train/checkpoints/last.ckpt"):
        path = rd / rel

        def hashed_then_replaced(p, part_size, _path=path):
            out = real(p, part_size)
            if p == _path:  # the trainer replaces the file right after it was hashed
                data = bytearray(_path.read_bytes())
                data[0] ^= 0xFF
                _path.write_bytes(bytes(data))
            return out

        monkeypatch.setattr(storage, "s3_checksum", hashed_then_replaced)
        with pytest.raises(StorageError, match="changed during the upload"):
            sync_up(rd, uri, part_size=5 * 1024 * 1024, only=[path])
        monkeypatch.setattr(storage, "s3_checksum", real)
        assert sync_up(rd, uri, part_size=5 * 1024 * 1024, only=[path]).uploaded  # the next sync sends the new file
        back = tmp_path / "back" / rel.replace("/", "_")
        assert restore(uri, back.parent / rel.split("/")[0]) is not None
    fresh = tmp_path / "fresh"
    restore(uri, fresh)
    for rel in ("train/DONE", "train/checkpoints/last.ckpt"):
        assert (fresh / rel).read_bytes() == (rd / rel).read_bytes()


def test_restore_checks_downloads_against_s3s_checksum(s3_server, tmp_path):
    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/corrupt"
    sync_up(rd, uri, part_size=5 * 1024 * 1024)
    s3_server.checksums["medasr-test/runs/corrupt/train/DONE"] = ("AAAA" + "A" * 40, "FULL_OBJECT")  # S3 says other
    with pytest.raises(StorageError, match="checksum mismatch"):
        restore(uri, tmp_path / "fresh")
    assert not (tmp_path / "fresh/train/DONE").exists() and not list((tmp_path / "fresh").rglob("*.partial"))


def test_signed_requests_are_checked_and_temporary_credentials_work(s3_server, tmp_path):
    """The stand-in recomputes every signature with botocore's signer: the wrong secret or a missing session token is
    refused as S3 refuses it, so a pass means what a client sends would be accepted by S3."""
    import botocore

    rd = _run_dir(tmp_path)
    assert sync_up(rd, "s3://medasr-test/runs/signed", only=[rd / "train/DONE"]).uploaded
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": s3_server.token}
    for bad, code in (({"aws_secret_access_key": "wrong"}, "SignatureDoesNotMatch"),
                      ({"aws_session_token": None}, "InvalidToken")):
        c = boto3.session.Session(**(creds | bad)).client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
        with pytest.raises(botocore.exceptions.ClientError, match=code):
            c.put_object(Bucket="medasr-test", Key="runs/signed/x", Body=b"x")


def test_stdlib_put_is_accepted_by_s3s_signature_check(s3_server, tmp_path, monkeypatch):
    """`run.sh` signed its FAILED push with curl, which S3 would refuse (no x-amz-content-sha256, an
    empty payload hash, no session token) while curl exited 0. medasr.ops.s3put (standard library only: it runs
    before any venv exists) is checked here against botocore's signer, with temporary credentials, and fails loudly."""
    import subprocess
    import sys

    from medasr.ops import s3put

    marker = tmp_path / "FAILED"
    marker.write_text('{"stage": "setup", "reason": "quotes \\" and ünïcode"}')
    env = os.environ.copy()
    r = subprocess.run([sys.executable, "-m", "medasr.ops.s3put", str(marker), "s3://medasr-test/runs/put/FAILED"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    obj = boto3.client("s3").get_object(Bucket="medasr-test", Key="runs/put/FAILED", ChecksumMode="ENABLED")
    assert obj["Body"].read() == marker.read_bytes()
    assert obj["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(marker.read_bytes()).digest()).decode()
    r = subprocess.run([sys.executable, "-m", "medasr.ops.s3put", str(marker), "s3://medasr-test/runs/put/FAILED"],
                       env=env | {"AWS_SECRET_ACCESS_KEY": "wrong"}, capture_output=True, text=True)
    assert r.returncode == 1 and "SignatureDoesNotMatch" in r.stderr and "pushed" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "medasr.ops.s3put", str(marker), "s3://medasr-test/runs/put/FAILED"],
                       env={k: v for k, v in env.items() if k != "AWS_SESSION_TOKEN"}, capture_output=True, text=True)
    assert r.returncode == 1 and "InvalidToken" in r.stderr
    s3_server.fail("PUT", "runs/put/FAILED", 503, "SlowDown", n=1)  # transient: retried
    monkeypatch.setattr(s3put.time, "sleep", lambda s: None)
    s3put.put(str(marker), "s3://medasr-test/runs/put/FAILED")
    s3_server.fail("PUT", "runs/put/FAILED", 403, "AccessDenied", n=5)  # permanent: one try, a clear error
    with pytest.raises(s3put.PutError, match="AccessDenied"):
        s3put.put(str(marker), "s3://medasr-test/runs/put/FAILED")
    s3_server.failures.clear()


def test_cleared_markers_are_deleted_on_s3(s3_server, tmp_path):
    """Sync never deletes, so a FAILED or BUDGET cleared locally stayed on S3 and the watcher
    stopped the resumed run again."""
    from medasr.ops.storage import delete_remote, remote_run_state

    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/markers"
    (rd / "FAILED").write_text('{"stage": "build", "reason": "x"}')
    sync_up(rd, uri)
    assert remote_run_state(uri, 10) == "failed"
    (rd / "FAILED").unlink()
    sync_up(rd, uri)
    assert remote_run_state(uri, 10) == "failed"  # what sync alone leaves
    delete_remote(uri, ["FAILED"])
    assert remote_run_state(uri, 10) == "running"


def test_a_checkpoint_on_s3_is_safe_only_when_current(s3_server, tmp_path):
    """"checkpoint verified on S3" ignored its age, so a pod whose checkpoint syncs had been failing for
    hours could be terminated (its volume with it). Now S3's last.ckpt must carry S3's checksum and its step
    (last.json) be within one checkpoint interval of the step the pod last reported (train/progress.json)."""
    from medasr.ops.storage import remote_checkpoint_current

    rd = _run_dir(tmp_path)
    uri = "s3://medasr-test/runs/current"
    (rd / "train/checkpoints/last.json").write_text('{"global_step": 40}')
    (rd / "train/progress.json").write_text('{"global_step": 45}')
    assert not remote_checkpoint_current(uri, 10)  # nothing on S3 yet
    sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert remote_checkpoint_current(uri, 10)
    (rd / "train/progress.json").write_text('{"global_step": 95}')  # the heartbeat got through, the checkpoints did not
    sync_up(rd, uri, only=[rd / "train/progress.json"])
    assert not remote_checkpoint_current(uri, 10)
    (rd / "train/progress.json").write_text('{"global_step": 50}')
    sync_up(rd, uri, only=[rd / "train/progress.json"])
    assert remote_checkpoint_current(uri, 10)
    boto3.client("s3").put_object(Bucket="medasr-test", Key="runs/current/train/checkpoints/last.ckpt", Body=b"x")
    assert not remote_checkpoint_current(uri, 10)  # an object S3 holds no SHA-256 for: not known whole


def test_stdlib_put_signs_aws_virtual_hosted_requests_as_botocore_does():
    """Without AWS_ENDPOINT_URL_S3 the pod talks to AWS itself, virtual-hosted style (bucket in the host name, the key
    as the path): the same signature check, offline, on that request form."""
    from medasr.ops.s3put import request_for
    from s3_standin import signature_error

    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
           "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE", "AWS_DEFAULT_REGION": "eu-west-1"}
    body = b'{"stage": "setup"}'
    req = request_for(body, "s3://my-bucket/medasr/runs/poc/FAILED", env)
    assert req.full_url == "https://my-bucket.s3.eu-west-1.amazonaws.com/medasr/runs/poc/FAILED"
    headers = {k.lower(): v for k, v in req.header_items()} | {"host": "my-bucket.s3.eu-west-1.amazonaws.com"}

    class H(dict):
        def get(self, k, d=None):
            return super().get(k.lower(), d)

    path = "/medasr/runs/poc/FAILED"
    args = ("PUT", path, H(headers), body, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert signature_error(*args, env["AWS_SESSION_TOKEN"]) is None
    assert signature_error(*args, "another-token")[1] == "InvalidToken"
    assert signature_error(*args[:5], "another secret", env["AWS_SESSION_TOKEN"])[1] == "SignatureDoesNotMatch"
    assert signature_error("PUT", path, H(headers), body + b" ", *args[4:], env["AWS_SESSION_TOKEN"])[1] == \
        "XAmzContentSHA256Mismatch"


def test_s3_never_claims_a_newer_checkpoint_than_it_holds(s3_server, tmp_path):
    """Found in review: last.json went up before last.ckpt, so a last.ckpt upload that failed (a stop's grace
    running out, a file replaced mid-upload) left S3 saying step 500 over step 100's checkpoint, and the watcher could
    terminate the volume holding step 500. The step now lives on the last.ckpt object itself."""
    from medasr.ops.storage import remote_checkpoint_current

    rd = tmp_path / "run"
    (rd / "train/checkpoints").mkdir(parents=True)
    ck = rd / "train/checkpoints/last.ckpt"
    ck.write_bytes(b"A" * 1000)
    (rd / "train/checkpoints/last.json").write_text('{"global_step": 100}')
    (rd / "train/progress.json").write_text('{"global_step": 100}')
    uri = "s3://medasr-test/runs/order"
    sync_up(rd, uri)
    assert remote_checkpoint_current(uri, 10)
    ck.write_bytes(b"B" * 1000)
    (rd / "train/checkpoints/last.json").write_text('{"global_step": 500}')
    (rd / "train/progress.json").write_text('{"global_step": 505}')
    s3_server.fail("PUT", "last.ckpt", status=403, code="AccessDenied", n=1)
    with pytest.raises(Exception):
        sync_up(rd, uri)
    sync_up(rd, uri, only=[rd / "train/checkpoints/last.json", rd / "train/progress.json"], remember=False)
    assert not remote_checkpoint_current(uri, 10)  # S3's checkpoint is step 100's, and it says so
    sync_up(rd, uri)
    assert remote_checkpoint_current(uri, 10)
    head = boto3.client("s3").head_object(Bucket="medasr-test", Key="runs/order/train/checkpoints/last.ckpt")
    assert head["Metadata"]["medasr-step"] == "500"


def test_s3_reads_done_only_once_the_whole_run_is_there(s3_server, tmp_path, monkeypatch):
    """Found in review: summary.json, train/DONE and the export went up before the checkpoints and reports, so a final
    sync that failed half-way left S3 reading "done" (the watcher then never resumed the pod to finish it)."""
    from medasr.ops.storage import remote_run_state

    rd = _run_dir(tmp_path)
    (rd / "summary.json").write_text('{"status": "done", "export_file": "adapted_model.json"}')
    (rd / "adapted_model.nemo").write_bytes(b"model")
    (rd / "adapted_model.json").write_text("{}")
    (rd / "train/val_wer.json").write_text("{}")  # sorts after train/DONE
    uri = "s3://medasr-test/runs/partial"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries of the 503 would only add back-off time
    s3_server.fail("PUT", "train/val_wer.json", 503, "SlowDown", n=10)
    with pytest.raises(Exception):
        sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert remote_run_state(uri, 10) == "running"
    s3_server.failures.clear()
    sync_up(rd, uri, part_size=5 * 1024 * 1024)
    assert remote_run_state(uri, 10) == "done"


def test_stdlib_put_follows_s3s_region_answer_and_goes_path_style_for_dotted_buckets(s3_server, tmp_path):
    """Found in review: with AWS_DEFAULT_REGION not the bucket's, S3 refuses the request and names the bucket's
    region (400 AuthorizationHeaderMalformed with <Region>, x-amz-bucket-region); boto3 follows that, the stdlib PUT
    now does too, once. A bucket name with dots cannot be addressed virtual-hosted over TLS: path-style then."""
    from medasr.ops.s3put import put, request_for
    from s3_standin import signature_error

    marker = tmp_path / "BUDGET"
    marker.write_text('{"spent_usd": 25.0}')
    s3_server.fail("PUT", "runs/region/BUDGET", 400, "AuthorizationHeaderMalformed", n=100, region="eu-west-1")
    try:
        put(str(marker), "s3://medasr-test/runs/region/BUDGET", sleep=lambda s: None)
    finally:
        s3_server.failures.clear()
    sent = [r for r in s3_server.requests if "runs/region/BUDGET" in r[1]]
    assert [r[2] for r in sent] == [400, 200]
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_DEFAULT_REGION": "eu-west-1"}
    req = request_for(b"x", "s3://my.dotted.bucket/runs/FAILED", env)
    assert req.full_url == "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/runs/FAILED"

    class H(dict):
        def get(self, k, d=None):
            return super().get(k.lower(), d)

    headers = H({k.lower(): v for k, v in req.header_items()} | {"host": "s3.eu-west-1.amazonaws.com"})
    assert signature_error("PUT", "/my.dotted.bucket/runs/FAILED", headers, b"x", "AK", "SK", None) is None
