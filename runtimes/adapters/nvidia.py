"""Finding the NVIDIA libraries ONNX Runtime's GPU providers need, and saying what is missing.

ONNX Runtime loads ``libonnxruntime_providers_cuda.so`` lazily and, when that fails, logs
the reason and silently runs on CPU. Loading the provider library ourselves with
ctypes gets the same dlopen error as a string (e.g. "libcublasLt.so.13: cannot open
shared object file") that we can put into a ProviderError.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9; ORT's own preload list, in load order.
CUDA_LIBS = (
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcufft.so.12",
    "libcurand.so.10",
    "libcudnn.so.9",
)
TENSORRT_LIBS = ("libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10")

CUDA_FIX = (
    "onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9: pip install 'onnxruntime-gpu[cuda,cudnn]' "
    "or install them and set LD_LIBRARY_PATH"
)
TENSORRT_FIX = f"TensorRT 10 for CUDA 13 is also needed: pip install tensorrt-cu13; {CUDA_FIX}"
# A Jetson's CUDA is JetPack's: PyPI's aarch64 onnxruntime-gpu is built for CUDA 13 on
# server-class (SBSA) machines, and its CUDA provider does not load on JetPack 6.
JETSON_FIX = (
    "on a Jetson, install onnxruntime-gpu from NVIDIA's Jetson index for its JetPack, not from PyPI (whose aarch64 "
    "build is for CUDA 13 servers): pip install onnxruntime-gpu --extra-index-url "
    "https://pypi.jetson-ai-lab.io/jp6/cu126 on JetPack 6 (other JetPacks have their own folder there)"
)


def gpu_fix(kind: str = "cuda") -> str:
    """How to get ORT's ``kind`` ("cuda" or "tensorrt") provider working on this machine."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return JETSON_FIX
    return TENSORRT_FIX if kind == "tensorrt" else CUDA_FIX


@dataclass(frozen=True)
class LibStatus:
    """One shared library: where it loaded from, or why it did not."""

    name: str
    path: str | None
    error: str | None

    @property
    def found(self) -> bool:
        return self.error is None


def pip_lib_dirs() -> list[str]:
    """Library folders of pip's NVIDIA wheels (nvidia-*-cu13, tensorrt-cu13-libs) on sys.path."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "lib"))
        dirs += glob.glob(os.path.join(entry, "tensorrt_libs"))
    return sorted(set(dirs))


@functools.cache
def load_library(name: str) -> LibStatus:
    """Load ``name`` globally, from pip's NVIDIA wheels first, then the default search path.

    RTLD_GLOBAL makes the provider library's own dlopen reuse it, which is how
    ``pip install onnxruntime-gpu[cuda,cudnn]`` works without LD_LIBRARY_PATH.
    """
    for folder in pip_lib_dirs():
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                return LibStatus(name, candidate, None)
            except OSError as exc:
                return LibStatus(name, candidate, str(exc))
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return LibStatus(name, None, str(exc))
    return LibStatus(name, _mapped_path(name) or name, None)


def _mapped_path(name: str) -> str | None:
    """Where the dynamic linker found an already-loaded library (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if line.rstrip().endswith("/" + name)}
    except OSError:
        return None
    return min(paths) if paths else None


def ort_capi_dir() -> Path | None:
    """onnxruntime's capi folder, where the provider libraries live (found without importing ORT)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "capi"


@functools.cache
def provider_library_error(kind: str) -> str | None:
    """Why ``libonnxruntime_providers_{kind}.so`` cannot load, after preloading its dependencies."""
    capi = ort_capi_dir()
    if capi is None:
        return "onnxruntime is not installed"
    library = capi / f"libonnxruntime_providers_{kind}.so"
    if not library.is_file():
        return f"this onnxruntime build has no {kind} provider ({library.name} missing; install onnxruntime-gpu)"
    if isinstance(gpu_names(), tuple):  # without a GPU it could only list the libraries that are absent
        ort_preload_dlls()
    for name in CUDA_LIBS + (TENSORRT_LIBS if kind == "tensorrt" else ()):
        load_library(name)
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"cannot load {library.name}: {exc}"
    return None


@functools.cache
def ort_preload_dlls() -> None:
    """Let ONNX Runtime load the CUDA and cuDNN libraries its own build was made for, once.

    ``onnxruntime.preload_dlls()`` (ORT 1.21 and later; older versions skip this) knows
    its build's CUDA major version and the pip wheels' folder layout, which CUDA_LIBS
    pins. It reports a library it cannot load with print(): that goes to stderr here,
    not into the JSON Lines on stdout.
    """
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(sys.stderr):
            preload()


@functools.cache
def gpu_names() -> tuple[str, ...] | str:
    """Names of the visible NVIDIA GPUs via NVML (the driver's library), or why there are none."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return "no NVIDIA driver (libnvidia-ml.so.1 not found)"
    if nvml.nvmlInit_v2() != 0:
        return "the NVIDIA driver is installed but NVML failed to initialise (no GPU visible?)"
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return "NVML sees no NVIDIA GPU"
        names = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            buffer = ctypes.create_string_buffer(96)
            nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
            nvml.nvmlDeviceGetName(handle, buffer, len(buffer))
            names.append(buffer.value.decode(errors="replace"))
        return tuple(names)
    finally:
        nvml.nvmlShutdown()


def gpu_provider_unavailable(kind: str) -> str | None:
    """Why ORT's ``kind`` ("cuda" or "tensorrt") provider cannot run here, with the fix; None if it may."""
    fix = gpu_fix(kind)
    library_error = provider_library_error(kind)
    if library_error is not None:
        return f"{library_error}; {fix}"
    gpus = gpu_names()
    if isinstance(gpus, str):
        return f"{gpus}; {kind} needs an NVIDIA GPU and its driver"
    return None


@functools.cache
def tensorrt_version() -> str:
    """TensorRT's library version number (e.g. "100900"), or "unknown"."""
    status = load_library("libnvinfer.so.10")
    if not status.found:
        return "unknown"
    return str(ctypes.CDLL(status.path).getInferLibVersion())
