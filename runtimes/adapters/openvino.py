"""Intel OpenVINO on CPU, from the ONNX file directly (no IR conversion step).

OpenVINO picks its CPU inference precision from the hardware: bf16 on CPUs with
AVX512_BF16/AMX, which moves GoogLeNet's logits by ~1e-2 and breaks fp32 parity.
``INFERENCE_PRECISION_HINT=f32`` pins fp32 everywhere (on an AVX2-only CPU it is
already the default, so it costs nothing there).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from runtimes.adapters.base import Runner


class OpenvinoRunner(Runner):
    """OpenVINO compiled for ``device`` (default CPU) with a latency hint; option ``threads``."""

    name = "openvino"
    OPTIONS: dict[str, Any] = {"threads": None, "device": "CPU"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed: pip install 'googlenet-deploy[openvino]'"
        return None

    def _load_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {
            # One request at a time from the classifier: latency, not throughput streams.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if self.options["threads"]:
            config["INFERENCE_NUM_THREADS"] = self.options["threads"]
        self.compiled = core.compile_model(core.read_model(str(self.model_path)), self.options["device"], config)
        self.request = self.compiled.create_infer_request()

    def inference_precision(self) -> str:
        """The precision OpenVINO actually compiled for, e.g. "f32" or "bf16"."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def _infer_impl(self, batch: Any) -> Any:
        return self.request.infer({0: batch})[self.compiled.output(0)]

    def _active_providers_impl(self) -> list[str]:
        return [f"OpenVINO:{self.options['device']}"]

    def _close_impl(self) -> None:
        self.request = self.compiled = None
