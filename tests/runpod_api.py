"""A local HTTP server that speaks the subset of RunPod's GraphQL API that medasr uses (test stand-in).

It parses GraphQL literals for real (strings with escapes, objects, lists), so a client that fails to escape a quote
gets the same kind of syntax error the real API returns.

Where our code depends on the API's behaviour, the server follows what the SDK and docs say, not what is convenient:
- `podResume` answers only the fields the SDK's mutation selects (runpod 1.12.0,
  runpod/api/mutations/pods.py `generate_pod_resume_mutation`: id, desiredStatus, imageName, env, machineId,
  machine.podHostId): no gpuCount, which only `pod(...)` reports (runpod/api/queries/pods.py).
- `uptimeSeconds` is per pod session: RunPod's docs do not say whether it survives a stop/resume, so by default a
  resume starts it again (`uptime_resets_on_resume`), the case that would hide earlier sessions' spend.
- `podStop` of an EXITED pod is accepted; a stopped pod keeps its volume (docs.runpod.io: "Stop a Pod": volume disk is
  still billed while stopped). Stopping a pod stops its container as Docker does (docs.docker.com, `docker stop`: SIGTERM
  to the main process, SIGKILL after a grace period, 10 s by default): tests register the container's PID 1 in
  `containers` and the server signals it.

It also fails the way the real service fails (`fail(op, kind, n)`), each mode from where it was seen or documented:
- "graphql": HTTP 200 whose body holds `errors` (GraphQL over HTTP answers errors inside a 200; runpod-python's
  `run_graphql_query` raises QueryError from `errors[0].message`); RunPod's own transient one reads "Something went
  wrong. Please try again later or contact support." (runpod-python issue #239, podResume → INTERNAL_SERVER_ERROR).
- "nogpu": podResume on a host whose GPUs are taken: "There are not enough free GPUs on the host machine to start
  this pod." (runpod-python issue #168); podFindAndDeployOnDemand: "There are no longer any instances available with
  the requested specifications. Please refresh and try again." (llm-autoeval issue #3, runpodctl issue #189).
- "refused": a GraphQL error that is not RunPod's "try again": podStop of a pod with a network volume answered "Pods
  with network volumes attached cannot be stopped, only terminated" until 2026-05 (runpod/docs pull 629).
- "http500": a 500 whose JSON body has no `data` (the SDK then fails on `["data"]`).
- "html502": a 502 with an HTML body from the load balancer (the SDK calls `.json()` on it: JSONDecodeError).
- "429": Too Many Requests with a plain-text body (docs.runpod.io/api-reference-v2/rate-limits: the API rejects with
  429 when a window's quota is spent).
- "timeout": the answer comes after `delay_s` (clients time out first); "drop": the connection closes unanswered.
- a wrong key: 401 (the SDK raises AuthenticationError).
"""

import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# allowedCudaVersions takes RunPod's CudaVersion values only (REST POST /pods, docs.runpod.io/api-reference/pods/POST/pods;
# the runpod-sdk crate's CudaVersion enum): the CUDA version of the host's driver.
CUDA_VERSIONS = {"11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0"}
GPUS = {"NVIDIA A100 80GB PCIe": {"securePrice": 1.64, "communityPrice": 1.19},
        "NVIDIA H100 80GB HBM3": {"securePrice": 2.99, "communityPrice": 2.39}}


class GraphQLSyntaxError(ValueError):
    pass


