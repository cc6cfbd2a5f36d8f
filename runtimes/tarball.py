"""Opening a ``.tar.gz`` bundle (for ``runtimes.bundle.open_bundle``) with limits, and caching what it unpacks.

The archive is checked as its headers are read, before anything is written: at most
``MAX_MEMBERS`` members holding ``MAX_TOTAL_BYTES`` in all, one top-level folder, no
sparse file, link or device, and a bundle.json of at most ``MAX_MANIFEST_BYTES``. Only
bundle.json and the files it names are extracted, each only if its size in the archive is
the one bundle.json records (``sizes``; a bundle without them is held to the caps alone).
The extraction is cached by the archive's sha256 in ``cache_dir()``, the
``CACHE_ENTRIES`` most recently used kept; a cached one is used only while its bundle.json
is the one extracted, and is then checked file by file like any folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from runtimes.bundle import MANIFEST, Bundle, safe_relative, read_bundle, sha256_file
from runtimes.errors import BundleError

# Caps on a .tar.gz bundle. The demo bundle has 10 members and unpacks to 25.9 MB (with
# its int8 variant: 11 members, 32.2 MB); a 1000-class GoogLeNet in fp32, fp16 and int8
# with its reference and wheel is about 50 MB, one with a 21,843-class (ImageNet-21k) head
# about 200 MB: the caps leave 20x and 5x of room.
MAX_MEMBERS = 256
MAX_TOTAL_BYTES = 1 << 30  # all members together, as their headers say (1 GiB)
MAX_MANIFEST_BYTES = 4 << 20  # bundle.json, read whole before it is parsed (4 MiB)
# The extraction cache: this variable names its folder; extractions of the last
# CACHE_ENTRIES tarballs opened are kept.
CACHE_ENV = "GOOGLENET_DEPLOY_CACHE"
CACHE_ENTRIES = 4
EXTRACTED = ".extracted.json"  # written last into a cache entry: what it holds and its bundle.json's sha256


def cache_dir() -> Path | None:
    """The folder that caches tarball extractions: ``$GOOGLENET_DEPLOY_CACHE``, else
    ``$XDG_CACHE_HOME/googlenet-deploy/bundles``, else ``~/.cache/googlenet-deploy/bundles``.
    None where it cannot be made or written, or (POSIX) is another user's or writable by all:
    then each open unpacks into a temp folder, as without a cache."""
    try:
        configured = os.environ.get(CACHE_ENV)
        if configured:
            folder = Path(configured)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME", "")
            folder = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "googlenet-deploy" / "bundles"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix":
            stat = folder.stat()
            if stat.st_uid != os.getuid() or stat.st_mode & 0o002:
                return None
        return folder if os.access(folder, os.W_OK | os.X_OK) else None
    except (OSError, RuntimeError):  # RuntimeError: no home folder
        return None


def open_cached(tarball: Path, fh) -> Bundle | None:
    """The checked bundle from the cached extraction of ``tarball`` (open as ``fh``), made
    first where there is none or it fails a check; None where the cache cannot be used."""
    cache = cache_dir()
    if cache is None:
        return None
    entry = cache / _sha256_of(fh)
    if entry.exists():
        if not _ours(entry):
            return None  # not an extraction of ours: leave it alone
        root = _checked_entry(entry)
        if root is not None:
            with contextlib.suppress(BundleError):  # changed since: extract it again
                bundle = read_bundle(root)
                _touch(entry)
                return bundle
        _remove(entry, cache)
    try:
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=".unpacking-"))
    except OSError:
        return None
    try:
        top = unpack(tarball, fh, staging)
        (staging / EXTRACTED).write_text(json.dumps({
            "archive_sha256": entry.name,
            "bundle": top.name,
            "bundle_json_sha256": sha256_file(top / MANIFEST) if (top / MANIFEST).is_file() else None,
        }) + "\n", encoding="utf-8")
        try:
            os.rename(staging, entry)  # atomic; fails where another process put its extraction first
        except OSError:
            if not _ours(entry):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # lost the race: use the winner's
    except OSError:  # the cache cannot be written after all
        shutil.rmtree(staging, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        bundle = read_bundle(_checked_entry(entry) or entry / top.name)
    except BundleError:
        _remove(entry, cache)  # a bundle that fails its checks is not kept
        raise
    _evict(cache)
    return bundle


def _sha256_of(fh) -> str:
    fh.seek(0)
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _ours(entry: Path) -> bool:
    """A cache entry this module wrote: a folder named by a sha256, holding its marker."""
    return (re.fullmatch(r"[0-9a-f]{64}", entry.name) is not None and entry.is_dir() and not entry.is_symlink()
            and (entry / EXTRACTED).is_file())


def _checked_entry(entry: Path) -> Path | None:
    """The bundle folder in a cache entry whose bundle.json is still the one extracted; else None."""
    try:
        marker = json.loads((entry / EXTRACTED).read_text(encoding="utf-8"))
        name = marker["bundle"]
        if (marker["archive_sha256"] != entry.name or not isinstance(name, str)
                or name in ("", ".", "..") or "/" in name or "\\" in name):
            return None
        root = entry / name
        return root if sha256_file(root / MANIFEST) == marker["bundle_json_sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _touch(entry: Path) -> None:
    """Mark a cache entry used now: eviction removes the least recently used."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def _remove(entry: Path, cache: Path) -> None:
    """Remove a cache entry of ours: moved aside first, so no reader sees half of one."""
    try:
        aside = Path(tempfile.mkdtemp(dir=cache, prefix=".removing-"))
        os.rename(entry, aside / entry.name)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _evict(cache: Path) -> None:
    """Keep the CACHE_ENTRIES most recently used extractions; only entries of ours are removed."""
    try:
        entries = sorted(((e.stat().st_mtime_ns, e) for e in cache.iterdir() if _ours(e)), reverse=True)
    except OSError:
        return
    for _, entry in entries[CACHE_ENTRIES:]:
        _remove(entry, cache)


