"""Short provider names to runner classes, imported only when asked for.

Adding a runtime is one file with a :class:`~runtimes.adapters.base.Runner` subclass
plus one line here. The torch reference lives with the converters, which are not
installed on a device (a bundle carries only ``runtimes``): a runner whose package is
missing is unavailable, with that reason, like one whose runtime library is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError
from runtimes.spec import ModelSpec

RUNNERS = {
    "cpu": "runtimes.adapters.cpu:CpuRunner",
    "cuda": "runtimes.adapters.cuda:CudaRunner",
    "tensorrt": "runtimes.adapters.tensorrt:TensorrtRunner",
    "openvino": "runtimes.adapters.openvino:OpenvinoRunner",
    "opencv": "runtimes.adapters.opencv:OpencvRunner",
    "torch": "converters.torch_runner:TorchRunner",
}


def runner_class(name: str) -> type[Runner]:
    """The runner class registered as ``name``; imports its module, not its runtime."""
    if name not in RUNNERS:
        available = ", ".join(available_providers()) or "none"
        raise ProviderError(f"unknown provider {name!r}; known: {', '.join(RUNNERS)}; available here: {available}")
    missing = _missing_package(name)
    if missing is not None:
        raise unavailable_error(name, missing)
    module, _, attr = RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def unavailable_reason(name: str) -> str | None:
    """Why provider ``name`` cannot run here, or None if it may (no session is created)."""
    missing = _missing_package(name) if name in RUNNERS else None
    return missing or runner_class(name).unavailable_reason()


def _missing_package(name: str) -> str | None:
    package = RUNNERS[name].partition(".")[0]
    if importlib.util.find_spec(package) is None:
        return f"its package {package} is not installed: a bundle carries only runtimes (in a clone of googlenet-deploy: pip install -e '.[convert]')"
    return None


def available_providers() -> list[str]:
    """The registered providers whose libraries are present here."""
    return [name for name in RUNNERS if unavailable_reason(name) is None]


def unavailable_error(name: str, reason: str) -> ProviderError:
    """The error for a known provider that cannot run here, naming those that can."""
    available = ", ".join(p for p in available_providers() if p != name) or "none"
    return ProviderError(f"requested provider {name!r}; available here: {available}; {name}: {reason}")


def create_runner(
    name: str, model_path: str | Path, spec: ModelSpec | None = None, *, batch_size: int | None = None, **options: Any
) -> Runner:
    """An unloaded runner for ``name``; call ``load()`` or use it as a context manager.

    ``batch_size`` is the largest batch you will send: a runner built for a fixed range
    of batches (tensorrt's engine profile, option ``max_batch``) is built to cover it.
    """
    cls = runner_class(name)
    if batch_size is not None and "max_batch" in cls.OPTIONS:
        # Never below the default: each profile is its own cached engine, built for minutes.
        options.setdefault("max_batch", max(batch_size, cls.OPTIONS["max_batch"]))
    return cls(model_path, spec, **options)
