"""Typed errors. Each message says what was asked, what was found, and the fix.

Library code raises these; only CLI entry points catch them (see ``runtimes.cli``).
"""


class ToolkitError(Exception):
    """Base class for every user-facing error of this toolkit."""


class CheckpointError(ToolkitError):
    """A checkpoint is unreadable, unsafe, or does not fit the model."""


class ExportError(ToolkitError):
    """Exporting or checking the ONNX graph failed."""


class ParityError(ToolkitError):
    """ONNX Runtime disagrees with PyTorch beyond tolerance; ``stats`` has every batch's numbers."""

    def __init__(self, message: str, stats: tuple = ()) -> None:
        super().__init__(message)
        self.stats = tuple(stats)


class ModelSpecError(ToolkitError):
    """A model file is missing, unreadable, or lacks this toolkit's metadata."""


class ProviderError(ToolkitError):
    """A runtime was asked for that is unknown or cannot run here."""


class ImageError(ToolkitError):
    """An image cannot be read or decoded."""


class BundleError(ToolkitError):
    """A deployment bundle or reference-answers file is missing, tampered with, truncated or too new."""