class _Capped:
    """The unpacked tar stream, for tarfile: a read or seek that would pass ``limit`` bytes is
    refused (tarfile reads a pax or long-name header whole into memory, before any member is
    seen), and a damaged gzip stream is a BundleError."""

    def __init__(self, raw, limit: int, tarball: Path) -> None:
        self.raw, self.limit, self.tarball = raw, limit, tarball

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0 and offset > self.limit:
            self._over()
        return self._guard(self.raw.seek, offset, whence)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or self.raw.tell() + size > self.limit:
            self._over()  # refused on the header's word, before the bytes are read
        return self._guard(self.raw.read, size)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except (EOFError, zlib.error, OSError) as exc:
            raise BundleError(
                f"bundle {self.tarball} is truncated or corrupt ({type(exc).__name__}: {exc}); copy it again"
            ) from None

    def _over(self) -> None:
        raise BundleError(
            f"bundle {self.tarball} unpacks to more than {self.limit} bytes (its files may hold "
            f"{MAX_TOTAL_BYTES}); refusing it"
        )


def _members(archive, tarball: Path):
    """Each member of ``archive`` with its path's parts, as its header is read; a BundleError at
    the first one past a cap, or that is not a plain file or folder inside one top-level folder."""
    count = total = 0
    top = None
    while (member := archive.next()) is not None:  # one header at a time: never a list of all
        count += 1
        if count > MAX_MEMBERS:
            raise BundleError(
                f"bundle {tarball}: {member.name} is member {count}, past the {MAX_MEMBERS} a bundle may have "
                "(one has about a dozen); refusing it"
            )
        rel = safe_relative(member.name, tarball)
        if member.issparse():
            raise BundleError(f"bundle {tarball}: {member.name} is a sparse file; refusing it")
        if not (member.isfile() or member.isdir()):
            raise BundleError(f"bundle {tarball}: {member.name} is not a regular file; refusing it")
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise BundleError(
                f"bundle {tarball}: {member.name} ({member.size} bytes) takes the bundle past "
                f"{MAX_TOTAL_BYTES} bytes unpacked; refusing it"
            )
        if top is None:
            top = rel.parts[0]
        elif rel.parts[0] != top:
            raise BundleError(f"bundle {tarball} holds more than one top-level entry ({top}, {rel.parts[0]}), "
                              "expected one bundle folder")
        yield member, rel


def unpack(tarball: Path, fh, into: Path) -> Path:
    """Extract bundle.json and the files it names from ``tarball`` (open as ``fh``) into
    ``into``; return the bundle folder. The headers are read through once to check them all
    and read bundle.json, then again to extract: nothing is written before every check passed.
    An OSError is a failure to write."""
    import gzip  # only .tar.gz bundles need these: keeps `runtimes.run` start-up lean
    import tarfile

    def archive():
        fh.seek(0)
        limit = MAX_TOTAL_BYTES + (MAX_MEMBERS + 1) * 65536  # the files, then 64 KiB a member for headers
        return tarfile.open(fileobj=_Capped(gzip.GzipFile(fileobj=fh, mode="rb"), limit, tarball), mode="r:")

    try:
        with archive() as survey:
            top, sizes, manifest = None, {}, None
            for member, rel in _members(survey, tarball):
                top = top or rel.parts[0]
                name = "/".join(rel.parts[1:])
                if member.isfile():
                    if name in sizes:
                        raise BundleError(f"bundle {tarball}: {member.name} appears twice; refusing it")
                    sizes[name] = member.size
                    if name == MANIFEST:
                        manifest = _read_manifest(survey, member, tarball)
        if top is None:
            raise BundleError(f"bundle {tarball} holds 0 top-level entries, expected one bundle folder")
        wanted = _wanted(manifest, sizes, tarball, top)
        (into / top).mkdir(parents=True, exist_ok=True)
        with archive() as extract:
            for member, rel in _members(extract, tarball):
                if member.isfile() and "/".join(rel.parts[1:]) in wanted:
                    target = into.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with extract.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except tarfile.TarError as exc:
        raise BundleError(
            f"bundle {tarball} is truncated or corrupt ({type(exc).__name__}: {exc}); copy it again"
        ) from None
    return into / top


def _read_manifest(archive, member, tarball: Path):
    """bundle.json from the archive, read whole only once its header says it is small; None
    where it is not JSON (read_bundle then says what is wrong with it)."""
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"bundle {tarball}: {member.name} is {member.size} bytes, more than the {MAX_MANIFEST_BYTES} "
            f"a {MANIFEST} may have; refusing it"
        )
    with archive.extractfile(member) as src:
        data = src.read(MAX_MANIFEST_BYTES + 1)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _wanted(manifest, sizes: dict[str, int], tarball: Path, top: str) -> set[str]:
    """The paths to extract, relative to the bundle folder: bundle.json and the files it names,
    each of which must have in the archive the size bundle.json records for it."""
    manifest = manifest if isinstance(manifest, dict) else {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    recorded = manifest.get("sizes") if isinstance(manifest.get("sizes"), dict) else {}
    wanted = {MANIFEST, *(PurePosixPath(name).as_posix() for name in files if isinstance(name, str))}
    for name in sorted(wanted & sizes.keys()):
        if name in recorded and recorded[name] != sizes[name]:
            raise BundleError(
                f"bundle {tarball}: {top}/{name} is {sizes[name]} bytes in the archive and {recorded[name]!r} "
                f"in {MANIFEST}; refusing it: copy the bundle again"
            )
    return wanted
