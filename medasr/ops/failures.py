"""Permanent or transient? A permanent error fails the same way on every retry (a bad dataset, a parser error, a
refused config, CUDA out of memory at this batch size): the run is marked FAILED and the pod stops, instead of paying
for ~20 retries. A transient one (the network, a 5xx/429 from a hub, a killed or preempted process) is retried with
bounded backoff by the supervisor.

Classes are matched by name along the exception chain (`__cause__`/`__context__`), so the heavy libraries that define
them (requests, urllib3, botocore, huggingface_hub) need not be imported here.
"""

from __future__ import annotations

import errno

TRANSIENT_NAMES = {
    "ConnectionError", "TimeoutError", "timeout", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError",
    "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError", "ProtocolError", "NewConnectionError", "MaxRetryError",
    "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError", "IncompleteRead",
    "RemoteDisconnected", "ServerDisconnectedError", "ClientConnectorError",
    # httpx (huggingface_hub's client): the transport failures, under their common bases
    "TransportError", "NetworkError", "TimeoutException", "RemoteProtocolError",
}
NETWORK_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                  errno.ENETDOWN, errno.EPIPE, errno.ECONNABORTED}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):  # botocore's ClientError: {"Error": …, "ResponseMetadata": {"HTTPStatusCode": …}}
        code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:
        code = getattr(resp, "status_code", None) or getattr(exc, "status_code", None)
    return int(code) if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if names & TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in NETWORK_ERRNOS:
            return True
        status = _http_status(e)
        if status is not None and (status >= 500 or status == 429):
            return True
    return False


def describe(exc: BaseException) -> str:
    return f"{'transient' if is_transient(exc) else 'permanent'} {type(exc).__name__}: {exc}"
