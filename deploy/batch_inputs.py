"""What ``deploy.batch`` classifies: the input listing, streamed, and reading one input wherever it lives.

An input is a folder or glob (``runtimes.run``'s rules: recursive, image extensions,
hidden files skipped), a URI prefix listed with ``pyarrow.fs`` (``s3://bucket/photos/``,
``gs://...``, ``file:///...``), or a manifest: a text file of paths or URIs, one a line
(blank lines and ``#`` comments skipped; relative paths are relative to the manifest).

The listing is a stream in a stable order, never one list: a folder is walked one folder
at a time, a URI prefix one level at a time, a manifest one line at a time. So the
driver's memory does not grow with the job. Each manifest line is one input: a path
listed twice is answered twice (merging repeats would need every path in memory). Only
a glob is listed whole (``glob`` itself works that way).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtimes.errors import ImageError, ToolkitError

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def is_uri(text: str) -> bool:
    return "://" in text and not Path(text).exists()


def name_bytes(name: str) -> bytes:
    """A name's exact bytes: a file name that is not UTF-8 arrives with surrogate escapes, and goes back whole."""
    return os.fsencode(name) if "://" not in name else name.encode("utf-8", "surrogateescape")


def iter_inputs(source: str) -> Iterator[str]:
    """Every input ``source`` names, one at a time, in a stable order."""
    from runtimes.preprocess import IMAGE_EXTENSIONS, glob_images, iter_images

    if source.startswith("file://") and Path(source[len("file://"):]).is_dir():
        # Local: walked as a folder (pyarrow cannot list a name that is not UTF-8).
        yield from (f"file://{path}" for path in iter_images(Path(source[len("file://"):])))
    elif is_uri(source):
        yield from _iter_uri(source, IMAGE_EXTENSIONS)
    elif Path(source).is_dir():
        yield from map(str, iter_images(Path(source)))
    elif Path(source).is_file() and Path(source).suffix.lower() in MANIFEST_SUFFIXES:
        yield from _iter_manifest(Path(source))
    elif Path(source).is_file():
        yield source
    elif glob.has_magic(source):
        yield from map(str, glob_images(source))
    else:
        raise ToolkitError(f"input {source} not found: give a folder, a glob, a URI prefix or a manifest of paths ("
                           f"{', '.join(MANIFEST_SUFFIXES)})")


@dataclass(frozen=True)
class Listing:
    """How many inputs ``source`` names, and the sha256 of their names in order: what a resumed
    run must find again. Surveyed once before any work (one pass over the listing)."""

    count: int
    sha256: str

    @classmethod
    def survey(cls, source: str, inside: Path | None = None) -> "Listing":
        """The listing of ``source``; a ToolkitError when it is empty, or names a file inside ``inside``
        (an OUTPUT that the run writes into)."""
        from runtimes.preprocess import IMAGE_EXTENSIONS

        digest, count = Digest(), 0
        guard = _Inside(inside) if inside is not None else None
        for name in iter_inputs(source):
            digest.add(name)
            count += 1
            if guard is not None:
                guard.check(name)
        if not count:
            raise ToolkitError(f"no images in {source} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return cls(count, digest.hexdigest())


class Digest:
    """sha256 over names, each ended by a NUL byte (which no path or URI holds)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, name: str) -> None:
        self._hash.update(name_bytes(name) + b"\0")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Inside:
    """Refuses an input that lies inside ``out`` (a string check on absolute paths)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.prefixes = tuple({os.path.abspath(out) + os.sep, str(out.resolve()) + os.sep})

    def check(self, name: str) -> None:
        if "://" in name and not name.startswith("file://"):
            return
        if os.path.abspath(name.removeprefix("file://")).startswith(self.prefixes):
            raise ToolkitError(f"the input {name} lies inside OUTPUT {self.out}, which the run writes; "
                               "give an OUTPUT apart from the inputs")


def local_root(source: str) -> Path | None:
    """The local file or folder ``source`` reads from: a folder, a manifest or image file, a glob's
    folder before its first wildcard, a file:// URI's path; None for any other URI."""
    if is_uri(source):
        return Path(source[len("file://"):]) if source.startswith("file://") else None
    if Path(source).exists() or not glob.has_magic(source):
        return Path(source)
    parts = Path(source).parts
    static = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:static])


def _iter_manifest(path: Path) -> Iterator[str]:
    """The manifest's entries, one line at a time; a name that is not UTF-8 is kept, byte for byte."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    yield entry if "://" in entry or os.path.isabs(entry) else str(path.parent / entry)
    except OSError as exc:
        raise ToolkitError(f"manifest {path} is unreadable: {exc.strerror or exc}") from None


def _iter_uri(prefix: str, extensions) -> Iterator[str]:
    """The files under a URI prefix, one level listed at a time: files in sorted order, then each folder."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(prefix)
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot list {prefix}: {exc}") from None
    scheme = prefix.split("://", 1)[0]
    folders = [root.rstrip("/")]
    while folders:
        folder = folders.pop()
        try:
            infos = sorted(filesystem.get_file_info(fs.FileSelector(folder)), key=lambda info: info.path)
        except (OSError, ValueError) as exc:
            raise ToolkitError(f"cannot list {scheme}://{folder}: {exc}") from None
        for info in infos:  # hidden files and folders skipped, as find_images does
            if info.base_name.startswith("."):
                continue
            if info.type == fs.FileType.File and Path(info.path).suffix.lower() in extensions:
                yield f"{scheme}://{info.path}"
        folders += reversed([info.path for info in infos
                             if info.type == fs.FileType.Directory and not info.base_name.startswith(".")])


def read_input(name: str) -> bytes:
    """The bytes of one input; an ImageError in ``runtimes.run``'s words when it cannot be read."""
    if name.startswith("file://"):
        name = name[len("file://"):]
    if "://" in name:
        from pyarrow import fs

        try:
            filesystem, path = fs.FileSystem.from_uri(name)
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read: {exc}") from None
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
