"""Atomic file writes: a reader sees the old file or the new one, never half of one; and the guard that
refuses to replace a folder of the user's (``check_replaceable``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from runtimes.errors import ToolkitError

# Read once at import: os.umask can only be read by setting it, which would race
# with other threads creating files.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``, then
    fsync the folder (POSIX), so the rename itself survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600; give what open() would. By path: os.fchmod is POSIX-only
        # before Python 3.13 (on Windows this only clears the read-only flag).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_figure(path: str | Path, fig) -> Path:
    """A matplotlib figure as a PNG at ``path`` (110 dpi), written as :func:`write_bytes` does; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk: on POSIX a rename is durable only then. Windows cannot open folders."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def replace_dir(new: Path, out: Path) -> None:
    """Move the folder ``new`` to ``out`` (both on one filesystem); an old folder there is
    moved aside first and removed after, so a reader sees the old folder or the new one."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class OutputRefused(ToolkitError):
    """A folder the user named is not replaced: it is, holds or lies in an input, or is not this tool's output."""


def check_apart(out: str | Path, inputs=()) -> None:
    """Refuse an ``out`` that is one of the local ``inputs``, lies inside one, or holds one (resolved paths)."""
    here = Path(out).resolve()
    for given in inputs:
        there = Path(given).resolve()
        if here == there:
            raise OutputRefused(f"{out} is the input {given}; give an output folder apart from the input")
        if there in here.parents:
            raise OutputRefused(f"{out} lies inside the input {given}; give an output folder apart from the input")
        if here in there.parents:
            raise OutputRefused(f"{out} holds the input {given}; give an output folder apart from the input")


def check_replaceable(out: str | Path, inputs=(), *, what: str = "", files_of=None) -> None:
    """Refuse, in one line and touching nothing, to replace the folder ``out`` unless it is new,
    empty, or ``what``: an earlier output of the same tool.

    ``files_of(out)`` returns the relative paths ("models/x.onnx") such an output holds, read
    from its own record (a manifest), or None when it has none. Every entry under ``out`` must
    be a plain file it names (or a folder above one): any other file, hidden or a symlink, is
    the user's. Without ``files_of`` only a new or empty ``out`` passes. ``check_apart`` too.
    """
    out = Path(out)
    check_apart(out, inputs)
    if out.is_symlink():
        raise OutputRefused(f"{out} is a symbolic link; give the folder itself, or a new one")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputRefused(f"{out} exists and is not a folder; give a new folder")
    try:
        if not any(out.iterdir()):
            return
        if files_of is None:
            raise OutputRefused(f"{out} exists and is not empty; give a new or empty folder")
        files = files_of(out)
        if files is None:
            raise OutputRefused(f"{out} exists and is not {what}, nor empty; give a new or empty folder")
        foreign = _first_foreign(out, set(files))
    except OSError as exc:
        raise OutputRefused(f"{out} cannot be read ({exc.strerror or exc}); give a new or empty folder") from None
    if foreign is not None:
        raise OutputRefused(f"{out} exists and is not {what}: {foreign} is not one of its files; "
                            "give a new or empty folder")


def _first_foreign(folder: Path, files: set[str]) -> str | None:
    """The first entry under ``folder`` (sorted, symlinks not followed) that is not a plain file named in
    ``files`` nor a folder above one; None when there is none."""
    folders = {parent.as_posix() for name in files for parent in PurePosixPath(name).parents} - {"."}

    def walk(at: Path, prefix: str) -> str | None:
        for entry in sorted(os.scandir(at), key=lambda e: e.name):
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False) and name in folders:
                found = walk(Path(entry.path), name + "/")
                if found is not None:
                    return found
            elif not (entry.is_file(follow_symlinks=False) and name in files):
                return name
        return None

    return walk(folder, "")
