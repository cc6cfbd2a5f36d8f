"""What every command-line entry point shares: one-line errors, no tracebacks."""

from __future__ import annotations

import sys
from typing import Callable

from runtimes.errors import ToolkitError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its status; a ToolkitError becomes one line on stderr."""
    try:
        status = main()
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
