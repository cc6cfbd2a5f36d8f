"""What can run here: library versions, which runtimes really work, which GPU libraries are missing.

    python -m runtimes.doctor [--model M | --bundle DIR|DIR.tar.gz]

Every runtime is proven by loading a tiny model through its real adapter and running
it, not by trusting ``onnxruntime.get_available_providers()`` (which lists CUDA
whenever onnxruntime-gpu is installed, GPU or not). With ``--model`` (and the variants
beside it) or ``--bundle``, each model file is also loaded on each runtime available
here, a load that runs one image: whether a runtime runs a variant can depend on its
version and the CPU (OpenCV 5.1 imports an fp16 file on a CPU with AVX512-FP16, then
fails to run it; on others it refuses it at import), so the doctor tries rather than
claims. Nothing here needs torch or the ``onnx`` package: torch's version is read from
package metadata, and the tiny model is written by ``runtimes.graph``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtimes.cli import run_cli
from runtimes.errors import first_line
from runtimes.versions import package_versions

if TYPE_CHECKING:
    from runtimes.spec import ModelSpec

# A model to load: (the name it is reported under, its file, its spec or None to read it from the file).
ModelFile = tuple[str, Path, "ModelSpec | None"]

# Library -> the distributions that may provide it, preferred first.
DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "openvino": ("openvino",),
    "onnx": ("onnx",),
    "torch": ("torch",),
}
TINY_SIZE = 2  # the tiny model's input is N x 3 x 2 x 2


def library_versions() -> dict[str, str]:
    """``{library: "version (distribution)"}``, or "not installed"; imports nothing."""
    versions = {"python": platform.python_version()}
    for library, distributions in DISTRIBUTIONS.items():
        installed = package_versions(*distributions)  # preferred distribution first
        versions[library] = next((f"{v} ({dist})" for dist, v in installed.items()), "not installed")
    return versions


def write_tiny_model(path: Path) -> Path:
    """An N x 3 x 2 x 2 -> N x 3 global-average-pool model carrying this toolkit's metadata."""
    from runtimes.graph import FLOAT, Tensor, model_bytes
    from runtimes.spec import METADATA_KEY, ModelSpec

    spec = ModelSpec(labels=("r", "g", "b"), resize_size=TINY_SIZE, crop_size=TINY_SIZE)
    path.write_bytes(model_bytes(
        [("GlobalAveragePool", ["input"], ["pooled"]), ("Flatten", ["pooled"], ["logits"])],
        [Tensor("input", FLOAT, ("batch", 3, TINY_SIZE, TINY_SIZE))],
        [Tensor("logits", FLOAT, ("batch", 3))],
        {METADATA_KEY: spec.to_json()},
    ))
    return path


def probe_runtimes(model: Path) -> dict[str, str]:
    """``{provider: "ok: <what ran>" or "unavailable: <reason>"}`` from one real inference each."""
    import numpy as np

    from runtimes.adapters import RUNNERS, create_runner, unavailable_reason
    from runtimes.errors import ToolkitError

    batch = np.arange(2 * 3 * TINY_SIZE * TINY_SIZE, dtype=np.float32).reshape(2, 3, TINY_SIZE, TINY_SIZE)
    expected = batch.mean(axis=(2, 3))
    results = {}
    for name in RUNNERS:
        reason = unavailable_reason(name)
        if reason is not None:
            results[name] = f"unavailable: {reason}"
            continue
        if name == "torch":  # the reference needs a real GoogLeNet checkpoint, not a tiny graph
            results[name] = "installed (reference only: runs a source checkpoint)"
            continue
        try:
            with create_runner(name, model) as runner:
                ok = np.allclose(runner.infer(batch), expected, atol=1e-5)
                detail = ", ".join(runner.active_providers())
                if name == "openvino":
                    detail += f" ({runner.inference_precision()})"
                results[name] = f"ok: {detail}" if ok else f"wrong result on {detail}"
        except ToolkitError as exc:
            results[name] = f"failed: {exc}"
    return results


def precision_report() -> list[str]:
    """Which precisions each CPU runtime can run fast here, from the CPU's flags and OpenVINO's own report."""
    from runtimes.device import cpu_info

    info = cpu_info()
    flags = set(info["flags"])
    arm = "asimd" in flags or platform.machine().lower() in ("aarch64", "arm64")
    features, int8 = _arm_cpu(flags) if arm else _x86_cpu(info["flags"])
    lines = [f"CPU: {info['model']}, {info['physical_cores']} cores; {features}",
             f"cpu       fp32; int8 (QDQ): {int8}; fp16 variants run; whether faster depends on the CPU "
             "(runtimes.bench --precisions fp32,fp16)"]
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    try:
        import openvino as ov

        capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        supported = ["f32"] + [name for cap, name in (("BF16", "bf16"), ("FP16", "f16"), ("INT8", "int8 (QDQ)")) if cap in capabilities]
        note = "" if "FP16" in capabilities else "; --precision f16 runs as bf16" if "BF16" in capabilities else "; f16/bf16 run as f32"
        lines.append(f"openvino  {', '.join(supported)} (OpenVINO's CPU capabilities{', ' + '/'.join(bf16) if bf16 else ''}){note}")
    except Exception as exc:  # not installed, or no CPU plugin
        lines.append(f"openvino  unavailable: {type(exc).__name__}: {first_line(exc)}")
    lines.append("opencv    fp32; whether it runs the fp16 and int8 variants depends on its version and the CPU: "
                 "`python -m runtimes.doctor --model M` (or --bundle B) loads each one here")
    return lines


