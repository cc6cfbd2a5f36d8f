"""A bundle's requirements on every device Python: pip, evaluating the lines' markers as each
(Python 3.10-3.13) x (x86_64, aarch64) device would, finds exactly one line per package; from
Python 3.11 up those pin the build machine's versions, below it deploy.pins' tested ones.
No network and no venvs: `make test-pythons` installs and resolves them for real."""

from __future__ import annotations

import io
import zipfile
from email.parser import Parser
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import deploy.bundle
from deploy.bundle import requirements
from deploy.pins import JETPACK6, PY310, PYTHONS, REQUIRES_PYTHON, device_environment
from deploy.wheel import build_wheel

MACHINES = ("x86_64", "aarch64")
TARGET_SETS = [["cpu"], ["openvino"], ["cpu", "openvino"], ["cuda"], ["tensorrt"], ["opencv"]]
GPU = ("cuda", "tensorrt")
ORT = ("onnxruntime-gpu", "onnxruntime")
# Build machines other than this one: versions unlike any pin, and versions equal to the 3.10 pins
# (whose lines then merge into one for every Python).
NEWER = {"numpy": "2.5.1", "opencv-python-headless": "5.2.0.99", "pillow": "13.1.0", "onnxruntime": "1.32.0",
         "openvino": "2026.5.0"}
SAME_AS_310 = dict(PY310)


def _installed(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None


@pytest.fixture(params=["installed", "newer", "same-as-3.10"])
def build(request, monkeypatch):
    """{package: version} of the build machine that requirements() pins from: this one, or a faked one."""
    fake = {"newer": NEWER, "same-as-3.10": SAME_AS_310}.get(request.param)
    if fake is None:
        versions = {name: _installed(name) for name in ("numpy", "opencv-python-headless", "pillow", "openvino")}
        versions["ort"] = _installed(*ORT)
    else:
        monkeypatch.setattr(deploy.bundle, "package_version",
                            lambda *names: next((fake[n] for n in names if n in fake), None))
        versions = {**fake, "ort": fake.get("onnxruntime-gpu", fake.get("onnxruntime"))}
    return versions


def device_lines(targets: list[str], python: str, machine: str) -> dict[str, list[Requirement]]:
    """{package: the lines pip installs for it on ``python`` and ``machine``}, every package named counted."""
    chosen: dict[str, list[Requirement]] = {}
    for line in requirements(targets):
        if line.startswith("#"):
            continue
        requirement = Requirement(line)
        chosen.setdefault(canonicalize_name(requirement.name), [])
        if requirement.marker is None or requirement.marker.evaluate(device_environment(python, machine)):
            chosen[canonicalize_name(requirement.name)].append(requirement)
    return chosen


def expected_packages(targets: list[str]) -> set[str]:
    runtime = {"onnxruntime-gpu"} if set(targets) & set(GPU) else {"onnxruntime"} if "cpu" in targets else set()
    return {"numpy", "opencv-python-headless", "pillow", *runtime, *({"openvino"} if "openvino" in targets else ())}


def version_of(requirement: Requirement) -> str | None:
    """The ``==`` version of a line, None for an unpinned one; anything else fails."""
    if not requirement.specifier:
        return None
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement}: pins are exact"
    return spec.version


def combos():
    for targets in TARGET_SETS:
        for python in PYTHONS:
            for machine in MACHINES:
                yield targets, python, machine


def _skip_without_openvino(build):
    if build["openvino"] is None:
        pytest.skip("openvino is an optional extra: pip install 'googlenet-deploy[openvino]'")


def test_every_device_gets_exactly_one_line_per_package(build):
    _skip_without_openvino(build)
    for targets, python, machine in combos():
        chosen = device_lines(targets, python, machine)
        assert set(chosen) == expected_packages(targets), (targets, python, machine)
        for name, lines in chosen.items():
            assert len(lines) == 1, f"{targets} on Python {python} {machine}: {name} has {list(map(str, lines))}"
            unpinned = version_of(lines[0]) is None
            # The only unpinned line: a Jetson's ONNX Runtime, which comes from NVIDIA's index.
            assert unpinned == (name == "onnxruntime-gpu" and machine == "aarch64"), str(lines[0])


def test_from_python_3_11_up_the_lines_pin_the_build_machines_versions(build):
    _skip_without_openvino(build)
    for targets, python, machine in combos():
        if python == "3.10":
            continue
        for name, (line,) in device_lines(targets, python, machine).items():
            if name == "onnxruntime-gpu" and machine == "aarch64":
                continue
            want = build["ort"] if name in ORT else build[name]
            assert version_of(line) == want, f"{targets} on Python {python} {machine}: {line}, built with {want}"


def test_python_3_10_lines_pin_the_tested_versions_in_deploy_pins(build):
    _skip_without_openvino(build)
    for targets, python, machine in combos():
        if python != "3.10":
            continue
        jetpack = machine == "aarch64" and bool(set(targets) & set(GPU))
        for name, (line,) in device_lines(targets, python, machine).items():
            if name == "onnxruntime-gpu" and machine == "aarch64":
                continue
            want = JETPACK6.get(name, PY310[name]) if jetpack else PY310[name]
            assert version_of(line) == want, f"{targets} on Python 3.10 {machine}: {line}, deploy.pins says {want}"


def test_a_jetson_is_told_where_its_onnx_runtime_comes_from_and_gets_numpy_1():
    lines = requirements(["tensorrt"])
    comment = next(i for i, line in enumerate(lines) if "jetson-ai-lab.io/jp6" in line)
    assert lines[comment].startswith("#") and lines[comment + 1].startswith("onnxruntime-gpu;")
    jetpack = {name: str(line.specifier) for name, (line,) in device_lines(["tensorrt"], "3.10", "aarch64").items()}
    assert jetpack["numpy"].startswith("==1.") and jetpack["opencv-python-headless"] == "==4.11.0.86"


def test_the_runtime_wheel_admits_the_device_pythons_and_jetpacks_numpy():
    name, data = build_wheel()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        meta = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    fields = Parser().parsestr(meta)
    assert fields["Requires-Python"] == REQUIRES_PYTHON
    admitted = SpecifierSet(fields["Requires-Python"])
    assert all(f"{python}.0" in admitted for python in PYTHONS)
    assert "3.9.18" not in admitted and "3.14.0" not in admitted  # pip refuses them before installing anything
    numpy = next(Requirement(r) for r in fields.get_all("Requires-Dist") if Requirement(r).name == "numpy")
    assert all(numpy.specifier.contains(v) for v in (JETPACK6["numpy"], PY310["numpy"], _installed("numpy")))
