"""The one preprocessing every runtime shares: image bytes -> normalized (3, crop, crop) float32.

Exact mode reproduces torchvision's classic evaluation pipeline on PIL images::

    Image.open(f).convert("RGB") -> Resize(resize_size) -> CenterCrop(crop_size) -> ToTensor -> Normalize

bit for bit: OpenCV decodes (it reads EXIF orientation and 16-bit samples, and is
faster than Pillow's decoder), then Pillow itself resizes the whole image and the
center is cropped, exactly as torchvision does. No ``cv2.resize`` flag gets close when
a photo shrinks a lot: on 1000x1500 to 3000x2000 images INTER_LINEAR is off by up to
~190 of 255 levels (it does not antialias) and INTER_AREA by up to ~45
(``test_opencv_resize_flags_are_further_from_pil`` prints the table). Normalizing goes
through a 256-entry table per channel: the same float32 operations, done once.

Fast mode (``fast=True``, the default of ``Classifier`` and ``runtimes.run``) changes
one thing, for JPEGs whose shorter side is at least 4x ``resize_size``: the decoder
scales by 1/2, 1/4 or 1/8 in the DCT domain (the largest that keeps the shorter side at
least 2x ``resize_size``), and Pillow resamples only the crop window of that. A 12 MP
photo then costs about a fifth of the exact path; the input moves by a few levels (see
the README's table). Everything else is exact in both modes.

Two deliberate differences from a plain PIL pipeline, both about the input, not the model:
EXIF orientation is applied (a phone photo is classified upright; PIL ignores the tag
unless ImageOps.exif_transpose is called), and 16-bit images are scaled by 1/257 with
rounding (PIL takes the high byte of 16-bit RGB and clips 16-bit grayscale to 255).
"""

from __future__ import annotations

import functools
import glob
import io
import os
import re
import struct
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from runtimes.errors import ImageError, ModelSpecError
from runtimes.spec import ModelSpec

__all__ = [
    "EXACT", "FAST", "FRAME_ORDERS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "check_frame_order", "decode_cost", "decode_image", "find_images",
    "frame_to_rgb", "glob_images", "load", "load_with_mode", "prepare", "stack",
]

EXACT, FAST = "exact", "fast"  # the preprocessing an image went through

# Decompression-bomb guard: a 1 KB PNG can claim 100000x100000 pixels. It counts the
# bytes OpenCV will allocate, read from the header before decoding: width x height x 3
# channels (we always decode to color) x 1 or 2 bytes a sample. The limit is MAX_PIXELS
# 8-bit RGB pixels' worth (384 MiB); a 16-bit image counts twice, so a 3 MB 16-bit PNG
# of 100 MP (600 MB decoded, 2.9 GB peak before this guard) is refused in microseconds.
# Where our header reader cannot size a file, Pillow's (which does not decode) does; a file
# neither can size is refused, never decoded to find out: one junk byte before a JPEG's
# frame header used to let a 2 MB, 144 MP JPEG decode to 874 MB peak before it was refused.
# 2**27 (134 MP) is above any common camera sensor.
MAX_PIXELS = 1 << 27

# IMREAD_COLOR: gray and palette become 3 channels and alpha is dropped, as PIL's
# .convert("RGB") does. ANYDEPTH: keep 16 bits so we can round them ourselves (OpenCV
# would truncate). Any flag other than IMREAD_UNCHANGED makes OpenCV apply EXIF orientation.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH

# OpenCV >= 4.10 can decode straight to RGB. Only the fast path uses it: combined with
# IMREAD_ANYDEPTH, OpenCV 5.0 returns zeros for 16-bit PNGs.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
# Pillow's resampling filters; torchvision's Resize calls Image.resize with them.
_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# Past this many pixels after resizing (an aspect ratio beyond 1024:1), only the crop
# window is resampled, with Pillow's box= argument, so a 1x3000 strip does not become a
# 256x768000 image first. Its rounding differs a little from the full resize: measured
# on random noise, up to 1 level with the bilinear filter (the default), up to 14 with
# bicubic.
_FULL_RESIZE_LIMIT = 1 << 26
# DCT-domain reductions of the fast path, largest first.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


# ----------------------------------------------------------------------------- decode


