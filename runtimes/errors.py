"""Typed errors. Each message says what was asked, what was found, and the fix.

Library code raises these; only CLI entry points catch them (see ``runtimes.cli``).
The converters' own errors live in ``converters.errors``.
"""


class ToolkitError(Exception):
    """Base class for every user-facing error of this toolkit."""


class ParityError(ToolkitError):
    """A model's logits disagree with PyTorch's beyond tolerance; ``stats`` has every batch's numbers.

    Not a user error: ``runtimes.cli.run_cli`` exits with EXIT_PARITY_FAILED for it.
    """

    def __init__(self, message: str, stats: tuple = ()) -> None:
        super().__init__(message)
        self.stats = tuple(stats)


class ModelSpecError(ToolkitError):
    """A model file is missing, unreadable, or lacks this toolkit's metadata."""


class ProviderError(ToolkitError):
    """A runtime was asked for that is unknown or cannot run here."""


class InferenceError(ProviderError):
    """A runtime that loaded a model failed while running it (an unsupported kernel, say).

    Raised by ``Runner.infer`` and at load, where every runner proves it can run the model
    with one warm-up call; a server answers it as its own fault (5xx), not the client's.
    """


class NonFiniteError(InferenceError):
    """A runtime's output held NaN or Inf: a wrong answer, not a missing runtime."""


class ImageError(ToolkitError):
    """An image cannot be read or decoded."""


class BundleError(ToolkitError):
    """A deployment bundle or reference-answers file is missing, tampered with, truncated or too new."""


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message that says something, else its type name.

    Blank lines and OpenVINO's "Exception from src/.../core.cpp:84:" headers (one per
    C++ layer) say nothing, so they are skipped; a message of nothing else gives its first line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return next((line for line in lines if not line.startswith("Exception from ")), lines[0])
