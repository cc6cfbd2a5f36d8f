"""ONNX Runtime on its CPU execution provider: the default runtime everywhere."""

from __future__ import annotations

from runtimes.adapters.ort_common import OrtRunner


class CpuRunner(OrtRunner):
    """ORT CPUExecutionProvider; options ``threads`` (default: physical cores) and ``spinning``."""

    name = "cpu"

    def _load_impl(self) -> None:
        # ORT runs only the providers it is given (CPU is its own fallback), so no check of
        # what became active is needed here, unlike the GPU runners.
        self.session, _ = self._create_session(["CPUExecutionProvider"])
