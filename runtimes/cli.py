"""What every command-line entry point shares: one-line errors, no tracebacks, checked numbers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from runtimes.errors import ParityError, ToolkitError

EXIT_USER_ERROR = 2
# A model that does not give PyTorch's answers within tolerance: not a user mistake.
EXIT_PARITY_FAILED = 3
# A reader that stops early (`| head`) ends the run as SIGPIPE ends a C tool: 128 + 13.
# Not 0: that would claim every image was classified; 141 is what `set -o pipefail`
# already expects from grep or cat in the same pipeline.
EXIT_BROKEN_PIPE = 141


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its status; a ToolkitError becomes one line on stderr."""
    try:
        status = main()
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_PARITY_FAILED)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush of what is still
        # buffered cannot raise a second BrokenPipeError on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(status or 0)


def _int_at_least(text: str, minimum: int) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid <type name> value"
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts that must be 1 or more (batch size, iterations, threads)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0 (warm-up calls, a device index)."""
    return _int_at_least(text, 0)
