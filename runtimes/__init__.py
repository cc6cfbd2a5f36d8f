"""Torch-free runtimes for the exported GoogLeNet: ONNX Runtime, OpenVINO, OpenCV.

Only re-exports. The classifier and adapters load lazily (PEP 562), so ``import
runtimes`` pulls in neither numpy nor any runtime library.
"""

__version__ = "0.2.0"  # the one place the version is written; pyproject reads it

from runtimes.errors import ImageError, ModelSpecError, ProviderError, ToolkitError
from runtimes.spec import DEFAULT_MODEL, ModelSpec

_LAZY = {
    "Classifier": "runtimes.classifier",
    "Prediction": "runtimes.classifier",
    "Score": "runtimes.classifier",
    "Runner": "runtimes.adapters",
    "create_runner": "runtimes.adapters",
    "available_providers": "runtimes.adapters",
}

__all__ = [
    "DEFAULT_MODEL",
    "ImageError",
    "ModelSpec",
    "ModelSpecError",
    "ProviderError",
    "ToolkitError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtimes' has no attribute {name!r}")
