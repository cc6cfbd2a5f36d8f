"""``python -m runtimes.doctor`` reports versions, runtimes that really ran, and missing GPU libraries."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes.adapters import unavailable_reason

REPO = Path(__file__).resolve().parents[2]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def doctor() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtimes.doctor"], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_doctor_reports_every_runtime_and_exits_zero(doctor):
    assert doctor.returncode == 0, doctor.stderr
    out = doctor.stdout
    assert "Traceback" not in doctor.stderr
    for library in ("python", "numpy", "onnxruntime", "opencv", "openvino", "onnx", "torch"):
        assert f"\n  {library:<12} " in out
    assert "  cpu       ok: CPUExecutionProvider" in out
    assert "  opencv    ok: OpenCV:CPU" in out
    for library in ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9"):
        assert f"  {library}" in out
    cuda = unavailable_reason("cuda")
    if cuda is not None:
        assert f"  cuda      unavailable: {cuda}" in out
        assert "fix for cuda: onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9" in out


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is an optional extra: pip install 'googlenet-deploy[openvino]'")
def test_doctor_runs_openvino_in_fp32(doctor):
    assert "  openvino  ok: OpenVINO:CPU (f32)" in doctor.stdout


def test_doctor_versions_come_from_metadata_without_importing_the_libraries():
    code = (
        "import json, sys\n"
        "from runtimes.doctor import library_versions\n"
        "versions = library_versions()\n"
        "heavy = sorted({'numpy', 'onnxruntime', 'cv2', 'openvino', 'onnx', 'torch'} & set(sys.modules))\n"
        "print(json.dumps({'versions': versions, 'imported': heavy}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["imported"] == []
    versions = report["versions"]
    assert versions["python"].count(".") == 2
    assert versions["onnxruntime"].split()[1] in ("(onnxruntime-gpu)", "(onnxruntime)")
    if not HAS_OPENVINO:
        assert versions["openvino"] == "not installed"


def test_precision_report_follows_the_cpu_flags():
    from pathlib import Path

    from runtimes.doctor import precision_report

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    lines = precision_report()
    cpu_line = next(line for line in lines if line.startswith("cpu "))
    has_vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert ("int8 (QDQ): fast" in cpu_line) == has_vnni
    assert ("can saturate" in cpu_line) == (not has_vnni)
