"""S3 sync of a run directory: idempotent, verified by S3 itself, resumable.

- What goes up: checkpoints, the adapter, reports, manifests, configs and markers; audio only when asked; never
  partial files. W&B keeps its own copy (`wandb sync`), so `train/wandb/` stays local.
- Verified by the store, not by us: every upload carries the SHA-256 we computed from the file
  (`x-amz-checksum-sha256`; each part's for a multipart upload), S3 recomputes it from the bytes it received and
  refuses a mismatch (BadDigest: the file changed between hashing and upload), and afterwards the object's checksum
  as S3 reports it (HeadObject, checksum mode; "…-N" composite for multipart) must equal ours
  (docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html). Restore checks each download
  against that same S3 checksum.
- Idempotent: an object whose size and S3 checksum match the local file is skipped (local checksums are cached in
  `RUN/.medasr-s3-state.json` by size and mtime, so a sync does not re-read every checkpoint).
- Resumable: files above `part_size` go up as multipart uploads whose id is recorded in the same state file; an
  interrupted upload continues with the missing parts on the next sync.
- Markers cleared locally (FAILED after `--retry-failed`, BUDGET after a raised cap) are deleted on S3 too
  (`delete_remote`): sync never deletes, and a stale marker would stop the resumed run again.
boto3 honours AWS_ENDPOINT_URL_S3 (or `endpoint_url`), which is how tests point it at a local stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from medasr.atomic import write_text_atomic
from medasr.errors import MedasrError
from medasr.runstate import BUDGET, FAILED, run_is_done

PART_SIZE = 16 * 1024 * 1024
STATE = ".medasr-s3-state.json"
EXCLUDE_DIRS = ("train/wandb",)
AUDIO_DIRS = ("data/audio",)
EXCLUDE_SUFFIXES = (".partial", ".tmp")
# what says how far the pod got, pushed every few minutes by the supervisor (small files)
HEARTBEAT_FILES = ("supervisor.json", "train/progress.json")


class StorageError(MedasrError, RuntimeError):
    pass


def parse_uri(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI")
    return u.netloc, u.path.strip("/")


def _key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}".lstrip("/")


def client(endpoint_url: str | None = None):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def s3_checksum(path: Path, part_size: int) -> tuple[str, list[str]]:
    """The SHA-256 checksum S3 will report for this file uploaded our way: the body's for a single PUT (size ≤
    part_size); for a multipart upload of `part_size` parts, the composite (SHA-256 of the parts' digests, "-N"), with
    each part's checksum."""
    with open(path, "rb") as f:
        if path.stat().st_size <= part_size:
            return _b64(hashlib.file_digest(f, "sha256").digest()), []
        parts = []
        while chunk := f.read(part_size):
            parts.append(_b64(hashlib.sha256(chunk).digest()))
    return f"{_b64(hashlib.sha256(b''.join(base64.b64decode(p) for p in parts)).digest())}-{len(parts)}", parts


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
    # summary.json, which says "done" (runstate.run_is_done), goes up last: sync stops at the first failure, so S3 never
    # reads done while a file of the run is missing there
    return sorted(out, key=lambda p: (p.relative_to(run_dir).as_posix() == "summary.json", p.as_posix()))


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    parts_uploaded: list[tuple[str, int]] = field(default_factory=list)


def _remote(s3, bucket: str, key: str, part: int | None = None) -> dict | None:
    try:
        kw = {"PartNumber": part} if part else {}
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **kw)
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _same(head: dict | None, size: int, checksum: str) -> bool:
    return bool(head) and head["ContentLength"] == size and head.get("ChecksumSHA256") == checksum


