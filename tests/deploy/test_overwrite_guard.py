"""Nothing of the user's is deleted: ``deploy.batch --mode overwrite``, ``deploy.bundle --out`` and
``deploy.triton --out`` replace a folder only when it is empty or the same tool's earlier output,
holding nothing else; each refusal is one ``error:`` line, exit 2, with every file left as it was.

deploy.batch refuses before any cluster starts, so these tests need none; an earlier genuine
output being replaced is ``tests/deploy/test_batch.py``'s overwrite test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtimes.errors import ToolkitError
from samples.generate import IMAGES_DIR
from tests.helpers import snapshot

REPO = Path(__file__).resolve().parents[2]


def _cli(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _refused(proc: subprocess.CompletedProcess, says: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert says in lines[0], lines[0]


def _user_files(folder: Path) -> Path:
    """A folder of the user's: photos, notes, a hidden file, a subfolder."""
    (folder / "trip").mkdir(parents=True)
    shutil.copyfile(IMAGES_DIR / "red_checker_0.jpg", folder / "holiday.jpg")
    (folder / "notes.txt").write_text("do not lose\n")
    (folder / ".config").write_text("x=1\n")
    (folder / "trip" / "day1.txt").write_text("sea\n")
    return folder


# deploy.batch


@pytest.fixture
def photos(tmp_path) -> Path:
    """INPUT: three demo images in tmp/work/photos, with a manifest of them beside it."""
    folder = tmp_path / "work" / "photos"
    folder.mkdir(parents=True)
    for image in sorted(IMAGES_DIR.glob("*.jpg"))[:3]:
        shutil.copyfile(image, folder / image.name)
    (tmp_path / "work" / "list.txt").write_text("".join(f"photos/{p.name}\n" for p in sorted(folder.iterdir())))
    return folder


