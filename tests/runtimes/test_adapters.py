"""The Runner protocol and registry, independent of any one runtime's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes.adapters import RUNNERS, Runner, available_providers, create_runner, runner_class
from runtimes.adapters.tensorrt import engine_cache_dir
from runtimes.errors import ModelSpecError, ProviderError


def test_every_registered_runner_resolves_without_loading_its_runtime():
    for name in RUNNERS:
        cls = runner_class(name)
        assert issubclass(cls, Runner) and cls.name == name
    assert {"cpu", "opencv"} <= set(available_providers())


def test_unknown_provider_lists_known_ones():
    with pytest.raises(ProviderError, match=r"unknown provider 'npu'; known: cpu, cuda, tensorrt, openvino, opencv, torch"):
        create_runner("npu", "model.onnx")


def test_unknown_option_lists_the_runners_options():
    with pytest.raises(ProviderError, match=r"provider 'opencv' does not take device_id; it takes: threads"):
        create_runner("opencv", "model.onnx", device_id=0)


def test_missing_model_is_a_model_spec_error(tmp_path):
    with pytest.raises(ModelSpecError, match="not found"):
        create_runner("cpu", tmp_path / "absent.onnx").load()


def test_infer_validates_the_batch(demo_export):
    with create_runner("cpu", demo_export.path) as runner:
        good = np.zeros((2, 3, 224, 224), np.float32)
        assert runner.infer(good).shape == (2, runner.spec.num_classes)
        with pytest.raises(ValueError, match="float32 N x 3 x 224 x 224"):
            runner.infer(good.astype(np.float64))
        with pytest.raises(ValueError, match="float32 N x 3 x 224 x 224"):
            runner.infer(good[:, :, :200])
    assert runner.active_providers() == []


@pytest.mark.skipif(runner_class("cuda").unavailable_reason() is None, reason="CUDA works here; no fallback happens")
def test_cuda_fallback_reports_what_really_runs(demo_export, capsys):
    with create_runner("cuda", demo_export.path, allow_fallback=True) as runner:
        assert runner.active_providers() == ["CPUExecutionProvider"]
        assert runner.infer(np.zeros((1, 3, 224, 224), np.float32)).shape[0] == 1
    assert "warning: cuda unavailable, running on CPUExecutionProvider" in capsys.readouterr().err


def test_tensorrt_engine_cache_is_keyed_by_what_invalidates_an_engine():
    root = Path("/cache")
    key = engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", True, (1, 8, 32))
    assert key == root / "trt100900_nvidia-h100-80gb-hbm3_fp16_b1-8-32"
    assert engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", False, (1, 8, 32)) != key
    assert engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", True, (1, 1, 32)) != key


def test_ort_silent_cpu_fallback_is_caught(demo_export, monkeypatch):
    """Skip our own library probe so ORT really tries CUDA here, fails, and quietly picks CPU."""
    from runtimes.adapters import cuda

    if cuda.CudaRunner.unavailable_reason() is None:
        pytest.skip("CUDA works here; ORT does not fall back")
    monkeypatch.setattr(cuda.CudaRunner, "unavailable_reason", classmethod(lambda cls: None))
    monkeypatch.setattr(cuda, "gpu_names", lambda: ("probe bypassed",))
    with pytest.raises(ProviderError, match=r"CUDAExecutionProvider did not become active; ORT said: .*CUDA") as info:
        create_runner("cuda", demo_export.path).load()
    assert "\n" not in str(info.value) and "onnxruntime-gpu[cuda,cudnn]" in str(info.value)
