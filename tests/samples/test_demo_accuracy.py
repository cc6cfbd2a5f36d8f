"""The demo checkpoint as an oracle: the exported model is accurate through the real
pipeline, and measurably wrong when the pipeline swaps channels or crops elsewhere.

Everything runs end to end: held-out images are written as JPEG files, read back
with ``decode_image``, prepared with the spec stored in the ONNX file, and classified
by ONNX Runtime on the CPU provider.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from runtimes.adapters import create_runner
from runtimes.preprocess import decode_image, prepare, stack
from runtimes.spec import ModelSpec
from samples.checkpoint import HELDOUT_SEED, TRAIN_SEED
from samples.generate import CLASSES, encode_jpeg, generate

TEST_SEED = 2024  # neither the training nor the build's held-out seed
N_TEST = 90  # 10 per class
MIN_ACCURACY = 0.90
MIN_BGR_DROP = 0.30  # red and blue classes trade places, so about two thirds flip
MIN_CROP_DROP = 0.25  # the off-centre crop sees a distractor patch of another class


@pytest.fixture(scope="module")
def heldout_files(tmp_path_factory) -> tuple[list, list[int]]:
    """N_TEST held-out images written as JPEG files, with their labels."""
    assert TEST_SEED not in (TRAIN_SEED, HELDOUT_SEED)
    folder = tmp_path_factory.mktemp("heldout")
    images, labels = generate(N_TEST, TEST_SEED)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = folder / f"{CLASSES[label]}_{i}.jpg"
        path.write_bytes(encode_jpeg(img))
        paths.append(path)
    return paths, labels


@pytest.fixture(scope="module")
def demo_runner(demo_export):
    """The toolkit's own ONNX Runtime CPU runner, one thread: the cores are shared."""
    with create_runner("cpu", demo_export.path, threads=1) as runner:
        yield runner


@pytest.fixture(scope="module")
def spec(demo_runner) -> ModelSpec:
    return demo_runner.spec


@pytest.fixture(scope="module")
def accuracy_of(demo_runner, spec, heldout_files) -> Callable:
    """accuracy_of(transform): top-1 over the held-out files, each decoded RGB image passed through ``transform``."""
    paths, labels = heldout_files
    images = [decode_image(p.read_bytes(), name=str(p)) for p in paths]

    def accuracy(transform=lambda rgb: rgb) -> float:
        batch = stack([prepare(np.ascontiguousarray(transform(rgb)), spec) for rgb in images])
        logits = np.concatenate(
            [demo_runner.infer(batch[i : i + 16]) for i in range(0, len(batch), 16)]
        )
        return float((logits.argmax(1) == np.asarray(labels)).mean())

    return accuracy


@pytest.fixture(scope="module")
def rgb_accuracy(accuracy_of) -> float:
    return accuracy_of()


def test_demo_checkpoint_is_a_training_checkpoint(demo_ckpt):
    ckpt = torch.load(demo_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["classes"] == list(CLASSES)
    assert ckpt["epoch"] > 0 and ckpt["optimizer"]["state"]
    assert any(k.startswith("aux1.") for k in ckpt["model"]) and any(k.startswith("aux2.") for k in ckpt["model"])
    assert "conv1.conv.bias" in ckpt["model"]  # paper layout: biased convs, no BatchNorm
    # Not its recorded ckpt["metrics"]: the builder's own figure. Accuracy is measured below,
    # on images of a seed neither training nor the build used.


def test_export_carries_the_demo_labels(spec):
    assert spec.labels == CLASSES
    assert (spec.resize_size, spec.crop_size, spec.channel_order) == (256, 224, "RGB")


def test_heldout_accuracy_through_onnx_runtime(rgb_accuracy):
    assert rgb_accuracy >= MIN_ACCURACY


def test_bgr_input_loses_accuracy(accuracy_of, rgb_accuracy):
    bgr = accuracy_of(lambda rgb: rgb[..., ::-1])
    assert bgr <= rgb_accuracy - MIN_BGR_DROP, f"RGB {rgb_accuracy:.1%}, BGR {bgr:.1%}"


def test_off_centre_crop_loses_accuracy(accuracy_of, rgb_accuracy):
    # A pipeline that keeps the top-left square instead of the centre one: the
    # labelled patch sits in the centre, distractors of other classes at the ends.
    def top_left_square(rgb):
        side = min(rgb.shape[:2])
        return rgb[:side, :side]

    shifted = accuracy_of(top_left_square)
    assert shifted <= rgb_accuracy - MIN_CROP_DROP, f"centre {rgb_accuracy:.1%}, top-left {shifted:.1%}"
