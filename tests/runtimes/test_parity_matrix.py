"""Every runtime against the PyTorch reference, end to end from JPEG files.

The committed sample JPEGs go through the shared preprocessing, then each runtime's
logits are compared with the source checkpoint's in PyTorch at batch 1 and 4. A
runtime that cannot run here is a visible skip carrying the real reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.checkpoint import build_model, load_checkpoint
from converters.parity import compare
from runtimes import preprocess
from runtimes.adapters import create_runner, unavailable_reason
from runtimes.tolerances import BF16, FP16, FP32, for_precision
from samples.generate import IMAGES_DIR
from tests.helpers import provider_param

BATCHES = (1, 4)


def _param(provider: str, options: dict, tol, id_: str | None = None):
    reason = unavailable_reason(provider)
    return pytest.param(
        provider,
        options,
        tol,
        id=id_ or provider,
        marks=pytest.mark.skipif(reason is not None, reason=f"{provider} unavailable here: {reason}"),
    )


MATRIX = [
    _param("cpu", {}, FP32),
    _param("cuda", {}, FP32),
    _param("tensorrt", {}, FP32),
    _param("tensorrt", {"fp16": True}, FP16, "tensorrt-fp16"),
    _param("openvino", {}, FP32),
    _param("openvino", {"precision": "bf16"}, BF16, "openvino-bf16"),
    _param("opencv", {}, FP32),
    # No torch row: the reference below is PyTorch on the same checkpoint, so the torch
    # runner would be compared with itself. It has its own test after this one.
]


@pytest.fixture(scope="module")
def jpeg_batch(demo_export):
    """Four committed JPEGs of different classes, preprocessed with the model's own spec."""
    paths = sorted(IMAGES_DIR.glob("*.jpg"))[::2][:4]
    assert len(paths) == 4, f"expected committed sample JPEGs in {IMAGES_DIR}"
    return preprocess.stack([preprocess.load(p.read_bytes(), demo_export.spec, p.name) for p in paths])


@pytest.fixture(scope="module")
def reference_logits(demo_ckpt, demo_export, jpeg_batch):
    """PyTorch logits of the source checkpoint, per batch size."""
    model = build_model(load_checkpoint(demo_ckpt), transform_input=demo_export.spec.transform_input)
    with torch.inference_mode():
        return {n: model(torch.from_numpy(jpeg_batch[:n])).numpy() for n in BATCHES}


@pytest.mark.parametrize(("provider", "options", "tol"), MATRIX)
def test_runtime_matches_pytorch(provider, options, tol, demo_export, jpeg_batch, reference_logits):
    with create_runner(provider, demo_export.path, **options) as runner:
        for n in BATCHES:
            logits = runner.infer(np.ascontiguousarray(jpeg_batch[:n]))
            stats = compare(reference_logits[n], logits, tol)
            print(f"{provider} {options or ''} {stats.summary()}")
            assert stats.violations == 0, f"{provider}: {stats.summary()} (atol={tol.atol}, rtol={tol.rtol})"
            assert stats.top1_agreement == 1.0, f"{provider}: top-1 differs from PyTorch: {stats.summary()}"


def test_torch_reference_runner_agrees_with_onnx_runtime_and_knows_the_samples(demo_ckpt, demo_export, jpeg_batch):
    """The torch runner judged by what does not share its code: a bare ONNX Runtime session
    on the exported graph (ORT's kernels, the rewritten LRN and pools), and the classes the
    committed sample images were drawn from."""
    import onnxruntime as ort

    from samples.generate import label_of

    labels = [label_of(p.name) for p in sorted(IMAGES_DIR.glob("*.jpg"))[::2][:4]]
    session = ort.InferenceSession(str(demo_export.path), providers=["CPUExecutionProvider"])
    # The export lives elsewhere than its checkpoint, so it is passed by path.
    with create_runner("torch", demo_export.path, ckpt=demo_ckpt) as runner:
        for n in BATCHES:
            x = np.ascontiguousarray(jpeg_batch[:n])
            logits = runner.infer(x)
            stats = compare(session.run(None, {"input": x})[0], logits, FP32)
            assert stats.violations == 0 and stats.top1_agreement == 1.0, f"torch against ONNX Runtime: {stats.summary()}"
            assert [demo_export.spec.labels[i] for i in logits.argmax(axis=1)] == labels[:n]


@pytest.mark.parametrize("provider", [provider_param("cpu"), provider_param("openvino")])
@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_variant_files_match_pytorch_within_their_precision(variant, provider, request, jpeg_batch, reference_logits):
    """fp16 elementwise within FP16; int8 by top-1 agreement (runtimes.tolerances.INT8)."""
    path = request.getfixturevalue("demo_fp16") if variant == "fp16" else request.getfixturevalue("demo_int8").path
    tol = for_precision(variant)
    with create_runner(provider, path) as runner:
        stats = compare(reference_logits[4], runner.infer(np.ascontiguousarray(jpeg_batch)), tol)
    print(f"{variant} on {provider}: {stats.summary()}")
    assert stats.passed, stats.summary()
    assert stats.top1_agreement == 1.0
