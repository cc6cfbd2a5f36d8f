"""ONNX Runtime's TensorRT execution provider, with CUDA and then CPU behind it.

TensorRT builds an engine per input-shape profile, which takes minutes for GoogLeNet,
so the profile is explicit (batch 1 to ``max_batch``, tuned for ``opt_batch``) and the
engines are cached on disk. ORT names each cached engine by a hash of the graph, so
one cache folder serves any model; the folder itself is keyed by what makes an engine
invalid: TensorRT version, GPU, precision and profile.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from runtimes.adapters.cuda import CudaRunner
from runtimes.adapters.nvidia import gpu_names, tensorrt_version
from runtimes.errors import ProviderError


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/googlenet_deploy/tensorrt`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "googlenet_deploy" / "tensorrt"


def engine_cache_dir(root: Path, trt_version: str, gpu: str, fp16: bool, profile: tuple[int, int, int]) -> Path:
    """The cache folder for one TensorRT version, GPU, precision and batch profile."""
    gpu_slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    lo, opt, hi = profile
    return root / f"trt{trt_version}_{gpu_slug}_{'fp16' if fp16 else 'fp32'}_b{lo}-{opt}-{hi}"


class TensorrtRunner(CudaRunner):
    """ORT TensorrtExecutionProvider; options ``fp16``, ``opt_batch``, ``max_batch``, ``cache_dir``."""

    name = "tensorrt"
    provider = "TensorrtExecutionProvider"
    OPTIONS: dict[str, Any] = {**CudaRunner.OPTIONS, "fp16": False, "opt_batch": 1, "max_batch": 32, "cache_dir": None}

    def _provider_chain(self) -> list[Any]:
        chain = self.provider_options()
        # ORT creates the cache folder itself, but not its parents.
        Path(chain[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        return chain

    def provider_options(self, gpu: str | None = None, trt_version: str | None = None) -> list[Any]:
        """ORT's ``providers`` argument for ``gpu`` and TensorRT ``trt_version``.

        Both default to this machine's (NVML's name of ``device_id``, libnvinfer's
        version); given both, nothing is probed or written, so it is tested without a GPU.
        """
        opts = self.options
        device_id = opts["device_id"]
        profile = (1, opts["opt_batch"], opts["max_batch"])
        cache = engine_cache_dir(
            Path(opts["cache_dir"] or default_cache_root()),
            tensorrt_version() if trt_version is None else trt_version,
            gpu_names()[device_id] if gpu is None else gpu,
            opts["fp16"],
            profile,
        )
        spec = self.spec
        chw = f"3x{spec.crop_size}x{spec.crop_size}"
        shapes = [f"{spec.input_name}:{batch}x{chw}" for batch in profile]
        trt_options = {
            "device_id": device_id,
            "trt_fp16_enable": opts["fp16"],
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": shapes[0],
            "trt_profile_opt_shapes": shapes[1],
            "trt_profile_max_shapes": shapes[2],
        }
        # CUDA takes any node TensorRT rejects; CPU only what neither can run.
        return [(self.provider, trt_options), ("CUDAExecutionProvider", self._cuda_options()), "CPUExecutionProvider"]

    def _infer_impl(self, batch: Any) -> Any:
        # An engine runs only the batches its profile covers; ORT would fail with a long
        # shape error. Not checked on CPU after a fallback, which takes any batch.
        if len(batch) > self.options["max_batch"] and self.provider in self.session.get_providers():
            raise ProviderError(
                f"tensorrt: a batch of {len(batch)} images is over the engine profile's max_batch "
                f"{self.options['max_batch']}; create the runner with batch_size={len(batch)} (or max_batch) "
                "or send smaller batches"
            )
        return super()._infer_impl(batch)
