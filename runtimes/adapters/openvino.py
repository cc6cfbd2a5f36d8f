"""Intel OpenVINO on CPU, from the ONNX file directly (no IR conversion step).

OpenVINO picks its CPU inference precision from the hardware: bf16 on CPUs with
AVX512_BF16/AMX, which moves GoogLeNet's logits by ~1e-2 and breaks fp32 parity.
``INFERENCE_PRECISION_HINT=f32`` pins fp32 everywhere (on an AVX2-only CPU it is
already the default, so it costs nothing there). Option ``precision`` ("bf16", "f16")
asks for the faster one; on a CPU without native f16 OpenVINO runs f16 as bf16, and on
one without bf16 support as f32 (``inference_precision()`` says what it compiled).

A graph with a free batch axis is also compiled for the exact shape of the first
``STATIC_SHAPES`` batch sizes it meets: on the 2-core development machine (AMD EPYC,
Zen 4) a static shape ran int8 13% faster at batch 1 (6.2 vs 7.2 ms) and 10% at batch 8,
fp32 5% at batch 1. Other batch sizes share the dynamic compile.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError, first_line


STATIC_SHAPES = 4


class OpenvinoRunner(Runner):
    """OpenVINO compiled for ``device`` (default CPU); options ``threads``, ``precision``, ``hint`` (LATENCY)."""

    name = "openvino"
    OPTIONS: dict[str, Any] = {"threads": None, "device": "CPU", "precision": "f32", "hint": "LATENCY"}
    PRECISIONS = ("f32", "bf16", "f16")
    HINTS = ("LATENCY", "THROUGHPUT")
    REQUIRES = ("openvino", "openvino is not installed: pip install 'openvino>=2024.4'")

    def _load_impl(self) -> None:
        import openvino as ov
        from openvino.frontend import FrontEndManager, GeneralFailure, OpConversionFailure

        if self.options["precision"] not in self.PRECISIONS:
            raise ProviderError(
                f"openvino: unknown precision {self.options['precision']!r}; known: {', '.join(self.PRECISIONS)}"
            )
        if self.options["hint"] not in self.HINTS:
            raise ProviderError(f"openvino: unknown hint {self.options['hint']!r}; known: {', '.join(self.HINTS)}")
        core = ov.Core()
        config: dict[str, Any] = {
            # One request at a time from the classifier: latency by default; THROUGHPUT
            # splits the cores into streams, which only concurrent requests fill.
            "PERFORMANCE_HINT": self.options["hint"],
            "INFERENCE_PRECISION_HINT": self.options["precision"],
        }
        if self.options["threads"]:
            config["INFERENCE_NUM_THREADS"] = self.options["threads"]
        # The ONNX frontend only: core.read_model() would try every frontend on a file that
        # is not ONNX, and TensorFlow's logs its parse errors straight to fd 2.
        try:
            frontend = FrontEndManager().load_by_framework("onnx")
            self._model = frontend.convert(frontend.load(str(self.model_path)))
            self.compiled = core.compile_model(self._model, self.options["device"], config)
        except (RuntimeError, OpConversionFailure, GeneralFailure) as exc:  # every load failure
            raise ProviderError(f"openvino: cannot load {self.model_path}: {first_line(exc)}") from None
        self._compile = lambda model: core.compile_model(model, self.options["device"], config)
        # Per batch size: the compiled model and its idle infer requests. One request per
        # concurrent caller, reused: OpenVINO requests are not thread-safe, but several
        # run at once (the classifier, a server's threads).
        self._by_batch: dict[int, tuple[Any, queue.SimpleQueue]] = {}
        self._lock = threading.Lock()

    def _for_batch(self, n: int) -> tuple[Any, queue.SimpleQueue]:
        """The compiled model for batches of ``n`` (static-shaped while there are few) and its request pool."""
        found = self._by_batch.get(n)
        if found is None:
            with self._lock:
                found = self._by_batch.get(n)
                if found is None:
                    compiled = self.compiled
                    shape = self._model.input(0).get_partial_shape()
                    rest = list(shape)[1:] if shape.rank.is_static else [None]
                    free_batch_only = shape.rank.is_static and shape[0].is_dynamic and all(d.is_static for d in rest)
                    if free_batch_only and len(self._by_batch) < STATIC_SHAPES:
                        static = self._model.clone()
                        static.reshape({static.input(0): [n, *(d.get_length() for d in rest)]})
                        compiled = self._compile(static)
                    found = self._by_batch[n] = (compiled, queue.SimpleQueue())
        return found

    def inference_precision(self) -> str:
        """The precision OpenVINO actually compiled for, e.g. "f32" or "bf16"."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def _infer_impl(self, batch: Any) -> Any:
        compiled, requests = self._for_batch(batch.shape[0])
        try:
            request = requests.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            # copy: the result array is the request's own buffer, reused by its next call
            return request.infer({0: batch})[compiled.output(0)].copy()
        finally:
            requests.put(request)

    def _outputs_impl(self, feeds: dict[str, Any], names: list[str]) -> dict[str, Any]:
        results = self.compiled.create_infer_request().infer(feeds)
        by_name = {name: port for port in self.compiled.outputs for name in port.get_names()}
        return {name: results[by_name[name]].copy() for name in names}

    def _active_providers_impl(self) -> list[str]:
        return [f"OpenVINO:{self.options['device']}"]

    def _close_impl(self) -> None:
        self._by_batch = {}
        self._model = self._compile = self.compiled = None
