"""One redrawn progress line on stderr, for the commands that work for a while.

Only on a terminal: in logs and CI output every redraw would become a line of its own,
so there the commands print nothing until their result.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """``[###...] 16/40`` (``advance``) or ``[3/12] openvino fp32 batch 8`` (``step``) on one stderr line.

    ``quiet_up_to``: a total this small finishes before a bar would help (a run of one
    batch), so none is drawn.
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, quiet_up_to: int = 0) -> None:
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = total > quiet_up_to and self.stream.isatty()

    def advance(self, count: int = 1) -> None:
        """``count`` more of ``total`` done: redraw the bar."""
        self.done += count
        if self.enabled and self.done < self.total:
            filled = 30 * self.done // self.total
            self._draw(f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")

    def step(self, what: str) -> None:
        """One more step begins: ``[done/total] what``."""
        self.done += 1
        if self.enabled:
            self._draw(f"[{self.done}/{self.total}] {what}")

    def note(self, what: str) -> None:
        """Redraw the current step's line with news of it: ``[done/total] what``."""
        if self.enabled:
            self._draw(f"[{self.done}/{self.total}] {what}")

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.clear()

    def _draw(self, line: str) -> None:
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
