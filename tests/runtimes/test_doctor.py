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


def test_the_tiny_model_is_written_byte_for_byte_as_onnx_writes_it(tmp_path):
    """Written without the onnx package (a device has none); onnx's own builder, loader and
    full checker are the independent judges."""
    import onnx
    from onnx import TensorProto, helper

    from runtimes.doctor import TINY_SIZE, write_tiny_model
    from runtimes.graph import read_graph_io
    from runtimes.spec import METADATA_KEY, ModelSpec

    path = write_tiny_model(tmp_path / "tiny.onnx")
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    expected = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = ModelSpec(labels=("r", "g", "b"), resize_size=TINY_SIZE, crop_size=TINY_SIZE)
    helper.set_model_props(expected, {METADATA_KEY: spec.to_json()})
    assert path.read_bytes() == expected.SerializeToString()
    assert ModelSpec.from_metadata_map(read_graph_io(path).metadata) == spec


def _load_result(provider: str, path: Path, spec=None) -> str:
    """What loading ``path`` on ``provider`` does here, judged by the runner itself: "ok" or its error."""
    from runtimes.adapters import create_runner
    from runtimes.errors import ToolkitError

    try:
        with create_runner(provider, path, spec):
            return "ok"
    except ToolkitError as exc:
        return f"failed: {exc}"


def _models_section(out: str) -> dict[str, dict[str, str]]:
    """``{model: {provider: result}}`` from the doctor's "models" section."""
    section = out.split("\nmodels (", 1)[1].split("\nNVIDIA", 1)[0].splitlines()[1:]
    found: dict[str, dict[str, str]] = {}
    for line in section:
        if line.startswith("    "):
            provider, result = line.split(None, 1)
            found[model][provider] = result
        else:
            model = line.strip()
            found[model] = {}
    return found


def test_doctor_loads_the_model_and_each_variant_beside_it_on_each_runtime(demo_export, demo_fp16):
    """Each file beside the model (fp32, and the fp16 variant at least) on each runtime
    available here, with what a load really does on this machine: OpenCV DNN runs the fp16
    variant on some CPUs and fails it on others, and the doctor must say which is the case here."""
    from runtimes.adapters import available_providers
    from runtimes.spec import variant_path

    result = subprocess.run([sys.executable, "-m", "runtimes.doctor", "--model", str(demo_export.path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    files = [variant_path(demo_export.path, p) for p in ("fp32", "fp16", "int8", "bf16")]
    present = [p for p in files if p.is_file()]
    assert demo_fp16 in present
    providers = [p for p in available_providers() if p != "torch"]
    found = _models_section(result.stdout)
    assert list(found) == [p.name for p in present]
    for path in present:
        assert list(found[path.name]) == providers
        for provider, line in found[path.name].items():
            expected = _load_result(provider, path)
            if expected == "ok":
                assert line.startswith("ok: ") and "loaded and ran an image in" in line, (path.name, line)
            else:  # the runner's own one-line reason, as a load here gives it
                assert line == expected, (path.name, line)


def test_without_a_model_the_doctor_names_the_probe_instead_of_claiming(doctor):
    out = doctor.stdout
    assert "models: none given; `--model M` or `--bundle B` loads each precision variant on each runtime here" in out
    opencv = next(line for line in out.splitlines() if line.startswith("  opencv    fp32"))
    assert "does not import" not in opencv and "`python -m runtimes.doctor --model M`" in opencv


@pytest.mark.parametrize("flag", ["--model", "--bundle"])
def test_a_missing_model_or_bundle_is_one_line_before_any_report(flag, tmp_path):
    result = subprocess.run([sys.executable, "-m", "runtimes.doctor", flag, str(tmp_path / "nowhere")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "nowhere" in result.stderr
