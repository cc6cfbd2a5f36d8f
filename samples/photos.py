"""Phone-size synthetic photos of the demo classes, for benchmarks and decode tests.

    python -m samples.photos --out DIR [--count 24] [--megapixels 12] [--seed 0]

Each is a demo image (``samples.generate.make_image``) cropped to 4:3, scaled up to the
requested size, with sensor-like noise so the JPEG is as large as a camera's (about
3 MB at 12 MP, quality 92). Every third one is stored rotated with an EXIF orientation
tag, as phones do, so it only looks upright to a decoder that applies the tag. File
names keep the class (``<class>_<k>.jpg``), so ``samples.generate.label_of`` scores them.
"""

from __future__ import annotations

import argparse
import math
import struct
from pathlib import Path

import cv2
import numpy as np

from samples.generate import CLASSES, make_image

JPEG_QUALITY = 92
# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to display.
ROTATED = 6


def _exif_orientation(orientation: int) -> bytes:
    """A JPEG APP1 segment holding only an EXIF orientation tag."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def make_photo(rng: np.random.Generator, label: int, megapixels: float) -> np.ndarray:
    """An upright RGB uint8 landscape or portrait 4:3 photo of class ``label``."""
    img = make_image(rng, label)
    h, w = img.shape[:2]
    short = min(h, w)
    long_kept = int(short * 4 / 3)
    if w >= h:
        x0 = (w - long_kept) // 2
        img = img[:, x0 : x0 + long_kept]
    else:
        y0 = (h - long_kept) // 2
        img = img[y0 : y0 + long_kept]
    out_short = int(round(math.sqrt(megapixels * 1e6 * 3 / 4)))
    out_long = out_short * 4 // 3
    size = (out_long, out_short) if img.shape[1] >= img.shape[0] else (out_short, out_long)
    big = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 5, size=big.shape).astype(np.float32)
    return np.clip(big.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def encode_photo(rgb: np.ndarray, orientation: int = 1, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes; with ``orientation`` 6 the pixels are stored turned back and tagged."""
    stored = cv2.rotate(rgb, cv2.ROTATE_90_COUNTERCLOCKWISE) if orientation == ROTATED else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    data = buf.tobytes()
    if orientation == 1:
        return data
    return data[:2] + _exif_orientation(orientation) + data[2:]  # right after SOI


def write_photos(out: Path, count: int, megapixels: float = 12.0, seed: int = 0) -> list[Path]:
    """``count`` photos with balanced classes into ``out``; the same files for the same arguments."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        label = k % len(CLASSES)
        path = out / f"{CLASSES[label]}_{k}.jpg"
        path.write_bytes(encode_photo(make_photo(rng, label, megapixels), ROTATED if k % 3 == 2 else 1))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samples.photos", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_photos(args.out, args.count, args.megapixels, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} photos to {args.out} ({total / len(paths) / 1e6:.1f} MB each on average)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
