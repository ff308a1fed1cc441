"""S3 on loopback that checks what real S3 checks and fails the way it fails (test stand-in).

moto's server keeps the buckets, objects and multipart uploads; it accepts any signature, ignores a client's
checksums and does not report them back. This front, which every test request passes through, adds what S3 does
(each from AWS's documentation):
- **Signature V4** (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html), recomputed for every request
  with botocore's own signer (`botocore.auth.S3SigV4Auth`) over the headers the client says it signed: a mismatch is
  403 SignatureDoesNotMatch; a signed `x-amz-content-sha256` that is not the body's SHA-256 is 400
  XAmzContentSHA256Mismatch; with temporary credentials (a session token) a request without `x-amz-security-token`
  is 403 InvalidToken.
- **Checksums** ("Checking object integrity in Amazon S3", docs.aws.amazon.com/AmazonS3/latest/userguide/
  checking-object-integrity.html): `x-amz-checksum-sha256` / `-crc32` on PutObject and UploadPart are checked against
  the body S3 received (400 BadDigest) and stored; HeadObject/GetObject with `x-amz-checksum-mode: ENABLED` return the
  stored SHA-256: the body's for a single PUT (type FULL_OBJECT), for a multipart upload the composite, base64 of the
  SHA-256 of the parts' concatenated SHA-256 digests, suffixed "-<parts>" (type COMPOSITE); UploadPart answers with
  the part's checksum; CompleteMultipartUpload of an upload created with a SHA-256 checksum must list each part's
  checksum, equal to the one S3 computed (400 InvalidRequest / InvalidPart). A ranged GET gets no checksum.
- **Failures** (`fail(method, key_part, status, code, n)`): 500 InternalError and 503 SlowDown (S3's error
  responses; "SlowDown: Please reduce your request rate"), 403 AccessDenied; status 0 drops the connection.
Every request is recorded in `requests` as (method, path, status).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def signature_error(method: str, path: str, headers, body: bytes, access_key: str, secret_key: str,
                    token: str | None) -> tuple[int, str, str] | None:
    """S3's answer to a request whose SigV4 signature (or payload hash, or session token) is wrong; None when right.
    The expected signature is botocore's own (`S3SigV4Auth`) over the headers the client says it signed."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = headers.get("Authorization", "")
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, "
                 r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$", auth)
    if not m:
        return 403, "AccessDenied", "Request is not signed with AWS Signature Version 4"
    ak, day, region, signed, signature = m.groups()
    if ak != access_key:
        return 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
    signed_names = signed.split(";")
    if token and (headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed_names):
        return 403, "InvalidToken", "The provided token is malformed or otherwise invalid."
    declared = headers.get("x-amz-content-sha256")
    if declared is None or "x-amz-content-sha256" not in signed_names:
        return 400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
    if declared != "UNSIGNED-PAYLOAD" and declared != hashlib.sha256(body).hexdigest():
        return 400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."
    req = AWSRequest(method=method, url=f"http://{headers.get('Host')}{path}",
                     headers={h: headers.get(h, "") for h in signed_names}, data=body)
    req.context["timestamp"] = headers.get("x-amz-date", "")
    signer = S3SigV4Auth(Credentials(access_key, secret_key, token), "s3", region)
    expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    if expected != signature or day != req.context["timestamp"][:8]:
        return 403, "SignatureDoesNotMatch", ("The request signature we calculated does not match the signature you "
                                              "provided. Check your key and signing method.")
    return None


