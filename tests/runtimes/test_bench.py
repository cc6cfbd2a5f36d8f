"""``runtimes.bench`` measures each runtime and the CLI cold start; speed targets are not asserted here."""

from __future__ import annotations

import json
import time

import pytest

from runtimes.adapters import unavailable_reason
from runtimes.bench import bench_runtime, cold_start, main
from runtimes.errors import ProviderError
from runtimes.roofline import model_flops
from samples.generate import IMAGES_DIR


def test_a_time_budget_replaces_the_iteration_count(demo_export):
    started = time.perf_counter()
    result = bench_runtime("cpu", demo_export.path, iterations=1, warmup=0, seconds=0.4)
    assert time.perf_counter() - started >= 0.4 and result["calls"] >= 3
    assert result["runs_on"] == ["CPUExecutionProvider"]


def test_percentiles_are_numpys_nearest_rank():
    """An independent implementation: numpy's percentile, method "nearest", on every sample count up to 120."""
    import numpy as np

    from runtimes.bench import _percentile

    rng = np.random.default_rng(7)
    for n in range(1, 121):
        times = list(rng.lognormal(0, 0.5, n))
        for q in (0.5, 0.9, 0.99):
            assert _percentile(times, q) == np.percentile(times, 100 * q, method="nearest"), (n, q)


