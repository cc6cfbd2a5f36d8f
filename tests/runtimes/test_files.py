"""Memory and files: the decoded-bytes guard, --max-pixels, and what directory scans and globs collect."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runtimes import evaluate, run
from runtimes.errors import ImageError
from runtimes.preprocess import IMAGE_EXTENSIONS, decode_image, find_images, glob_images

ALL_16_BIT_VALUES = np.arange(65536, dtype=np.uint16).reshape(256, 256)


def encode(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def png_header_only(width: int, height: int, bit_depth: int) -> bytes:
    """An RGB PNG whose header claims width x height at ``bit_depth`` but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- the guard


def test_a_100_mp_16_bit_png_is_refused_from_its_header():
    """100 MP is under the pixel limit, but 16-bit RGB at that size decodes to 600 MB:
    before the guard counted bytes, a 3 MB file of it took 2.9 GB and seconds to decode."""
    with pytest.raises(ImageError) as info:
        decode_image(png_header_only(10_000, 10_000, 16), "bomb.png")
    assert str(info.value).startswith(
        "bomb.png: image is 10000x10000 = 100,000,000 pixels of 16 bits (600,000,000 bytes decoded, "
        "as much as 200,000,000 8-bit pixels), over the 134,217,728-pixel limit"
    )
    with pytest.raises(ImageError, match="cannot decode these"):  # at 8 bits the guard lets it through
        decode_image(png_header_only(10_000, 10_000, 8), "bomb.png")


# How each TIFF type used here is stored in an IFD entry's 4 bytes: BYTE, SHORT, LONG.
TIFF_INLINE = {1: "<B3x", 3: "<H2x", 4: "<I"}


def tiff_file(width: int, height: int, bits: int, pixels: bytes = b"", *, width_type: int = 4, lead=(), tail=()) -> bytes:
    """A little-endian RGB TIFF whose IFD claims width x height at ``bits`` a sample, with ``pixels`` as its one
    uncompressed strip (none: a header only). ``width_type``: the TIFF type ImageWidth is stored as; ``lead`` and
    ``tail``: more (tag, type, count, value) entries before and after the real ones."""
    entries = [
        *lead,
        (256, width_type, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, "bits"),  # three values do not fit in the entry: an offset to them
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),  # 3 samples a pixel
        *([(273, 4, 1, "strip"), (278, 4, 1, height), (279, 4, 1, len(pixels))] if pixels else []),
        *tail,
    ]
    bits_at = 8 + 2 + 12 * len(entries) + 4  # after the header and the IFD
    offsets = {"bits": bits_at, "strip": bits_at + 6}
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + struct.pack(TIFF_INLINE[kind], offsets.get(value, value))
        for tag, kind, count, value in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<3H", bits, bits, bits) + pixels


