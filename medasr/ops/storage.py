"""S3 sync of a run directory: idempotent, verified, resumable.

- What goes up: checkpoints, the adapter, reports, manifests, configs and markers; audio only when asked; never
  partial files. W&B keeps its own copy (`wandb sync`), so `train/wandb/` stays local.
- Idempotent: an object whose size and stored MD5 (`x-amz-meta-medasr-md5`) match the local file is skipped.
- Verified: after each upload, size and MD5 metadata are read back and compared.
- Resumable: files above `part_size` go up as multipart uploads whose id and finished parts are recorded in
  `RUN/.medasr-s3-state.json`; an interrupted upload continues with the missing parts on the next sync.
boto3 honours AWS_ENDPOINT_URL_S3 (or `endpoint_url`), which is how tests point it at a local moto server.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from medasr.atomic import write_text_atomic
from medasr.runstate import BUDGET, EXPORT_MARKERS, FAILED, run_is_done

PART_SIZE = 16 * 1024 * 1024
STATE = ".medasr-s3-state.json"
EXCLUDE_DIRS = ("train/wandb",)
AUDIO_DIRS = ("data/audio",)
EXCLUDE_SUFFIXES = (".partial", ".tmp")


class StorageError(RuntimeError):
    pass


def parse_uri(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI")
    return u.netloc, u.path.strip("/")


def client(endpoint_url: str | None = None):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None)


def md5_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def files_to_sync(run_dir: Path, include_audio: bool = False) -> list[Path]:
    out = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or p.name == STATE or p.name.endswith(EXCLUDE_SUFFIXES):
            continue
        rel = p.relative_to(run_dir).as_posix()
        if any(rel.startswith(d + "/") for d in EXCLUDE_DIRS):
            continue
        if not include_audio and any(rel.startswith(d + "/") for d in AUDIO_DIRS):
            continue
        out.append(p)
    return out


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    parts_uploaded: list[tuple[str, int]] = field(default_factory=list)


def _remote(s3, bucket: str, key: str) -> dict | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _same(head: dict | None, size: int, md5: str) -> bool:
    return bool(head) and head["ContentLength"] == size and head.get("Metadata", {}).get("medasr-md5") == md5


class _State:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            write_text_atomic(self.path, json.dumps(self.data, indent=1))


def _multipart(s3, bucket, key, path: Path, md5: str, state: _State, part_size: int, result: SyncResult,
               fail_after_parts: int | None = None) -> None:
    entry = state.data.get(key)
    if entry and (entry.get("md5") != md5 or entry.get("part_size") != part_size):
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=entry["upload_id"])
        except Exception:  # noqa: BLE001 - the old upload may already be gone
            pass
        entry = None
    if entry:  # resume: ask S3 which parts it already has
        try:
            listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=entry["upload_id"]).get("Parts", [])
            done = {p["PartNumber"]: p["ETag"] for p in listed}
        except Exception:  # noqa: BLE001 - upload expired: start over
            entry, done = None, {}
    if not entry:
        up = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"medasr-md5": md5})
        entry = {"upload_id": up["UploadId"], "md5": md5, "part_size": part_size}
        state.data[key] = entry
        state.save()
        done = {}
    size = path.stat().st_size
    n_parts = max(1, -(-size // part_size))
    sent = 0
    with open(path, "rb") as f:
        for num in range(1, n_parts + 1):
            if num in done:
                continue
            if fail_after_parts is not None and sent >= fail_after_parts:
                raise StorageError(f"injected interruption after {sent} part(s) of {key}")
            f.seek((num - 1) * part_size)
            chunk = f.read(part_size)
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=entry["upload_id"], PartNumber=num, Body=chunk)
            done[num] = r["ETag"]
            result.parts_uploaded.append((key, num))
            result.bytes_uploaded += len(chunk)
            sent += 1
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=entry["upload_id"],
                                 MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]})
    state.data.pop(key, None)
    state.save()


def sync_up(run_dir: Path, uri: str, include_audio: bool = False, part_size: int = PART_SIZE,
            endpoint_url: str | None = None, only: list[Path] | None = None, fail_after_parts: int | None = None) -> SyncResult:
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    state = _State(run_dir / STATE)
    result = SyncResult()
    for path in only if only is not None else files_to_sync(run_dir, include_audio):
        key = f"{prefix}/{path.relative_to(run_dir).as_posix()}".lstrip("/")
        size, md5 = path.stat().st_size, md5_file(path)
        if _same(_remote(s3, bucket, key), size, md5):
            result.skipped.append(key)
            continue
        if size > part_size:
            _multipart(s3, bucket, key, path, md5, state, part_size, result, fail_after_parts)
        else:
            with open(path, "rb") as f:
                s3.put_object(Bucket=bucket, Key=key, Body=f, Metadata={"medasr-md5": md5})
            result.bytes_uploaded += size
        if not _same(_remote(s3, bucket, key), size, md5):
            raise StorageError(f"verification failed for s3://{bucket}/{key}: size or checksum differs after upload")
        result.uploaded.append(key)
    return result


def restore(uri: str, run_dir: Path, endpoint_url: str | None = None) -> list[str]:
    """Pull every object under the prefix whose local copy is missing or different (atomic writes)."""
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    pulled = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
            local = run_dir / rel
            head = s3.head_object(Bucket=bucket, Key=obj["Key"])
            if local.exists() and _same(head, local.stat().st_size, md5_file(local)):
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + ".partial")
            s3.download_file(bucket, obj["Key"], str(tmp))
            want = head.get("Metadata", {}).get("medasr-md5")
            if want and md5_file(tmp) != want:
                tmp.unlink()
                raise StorageError(f"checksum mismatch downloading s3://{bucket}/{obj['Key']}")
            tmp.replace(local)
            pulled.append(rel)
    return pulled


class BackgroundSync:
    """Runs sync_up in a daemon thread, one at a time; a request while busy is coalesced into one follow-up."""

    def __init__(self, run_dir: Path, uri: str):
        self.run_dir, self.uri = run_dir, uri
        self._thread: threading.Thread | None = None
        self._again = False
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.runs = 0

    def request(self) -> None:
        with self._lock:
            if self._thread and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                sync_up(self.run_dir, self.uri)
                self.runs += 1
            except Exception as e:  # noqa: BLE001 - a failed background sync must not kill training; it is retried
                self.errors.append(f"{type(e).__name__}: {e}")
            with self._lock:
                if not self._again:
                    return
                self._again = False

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)


def remote_run_state(uri: str, max_steps: int, endpoint_url: str | None = None) -> str:
    """"done", "failed" (RUN/FAILED: a permanent error), "budget" (RUN/BUDGET: the pod stopped itself at its cap) or
    "running", from the markers synced under this S3 prefix."""
    import tempfile


    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    if _remote(s3, bucket, f"{prefix}/{FAILED}") is not None:
        return "failed"
    with tempfile.TemporaryDirectory() as tmp:
        rd = Path(tmp)
        for rel in ("summary.json", "train/DONE", *EXPORT_MARKERS):
            head = _remote(s3, bucket, f"{prefix}/{rel}")
            if head is None:
                continue
            (rd / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel in EXPORT_MARKERS:
                (rd / rel).write_bytes(b"present")  # existence is all run_is_done checks
            else:
                s3.download_file(bucket, f"{prefix}/{rel}", str(rd / rel))
        if run_is_done(rd, max_steps)[0]:
            return "done"
    return "budget" if _remote(s3, bucket, f"{prefix}/{BUDGET}") is not None else "running"


def remote_checkpoint_verified(uri: str, endpoint_url: str | None = None) -> bool:
    """Does S3 hold the run's last.ckpt, uploaded and verified by `sync_up` (its MD5 recorded)? Then losing the pod's
    volume loses no training."""
    bucket, prefix = parse_uri(uri)
    head = _remote(client(endpoint_url), bucket, f"{prefix}/train/checkpoints/last.ckpt")
    return bool(head and head.get("Metadata", {}).get("medasr-md5"))
