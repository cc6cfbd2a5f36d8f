"""The synthetic demo data: deterministic, balanced, torch-free, and committed small."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from runtimes.preprocess import decode_image
from samples.generate import CLASSES, IMAGES_DIR, LABELS_FILE, generate, label_of, make_image

MAX_SAMPLE_BYTES = 40_000  # committed files stay small enough to keep in git


def test_generate_is_deterministic():
    images_a, labels_a = generate(12, seed=123)
    images_b, labels_b = generate(12, seed=123)
    assert labels_a == labels_b
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b))
    images_c, _ = generate(12, seed=124)
    assert not all(a.shape == c.shape and np.array_equal(a, c) for a, c in zip(images_a, images_c))


@pytest.mark.parametrize("n", [9, 27, 31])
def test_generate_balances_labels(n):
    _, labels = generate(n, seed=5)
    counts = Counter(labels)
    assert set(counts) <= set(range(len(CLASSES)))
    assert max(counts.values()) - min(counts[c] for c in range(len(CLASSES))) <= 1


def test_images_are_rgb_uint8_non_square_and_varied_in_size():
    images, _ = generate(36, seed=9)
    for img in images:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[0] != img.shape[1]
    sizes = {img.shape[:2] for img in images}
    assert len(sizes) > 30
    assert any(max(s) > 256 for s in sizes) and any(min(s) < 224 for s in sizes)
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)


def test_make_image_rejects_unknown_label():
    with pytest.raises(ValueError, match="out of range"):
        make_image(np.random.default_rng(0), len(CLASSES))


def test_labels_file_lists_the_classes_in_order():
    assert tuple(LABELS_FILE.read_text().splitlines()) == CLASSES
    # red and blue share textures, so swapping R and B maps a class onto another class
    for name in CLASSES:
        if name.startswith("red_"):
            assert "blue_" + name[4:] in CLASSES


def test_committed_samples_cover_every_class_and_stay_small():
    paths = sorted(IMAGES_DIR.glob("*.jpg"))
    assert len(paths) >= 12
    assert {label_of(p) for p in paths} == set(CLASSES)
    for path in paths:
        assert path.stat().st_size < MAX_SAMPLE_BYTES, path
        img = decode_image(path.read_bytes(), name=str(path))
        assert img.shape[0] != img.shape[1]


def test_generate_does_not_import_torch():
    code = "import sys, samples.generate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
