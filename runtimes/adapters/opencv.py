"""OpenCV's DNN module: runs the ONNX file with nothing but opencv-python installed.

It must not import onnxruntime (boards that ship only OpenCV have none). OpenCV 5's
engine accepts the exported dynamic batch axis, so a batch goes through in one call.
"""

from __future__ import annotations

import threading
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.errors import ProviderError


class OpencvRunner(Runner):
    """cv2.dnn on CPU; option ``threads`` (process-wide in OpenCV, so it affects every cv2 call)."""

    name = "opencv"
    OPTIONS: dict[str, Any] = {"threads": None}
    REQUIRES = ("cv2", "OpenCV is not installed: pip install opencv-python-headless")

    def _load_impl(self) -> None:
        import cv2

        self._cv2 = cv2
        # The importer logs each parse failure to stderr before raising; the raised
        # error says it all, so keep those lines off the user's one-line error.
        # OpenCV 4.11 (JetPack 6's, with numpy 1) has no cv2.utils.logging: it then logs.
        logs = getattr(getattr(cv2, "utils", None), "logging", None)
        level = logs.getLogLevel() if logs else None
        if logs:
            logs.setLogLevel(logs.LOG_LEVEL_SILENT)
        self._lock = threading.Lock()
        try:
            self.net = cv2.dnn.readNetFromONNX(str(self.model_path))
        except cv2.error as exc:
            reason = " ".join(str(exc).split())  # cv2.error spans several lines
            raise ProviderError(f"opencv: cv2.dnn cannot import {self.model_path}: {reason}") from None
        finally:
            if logs:
                logs.setLogLevel(level)

    def _infer_impl(self, batch: Any) -> Any:
        # A Net holds one input and one set of blobs: setInput + forward must not
        # interleave between threads (they got each other's labels). OpenCV parallelises
        # inside forward() anyway.
        with self._lock:
            if self.options["threads"]:  # process-wide: set for each call, another Net may have changed it
                self._cv2.setNumThreads(self.options["threads"])
            self.net.setInput(batch)
            return self.net.forward().copy()

    def _outputs_impl(self, feeds: dict[str, Any], names: list[str]) -> dict[str, Any]:
        if len(names) != 1:
            raise ProviderError("opencv: cv2.dnn gives one graph output at a time; cut the graph to each")
        with self._lock:
            if self.options["threads"]:
                self._cv2.setNumThreads(self.options["threads"])
            for name, value in feeds.items():
                self.net.setInput(value, name)
            return {names[0]: self.net.forward().copy()}

    def _active_providers_impl(self) -> list[str]:
        return ["OpenCV:CPU"]

    def _close_impl(self) -> None:
        self.net = None
