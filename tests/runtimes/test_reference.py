"""The reference answers file: exact round trip, no pickle, clear errors, and what the export puts in it."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
import torch

from converters.checkpoint import build_model, load_checkpoint
from converters.parity import seeded_inputs
from runtimes import preprocess
from runtimes.errors import BundleError
from runtimes.reference import Reference
from samples.generate import IMAGES_DIR


def _small(images=True) -> Reference:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float16).astype(np.float32)
    extra = dict(image_names=("a.jpg", "sub/b.png"), images=(b"\xff\xd8jpeg", b"\x89PNGpng!"),
                 image_logits=rng.standard_normal((2, 5)).astype(np.float32)) if images else {}
    return Reference(inputs=(x,), input_logits=(rng.standard_normal((2, 5)).astype(np.float32),), **extra)


def test_round_trip_is_exact_and_bytes_depend_only_on_contents(tmp_path):
    ref = _small()
    ref.save(tmp_path / "a.npz")
    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    ref.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = Reference.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.inputs[0], ref.inputs[0])
    np.testing.assert_array_equal(back.input_logits[0], ref.input_logits[0])
    assert back.image_names == ref.image_names and back.images == ref.images
    np.testing.assert_array_equal(back.image_logits, ref.image_logits)
    assert Reference.load(_small(images=False).save(tmp_path / "c.npz")).images == ()


def test_inputs_that_float16_would_change_are_refused(tmp_path):
    ref = _small()
    bad = Reference(inputs=(ref.inputs[0] + np.float32(1e-4),), input_logits=ref.input_logits)
    with pytest.raises(ValueError, match="float16-exact"):
        bad.save(tmp_path / "r.npz")


def test_a_pickled_array_is_refused_unrun(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as archive:
        archive.writestr("input_0.npy", buffer.getvalue())
        archive.writestr("input_logits_0.npy", buffer.getvalue())
    with pytest.raises(BundleError, match="unreadable .*allow_pickle"):
        Reference.load(tmp_path / "evil.npz")


def test_truncated_and_missing_files_are_one_line_errors(tmp_path):
    path = _small().save(tmp_path / "r.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match="unreadable") as info:
        Reference.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(BundleError, match="not found; re-export"):
        Reference.load(tmp_path / "absent.npz")


def test_export_keeps_the_gate_inputs_and_the_sample_images_with_pytorch_logits(demo_export, demo_ckpt):
    ref = Reference.load(demo_export.reference_path)
    assert [len(x) for x in ref.inputs] == [1, 4]
    np.testing.assert_array_equal(ref.inputs[1], seeded_inputs(4, 224, 0))
    files = sorted(IMAGES_DIR.glob("*.jpg"))
    assert ref.image_names == tuple(p.name for p in files)
    assert ref.images == tuple(p.read_bytes() for p in files)
    model = build_model(load_checkpoint(demo_ckpt), transform_input=False)
    batch = preprocess.stack([preprocess.load(p.read_bytes(), demo_export.spec, p.name) for p in files[5:8]])
    with torch.inference_mode():
        np.testing.assert_allclose(model(torch.from_numpy(batch)).numpy(), ref.image_logits[5:8], atol=1e-5, rtol=0)
        np.testing.assert_allclose(model(torch.from_numpy(ref.inputs[0])).numpy(), ref.input_logits[0], atol=1e-5, rtol=0)


def test_a_subset_keeps_the_smallest_seeded_batch_and_spans_the_classes():
    """verify --images N: N images taken in turn from each class PyTorch answered, each with its own logits."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((4, 3, 2, 2)).astype(np.float16).astype(np.float32)
    small = big[:1].copy()
    classes = [0, 0, 0, 1, 1, 2]  # PyTorch's top-1 of each image
    logits = np.eye(3, dtype=np.float32)[classes] * 5 + rng.standard_normal((6, 3)).astype(np.float32) * 0.1
    names = tuple(f"img{i}.jpg" for i in range(6))
    ref = Reference((big, small), (np.ones((4, 3), np.float32), np.zeros((1, 3), np.float32)),
                    names, tuple(n.encode() for n in names), logits)
    quick = ref.subset(4)
    assert len(quick.inputs) == 1 and np.array_equal(quick.inputs[0], small)
    assert np.array_equal(quick.input_logits[0], np.zeros((1, 3), np.float32))
    assert quick.image_names == ("img0.jpg", "img1.jpg", "img3.jpg", "img5.jpg")  # 0, 1, 2 then class 0 again
    assert quick.images == tuple(n.encode() for n in quick.image_names)
    assert np.array_equal(quick.image_logits, logits[[0, 1, 3, 5]])
    assert ref.subset(2).image_names == ("img0.jpg", "img3.jpg")
    assert ref.subset(99).image_names == names
    assert _small(images=False).subset(3).images == ()
