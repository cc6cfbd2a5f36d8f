"""One adapter per runtime behind :class:`Runner`; the registry maps short names to them."""

from runtimes.adapters.base import Runner
from runtimes.adapters.registry import (
    RUNNERS,
    available_providers,
    create_runner,
    runner_class,
    unavailable_error,
    unavailable_reason,
)

__all__ = [
    "RUNNERS",
    "Runner",
    "available_providers",
    "create_runner",
    "runner_class",
    "unavailable_error",
    "unavailable_reason",
]