def _step_of(path: Path) -> dict:
    """For last.ckpt: its step (from last.json beside it, read *before* the checkpoint is hashed), stored on the S3
    object itself. A checkpoint written after that read is newer than the step says, and a file replaced after the
    hash is refused by S3, so the step on S3 never overstates what the object holds."""
    if path.name != "last.ckpt":
        return {}
    try:
        return {"medasr-step": str(int(json.loads((path.parent / "last.json").read_text())["global_step"]))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def local_checksum_like(path: Path, want: str, part_size: int) -> str:
    """The local file's checksum in the form of S3's `want`: composite ("…-N") when S3's is, even for one part."""
    if "-" not in want:
        return s3_checksum(path, max(path.stat().st_size, 1))[0]
    parts = []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            parts.append(hashlib.sha256(chunk).digest())
    return f"{_b64(hashlib.sha256(b''.join(parts)).digest())}-{len(parts)}"


class _State:
    """Multipart uploads in flight (by S3 key) and cached local checksums (by path, size, mtime, part size)."""

    def __init__(self, path: Path | None):
        """`path` None: in memory only (the supervisor's heartbeat pushes run beside the trainer's syncs, in another
        process: they must not overwrite each other's state)."""
        self.path = path
        self.data = json.loads(path.read_text()) if path and path.exists() else {}
        self.lock = threading.Lock()

    def save(self) -> None:
        if self.path is None:
            return
        with self.lock:
            write_text_atomic(self.path, json.dumps(self.data, indent=1))

    def checksum(self, path: Path, rel: str, part_size: int) -> tuple[str, list[str]]:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, part_size]
        cached = self.data.setdefault("checksums", {}).get(rel)
        if cached and cached["stamp"] == stamp:
            return cached["checksum"], cached["parts"]
        checksum, parts = s3_checksum(path, part_size)
        self.data["checksums"][rel] = {"stamp": stamp, "checksum": checksum, "parts": parts}
        return checksum, parts

    def forget(self, rel: str) -> None:
        self.data.get("checksums", {}).pop(rel, None)


def _bad_digest(e: Exception) -> bool:
    return getattr(e, "response", {}).get("Error", {}).get("Code") in ("BadDigest", "InvalidPart", "InvalidRequest")


def _multipart(s3, bucket, key, path: Path, checksum: str, parts: list[str], state: _State, part_size: int,
               result: SyncResult, fail_after_parts: int | None = None, metadata: dict | None = None) -> None:
    uploads = state.data.setdefault("uploads", {})
    entry = uploads.get(key)
    if entry and (entry.get("checksum") != checksum or entry.get("part_size") != part_size):
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=entry["upload_id"])
        except Exception:  # noqa: BLE001 - the old upload may already be gone
            pass
        entry = None
    etags: dict[int, str] = {}
    if entry:  # resume: ask S3 which parts it already has (each was checked by S3 against its checksum)
        try:
            pages = s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=entry["upload_id"])
            etags = {p["PartNumber"]: p["ETag"] for page in pages for p in page.get("Parts", [])}
        except Exception:  # noqa: BLE001 - upload expired: start over
            entry = None
    if not entry:
        up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata=metadata or {})
        entry = uploads[key] = {"upload_id": up["UploadId"], "checksum": checksum, "part_size": part_size}
        state.save()
        etags = {}
    sent = 0
    with open(path, "rb") as f:
        for num in range(1, len(parts) + 1):
            if num in etags:
                continue
            if fail_after_parts is not None and sent >= fail_after_parts:
                raise StorageError(f"injected interruption after {sent} part(s) of {key}")
            f.seek((num - 1) * part_size)
            chunk = f.read(part_size)
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=entry["upload_id"], PartNumber=num, Body=chunk,
                               ChecksumSHA256=parts[num - 1])  # S3 refuses the part if the file changed since hashing
            etags[num] = r["ETag"]
            result.parts_uploaded.append((key, num))
            result.bytes_uploaded += len(chunk)
            sent += 1
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=entry["upload_id"], MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etags[n], "ChecksumSHA256": parts[n - 1]} for n in range(1, len(parts) + 1)]})
    uploads.pop(key, None)
    state.save()


