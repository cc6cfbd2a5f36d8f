"""Slow senders against a real deploy.serve on loopback: a client that trickles its headers,
sends nothing at all, or stalls in its body is closed with a 408 and one WARNING line, while
a client that sends at an ordinary pace is answered."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from samples.generate import IMAGES_DIR
from tests.deploy.serving import start_server

TIMEOUT_S = 1.0  # the server's --header-timeout-s and --body-timeout-s here
IMAGE = sorted(IMAGES_DIR.glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def slow_server(demo_export, tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("slow") / "serve.log", "--model", str(demo_export.path),
                           "--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S))
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
