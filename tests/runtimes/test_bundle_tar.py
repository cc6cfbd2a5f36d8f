"""A .tar.gz bundle is opened with limits and its extraction is cached: hostile archives
(a sparse member, 300,000 members, a member of another size than bundle.json records,
an oversized bundle.json) are refused from their headers, fast, before anything big is
written; members bundle.json does not name are not extracted; a second open reuses the
extraction, a changed one is extracted again, and the cache keeps a few entries of its own.
Every archive here is a real tarball: a genuine bundle repacked, or headers made by hand."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import runtimes.tarball as tarball_module
from deploy.bundle import build_bundle
from runtimes.bundle import MANIFEST, open_bundle, sha256_file
from runtimes.tarball import CACHE_ENTRIES, CACHE_ENV, EXTRACTED, MAX_MEMBERS
from runtimes.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
SPARSE_SIZE = 6 << 30  # what the sparse member expands to; its archive is a few KB


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Each test's own extraction cache, never the real home's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def made(demo_export, demo_int8, tmp_path_factory) -> tuple[Path, Path]:
    """A genuine bundle of the demo model and its int8 variant: the folder and its .tar.gz."""
    return build_bundle(demo_export.path, tmp_path_factory.mktemp("tar") / "gnet", variants=["int8"])


@pytest.fixture
def extractions(monkeypatch) -> list[Path]:
    """The folders the bundle module unpacks into, one per extraction."""
    seen = []
    unpack = tarball_module.unpack

    def counting(tarball, fh, into):
        seen.append(into)
        return unpack(tarball, fh, into)

    monkeypatch.setattr(tarball_module, "unpack", counting)
    return seen


def _repack(tarball: Path, out: Path, *, extra=(), replace=None, mtime: int = 0) -> Path:
    """The members of ``tarball`` in order, ``replace`` (name -> bytes) swapped in, then ``extra``
    (TarInfo, bytes) pairs; gzip level 0, which is quick to write and read."""
    raw = io.BytesIO()
    with tarfile.open(tarball, "r:gz") as source, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as dest:
        for member in source:
            data = source.extractfile(member).read() if member.isfile() else None
            if replace and member.name in replace:
                data = replace[member.name]
                member.size = len(data)
            dest.addfile(member, io.BytesIO(data) if data is not None else None)
        for info, data in extra:
            info.size = len(data)
            dest.addfile(info, io.BytesIO(data))
    out.write_bytes(gzip.compress(raw.getvalue(), compresslevel=0, mtime=mtime))
    return out


def _edited_manifest(tarball: Path, edit) -> bytes:
    with tarfile.open(tarball, "r:gz") as archive:
        manifest = json.load(archive.extractfile(f"gnet/{MANIFEST}"))
    edit(manifest)
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return header


def _sparse_tarball(out: Path, name: str = "gnet/models/huge.onnx") -> Path:
    """A bundle.json and a GNU sparse member whose 512 stored bytes expand to SPARSE_SIZE
    (tarfile reads these headers but cannot write them: made by hand)."""
    manifest = json.dumps({"format": 1, "files": {"models/huge.onnx": "0" * 64}}).encode()
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 512
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (SPARSE_SIZE - 512, 512)  # one region: the last 512 bytes
    header[483:495] = b"%011o\0" % SPARSE_SIZE
    first = tarfile.TarInfo(f"gnet/{MANIFEST}")
    first.size = len(manifest)
    raw = io.BytesIO()
    raw.write(first.tobuf(format=tarfile.GNU_FORMAT) + manifest.ljust(512, b"\0"))
    raw.write(_checksum(header) + b"x" * 512 + b"\0" * 1024)
    out.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return out


def _many_members(out: Path, count: int = 300_000) -> Path:
    """``count`` empty files gnet/e/NNNNNN, headers made from one template (tarfile would take seconds)."""
    template = bytearray(tarfile.TarInfo("gnet/e/000000").tobuf(format=tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8
    base = sum(template) - sum(b"000000")
    with gzip.GzipFile(out, "wb", compresslevel=1, mtime=0) as gz:
        for start in range(0, count, 10_000):
            chunk = bytearray()
            for i in range(start, min(start + 10_000, count)):
                digits = b"%06d" % i
                template[7:13] = digits
                template[148:155] = b"%06o\0" % (base + sum(digits))
                chunk += template
            gz.write(chunk)
        gz.write(b"\0" * 1024)
    return out


def _cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0


def _refused(tarball: Path, match: str) -> float:
    """Seconds open_bundle took to refuse ``tarball`` with a message matching ``match``."""
    started = time.perf_counter()
    with pytest.raises(BundleError, match=match) as refused:
        with open_bundle(tarball):
            pass
    assert "\n" not in str(refused.value)
    return time.perf_counter() - started


def test_a_genuine_bundle_is_far_inside_the_caps(made, capsys):
    """The caps are sized from a real bundle: fp32 and int8 of the demo model."""
    folder, tarball = made
    with tarfile.open(tarball, "r:gz") as archive:
        members = archive.getmembers()
    total = sum(m.size for m in members)
    with capsys.disabled():
        print(f"\ngenuine fp32+int8 bundle: {len(members)} members, {total / 1e6:.1f} MB unpacked, "
              f"{tarball.stat().st_size / 1e6:.1f} MB .tar.gz")
    assert len(members) * 10 < MAX_MEMBERS and total * 10 < tarball_module.MAX_TOTAL_BYTES
    sizes = json.loads((folder / MANIFEST).read_text())["sizes"]
    assert sizes == {m.name.removeprefix("gnet/"): m.size for m in members if m.isfile() and m.name != f"gnet/{MANIFEST}"}


def test_a_sparse_member_is_refused_before_anything_is_written(tmp_path, cache):
    tarball = _sparse_tarball(tmp_path / "sparse.tar.gz")
    assert tarball.stat().st_size < 4096
    with tarfile.open(tarball) as archive:  # the archive is what it claims: tarfile sees a 6 GiB sparse file
        huge = archive.getmember("gnet/models/huge.onnx")
        assert huge.issparse() and huge.size == SPARSE_SIZE
    seconds = _refused(tarball, r"gnet/models/huge.onnx is a sparse file; refusing it")
    assert seconds < 2 and _cache_bytes(cache) == 0 and list(cache.iterdir()) == []


def test_300k_members_are_refused_after_the_cap(tmp_path, cache):
    tarball = _many_members(tmp_path / "many.tar.gz")
    seconds = _refused(tarball, rf"gnet/e/{MAX_MEMBERS:06d} is member {MAX_MEMBERS + 1}, past the {MAX_MEMBERS}")
    assert seconds < 1.5, f"{seconds:.1f} s"
    assert list(cache.iterdir()) == []


def test_members_bundle_json_does_not_name_are_not_extracted(made, tmp_path):
    extra = [(tarfile.TarInfo("gnet/unlisted.bin"), b"x" * 1000),
             (tarfile.TarInfo("gnet/deep/er/notes.txt"), b"notes"),
             (tarfile.TarInfo("gnet/tuned.json"), b"{}")]
    tarball = _repack(made[1], tmp_path / "extra.tar.gz", extra=extra)
    with open_bundle(tarball) as opened:
        files = sorted(p.relative_to(opened.root).as_posix() for p in opened.root.rglob("*") if p.is_file())
        assert list(opened.models) == ["fp32", "int8"]
    named = json.loads((made[0] / MANIFEST).read_text())["files"]
    assert files == sorted([*named, MANIFEST])


@pytest.mark.parametrize("change", [4096, -4096])
def test_a_member_of_another_size_than_bundle_json_records_is_refused_unwritten(made, tmp_path, cache, change):
    recorded = (made[0] / "reference.npz").read_bytes()
    changed = recorded + b"\0" * change if change > 0 else recorded[:change]
    tarball = _repack(made[1], tmp_path / "changed.tar.gz", replace={"gnet/reference.npz": changed})
    _refused(tarball, rf"gnet/reference.npz is {len(changed)} bytes in the archive and {len(recorded)} in bundle.json")
    assert _cache_bytes(cache) == 0


def test_a_bundle_json_without_sizes_is_still_read(made, tmp_path):
    """Sizes are optional: bundles made before them open, held to the caps alone."""
    manifest = _edited_manifest(made[1], lambda m: m.pop("sizes"))
    tarball = _repack(made[1], tmp_path / "old.tar.gz", replace={f"gnet/{MANIFEST}": manifest})
    with open_bundle(tarball) as opened:
        assert list(opened.models) == ["fp32", "int8"]


def test_an_oversized_bundle_json_is_refused_before_it_is_parsed(made, tmp_path):
    padded = _edited_manifest(made[1], lambda m: None).ljust(tarball_module.MAX_MANIFEST_BYTES + 1, b" ")
    tarball = _repack(made[1], tmp_path / "fat.tar.gz", replace={f"gnet/{MANIFEST}": padded})
    _refused(tarball, rf"gnet/bundle.json is {len(padded)} bytes, more than the {tarball_module.MAX_MANIFEST_BYTES}")


def test_the_total_size_cap_holds(made, monkeypatch):
    monkeypatch.setattr(tarball_module, "MAX_TOTAL_BYTES", 10_000_000)
    _refused(made[1], r"gnet/models/\S+ \(\d+ bytes\) takes the bundle past 10000000 bytes unpacked")


def test_a_header_too_big_to_read_is_refused_unread(tmp_path):
    """tarfile reads a pax header whole into memory: one claiming 2 GiB is refused before it is read."""
    info = tarfile.TarInfo("gnet/PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 2 << 30
    tarball = tmp_path / "pax.tar.gz"
    tarball.write_bytes(gzip.compress(info.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 4096, mtime=0))
    assert _refused(tarball, r"unpacks to more than \d+ bytes") < 1


@pytest.mark.parametrize("kind", ["sparse", "300k members"])
def test_the_cli_refuses_a_hostile_tarball_in_one_line(tmp_path, cache, kind):
    tarball = _sparse_tarball(tmp_path / "h.tar.gz") if kind == "sparse" else _many_members(tmp_path / "h.tar.gz")
    proc = subprocess.run([sys.executable, "-m", "runtimes.verify", "--bundle", str(tarball)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, CACHE_ENV: str(cache)})
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: bundle {tarball}: gnet/") and proc.stderr.count("\n") == 1, proc.stderr
    assert ("is a sparse file" if kind == "sparse" else f"past the {MAX_MEMBERS}") in proc.stderr


def test_a_second_open_reuses_the_extraction(made, cache, extractions):
    with open_bundle(made[1]) as first:
        model = first.model().path
        before = model.stat()
    assert first.root == cache / sha256_file(made[1]) / "gnet" and len(extractions) == 1
    with open_bundle(made[1]) as second:
        assert second.root == first.root and second.model().path.stat().st_mtime_ns == before.st_mtime_ns
        assert second.model().path.stat().st_ino == before.st_ino
    assert len(extractions) == 1
    assert sorted(p.name for p in cache.iterdir()) == [sha256_file(made[1])]  # no staging left behind


def test_a_changed_cached_file_is_extracted_again(made, cache, extractions):
    with open_bundle(made[1]) as opened:
        model = opened.model().path
    original = model.read_bytes()
    with open(model, "ab") as fh:
        fh.write(b"tampered")
    with open_bundle(made[1]) as opened:
        assert opened.model().path.read_bytes() == original
    assert len(extractions) == 2


def test_a_changed_cached_bundle_json_is_extracted_again(made, cache, extractions):
    """A cached file changed with bundle.json re-hashed to match: read_bundle alone would accept
    it; the sha256 of bundle.json recorded at extraction does not."""
    with open_bundle(made[1]) as opened:
        root, reference = opened.root, opened.reference
    original = reference.read_bytes()
    reference.write_bytes(original + b"tampered")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["reference.npz"] = sha256_file(reference)
    manifest["sizes"]["reference.npz"] += len(b"tampered")
    (root / MANIFEST).write_text(json.dumps(manifest))
    with open_bundle(made[1]) as opened:
        assert opened.reference.read_bytes() == original
    assert len(extractions) == 2


def test_the_cache_keeps_the_most_recently_used_and_only_removes_its_own(made, tmp_path, cache, extractions):
    cache.mkdir()
    foreign = [cache / "notes", cache / ("0" * 64), cache / ("1" * 64)]
    for folder in foreign:
        folder.mkdir()
    (cache / ("1" * 64) / "gnet").mkdir()  # named like an entry, without our marker
    raw = gzip.decompress(made[1].read_bytes())
    tarballs = []
    for i in range(CACHE_ENTRIES + 1):  # equal bundles, different archives: gzip's header time differs
        tarballs.append(tmp_path / f"b{i}.tar.gz")
        tarballs[-1].write_bytes(gzip.compress(raw, compresslevel=0, mtime=i + 1))
    keys = [sha256_file(t) for t in tarballs]
    for tarball in tarballs[:CACHE_ENTRIES]:
        with open_bundle(tarball):
            pass
    with open_bundle(tarballs[0]):  # used again: now the most recent
        pass
    with open_bundle(tarballs[CACHE_ENTRIES]):
        pass
    ours = {p.name for p in cache.iterdir() if (p / EXTRACTED).is_file()}
    assert ours == set(keys) - {keys[1]}  # the least recently used went
    assert all(folder.is_dir() for folder in foreign) and (cache / ("1" * 64) / "gnet").is_dir()
    assert len(extractions) == CACHE_ENTRIES + 1


def test_an_unwritable_cache_falls_back_to_a_temp_folder(made, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    with open_bundle(made[1]) as opened:
        root = opened.root
        assert root.is_dir() and not root.is_relative_to(tmp_path) and list(opened.models) == ["fp32", "int8"]
    assert not root.exists()


def test_losing_the_race_to_another_extraction_uses_the_winners(made, cache, monkeypatch):
    """Another open finishes its extraction while this one is unpacking: this one's is dropped."""
    unpack, roots = tarball_module.unpack, []

    def racing(tarball, fh, into):
        top = unpack(tarball, fh, into)
        if not roots:
            monkeypatch.setattr(tarball_module, "unpack", unpack)
            with open_bundle(tarball) as other:  # the winner
                roots.append(other.root)
        return top

    monkeypatch.setattr(tarball_module, "unpack", racing)
    with open_bundle(made[1]) as opened:
        assert opened.root == roots[0] and list(opened.models) == ["fp32", "int8"]
    assert [p.name for p in cache.iterdir()] == [sha256_file(made[1])]