def jpeg_claiming(bits: int) -> bytes:
    """A 64x80 JPEG whose frame header says ``bits`` per sample (12 is extended JPEG's other precision)."""
    data = bytearray(encode(np.zeros((64, 80, 3), np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = bits
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [lambda bits: png_header_only(80, 64, bits), lambda bits: tiff_file(80, 64, bits), jpeg_claiming],
    ids=["png", "tiff", "jpeg"],
)
def test_the_sample_size_is_read_from_the_header_before_decoding(make):
    """Each file is refused at 16 (or 12) bits with the limit's message, which only the header check gives:
    none of them can be decoded, so at 8 bits the decoder says so instead."""
    wide = make(12 if make is jpeg_claiming else 16)
    with pytest.raises(ImageError, match="5,120 pixels of 16 bits.*over the 5,120-pixel limit"):
        decode_image(wide, "x", max_pixels=64 * 80)
    try:
        decode_image(make(8), "x", max_pixels=64 * 80)
    except ImageError as exc:
        assert "limit" not in str(exc)


def test_32_bit_samples_count_four_times():
    """OpenCV decodes a float TIFF to float32: 4 bytes a sample, refused from the header."""
    with pytest.raises(ImageError, match=r"5,120 pixels of 32 bits \(61,440 bytes decoded"):
        decode_image(tiff_file(80, 64, 32), "x", max_pixels=3 * 64 * 80)


def jpeg_with_junk(rgb: np.ndarray, junk: bytes = b"\x00") -> bytes:
    """A JPEG of ``rgb`` with ``junk`` before its frame header, which libjpeg skips with a warning."""
    data = encode(rgb, ".jpg")
    sof = data.index(b"\xff\xc0")
    return data[:sof] + junk + data[sof:]


def os2_bmp(rgb: np.ndarray) -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 core header, which our header reader does not size, but Pillow does."""
    height, width = rgb.shape[:2]
    assert width * 3 % 4 == 0  # no row padding
    pixels = np.ascontiguousarray(rgb[::-1, :, ::-1]).tobytes()  # bottom-up rows of BGR
    head = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 14 + len(head) + len(pixels), 0, 0, 14 + len(head)) + head + pixels


FLAT_600 = np.full((600, 600, 3), 90, np.uint8)
OVER_THE_LIMIT = {
    "png": encode(FLAT_600, ".png"),
    "jpeg with a junk byte": jpeg_with_junk(FLAT_600),
    "os/2 bmp, sized by Pillow": os2_bmp(FLAT_600),
    # libtiff (and Pillow) keep the first of a repeated tag: a smaller second width must not count
    "tiff repeating its width": tiff_file(600, 600, 8, FLAT_600.tobytes(), tail=[(256, 4, 1, 10)]),
}


@pytest.mark.parametrize("data", OVER_THE_LIMIT.values(), ids=OVER_THE_LIMIT)
def test_an_image_over_the_limit_is_refused_before_it_is_decoded(data):
    """The header check's message: without it the decoded array's check refuses, with its own
    message, after OpenCV allocated the whole image (874 MB peak for a 144 MP JPEG)."""
    with pytest.raises(ImageError) as info:
        decode_image(data, "x", max_pixels=10_000)
    assert str(info.value).startswith("x: image is 600x600 = 360,000 pixels, over the 10,000-pixel limit")
    assert decode_image(data, max_pixels=360_000).shape == (600, 600, 3)  # a real image, refused for its size only


def test_an_image_of_unknown_size_is_refused_not_decoded():
    """ImageWidth stored as a BYTE: libtiff reads it, our header reader and Pillow's do not. Decoding it to
    learn its size could allocate anything, so it is refused, though OpenCV could decode this one."""
    data = tiff_file(80, 64, 8, bytes(64 * 80 * 3), width_type=1)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (64, 80, 3)
    with pytest.raises(ImageError, match=r"^x: cannot decode these \d+ bytes as TIFF: no image size can be read from its"):
        decode_image(data, "x")


def test_the_decoded_array_is_checked_again():
    """A 16-bit RGB TIFF whose size tags come after 513 other entries, past those our header reader
    reads: Pillow sizes it, as 8-bit RGB. The decoded array's check catches the 16 bits."""
    pixels = np.arange(64 * 80 * 3, dtype="<u2").tobytes()
    data = tiff_file(80, 64, 16, pixels, lead=[(254, 4, 1, 0)] * 513)
    with pytest.raises(ImageError) as info:
        decode_image(data, "x", max_pixels=64 * 80)
    assert str(info.value).startswith(
        "x: decoded to 80x64 = 5,120 pixels of 16 bits (30,720 bytes decoded, as much as 10,240 8-bit pixels), "
        "more than its header said, and past the 5,120-pixel limit"
    )
    assert decode_image(data, max_pixels=2 * 64 * 80).shape == (64, 80, 3)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_16_bit_images_count_twice(ext, channels):
    """Gray counts as 3 channels too: OpenCV decodes every image to color."""
    shape = (64, 80) if channels == 1 else (64, 80, 3)
    pixels = 64 * 80
    eight, sixteen = encode(np.zeros(shape, np.uint8), ext), encode(np.zeros(shape, np.uint16), ext)
    assert decode_image(eight, max_pixels=pixels).shape == (64, 80, 3)
    with pytest.raises(ImageError, match=r"5,120 pixels of 16 bits \(30,720 bytes decoded.*over the 5,120-pixel limit"):
        decode_image(sixteen, "x", max_pixels=pixels)
    assert decode_image(sixteen, max_pixels=2 * pixels).shape == (64, 80, 3)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_every_16_bit_value_rounds_to_the_nearest_8_bit_level(channels):
    values = ALL_16_BIT_VALUES if channels == 1 else np.stack([ALL_16_BIT_VALUES, ALL_16_BIT_VALUES.T, ALL_16_BIT_VALUES[::-1]], -1)
    want = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)
    got = decode_image(encode(values, ".png"))
    want_rgb = np.repeat(want[..., None], 3, -1) if channels == 1 else want[..., ::-1]  # cv2 wrote BGR
    np.testing.assert_array_equal(got, want_rgb)


# ----------------------------------------------------------------------------- --max-pixels


@pytest.fixture(scope="module")
def limit_images(tmp_path_factory, demo_export) -> Path:
    """<label>/eight.png and <label>/sixteen.png, both 64x80: 5,120 pixels, the second 16-bit."""
    folder = tmp_path_factory.mktemp("limit") / demo_export.spec.labels[0]
    folder.mkdir()
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    (folder / "eight.png").write_bytes(encode(scene, ".png"))
    (folder / "sixteen.png").write_bytes(encode(scene.astype(np.uint16) * 257, ".png"))
    return folder


def test_max_pixels_on_runtimes_run(demo_export, limit_images, capsys):
    args = ["--model", str(demo_export.path), "--json", str(limit_images)]
    assert run.main([*args, "--max-pixels", "5120"]) == 1
    records = {Path(r["image"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "topk" in records["eight.png"]
    assert "over the 5,120-pixel limit" in records["sixteen.png"]["error"]
    assert run.main([*args, "--max-pixels", "10240"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["topk"] == records[1]["topk"]  # 16-bit and 8-bit: the same pixels, the same answer


def test_max_pixels_on_runtimes_evaluate(demo_export, limit_images, capsys):
    args = [str(limit_images.parent), "--model", str(demo_export.path), "--json"]
    evaluate.main([*args, "--max-pixels", "5120"])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and len(report["unreadable"]) == 1
    assert "sixteen.png" in report["unreadable"][0] and "5,120-pixel limit" in report["unreadable"][0]
    evaluate.main([*args, "--max-pixels", "10240"])
    assert json.loads(capsys.readouterr().out)["images"] == 2


# ----------------------------------------------------------------------------- scans and globs


def jpeg() -> bytes:
    return encode(np.full((8, 8, 3), 128, np.uint8), ".jpg")


@pytest.fixture
def tree(tmp_path) -> Path:
    """photos/ with a.jpg, b.jpg, sub/c.png, macOS and dot files, a hidden folder,
    a link cycle (loop/up -> ..) and a link to a folder outside (linked -> ../elsewhere)."""
    root = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "sub/c.png", ".git/d.jpg", "../elsewhere/e.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(jpeg())
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # what macOS leaves on other file systems
    (root / ".hidden.jpg").write_bytes(jpeg())
    (root / "loop").mkdir()
    (root / "loop" / "up").symlink_to("..")
    (root / "linked").symlink_to("../elsewhere")
    return root


def names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_a_directory_scan_skips_hidden_files_and_walks_each_folder_once(tree):
    assert names(find_images(tree), tree) == ["a.jpg", "b.jpg", "linked/e.jpg", "sub/c.png"]


def test_a_file_reachable_through_a_link_keeps_its_real_path(tmp_path):
    """Whatever order the file system lists a folder in, the real folder wins over links to it."""
    root = tmp_path / "root"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "img.jpg").write_bytes(jpeg())
    for link in ("a", "latest", "mirror", "zz", "photos-old", "0"):
        (root / link).symlink_to("photos")
    assert names(find_images(root), root) == ["photos/img.jpg"]


def test_a_recursive_glob_does_too(tree, monkeypatch):
    assert names(glob_images(f"{tree}/**/*.jpg"), tree) == ["a.jpg", "b.jpg", "linked/e.jpg"]
    assert names(glob_images(f"{tree}/**"), tree) == ["a.jpg", "b.jpg", "linked/e.jpg", "sub/c.png"]
    assert names(glob_images(f"{tree}/*.jpg"), tree) == ["a.jpg", "b.jpg"]
    monkeypatch.chdir(tree)
    assert [p.as_posix() for p in glob_images("**/*.png")] == ["sub/c.png"]
    # what runtimes.run collects from a folder and a glob
    assert names(run.collect_images([str(tree), f"{tree}/**/*.png"]), tree) == [
        "a.jpg", "b.jpg", "linked/e.jpg", "sub/c.png", "sub/c.png"
    ]


def test_a_folder_name_with_glob_characters_is_matched_literally(tmp_path):
    root = tmp_path / "[set] photos"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.jpg").write_bytes(jpeg())
    found = glob_images(f"{tmp_path}/*/**/*.jpg")
    assert names(found, tmp_path) == ["[set] photos/x/a.jpg"]


def test_gif_is_collected_where_this_opencv_decodes_it(tmp_path):
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, format="GIF")
    decodes = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR) is not None
    (tmp_path / "a.gif").write_bytes(buffer.getvalue())
    assert (".gif" in IMAGE_EXTENSIONS) == decodes
    assert [p.name for p in find_images(tmp_path)] == (["a.gif"] if decodes else [])


def test_a_scan_does_not_follow_a_broken_link(tmp_path):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.symlink(tmp_path / "no-folder", tmp_path / "gone")
    assert find_images(tmp_path) == []
