"""What ``deploy.batch`` classifies: the input list, and reading one input wherever it lives.

An input is a folder or glob (``runtimes.run``'s rules: recursive, image extensions,
hidden files skipped), a URI prefix listed with ``pyarrow.fs`` (``s3://bucket/photos/``,
``gs://...``, ``file:///...``), or a manifest: a text file of paths or URIs, one a line
(blank lines and ``#`` comments skipped; relative paths are relative to the manifest).
At ten million files, a manifest is the only input that does not walk a tree first.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from runtimes.errors import ImageError, ToolkitError

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def is_uri(text: str) -> bool:
    return "://" in text and not Path(text).exists()


def list_inputs(source: str) -> list[str]:
    """Every input ``source`` names, each once, in a stable order."""
    from runtimes.preprocess import IMAGE_EXTENSIONS, find_images, glob_images

    if is_uri(source):
        found = _list_uri(source, IMAGE_EXTENSIONS)
    elif Path(source).is_dir():
        found = [str(p) for p in find_images(Path(source))]
    elif Path(source).is_file() and Path(source).suffix.lower() in MANIFEST_SUFFIXES:
        found = _read_manifest(Path(source))
    elif Path(source).is_file():
        found = [source]
    elif glob.has_magic(source):
        found = [str(p) for p in glob_images(source)]
    else:
        raise ToolkitError(f"input {source} not found: give a folder, a glob, a URI prefix or a manifest of paths ("
                           f"{', '.join(MANIFEST_SUFFIXES)})")
    if not found:
        raise ToolkitError(f"no images in {source} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return list(dict.fromkeys(found))


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


def _read_manifest(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"manifest {path} is unreadable: {exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [e if "://" in e or os.path.isabs(e) else str(path.parent / e) for e in entries]


def _list_uri(prefix: str, extensions) -> list[str]:
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(prefix)
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"cannot list {prefix}: {exc}") from None
    scheme = prefix.split("://", 1)[0]
    kept = []
    for info in infos:
        relative = info.path[len(root):].lstrip("/")
        hidden = any(part.startswith(".") for part in relative.split("/"))  # as find_images
        if info.type == fs.FileType.File and not hidden and Path(info.path).suffix.lower() in extensions:
            kept.append(f"{scheme}://{info.path}")
    return sorted(kept)


def read_input(name: str) -> bytes:
    """The bytes of one input; an ImageError in ``runtimes.run``'s words when it cannot be read."""
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
