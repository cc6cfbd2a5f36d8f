"""Intel OpenVINO on CPU, from the ONNX file directly (no IR conversion step).

OpenVINO picks its CPU inference precision from the hardware: bf16 on CPUs with
AVX512_BF16/AMX, which moves GoogLeNet's logits by ~1e-2 and breaks fp32 parity.
``INFERENCE_PRECISION_HINT=f32`` pins fp32 everywhere (on an AVX2-only CPU it is
already the default, so it costs nothing there). Option ``precision`` ("bf16", "f16")
asks for the faster one; on a CPU without native f16 OpenVINO runs f16 as bf16, and on
one without bf16 support as f32 (``inference_precision()`` says what it compiled).
"""

from __future__ import annotations

import queue
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError, first_line


class OpenvinoRunner(Runner):
    """OpenVINO compiled for ``device`` (default CPU) with a latency hint; option ``threads``."""

    name = "openvino"
    OPTIONS: dict[str, Any] = {"threads": None, "device": "CPU", "precision": "f32"}
    PRECISIONS = ("f32", "bf16", "f16")
    REQUIRES = ("openvino", "openvino is not installed: pip install 'googlenet-deploy[openvino]'")

    def _load_impl(self) -> None:
        import openvino as ov
        from openvino.frontend import FrontEndManager, GeneralFailure, OpConversionFailure

        if self.options["precision"] not in self.PRECISIONS:
            raise ProviderError(
                f"openvino: unknown precision {self.options['precision']!r}; known: {', '.join(self.PRECISIONS)}"
            )
        core = ov.Core()
        config: dict[str, Any] = {
            # One request at a time from the classifier: latency, not throughput streams.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.options["precision"],
        }
        if self.options["threads"]:
            config["INFERENCE_NUM_THREADS"] = self.options["threads"]
        # The ONNX frontend only: core.read_model() would try every frontend on a file that
        # is not ONNX, and TensorFlow's logs its parse errors straight to fd 2.
        try:
            frontend = FrontEndManager().load_by_framework("onnx")
            model = frontend.convert(frontend.load(str(self.model_path)))
            self.compiled = core.compile_model(model, self.options["device"], config)
        except (RuntimeError, OpConversionFailure, GeneralFailure) as exc:  # every load failure
            raise ProviderError(f"openvino: cannot load {self.model_path}: {first_line(exc)}") from None
        # One infer request per concurrent caller, reused: OpenVINO requests are not
        # thread-safe, but several run at once (the classifier, a server's threads).
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def inference_precision(self) -> str:
        """The precision OpenVINO actually compiled for, e.g. "f32" or "bf16"."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def _infer_impl(self, batch: Any) -> Any:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # copy: the result array is the request's own buffer, reused by its next call
            return request.infer({0: batch})[self.compiled.output(0)].copy()
        finally:
            self._requests.put(request)

    def _active_providers_impl(self) -> list[str]:
        return [f"OpenVINO:{self.options['device']}"]

    def _close_impl(self) -> None:
        self._requests = self.compiled = None
