"""``runtimes.atomic.check_replaceable``: the one guard before a tool replaces a folder the user named.

It passes a new folder, an empty one, or an earlier output of the same tool holding only the
files that output's own record names; anything else is refused in one line, touching nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtimes.atomic import OutputRefused, check_replaceable
from runtimes.errors import ToolkitError
from tests.helpers import snapshot

OURS = {"record.json", "part-0.jsonl", "models/a.onnx"}


def _ours(folder: Path) -> set[str] | None:
    """A stand-in tool's recogniser: its record names its files."""
    return OURS if (folder / "record.json").is_file() else None


def _earlier(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True)
    for name in OURS:
        (folder / name).write_text(name)
    return folder


def _refused(out: Path, inputs=(), root: Path | None = None, **kwargs) -> str:
    """The one-line refusal; nothing under ``root`` (default: the folder holding ``out``) changed."""
    root = root or out.resolve().parent
    before = snapshot(root)
    with pytest.raises(OutputRefused) as caught:
        check_replaceable(out, inputs, what="an earlier stand-in output", **kwargs)
    assert snapshot(root) == before
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, ToolkitError)  # a user error: one `error:` line, exit 2
    return message


def test_new_empty_and_earlier_outputs_pass(tmp_path):
    check_replaceable(tmp_path / "new", what="x", files_of=_ours)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", what="x", files_of=_ours)
    check_replaceable(tmp_path / "empty")  # no recogniser: new or empty only
    check_replaceable(_earlier(tmp_path / "earlier"), what="x", files_of=_ours)
    partial = _earlier(tmp_path / "partial")
    (partial / "part-0.jsonl").unlink()  # a file of its own missing: still nothing of the user's in it
    check_replaceable(partial, what="x", files_of=_ours)


def test_a_folder_of_user_files_is_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    message = _refused(out, files_of=_ours)
    assert message == f"{out} exists and is not an earlier stand-in output, nor empty; give a new or empty folder"
    assert "exists and is not empty" in _refused(out)  # no recogniser: only a new or empty folder passes


@pytest.mark.parametrize("extra", ["notes.txt", ".hidden", "models/mine.onnx", "models/sub/deep.txt", "empty-folder/",
                                   "link", "models/a.onnx"])
def test_an_earlier_output_with_anything_more_is_refused_naming_it(tmp_path, extra):
    out = _earlier(tmp_path / "out")
    (tmp_path / "precious.txt").write_text("mine")
    if extra == "link":
        (out / "link").symlink_to(tmp_path / "precious.txt")
    elif extra == "models/a.onnx":  # a named file that is now a symlink: not the tool's file
        (out / extra).unlink()
        (out / extra).symlink_to(tmp_path / "precious.txt")
    elif extra.endswith("/"):
        (out / extra).mkdir()
    else:
        (out / extra).parent.mkdir(parents=True, exist_ok=True)
        (out / extra).write_text("the user's")
    shown = {"models/sub/deep.txt": "models/sub", "empty-folder/": "empty-folder"}.get(extra, extra)
    assert _refused(out, files_of=_ours) == (f"{out} exists and is not an earlier stand-in output: {shown} is not one "
                                             "of its files; give a new or empty folder")


def test_a_symlinked_folder_of_its_own_files_is_refused(tmp_path):
    out = _earlier(tmp_path / "out")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("mine")
    os.rename(out / "models" / "a.onnx", tmp_path / "elsewhere" / "a.onnx")
    (out / "models").rmdir()
    (out / "models").symlink_to(tmp_path / "elsewhere")
    assert "models is not one of its files" in _refused(out, files_of=_ours)


def test_a_file_or_a_link_as_the_output_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    assert _refused(tmp_path / "file", files_of=_ours).endswith("exists and is not a folder; give a new folder")
    (tmp_path / "link").symlink_to(_earlier(tmp_path / "real"))
    assert "is a symbolic link" in _refused(tmp_path / "link", files_of=_ours)


@pytest.mark.parametrize("where, says", [("same", "is the input"), ("parent", "holds the input"),
                                         ("grandparent", "holds the input"), ("inside", "lies inside the input"),
                                         ("inside-new", "lies inside the input")])
def test_the_input_itself_its_parents_and_folders_inside_it_are_refused(tmp_path, where, says):
    photos = tmp_path / "a" / "photos"
    photos.mkdir(parents=True)
    (photos / "cat.jpg").write_bytes(b"a cat")
    _earlier(photos / "old-run")  # even a folder of the tool's own files, when it lies in the input
    out = {"same": photos, "parent": photos.parent, "grandparent": tmp_path, "inside": photos / "old-run",
           "inside-new": photos / "new"}[where]
    given = tmp_path / "a" / ".." / "a" / "photos"  # compared resolved
    assert says in _refused(out, [given], root=tmp_path, files_of=_ours)


def test_a_relative_input_and_a_relative_output_are_compared_resolved(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path / "photos")
    assert "holds the input" in _refused(Path(".."), ["."], root=tmp_path, files_of=_ours)
    check_replaceable(tmp_path / "elsewhere", ["."], what="x", files_of=_ours)
