"""``runtimes.bench`` measures each runtime and the CLI cold start; speed targets are not asserted here."""

from __future__ import annotations

import pytest

from runtimes.adapters import unavailable_reason
from runtimes.bench import bench_runtime, cold_start, main
from runtimes.errors import ProviderError


def test_bench_runtime_reports_latency_and_what_ran(demo_export):
    result = bench_runtime("cpu", demo_export.path, iterations=3, warmup=1)
    assert result["runs_on"] == ["CPUExecutionProvider"] and result["batch_size"] == 1
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["images_per_s"] > 0


def test_an_unusable_runtime_is_skipped_with_its_reason(demo_export, paper_ckpt):
    wrong_ckpt = bench_runtime("torch", demo_export.path, iterations=1, options={"ckpt": paper_ckpt})
    assert "failed to load" in wrong_ckpt["skipped"] and "pass the checkpoint it was exported from" in wrong_ckpt["skipped"]
    if unavailable_reason("cuda") is not None:
        assert bench_runtime("cuda", demo_export.path)["skipped"] == unavailable_reason("cuda")


def test_cold_start_runs_the_real_cli_without_torch(demo_export):
    result = cold_start(demo_export.path, runs=1)
    assert "error" not in result, result
    assert result["torch_imported"] is False and result["median_s"] > 0


@pytest.mark.parametrize("provider", ["cpu", "openvino", "opencv"])
def test_a_model_a_runtime_cannot_load_is_skipped_not_fatal(provider, tmp_path):
    if unavailable_reason(provider) is not None:
        pytest.skip(f"{provider}: {unavailable_reason(provider)}")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    result = bench_runtime(provider, garbage, iterations=1)
    assert result["skipped"].startswith(f"failed to load: {provider}: "), result


@pytest.mark.parametrize(("flag", "value"), [("--iterations", "0"), ("--batch-size", "0"), ("--warmup", "-1")])
def test_counts_out_of_range_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main([flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err


def test_an_unknown_provider_fails_before_anything_is_measured(demo_export, capsys):
    with pytest.raises(ProviderError, match="unknown provider 'tpu'"):
        main(["--model", str(demo_export.path), "--providers", "cpu,tpu", "--no-cold-start"])
    assert capsys.readouterr().out == ""


def test_warmup_zero_is_allowed(demo_export):
    assert bench_runtime("cpu", demo_export.path, iterations=1, warmup=0)["median_ms"] > 0
