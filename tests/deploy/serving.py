"""Start a real ``deploy.serve`` process on free loopback ports and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_PIXELS = 1_000_000  # the module server's image limit; the samples are 0.15 MP
SAMPLES = sorted((REPO / "samples" / "images").glob("*.jpg"))[:3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    http: str
    grpc: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(log: Path, *arguments: str, ready_within: float = 90, module: str = "deploy.serve") -> Server:
    """``python -m deploy.serve`` (or ``module``, which takes its flags) on free loopback ports; returns once
    both protocols say ready."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http, grpc = free_port(), free_port()
    command = [sys.executable, "-m", module, "--http-port", str(http), "--grpc-port", str(grpc), *arguments]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    server = Server(process, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"deploy.serve exited with {process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if (httpclient.InferenceServerClient(server.http).is_server_ready()
                    and grpcclient.InferenceServerClient(server.grpc).is_server_ready()):
                return server
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.5)
    server.stop()
    pytest.fail(f"deploy.serve not ready in {ready_within} s:\n{server.log_text()[-3000:]}")
