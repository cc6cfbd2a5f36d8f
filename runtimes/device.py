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

# The instruction-set flags that change which runtime and precision is fastest: x86's
# "flags", and aarch64's "Features" (asimd is NEON, asimdhp fp16 arithmetic, asimddp the
# int8 dot product, i8mm the int8 matrix multiply).
INFERENCE_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)
# Arm Ltd's cores (CPU implementer 0x41) by their "CPU part": what an aarch64 kernel shows
# instead of a model name. The boards this toolkit meets: Pi 4 (A72), Pi 5 (A76),
# Jetson Orin (A78AE), RK3588 (A76 + A55), i.MX 8M (A53), Graviton 2/3 (N1/V1).
ARM_CORES = {
    "0xd01": "Cortex-A32", "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2",
}
# The distributions whose version changes what a runtime computes or how fast.
RUNTIME_DISTRIBUTIONS = (
    "onnxruntime", "onnxruntime-gpu", "openvino", "opencv-python-headless", "opencv-python", "tensorrt", "numpy",
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def allowed_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may use; SMT siblings add little to conv-heavy inference."""
    allowed = allowed_cores()
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", _cpuinfo()))
    return max(1, min(allowed, len(cores) or allowed))


def cpu_info() -> dict[str, Any]:
    """CPU model, the instruction-set flags that matter for inference, and core counts."""
    text = _cpuinfo()
    found = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    flags = set(found.group(1).split()) if found else set()
    return {
        "model": _model_name(text),
        "flags": [f for f in INFERENCE_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
    }


def _model_name(cpuinfo: str) -> str:
    """x86: the "model name". aarch64 names no model per core (or a bare "ARMv8 Processor"):
    the board ("Model", as a Raspberry Pi's kernel gives it), with its cores named from their
    part numbers, e.g. "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)" or "Cortex-A76 + Cortex-A55"."""
    cores = []
    for implementer, part in re.findall(r"^CPU implementer\s*:\s*(\w+)[\s\S]*?^CPU part\s*:\s*(\w+)", cpuinfo, re.M):
        name = ARM_CORES.get(part.lower()) if implementer.lower() == "0x41" else None
        name = name or f"implementer {implementer} part {part}"
        if name not in cores:
            cores.append(name)
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    if found and not cores:
        return found.group(1).strip()
    board = re.search(r"^Model\s*:\s*(.+)$", cpuinfo, re.M) or re.search(r"^Hardware\s*:\s*(.+)$", cpuinfo, re.M)
    if cores:
        return f"{board.group(1).strip()} ({' + '.join(cores)})" if board else " + ".join(cores)
    return board.group(1).strip() if board else (platform.processor() or platform.machine())


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
