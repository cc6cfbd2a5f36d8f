"""Property-based tests: whatever bytes arrive, the result is a finite (3, 224, 224) float32
tensor or an ImageError, never another exception; and prepare() equals PIL for any size."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runtimes.errors import ImageError
from runtimes.preprocess import decode_image, load, prepare
from runtimes.spec import ModelSpec
from runtimes.preprocess import _FULL_RESIZE_LIMIT, _resized_size
from tests.runtimes.test_preprocess import MAX_ERROR_LOSSLESS, MAX_ERROR_WINDOW, levels, normalize, pil_reference_u8

SPEC = ModelSpec(labels=("a",))
OUT_SHAPE = (3, SPEC.crop_size, SPEC.crop_size)
FUZZ_MAX_PIXELS = 4_000_000  # fuzzed headers may claim huge sizes; keep each allocation small

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What cv2.imencode writes, per extension: sample types and channel counts.
FORMATS = {
    ".png": ((np.uint8, np.uint16), (1, 3, 4)),
    ".tiff": ((np.uint8, np.uint16), (1, 3, 4)),
    ".bmp": ((np.uint8,), (1, 3, 4)),
    ".jpg": ((np.uint8,), (1, 3)),
    ".webp": ((np.uint8,), (3, 4)),
}
LOSSLESS = (".png", ".tiff", ".bmp")

sizes = st.one_of(
    st.tuples(st.integers(1, 600), st.integers(1, 600)),
    st.sampled_from([(1, 1), (1, 600), (600, 1), (2, 600), (600, 3), (1, 2), (599, 1)]),  # extreme aspect ratios
)


def pixels(h: int, w: int, channels: int, dtype, pattern: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    shape = (h, w, channels) if channels > 1 else (h, w)
    if pattern == "noise":
        return rng.integers(0, top, shape, dtype=dtype, endpoint=True)
    if pattern == "gradient":
        ramp = np.linspace(0, top, h * w * channels).reshape(shape)
        return ramp.astype(dtype)
    return np.full(shape, 0 if pattern == "zeros" else top, dtype)


@st.composite
def encoded_images(draw):
    h, w = draw(sizes)
    ext = draw(st.sampled_from(sorted(FORMATS)))
    dtypes, channel_counts = FORMATS[ext]
    dtype = draw(st.sampled_from(dtypes))
    channels = draw(st.sampled_from(channel_counts))
    pattern = draw(st.sampled_from(["noise", "gradient", "zeros", "max"]))
    image = pixels(h, w, channels, dtype, pattern, draw(st.integers(0, 2**32 - 1)))
    ok, buf = cv2.imencode(ext, image)
    assert ok, (ext, image.shape, image.dtype)
    return ext, image, buf.tobytes()


def expected_rgb(image: np.ndarray) -> np.ndarray:
    """What decode_image must return for a losslessly stored OpenCV (BGR[A] or gray) array."""
    if image.dtype == np.uint16:
        image = np.round(image / 257).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., 2::-1]


def assert_model_input(x: np.ndarray) -> None:
    assert x.shape == OUT_SHAPE and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.isfinite(x).all()
    lo = (0 - np.asarray(SPEC.mean)) / np.asarray(SPEC.std)
    hi = (1 - np.asarray(SPEC.mean)) / np.asarray(SPEC.std)
    assert (x >= lo[:, None, None] - 1e-5).all() and (x <= hi[:, None, None] + 1e-5).all()


def load_or_image_error(data: bytes) -> None:
    """The property for untrusted bytes: a valid model input or an ImageError, nothing else."""
    try:
        rgb = decode_image(data, name="fuzz", max_pixels=FUZZ_MAX_PIXELS)
    except ImageError as exc:
        assert str(exc).startswith("fuzz: ") and "\n" not in str(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    assert_model_input(prepare(rgb, SPEC))


@PROPS
@given(encoded_images())
def test_any_encoded_image_becomes_a_model_input(case):
    ext, image, data = case
    rgb = decode_image(data)
    assert rgb.shape == (*image.shape[:2], 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    if ext in LOSSLESS:
        np.testing.assert_array_equal(rgb, expected_rgb(image))
    assert_model_input(load(data, SPEC))


@PROPS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_a_model_input_or_image_error(data):
    load_or_image_error(data)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0", b"MM\0*"]


@PROPS
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_bytes_behind_a_known_magic_give_a_model_input_or_image_error(magic, tail):
    load_or_image_error(magic + tail)


@PROPS
@given(encoded_images(), st.data())
def test_damaged_files_give_a_model_input_or_image_error(case, data):
    _, _, encoded = case
    damaged = bytearray(encoded)
    how = data.draw(st.sampled_from(["truncate", "flip", "zero-run"]))
    at = data.draw(st.integers(0, len(damaged) - 1))
    if how == "truncate":
        del damaged[at:]
    elif how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=8)):
            damaged[i] ^= data.draw(st.integers(1, 255))
    else:
        end = min(at + data.draw(st.integers(1, 64)), len(damaged))
        damaged[at:end] = bytes(end - at)
    load_or_image_error(bytes(damaged))


@PROPS
@given(sizes, st.integers(0, 2**32 - 1), st.sampled_from(["bilinear", "bicubic"]))
def test_prepare_equals_pil_for_any_size(size, seed, interpolation):
    h, w = size
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    spec = ModelSpec(labels=("a",), interpolation=interpolation)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    ref = normalize(pil_reference_u8(Image.fromarray(rgb), spec, resample), spec)
    new_h, new_w = _resized_size(h, w, spec.resize_size)
    bound = MAX_ERROR_LOSSLESS if new_h * new_w <= _FULL_RESIZE_LIMIT else MAX_ERROR_WINDOW
    assert levels(prepare(rgb, spec), ref, spec).max() <= bound + 1e-3
