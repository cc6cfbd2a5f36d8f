"""Fast mode: large JPEGs decoded at reduced size in the DCT domain, everything else exact."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtimes import preprocess
from runtimes.errors import ImageError
from runtimes.preprocess import EXACT, FAST, load, load_with_mode
from runtimes.spec import ModelSpec
from samples.generate import CLASSES, IMAGES_DIR
from samples.photos import ROTATED, encode_photo, make_photo

SPEC = ModelSpec(labels=("a",))


def _levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in 0-255 levels of the unnormalized image."""
    return np.abs(a - b) * np.asarray(SPEC.std, np.float32)[:, None, None] * 255


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Two 12 MP photos (one stored turned, with an EXIF tag) and a 2 MP one."""
    rng = np.random.default_rng(5)
    return {
        "12mp": encode_photo(make_photo(rng, 0, 12)),
        "12mp_exif": encode_photo(make_photo(rng, 4, 12), ROTATED),
        "2mp": encode_photo(make_photo(rng, 8, 2)),
    }


@pytest.mark.parametrize(("name", "mean_bound", "max_bound"), [("12mp", 0.5, 8), ("12mp_exif", 0.5, 8), ("2mp", 2.0, 40)])
def test_large_jpegs_take_the_fast_path_and_stay_close_to_exact(photos, name, mean_bound, max_bound):
    fast, mode = load_with_mode(photos[name], SPEC, fast=True)
    exact, exact_mode = load_with_mode(photos[name], SPEC, fast=False)
    assert (mode, exact_mode) == (FAST, EXACT)
    assert fast.shape == exact.shape == (3, 224, 224) and fast.dtype == np.float32
    err = _levels(fast, exact)
    print(f"{name}: mean {err.mean():.2f} max {err.max():.0f} levels, >2: {(err > 2).mean():.2%}")
    # A decode that ignored the EXIF tag, cropped elsewhere or swapped channels is off by
    # tens of levels on average; the DCT-domain reduction is off by a fraction of one.
    assert err.mean() < mean_bound and err.max() <= max_bound


def test_small_images_and_other_formats_are_exact_even_when_fast_is_allowed(photos):
    small = sorted(IMAGES_DIR.glob("*.jpg"))[0].read_bytes()
    assert load_with_mode(small, SPEC, fast=True)[1] == EXACT
    np.testing.assert_array_equal(load(small, SPEC, fast=True), load(small, SPEC))
    rgb = preprocess.decode_image(photos["2mp"])
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert load_with_mode(png, SPEC, fast=True)[1] == EXACT


def test_a_broken_large_jpeg_fails_as_in_exact_mode(photos):
    for broken in (photos["12mp"][: len(photos["12mp"]) // 2], photos["12mp"][:600] + b"\xff\xd9"):
        with pytest.raises(ImageError) as exact:
            load(broken, SPEC, "broken.jpg")
        with pytest.raises(ImageError) as fast:
            load(broken, SPEC, "broken.jpg", fast=True)
        assert str(fast.value) == str(exact.value)


# A spec small enough that a 600x600 JPEG takes the fast path (shorter side at least 4x resize_size).
SMALL = ModelSpec(labels=("a",), resize_size=64, crop_size=56)


def small_jpeg(junk: bytes = b"") -> bytes:
    """A 600x600 JPEG, with ``junk`` before its frame header: libjpeg skips bytes that are not a marker."""
    rgb = np.random.default_rng(7).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", rgb)[1].tobytes()
    sof = data.index(b"\xff\xc0")
    return data[:sof] + junk + data[sof:]


JUNK = {"none": b"", "a zero byte": b"\x00", "fill bytes": b"\xff\xff", "a stuffed zero": b"\xff\x00", "text": b"junk"}


@pytest.mark.parametrize("junk", JUNK.values(), ids=JUNK)
def test_junk_before_a_marker_does_not_hide_the_jpegs_size(junk):
    """The fast path needs the size from the header: it finds it past the junk, as libjpeg does,
    and the decoded image is the same as the clean file's."""
    tensor, mode = load_with_mode(small_jpeg(junk), SMALL, fast=True)
    assert mode == FAST
    np.testing.assert_array_equal(tensor, load(small_jpeg(), SMALL, fast=True))


@pytest.mark.parametrize("junk", [b"", b"\x00"], ids=["clean", "junk byte"])
def test_the_pixel_limit_holds_on_the_fast_path(junk):
    """Refused from the header, before the reduced decode: that decode would succeed, and nothing
    after it counts pixels."""
    data = small_jpeg(junk)
    assert load_with_mode(data, SMALL, fast=True, max_pixels=360_000)[1] == FAST
    with pytest.raises(ImageError) as info:
        load_with_mode(data, SMALL, "big.jpg", fast=True, max_pixels=10_000)
    assert str(info.value).startswith("big.jpg: image is 600x600 = 360,000 pixels, over the 10,000-pixel limit")


def test_fast_mode_keeps_the_demo_models_answers(photos, demo_export):
    from runtimes.classifier import Classifier

    with Classifier(demo_export.path, "cpu") as fast, Classifier(demo_export.path, "cpu", exact=True) as exact:
        a, b = fast.predict(list(photos.values())), exact.predict(list(photos.values()))
    assert [p.preprocess for p in a] == [FAST] * 3 and [p.preprocess for p in b] == [EXACT] * 3
    assert [p.topk[0].label for p in a] == [p.topk[0].label for p in b] == [CLASSES[0], CLASSES[4], CLASSES[8]]
