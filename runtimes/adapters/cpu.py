"""ONNX Runtime on its CPU execution provider: the default runtime everywhere."""

from __future__ import annotations

from runtimes.adapters.ort_common import OrtRunner
from runtimes.errors import ProviderError


class CpuRunner(OrtRunner):
    """ORT CPUExecutionProvider; options ``threads`` (default: physical cores) and ``spinning``."""

    name = "cpu"

    def _load_impl(self) -> None:
        self.session, _ = self._create_session(["CPUExecutionProvider"])
        active = self.session.get_providers()
        if active != ["CPUExecutionProvider"]:
            raise ProviderError(f"cpu: expected ORT to run on CPUExecutionProvider only, it chose {active}")