def test_graph_flops_equal_pytorchs_count_plus_the_lrn_window_sums(paper_export, paper_ckpt):
    """An independent count: PyTorch's FlopCounterMode on the source model. The exported
    graph adds the two 1x1 window-sum convolutions that replaced LRN (64 and 192 channels at 56x56)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from converters.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(paper_ckpt))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    window_sums = 2 * 56 * 56 * (64 * 64 + 192 * 192)
    assert model_flops(paper_export.path) == counter.get_total_flops() + window_sums


def test_a_tiny_run_writes_every_output(demo_export, demo_ckpt, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(IMAGES_DIR.glob("*.jpg"))[:6]:
        (images / path.name).write_bytes(path.read_bytes())
    plot = tmp_path / "bench.png"
    args = ["--model", str(demo_export.path), "--ckpt", str(demo_ckpt), "--providers", "torch,cpu", "--batch-sizes", "1,2",
            "--precisions", "fp32,fp16", "--iterations", "2", "--warmup", "0", "--images", str(images),
            "--files-batch-size", "2", "--plot", str(plot), "--no-cold-start"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["model"] and report["machine"]["physical_cores"] >= 1 and "onnxruntime-gpu" in report["versions"]
    plan = [(r["provider"], r["precision"], r["batch_size"]) for r in report["rows"]]
    assert plan == [(p, prec, b) for prec in ("fp32", "fp16") for p in ("torch", "cpu") for b in (1, 2)]
    measured = [r for r in report["rows"] if "skipped" not in r]
    assert [(r["provider"], r["precision"]) for r in measured] == [("torch", "fp32")] * 2 + [("cpu", "fp32")] * 2
    assert all(r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] and 0 < r["of_limit"] < 2 for r in measured)
    assert report["bound_ms_per_image"] == pytest.approx(report["flops_per_image"] / report["gemm_peak_gflops"] / 1e6, rel=1e-2)
    files = report["files"]
    assert files["images"] == 6 and files["runtimes_run"]["images"] == 6 and files["runtimes_run"]["failed"] == 0
    assert files["bound_images_per_s"] < min(files["decode"]["images_per_s"], files["inference_images_per_s"])
    assert files["runtimes_run"]["peak_rss_mb"] > 50
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| ONNX Runtime CPU | fp32 | 2 |" in table and "| PyTorch eager (reference) | fp16 | 1 | skipped" in table
    assert "shared-core bound" in table and "GEMM peak" in table


def test_an_unusable_runtime_is_skipped_with_its_reason(demo_export, paper_ckpt):
    wrong_ckpt = bench_runtime("torch", demo_export.path, iterations=1, options={"ckpt": paper_ckpt})
    assert "failed to load" in wrong_ckpt["skipped"] and "pass the checkpoint it was exported from" in wrong_ckpt["skipped"]



def test_cuda_is_measured_only_where_onnx_runtime_really_runs_it(demo_export):
    """Judged by ONNX Runtime itself, not by the toolkit's own probe: asked for CUDA first,
    does a plain session end up running on it?"""
    import onnxruntime as ort

    session = ort.InferenceSession(str(demo_export.path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    result = bench_runtime("cuda", demo_export.path, iterations=1, warmup=0)
    if "CUDAExecutionProvider" in session.get_providers():
        assert result["runs_on"][0] == "CUDAExecutionProvider", result
    else:  # no numbers that are really the CPU's, and a reason that names what is missing
        assert "median_ms" not in result and "runs_on" not in result, result
        assert "cuda" in result["skipped"] and "CUDA" in result["skipped"], result


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


@pytest.mark.parametrize(("flag", "value"), [("--iterations", "0"), ("--batch-sizes", "0"), ("--warmup", "-1")])
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


def test_rounds_give_each_row_the_median_of_its_rounds_and_a_speedup_per_round(demo_export, capsys, monkeypatch):
    """Three interleaved rounds of ORT and OpenVINO, fp32 and bf16: every other round runs
    backwards; a row's p50 is the median of its rounds' medians, and its speed-up is the
    median of baseline/row ratios taken round by round (computed here from the reported
    round medians, not by the bench's code)."""
    import statistics

    import runtimes.bench

    if unavailable_reason("openvino") is not None:
        pytest.skip(f"openvino: {unavailable_reason('openvino')}")
    measured, measure = [], runtimes.bench._measure

    def watched(provider, path, batch, *rest):  # the real measurement, in the order the bench asks for it
        measured.append((provider, (rest[-1] or {}).get("precision", "fp32")))
        return measure(provider, path, batch, *rest)

    monkeypatch.setattr(runtimes.bench, "_measure", watched)
    args = ["--model", str(demo_export.path), "--providers", "cpu,openvino", "--precisions", "fp32,bf16",
            "--rounds", "3", "--iterations", "3", "--warmup", "1", "--no-cold-start"]
    assert main([*args, "--json"]) == 0
    forward = [("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]  # cpu bf16 is a skip, never measured
    assert measured == forward + forward[::-1] + forward
    rows = {(r["provider"], r["precision"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert "skipped" in rows[("cpu", "bf16")] and "rounds" not in rows[("cpu", "bf16")]
    base, bf16 = rows[("cpu", "fp32")], rows[("openvino", "bf16")]
    for row in (base, rows[("openvino", "fp32")], bf16):
        assert row["rounds"] == 3 and len(row["round_medians_ms"]) == 3 and row["calls"] == 9
        assert row["median_ms"] == pytest.approx(statistics.median(row["round_medians_ms"]), abs=0.01)
    ratios = sorted(b / v for b, v in zip(base["round_medians_ms"], bf16["round_medians_ms"]))
    assert bf16["speedup"] == pytest.approx(ratios[1], abs=0.01)
    assert bf16["speedup_range"] == pytest.approx([ratios[0], ratios[2]], abs=0.01)
    assert base["speedup"] == 1.0 and base["speedup_range"] == [1.0, 1.0]
    assert main(args) == 0
    table = capsys.readouterr().out
    import re

    bf16_line = next(line for line in table.splitlines() if line.startswith("| OpenVINO | bf16 | 1 |"))
    assert re.search(r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|$", bf16_line), bf16_line
    assert "3 interleaved rounds" in table


def test_rows_without_a_baseline_at_their_batch_size_have_no_speedup(demo_export, capsys):
    assert main(["--model", str(demo_export.path), "--providers", "opencv", "--iterations", "1", "--warmup", "0",
                 "--no-cold-start", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert "speedup" not in row and "rounds" not in row and row["calls"] == 1


def test_unreadable_and_oversized_images_are_counted_not_fatal(demo_export, tmp_path, capsys):
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    for name, side in (("a.png", 60), ("b.png", 70), ("big.png", 200)):
        (images / name).write_bytes(cv2.imencode(".png", np.full((side, side, 3), 90, np.uint8))[1].tobytes())
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["--model", str(demo_export.path), "--providers", "cpu", "--iterations", "1", "--warmup", "0",
                 "--images", str(images), "--files-batch-size", "2", "--max-pixels", "10000", "--no-cold-start",
                 "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files["images"] == 4 and files["decode"]["unreadable"] == 2
    assert files["runtimes_run"]["images"] == 4 and files["runtimes_run"]["failed"] == 2
