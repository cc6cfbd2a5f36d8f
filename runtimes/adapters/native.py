"""Output that C++ libraries write straight to file descriptors 1 and 2."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# ORT's C++ logger colours its lines; strip that before quoting them in an error.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def captured_native_output() -> Iterator[list[str]]:
    """Collect what C++ code writes to fds 1 and 2 (ORT's logger, its fallback print).

    ORT reports a failed provider only there, and OpenVINO's TensorFlow frontend logs
    there while it probes a file that is not a model; capturing keeps that out of
    ``--json`` stdout and off the one-line error. Yields a list that holds the text
    after the block.
    """
    result: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield result
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            result.append(_ANSI.sub("", sink.read().decode(errors="replace")))