def sync_up(run_dir: Path, uri: str, include_audio: bool = False, part_size: int = PART_SIZE,
            endpoint_url: str | None = None, only: list[Path] | None = None, fail_after_parts: int | None = None,
            remember: bool = True) -> SyncResult:
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    state = _State(run_dir / STATE if remember else None)
    result = SyncResult()
    try:
        for path in only if only is not None else files_to_sync(run_dir, include_audio):
            rel = path.relative_to(run_dir).as_posix()
            key = _key(prefix, rel)
            metadata = _step_of(path)  # before hashing (see _step_of)
            size = path.stat().st_size
            checksum, parts = state.checksum(path, rel, part_size)
            if _same(_remote(s3, bucket, key), size, checksum):
                result.skipped.append(key)
                continue
            try:
                if parts:
                    _multipart(s3, bucket, key, path, checksum, parts, state, part_size, result, fail_after_parts,
                               metadata)
                else:
                    with open(path, "rb") as f:
                        s3.put_object(Bucket=bucket, Key=key, Body=f, ChecksumSHA256=checksum, Metadata=metadata)
                    result.bytes_uploaded += size
            except Exception as e:
                if _bad_digest(e):
                    state.forget(rel)
                    raise StorageError(f"s3://{bucket}/{key}: S3 computed another checksum than the file had when it "
                                       f"was hashed (it changed during the upload); the next sync uploads it again") from e
                raise
            head = _remote(s3, bucket, key)
            if not _same(head, size, checksum):
                state.forget(rel)
                got = f"{head.get('ContentLength')} B, checksum {head.get('ChecksumSHA256')}" if head else "no object"
                raise StorageError(f"verification failed for s3://{bucket}/{key}: S3 reports {got}; the file had "
                                   f"{size} B, checksum {checksum}")
            result.uploaded.append(key)
    finally:
        state.save()
    return result


def _part_size(s3, bucket: str, key: str, want: str, head: dict) -> int:
    """The part size a multipart object was uploaded with (its first part's size; ours are all equal but the last)."""
    return _remote(s3, bucket, key, part=1)["ContentLength"] if "-" in want else head["ContentLength"]


def _download_checked(s3, bucket: str, key: str, head: dict, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".partial")
    try:
        s3.download_file(bucket, key, str(tmp))
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if type(e).__name__ == "FlexibleChecksumError":  # botocore checked the body against S3's checksum itself
            raise StorageError(f"checksum mismatch downloading s3://{bucket}/{key}: {e}") from e
        raise
    want = head.get("ChecksumSHA256")
    if want:  # S3's own checksum of what it stored; composite ones are recomputed with the object's part size
        got = local_checksum_like(tmp, want, _part_size(s3, bucket, key, want, head))
    else:
        want, got = head["ContentLength"], tmp.stat().st_size  # uploaded by another tool: size is all S3 tells
    if got != want:
        tmp.unlink()
        raise StorageError(f"checksum mismatch downloading s3://{bucket}/{key}: S3 says {want}, got {got}")
    tmp.replace(local)


def restore(uri: str, run_dir: Path, endpoint_url: str | None = None, only_missing: bool = False) -> list[str]:
    """Pull every object under the prefix whose local copy is missing (or, unless `only_missing`, different), each
    checked against S3's checksum and written atomically."""
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    pulled = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :] if prefix else obj["Key"]
            local = run_dir / rel
            if local.exists() and only_missing:
                continue
            head = _remote(s3, bucket, obj["Key"])
            if local.exists() and head and local.stat().st_size == head["ContentLength"]:
                want = head.get("ChecksumSHA256")
                if want is None or local_checksum_like(local, want, _part_size(s3, bucket, obj["Key"], want, head)) == want:
                    continue
            _download_checked(s3, bucket, obj["Key"], head, local)
            pulled.append(rel)
    return pulled