def decode_image(data: bytes, name: str = "<bytes>", *, max_pixels: int | None = None) -> np.ndarray:
    """Decode image file bytes to an upright RGB uint8 (H, W, 3) C-contiguous array.

    Refuses an image that would decode to more than ``max_pixels`` (default: MAX_PIXELS)
    8-bit RGB pixels' worth of memory (a 16-bit image counts twice), from its header,
    before decoding it, and one whose size no header reader finds.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(
            f"{name}: decode_image() takes the file's bytes, got {type(data).__name__}; "
            "read the file first, e.g. Path(path).read_bytes()"
        )
    if isinstance(data, memoryview):
        data = bytes(data)  # a bytearray is read in place: a server's request body is not copied
    if not data:
        raise ImageError(f"{name}: the image is empty (0 bytes); check the path and that the download finished")
    _check_header(data, name, max_pixels)
    try:
        # Straight to RGB where OpenCV can (4.11+): no BGR copy of the whole image beside it.
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS if _RGB is None else _rgb_flags(_DECODE_FLAGS))
    except cv2.error as exc:  # OpenCV's own size guard raises instead of returning None
        reason = str(exc).strip().splitlines()[-1]
        raise ImageError(f"{name}: OpenCV refused to decode it ({reason}); re-save it as an 8-bit PNG or JPEG") from None
    if img is None or img.size == 0:
        raise ImageError(
            f"{name}: cannot decode these {len(data)} bytes as {_sniff_format(data)}: the file is corrupt or "
            f"incomplete, or OpenCV {cv2.__version__} cannot read this kind; re-download it or re-save it as JPEG or PNG"
        )
    _check_size(name, img.shape[1], img.shape[0], img.dtype.itemsize, max_pixels, decoded=True)
    img = _to_uint8(img, name)
    return np.ascontiguousarray(img if _RGB is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def _rgb_flags(flags: int) -> int:
    """``flags`` with OpenCV's BGR color output swapped for RGB."""
    return (flags & ~cv2.IMREAD_COLOR) | _RGB