class S3StandIn:
    def __init__(self, access_key="testing", secret_key="testing", token: str | None = "test-session-token",
                 region="us-east-1"):
        from moto.server import ThreadedMotoServer

        self.access_key, self.secret_key, self.token, self.region = access_key, secret_key, token, region
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.moto_addr = self.moto.get_host_and_port()
        self.checksums: dict[str, tuple[str, str]] = {}  # "bucket/key" -> (sha256 checksum, type)
        self.uploads: dict[str, dict] = {}  # upload id -> {"sha256": bool, "parts": {n: checksum}}
        self.failures: list[list] = []  # [method, key_part, status, code, remaining]
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.moto.stop()

    def env(self) -> dict:
        """The AWS_* environment a client needs to reach this store."""
        env = {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region}
        return env | ({"AWS_SESSION_TOKEN": self.token} if self.token else {})

    def fail(self, method: str, key_part: str, status: int = 503, code: str = "SlowDown", n: int = 1,
             region: str | None = None) -> None:
        """The next `n` `method` requests whose path contains `key_part` fail ("*" = any method). With `region`, the
        answer names the bucket's region as S3 does to a request signed for another one (400
        AuthorizationHeaderMalformed with <Region>, and the x-amz-bucket-region header)."""
        self.failures.append([method, key_part, status, code, n, region])

    # --- request checks -------------------------------------------------------------------------------------------
    def _signature_error(self, method: str, path: str, headers, body: bytes) -> tuple[int, str, str] | None:
        return signature_error(method, path, headers, body, self.access_key, self.secret_key, self.token)

    def _checksum_error(self, headers, body: bytes) -> tuple[int, str, str] | None:
        for name, fn in (("x-amz-checksum-sha256", sha256_b64), ("x-amz-checksum-crc32", crc32_b64)):
            if (given := headers.get(name)) is not None and given != fn(body):
                return 400, "BadDigest", f"The {name[15:].upper()} you specified did not match the calculated checksum."
        return None

    # --- the server -----------------------------------------------------------------------------------------------
    def _handler(self):
        s3 = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's `Expect: 100-continue` (HTTP/1.0 makes it wait 1 s a PUT)

            def log_message(self, *a):
                pass

            def _error(self, status, code, message, region=None):
                where = f"<Region>{region}</Region>" if region else ""
                body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                        f"{where}<RequestId>standin</RequestId></Error>").encode()
                self._record(status)
                self.send_response(status)
                if region:
                    self.send_header("x-amz-bucket-region", region)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _go(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path, _, query = self.path.partition("?")
                params = urllib.parse.parse_qs(query, keep_blank_values=True)
                objkey = urllib.parse.unquote(path.lstrip("/"))
                self._serve(body, objkey, params)

            def _record(self, status):  # before the answer goes out: a client that has it may read `requests` at once
                with s3.lock:
                    s3.requests.append((self.command, self.path, status))

            def _serve(self, body, objkey, params) -> int:
                with s3.lock:
                    fail = next((f for f in s3.failures if f[4] > 0 and f[0] in (self.command, "*") and f[1] in self.path
                                 and not (f[5] and f"/{f[5]}/s3/" in self.headers.get("Authorization", ""))), None)
                    if fail:
                        fail[4] -= 1
                if fail and fail[2] == 0:
                    self._record(0)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return 0
                err = ((fail[2], fail[3], "injected", fail[5]) if fail else None) \
                    or s3._signature_error(self.command, self.path, self.headers, body) \
                    or (s3._checksum_error(self.headers, body) if self.command == "PUT" else None)
                upload = params.get("uploadId", [None])[0]
                if err is None and self.command == "POST" and upload and upload in s3.uploads:
                    err = s3._complete_error(upload, body)
                if err:
                    self._error(*err)
                    return err[0]
                status, resp_headers, data = s3._forward(self.command, self.path, dict(self.headers), body)
                extra = s3._after(self.command, objkey, params, self.headers, body, status, data)
                self._record(status)
                self.send_response(status)
                # moto's own checksum headers are not S3's (it reports a multipart one without "-N"): ours replace them
                for k, v in [h for h in resp_headers if not h[0].lower().startswith("x-amz-checksum")] + extra:
                    if k.lower() not in ("transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return status

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _go

        return H

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(*self.moto_addr, timeout=60)
        conn.request(method, path, body, {k: v for k, v in headers.items() if k.lower() != "expect"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, r.getheaders(), data

    def _complete_error(self, upload: str, body: bytes) -> tuple[int, str, str] | None:
        u = self.uploads[upload]
        listed = re.findall(rb"<Part>(.*?)</Part>", body, re.S)
        for part in listed:
            num = int(re.search(rb"<PartNumber>(\d+)</PartNumber>", part).group(1))
            ck = re.search(rb"<ChecksumSHA256>([^<]*)</ChecksumSHA256>", part)
            if u["sha256"] and ck is None:
                return 400, "InvalidRequest", (f"The upload was created using a sha256 checksum. The complete request "
                                               f"must include the checksum for each part. It was missing for part {num} in the request.")
            if ck is not None and ck.group(1).decode() != u["parts"].get(num):
                return 400, "InvalidPart", ("One or more of the specified parts could not be found. The part may not "
                                            "have been uploaded, or the specified entity tag may not match the part's entity tag.")
        return None

    def _after(self, method, objkey, params, headers, body, status, data) -> list[tuple[str, str]]:
        """Record checksums after a successful request; the headers S3 adds to its answer."""
        if status >= 300:
            return []
        upload = params.get("uploadId", [None])[0]
        with self.lock:
            if method == "POST" and "uploads" in params:
                uid = re.search(rb"<UploadId>([^<]+)</UploadId>", data).group(1).decode()
                self.uploads[uid] = {"sha256": headers.get("x-amz-checksum-algorithm", "").upper() == "SHA256", "parts": {}}
            elif method == "PUT" and upload:
                ck = sha256_b64(body)
                if upload in self.uploads:
                    self.uploads[upload]["parts"][int(params["partNumber"][0])] = ck
                return [("x-amz-checksum-sha256", ck)] if headers.get("x-amz-checksum-sha256") else []
            elif method == "PUT":
                if headers.get("x-amz-checksum-sha256"):
                    self.checksums[objkey] = (sha256_b64(body), "FULL_OBJECT")
                else:  # S3 keeps another algorithm's checksum then (CRC64NVME by default): no SHA-256 to report
                    self.checksums.pop(objkey, None)
            elif method == "POST" and upload and upload in self.uploads:
                u = self.uploads.pop(upload)
                nums = [int(x) for x in re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)]
                if u["sha256"]:
                    digest = b"".join(base64.b64decode(u["parts"][n]) for n in nums)
                    self.checksums[objkey] = (f"{sha256_b64(digest)}-{len(nums)}", "COMPOSITE")
                else:
                    self.checksums.pop(objkey, None)
            elif method == "DELETE" and upload:
                self.uploads.pop(upload, None)
            elif method == "DELETE":
                self.checksums.pop(objkey, None)
            elif method == "POST" and "delete" in params:
                for k in re.findall(rb"<Key>([^<]+)</Key>", body):
                    self.checksums.pop(f"{objkey.rstrip('/')}/{k.decode()}", None)
            elif (method in ("GET", "HEAD") and headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
                  and "Range" not in headers and "partNumber" not in params and objkey in self.checksums):
                ck, kind = self.checksums[objkey]
                return [("x-amz-checksum-sha256", ck), ("x-amz-checksum-type", kind)]
        return []
