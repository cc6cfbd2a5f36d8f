"""``runtimes.bench`` measures each runtime and the CLI cold start; speed targets are not asserted here."""

from __future__ import annotations

from runtimes.adapters import unavailable_reason
from runtimes.bench import bench_runtime, cold_start


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