class _Parser:
    def __init__(self, text, pos):
        self.t, self.i = text, pos

    def ws(self):
        while self.i < len(self.t) and self.t[self.i] in " \t\r\n,":
            self.i += 1

    def value(self):
        self.ws()
        c = self.t[self.i]
        if c == '"':
            m = re.compile(r'"((?:[^"\\\n]|\\.)*)"').match(self.t, self.i)
            if not m:
                raise GraphQLSyntaxError(f"Syntax Error: Unterminated string at {self.i}")
            self.i = m.end()
            return json.loads(m.group(0))
        if c == "{":
            return self.obj()
        if c == "[":
            self.i += 1
            out = []
            while True:
                self.ws()
                if self.t[self.i] == "]":
                    self.i += 1
                    return out
                out.append(self.value())
        m = re.compile(r"[A-Za-z0-9_.\-]+").match(self.t, self.i)
        if not m:
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected character {c!r} at {self.i}")
        self.i = m.end()
        tok = m.group(0)
        return {"true": True, "false": False, "null": None}.get(tok, int(tok) if tok.isdigit() else tok)

    def fields(self, closer):
        """`name: value` pairs up to the closing character (an object's } or an argument list's ))."""
        out = {}
        while True:
            self.ws()
            if self.t[self.i] == closer:
                self.i += 1
                return out
            m = re.compile(r"([A-Za-z_]\w*)\s*:").match(self.t, self.i)
            if not m:
                raise GraphQLSyntaxError(f"Syntax Error: Expected Name, found {self.t[self.i:self.i + 10]!r}")
            self.i = m.end()
            out[m.group(1)] = self.value()

    def obj(self):
        self.i += 1  # past {
        return self.fields("}")


def _op(query: str) -> str:
    for op in ("podFindAndDeployOnDemand", "podStop", "podResume", "podTerminate", "gpuTypes", "networkVolumes"):
        if op in query:
            return "create" if op == "podFindAndDeployOnDemand" else op
    return "pod" if "pod(input" in query else "?"


def parse_args(query: str, op: str) -> dict:
    j = query.index("(", query.index(op) + len(op))
    return _Parser(query, j + 1).fields(")")


