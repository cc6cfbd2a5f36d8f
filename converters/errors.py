"""Errors only the converters raise; each is a ToolkitError, so ``runtimes.cli.run_cli`` reports it in one line."""

from runtimes.errors import ToolkitError


class CheckpointError(ToolkitError):
    """A checkpoint is unreadable, unsafe, or does not fit the model."""


class ExportError(ToolkitError):
    """Writing a model (export, quantize, annotate) failed, or was given bad input."""
