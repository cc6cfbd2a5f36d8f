"""What this machine is, as the runtimes see it: CPU model and instruction-set flags,
physical cores, GPUs, runtime versions. Cheap: files under /proc and package metadata
only, nothing imported, so `runtimes.run` can check a tuned choice at every start.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

# The instruction-set flags that change which runtime and precision is fastest.
INFERENCE_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp", "sve",
)
# The distributions whose version changes what a runtime computes or how fast.
RUNTIME_DISTRIBUTIONS = (
    "onnxruntime", "onnxruntime-gpu", "openvino", "opencv-python-headless", "opencv-python", "tensorrt", "numpy",
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def physical_cores() -> int:
    """Physical cores this process may use; SMT siblings add little to conv-heavy inference."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", _cpuinfo()))
    return max(1, min(allowed, len(cores) or allowed))


def cpu_info() -> dict[str, Any]:
    """CPU model, the instruction-set flags that matter for inference, and core counts."""
    text = _cpuinfo()
    found = re.search(r"^(?:model name|Hardware|Model)\s*:\s*(.+)$", text, re.M)
    model = found.group(1).strip() if found else (platform.processor() or platform.machine())
    found = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    flags = set(found.group(1).split()) if found else set()
    return {
        "model": model,
        "flags": [f for f in INFERENCE_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
    }


def gpu_names() -> list[str]:
    """The NVIDIA GPUs the driver lists (no CUDA library is loaded to learn them)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            found = re.search(r"^Model:\s*(.+)$", info.read_text(), re.M)
        except OSError:
            continue
        if found:
            names.append(found.group(1).strip())
    return names


def fingerprint() -> dict[str, Any]:
    """What a tuned choice depends on: CPU, flags, cores, GPUs, runtime and toolkit versions."""
    from runtimes import __version__
    from runtimes.versions import package_versions

    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cores": cpu["physical_cores"],
        "gpu": gpu_names(),
        "toolkit": __version__,
        "versions": package_versions(*RUNTIME_DISTRIBUTIONS),
    }


def fingerprint_mismatch(tuned: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why a choice tuned on ``tuned`` does not hold ``here``, or None when it does.

    A runtime installed on only one side is not a mismatch: a choice that needs a missing
    runtime fails to load, and the next one is tried.
    """
    shown = {"cpu": "the CPU", "cpu_flags": "the CPU flags", "cores": "the physical cores", "gpu": "the GPUs",
             "toolkit": "googlenet-deploy"}
    for key, what in shown.items():
        if tuned.get(key) != here.get(key):
            return f"tuned on {what} {_show(tuned.get(key))}, this machine has {_show(here.get(key))}"
    theirs, ours = tuned.get("versions") or {}, here.get("versions") or {}
    for name, version in theirs.items():
        if name in ours and ours[name] != version:
            return f"tuned with {name} {version}, this machine has {name} {ours[name]}"
    return None


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)