class RunPodAPI:
    def __init__(self, api_key="rp-test-key"):
        self.api_key = api_key
        self.pods, self.calls, self.created = {}, [], []
        self.resume_gpus = None  # None: resume gives the requested GPUs; 0: no GPU free on the host
        self.uptime_s = 3600  # the current session's uptime of every pod (tests set it)
        self.uptime_resets_on_resume = True
        self.volumes = [{"id": "vol-1", "dataCenterId": "EU-RO-1"}]
        self.failures = []  # [op, kind, remaining]: the next matching calls fail this way (fail())
        self.delay_s = 3.0  # how late a "timeout" answer comes
        self.containers = {}  # pod id -> PID 1 of its container, signalled on podStop/podTerminate as Docker does
        self.stop_grace_s = 10.0  # docker stop's default grace before SIGKILL
        self._n = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()

    def fail(self, op: str, kind: str, n: int = 1) -> None:
        """The next `n` calls of `op` ("podStop", "podResume", "pod", "create", "gpuTypes" or "*") fail as `kind`."""
        self.failures.append([op, kind, n])

    def _failure_for(self, op: str):
        for f in self.failures:
            if f[2] > 0 and f[0] in (op, "*"):
                f[2] -= 1
                return f[1]
        return None

    def _stop_container(self, pod_id: str) -> None:
        pid = self.containers.get(pod_id)
        if pid is None:
            return

        def kill():
            for sig, wait in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
                deadline = time.time() + wait
                while time.time() < deadline:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        return
                    time.sleep(0.1)

        threading.Thread(target=kill, daemon=True).start()

    def _handler(self):
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                if self.path != "/graphql":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {api.api_key}":
                    return self._send(401, {"errors": [{"message": "Unauthorized"}]})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                kind = api._failure_for(_op(body["query"]))
                api.calls.append(("failed", _op(body["query"]), kind)) if kind else None
                if kind == "timeout":
                    time.sleep(api.delay_s)
                elif kind == "drop":
                    self.close_connection = True
                    return self.connection.shutdown(2)
                elif kind == "graphql":
                    return self._send(200, {"errors": [{"message": "Something went wrong. Please try again later or "
                                                                  "contact support."}]})
                elif kind == "nogpu":
                    msg = ("There are not enough free GPUs on the host machine to start this pod."
                           if "podResume" in body["query"] else "There are no longer any instances available with the "
                           "requested specifications. Please refresh and try again.")
                    return self._send(200, {"errors": [{"message": msg}]})
                elif kind == "refused":
                    return self._send(200, {"errors": [{"message": "Pods with network volumes attached cannot be "
                                                                  "stopped, only terminated."}]})
                elif kind == "http500":
                    return self._send(500, {"code": "INTERNAL_SERVER_ERROR"})
                elif kind == "html502":
                    return self._send(502, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 "
                                           "Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>")
                elif kind == "429":
                    return self._send(429, "Too Many Requests")
                try:
                    self._send(200, {"data": api.handle(body["query"])})
                except GraphQLSyntaxError as e:
                    self._send(200, {"errors": [{"message": str(e)}]})

            def _send(self, code, obj):
                text = isinstance(obj, str)
                data = (obj if text else json.dumps(obj)).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "text/html" if text else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first ("timeout")
                    pass

        return H

    def _pod_view(self, pod):
        return {"id": pod["id"], "name": pod["name"], "desiredStatus": pod["desiredStatus"], "gpuCount": pod["gpuCount"],
                "costPerHr": pod["costPerHr"], "uptimeSeconds": self.uptime_s, "imageName": pod["imageName"],
                "env": [f"{e['key']}={e['value']}" for e in pod["env"]], "dockerArgs": pod["dockerArgs"],
                "machine": {"gpuDisplayName": pod["gpuTypeId"]}, "runtime": None}

    def handle(self, q):
        if "gpuTypes" in q:
            gid = parse_args(q, "gpuTypes")["input"]["id"]
            self.calls.append(("gpuTypes", gid))
            g = GPUS.get(gid)
            return {"gpuTypes": [] if not g else [{"id": gid, "displayName": gid, "memoryInGb": 80, **g,
                                                    "lowestPrice": {"minimumBidPrice": 0.9, "uninterruptablePrice": g["securePrice"]}}]}
        if "networkVolumes" in q:
            return {"myself": {"id": "user-1", "pubKey": "", "networkVolumes": self.volumes}}
        if "podFindAndDeployOnDemand" in q:
            inp = parse_args(q, "podFindAndDeployOnDemand")["input"]
            bad = [v for v in inp.get("allowedCudaVersions", []) if v not in CUDA_VERSIONS]
            if bad:
                raise GraphQLSyntaxError(f"Variable allowedCudaVersions got invalid value {bad[0]!r}")
            self._n += 1
            pod = {"id": f"pod-{self._n}", "desiredStatus": "RUNNING", "costPerHr": GPUS[inp["gpuTypeId"]]["securePrice"]
                   * inp.get("gpuCount", 1), "env": inp.get("env", []), "dockerArgs": inp.get("dockerArgs"), **inp}
            self.pods[pod["id"]] = pod
            self.created.append(inp)
            self.calls.append(("create", pod["id"]))
            return {"podFindAndDeployOnDemand": {"id": pod["id"], "imageName": inp["imageName"], "env": [], "machineId": "m1",
                                                 "machine": {"podHostId": "h1"}}}
        for op in ("podStop", "podResume", "podTerminate"):
            if op in q:
                inp = parse_args(q, op)["input"]
                pod = self.pods.get(inp["podId"])
                self.calls.append((op, inp["podId"]))
                if pod is None:
                    raise GraphQLSyntaxError(f"pod {inp['podId']} not found")
                if op == "podStop":
                    pod["desiredStatus"] = "EXITED"
                    self._stop_container(pod["id"])
                    return {"podStop": {"id": pod["id"], "desiredStatus": "EXITED"}}
                if op == "podTerminate":
                    del self.pods[pod["id"]]
                    self._stop_container(pod["id"])
                    return {"podTerminate": None}
                gpus = inp["gpuCount"] if self.resume_gpus is None else self.resume_gpus
                pod["gpuCount"], pod["desiredStatus"] = gpus, "RUNNING"
                if self.uptime_resets_on_resume:
                    self.uptime_s = 0
                return {"podResume": {"id": pod["id"], "desiredStatus": "RUNNING", "imageName": pod["imageName"],
                                      "env": [], "machineId": "m1", "machine": {"podHostId": "h1"}}}
        if "pod(input" in q:
            pid = parse_args(q, "pod")["input"]["podId"]
            return {"pod": self._pod_view(self.pods[pid]) if pid in self.pods else None}
        raise GraphQLSyntaxError("unsupported operation in test server")
