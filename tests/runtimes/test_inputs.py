"""What ``Classifier.predict`` and ``runtimes.run`` take besides paths: decoded frames, bytes-likes, stdin."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from runtimes import preprocess
from runtimes.classifier import Classifier
from samples.generate import IMAGES_DIR

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted(IMAGES_DIR.glob("*.jpg"))[::4]  # five of the 18, of three colours, three textures, two shapes


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Sample JPEGs, one as PNG, one EXIF-rotated, and a 2048x1536 JPEG big enough for the fast path."""
    folder = tmp_path_factory.mktemp("inputs")
    out = list(SAMPLES)
    photo = Image.open(SAMPLES[0])
    photo.save(folder / "lossless.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter: shown upright only if the orientation is applied
    photo.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif, quality=90)
    rng = np.random.default_rng(3)
    big = cv2.resize(cv2.imread(str(SAMPLES[1])), (2048, 1536), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(folder / "big.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out + [folder / "lossless.png", folder / "rotated.jpg", folder / "big.jpg"]


def test_a_cv2_imread_frame_gives_the_exact_paths_tensor(demo_export, files):
    """Bit for bit, for JPEG, PNG, EXIF-rotated and fast-path-sized files: a frame takes the exact path."""
    spec = demo_export.spec
    for path in files:
        frame = cv2.imread(str(path))
        from_file = preprocess.load(path.read_bytes(), spec)  # fast=False: the exact path
        np.testing.assert_array_equal(preprocess.prepare(preprocess.frame_to_rgb(frame), spec), from_file, err_msg=path.name)
        rgb = np.ascontiguousarray(frame[..., ::-1])
        np.testing.assert_array_equal(preprocess.prepare(preprocess.frame_to_rgb(rgb, "RGB"), spec), from_file)


def test_cv2_imread_frames_get_the_same_answers_as_the_files(demo_export, files):
    """Frames against ``exact=True`` on the files: the same top-5 and the same probabilities, to the bit."""
    with Classifier(demo_export.path, exact=True) as exact, Classifier(demo_export.path) as default:
        from_files = exact.predict(files)
        from_frames = default.predict([cv2.imread(str(p)) for p in files])
        as_rgb = default.predict([np.asarray(Image.open(p).convert("RGB")) for p in SAMPLES], frame_order="RGB")
        fast = default.predict(files[-1])[0]
    assert all(p.ok for p in from_files + from_frames)
    for path, want, got in zip(files, from_files, from_frames):
        assert got.topk == want.topk, path.name
        assert got.preprocess == "exact"
    assert [p.topk[0].label for p in as_rgb] == [p.topk[0].label for p in from_files[: len(SAMPLES)]]
    # The default mode decodes the big JPEG at reduced size: close to, not equal to, the frame's answer.
    assert fast.preprocess == "fast" and fast.topk[0].label == from_frames[-1].topk[0].label
    assert fast.topk != from_frames[-1].topk


def test_bytes_bytearray_memoryview_and_a_stack_of_frames(demo_export):
    data = SAMPLES[0].read_bytes()
    frame = cv2.imread(str(SAMPLES[0]))
    frames = np.stack([frame, frame[::-1]])  # (2, H, W, 3): the sample and the sample upside down
    with Classifier(demo_export.path) as clf:
        want = clf.predict(SAMPLES[0])[0].topk
        alone = [clf.predict(kind(data)) for kind in (bytes, bytearray, memoryview)]
        stacked = clf.predict(frames)
        upside_down = clf.predict(frames[1])
        mixed = clf.predict([SAMPLES[1], bytearray(data), memoryview(data), frame])
    for predictions in alone:
        assert len(predictions) == 1 and predictions[0].topk == want and predictions[0].image == "<bytes #0>"
    assert len(upside_down) == 1 and upside_down[0].topk != want
    assert [p.topk for p in stacked] == [want, upside_down[0].topk]
    assert [p.image for p in mixed] == [str(SAMPLES[1]), "<bytes #1>", "<bytes #2>", "<frame #3>"]
    assert [p.topk for p in mixed[1:]] == [want] * 3


def test_bad_frames_get_their_own_one_line_errors_and_the_rest_are_classified(demo_export):
    good = cv2.imread(str(SAMPLES[0]))
    inputs = [
        good,
        good.astype(np.uint16) * 257,  # 16-bit
        cv2.cvtColor(good, cv2.COLOR_BGR2GRAY),  # one channel
        np.zeros((0, 5, 3), np.uint8),  # empty
        Image.open(SAMPLES[0]),  # not an input kind
        SAMPLES[1],
    ]
    with Classifier(demo_export.path) as clf:
        predictions = clf.predict(inputs)
        with pytest.raises(ValueError, match="frame_order must be one of BGR, RGB, got 'bgr'"):
            clf.predict(good, frame_order="bgr")
    assert [p.ok for p in predictions] == [True, False, False, False, False, True]
    errors = [p.error for p in predictions if not p.ok]
    assert f"got uint16 {good.shape}" in errors[0]
    assert f"got uint8 {good.shape[:2]}" in errors[1]
    assert "got uint8 (0, 5, 3)" in errors[2]
    assert predictions[4].image == "<JpegImageFile #4>" and errors[3].startswith("not an image; pass a path")
    assert all("\n" not in e for e in errors)


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtimes.run", *map(str, args)], cwd=REPO, capture_output=True, timeout=120, **kwargs
    )


def test_run_dash_reads_one_image_from_stdin(demo_export):
    image = SAMPLES[2]
    result = run_cli("--model", demo_export.path, "--json", image, "-", input=image.read_bytes())
    assert result.returncode == 0, result.stderr
    from_file, from_stdin = map(json.loads, result.stdout.decode().splitlines())
    assert from_stdin["image"] == "-"
    assert from_stdin["topk"] == from_file["topk"]


def test_run_dash_with_a_bad_or_no_image_on_stdin(demo_export):
    result = run_cli("--model", demo_export.path, "--json", SAMPLES[0], "-", input=b"not an image")
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.returncode == 1
    assert "topk" in records[0] and records[1]["image"] == "-" and "not a JPEG, PNG" in records[1]["error"]
    terminal, other_end = pty.openpty()
    try:
        result = run_cli("--model", demo_export.path, "-", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(other_end)
    assert result.returncode == 2
    assert result.stderr.decode() == "error: - reads one image from stdin, but stdin is a terminal; pipe one in: ... - < photo.jpg\n"


def test_every_bytes_like_takes_the_fast_path_too(demo_export):
    data = (Path(__file__).resolve().parents[2] / "samples" / "images").glob("*.jpg").__next__().read_bytes()
    spec = demo_export.spec
    expected, mode = preprocess.load_with_mode(data, spec, fast=True)
    for kind in (bytearray, memoryview):
        tensor, kind_mode = preprocess.load_with_mode(kind(data), spec, fast=True)
        assert kind_mode == mode and np.array_equal(tensor, expected)
