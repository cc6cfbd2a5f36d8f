"""The Python API: image files, their bytes or decoded frames in, top-k labels with probabilities out.

    with Classifier("artifacts/googlenet.onnx", provider="cpu") as clf:
        for p in clf.predict(["cat.jpg", "dog.png"], topk=3):
            print(p.image, p.error or p.topk[0].label)
        clf.predict(cv2.imread("cat.jpg"))                       # a BGR frame, as OpenCV and cameras give
        clf.predict(np.asarray(pil_image), frame_order="RGB")    # an RGB one

A bad image becomes a Prediction with ``error`` set; the rest are still classified.
Images are read, decoded and preprocessed by a small pool of worker threads (OpenCV,
Pillow and numpy release the GIL) while the runtime infers the previous batch; results
still come in input order, a batch at a time, and at most a few batches are in memory
whatever the number of images.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from runtimes import preprocess
from runtimes.adapters import create_runner
from runtimes.errors import ImageError
from runtimes.spec import DEFAULT_MODEL, ModelSpec

# A path, an image file's bytes, or a decoded (H, W, 3) uint8 frame.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray
_BYTES = (bytes, bytearray, memoryview)
DEFAULT_BATCH_SIZE = 8
# Batches being prepared ahead of the one being inferred: enough to keep the workers
# busy through an inference call, few enough to bound memory.
PREFETCH_BATCHES = 2


def default_workers() -> int:
    """Preprocessing threads: one per CPU this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


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
    preprocess: str | None = None  # "exact" or "fast": the path the image took

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record: {"image", "topk": [{"index", "label", "prob"}], "preprocess"} or {"image", "error"}."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "topk": [vars(s) for s in self.topk], "preprocess": self.preprocess}


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
    ``exact`` makes every image take the PIL-identical path; by default large JPEGs are
    decoded at reduced size in the DCT domain (see ``runtimes.preprocess``).
    ``workers`` is the number of preprocessing threads (default: one per CPU, at most 8).
    ``max_pixels`` refuses a file that would decode to more than that many 8-bit RGB
    pixels' worth of memory (16-bit images count twice), before decoding it (default:
    ``runtimes.preprocess.MAX_PIXELS``).
    ``admit``, if given, is called as ``admit(cost, name)`` around the decode of each file's
    bytes, with its cost from ``preprocess.decode_cost``, and returns a context manager: a
    server passes its pixel budget's, so that what decodes at once, over every call, stays
    bounded. An exception it raises is the call's, not one image's error.
    """

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL,
        provider: str = "cpu",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        spec: ModelSpec | None = None,
        exact: bool = False,
        workers: int | None = None,
        max_pixels: int | None = None,
        admit: Callable[[int, str], ContextManager[Any]] | None = None,
        **options: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.exact = exact
        self.admit = admit
        self.workers = workers or default_workers()
        self.runner = create_runner(provider, model_path, spec, batch_size=batch_size, **options).load()

    @property
    def spec(self) -> ModelSpec:
        """The model's preprocessing spec and labels, as its runner read them."""
        return self.runner.spec

    def active_providers(self) -> list[str]:
        """What really runs the graph (see Runner.active_providers)."""
        return self.runner.active_providers()

    def predict(
        self, images: ImageInput | Iterable[ImageInput], topk: int = 5, *, frame_order: str = "BGR"
    ) -> list[Prediction]:
        """Predictions for ``images``, in input order.

        Each image is a path, the bytes of an image file (bytes, bytearray, memoryview),
        or a decoded (H, W, 3) uint8 frame whose channels are in ``frame_order``: "BGR"
        (cv2.imread, cv2.VideoCapture, most cameras) or "RGB" (PIL, imageio). A 4-D
        array is a stack of frames. A frame is preprocessed as the exact path preprocesses
        its file (``exact=True``); a file or its bytes may take the fast path, which moves
        a large JPEG's input by a few levels (see ``runtimes.preprocess``).
        """
        return list(self.iter_predict(images, topk, frame_order=frame_order))

    def iter_predict(
        self, images: ImageInput | Iterable[ImageInput], topk: int = 5, *, frame_order: str = "BGR"
    ) -> Iterator[Prediction]:
        """A generator of :meth:`predict`'s results, in input order, a batch at a time.

        Nothing happens until the first result is asked for: then ``topk`` is checked, the
        workers start preprocessing up to ``1 + PREFETCH_BATCHES`` batches taken from
        ``images`` (so a lazy iterable is consumed only that far ahead), and each batch is
        inferred once its images are ready; its predictions are yielded before the next
        batch is inferred. Closing the generator early stops the workers.
        """
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        preprocess.check_frame_order(frame_order)
        one = isinstance(images, (str, os.PathLike, *_BYTES)) or (isinstance(images, np.ndarray) and images.ndim != 4)
        items = iter([images] if one else images)
        k = min(topk, self.spec.num_classes)
        ahead = self.batch_size * (1 + PREFETCH_BATCHES)
        pending: collections.deque[Future] = collections.deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="preprocess")
        numbered = itertools.count()

        def refill() -> None:
            for item in itertools.islice(items, ahead - len(pending)):
                pending.append(pool.submit(self._load, item, next(numbered), frame_order))

        try:
            refill()
            while pending:
                loaded = [pending.popleft().result() for _ in range(min(self.batch_size, len(pending)))]
                refill()  # the workers prepare the next batches while this one is inferred
                yield from self.predict_prepared(loaded, k)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def predict_prepared(self, loaded: list[tuple[str, np.ndarray | str, str | None]], k: int) -> list[Prediction]:
        """Predictions for images already preprocessed elsewhere (``load_input``'s results: (name,
        CHW tensor or error, mode)), in one inference call; ``k`` classes each."""
        tensors = {i: t for i, (_, t, _) in enumerate(loaded) if not isinstance(t, str)}
        rows = {}
        if tensors:
            outputs = self.runner.infer(preprocess.stack(list(tensors.values())))
            # a model from elsewhere may end in a softmax already (its spec says "probabilities")
            probs = softmax(outputs) if self.spec.output_kind == "logits" else outputs.astype(np.float64)
            rows = dict(zip(tensors, probs))
        return [
            Prediction(name, top_scores(rows[i], self.spec.labels, k), preprocess=mode)
            if i in rows else Prediction(name, error=result)
            for i, (name, result, mode) in enumerate(loaded)
        ]

    def _load(self, item: ImageInput, index: int, frame_order: str) -> tuple[str, np.ndarray | str, str | None]:
        """(name, preprocessed CHW tensor, mode) or (name, error message, None); runs in a worker."""
        name = _name(item, index)
        admitted = contextlib.nullcontext()
        if self.admit is not None and isinstance(item, _BYTES):
            admitted = self.admit(preprocess.decode_cost(item, self.spec, fast=not self.exact), name)
        with admitted:
            return load_input(item, name, self.spec, exact=self.exact, max_pixels=self.max_pixels,
                              frame_order=frame_order)

    def close(self) -> None:
        """Release the runtime session."""
        self.runner.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def load_input(item: ImageInput, name: str, spec: ModelSpec, *, exact: bool = False, max_pixels: int | None = None,
               frame_order: str = "BGR") -> tuple[str, np.ndarray | str, str | None]:
    """One input preprocessed for ``spec``: (name, CHW tensor, mode), or (name, error message, None)."""
    try:
        if isinstance(item, np.ndarray):
            rgb = preprocess.frame_to_rgb(item, frame_order, name)
            return name, preprocess.prepare(rgb, spec), preprocess.EXACT
        data = item if isinstance(item, _BYTES) else _read(item, name)
        tensor, mode = preprocess.load_with_mode(data, spec, name, fast=not exact, max_pixels=max_pixels)
        return name, tensor, mode
    except ImageError as exc:
        return name, str(exc).removeprefix(f"{name}: "), None  # the Prediction names the image already


def _name(item: object, index: int) -> str:
    """What a Prediction calls an input: a path as given, else its kind and position."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    kind = "frame" if isinstance(item, np.ndarray) else "bytes" if isinstance(item, _BYTES) else type(item).__name__
    return f"<{kind} #{index}>"


def _read(path: object, name: str) -> bytes:
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"{name}: not an image; pass a path, an image file's bytes or a decoded (H, W, 3) uint8 frame")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from None
