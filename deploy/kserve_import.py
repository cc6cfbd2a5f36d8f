"""Import kserve without it reading our command line.

kserve 0.21 parses ``sys.argv`` with argparse when it is imported (its ModelServer's
options, prefixes allowed), so a flag of ours could be taken as one of its own, or
refused. Import it inside :func:`command_line_hidden`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def command_line_hidden() -> Iterator[None]:
    """Within the block, ``sys.argv`` holds only the program name."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv
