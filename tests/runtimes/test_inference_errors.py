"""A runtime that loads a model but cannot run it says so at load, in one line.

The models here load on every runtime and fail only when run: a Reshape whose target
size no batch can have (the graph's shapes are all dynamic, so no loader can see it),
and a graph whose output is NaN for a black image. OpenCV 5.1 behaves so with the fp16
variant on CPUs with AVX512-FP16 (it refuses the same file at import elsewhere): the
warm-up call at load turns either into a ProviderError, so a bundle's next provider
is tried instead of a traceback at the first image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from runtimes.adapters import create_runner
from runtimes.errors import InferenceError, ProviderError
from tests.helpers import provider_param, save_tiny_model

REPO = Path(__file__).resolve().parents[2]


def unrunnable_model(path: Path) -> Path:
    """Pools to N x 3, then reshapes that to a fixed 7 x 3: fails for every batch size but 7."""
    shape = onnx.numpy_helper.from_array(np.array([7, 3], np.int64), "shape")
    return save_tiny_model(path, [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["logits"]),
    ], [shape])


def nan_model(path: Path) -> Path:
    """sqrt(-(mean + 1)): NaN for a black image, whose mean is 0."""
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")
    return save_tiny_model(path, [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Add", ["flat", "one"], ["shifted"]),
        helper.make_node("Neg", ["shifted"], ["negative"]),
        helper.make_node("Sqrt", ["negative"], ["logits"]),
    ], [one])


@pytest.mark.parametrize("provider", [provider_param("cpu"), provider_param("openvino"), provider_param("opencv")])
def test_a_model_that_fails_when_run_is_refused_at_load(provider, tmp_path):
    """OpenCV 4.x works out every shape at import with batch 1 and refuses this file there
    (5.1 imports it): either way one line at load, never at the first image."""
    model = unrunnable_model(tmp_path / "reshape.onnx")
    runner = create_runner(provider, model)
    with pytest.raises(ProviderError) as raised:
        runner.load()
    message = str(raised.value)
    refused_at_import = provider == "opencv" and message.startswith(f"opencv: cv2.dnn cannot import {model}: ")
    assert refused_at_import or (
        isinstance(raised.value, InferenceError) and message.startswith(f"{provider}: cannot run {model}: ")
    ), message
    assert "\n" not in message
    assert runner.active_providers() == []  # closed again: nothing half-loaded is left behind


@pytest.mark.parametrize("provider", [provider_param("cpu"), provider_param("opencv")])
def test_non_finite_outputs_are_refused_at_load(provider, tmp_path):
    model = nan_model(tmp_path / "nan.onnx")
    with pytest.raises(InferenceError, match="non-finite outputs"):
        create_runner(provider, model).load()


def test_the_cli_says_it_in_one_line(tmp_path):
    model = unrunnable_model(tmp_path / "reshape.onnx")
    image = sorted((REPO / "samples" / "images").glob("*.jpg"))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "runtimes.run", "--provider", "cpu", "--model", str(model), str(image)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: cpu: cannot run {model}: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_a_bundle_falls_back_when_its_first_provider_cannot_run_the_variant(demo_export, demo_fp16, tmp_path):
    """OpenCV first for the fp16 variant: whether OpenCV refuses the file at import, fails at
    the warm-up, or runs it, every image gets the fp32 model's answer, and a provider that
    was passed over is named on stderr."""
    from deploy.bundle import build_bundle

    bundle, _ = build_bundle(demo_export.path, tmp_path / "bundle", target="cpu", variants=("fp16",))
    manifest_path = bundle / "bundle.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["providers"] = ["opencv", "cpu"]
    manifest_path.write_text(json.dumps(manifest))  # bundle.json is not among its own hashed files
    images = sorted((REPO / "samples" / "images").glob("*.jpg"))[:3]
    runs = {}
    for variant in ("fp32", "fp16"):
        proc = subprocess.run(
            [sys.executable, "-m", "runtimes.run", "--bundle", str(bundle), "--variant", variant, "--json",
             *map(str, images)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        runs[variant] = ([json.loads(line)["topk"][0]["label"] for line in proc.stdout.splitlines()], proc.stderr)
    assert runs["fp16"][0] == runs["fp32"][0] and len(runs["fp16"][0]) == len(images)
    stderr = runs["fp16"][1]
    assert "Traceback" not in stderr
    if "provider: cpu" in stderr:  # OpenCV could not run fp16 here: it says why, in one line
        assert "warning: opencv: " in stderr and "using the bundle's next provider" in stderr
    else:
        assert "provider: opencv" in stderr