def _x86_cpu(flags: list[str]) -> tuple[str, str]:
    """(the CPU's inference flags, int8 advice) for an x86 CPU."""
    vnni = sorted(set(flags) & {"avx512_vnni", "avx_vnni", "amx_int8"})
    int8 = (f"fast, {'/'.join(vnni)}" if vnni else
            "runs, but without VNNI uint8 x int8 products can saturate: check accuracy with runtimes.evaluate")
    return ", ".join(flags) or "no AVX flags", int8


# aarch64 feature -> the name its users know it by.
ARM_FEATURES = {"asimd": "NEON", "asimdhp": "fp16 arithmetic", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
                "sve": "SVE", "sve2": "SVE2"}


def _arm_cpu(flags: set[str]) -> tuple[str, str]:
    """(features, int8 advice) for an aarch64 CPU: NEON, dotprod and i8mm named whether present or
    not, as x86's AVX-512 and AMX are; the advice from ONNX Runtime's arm64 kernels, which use
    SDOT/UDOT where dotprod is, and SMMLA where i8mm is (Cortex-A76 and A78 have dotprod; a Pi 4's
    A72 has neither)."""
    has = [f"{ARM_FEATURES[f]} ({f})" for f in ARM_FEATURES if f in flags]
    lacks = [ARM_FEATURES[f] for f in ("asimd", "asimddp", "i8mm") if f not in flags]
    features = (", ".join(has) or "no features listed") + (f"; no {', no '.join(lacks)}" if lacks else "")
    kernels = " and ".join(name for f, name in (("i8mm", "i8mm"), ("asimddp", "dotprod")) if f in flags)
    if kernels:
        return features, f"fast, {kernels} kernels"
    return features, "runs on plain NEON, without dotprod: less speed-up than on a dotprod core (measure with runtimes.tune)"


def model_files(stack: contextlib.ExitStack, model: Path | None, bundle: Path | None) -> list[ModelFile]:
    """Each model to try: ``model`` and the precision variants
    beside it (``<stem>.fp16.onnx``, ...), or every model in ``bundle`` (open while ``stack`` lasts)."""
    from runtimes.spec import require_model, variant_path
    from runtimes.tolerances import BY_PRECISION

    if bundle is not None:
        from runtimes.bundle import open_bundle

        opened = stack.enter_context(open_bundle(bundle))
        return [(f"{m.precision}  {m.path.relative_to(opened.root)}", m.path, m.spec) for m in opened.models.values()]
    require_model(model)
    found = {variant_path(model, precision) for precision in BY_PRECISION} - {model}
    return [(model.name, model, None)] + [(path.name, path, None) for path in sorted(found) if path.is_file()]


def probe_models(models: list[ModelFile]) -> dict[str, dict[str, str]]:
    """``{name: {provider: "ok: ..." or "failed: <the one-line reason>"}}``: each model loaded,
    which runs one image, on each runtime available here (torch needs a checkpoint, not a file)."""
    from runtimes.adapters import available_providers, create_runner
    from runtimes.errors import ToolkitError

    providers = [p for p in available_providers() if p != "torch"]
    results: dict[str, dict[str, str]] = {}
    for name, path, spec in models:
        results[name] = {}
        for provider in providers:
            started = time.perf_counter()
            try:
                with create_runner(provider, path, spec) as runner:
                    detail = ", ".join(runner.active_providers())
                results[name][provider] = f"ok: {detail}, loaded and ran an image in {time.perf_counter() - started:.2f} s"
            except ToolkitError as exc:
                results[name][provider] = f"failed: {exc}"
    return results


def gpu_report() -> list[str]:
    """Lines on the NVIDIA driver, GPUs and each CUDA, cuDNN and TensorRT library."""
    from runtimes.adapters import nvidia

    gpus = nvidia.gpu_names()
    lines = [f"GPUs: {', '.join(gpus) if isinstance(gpus, tuple) else gpus}"]
    folders = nvidia.pip_lib_dirs()
    lines.append(f"pip NVIDIA library folders: {', '.join(folders) if folders else 'none'}")
    for name in nvidia.CUDA_LIBS + nvidia.TENSORRT_LIBS:
        status = nvidia.load_library(name)
        lines.append(f"{name:<26} {'found: ' + status.path if status.found else 'missing: ' + status.error}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.doctor", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="also load this model and each variant beside it on every runtime here")
    source.add_argument("--bundle", type=Path, help="also load each model of this bundle (folder or .tar.gz) on every runtime")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        # Opened first: a missing model or a damaged bundle is one line, before any report.
        models = model_files(stack, args.model, args.bundle) if args.model or args.bundle else []
        report(models)
    return 0


def report(models: list[ModelFile]) -> None:
    """Print every section; ``models`` (from :func:`model_files`) are loaded on each runtime."""
    from runtimes.adapters.nvidia import gpu_fix

    print("libraries")
    for library, version in library_versions().items():
        print(f"  {library:<12} {version}")
    with tempfile.TemporaryDirectory() as folder:
        results = probe_runtimes(write_tiny_model(Path(folder) / "tiny.onnx"))
    print("runtimes (each ran a tiny model)")
    for name, result in results.items():
        print(f"  {name:<9} {result}")
    print("precisions on this CPU")
    for line in precision_report():
        print(f"  {line}")
    if not models:
        print("models: none given; `--model M` or `--bundle B` loads each precision variant on each runtime here")
    else:
        print("models (each loaded on each runtime here, running one image)")
        for name, by_provider in probe_models(models).items():
            print(f"  {name}")
            for provider, result in by_provider.items():
                print(f"    {provider:<9} {result}")
    print("NVIDIA (onnxruntime-gpu 1.31 expects CUDA 13, cuDNN 9, TensorRT 10)")
    for line in gpu_report():
        print(f"  {line}")
    if not results["cuda"].startswith("ok"):
        print(f"fix for cuda: {gpu_fix()}")

if __name__ == "__main__":
    run_cli(main)
