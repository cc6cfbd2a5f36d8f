"""``python -m runtimes.doctor`` reports versions, runtimes that really ran, and missing GPU libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtimes.adapters import unavailable_reason
from runtimes.doctor import library_versions

REPO = Path(__file__).resolve().parents[2]


def test_doctor_reports_every_runtime_and_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "runtimes.doctor"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr
    for library in ("python", "numpy", "onnxruntime", "opencv", "openvino", "onnx", "torch"):
        assert f"\n  {library:<12} " in out
    assert "  cpu       ok: CPUExecutionProvider" in out
    assert "  opencv    ok: OpenCV:CPU" in out
    assert "  openvino  ok: OpenVINO:CPU (f32)" in out
    for library in ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9"):
        assert f"  {library}" in out
    cuda = unavailable_reason("cuda")
    if cuda is not None:
        assert f"  cuda      unavailable: {cuda}" in out
        assert "fix for cuda: onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9" in out


def test_versions_come_from_metadata_not_imports():
    versions = library_versions()
    assert versions["python"].count(".") == 2
    assert versions["onnxruntime"].split()[1] in ("(onnxruntime-gpu)", "(onnxruntime)")
