"""runtimes/ and deploy/ work on a machine without torch (edge boards have none), and
without the converters package (a bundle installs only runtimes).

Each check runs in a fresh interpreter where ``import torch`` fails, as if torch were
not installed: ``sys.modules["torch"] = None`` makes every import of it raise, and
``importlib.util.find_spec("torch")`` return None.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtimes", "deploy")

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def run_module_without_torch(module: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import runpy; sys.argv = [{module!r}, *sys.argv[1:]]; runpy.run_module({module!r}, run_name='__main__')"
    return run_without_torch(code, *args)


def all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = [str(REPO / package)]
        names += [m.name for m in pkgutil.walk_packages(path, prefix=f"{package}.")]
    return names


def test_every_module_imports_without_torch():
    modules = all_modules()
    assert "runtimes.adapters.cpu" in modules and "runtimes.run" in modules
    code = (
        "import importlib, json\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'converters'))))"
    )
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["torch"], "only the blocked placeholder may be there"


@pytest.mark.parametrize("module", ["runtimes.run", "runtimes.doctor", "runtimes.bench", "runtimes.verify", "deploy.bundle"])
def test_cli_help_without_torch(module):
    result = run_module_without_torch(module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_doctor_without_torch():
    result = run_module_without_torch("runtimes.doctor")
    assert result.returncode == 0, result.stderr
    assert "cpu       ok" in result.stdout
    assert "torch     unavailable: PyTorch is not installed" in result.stdout


# A bundle installs neither torch nor the onnx package: the commands a device runs first
# must not need them (doctor's probe model and bench's FLOP count once did).
BLOCK_ONNX = "sys.modules['onnx'] = None\n"


def run_on_device_install(module: str, *args: str) -> subprocess.CompletedProcess:
    code = BLOCK_ONNX + f"import runpy; sys.argv = [{module!r}, *sys.argv[1:]]; runpy.run_module({module!r}, run_name='__main__')"
    return run_without_torch(code, *args)


def test_doctor_and_bench_need_neither_torch_nor_onnx(demo_export):
    doctor = run_on_device_install("runtimes.doctor", "--model", str(demo_export.path))
    assert doctor.returncode == 0 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "  cpu       ok: CPUExecutionProvider" in doctor.stdout
    assert f"  {demo_export.path.name}\n    cpu       ok: CPUExecutionProvider, loaded and ran an image" in doctor.stdout
    bench = run_on_device_install("runtimes.bench", "--model", str(demo_export.path), "--providers", "cpu",
                                  "--iterations", "2", "--warmup", "0", "--no-cold-start", "--json")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["flops_per_image"] > 1e9 and report["gemm_peak_gflops"] > 0
    (row,) = report["rows"]
    assert row["provider"] == "cpu" and row["median_ms"] > 0 and row["of_limit"] > 0


def test_verify_and_run_need_neither_torch_nor_onnx(demo_export):
    verify = run_on_device_install("runtimes.verify", "--model", str(demo_export.path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified" in verify.stdout.splitlines()[-1]
    image = sorted((REPO / "samples" / "images").glob("*.jpg"))[0]
    run = run_on_device_install("runtimes.run", "--json", "--model", str(demo_export.path), str(image))
    assert run.returncode == 0, run.stderr
    assert "topk" in json.loads(run.stdout)


def test_classify_without_torch(demo_export):
    image = sorted((REPO / "samples" / "images").glob("*.jpg"))[0]
    result = run_module_without_torch("runtimes.run", "--json", "--model", str(demo_export.path), str(image))
    assert result.returncode == 0, result.stderr
    assert "topk" in json.loads(result.stdout)


def test_no_module_of_runtimes_or_deploy_imports_converters():
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if (
                    isinstance(node, ast.ImportFrom) and node.level == 0) else []
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                              if n.split(".")[0] == "converters"]
    assert offenders == []


def test_without_converters_torch_is_an_unavailable_provider(demo_export):
    block = "sys.modules['converters'] = None\n"
    doctor = run_without_torch(block + "from runtimes.doctor import main; main([])")
    assert doctor.returncode == 0, doctor.stderr
    assert "torch     unavailable: its package converters is not installed" in doctor.stdout
    image = sorted((REPO / "samples" / "images").glob("*.jpg"))[0]
    code = block + "import runpy; runpy.run_module('runtimes.run', run_name='__main__')"
    run = run_without_torch(code, "--provider", "torch", "--model", str(demo_export.path), str(image))
    assert run.returncode == 2 and run.stdout == "", run.stderr
    assert run.stderr.count("\n") == 1 and "torch: its package converters is not installed" in run.stderr, run.stderr
