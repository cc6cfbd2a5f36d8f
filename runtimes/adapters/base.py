"""The one protocol every runtime implements.

Polygraphy-style: the public ``load / infer / close`` validate and keep state, then call
small ``*_impl`` hooks that each adapter fills in. Heavy libraries are imported inside
``_load_impl`` only, so importing an adapter module costs nothing.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from runtimes.errors import InferenceError, NonFiniteError, ProviderError, ToolkitError, first_line
from runtimes.graph import check_spec, read_graph_io
from runtimes.spec import ModelSpec, require_model

if TYPE_CHECKING:  # numpy is imported by whoever builds the batch
    import numpy as np


class Runner(ABC):
    """Loads one ONNX model on one runtime and maps NCHW float32 batches to (N, C) logits.

    ``OPTIONS`` names the keyword options the runner accepts with their defaults; the
    registry rejects any other option with a message listing these. ``REQUIRES`` is the
    module the runtime needs and the reason given when it is not installed.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Any]] = {}
    REQUIRES: ClassVar[tuple[str, str] | None] = None

    def __init__(self, model_path: str | Path, spec: ModelSpec | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            takes = ", ".join(self.OPTIONS) or "no options"
            raise ProviderError(f"provider {self.name!r} does not take {', '.join(unknown)}; it takes: {takes}")
        self.model_path = Path(model_path)
        self.options = {**self.OPTIONS, **options}
        self._spec = spec
        self._loaded = False
        self._fixed_batch: int | None = None  # the graph's batch size, where it is not free

    @property
    def spec(self) -> ModelSpec:
        """The model's preprocessing spec; read from the model on first use."""
        if self._spec is None:
            self._spec = self._read_spec()
        return self._spec

    def load(self) -> "Runner":
        """Build the runtime's session, read the spec and check it against the graph; idempotent.

        Raises ProviderError if the runtime cannot run here or cannot load the file,
        InferenceError if it loads the file but cannot run it (one warm-up call on a
        black image proves that here, not at the first real image: some
        runtimes import a graph they then fail to execute, as OpenCV 5.1 does an fp16
        model on CPUs with AVX512-FP16), and ModelSpecError if the model lacks this
        toolkit's metadata or its spec does not fit the graph (input and output names,
        input shape, number of classes).
        """
        if not self._loaded:
            self.load_graph()
            try:
                graph = read_graph_io(self.model_path)
                if self._spec is None:
                    self._spec = ModelSpec.from_metadata_map(graph.metadata, source=str(self.model_path))
                check_spec(self._spec, graph, str(self.model_path))
                self._fixed_batch = graph.fixed_batch
                self._warm_up()
            except BaseException:
                self.close()
                raise
        return self

    def infer(self, batch: "np.ndarray") -> "np.ndarray":
        """The graph's output, (N, num_classes) logits or probabilities, for a float32 NCHW batch of preprocessed images."""
        if not self._loaded:
            raise ProviderError(f"{self.name} runner used before load(); use it as a context manager")
        size = self.spec.crop_size
        dtype, shape = str(getattr(batch, "dtype", type(batch).__name__)), tuple(getattr(batch, "shape", ()))
        if dtype != "float32" or len(shape) != 4 or shape[1:] != (3, size, size) or shape[0] < 1:
            raise ValueError(f"expected a float32 N x 3 x {size} x {size} batch, got {dtype} {shape}")
        fixed = self._fixed_batch
        logits = self._run(batch) if fixed in (None, len(batch)) else self._infer_in_pieces(batch, fixed)
        if logits.shape != (len(batch), self.spec.num_classes):
            raise ProviderError(
                f"{self.name} returned logits of shape {logits.shape}, expected {(len(batch), self.spec.num_classes)}"
            )
        return logits

    def load_graph(self) -> "Runner":
        """Load any graph on this runtime, unchecked and without a warm-up: the divergence
        locator runs cut and marked copies of a model whose outputs are not logits."""
        if not self._loaded:
            require_model(self.model_path)
            reason = self.unavailable_reason()
            if reason is None:
                self._load_impl()
            else:
                self._load_unavailable(reason)
            self._loaded = True
        return self

    def outputs(self, feeds: dict[str, "np.ndarray"], names: list[str]) -> dict[str, "np.ndarray"]:
        """The graph outputs ``names`` for the inputs ``feeds`` (by name); one line if the runtime fails."""
        return self._guarded(self._outputs_impl, feeds, names)

    def _outputs_impl(self, feeds: dict[str, "np.ndarray"], names: list[str]) -> dict[str, "np.ndarray"]:
        raise ProviderError(f"{self.name} cannot run a graph's intermediate tensors")

    def _warm_up(self) -> None:
        """Run one batch of black images (the graph's fixed batch size, else 1): the runtime must run it, finitely."""
        import numpy as np

        size = self.spec.crop_size
        logits = self.infer(np.zeros((self._fixed_batch or 1, 3, size, size), np.float32))
        if not np.isfinite(logits).all():
            raise NonFiniteError(
                f"{self.name}: {self.model_path} gives non-finite outputs (NaN or Inf) for a black image; "
                "this runtime cannot run this model (try another provider or precision)"
            )

    def _run(self, batch: "np.ndarray") -> "np.ndarray":
        return self._guarded(self._infer_impl, batch)

    def _guarded(self, call, *args):
        """``call(*args)`` with whatever the runtime raises turned into one InferenceError line."""
        try:
            return call(*args)
        except ToolkitError:
            raise
        except Exception as exc:  # cv2.error, ORT's Fail, OpenVINO's RuntimeError, ...
            raise InferenceError(f"{self.name}: cannot run {self.model_path}: {first_line(exc)}") from None

    def _infer_in_pieces(self, batch: "np.ndarray", size: int) -> "np.ndarray":
        """For a graph whose batch size is fixed: pieces of ``size`` images, the last one zero-padded."""
        import numpy as np

        pieces = []
        for start in range(0, len(batch), size):
            piece = batch[start : start + size]
            if len(piece) < size:  # only the last piece: pad it with zero images
                piece = np.concatenate([piece, np.zeros((size - len(piece), *piece.shape[1:]), piece.dtype)])
            pieces.append(self._run(piece))
        return np.concatenate(pieces)[: len(batch)]

    def active_providers(self) -> list[str]:
        """What actually executes the graph, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]."""
        return self._active_providers_impl() if self._loaded else []

    def close(self) -> None:
        """Release the session and its threads; the runner can be loaded again."""
        if self._loaded:
            self._close_impl()
            self._loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_spec(self) -> ModelSpec:
        return ModelSpec.from_onnx(self.model_path)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this runtime cannot run here (cheap check, no session), or None if it may."""
        if cls.REQUIRES is not None and importlib.util.find_spec(cls.REQUIRES[0]) is None:
            return cls.REQUIRES[1]
        return None

    def _load_unavailable(self, reason: str) -> None:
        """Called by load() instead of _load_impl() when the runtime cannot run here."""
        from runtimes.adapters.registry import unavailable_error  # the registry imports this module

        raise unavailable_error(self.name, reason)

    @abstractmethod
    def _load_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, batch: "np.ndarray") -> "np.ndarray": ...

    @abstractmethod
    def _active_providers_impl(self) -> list[str]: ...

    @abstractmethod
    def _close_impl(self) -> None: ...
