"""A repeatable pressure measurement of ``python -m deploy.serve`` under hostile but legal concurrent load.

    .venv/bin/python tests/deploy/pressure.py LOAD [LOAD ...] [--server-args "..."] [--count N] [--json]

LOAD is ``png132``, ``png132x2``, ``grpc60``, ``rest63``, ``mixed`` or ``all`` (each in turn, one
server per load). For each load this starts a real server (``tests.deploy.serving.start_server``,
free loopback ports, ``--server-args`` split with shlex and passed through as they are), then:

- a health prober in its own process GETs ``/v2/health/live`` and ``/v2/health/ready`` in turn
  every 100 ms (one kept-alive ``http.client`` connection, a fresh one after a failure, or a fresh
  one per probe with ``--probe-fresh``; 30 s timeout), from 1 s before the load until 1 s after it;
- a thread polls the server's VmRSS every 50 ms over the same window;
- N client threads, each with its own connection, wait on one ``threading.Barrier`` and send one
  request each at the same moment; each answer's status (HTTP code, or gRPC status name) and time
  are kept, and a connection closed or reset with no answer is counted as ``dropped``;
- the server's VmHWM is read, the server is stopped (SIGTERM), and one JSON line is printed.

The loads (default counts):

``png132``   16 plain uploads of one 12000 x 11000 (132 MP) solid-colour PNG (about 400 KB, cached in
             /tmp/pressure_png132.png), Content-Type image/png, to /v2/models/googlenet-image/infer
``png132x2``  8 binary-extension requests (Inference-Header-Content-Length) of two such PNGs, BYTES
             input "image" of shape [2]
``grpc60``   40 gRPC ModelInfer requests carrying one 60 MiB BYTES element of random bytes
``rest63``   50 REST plain bodies of 63 MiB random bytes, Content-Type application/octet-stream
``mixed``    png132 x8, grpc60 x20 and rest63 x20 at once (``--count`` does not apply)

Every client shares one payload object: 50 x 63 MiB is one 63 MiB ``bytes`` in this process. REST
requests go over raw sockets (``Connection: close``), so an answer the server gives before it has
read the whole body is still read, and a connection that ends with no answer is told apart from
one that does. gRPC requests are serialized once and sent as those bytes on a channel per thread
(``grpc.use_local_subchannel_pool``, so each thread has its own TCP connection): tritonclient's
``InferenceServerClient.infer`` would copy the 60 MiB three times per thread.

The JSON fields:

``base_rss_mb``               the server's VmRSS right after it said ready (model loaded, idle)
``base_hwm_mb``               its VmHWM then: the peak of starting up, before any load
``peak_rss_mb``               its VmHWM after the load (the peak over its whole life)
``peak_rss_during_load_mb``   the highest VmRSS the 50 ms poll saw from the release to 1 s after
                              the last answer
``health_*``                  the prober's probes: count, p50/p99/max latency in ms (a failed probe
                              counts with the time it took to fail), failures (an exception or a
                              status other than 200) and the first 3 of them
``statuses``                  per part of the load: answers by HTTP code or gRPC status name, plus
                              ``dropped`` and ``timeout`` (no answer within ``--timeout``)
``dropped``                   all parts: connections closed or reset with no answer; a gRPC
                              UNAVAILABLE whose details say the connection failed ("Socket
                              closed", "Connection reset", ...) counts here, one the server
                              sent ("server busy ...") under its status name
``send_errors``               REST requests whose body could not all be sent (the server answered
                              or closed first); their answers, if any, are still counted
``messages``                  per part and status, the first answer's error text (for a 200 from
                              googlenet-image, the image's ``error`` entry)
``request_s``                 min / p50 / max seconds from the release to each answer (or failure)
``wall_s``                    seconds from the release to the last answer
``log_warning_error_lines``   server log lines with WARNING or ERROR from its ready until the SIGTERM,
``log_first``                 the first 3 of them; ``log_tracebacks`` counts "Traceback" lines;
``log_at_shutdown``           the same counts for what it logged after the SIGTERM
``server_exit_during_load``   the server's exit code if it died during the load (null if not)
``stop_s`` / ``exit_code``    how long SIGTERM took to stop it, and its exit status
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import shlex
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: tests/deploy is sys.path[0], not the repository
    sys.path.insert(0, str(REPO))

IMAGE_PATH = "/v2/models/googlenet-image/infer"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
PNG_CACHE = Path("/tmp/pressure_png132.png")
PNG_SHAPE = (11000, 12000, 3)  # 132,000,000 pixels: just under the server's default --max-pixels, 134217728
PNG_COLOUR = (40, 90, 160)
GRPC_BYTES = 60 << 20
REST_BYTES = 63 << 20
SEED = 20240601
CLIENT_TIMEOUT_S = 120.0
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 30.0
RSS_POLL_S = 0.05
# gRPC UNAVAILABLE with one of these in its details is the connection failing, not an answer (a server's own
# UNAVAILABLE, "server busy ..." or "... not ready", is counted under its status name).
TRANSPORT_FAILURE = re.compile(r"socket closed|connection reset|broken pipe|failed to connect|connection refused|"
                               r"stream removed|goaway|end of file|\bEOF\b|recvmsg|sendmsg|connection aborted", re.I)
PADDING_S = 1.0  # the prober and the RSS poll run this long before the release and after the last answer

# Each load: its parts, (kind, default count); a kind names a payload and a sender.
LOADS: dict[str, list[tuple[str, int]]] = {
    "png132": [("png132", 16)],
    "png132x2": [("png132x2", 8)],
    "grpc60": [("grpc60", 40)],
    "rest63": [("rest63", 50)],
    "mixed": [("png132", 8), ("grpc60", 20), ("rest63", 20)],
}


# --- payloads: built once, shared by every client thread --------------------------------------------------------------

def png132() -> bytes:
    """A 12000 x 11000 solid-colour PNG (about 400 KB), cached in /tmp so reruns need not encode it again."""
    try:
        data = PNG_CACHE.read_bytes()
        width, height = struct.unpack(">II", data[16:24])
        if data[:8] == b"\x89PNG\r\n\x1a\n" and (height, width) == PNG_SHAPE[:2]:
            return data
    except (OSError, struct.error):
        pass
    import cv2
    import numpy as np

    image = np.empty(PNG_SHAPE, np.uint8)
    image[...] = PNG_COLOUR
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    del image
    if not ok:
        raise RuntimeError("cv2.imencode could not encode the 132 MP PNG")
    data = encoded.tobytes()
    partial = PNG_CACHE.with_name(f"{PNG_CACHE.name}.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, PNG_CACHE)
    return data


def random_bytes(size: int, seed: int = SEED) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


def bytes_tensor(elements: list[bytes]) -> bytes:
    """A raw BYTES tensor: each element as a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(elements: list[bytes]) -> tuple[bytes, int]:
    """A binary-extension body for googlenet-image (BYTES "image" [len(elements)]) and its header length."""
    raw = bytes_tensor(elements)
    header = json.dumps({"inputs": [{"name": "image", "shape": [len(elements)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, len(header)


def grpc_request(size: int = GRPC_BYTES) -> bytes:
    """A serialized ModelInferRequest to googlenet-image: one BYTES element of ``size`` random bytes."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="googlenet-image")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(bytes_tensor([random_bytes(size)]))
    return request.SerializeToString()


@dataclass
class Payload:
    """What one kind of client sends: a REST (headers, body) or a serialized gRPC request."""

    kind: str
    protocol: str  # "rest" or "grpc"
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def payload(kind: str) -> Payload:
    if kind == "png132":
        return Payload(kind, "rest", png132(), {"Content-Type": "image/png"})
    if kind == "png132x2":
        image = png132()
        body, header_length = binary_request([image, image])
        return Payload(kind, "rest", body, {"Content-Type": "application/octet-stream",
                                            "Inference-Header-Content-Length": str(header_length)})
    if kind == "grpc60":
        return Payload(kind, "grpc", grpc_request())
    if kind == "rest63":
        return Payload(kind, "rest", random_bytes(REST_BYTES), {"Content-Type": "application/octet-stream"})
    raise ValueError(f"unknown kind {kind!r}")


# --- the health prober, in its own process ----------------------------------------------------------------------------

def probe_health(address: str, stop, ready, results, interval: float = PROBE_INTERVAL_S,
                 timeout: float = PROBE_TIMEOUT_S, fresh: bool = False) -> None:
    """GET /v2/health/live and /v2/health/ready in turn every ``interval`` s until ``stop`` is set.

    Sets ``ready`` after the first probe; at the end sends ``{"probes": [(start, ms, ok)], "failures":
    [text]}`` on the ``results`` pipe (start: time.monotonic(), system-wide on Linux).
    """
    host, port = address.rsplit(":", 1)
    paths = ("/v2/health/live", "/v2/health/ready")
    probes, failures = [], []
    connection = None
    tick = time.monotonic()
    n = 0
    while not stop.is_set():
        path = paths[n % 2]
        n += 1
        start = time.monotonic()
        ok = False
        try:
            if connection is None:
                connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
            if not ok:
                failures.append(f"{time.monotonic() - start:.3f}s {path}: HTTP {response.status}")
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            failures.append(f"{time.monotonic() - start:.3f}s {path}: {type(exc).__name__}: {exc}")
            if connection is not None:
                connection.close()
            connection = None
        probes.append((start, (time.monotonic() - start) * 1e3, ok))
        if fresh and connection is not None:
            connection.close()
            connection = None
        ready.set()
        tick += interval
        now = time.monotonic()
        if tick < now:  # late: no burst to catch up
            tick = now
        stop.wait(tick - now)
    if connection is not None:
        connection.close()
    results.send({"probes": probes, "failures": failures})
    results.close()


class HealthProber:
    """:func:`probe_health` in a spawned process: ``start()``, the load, ``stop()`` -> its results."""

    def __init__(self, address: str, fresh: bool = False) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: this process has threads and large buffers
        self._stop, self._ready = context.Event(), context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=probe_health, args=(address, self._stop, self._ready, send),
                                        kwargs={"fresh": fresh}, name="health-prober", daemon=True)
        self._send = send

    def start(self, within: float = 60) -> None:
        self._process.start()
        self._send.close()  # the child holds its end
        if not self._ready.wait(within):
            raise RuntimeError(f"the health prober did not probe within {within} s")

    def stop(self) -> dict:
        self._stop.set()
        results = {"probes": [], "failures": ["the prober sent no results"]}
        if self._receive.poll(PROBE_TIMEOUT_S + 10):
            results = self._receive.recv()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        return results


# --- server memory ----------------------------------------------------------------------------------------------------

def proc_status_mb(pid: int, key: str) -> float | None:
    """VmRSS or VmHWM of ``pid`` in MB (MiB), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


class RssPoller(threading.Thread):
    """Polls VmRSS every ``interval`` s until stopped; ``peak_mb`` the highest seen."""

    def __init__(self, pid: int, interval: float = RSS_POLL_S) -> None:
        super().__init__(name="rss-poller", daemon=True)
        self.pid, self.interval, self.peak_mb, self.samples = pid, interval, None, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = proc_status_mb(self.pid, "VmRSS")
            if rss is not None:
                self.samples += 1
                self.peak_mb = rss if self.peak_mb is None else max(self.peak_mb, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> float | None:
        self._stop_event.set()
        self.join()
        return self.peak_mb


# --- the clients ------------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str
    status: str  # an HTTP code, a gRPC status name, "dropped", "timeout" or "client-error"
    seconds: float
    message: str = ""
    send_error: str = ""


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _answer_message(status: str, body: bytes) -> str:
    """The error text of an answer: ``{"error": ...}``, or a googlenet-image 200's first ``error`` entry."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:200].decode("latin-1")
    if isinstance(answer, dict):
        if "error" in answer:
            return str(answer["error"])[:300]
        for output in answer.get("outputs") or []:
            if output.get("name") == "error":
                return str((output.get("data") or [""])[0])[:300]
    return body[:200].decode("latin-1")


def rest_client(address: str, item: Payload, barrier: threading.Barrier, timeout: float) -> Outcome:
    """Connect, wait for the barrier, POST the body over a raw socket and read the whole answer."""
    head = [f"POST {IMAGE_PATH} HTTP/1.1", f"Host: {address}", f"Content-Length: {len(item.body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in item.headers.items())]
    head = ("\r\n".join(head) + "\r\n\r\n").encode()
    sock = socket.create_connection(_host_port(address), timeout=timeout)
    try:
        barrier.wait()
        start = time.monotonic()
        send_error = ""
        try:
            sock.sendall(head)
            sock.sendall(item.body)  # the shared bytes: no copy
        except OSError as exc:  # the server answered or closed first: read what it said, if anything
            send_error = f"{type(exc).__name__}: {exc}"
        data = b""
        try:
            while chunk := sock.recv(1 << 16):
                data += chunk
        except TimeoutError:
            return Outcome(item.kind, "timeout", time.monotonic() - start, f"no answer within {timeout} s", send_error)
        except OSError as exc:
            if not data:
                return Outcome(item.kind, "dropped", time.monotonic() - start, f"{type(exc).__name__}: {exc}",
                               send_error)
        seconds = time.monotonic() - start
        if not data:
            return Outcome(item.kind, "dropped", seconds, "connection closed with no answer", send_error)
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        if not match:
            return Outcome(item.kind, "dropped", seconds, f"not an HTTP answer: {data[:80]!r}", send_error)
        status = match.group(1).decode()
        _, _, body = data.partition(b"\r\n\r\n")
        return Outcome(item.kind, status, seconds, _answer_message(status, body), send_error)
    finally:
        sock.close()


def _grpc_error_entry(response) -> str:
    names = [o.name for o in response.outputs]
    if "error" not in names or len(response.raw_output_contents) <= names.index("error"):
        return ""
    raw = response.raw_output_contents[names.index("error")]
    (size,) = struct.unpack_from("<I", raw, 0)
    return raw[4:4 + size].decode(errors="replace")[:300]


def grpc_client(address: str, item: Payload, barrier: threading.Barrier, timeout: float) -> Outcome:
    """Its own channel and TCP connection, ready before the barrier; then one ModelInfer of the serialized request."""
    import grpc
    from tritonclient.grpc import service_pb2

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
               ("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        infer = channel.unary_unary(GRPC_METHOD, request_serializer=None,  # the bytes are sent as they are
                                    response_deserializer=service_pb2.ModelInferResponse.FromString)
        barrier.wait()
        start = time.monotonic()
        try:
            response = infer(item.body, timeout=timeout)
        except grpc.RpcError as exc:
            seconds = time.monotonic() - start
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and TRANSPORT_FAILURE.search(details):
                return Outcome(item.kind, "dropped", seconds, f"UNAVAILABLE {details}"[:300])
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(item.kind, "timeout", seconds, details[:300])
            return Outcome(item.kind, code.name, seconds, details[:300])
        return Outcome(item.kind, "OK", time.monotonic() - start, _grpc_error_entry(response))


def _client(server, item: Payload, barrier: threading.Barrier, timeout: float, outcomes: list) -> None:
    try:
        if item.protocol == "rest":
            outcome = rest_client(server.http, item, barrier, timeout)
        else:
            outcome = grpc_client(server.grpc, item, barrier, timeout)
    except threading.BrokenBarrierError:
        outcome = Outcome(item.kind, "client-error", 0.0, "the barrier was broken")
    except Exception as exc:  # noqa: BLE001 - a client that fails before sending is a result too
        barrier.abort()  # the others must not wait for it
        outcome = Outcome(item.kind, "client-error", 0.0, f"{type(exc).__name__}: {exc}"[:300])
    outcomes.append(outcome)


# --- one load ---------------------------------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))]


def _round(value, digits=1):
    return None if value is None else round(value, digits)


def log_summary(text: str) -> dict:
    lines = [line for line in text.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    return {"log_warning_error_lines": len(lines), "log_first": [line[:400] for line in lines[:3]],
            "log_tracebacks": sum("Traceback" in line for line in text.splitlines())}


def parts_of(load: str, count: int | None) -> list[tuple[str, int]]:
    parts = LOADS[load]
    if count is not None and len(parts) == 1:
        parts = [(parts[0][0], count)]
    return parts


def run_load(load: str, *, server_args: str = "", count: int | None = None, timeout: float = CLIENT_TIMEOUT_S,
             probe_fresh: bool = False, log_dir: Path | None = None) -> dict:
    """Start a server with ``server_args``, fire ``load`` at it, stop it; the measurements as a dict."""
    from tests.deploy.serving import start_server

    parts = parts_of(load, count)
    items = []
    for kind, n in parts:
        item = payload(kind)
        items += [item] * n
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"pressure-{load}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "serve.log"
    try:
        server = start_server(log, *shlex.split(server_args))
    except BaseException as exc:  # pytest.fail raises an OutcomeException
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RuntimeError(f"the server did not start: {exc}") from None
    result: dict = {"load": load, "count": len(items), "parts": dict(parts), "server_args": server_args}
    try:
        pid = server.process.pid
        result["base_rss_mb"] = proc_status_mb(pid, "VmRSS")
        result["base_hwm_mb"] = proc_status_mb(pid, "VmHWM")
        log_offset = len(server.log_text())
        prober = HealthProber(server.http, fresh=probe_fresh)
        prober.start()
        outcomes: list[Outcome] = []
        barrier = threading.Barrier(len(items) + 1)
        threads = [threading.Thread(target=_client, args=(server, item, barrier, timeout, outcomes), daemon=True,
                                    name=f"client-{i}") for i, item in enumerate(items)]
        for thread in threads:
            thread.start()
        time.sleep(PADDING_S)  # the prober's baseline; the clients connect meanwhile
        poller = RssPoller(pid)
        poller.start()
        try:
            barrier.wait(60)  # every client connected (gRPC: channel ready)
        except threading.BrokenBarrierError:
            pass  # a client failed before sending; its error is in its outcome, the others sent nothing
        released = time.monotonic()
        deadline = released + timeout + 30
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        finished = time.monotonic()
        result["server_exit_during_load"] = server.process.poll()
        time.sleep(PADDING_S)
        result["peak_rss_during_load_mb"] = poller.stop()
        result["rss_samples"] = poller.samples
        health = prober.stop()
        result["peak_rss_mb"] = proc_status_mb(pid, "VmHWM")
        result["wall_s"] = round(finished - released, 2)
        result["not_finished"] = sum(thread.is_alive() for thread in threads)
    finally:
        stop_offset = len(server.log_text())
        stop_start = time.monotonic()
        result["exit_code"] = server.stop()
        result["stop_s"] = round(time.monotonic() - stop_start, 2)
    latencies = [ms for _, ms, _ in health["probes"]]
    window = [ms for start, ms, _ in health["probes"] if released <= start <= finished]
    result.update({
        "health_probes": len(latencies),
        "health_p50_ms": _round(_percentile(latencies, 50)),
        "health_p99_ms": _round(_percentile(latencies, 99)),
        "health_max_ms": _round(max(latencies, default=None)),
        "health_max_ms_in_load": _round(max(window, default=None)),
        "health_failures": len(health["failures"]),
        "health_first_failures": health["failures"][:3],
    })
    statuses: dict[str, Counter] = defaultdict(Counter)
    messages: dict[str, dict[str, str]] = defaultdict(dict)
    for outcome in list(outcomes):
        statuses[outcome.kind][outcome.status] += 1
        messages[outcome.kind].setdefault(outcome.status, outcome.message)
    seconds = [o.seconds for o in outcomes if o.status != "client-error"]
    result.update({
        "statuses": {kind: dict(counter) for kind, counter in statuses.items()},
        "dropped": sum(o.status == "dropped" for o in outcomes),
        "send_errors": sum(bool(o.send_error) for o in outcomes),
        "first_send_error": next((o.send_error for o in outcomes if o.send_error), ""),
        "messages": {kind: dict(m) for kind, m in messages.items()},
        "request_s": {"min": _round(min(seconds, default=None), 2), "p50": _round(_percentile(seconds, 50), 2),
                      "max": _round(max(seconds, default=None), 2)},
    })
    text = server.log_text()
    result.update(log_summary(text[log_offset:stop_offset]))
    shutdown = log_summary(text[stop_offset:])
    result["log_at_shutdown"] = {"warning_error_lines": shutdown["log_warning_error_lines"],
                                 "tracebacks": shutdown["log_tracebacks"], "first": shutdown["log_first"][:1]}
    result["log"] = str(log)
    return result


def summary_lines(result: dict) -> list[str]:
    return [
        f"{result['load']}: {result['count']} requests in {result['wall_s']} s; statuses {result['statuses']}, "
        f"dropped {result['dropped']}, not finished {result['not_finished']}",
        f"  server RSS: base {result['base_rss_mb']} MB, peak during load {result['peak_rss_during_load_mb']} MB, "
        f"VmHWM {result['peak_rss_mb']} MB (at ready {result['base_hwm_mb']} MB)",
        f"  health: {result['health_probes']} probes, p50 {result['health_p50_ms']} ms, p99 {result['health_p99_ms']} "
        f"ms, max {result['health_max_ms']} ms, failures {result['health_failures']}",
        f"  log: {result['log_warning_error_lines']} WARNING/ERROR lines ({result['log']})",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/deploy/pressure.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loads", nargs="+", metavar="LOAD", choices=[*LOADS, "all"],
                        help=f"{', '.join(LOADS)} or all")
    parser.add_argument("--server-args", default="", help="extra deploy.serve flags, one string (split with shlex)")
    parser.add_argument("--count", type=int, help="requests in a single-part load (default: the load's own)")
    parser.add_argument("--json", action="store_true", help="print only the JSON lines, no summary on stderr")
    parser.add_argument("--timeout", type=float, default=CLIENT_TIMEOUT_S, help="each client's timeout, seconds")
    parser.add_argument("--probe-fresh", action="store_true", help="a fresh health connection per probe")
    parser.add_argument("--log-dir", type=Path, help="where the server log goes (default: a new /tmp folder)")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):  # `--server-args "--max-inflight-mb 64"`: argparse takes the value for a flag
        if arg == "--server-args":
            argv[i:i + 2] = [f"--server-args={argv[i + 1]}"]
            break
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    loads = list(LOADS) if "all" in args.loads else args.loads
    status = 0
    for load in loads:
        try:
            result = run_load(load, server_args=args.server_args, count=args.count, timeout=args.timeout,
                              probe_fresh=args.probe_fresh,
                              log_dir=args.log_dir / load if args.log_dir else None)
        except Exception as exc:  # noqa: BLE001 - one line per load, then the next
            result = {"load": load, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            status = 1
        print(json.dumps(result), flush=True)
        if not args.json and "error" not in result:
            print("\n".join(summary_lines(result)), file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