def _batch(demo_export, given: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """deploy.batch on a real model: without its guard it would run and replace OUTPUT."""
    started = time.monotonic()
    proc = _cli("deploy.batch", given, str(out), "--model", str(demo_export.path), "--cpus", "1", *flags, timeout=300)
    assert time.monotonic() - started < 30, "a refusal comes before any cluster starts"
    return proc


def _earlier_batch_output(out: Path) -> Path:
    """What a finished run leaves: its part file and the manifest naming it."""
    out.mkdir(parents=True)
    (out / "part-00000.jsonl").write_text('{"image": "a.jpg", "topk": []}\n')
    (out / "_manifest.json").write_text(json.dumps({"complete": True, "parts": ["part-00000.jsonl"], "rows": 1}))
    return out


def test_batch_overwrite_refuses_a_folder_of_user_files(demo_export, photos, tmp_path):
    out = _user_files(tmp_path / "results")
    before = snapshot(tmp_path)
    proc = _batch(demo_export, str(photos), out, "--mode", "overwrite")
    _refused(proc, f"{out} exists and is not an earlier deploy.batch output, nor empty")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", ["overwrite", "create"])
@pytest.mark.parametrize("given, where, says", [
    ("photos", "photos", "is the input"),
    ("photos", "work", "holds the input"),
    ("photos", "tmp", "holds the input"),
    ("photos", "photos/results", "lies inside the input"),
    ("photos/*.jpg", "photos", "is the input"),  # a glob: the folder before its first wildcard
    ("photos/*.jpg", "photos/results", "lies inside the input"),
    ("list.txt", "list.txt", "is the input"),  # a manifest: the file itself
    ("list.txt", "work", "holds the input"),
    ("file://photos", "photos", "is the input"),  # a file:// URI: its path
], ids=["output-is-input", "output-is-inputs-parent", "output-is-inputs-grandparent", "output-inside-input",
        "glob-folder", "inside-glob-folder", "manifest", "manifests-folder", "file-uri"])
def test_batch_refuses_an_output_that_is_holds_or_lies_in_its_input(demo_export, photos, tmp_path, given, where, says,
                                                                    mode):
    work = photos.parent
    out = {"tmp": tmp_path, "work": work}.get(where, work / where)
    given = f"file://{photos}" if given == "file://photos" else str(work / given)
    if where == "photos/results" and mode == "overwrite":
        _earlier_batch_output(out)  # even an earlier output of its own, when it lies in the input
    before = snapshot(tmp_path)
    _refused(_batch(demo_export, given, out, "--mode", mode), says)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", ["notes.txt", ".DS_Store", "link", "part-00001.jsonl", "sub/"])
def test_batch_overwrite_refuses_an_earlier_output_holding_anything_more(demo_export, photos, tmp_path, extra):
    out = _earlier_batch_output(tmp_path / "results")
    (tmp_path / "precious.txt").write_text("mine\n")
    if extra == "link":
        (out / extra).symlink_to(tmp_path / "precious.txt")
    elif extra == "sub/":
        (out / "sub").mkdir()
        (out / "sub" / "mine.txt").write_text("mine\n")
    else:
        (out / extra).write_text("the user's\n")
    before = snapshot(tmp_path)
    proc = _batch(demo_export, str(photos), out, "--mode", "overwrite")
    _refused(proc, f"is not an earlier deploy.batch output: {extra.rstrip('/')} is not one of its files")
    assert snapshot(tmp_path) == before


def test_batch_overwrite_refuses_a_manifest_that_lists_a_file_inside_output(demo_export, photos, tmp_path):
    out = _earlier_batch_output(tmp_path / "results")
    listed = photos.parent / "list.txt"
    listed.write_text(listed.read_text() + f"{out / 'part-00000.jsonl'}\n")
    before = snapshot(tmp_path)
    proc = _batch(demo_export, str(listed), out, "--mode", "overwrite")
    _refused(proc, f"the input {out / 'part-00000.jsonl'} lies inside OUTPUT {out}")
    assert snapshot(tmp_path) == before


def test_batch_input_roots():
    from deploy.batch_inputs import local_root

    assert local_root("photos/*/x*.jpg") == Path("photos")
    assert local_root("photos/**/*.jpg") == Path("photos")
    assert local_root("*.jpg") == Path(".")
    assert local_root("file:///data/photos") == Path("/data/photos")
    assert local_root("s3://bucket/photos/") is None


# deploy.bundle


@pytest.fixture(scope="module")
def earlier_bundle(demo_export, tmp_path_factory) -> Path:
    from deploy.bundle import build_bundle

    folder, _ = build_bundle(demo_export.path, tmp_path_factory.mktemp("bundle") / "gnet")
    return folder


def _bundle_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_bundle_refuses_a_folder_of_user_files(demo_export, tmp_path):
    out = _user_files(tmp_path / "photos")
    before = snapshot(tmp_path)
    proc = _cli("deploy.bundle", "--model", str(demo_export.path), "--out", str(out))
    _refused(proc, f"{out} exists and is not a bundle, nor empty")
    assert snapshot(tmp_path) == before  # no photos.tar.gz either


@pytest.mark.parametrize("extra", ["notes.txt", "models/mine.onnx", ".venv/"])
def test_bundle_refuses_an_earlier_bundle_holding_anything_more(demo_export, earlier_bundle, tmp_path, extra):
    out = tmp_path / "gnet"
    shutil.copytree(earlier_bundle, out)
    if extra.endswith("/"):
        (out / extra).mkdir()
        (out / extra / "pyvenv.cfg").write_text("home = /usr/bin\n")
    else:
        (out / extra).write_text("the user's\n")
    before = snapshot(tmp_path)
    proc = _cli("deploy.bundle", "--model", str(demo_export.path), "--out", str(out))
    _refused(proc, f"{out} exists and is not a bundle: {extra.rstrip('/')} is not one of its files")
    assert snapshot(tmp_path) == before


def test_bundle_refuses_the_folder_holding_its_model(demo_export):
    from deploy.bundle import build_bundle

    before = snapshot(demo_export.path.parent)
    with pytest.raises(ToolkitError, match="holds the input"):
        build_bundle(demo_export.path, demo_export.path.parent)
    assert snapshot(demo_export.path.parent) == before


def test_bundle_replaces_an_earlier_bundle_and_its_tuned_json(demo_export, earlier_bundle, tmp_path):
    from deploy.bundle import build_bundle

    out = tmp_path / "gnet"
    shutil.copytree(earlier_bundle, out)
    (out / "tuned.json").write_text('{"choice": null}\n')  # runtimes.tune writes it into the bundle folder
    (out / "README.md").unlink()  # one of its own files gone: still nothing of the user's
    folder, _ = build_bundle(demo_export.path, out, target="cpu,opencv")
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["target"] == "cpu,opencv"
    assert _bundle_files(folder) == set(manifest["files"]) | {"bundle.json"}  # tuned.json went with the old one


# deploy.triton


def _triton(demo_export, repo: Path, *flags: str) -> subprocess.CompletedProcess:
    return _cli("deploy.triton", "--model", str(demo_export.path), "--out", str(repo), *flags)


def test_triton_refuses_a_folder_of_user_files(demo_export, tmp_path):
    _user_files(tmp_path / "repo" / "googlenet")
    before = snapshot(tmp_path)
    _refused(_triton(demo_export, tmp_path / "repo"), "exists and is not an earlier deploy.triton model folder, nor empty")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("change, says", [
    ("2/model.onnx", "2 is not one of its files"),  # a second version the user added
    ("notes.txt", "notes.txt is not one of its files"),
    ("config.pbtxt", "is not an earlier deploy.triton model folder, nor empty"),  # not a ModelConfig
    ("labels.txt", "is not an earlier deploy.triton model folder, nor empty"),  # its labels file gone
])
def test_triton_refuses_its_earlier_output_changed(demo_export, tmp_path, change, says):
    from deploy.triton import write_repository

    folder = write_repository(demo_export.path, tmp_path / "repo")
    if change == "config.pbtxt":
        (folder / change).write_text("name: 'googlenet'\nplatform_of_mine: 'x'\n")
    elif change == "labels.txt":
        (folder / change).unlink()
    else:
        (folder / change).parent.mkdir(exist_ok=True)
        (folder / change).write_text("the user's\n")
    before = snapshot(tmp_path)
    _refused(_triton(demo_export, tmp_path / "repo"), says)
    assert snapshot(tmp_path) == before


def test_triton_replaces_its_earlier_output(demo_export, tmp_path):
    from deploy.triton import write_repository

    (tmp_path / "repo" / "other-model").mkdir(parents=True)  # the rest of the repository is left alone
    (tmp_path / "repo" / "other-model" / "config.pbtxt").write_text("name: 'other'\n")
    first = write_repository(demo_export.path, tmp_path / "repo", max_batch=8)
    proc = _triton(demo_export, tmp_path / "repo", "--max-batch", "16")
    assert proc.returncode == 0, proc.stderr
    assert "max_batch_size: 16" in (first / "config.pbtxt").read_text()
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["googlenet", "other-model"]
    assert (tmp_path / "repo" / "other-model" / "config.pbtxt").read_text() == "name: 'other'\n"


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_triton_refuses_a_name_that_is_not_a_plain_folder(demo_export, tmp_path, name):
    (tmp_path / "repo").mkdir()
    before = snapshot(tmp_path)
    _refused(_triton(demo_export, tmp_path / "repo", "--name", name), "must be a plain folder name")
    assert snapshot(tmp_path) == before


def test_triton_refuses_an_out_that_is_a_file(demo_export, tmp_path):
    """--out naming an existing file is one line, not a traceback from mkdir, and the file stays."""
    (tmp_path / "repo").write_text("mine\n")
    _refused(_triton(demo_export, tmp_path / "repo"), "exists and is not a folder")
    assert (tmp_path / "repo").read_text() == "mine\n"
