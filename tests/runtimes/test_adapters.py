"""The Runner protocol and registry, independent of any one runtime's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes.adapters import RUNNERS, Runner, available_providers, create_runner, runner_class, unavailable_reason
from runtimes.adapters.tensorrt import TensorrtRunner, engine_cache_dir
from runtimes.doctor import write_tiny_model
from runtimes.errors import ModelSpecError, ProviderError
from runtimes.spec import ModelSpec

# Each runtime that can load a file here; one that cannot is a visible skip.
LOADERS = [
    pytest.param(name, marks=pytest.mark.skipif(unavailable_reason(name) is not None, reason=f"{name}: {unavailable_reason(name)}"))
    for name in ("cpu", "openvino", "opencv")
]


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
    with pytest.raises(ModelSpecError, match="not found; export one with `python -m converters.export"):
        create_runner("cpu", tmp_path / "absent.onnx").load()


def test_a_runner_names_the_module_it_requires_and_how_to_install_it():
    class Needy(Runner):
        name = "needy"
        REQUIRES = ("no_such_module_for_this_test", "needy is not installed: pip install needy")

    assert Needy.unavailable_reason() == "needy is not installed: pip install needy"
    Needy.REQUIRES = ("json", "never shown")
    assert Needy.unavailable_reason() is None


@pytest.mark.parametrize("provider", LOADERS)
@pytest.mark.parametrize("content", [b"garbage", b"# README\n\nnot a model\n"], ids=["garbage", "text"])
def test_a_file_that_is_not_a_model_is_a_toolkit_error(provider, content, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises((ProviderError, ModelSpecError), match=r"broken\.onnx") as info:
        create_runner(provider, path).load()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("provider", LOADERS)
def test_a_model_without_our_metadata_fails_at_load(provider, tmp_path):
    import onnx

    model = onnx.load(str(write_tiny_model(tmp_path / "tiny.onnx")))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    runner = create_runner(provider, tmp_path / "bare.onnx")
    with pytest.raises(ModelSpecError, match="no googlenet_deploy.spec metadata"):
        runner.load()
    assert runner.active_providers() == [], "the session built before the check is closed again"


@pytest.mark.parametrize("provider", LOADERS)
def test_load_reads_the_spec(provider, tmp_path):
    with create_runner(provider, write_tiny_model(tmp_path / "tiny.onnx")) as runner:
        assert runner.spec.labels == ("r", "g", "b")


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
    batch = np.random.default_rng(3).standard_normal((3, 3, 224, 224), dtype=np.float32)
    with create_runner("cuda", demo_export.path, allow_fallback=True) as runner:
        assert runner.active_providers() == ["CPUExecutionProvider"]
        bound = runner.infer(batch)  # through the cuda runner's IO binding, here on a CPU session
    assert "warning: cuda unavailable, running on CPUExecutionProvider" in capsys.readouterr().err
    import onnxruntime as ort

    plain = ort.InferenceSession(str(demo_export.path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)


def test_tensorrt_engine_cache_is_keyed_by_what_invalidates_an_engine():
    root = Path("/cache")
    key = engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", True, (1, 8, 32))
    assert key == root / "trt100900_nvidia-h100-80gb-hbm3_fp16_b1-8-32"
    assert engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", False, (1, 8, 32)) != key
    assert engine_cache_dir(root, "100900", "NVIDIA H100 80GB HBM3", True, (1, 1, 32)) != key


def test_tensorrt_profile_covers_the_batch_size_it_is_created_for():
    default = TensorrtRunner.OPTIONS["max_batch"]
    assert create_runner("tensorrt", "m.onnx", batch_size=default * 2).options["max_batch"] == default * 2
    # Smaller batches keep the default profile, so its cached engine is reused.
    assert create_runner("tensorrt", "m.onnx", batch_size=2).options["max_batch"] == default
    assert create_runner("tensorrt", "m.onnx", batch_size=64, max_batch=16).options["max_batch"] == 16
    assert "max_batch" not in create_runner("cpu", "m.onnx", batch_size=64).options


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


@pytest.mark.parametrize(("spinning", "allowed"), [(None, "1"), (False, "0")])
def test_cpu_sessions_spin_only_during_a_run(demo_export, spinning, allowed):
    """Measured (README): spinning saves up to 1.14x at batch 1, and spinning on after a
    run made three sessions in one process 2.7x slower; force_spinning_stop gives both."""
    options = {} if spinning is None else {"spinning": spinning}
    with create_runner("cpu", demo_export.path, **options) as runner:
        config = runner.session.get_session_options()
        assert config.get_session_config_entry("session.intra_op.allow_spinning") == allowed
        assert config.get_session_config_entry("session.force_spinning_stop") == "1"


# ----------------------------------------------------------------------------- what the GPU runners give ORT
# Checked on any machine: the options as ORT's Python API turns them into the strings its
# C++ providers parse (bools as "True"/"False", which ORT's parser takes like "1"/"0").

SPEC_227 = ModelSpec(labels=("a", "b"), input_name="data_0", crop_size=227)


def _as_ort_sees_them(providers: list) -> dict[str, dict[str, str]]:
    from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

    names = [p if isinstance(p, str) else p[0] for p in providers]
    normalized, options = check_and_normalize_provider_args(providers, None, names)
    assert normalized == names  # order kept: first choice first
    return dict(zip(normalized, options))


def test_cuda_runner_asks_for_fp32_convolutions_on_its_device():
    providers = create_runner("cuda", "m.onnx", SPEC_227, device_id=1).provider_options()
    assert [p if isinstance(p, str) else p[0] for p in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _as_ort_sees_them(providers) == {
        "CUDAExecutionProvider": {"device_id": "1", "use_tf32": "0"},  # ORT's default is TF32 on
        "CPUExecutionProvider": {},
    }


@pytest.mark.parametrize("fp16", [True, False])
def test_tensorrt_runner_options_profile_and_engine_cache(tmp_path, fp16):
    runner = create_runner("tensorrt", "m.onnx", SPEC_227, fp16=fp16, opt_batch=8, max_batch=16, cache_dir=tmp_path)
    providers = runner.provider_options(gpu="NVIDIA H100 80GB HBM3", trt_version="100900")
    cache = str(tmp_path / f"trt100900_nvidia-h100-80gb-hbm3_{'fp16' if fp16 else 'fp32'}_b1-8-16")
    assert _as_ort_sees_them(providers) == {
        "TensorrtExecutionProvider": {
            "device_id": "0",
            "trt_fp16_enable": str(fp16),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": "data_0:1x3x227x227",
            "trt_profile_opt_shapes": "data_0:8x3x227x227",
            "trt_profile_max_shapes": "data_0:16x3x227x227",
        },
        # Nodes TensorRT rejects run on CUDA, with the same fp32 promise; CPU takes the rest.
        "CUDAExecutionProvider": {"device_id": "0", "use_tf32": "0"},
        "CPUExecutionProvider": {},
    }
    assert list(tmp_path.iterdir()) == []  # given the GPU and TensorRT version, nothing is probed or written


def test_tensorrt_default_profile_covers_batches_1_to_32_at_the_models_input(tmp_path):
    runner = create_runner("tensorrt", "m.onnx", ModelSpec(labels=("a",)), cache_dir=tmp_path)
    providers = runner.provider_options(gpu="GPU", trt_version="1")
    options = _as_ort_sees_them(providers)["TensorrtExecutionProvider"]
    assert [options[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")] == [
        "input:1x3x224x224", "input:1x3x224x224", "input:32x3x224x224"
    ]
    assert options["trt_fp16_enable"] == "False"


@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_every_option_name_is_one_the_provider_library_parses(kind, tmp_path):
    """The installed provider library holds its option parser's key names as C strings:
    a misspelt key (ORT ignores or rejects it only on a GPU machine) is caught here."""
    import mmap

    import onnxruntime

    library = Path(onnxruntime.__file__).parent / "capi" / f"libonnxruntime_providers_{kind}.so"
    if not library.is_file():
        pytest.skip(f"this onnxruntime build has no {library.name} to read option names from (install onnxruntime-gpu)")
    if kind == "tensorrt":
        runner = create_runner(kind, "m.onnx", SPEC_227, cache_dir=tmp_path)
        providers = runner.provider_options(gpu="GPU", trt_version="1")
    else:
        runner = create_runner(kind, "m.onnx", SPEC_227)
        providers = runner.provider_options()
    keys = sorted(_as_ort_sees_them(providers)[runner.provider])
    with open(library, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as image:
        unknown = [k for k in keys if image.find(b"\0" + k.encode() + b"\0") < 0]
    assert keys and not unknown, f"not option names of {library.name}: {unknown}"


def test_openvino_compiles_the_first_batch_sizes_for_their_exact_shape(demo_export):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from runtimes.adapters.openvino import STATIC_SHAPES

    batches = {n: np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float32) for n in range(1, 7)}
    with create_runner("cpu", demo_export.path) as cpu, create_runner("openvino", demo_export.path) as ov:
        for n, batch in batches.items():
            np.testing.assert_allclose(ov.infer(batch), cpu.infer(batch), rtol=0, atol=1e-4)
        static = [n for n, (compiled, _) in ov._by_batch.items() if compiled.input(0).get_partial_shape().is_static]
        assert static == list(range(1, STATIC_SHAPES + 1))
        assert all(ov._by_batch[n][0] is ov.compiled for n in range(STATIC_SHAPES + 1, 7))


def test_cuda_load_without_a_gpu_says_why_instead_of_counting_characters(demo_export):
    from runtimes.adapters.cuda import CudaRunner
    from runtimes.adapters.nvidia import gpu_names

    reason = gpu_names()
    if not isinstance(reason, str):
        pytest.skip(f"this machine has GPUs: {', '.join(reason)}")
    runner = CudaRunner(demo_export.path)
    with pytest.raises(ProviderError) as error:
        runner._load_impl()  # as if the availability probe had let it through
    assert str(error.value) == f"cuda: {reason}"
