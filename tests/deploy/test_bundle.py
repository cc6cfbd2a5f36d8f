"""Edge bundles: built from the demo model and checked file by file. A fresh virtual
environment with only the bundle's requirements (no torch, no onnx package) runs verify,
run, doctor and bench on every device Python in `make test-pythons` (tests/pythons/check.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deploy.bundle import build_bundle
from runtimes.spec import variant_path
from runtimes.bundle import FORMAT, MANIFEST, open_bundle
from runtimes.errors import BundleError
from runtimes.reference import reference_path_for
from samples.generate import IMAGES_DIR
from tests.helpers import save_fp16_variant

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_with_variant(demo_export, tmp_path_factory) -> Path:
    """The demo model, its reference answers and an fp16 variant, in a folder of their own."""
    folder = tmp_path_factory.mktemp("model")
    model = folder / "googlenet.onnx"
    shutil.copyfile(demo_export.path, model)
    shutil.copyfile(demo_export.reference_path, reference_path_for(model))
    save_fp16_variant(model, variant_path(model, "fp16"))
    return model


@pytest.fixture(scope="module")
def bundle(model_with_variant, tmp_path_factory) -> tuple[Path, Path]:
    return build_bundle(model_with_variant, tmp_path_factory.mktemp("out") / "gnet", variants=["fp16"])


def _cli(module: str, *args: str, python: str = sys.executable, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / bundle_dir.name
    shutil.copytree(bundle_dir, copy)
    return copy


def test_manifest_lists_every_file_with_its_hash(bundle):
    folder, tarball = bundle
    manifest = json.loads((folder / MANIFEST).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {"models/googlenet.onnx", "models/googlenet.fp16.onnx", "reference.npz", "labels.txt", "requirements.txt"} <= on_disk
    assert [m["precision"] for m in manifest["models"]] == ["fp32", "fp16"]  # fp32 runs by default unless --default names a variant
    assert manifest["providers"] == ["cpu", "opencv"] and manifest["format"] == FORMAT
    requirements = (folder / "requirements.txt").read_text()
    assert "torch" not in requirements and "onnxruntime==" in requirements and "./wheels/googlenet_deploy_runtime-" in requirements
    with tarfile.open(tarball) as archive:
        assert {m.name for m in archive.getmembers() if m.isfile()} == {f"gnet/{n}" for n in on_disk | {MANIFEST}}


def test_rebuilding_gives_the_same_tarball(model_with_variant, bundle, tmp_path):
    _, again = build_bundle(model_with_variant, tmp_path / "gnet", variants=["fp16"])
    assert again.read_bytes() == bundle[1].read_bytes()


def test_bench_measures_each_model_of_a_bundle_on_its_providers(bundle, capsys):
    """By default: every precision the bundle holds, on the bundle's provider preference."""
    from runtimes.bench import main as bench

    _, tarball = bundle
    assert bench(["--bundle", str(tarball), "--iterations", "1", "--warmup", "0", "--no-cold-start", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with open_bundle(tarball) as opened:
        expected = [(p, precision) for precision in opened.models for p in opened.providers]
    assert [(r["provider"], r["precision"]) for r in report["rows"]] == expected
    assert report["model"] == str(tarball)
    cpu = [r for r in report["rows"] if r["provider"] == "cpu"]
    assert [r["runs_on"] for r in cpu] == [["CPUExecutionProvider"]] * len(opened.models)
    assert all(0 < r["of_limit"] for r in cpu) and cpu[[r["precision"] for r in cpu].index("fp32")]["speedup"] == 1.0


def test_bench_of_a_bundle_without_the_asked_precision_skips_that_row(bundle, capsys):
    from runtimes.bench import main as bench

    folder, _ = bundle
    assert bench(["--bundle", str(folder), "--providers", "cpu", "--precisions", "int8", "--iterations", "1",
                  "--no-cold-start", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["skipped"].startswith("the bundle holds no int8 model (it has: ") and "fp16" in row["skipped"]


def test_one_changed_byte_is_refused_by_name(bundle, tmp_path):
    copy = _copy(bundle[0], tmp_path)
    model = copy / "models" / "googlenet.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    for module, args in (("runtimes.verify", ()), ("runtimes.run", (str(IMAGES_DIR),))):
        proc = _cli(module, "--bundle", str(copy), *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
        assert "models/googlenet.onnx does not match its sha256 in bundle.json" in proc.stderr


def test_a_truncated_tarball_is_a_clear_error(bundle, tmp_path):
    cut = tmp_path / "gnet.tar.gz"
    cut.write_bytes(bundle[1].read_bytes()[: bundle[1].stat().st_size // 2])
    proc = _cli("runtimes.verify", "--bundle", str(cut))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: bundle {cut} is truncated or corrupt") and proc.stderr.count("\n") == 1


def test_the_tarball_itself_verifies(bundle):
    proc = _cli("runtimes.verify", "--bundle", str(bundle[1]), "--precision", "fp32")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_bundle_from_a_newer_toolkit_names_what_it_needs(bundle, tmp_path):
    copy = _copy(bundle[0], tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format": FORMAT + 1, "toolkit": "9.1.0"}))
    with pytest.raises(BundleError, match=rf"made by googlenet-deploy 9\.1\.0 \(bundle format {FORMAT + 1}\).*reads format {FORMAT}"):
        with open_bundle(copy):
            pass


def test_a_missing_file_is_named(bundle, tmp_path):
    copy = _copy(bundle[0], tmp_path)
    (copy / "reference.npz").unlink()
    with pytest.raises(BundleError, match="reference.npz is missing; copy the whole bundle again"):
        with open_bundle(copy):
            pass


def test_a_path_leaving_the_bundle_is_refused(bundle, tmp_path):
    copy = _copy(bundle[0], tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["../outside.txt"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="refusing the path '../outside.txt'"):
        with open_bundle(copy):
            pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": ["int8"]}, r"no int8 variant at .*googlenet\.int8\.onnx"),
        ({"variants": ["bf17"]}, r"unknown variant 'bf17'; known: fp16, int8"),
        ({"target": "tpu"}, r"unknown target 'tpu'; known: cpu, cuda, tensorrt, openvino, opencv"),
    ],
)
def test_bad_requests_fail_before_writing(model_with_variant, tmp_path, kwargs, message):
    with pytest.raises(BundleError, match=message):
        build_bundle(model_with_variant, tmp_path / "b", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_out_must_be_new_or_a_bundle(model_with_variant, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    proc = _cli("deploy.bundle", "--model", str(model_with_variant), "--out", str(tmp_path / "photos"))
    assert proc.returncode == 2 and "exists and is not a bundle" in proc.stderr
    assert (tmp_path / "photos" / "keep.jpg").read_bytes() == b"x"


def test_openvino_target_pins_openvino_and_prefers_it(model_with_variant, tmp_path):
    pytest.importorskip("openvino", reason="openvino is an optional extra: pip install 'googlenet-deploy[openvino]'")
    folder, _ = build_bundle(model_with_variant, tmp_path / "ov", target="openvino")
    requirements = (folder / "requirements.txt").read_text()
    assert "openvino==" in requirements and "onnxruntime" not in requirements
    proc = _cli("runtimes.verify", "--bundle", str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "provider openvino (OpenVINO:CPU)" in proc.stdout


def test_several_targets_pin_each_runtime_and_list_their_providers_in_order(model_with_variant, tmp_path):
    pytest.importorskip("openvino", reason="openvino is an optional extra: pip install 'googlenet-deploy[openvino]'")
    folder, _ = build_bundle(model_with_variant, tmp_path / "both", target="cpu,openvino", variants=["fp16"])
    pins = [line.split("==")[0] for line in (folder / "requirements.txt").read_text().splitlines()
            if "==" in line]
    assert "onnxruntime" in pins and "openvino" in pins and "onnxruntime-gpu" not in pins
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["target"] == "cpu,openvino" and manifest["providers"] == ["cpu", "openvino", "opencv"]
    assert "python -m runtimes.tune --bundle ." in (folder / "README.md").read_text()
    with open_bundle(folder) as opened:
        assert opened.providers == ("cpu", "openvino", "opencv") and list(opened.models) == ["fp32", "fp16"]


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_a_hostile_tarball_writes_nothing_outside(tmp_path, kind):
    import io

    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        if kind == "symlink":
            info = tarfile.TarInfo("gnet/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
        else:
            name = "gnet/../../escaped.txt" if kind == "parent" else str(tmp_path / "escaped.txt")
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(BundleError, match="refusing"):
        with open_bundle(tarball):
            pass
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_a_provider_that_cannot_run_here_falls_to_the_next_in_the_bundle(model_with_variant, tmp_path):
    from runtimes.adapters import unavailable_reason

    folder, _ = build_bundle(model_with_variant, tmp_path / "gpu", target="cuda")
    assert "onnxruntime-gpu==" in (folder / "requirements.txt").read_text()
    image = sorted(IMAGES_DIR.glob("*.jpg"))[0]
    proc = _cli("runtimes.run", "--bundle", str(folder), "--device-id", "0", "--json", str(image))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["topk"][0]["label"] == "blue_checker"
    if unavailable_reason("cuda") is not None:  # this machine: no GPU, so the bundle's next provider runs
        assert "warning: requested provider 'cuda'" in proc.stderr and "using the bundle's next provider" in proc.stderr
        assert "provider: cpu (CPUExecutionProvider)" in proc.stderr


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("targets, runtime", [
    (["cpu"], "onnxruntime"), (["cpu", "openvino"], "onnxruntime"),
    (["cuda"], "onnxruntime-gpu"), (["tensorrt", "cpu"], "onnxruntime-gpu"),
], ids=["cpu", "cpu+openvino", "cuda", "tensorrt+cpu"])
def test_every_machine_installs_exactly_one_onnx_runtime(targets, runtime, machine):
    """pip evaluates the markers as a Jetson (aarch64) or a PC would: neither is left without
    ONNX Runtime, nor given two that would share one folder. A GPU bundle says, in a comment
    beside its aarch64 line, where a Jetson's comes from."""
    from packaging.requirements import Requirement

    from deploy.bundle import requirements

    lines = requirements(targets)
    installed = [r for r in map(Requirement, (l for l in lines if not l.startswith("#")))
                 if r.marker is None or r.marker.evaluate({"platform_machine": machine})]
    assert [r.name for r in installed if r.name.startswith("onnxruntime")] == [runtime]
    assert any("jetson-ai-lab" in line and line.startswith("#") for line in lines) == (runtime == "onnxruntime-gpu")


def test_a_gpu_bundle_readme_tells_a_jetson_where_its_onnx_runtime_comes_from(model_with_variant, bundle, tmp_path):
    folder, _ = build_bundle(model_with_variant, tmp_path / "jetson", target="tensorrt")
    assert "jetson-ai-lab.io/jp6" in (folder / "README.md").read_text()
    with open_bundle(folder):  # the comment is no option, nor a path: the bundle's own checks accept it
        pass
    # a cpu bundle: the module's own, built from the same model with the default target (cpu); the
    # README depends only on the target, so a second cpu build here would only repeat it
    cpu = bundle[0]
    assert json.loads((cpu / MANIFEST).read_text())["target"] == "cpu"
    assert "jetson" not in (cpu / "README.md").read_text().lower()


def test_without_its_provider_an_aarch64_machine_is_told_of_the_jetson_index(monkeypatch):
    """What verify and run print for `--provider cuda` on an arm64 board without a working CUDA
    provider (test-aarch64 sees it under emulation too)."""
    import platform

    from runtimes.adapters import unavailable_reason

    reason_here = unavailable_reason("cuda")
    if reason_here is None:
        pytest.skip("this machine's CUDA provider loads: nothing is missing to explain")
    assert "jetson" not in reason_here.lower()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    for provider in ("cuda", "tensorrt"):
        assert "https://pypi.jetson-ai-lab.io/jp6/cu126" in unavailable_reason(provider)
