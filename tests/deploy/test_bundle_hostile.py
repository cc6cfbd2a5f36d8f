"""Hostile bundles, made by hand from a real one: every path bundle.json names must stay
inside the bundle and be among its hashed files, and each model's precision and spec
must be the model's own. The device commands refuse anything else in one line, exit 2,
with nothing on stdout, for the folder and for its .tar.gz alike."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from runtimes.bundle import MANIFEST, open_bundle, sha256_file
from samples.generate import IMAGES_DIR

REPO = Path(__file__).resolve().parents[2]
IMAGE = sorted(IMAGES_DIR.glob("*.jpg"))[0]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def made(demo_export, demo_int8, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A genuine bundle of the demo model and its int8 variant, as `deploy.bundle` writes it, and what it printed."""
    out = tmp_path_factory.mktemp("bundle") / "gnet"
    proc = _cli("deploy.bundle", "--model", str(demo_export.path), "--variants", "int8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _far(path: Path) -> str:
    """A relative path that leads to ``path`` from any folder: up past the root, then down."""
    return "../" * 40 + path.as_posix().lstrip("/")


def _model_outside(folder: Path, manifest: dict, outside: Path) -> None:
    """The issue's tarball: the fp32 entry names a model elsewhere on the machine, not in `files`."""
    copy = shutil.copyfile(folder / manifest["models"][0]["file"], outside / "googlenet.fp16.onnx")
    manifest["models"][0]["file"] = _far(copy)


def _model_absolute(folder: Path, manifest: dict, outside: Path) -> None:
    manifest["models"][0]["file"] = str(shutil.copyfile(folder / manifest["models"][0]["file"], outside / "m.onnx"))


def _model_not_hashed(folder: Path, manifest: dict, outside: Path) -> None:
    """A model inside the bundle, but not among the files whose sha256 was checked."""
    shutil.copyfile(folder / manifest["models"][0]["file"], folder / "models" / "swapped.onnx")
    manifest["models"][0]["file"] = "models/swapped.onnx"


def _reference_outside(folder: Path, manifest: dict, outside: Path) -> None:
    manifest["reference"] = _far(shutil.copyfile(folder / manifest["reference"], outside / "reference.npz"))


def _labels_outside(folder: Path, manifest: dict, outside: Path) -> None:
    manifest["labels"] = _far(shutil.copyfile(folder / manifest["labels"], outside / "labels.txt"))


def _model_links_outside(folder: Path, manifest: dict, outside: Path) -> None:
    """The hashed model file is a link to a file elsewhere with the same bytes."""
    model = folder / manifest["models"][0]["file"]
    target = shutil.copyfile(model, outside / "linked.onnx")
    model.unlink()
    model.symlink_to(target)


def _folder_links_outside(folder: Path, manifest: dict, outside: Path) -> None:
    target = shutil.copytree(folder / "models", outside / "models")
    shutil.rmtree(folder / "models")
    (folder / "models").symlink_to(target, target_is_directory=True)


def _wheel_outside(folder: Path, manifest: dict, outside: Path) -> None:
    """requirements.txt, re-hashed, installs a wheel from elsewhere."""
    requirements = folder / "requirements.txt"
    wheel = next(line for line in requirements.read_text().splitlines() if line.startswith("./wheels/"))
    moved = shutil.copyfile(folder / wheel, outside / Path(wheel).name)
    requirements.write_text(requirements.read_text().replace(wheel, _far(moved)))
    manifest["files"]["requirements.txt"] = sha256_file(requirements)
    manifest["sizes"]["requirements.txt"] = requirements.stat().st_size


def _precision_relabelled(folder: Path, manifest: dict, outside: Path) -> None:
    """The issue's second step: the int8 model listed as fp32 (its spec still int8), so verify
    printed fp32's tolerance and judged by int8's rule."""
    int8 = manifest["models"][1]
    manifest["models"] = [{**int8, "precision": "fp32"}]


def _precision_and_spec_relabelled(folder: Path, manifest: dict, outside: Path) -> None:
    """The fp32 model listed, spec and all, as int8: judged by top-1 alone, not elementwise."""
    fp32 = manifest["models"][0]
    manifest["models"] = [{**fp32, "precision": "int8", "spec": {**fp32["spec"], "precision": "int8"}}]


def _labels_in_spec_edited(folder: Path, manifest: dict, outside: Path) -> None:
    spec = manifest["models"][0]["spec"]
    spec["labels"] = spec["labels"][::-1]


def _one_precision_twice(folder: Path, manifest: dict, outside: Path) -> None:
    manifest["models"].append(manifest["models"][0])


HOSTILE = {  # name -> (how to make it, what the one line must say)
    "model outside": (_model_outside, "which leaves the bundle"),
    "model absolute": (_model_absolute, "which leaves the bundle"),
    "model not hashed": (_model_not_hashed, "the model 'models/swapped.onnx' is not among the hashed files"),
    "reference outside": (_reference_outside, "which leaves the bundle"),
    "labels outside": (_labels_outside, "which leaves the bundle"),
    "model links outside": (_model_links_outside, "outside the bundle; refusing it|is not a regular file"),
    "folder links outside": (_folder_links_outside, "outside the bundle; refusing it|is not a regular file"),
    "wheel outside": (_wheel_outside, "which leaves the bundle"),
    "precision relabelled": (_precision_relabelled, "as fp32; its spec there says int8, the model itself int8"),
    "precision and spec relabelled": (_precision_and_spec_relabelled, "as int8; its spec there says int8, the model itself fp32"),
    "labels in spec edited": (_labels_in_spec_edited, r"differs from the one inside the model \(labels\)"),
    "one precision twice": (_one_precision_twice, "lists two fp32 models"),
}


def _hostile_copy(folder: Path, tmp_path: Path, make) -> Path:
    copy = shutil.copytree(folder, tmp_path / "hostile" / folder.name, symlinks=True)
    outside = tmp_path / "x"
    outside.mkdir()
    manifest = json.loads((copy / MANIFEST).read_text())
    make(copy, manifest, outside)
    (copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return copy


def _tarball(folder: Path) -> Path:
    """``folder`` as the .tar.gz a bundle travels in (links stored as links; stored, not compressed: faster)."""
    tarball = folder.parent / f"{folder.name}.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=0) as archive:
        archive.add(folder, arcname=folder.name)
    return tarball


def test_the_genuine_bundle_runs_as_folder_and_tarball(made, tmp_path):
    """The control: the copy the hostile ones start from is accepted by both commands."""
    copy = _hostile_copy(made[0], tmp_path, lambda *_: None)
    for bundle in (copy, _tarball(copy)):
        run = _cli("runtimes.run", "--bundle", str(bundle), "--json", str(IMAGE))
        assert run.returncode == 0, run.stderr
        verify = _cli("runtimes.verify", "--bundle", str(bundle))
        assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("form", ["folder", "tarball"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_bundle_is_refused_in_one_line(made, tmp_path, case, form):
    make, message = HOSTILE[case]
    bundle = _hostile_copy(made[0], tmp_path, make)
    if form == "tarball":
        bundle = _tarball(bundle)
    for module, args in (("runtimes.run", (str(IMAGE),)), ("runtimes.verify", ())):
        proc = _cli(module, "--bundle", str(bundle), *args)
        assert proc.returncode == 2, f"{module}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert proc.stdout == "" and proc.stderr.startswith("error: bundle ") and proc.stderr.count("\n") == 1, proc.stderr
        assert re.search(message, proc.stderr), proc.stderr


def test_variants_leave_fp32_the_default_unless_asked(made, demo_export, tmp_path):
    folder, proc = made
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [m["precision"] for m in manifest["models"]] == ["fp32", "int8"]
    assert "(fp32 runs by default; --variant picks another)" in proc.stdout
    asked = _cli("deploy.bundle", "--model", str(demo_export.path), "--variants", "int8", "--default", "int8",
                 "--out", str(tmp_path / "fast"))
    assert asked.returncode == 0, asked.stderr
    assert "(int8 runs by default" in asked.stdout
    with open_bundle(tmp_path / "fast") as opened:
        assert opened.default_precision == "int8" and list(opened.models) == ["int8", "fp32"]
    absent = _cli("deploy.bundle", "--model", str(demo_export.path), "--variants", "int8", "--default", "fp16",
                  "--out", str(tmp_path / "none"))
    assert absent.returncode == 2 and absent.stderr.count("\n") == 1
    assert "--default fp16 is not among the bundled models: fp32, int8" in absent.stderr
    assert not (tmp_path / "none").exists()
