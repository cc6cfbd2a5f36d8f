"""The Python API: paths or bytes in, ordered Predictions out, bad images isolated."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from runtimes.classifier import Classifier, softmax
from samples.generate import IMAGES_DIR, label_of

SAMPLES = sorted(IMAGES_DIR.glob("*.jpg"))


@pytest.fixture(scope="module")
def classifier(demo_export):
    with Classifier(demo_export.path, "cpu", batch_size=4) as clf:
        yield clf


def test_records_match_a_pipeline_built_from_the_model_file_alone(classifier, demo_export):
    """What the Classifier reads from the model and does with it, against code that shares
    none of it: the spec parsed from the raw metadata JSON, torchvision's preprocessing done
    with Pillow, a bare ONNX Runtime session, softmax and top-k in numpy."""
    import io
    import json

    import onnx
    import onnxruntime as ort
    from PIL import Image

    props = {p.key: p.value for p in onnx.load(str(demo_export.path), load_external_data=False).metadata_props}
    stored = json.loads(props["googlenet_deploy.spec"])
    assert stored["channel_order"] == "RGB"
    buffer = io.BytesIO()  # a lossless copy of a sample: OpenCV and Pillow decode the same pixels
    Image.open(SAMPLES[0]).convert("RGB").save(buffer, "PNG")
    im = Image.open(buffer).convert("RGB")
    short, crop = stored["resize_size"], stored["crop_size"]
    w, h = im.size
    im = im.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short), Image.BILINEAR)
    left, top = int(round((im.width - crop) / 2.0)), int(round((im.height - crop) / 2.0))
    pixels = np.asarray(im.crop((left, top, left + crop, top + crop)), np.float32) / np.float32(255)
    x = ((pixels - np.float32(stored["mean"])) / np.float32(stored["std"])).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(demo_export.path), providers=["CPUExecutionProvider"])
    logits = session.run([stored["output_name"]], {stored["input_name"]: np.ascontiguousarray(x, np.float32)})[0][0]
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs)[:3]

    (prediction,) = classifier.predict([buffer.getvalue()], topk=3)
    record = json.loads(json.dumps(prediction.to_dict()))  # the JSON Lines record
    assert record["image"] == "<bytes #0>"
    assert [(s["index"], s["label"]) for s in record["topk"]] == [(int(i), stored["labels"][i]) for i in best]
    np.testing.assert_allclose([s["prob"] for s in record["topk"]], probs[best], rtol=1e-4, atol=1e-6)
    assert classifier.active_providers() == ["CPUExecutionProvider"]


def test_paths_and_bytes_keep_their_order(classifier):
    inputs = [SAMPLES[0], SAMPLES[1].read_bytes(), str(SAMPLES[2])]
    predictions = classifier.predict(inputs, topk=3)
    assert [p.image for p in predictions] == [str(SAMPLES[0]), "<bytes #1>", str(SAMPLES[2])]
    for p in predictions:
        assert p.ok and len(p.topk) == 3
        assert [s.prob for s in p.topk] == sorted((s.prob for s in p.topk), reverse=True)
        assert p.topk[0].label == classifier.spec.labels[p.topk[0].index]


def test_a_bad_image_does_not_stop_the_batch(classifier, tmp_path):
    missing = tmp_path / "missing.jpg"
    predictions = classifier.predict([SAMPLES[0], b"", b"\xff\xd8garbage", missing, SAMPLES[3]])
    assert [p.ok for p in predictions] == [True, False, False, False, True]
    assert "empty" in predictions[1].error
    assert "No such file" in predictions[3].error
    record = predictions[1].to_dict()
    assert set(record) == {"image", "error"} and record["image"] == "<bytes #1>" and "empty" in record["error"]
    assert predictions[0].topk == classifier.predict(SAMPLES[0])[0].topk, "neighbours must not change results"


def test_batch_size_does_not_change_results(demo_export, classifier):
    with Classifier(demo_export.path, batch_size=1) as one_by_one:
        singles = one_by_one.predict(SAMPLES[:5])
    batched = classifier.predict(SAMPLES[:5])
    for a, b in zip(singles, batched):
        assert [s.index for s in a.topk] == [s.index for s in b.topk]
        np.testing.assert_allclose([s.prob for s in a.topk], [s.prob for s in b.topk], rtol=1e-5, atol=1e-6)


def test_topk_is_clamped_to_the_classes(classifier):
    (prediction,) = classifier.predict(SAMPLES[0], topk=10_000)
    assert len(prediction.topk) == classifier.spec.num_classes
    assert sum(s.prob for s in prediction.topk) == pytest.approx(1.0)


def test_demo_samples_are_classified_correctly(classifier):
    predictions = classifier.predict(SAMPLES, topk=1)
    wrong = [(p.image, p.topk[0].label) for p in predictions if p.topk[0].label != label_of(p.image)]
    assert not wrong, f"misclassified: {wrong}"


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_import_runtimes_stays_light():
    code = "import sys, runtimes; print(sorted({'numpy', 'cv2', 'onnxruntime', 'onnx'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    code = "import runtimes; print(runtimes.Classifier.__module__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "runtimes.classifier"


def test_worker_threads_keep_input_order_and_isolate_bad_images(demo_export, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(SAMPLES[0].read_bytes()[:500])
    inputs = [*SAMPLES[:5], broken, tmp_path / "missing.jpg", *SAMPLES[5:12], b"not an image", *SAMPLES[12:]]
    with Classifier(demo_export.path, "cpu", batch_size=3, workers=1) as serial:
        expected = serial.predict(inputs)
    with Classifier(demo_export.path, "cpu", batch_size=3, workers=4) as pooled:
        got = pooled.predict(inputs)
    assert [p.image for p in got] == [p.image for p in expected] == [
        str(i) if not isinstance(i, bytes) else "<bytes #14>" for i in inputs
    ]
    assert [p.ok for p in got].count(False) == 3 and [p.error for p in got] == [p.error for p in expected]
    assert [[s.index for s in p.topk] for p in got] == [[s.index for s in p.topk] for p in expected]
    assert [label_of(p.image) for p in got if p.ok] == [p.topk[0].label for p in got if p.ok]


def test_a_lazy_input_is_read_only_a_few_batches_ahead(classifier):
    from runtimes.classifier import PREFETCH_BATCHES

    pulled = []

    def images():
        for i in range(40):
            pulled.append(i)
            yield SAMPLES[i % len(SAMPLES)]

    stream = classifier.iter_predict(images())
    first = next(stream)
    assert first.ok
    # Memory stays bounded: at the first result, only the prefetch window was read.
    assert len(pulled) <= classifier.batch_size * (1 + PREFETCH_BATCHES) + classifier.batch_size
    stream.close()
    assert len(pulled) < 40