def _to_uint8(img: np.ndarray, name: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # round(v / 257) maps 0..65535 onto 0..255 exactly (ties cannot occur), in one
        # pass with no wider temporary: float32 is far more precise than the 0.002
        # distance to the nearest tie (all 65536 values are tested).
        return cv2.convertScaleAbs(img, alpha=1 / 257)
    raise ImageError(
        f"{name}: decoded to {img.dtype} samples; only 8- and 16-bit integer images are supported; "
        "convert it to an 8-bit PNG or JPEG"
    )


def _check_size(
    name: str, width: int, height: int, sample_bytes: int, max_pixels: int | None, *, decoded: bool = False
) -> None:
    """Refuse an image whose decoded (H, W, 3) array would take more than ``max_pixels`` 8-bit RGB pixels.

    Checked from the header, before decoding, and again on the decoded array (``decoded``):
    a header can claim less than the data holds, and Pillow, which sizes what our own
    header reader cannot, opens 16-bit RGB as 8-bit. The second message says which it was.
    """
    max_pixels = max_pixels or MAX_PIXELS
    pixels = width * height
    if pixels * sample_bytes <= max_pixels:
        return
    size = f"{width}x{height} = {pixels:,} pixels"
    if sample_bytes > 1:
        size += (
            f" of {8 * sample_bytes} bits ({3 * sample_bytes * pixels:,} bytes decoded, "
            f"as much as {sample_bytes * pixels:,} 8-bit pixels)"
        )
    found = f"decoded to {size}, more than its header said, and past" if decoded else f"image is {size}, over"
    raise ImageError(
        f"{name}: {found} the {max_pixels:,}-pixel limit that guards against decompression bombs; "
        "downscale it first or pass a larger max_pixels (--max-pixels on the command line)"
    )


def _check_header(data: bytes, name: str, max_pixels: int | None) -> None:
    """Refuse unknown formats, and images of unknown size, empty, huge or truncated, before OpenCV allocates anything."""
    kind = _sniff_format(data)
    if kind is None:
        # Only formats whose header we can size are passed on: OpenCV also reads PxM, HDR,
        # Sun raster, JPEG 2000..., whose headers can ask for up to its own 1-gigapixel cap.
        raise ImageError(
            f"{name}: not a {', '.join(list(_FORMATS)[:-1])} or {list(_FORMATS)[-1]} file "
            f"({len(data)} bytes starting {data[:12]!r}); "
            "check the path, or convert the image to JPEG or PNG"
        )
    try:
        shape = _header_shape(data, kind)
    except (struct.error, IndexError):
        shape = None  # header too short for our reader
    if shape is None:
        shape = _pillow_shape(data, kind)
    if shape is None:
        # Decoding it to find out could allocate anything the header asks for.
        raise ImageError(
            f"{name}: cannot decode these {len(data)} bytes as {kind}: no image size can be read from its header, "
            "so the file is corrupt or incomplete, and an image of unknown size is not decoded (it could be a "
            "decompression bomb); re-download it or re-save it as JPEG or PNG"
        )
    width, height, bits = shape
    if width == 0 or height == 0:
        raise ImageError(f"{name}: header says the image is {width}x{height} pixels; the file is corrupt or empty")
    _check_size(name, width, height, (bits + 7) // 8, max_pixels)  # OpenCV keeps 16 and 32-bit samples
    # OpenCV 4.x returns a JPEG that stops early padded with gray (5.0 refuses it).
    # Refuse it on every version, like PIL: the gray rows would be classified as content.
    if kind == "JPEG":
        scan = _jpeg_scan_offset(data)
        if scan is not None and b"\xff\xd9" not in data[scan:]:
            raise ImageError(
                f"{name}: JPEG is truncated (no end-of-image marker after the image data, {len(data)} bytes); "
                "re-download or re-export the file"
            )


_FORMATS = {  # name -> (magic bytes at offset 0, file extensions)
    "JPEG": ((b"\xff\xd8",), (".jpg", ".jpeg")),
    "PNG": ((b"\x89PNG\r\n\x1a\n",), (".png",)),
    "BMP": ((b"BM",), (".bmp",)),
    "GIF": ((b"GIF87a", b"GIF89a"), (".gif",)),
    "WebP": ((b"RIFF",), (".webp",)),  # and "WEBP" at offset 8
    "TIFF": ((b"II*\x00", b"MM\x00*"), (".tif", ".tiff")),
}
# A 1x1 GIF: OpenCV decodes GIF only from 4.11 on, and only where it was built with it.
_TINY_GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def _opencv_decodes(data: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


# What a folder search picks up (runtimes.run): the formats decode_image accepts that
# this OpenCV build decodes.
IMAGE_EXTENSIONS = frozenset(
    ext for kind, (_, extensions) in _FORMATS.items() for ext in extensions if kind != "GIF" or _opencv_decodes(_TINY_GIF)
)


def find_images(folder) -> list[Path]:
    """Every image file under ``folder`` (recursively), in sorted order.

    As shell globs do, hidden files and folders (names starting with a dot, such as
    macOS's ``._photo.jpg``) are skipped. Linked folders are followed, each real folder
    once, so a link back up the tree cannot loop.
    """
    return sorted(iter_images(folder))


def iter_images(folder) -> Iterator[Path]:
    """The files ``find_images`` finds, one at a time, with no list of them held: each folder's
    files in sorted order, then its subfolders (real ones before linked ones), in a stable order."""
    for top, names in _walk(Path(folder)):
        for name in sorted(names):
            path = top / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                yield path


def glob_images(pattern: str) -> list[Path]:
    """The files matching a glob, in sorted order; ``**`` matches any folders below, walked as find_images walks them.

    Python's glob follows a link cycle until the path is too long to open: with
    ``loop/up -> ..``, ``**/*.jpg`` found 3 files 41 times over.
    """
    parts = Path(pattern).parts
    if "**" not in parts:
        return sorted(Path(m) for m in glob.glob(pattern) if os.path.isfile(m))
    at = parts.index("**")
    head, tail = parts[:at], parts[at + 1 :] or ("*",)
    found: set[Path] = set()
    for base in glob.glob(str(Path(*head))) if head else ["."]:
        for top, _ in _walk(Path(base)):
            found.update(glob_images(os.path.join(glob.escape(str(top)), *tail)))
    return sorted(found)


def _walk(root: Path):
    """(folder, names of its visible files) for ``root`` and every visible folder below it, each real folder once."""
    seen = set()
    for top, folders, files in os.walk(root, followlinks=True):
        info = os.stat(top)
        if (info.st_dev, info.st_ino) in seen:
            folders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        # Real folders before linked ones, each sorted: a file reachable both ways keeps its
        # real path, the same on every filesystem (os.walk lists in the directory's order).
        visible = sorted(f for f in folders if not f.startswith("."))
        folders[:] = [f for f in visible if not os.path.islink(os.path.join(top, f))] + [
            f for f in visible if os.path.islink(os.path.join(top, f))]
        yield Path(top), [f for f in files if not f.startswith(".")]


def _sniff_format(data: bytes) -> str | None:
    for kind, (magics, _) in _FORMATS.items():
        if data.startswith(magics) and (kind != "WebP" or data[8:12] == b"WEBP"):
            return kind
    return None


def _header_shape(data: bytes, kind: str) -> tuple[int, int, int] | None:
    """(width, height, bits per sample) from the header of a ``kind`` file, or None where it cannot be read."""
    if kind == "PNG" and data[12:16] == b"IHDR":
        return (*struct.unpack(">II", data[16:24]), data[24])
    if kind == "GIF":
        return (*struct.unpack("<HH", data[6:10]), 8)
    if kind == "BMP" and struct.unpack("<I", data[14:18])[0] >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height), 8  # negative height means top-down rows; OpenCV reads BMP as 8-bit
    if kind == "WebP":
        chunk = data[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"), 8
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 8
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF, 8
    if kind == "TIFF":
        return _tiff_shape(data)
    if kind == "JPEG":
        return _jpeg_shape(data)
    return None


def _tiff_shape(data: bytes) -> tuple[int, int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    tags = {258: 1}  # BitsPerSample defaults to 1
    for i in range(min(count, 512)):
        tag, kind, values, value = struct.unpack(order + "HHI4s", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        if tag in (256, 257, 258):  # ImageWidth, ImageLength, BitsPerSample
            if kind not in (3, 4):
                return None  # not SHORT or LONG (libtiff also reads BYTE, LONG8...): left to Pillow's reader
            size = 2 if kind == 3 else 4
            if values * size > 4:  # several values (one per sample) are stored at an offset; read the first
                (offset,) = struct.unpack(order + "I", value)
                value = data[offset : offset + size]
            # A tag given twice: libtiff and Pillow keep the first, and a smaller second value
            # would let an image past the guard. The larger one is the safe count.
            tags[tag] = max(tags.get(tag, 0), struct.unpack(order + ("H" if kind == 3 else "I"), value[:size])[0])
    return (tags[256], tags[257], tags[258]) if len(tags) == 3 else None


def _pillow_shape(data: bytes, kind: str) -> tuple[int, int, int] | None:
    """(width, height, bits per sample) as Pillow's header reader finds them, without decoding; None where it cannot.

    Pillow's reader for ``kind`` is called directly: Image.open would also apply Pillow's
    own bomb limit, warning or refusing by its number instead of ours. Pillow opens
    16-bit RGB as 8-bit "RGB", so decode_image checks the decoded array again.
    """
    Image.init()  # registers every format's reader, not only the common ones
    reader = Image.OPEN.get(kind.upper())
    if reader is None:
        return None
    try:
        with reader[0](io.BytesIO(data)) as img:
            mode, (width, height) = img.mode, img.size
    except Exception:  # whatever stops Pillow's reader, the size stays unknown and the image is refused
        return None
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
    return width, height, bits


# A marker as libjpeg's next_marker() finds one: it skips bytes that are not 0xFF (with a
# warning of "extraneous bytes before marker"), 0xFF fill bytes and 0xFF 0x00 (a stuffed
# zero), up to 0xFF and a marker code. One junk byte before the SOF then does not hide the
# image's size. The pattern cannot backtrack, so a long run of junk costs linear time.
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xfe]")


def _jpeg_segments(data: bytes):
    """Yield (marker, offset, length) for each JPEG segment up to and including the first SOS."""
    i = 2
    while (found := _JPEG_MARKER.search(data, i)) is not None:
        i = found.start()
        marker = data[i + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length field
            i += 2
            continue
        if i + 4 > len(data):
            return
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        yield marker, i, length
        if marker == 0xDA:
            return
        i += 2 + length


def _jpeg_shape(data: bytes) -> tuple[int, int, int] | None:
    for marker, i, _ in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            bits, height, width = struct.unpack(">BHH", data[i + 4 : i + 9])
            return width, height, bits
    return None


def _jpeg_scan_offset(data: bytes) -> int | None:
    """Where the first scan's entropy-coded data starts, or None if the header is incomplete."""
    for marker, i, length in _jpeg_segments(data):
        if marker == 0xDA:
            return i + 2 + length
    return None


# ----------------------------------------------------------------------------- prepare


def prepare(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Resize, center-crop and normalize an RGB uint8 (H, W, 3) image to float32 (3, crop, crop)."""
    _check_rgb(rgb)
    resample = _filter_for(spec)
    height, width = rgb.shape[:2]
    new_h, new_w = _resized_size(height, width, spec.resize_size)
    rows, cols = _crop_window(new_h, spec.crop_size), _crop_window(new_w, spec.crop_size)
    if (new_h, new_w) == (height, width):
        img = rgb[rows[0] : rows[1], cols[0] : cols[1]]
    elif new_h * new_w <= _FULL_RESIZE_LIMIT:
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample))
        img = resized[rows[0] : rows[1], cols[0] : cols[1]]
    else:
        img = _resize_window(rgb, (new_h, new_w), rows, cols, resample)
    return _normalize(_pad_to(img, new_h, new_w, spec.crop_size), spec)


def load(data: bytes, spec: ModelSpec, name: str = "<bytes>", *, fast: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes to the model's (3, crop, crop) input: decode_image() then prepare().

    ``fast`` lets a large JPEG take the DCT-domain path (see the module docstring).
    """
    return load_with_mode(data, spec, name, fast=fast, max_pixels=max_pixels)[0]


def load_with_mode(
    data: bytes, spec: ModelSpec, name: str = "<bytes>", *, fast: bool = False, max_pixels: int | None = None
) -> tuple[np.ndarray, str]:
    """Like :func:`load`, also saying which path the image took: EXACT or FAST."""
    if isinstance(data, memoryview):
        data = bytes(data)  # the header checks need bytes or a bytearray; decode_image checks the type
    if fast:
        reduction = _fast_reduction(data, spec)
        if reduction is not None:
            _check_header(data, name, max_pixels)  # the exact path's guards
            tensor = _load_reduced(data, spec, reduction)
            if tensor is not None:
                return tensor, FAST
    return prepare(decode_image(data, name, max_pixels=max_pixels), spec), EXACT


FRAME_ORDERS = ("BGR", "RGB")


def check_frame_order(order: str) -> None:
    """Raise ValueError unless ``order`` is one of FRAME_ORDERS."""
    if order not in FRAME_ORDERS:
        raise ValueError(f"frame_order must be one of {', '.join(FRAME_ORDERS)}, got {order!r}")


def frame_to_rgb(frame: np.ndarray, order: str = "BGR", name: str = "<frame>") -> np.ndarray:
    """A decoded (H, W, 3) uint8 frame whose channels are in ``order`` as the RGB array prepare() takes.

    BGR is what cv2.imread, cv2.VideoCapture and most camera SDKs give; RGB what PIL and imageio give.
    """
    check_frame_order(order)
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or not frame.size:
        found = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ImageError(
            f"{name}: a frame must be a non-empty (H, W, 3) uint8 array, got {found}; convert it first "
            "(cv2.cvtColor for gray or 4 channels, 8 bits a sample) or pass the image file's bytes"
        )
    return frame if order == "RGB" else frame[..., ::-1]


def _fast_reduction(data: bytes, spec: ModelSpec) -> tuple[int, int, tuple[int, int]] | None:
    """(factor, OpenCV flag, header (width, height)) for a JPEG big enough, else None."""
    if _sniff_format(data) != "JPEG":
        return None
    try:
        shape = _jpeg_shape(data)
    except (struct.error, IndexError):
        return None
    if shape is None:
        return None
    size = shape[:2]
    short = min(size)
    for factor, flag in _REDUCED:
        if short // factor >= 2 * spec.resize_size:
            return factor, flag, size
    return None


def decode_cost(data: bytes, spec: ModelSpec, *, fast: bool = False) -> int:
    """The 8-bit RGB pixels' worth of memory decoding ``data`` allocates, from its header (0 if unreadable:
    such a file is refused before it is decoded); the fast path's reduced decode counts its reduced size."""
    if isinstance(data, memoryview):
        data = bytes(data)
    kind = _sniff_format(data)
    try:
        shape = _header_shape(data, kind) if kind else None
    except (struct.error, IndexError):
        shape = None
    if shape is None:
        return 0
    width, height, bits = shape
    reduction = _fast_reduction(data, spec) if fast else None
    factor = reduction[0] if reduction else 1
    return -(-width // factor) * -(-height // factor) * ((bits + 7) // 8)


def _load_reduced(data: bytes, spec: ModelSpec, reduction) -> np.ndarray | None:
    """The fast path; None where OpenCV cannot decode (the exact path then says why)."""
    _, flag, (width, height) = reduction
    flags = flag if _RGB is None else _rgb_flags(flag)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    if _RGB is None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if (img.shape[0] > img.shape[1]) != (height > width):  # EXIF turned it a quarter
        width, height = height, width
    new_h, new_w = _resized_size(height, width, spec.resize_size)
    rows, cols = _crop_window(new_h, spec.crop_size), _crop_window(new_w, spec.crop_size)
    return _normalize(_resize_window(img, (new_h, new_w), rows, cols, _filter_for(spec)), spec)


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack prepared (3, H, W) images into one float32 (N, 3, H, W) batch."""
    arrays = list(arrays)
    if not arrays:
        raise ImageError("stack() got no images; pass at least one prepared (3, H, W) array")
    first = np.shape(arrays[0])
    for i, a in enumerate(arrays):
        if np.ndim(a) != 3 or np.shape(a) != first:
            raise ImageError(
                f"stack(): image {i} has shape {np.shape(a)}, image 0 has {first}; "
                "prepare every image with the same spec so all are (3, crop, crop)"
            )
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        found = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f"prepare() expects an RGB uint8 (H, W, 3) array, got {found}; decode files with decode_image()")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"prepare() got an empty image of shape {rgb.shape}; an image needs at least 1x1 pixels")


def _filter_for(spec: ModelSpec) -> int:
    try:
        return _FILTERS[spec.interpolation]
    except KeyError:
        raise ModelSpecError(
            f"model spec asks for {spec.interpolation!r} interpolation; supported: {', '.join(_FILTERS)}"
        ) from None


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes ``size``, the longer one is truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _crop_window(length: int, crop: int) -> tuple[int, int]:
    """[start, stop) of torchvision's center crop along one axis (round() is banker's, as there)."""
    if length <= crop:
        return 0, length  # all of it; _pad_to adds the rest
    start = int(round((length - crop) / 2.0))
    return start, start + crop


def _pad_to(img: np.ndarray, new_h: int, new_w: int, crop: int) -> np.ndarray:
    """torchvision's CenterCrop pads with black when the image is smaller than the crop."""
    pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
    if pad_h == pad_w == 0:
        return img
    return np.pad(img, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))


def _resize_window(rgb: np.ndarray, size: tuple[int, int], rows, cols, resample: int) -> np.ndarray:
    """The ``rows`` x ``cols`` window of ``rgb`` resized to ``size`` (h, w), resampling only that window."""
    height, width = rgb.shape[:2]
    sy, sx = height / size[0], width / size[1]
    box = (cols[0] * sx, rows[0] * sy, cols[1] * sx, rows[1] * sy)
    out = (cols[1] - cols[0], rows[1] - rows[0])
    return np.asarray(Image.fromarray(rgb).resize(out, resample, box=box))


def _normalize(img: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """ToTensor + Normalize: per channel, a table of the 256 float32 results torchvision computes."""
    order = spec.channel_order.upper()
    if order not in ("RGB", "BGR"):
        raise ModelSpecError(f"model spec asks for channel order {spec.channel_order!r}; supported: RGB, BGR")
    if order == "BGR":  # mean and std are listed in the model's channel order
        img = img[..., ::-1]
    table = _normalize_table(spec.mean, spec.std, spec.scale)
    out = np.empty((3, *img.shape[:2]), np.float32)
    for channel in range(3):
        np.take(table[channel], img[..., channel], out=out[channel])
    return out


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> np.ndarray:
    """(3, 256) float32: ((v / (255 / scale)) - mean) / std; at scale 1 torchvision's float32 operations exactly."""
    levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0 / scale)
    return (levels - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