def delete_remote(uri: str, rels: list[str], endpoint_url: str | None = None) -> None:
    """Delete these run files on S3 (a cleared marker must not stop the resumed run again)."""
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    for rel in rels:
        s3.delete_object(Bucket=bucket, Key=_key(prefix, rel))


def remote_text(uri: str, rel: str, endpoint_url: str | None = None) -> str | None:
    """A small run file's text on S3, or None."""
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    try:
        return s3.get_object(Bucket=bucket, Key=_key(prefix, rel))["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return None


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


def _json(s3, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def remote_run_state(uri: str, max_steps: int, endpoint_url: str | None = None) -> str:
    """"done", "failed" (RUN/FAILED: a permanent error), "budget" (RUN/BUDGET: the pod stopped itself at its cap) or
    "running", from the markers synced under this S3 prefix."""
    import tempfile

    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    if _remote(s3, bucket, _key(prefix, FAILED)) is not None:
        return "failed"
    with tempfile.TemporaryDirectory() as tmp:
        rd = Path(tmp)
        for rel in ("summary.json", "train/DONE"):
            if _remote(s3, bucket, _key(prefix, rel)) is not None:
                (rd / rel).parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, _key(prefix, rel), str(rd / rel))
        summary = rd / "summary.json"
        marker = json.loads(summary.read_text()).get("export_file") if summary.exists() else None
        if marker and _remote(s3, bucket, _key(prefix, marker)) is not None:
            (rd / marker).parent.mkdir(parents=True, exist_ok=True)
            (rd / marker).write_bytes(b"present")  # existence is all run_is_done checks
        if run_is_done(rd, max_steps)[0]:
            return "done"
    return "budget" if _remote(s3, bucket, _key(prefix, BUDGET)) is not None else "running"


def remote_checkpoint_current(uri: str, ckpt_every_n_steps: int, seen_running_at: float | None = None,
                              heartbeat_sync_s: float = 300.0, endpoint_url: str | None = None) -> bool:
    """Is the run's work safe on S3, so that losing the pod's volume loses no more than a SIGKILL would? S3 holds
    `last.ckpt` with S3's own checksum (uploaded whole and verified), the step stored on that object is at most one
    checkpoint interval behind the step the pod last reported (`train/progress.json`, pushed every few minutes), and
    — when the watcher knows when it last saw the pod running — that report is recent: a pod whose pushes were all
    failing looks current on S3 while its volume holds hours more."""
    import datetime as dt

    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    head = _remote(s3, bucket, _key(prefix, "train/checkpoints/last.ckpt"))
    step = (head or {}).get("Metadata", {}).get("medasr-step")
    if not (head and head.get("ChecksumSHA256") and step is not None):
        return False
    progress = _json(s3, bucket, _key(prefix, "train/progress.json")) or {}
    if int(step) < int(progress.get("global_step", 0)) - ckpt_every_n_steps:
        return False
    if seen_running_at is not None:
        beat = (_json(s3, bucket, _key(prefix, "supervisor.json")) or {}).get("heartbeat")
        if beat is None or dt.datetime.fromisoformat(beat).timestamp() < seen_running_at - heartbeat_sync_s - 120:
            return False
    return True


def remote_progress_token(uri: str, endpoint_url: str | None = None) -> str:
    """A fingerprint of what the run has put on S3 besides its heartbeat and spend (checkpoints, results, the step
    reached): equal before and after a resume means the pod made no progress in between."""
    bucket, prefix = parse_uri(uri)
    s3 = client(endpoint_url)
    quiet = {_key(prefix, r) for r in ("supervisor.json", "guard.log", "setup.log")}
    h = hashlib.sha256()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        for obj in page.get("Contents", []):
            if obj["Key"] not in quiet and "/spend/" not in f"/{obj['Key']}":
                h.update(f"{obj['Key']} {obj['ETag']}\n".encode())
    return h.hexdigest()[:16]
