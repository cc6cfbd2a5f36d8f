"""runtimes.preprocess against an independent PIL reference, plus decoding edge cases.

The reference is the torchvision evaluation pipeline written out with PIL only:
Image.open -> .convert("RGB") -> resize((w, h), BILINEAR) -> center crop -> /255 -> normalize.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from runtimes.errors import ImageError, ModelSpecError
from runtimes.preprocess import IMAGE_EXTENSIONS, decode_image, load, prepare, stack
from runtimes.spec import ModelSpec
from samples import generate

SPEC = ModelSpec(labels=("a", "b"))

# Measured bounds against the PIL reference, in 0-255 levels (Pillow 13, OpenCV 5.0).
# Lossless input: Pillow itself resizes, so 0. Past an aspect ratio of 1024:1 only the
# crop window is resampled (box=), which moves a few bilinear pixels by up to one
# rounding step per pass: MAX_ERROR_WINDOW. JPEG input: also measured 0 (both decode
# with libjpeg-turbo, ISLOW IDCT); 1 level leaves room for another libjpeg build.
MAX_ERROR_LOSSLESS = 0.0
MAX_ERROR_WINDOW = 2.0
MAX_ERROR_JPEG = 1.0
MIN_TOP1_AGREEMENT = 0.99  # measured 1.00: the inputs are identical, so the logits are too

SMALL_SIZES = [(100, 150), (180, 200), (240, 320), (64, 64), (50, 300)]  # upscaled
LARGE_SIZES = [(1000, 1500), (1500, 1000), (3000, 2000)]  # downscaled up to 8x


# ----------------------------------------------------------------------------- helpers


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: smooth gradients, shapes, text, thin lines and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            127 + 100 * np.sin(xx / w * rng.uniform(1, 6) + rng.uniform(0, 6)),
            127 + 100 * np.cos(yy / h * rng.uniform(1, 6) + rng.uniform(0, 6)),
            255 * (xx + yy) / (w + h),
        ],
        -1,
    )
    img = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    s = max(h, w) / 400
    for _ in range(12):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(img, p, max(1, int(rng.integers(5, 80) * s)), color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, p, (int(rng.integers(0, w)), int(rng.integers(0, h))), color, -1)
    for _ in range(6):
        p = (int(rng.integers(0, max(1, w * 0.7))), int(rng.integers(0, h)))
        cv2.putText(img, "GoogLeNet 1x1", p, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * s, (0, 0, 0), max(1, int(s)), cv2.LINE_AA)
        cv2.line(img, (int(rng.integers(0, w)), 0), (int(rng.integers(0, w)), h - 1), (255, 255, 255), 1)
    return (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **kwargs)
    return buf.getvalue()


def pil_resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision.transforms.functional._compute_resized_output_size, for an int size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def pil_reference_u8(im: Image.Image, spec: ModelSpec, resample=Image.BILINEAR) -> np.ndarray:
    """Resize + CenterCrop as torchvision does on a PIL image; uint8 (crop, crop, 3)."""
    im = im.convert("RGB")
    im = im.resize(pil_resized_size(*im.size, spec.resize_size), resample)
    c = spec.crop_size
    w, h = im.size
    if w < c or h < c:  # torchvision pads with black, then crops
        padded = Image.new("RGB", (max(w, c), max(h, c)))
        padded.paste(im, ((max(c - w, 0)) // 2, (max(c - h, 0)) // 2))
        im, (w, h) = padded, padded.size
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    return np.asarray(im.crop((left, top, left + c, top + c)))


def normalize(u8: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """ToTensor + Normalize."""
    x = u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def pil_reference(data: bytes, spec: ModelSpec) -> np.ndarray:
    """The whole torchvision pipeline from file bytes: float32 (3, crop, crop)."""
    return normalize(pil_reference_u8(Image.open(io.BytesIO(data)), spec), spec)


def levels(a: np.ndarray, b: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """|a - b| of two normalized tensors, in 0-255 levels."""
    return np.abs(a - b) * np.asarray(spec.std, np.float32)[:, None, None] * 255


def png_with_exif(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk carrying ``orientation`` after IHDR (PIL cannot write 16-bit RGB PNGs)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()[6:]  # drop the "Exif\0\0" APP1 prefix; eXIf holds the bare TIFF block
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def opencv_reads(fmt: str) -> bool:
    """Whether this OpenCV build decodes ``fmt`` (GIF arrived in 4.11)."""
    buf = np.frombuffer(encode(np.zeros((2, 2, 3), np.uint8), fmt), np.uint8)
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None


def tiny_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- parity with PIL


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    return {
        "small": [scene(h, w, i) for i, (h, w) in enumerate(SMALL_SIZES)],
        "large": [scene(h, w, 10 + i) for i, (h, w) in enumerate(LARGE_SIZES)],
    }


@pytest.mark.parametrize("group", ["small", "large"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_matches_pil_on_lossless_images(scenes, group, interpolation):
    spec = ModelSpec(labels=("a",), interpolation=interpolation)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    for rgb in scenes[group]:
        ours = load(encode(rgb, "PNG"), spec)
        ref = normalize(pil_reference_u8(Image.fromarray(rgb), spec, resample), spec)
        assert levels(ours, ref, spec).max() <= MAX_ERROR_LOSSLESS, rgb.shape


@pytest.mark.parametrize("group", ["small", "large"])
def test_matches_pil_on_jpegs(scenes, group):
    for rgb in scenes[group]:
        data = encode(rgb, "JPEG", quality=90)
        err = levels(load(data, SPEC), pil_reference(data, SPEC), SPEC)
        assert err.max() <= MAX_ERROR_JPEG, (rgb.shape, err.max())


# ----------------------------------------------------------------------------- exact values


def test_exact_values_on_a_crafted_image():
    # 4x4 -> 2x2 (resize 2, crop 2). Pillow's antialiased bilinear gives each output a
    # triangle over 3 inputs, weights (3, 3, 1)/7: [0, 70, 140, 210] -> [50, 160].
    # A box filter (INTER_AREA) would give [35, 175].
    row = np.array([0, 70, 140, 210], np.uint8)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = row
    rgb[..., 1] = row[::-1]
    rgb[..., 2] = 255
    spec = ModelSpec(labels=("a",), resize_size=2, crop_size=2)
    expected_u8 = np.zeros((2, 2, 3), np.float32)
    expected_u8[..., 0] = [50, 160]
    expected_u8[..., 1] = [160, 50]
    expected_u8[..., 2] = 255
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    expected = ((expected_u8 / 255 - mean) / std).transpose(2, 0, 1)
    out = prepare(rgb, spec)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2) and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_upscale_is_plain_bilinear_with_half_pixel_centres():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[:, 1] = 200
    spec = ModelSpec(labels=("a",), resize_size=4, crop_size=4, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(prepare(rgb, spec)[0, 0] * 255, [0, 50, 150, 200], atol=1e-4)


def test_image_at_resize_size_is_only_cropped():
    rgb = scene(256, 300, 3)
    out = prepare(rgb, SPEC)
    top, left = 16, 38  # round((256 - 224) / 2), round((300 - 224) / 2)
    np.testing.assert_array_equal(out, normalize(rgb[top : top + 224, left : left + 224], SPEC))


def test_center_crop_rounds_like_torchvision():
    # 227 - 224 = 3 -> round(1.5) = 2 (Python rounds half to even); 225 - 224 -> round(0.5) = 0
    spec = ModelSpec(labels=("a",), resize_size=225, crop_size=224)
    rgb = scene(225, 227, 4)
    np.testing.assert_array_equal(prepare(rgb, spec), normalize(rgb[0:224, 2:226], spec))


def test_crop_larger_than_resize_pads_with_black_like_torchvision():
    spec = ModelSpec(labels=("a",), resize_size=200, crop_size=224)
    rgb = scene(300, 400, 5)
    assert levels(prepare(rgb, spec), normalize(pil_reference_u8(Image.fromarray(rgb), spec), spec), spec).max() == 0


def test_bgr_channel_order_reverses_channels_with_mean_std_in_model_order():
    rgb = scene(300, 400, 6)
    bgr_spec = ModelSpec(labels=("a",), channel_order="BGR", mean=SPEC.mean[::-1], std=SPEC.std[::-1])
    np.testing.assert_array_equal(prepare(rgb, bgr_spec), prepare(rgb, SPEC)[::-1])


def test_unknown_spec_values_are_model_spec_errors():
    rgb = scene(50, 60, 0)
    with pytest.raises(ModelSpecError, match="'lanczos'.*bilinear"):
        prepare(rgb, ModelSpec(labels=("a",), interpolation="lanczos"))
    with pytest.raises(ModelSpecError, match="'YUV'.*RGB, BGR"):
        prepare(rgb, ModelSpec(labels=("a",), channel_order="YUV"))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32),
     np.zeros((0, 10, 3), np.uint8), [[1, 2, 3]]],
)
def test_prepare_rejects_arrays_that_are_not_rgb_uint8(bad):
    with pytest.raises(ImageError, match="prepare\\(\\)"):
        prepare(bad, SPEC)


def test_load_and_stack():
    data = [encode(scene(120, 90, i), "PNG") for i in range(3)]
    batch = stack([load(d, SPEC, name=f"img{i}") for i, d in enumerate(data)])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[1], prepare(decode_image(data[1]), SPEC))
    with pytest.raises(ImageError, match="no images"):
        stack([])
    with pytest.raises(ImageError, match="image 1 has shape"):
        stack([batch[0], batch[0, :, :100]])


# ----------------------------------------------------------------------------- decoding


def test_grayscale_becomes_three_equal_channels():
    gray = scene(40, 50, 1)[..., 0]
    out = decode_image(encode(gray, "PNG"))
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_like_pil_convert_rgb(mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, len(mode)), dtype=np.uint8)
    im = Image.fromarray(pixels, mode)
    data = encode(pixels, "PNG")
    expected = np.asarray(im.convert("RGB"))  # drops alpha, does not composite
    np.testing.assert_array_equal(decode_image(data), expected)
    color = pixels[..., :3] if mode == "RGBA" else np.repeat(pixels[..., :1], 3, axis=2)
    np.testing.assert_array_equal(decode_image(data), color)


def test_16_bit_is_scaled_by_1_over_257_with_rounding():
    values = np.array([0, 128, 129, 385, 386, 25700, 65406, 65407, 65535], np.uint16)
    rgb16 = np.stack([values, values[::-1], np.full_like(values, 257 * 7)], -1)[None]  # 1x9x3
    expected = np.round(rgb16 / 257).astype(np.uint8)
    assert list(expected[0, :, 0]) == [0, 0, 1, 1, 2, 100, 254, 255, 255]
    for ext in (".png", ".tiff"):
        ok, buf = cv2.imencode(ext, rgb16[..., ::-1])
        np.testing.assert_array_equal(decode_image(buf.tobytes()), expected, err_msg=ext)
        ok, buf = cv2.imencode(ext, rgb16[..., 0])  # 16-bit grayscale
        np.testing.assert_array_equal(decode_image(buf.tobytes()), np.repeat(expected[..., :1], 3, 2), err_msg=ext)


def test_palette_images_match_pil():
    rgb = scene(60, 80, 2)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files = [encode(pal, "PNG"), encode(pal, "PNG", transparency=3)]
    files += [encode(pal, "GIF")] if opencv_reads("GIF") else []
    for data in files:
        im = Image.open(io.BytesIO(data))
        assert im.mode == "P"
        np.testing.assert_array_equal(decode_image(data), np.asarray(im.convert("RGB")))


def quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    up = np.zeros((h, w, 3), np.uint8)
    up[: h // 2, : w // 2] = (255, 0, 0)
    up[: h // 2, w // 2 :] = (0, 255, 0)
    up[h // 2 :, : w // 2] = (0, 0, 255)
    up[h // 2 :, w // 2 :] = 255
    return up


# How a camera stores an upright image for each EXIF orientation (the inverse of the display transform).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def assert_upright(out: np.ndarray, up: np.ndarray, tol: int = 30) -> None:
    assert out.shape == up.shape
    h, w = up.shape[:2]
    for y in (h // 4, 3 * h // 4):  # quadrant centres, away from JPEG ringing
        for x in (w // 4, 3 * w // 4):
            assert np.abs(out[y, x].astype(int) - up[y, x]).max() <= tol, (y, x, out[y, x], up[y, x])


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_to_jpegs(orientation):
    up = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(np.ascontiguousarray(STORED[orientation](up)), "JPEG", exif=exif, quality=95)
    assert_upright(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), up)  # the test data is right
    assert_upright(decode_image(data), up)


def test_exif_orientation_is_applied_to_16_bit_rgba_png():
    # The 16-bit and alpha path is where IMREAD_UNCHANGED would skip the orientation.
    up = quadrants()
    stored = np.rot90(up, 1).astype(np.uint16) * 257
    rgba = np.dstack([stored[..., ::-1], np.full(stored.shape[:2], 30000, np.uint16)])
    ok, buf = cv2.imencode(".png", rgba)
    assert_upright(decode_image(png_with_exif(buf.tobytes(), 6)), up, tol=0)


def jpeg_bytes() -> bytes:
    return encode(scene(64, 80, 0), "JPEG")


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty \\(0 bytes\\)"),
        (b"hello, this is not an image" * 4, "not a JPEG, PNG, BMP, GIF, WebP or TIFF file \\(108 bytes starting b'hello"),
        (b"<!DOCTYPE html><html>404</html>", "not a JPEG, PNG"),
        (b"P6\n30000 30000\n255\n" + bytes(100), "not a JPEG, PNG"),  # PPM header asking for 2.7 GB
        (jpeg_bytes()[:-2], "JPEG is truncated"),
        (jpeg_bytes()[: len(jpeg_bytes()) // 2], "JPEG is truncated"),
        (jpeg_bytes()[:40], "cannot decode these 40 bytes as JPEG: no image size can be read from its header"),
        (encode(scene(64, 80, 0), "PNG")[:-100], "cannot decode these .* bytes as PNG"),
        (b"\xff\xd8\xff\xe0" + bytes(200), "cannot decode these 204 bytes as JPEG: no image size"),
        (tiny_png(0, 10), "0x10 pixels"),
        (tiny_png(100_000, 100_000), "= 10,000,000,000 pixels, over the 134,217,728-pixel limit"),
    ],
    ids=["empty", "garbage", "html", "ppm", "jpeg-no-eoi", "jpeg-half", "jpeg-header-only", "png-truncated", "jpeg-zeros", "zero-width", "bomb"],
)
def test_bad_bytes_raise_image_error_naming_the_file(data, match):
    with pytest.raises(ImageError, match=match) as info:
        decode_image(data, name="photo.jpg")
    message = str(info.value)
    assert message.startswith("photo.jpg: ") and "\n" not in message


def test_max_pixels_is_checked_for_every_format():
    rgb = scene(64, 80, 0)
    for fmt in [f for f in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF") if opencv_reads(f)]:
        with pytest.raises(ImageError, match="over the 5,119-pixel limit"):
            decode_image(encode(rgb, fmt), name=fmt, max_pixels=64 * 80 - 1)
        assert decode_image(encode(rgb, fmt), max_pixels=64 * 80).shape == (64, 80, 3)


def test_the_default_pixel_limit_leaves_room_for_a_100_mp_camera():
    """A 102 MP medium-format sensor's frame (11648x8736) passes the bomb guard and reaches
    the decoder, which then finds the pixel data missing."""
    with pytest.raises(ImageError) as info:
        decode_image(tiny_png(11648, 8736), name="gfx100.png")
    assert "limit" not in str(info.value), str(info.value)


def test_unsupported_sample_types_and_non_bytes_are_image_errors():
    ok, buf = cv2.imencode(".tiff", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="float32 samples"):
        decode_image(buf.tobytes())
    with pytest.raises(ImageError, match="got str; read the file first"):
        decode_image("photo.jpg")


# Pillow's writer for each extension run.py picks up; the format is chosen by the suffix.
@pytest.mark.parametrize("extension", sorted(IMAGE_EXTENSIONS))
def test_every_collected_extension_decodes(extension):
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 30, 10)).save(buffer, format=Image.registered_extensions()[extension])
    assert decode_image(buffer.getvalue(), f"x{extension}").shape == (4, 6, 3)


@pytest.mark.parametrize("extension", [".ppm", ".pgm"])
def test_formats_outside_the_collected_extensions_are_refused(extension):
    buffer = io.BytesIO()
    Image.new("RGB" if extension == ".ppm" else "L", (6, 4)).save(buffer, format="PPM")
    with pytest.raises(ImageError, match="not a JPEG, PNG, BMP, GIF, WebP or TIFF file"):
        decode_image(buffer.getvalue())


def test_runtimes_preprocess_does_not_import_torch():
    code = "import sys, runtimes.preprocess; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- the model agrees


def agreement_inputs(n: int = 24, seed: int = 2024) -> list[bytes]:
    """Synthetic class images as JPEGs, each also upscaled to 1600x1200 so the resize shrinks ~5x."""
    images, _ = generate.generate(n, seed)
    data = []
    for rgb in images:
        big = (1600, 1200) if rgb.shape[1] >= rgb.shape[0] else (1200, 1600)
        data.append(generate.encode_jpeg(rgb))
        data.append(generate.encode_jpeg(cv2.resize(rgb, big, interpolation=cv2.INTER_CUBIC)))
    return data


@pytest.mark.parametrize("export_fixture", ["demo_export", "paper_export"])
def test_top1_agrees_with_the_pil_pipeline(request, export_fixture):
    data = agreement_inputs()
    path = request.getfixturevalue(export_fixture).path
    spec = ModelSpec.from_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = stack([load(d, spec, name=f"#{i}") for i, d in enumerate(data)])
    ref = stack([pil_reference(d, spec) for d in data])
    ours_logits = np.concatenate([session.run(None, {spec.input_name: ours[i : i + 16]})[0] for i in range(0, len(data), 16)])
    ref_logits = np.concatenate([session.run(None, {spec.input_name: ref[i : i + 16]})[0] for i in range(0, len(data), 16)])
    agreement = float(np.mean(ours_logits.argmax(1) == ref_logits.argmax(1)))
    input_error = levels(ours, ref, spec).max()
    print(f"\n{export_fixture}: top-1 agreement {agreement:.1%} over {len(data)} images, "
          f"max input difference {input_error:.3g} levels, max logit difference {np.abs(ours_logits - ref_logits).max():.3g}")
    assert input_error <= MAX_ERROR_JPEG
    assert agreement >= MIN_TOP1_AGREEMENT


def test_an_extreme_strip_resamples_only_the_crop_window_and_stays_close():
    rgb = np.random.default_rng(1).integers(0, 256, (2500, 2, 3), dtype=np.uint8)  # 1250:1
    ref = normalize(pil_reference_u8(Image.fromarray(rgb), SPEC), SPEC)
    assert levels(prepare(rgb, SPEC), ref, SPEC).max() <= MAX_ERROR_WINDOW + 1e-3
