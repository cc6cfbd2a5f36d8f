"""A real deploy.serve on loopback, bounded as a whole: slow senders are closed with a 408, and
requests beyond the server-wide budgets wait, then get a 503 with Retry-After, while health answers.

A client that trickles its headers, sends nothing at all, or stalls in its body is closed
with a 408 and one WARNING line, while a client that sends at an ordinary pace is answered.
Request bytes (REST and gRPC together) and decoded pixels are held to --max-inflight-mb and
--max-inflight-pixels, and gRPC calls to --max-grpc-calls.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import cv2
import httpx
import numpy as np
import pytest

from samples.generate import IMAGES_DIR
from tests.deploy.serving import start_server

TIMEOUT_S = 1.0  # the server's --header-timeout-s and --body-timeout-s here
INFLIGHT_MB = 4  # --max-inflight-mb
WAIT_S = 2.0  # --busy-wait-s
MAX_PIXELS = 12_000_000  # --max-pixels, and --max-inflight-pixels: one such image decodes at a time
GRPC_CALLS = 2  # --max-grpc-calls
IMAGE = sorted(IMAGES_DIR.glob("*.jpg"))[0]
INFER = "/v2/models/googlenet-image/infer"


@pytest.fixture(scope="module")
def slow_server(demo_export, tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("slow") / "serve.log", "--model", str(demo_export.path),
                           "--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S),
                           "--max-inflight-mb", str(INFLIGHT_MB), "--busy-wait-s", str(WAIT_S),
                           "--max-pixels", str(MAX_PIXELS), "--max-inflight-pixels", str(MAX_PIXELS),
                           "--max-grpc-calls", str(GRPC_CALLS))
    yield running
    running.stop()


def _connect(server) -> socket.socket:
    host, port = server.http.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.3) -> tuple[bytes, float]:
    """Send ``trickle`` one byte every ``every`` s until the server closes; (what it answered, seconds)."""
    started = time.monotonic()
    answer = b""
    sock.settimeout(every)
    for byte in [trickle[i:i + 1] for i in range(len(trickle))] or [b""] * 100:
        try:
            if byte:
                sock.sendall(byte)
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
    else:
        pytest.fail(f"the server kept the connection open for {time.monotonic() - started:.1f} s")
    return answer, time.monotonic() - started


def _refusals(server, since: int) -> list[str]:
    time.sleep(0.2)
    return [line for line in server.log_text()[since:].splitlines() if "408" in line and "refused" in line]


@pytest.mark.parametrize("what, sent", [
    ("headers", b"POST /v2/models/googlenet-image/infer HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60),
    ("nothing", b""),
])
def test_a_trickling_or_silent_client_is_closed_with_a_408(slow_server, what, sent):
    since = len(slow_server.log_text())
    with _connect(slow_server) as sock:
        answer, seconds = _closed_after(sock, sent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT_S <= seconds < TIMEOUT_S + 2, seconds  # the deadline runs from the first byte, not the last
    refusals = _refusals(slow_server, since)
    assert len(refusals) == 1 and "the request's headers did not arrive within 1 s (--header-timeout-s)" in refusals[0]


def test_a_body_that_stalls_is_closed_with_a_408(slow_server):
    since = len(slow_server.log_text())
    body = IMAGE.read_bytes()
    with _connect(slow_server) as sock:
        sock.sendall(b"POST /v2/models/googlenet-image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        answer, seconds = _closed_after(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT_S <= seconds < TIMEOUT_S + 2, seconds
    refusals = _refusals(slow_server, since)
    assert len(refusals) == 1 and "more of the request's body did not arrive within 1 s (--body-timeout-s)" in refusals[0]


def test_a_body_sent_in_pieces_under_the_timeout_is_answered(slow_server):
    """A body that pauses, but each time for less than --body-timeout-s, is classified."""
    body = IMAGE.read_bytes()
    pieces = [body[i:i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]

    def paced():
        for piece in pieces:
            yield piece
            time.sleep(TIMEOUT_S * 0.6)

    response = httpx.post(f"http://{slow_server.http}/v2/models/googlenet-image/infer", content=paced(),
                          headers={"Content-Type": "image/jpeg", "Content-Length": str(len(body))}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"][0] == IMAGE.name.rsplit("_", 1)[0]


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_timeout_that_would_turn_the_deadline_off_is_refused(value):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "deploy.serve", "--header-timeout-s", value], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--header-timeout-s: must be a finite number of seconds above 0" in proc.stderr


def _status(pid: int, key: str) -> float:
    """A /proc/PID/status memory figure in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def test_a_full_byte_budget_answers_503_with_retry_after_on_rest_and_grpc_while_health_answers(slow_server):
    """A legal body that takes its time holds the whole --max-inflight-mb: the next requests wait
    --busy-wait-s, then are refused in one line each (a gRPC call beyond --max-grpc-calls at once, before its
    message is read); health never waits; when the holder goes, all is given back."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    since = len(slow_server.log_text())
    image = IMAGE.read_bytes()
    with _connect(slow_server) as holder:
        holder.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                       b"Content-Length: %d\r\n\r\n" % (INFLIGHT_MB << 20) + b"x" * 1000)
        stop = threading.Event()

        def keep_sending():  # a byte well within --body-timeout-s: slow, but not a slow sender
            while not stop.wait(TIMEOUT_S / 4):
                holder.sendall(b"x")

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            time.sleep(0.3)

            def rest():
                started = time.monotonic()
                answer = httpx.post(f"http://{slow_server.http}{INFER}", content=image,
                                    headers={"Content-Type": "image/jpeg"}, timeout=30)
                return answer, time.monotonic() - started

            def grpc():
                client = grpcclient.InferenceServerClient(slow_server.grpc)
                tensor = grpcclient.InferInput("image", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([image], dtype=object))
                try:
                    client.infer("googlenet-image", [tensor], client_timeout=30)
                except InferenceServerException as exc:
                    return exc
                return None

            with concurrent.futures.ThreadPoolExecutor(1 + GRPC_CALLS + 1) as pool:
                rest_call, grpc_calls = pool.submit(rest), [pool.submit(grpc) for _ in range(GRPC_CALLS + 1)]
                health = []
                while not (rest_call.done() and all(call.done() for call in grpc_calls)):
                    started = time.monotonic()
                    for route in ("live", "ready"):
                        assert httpx.get(f"http://{slow_server.http}/v2/health/{route}", timeout=5).status_code == 200
                    health.append(time.monotonic() - started)
                answer, rest_s = rest_call.result()
                refused = [call.result() for call in grpc_calls]
        finally:
            stop.set()
            sender.join()
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["error"].startswith(f"server busy: a request body of {len(image):,} bytes needs")
    assert WAIT_S <= rest_s < WAIT_S + 2
    assert None not in refused, refused
    statuses = sorted(exc.status() for exc in refused)
    assert statuses == ["StatusCode.RESOURCE_EXHAUSTED"] + ["StatusCode.UNAVAILABLE"] * GRPC_CALLS, refused
    assert all("server busy: a gRPC message of" in exc.message() for exc in refused
               if exc.status() == "StatusCode.UNAVAILABLE")
    assert health and max(health) < 1, health  # live and ready, together, while all of them waited
    lines = [line for line in slow_server.log_text()[since:].splitlines() if "server busy" in line]
    assert len(lines) == 1 + GRPC_CALLS, lines
    assert sum(" 503 " in line for line in lines) == 1 and sum("UNAVAILABLE" in line for line in lines) == GRPC_CALLS
    # the holder's connection closed: its share is given back, and the next request is answered
    answer = httpx.post(f"http://{slow_server.http}{INFER}", content=image, headers={"Content-Type": "image/jpeg"},
                        timeout=30)
    assert answer.status_code == 200, answer.text


def test_concurrent_large_images_decode_within_the_pixel_budget(slow_server):
    """Four uploads of an image at --max-pixels at once: each is answered, and the server's memory grows
    by about one decode (7 bytes a pixel: OpenCV's RGB array and Pillow's copy for the resize), not four."""
    png = cv2.imencode(".png", np.full((3000, MAX_PIXELS // 3000, 3), 90, np.uint8))[1].tobytes()
    pid = slow_server.process.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to now
    base = _status(pid, "VmRSS")
    barrier = threading.Barrier(4)

    def upload():
        barrier.wait()
        return httpx.post(f"http://{slow_server.http}{INFER}", content=png, headers={"Content-Type": "image/png"},
                          timeout=60)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: upload(), range(4)))
    grew = _status(pid, "VmHWM") - base
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    one_decode = 7 * MAX_PIXELS / 2**20
    assert grew < one_decode * 1.6, f"the server grew by {grew:.0f} MB; one decode is {one_decode:.0f} MB"
