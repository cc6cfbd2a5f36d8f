"""Output that C++ libraries write straight to file descriptors 1 and 2."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from typing import Callable, Iterator

# ORT's C++ logger colours its lines; strip that before quoting them in an error.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def captured_native_output(claim: Callable[[str], bool]) -> Iterator[list[str]]:
    """Take the lines C++ code writes to fds 1 and 2 that ``claim`` recognises; pass on the rest.

    ORT reports a failed GPU provider only in its log on fd 2, so the GPU runners read it
    from there to explain the failure in one line. The descriptors belong to the whole
    process, though: another thread printing meanwhile must not lose a line. So each fd
    is redirected to a pipe whose reader copies every line that ``claim`` does not
    recognise back to the original descriptor, in order, and keeps the rest. Yields a
    list that holds the kept text after the block.
    """
    # No flush of sys.stdout/sys.stderr here: whatever Python still buffers reaches the
    # pipe or the restored fd, and is passed on either way; flushing a TextIOWrapper
    # while another thread prints to it can drop that thread's text.
    result: list[str] = []
    kept: list[str] = []
    saved, readers = [], []
    for fd in (1, 2):
        original = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        reader = threading.Thread(target=_relay, args=(read_end, original, claim, kept), daemon=True)
        reader.start()
        saved.append((fd, original))
        readers.append(reader)
    try:
        yield result
    finally:
        for fd, original in saved:
            os.dup2(original, fd)  # closes the pipe's last write end: the reader sees EOF
        for reader in readers:
            reader.join()
        for _, original in saved:
            os.close(original)
        result.append(_ANSI.sub("", "".join(kept)))


def _relay(read_end: int, original: int, claim: Callable[[str], bool], kept: list[str]) -> None:
    """Copy lines from the pipe to ``original``, keeping those ``claim`` recognises."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _route(line + b"\n", original, claim, kept)
    if pending:
        _route(pending, original, claim, kept)


def _route(line: bytes, original: int, claim: Callable[[str], bool], kept: list[str]) -> None:
    text = line.decode(errors="replace")
    if claim(_ANSI.sub("", text)):
        kept.append(text)
    else:
        os.write(original, line)
