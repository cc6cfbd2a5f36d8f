"""The Python API: image files or bytes in, top-k labels with probabilities out.

    with Classifier("artifacts/googlenet.onnx", provider="cpu") as clf:
        for p in clf.predict(["cat.jpg", "dog.png"], topk=3):
            print(p.image, p.error or p.topk[0].label)

A bad image becomes a Prediction with ``error`` set; the rest are still classified.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import preprocess
from runtimes.adapters import create_runner
from runtimes.errors import ImageError
from runtimes.spec import DEFAULT_MODEL, ModelSpec

ImageInput = str | Path | bytes
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class Score:
    """One of an image's top-k classes."""

    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, or why it could not be classified."""

    image: str
    topk: tuple[Score, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record: {"image", "topk": [{"index", "label", "prob"}]} or {"image", "error"}."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "topk": [vars(s) for s in self.topk]}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row max so large logits cannot overflow."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_scores(probs: np.ndarray, labels: tuple[str, ...], k: int) -> tuple[Score, ...]:
    """The ``k`` most probable classes of one probability row, best first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return tuple(Score(int(i), labels[i], float(probs[i])) for i in order)


class Classifier:
    """An exported GoogLeNet on one runtime, with its own preprocessing spec.

    ``provider`` is a short runtime name (cpu, cuda, tensorrt, openvino, opencv, torch);
    ``options`` go to that runtime's runner (threads, device_id, allow_fallback, fp16...).
    ``spec`` overrides the one in the model file (a bundle carries it in bundle.json).
    """

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL,
        provider: str = "cpu",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        spec: ModelSpec | None = None,
        **options: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.runner = create_runner(provider, model_path, spec, batch_size=batch_size, **options).load()

    @property
    def spec(self) -> ModelSpec:
        """The model's preprocessing spec and labels, as its runner read them."""
        return self.runner.spec

    def active_providers(self) -> list[str]:
        """What really runs the graph (see Runner.active_providers)."""
        return self.runner.active_providers()

    def predict(self, images: ImageInput | Iterable[ImageInput], topk: int = 5) -> list[Prediction]:
        """Predictions for ``images`` (paths or encoded bytes), in input order."""
        return list(self.iter_predict(images, topk))

    def iter_predict(self, images: ImageInput | Iterable[ImageInput], topk: int = 5) -> Iterator[Prediction]:
        """Like :meth:`predict`, yielding each batch's predictions as soon as it is done."""
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        items = [images] if isinstance(images, (str, Path, bytes)) else list(images)
        k = min(topk, self.spec.num_classes)
        for start in range(0, len(items), self.batch_size):
            yield from self._predict_batch(items[start : start + self.batch_size], start, k)

    def _predict_batch(self, items: list[ImageInput], offset: int, k: int) -> list[Prediction]:
        names, tensors, errors = [], {}, {}
        for i, item in enumerate(items):
            name, tensor_or_error = self._load(item, offset + i)
            names.append(name)
            if isinstance(tensor_or_error, str):
                errors[i] = tensor_or_error
            else:
                tensors[i] = tensor_or_error
        rows = {}
        if tensors:
            probs = softmax(self.runner.infer(preprocess.stack(list(tensors.values()))))
            rows = dict(zip(tensors, probs))
        return [
            Prediction(name, error=errors[i]) if i in errors else Prediction(name, top_scores(rows[i], self.spec.labels, k))
            for i, name in enumerate(names)
        ]

    def _load(self, item: ImageInput, index: int) -> tuple[str, np.ndarray | str]:
        """(name, preprocessed CHW tensor) or (name, error message)."""
        if isinstance(item, bytes):
            name, data = f"<bytes #{index}>", item
        else:
            name = str(item)
            try:
                data = Path(item).read_bytes()
            except OSError as exc:
                return name, f"cannot read: {exc.strerror or exc}"
        try:
            return name, preprocess.load(data, self.spec, name)
        except ImageError as exc:
            return name, str(exc).removeprefix(f"{name}: ")  # the Prediction names the image already

    def close(self) -> None:
        """Release the runtime session."""
        self.runner.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
