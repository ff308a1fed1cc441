"""Put one small file on S3 with the Python standard library alone.

run.sh and the pod guard push RUN/FAILED or RUN/BUDGET with it when there is no venv yet (a failed setup has no
boto3; the image's python3 is all there is). The request is signed as S3 documents AWS Signature Version 4 for a
single-chunk upload (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html): the payload's real
SHA-256 in `x-amz-content-sha256`, `AWS_SESSION_TOKEN` as `x-amz-security-token` (temporary credentials), both signed,
and `x-amz-checksum-sha256` so that S3 itself checks the body it stores (400 BadDigest otherwise). The tests verify
these requests with botocore's own signer (tests/s3_standin.py). Any answer but 2xx is a failure (exit 1, S3's error
code printed); 5xx, 429 and network errors are retried.

    python3 -m medasr.ops.s3put FILE s3://bucket/key
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class PutError(RuntimeError):
    pass


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def request_for(body: bytes, uri: str, env=os.environ, now: dt.datetime | None = None) -> urllib.request.Request:
    """The signed PUT request for `body` at `uri` (s3://bucket/key)."""
    u = urllib.parse.urlparse(uri)
    bucket, key = u.netloc, u.path.lstrip("/")
    if u.scheme != "s3" or not bucket or not key:
        raise PutError(f"{uri!r} is not an s3://bucket/key URI")
    ak, sk = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not ak or not sk:
        raise PutError("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    quoted = urllib.parse.quote(key, safe="/-_.~")
    if endpoint:  # an S3-compatible store or a local stand-in: path-style addressing
        e = urllib.parse.urlparse(endpoint)
        host, path, scheme = e.netloc, f"{e.path.rstrip('/')}/{bucket}/{quoted}", e.scheme
    elif "." in bucket:  # a dotted name breaks the TLS host check of virtual-hosted style (botocore goes path-style)
        host, path, scheme = f"s3.{region}.amazonaws.com", f"/{bucket}/{quoted}", "https"
    else:  # AWS: virtual-hosted style
        host, path, scheme = f"{bucket}.s3.{region}.amazonaws.com", f"/{quoted}", "https"
    now = now or dt.datetime.now(dt.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
               "x-amz-content-sha256": hashlib.sha256(body).hexdigest(), "x-amz-date": amz_date}
    if token := env.get("AWS_SESSION_TOKEN"):
        headers["x-amz-security-token"] = token
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["PUT", path, "", *(f"{k}:{headers[k].strip()}" for k in sorted(headers)), "", signed,
                           headers["x-amz-content-sha256"]])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key_ = _hmac(_hmac(_hmac(_hmac(f"AWS4{sk}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={signature}"
    req = urllib.request.Request(f"{scheme}://{host}{path}", data=body, method="PUT",
                                 headers={k: v for k, v in headers.items() if k != "host"})
    req.add_header("Content-Length", str(len(body)))
    req.add_header("Content-Type", "application/octet-stream")  # urllib would say form-urlencoded
    return req


def _tag(text: str, name: str) -> str:
    return text.split(f"<{name}>")[1].split(f"</{name}>")[0] if f"<{name}>" in text else ""


def put(path: str, uri: str, attempts: int = 3, timeout: float = 60.0, sleep=time.sleep, env=None) -> None:
    with open(path, "rb") as f:
        body = f.read()
    env = dict(os.environ if env is None else env)
    why = ""
    for i in range(attempts):
        try:
            with urllib.request.urlopen(request_for(body, uri, env), timeout=timeout) as r:
                if 200 <= r.status < 300:
                    return
                why = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            why = f"HTTP {e.code} {_tag(text, 'Code')}".strip()
            # the bucket lives in another region than AWS_DEFAULT_REGION says: S3 names it (301 PermanentRedirect,
            # 400 AuthorizationHeaderMalformed); ask there once, as botocore's region redirector does
            region = e.headers.get("x-amz-bucket-region") or _tag(text, "Region")
            current = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
            if region and region != current and e.code in (301, 400):
                env["AWS_REGION"] = region
                continue
            if e.code < 500 and e.code != 429:
                raise PutError(f"S3 refused {uri}: {why}") from e
        except (urllib.error.URLError, OSError) as e:
            why = f"{type(e).__name__}: {e}"
        if i + 1 < attempts:
            sleep(2.0 * 2 ** i)
    raise PutError(f"could not put {uri} after {attempts} attempts: {why}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m medasr.ops.s3put FILE s3://bucket/key", file=sys.stderr)
        return 2
    try:
        put(argv[0], argv[1])
    except (PutError, OSError) as e:
        print(f"s3put: {e}", file=sys.stderr)
        return 1
    print(f"pushed {argv[0]} to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
