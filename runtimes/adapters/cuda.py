"""ONNX Runtime on an NVIDIA GPU through CUDAExecutionProvider.

ORT never fails when a GPU provider cannot load: it logs a warning and runs on CPU.
So after creating the session we check which providers are really active and raise,
unless the caller asked for ``allow_fallback``.
"""

from __future__ import annotations

import sys
from typing import Any

from runtimes.adapters.nvidia import gpu_fix, gpu_names, gpu_provider_unavailable
from runtimes.adapters.ort_common import OrtRunner, ort_failure_lines
from runtimes.adapters.registry import unavailable_error
from runtimes.errors import ProviderError


class CudaRunner(OrtRunner):
    """ORT CUDAExecutionProvider on ``device_id``, with IO binding; ``allow_fallback`` runs on CPU instead of failing."""

    name = "cuda"
    provider = "CUDAExecutionProvider"
    OPTIONS: dict[str, Any] = {**OrtRunner.OPTIONS, "device_id": 0, "allow_fallback": False}
    log_severity = 2  # keep ORT's warnings: "Failed to create CUDAExecutionProvider" is one
    reads_ort_log = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = super().unavailable_reason()  # no onnxruntime at all: say where the GPU build comes from
        return f"{missing}; {gpu_fix(cls.name)}" if missing else gpu_provider_unavailable(cls.name)

    def _cuda_options(self) -> dict[str, Any]:
        # ORT's CUDA provider defaults to TF32 matmuls/convs on Ampere and newer, which
        # moves fp32 logits by ~1e-3 relative; fp32 here means fp32.
        return {"device_id": self.options["device_id"], "use_tf32": 0}

    def provider_options(self) -> list[Any]:
        """ORT's ``providers`` argument: each provider with its options, first choice first.

        Touches no GPU, so it is tested on machines without one."""
        return [(self.provider, self._cuda_options()), "CPUExecutionProvider"]

    def _provider_chain(self) -> list[Any]:
        """``provider_options()`` for this machine, with anything they need on disk created."""
        return self.provider_options()

    def _load_impl(self) -> None:
        gpus = gpu_names()
        if isinstance(gpus, str):  # no GPU: the reason, not its characters counted as GPUs
            raise ProviderError(f"{self.name}: {gpus}")
        device_id = self.options["device_id"]
        if not 0 <= device_id < len(gpus):
            raise ProviderError(f"{self.name}: device_id {device_id} requested; GPUs here: {list(gpus)}")
        session, log = self._create_session(self._provider_chain())
        active = session.get_providers()
        if self.provider not in active:
            reason = f"{self.provider} did not become active; ORT said: {ort_failure_lines(log)}; {gpu_fix(self.name)}"
            self._fall_back(reason, active[0])
        self.session = session

    def _load_unavailable(self, reason: str) -> None:
        self._fall_back(reason, "CPUExecutionProvider")
        self.session, _ = self._create_session(["CPUExecutionProvider"])

    def _fall_back(self, reason: str, instead: str) -> None:
        """Raise, unless the caller allowed running on ``instead``: then say so on stderr."""
        if not self.options["allow_fallback"]:
            raise unavailable_error(self.name, reason)
        print(f"warning: {self.name} unavailable, running on {instead} ({reason})", file=sys.stderr)

    def _infer_impl(self, batch: Any) -> Any:
        # IO binding: the input is copied host-to-device once and the logits are written
        # straight to host memory, instead of ORT staging the output on the GPU first.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.spec.input_name, batch)
        binding.bind_output(self.spec.output_name, "cpu")
        self.session.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()[0]
