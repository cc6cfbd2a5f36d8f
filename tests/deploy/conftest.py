"""A real ``deploy.serve`` process on loopback, started once per module that asks for it."""

from __future__ import annotations

import pytest

from tests.deploy.serving import MAX_PIXELS, start_server


@pytest.fixture(scope="session")
def server(demo_export, tmp_path_factory):
    """One server for every module that asks (test_serve, test_load_sweep), on the demo model, with small
    batch, body and image limits; tests read its log from their own start (``len(server.log_text())``)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    running = start_server(log, "--model", str(demo_export.path), "--max-batch", "8", "--max-body-mb", "16",
                           "--max-pixels", str(MAX_PIXELS))
    yield running
    running.stop()
