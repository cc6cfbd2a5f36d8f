"""What every command-line entry point shares: one-line errors, no tracebacks, checked numbers.

Exit statuses, the same for every command (converters.*, runtimes.*, deploy.*, samples.demo),
and the README's table lists them too:

    0                         everything done and passed
    1    EXIT_FAILED          it ran, but a result failed: an image could not be classified
                              (runtimes.run), top-1 dropped beyond --max-top1-drop
                              (runtimes.evaluate), the demo's accuracy is below its floor
    2    EXIT_USER_ERROR      a mistake in the input: bad option, missing or corrupt file,
                              unknown or unloadable provider (one ``error:`` line; argparse
                              also exits 2)
    3    EXIT_PARITY_FAILED   a model does not give PyTorch's answers within tolerance
                              (converters.export's parity gate, runtimes.verify)
    130  EXIT_INTERRUPTED     Ctrl-C
    143  EXIT_TERMINATED      SIGTERM, as a scheduler sends (``deploy.batch``: cleaned up as for Ctrl-C)
    141  EXIT_BROKEN_PIPE     the reader of stdout stopped early (``| head``)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import Callable

from runtimes.errors import ParityError, ProviderError, ToolkitError

# The command ran, but some result failed: not the user's mistake, not a parity failure.
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
# A model that does not give PyTorch's answers within tolerance: not a user mistake.
EXIT_PARITY_FAILED = 3
# A reader that stops early (`| head`) ends the run as SIGPIPE ends a C tool: 128 + 13.
# Not 0: that would claim every image was classified; 141 is what `set -o pipefail`
# already expects from grep or cat in the same pipeline.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its status; a ToolkitError becomes one line on stderr."""
    for stream in (sys.stdout, sys.stderr):
        # A file name the console's encoding cannot show (Chinese on an ASCII or cp1252
        # console) is printed escaped, \u732b.jpg, instead of raising UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # Pillow warns about the damage it reads past in a corrupt file (TIFF tags, EXIF) while
    # sizing it; the file's own error line already says what is wrong with it.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
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
        sys.exit(EXIT_INTERRUPTED)
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


def seconds(text: str) -> float:
    """argparse type for a duration (a timeout): a finite number of seconds above 0 ("nan" and
    "inf" would turn the deadline off without a word)."""
    value = float(text)  # argparse turns a ValueError into "invalid seconds value"
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text}")
    return value


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """The --max-pixels option of every command that decodes image files."""
    parser.add_argument(
        "--max-pixels", type=positive_int, metavar="N",
        help="refuse an image that decodes to more memory than N 8-bit RGB pixels (16-bit ones count twice), "
        "a guard against decompression bombs (default: 134217728, runtimes.preprocess.MAX_PIXELS)",
    )


def runner_options(provider: str, *, lenient: bool = False, **given: object) -> dict[str, object]:
    """The options the user set (not None, not False), checked against what ``provider`` takes.

    The runner would reject the others in keyword terms; this says it in the flags the
    user typed: "--device-id and --fp16 do not apply to provider 'cpu'; its options: --threads".
    ``lenient`` drops them instead: a bundle's fallback provider ignores flags meant for another.
    """
    from runtimes.adapters import runner_class

    takes = runner_class(provider).OPTIONS
    options = {name: value for name, value in given.items() if value is not None and value is not False}
    unknown = [_flag(name) for name in options if name not in takes]
    if lenient:
        return {name: value for name, value in options.items() if name in takes}
    if unknown:
        ours = [_flag(name) for name in given if name in takes]
        names = unknown[0] if len(unknown) == 1 else f"{', '.join(unknown[:-1])} and {unknown[-1]}"
        verb = "does" if len(unknown) == 1 else "do"
        raise ProviderError(
            f"{names} {verb} not apply to provider {provider!r}; its options: {', '.join(ours) or 'none'}"
        )
    return options


def points(text: str) -> float:
    """argparse type for a drop in top-1 (--max-top1-drop, --max-drop): a finite number of percentage points, 0 or more.

    float() also takes "nan", and every comparison with NaN is false, so the gate would pass
    any drop; "inf" would too, and a negative limit fails a model that gained accuracy.
    """
    value = float(text)  # argparse turns a ValueError into "invalid points value"
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of points, 0 or more, got {text}")
    return value


def csv_list(text: str | None, kind=str) -> list | None:
    """``"1, 8"`` -> [1, 8] with ``kind=int``; None stays None (the flag was not given)."""
    return None if text is None else [kind(x.strip()) for x in text.split(",") if x.strip()]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
