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

    from runtimes.race import percentile

    rng = np.random.default_rng(7)
    for n in range(1, 121):
        times = list(rng.lognormal(0, 0.5, n))
        for q in (0.5, 0.9, 0.99):
            assert percentile(times, q) == np.percentile(times, 100 * q, method="nearest"), (n, q)


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
    model = _copy_model(demo_export.path, tmp_path / "alone")  # no fp16 variant beside it: that row is a skip
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(IMAGES_DIR.glob("*.jpg"))[:6]:
        (images / path.name).write_bytes(path.read_bytes())
    plot = tmp_path / "bench.png"
    args = ["--model", str(model), "--ckpt", str(demo_ckpt), "--providers", "torch,cpu", "--batch-sizes", "1,2",
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
    threads = report["threads"]
    assert f"| ONNX Runtime CPU | fp32 | 2 | {threads} |" in table
    assert f"| PyTorch eager (reference) | fp16 | 1 | {threads} | skipped" in table
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
    result = cold_start(["--model", str(demo_export.path)], runs=1)
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

    def watched(provider, path, batch, *rest, **named):  # the real measurement, in the order the bench asks for it
        measured.append((provider, (rest[-1] or {}).get("precision", "fp32")))
        return measure(provider, path, batch, *rest, **named)

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


def _copy_model(model, folder):
    """The model alone in ``folder``: no variant, and no checkpoint beside it."""
    import shutil

    folder.mkdir()
    return shutil.copyfile(model, folder / model.name)


def test_the_graph_reader_sees_what_onnx_sees(demo_export):
    """Nodes, their int and string attributes, and the initializers' dims, read without the onnx package."""
    import onnx

    from runtimes.graph import read_graph

    model = onnx.load(str(demo_export.path))
    kinds = {onnx.AttributeProto.INT: "i", onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.STRING: "s"}

    def value(a):
        found = getattr(a, kinds[a.type])
        return found.decode() if isinstance(found, bytes) else tuple(found) if a.type == onnx.AttributeProto.INTS else found

    expected = [(n.op_type, tuple(n.input), tuple(n.output), {a.name: value(a) for a in n.attribute if a.type in kinds})
                for n in model.graph.node]
    graph = read_graph(demo_export.path)
    assert [(n.op_type, n.inputs, n.outputs, n.attributes) for n in graph.nodes] == expected
    assert graph.initializers == {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert any(n.attributes.get("pads") == (0, 0, 1, 1) for n in graph.nodes)  # the exporter's asymmetric pool padding


def test_variants_count_the_flops_of_their_fp32_parent(demo_export, demo_fp16, demo_int8):
    """fp16 (whose input Cast ONNX Runtime's converter appends at the end of the node list) and
    int8 (whose weights reach each Conv through a DequantizeLinear) do the same arithmetic."""
    flops = model_flops(demo_export.path)
    assert model_flops(demo_fp16) == flops and model_flops(demo_int8.path) == flops


WINDOWS = {  # op, attributes, input size: cases where a rule of ONNX Runtime's output size matters
    "conv stride 2, pad 3": ("Conv", {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]}, 224),
    "conv dilation 2": ("Conv", {"kernel_shape": [3, 3], "dilations": [2, 2]}, 17),
    "conv SAME_UPPER, stride 2, odd size": ("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 15),
    "conv VALID, stride 3": ("Conv", {"kernel_shape": [2, 2], "strides": [3, 3], "auto_pad": "VALID"}, 16),
    "pool ceil mode (Caffe)": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 112),
    "pool ceil mode, last window in the pad": (
        "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1}, 6),
    "average pool 7x7": ("AveragePool", {"kernel_shape": [7, 7]}, 7),
    "global pool": ("GlobalAveragePool", {}, 9),
}


@pytest.mark.parametrize("case", WINDOWS)
def test_each_conv_is_sized_as_onnx_runtime_runs_it(case, tmp_path):
    """The layer, then a 1x1 Conv whose FLOPs give away the height and width it was given;
    ONNX Runtime, running the graph, says what they really are."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    op, attributes, side = WINDOWS[case]
    weights = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w1")]
    inputs = ["x"]
    if op == "Conv":
        weights.append(numpy_helper.from_array(np.ones((2, 2, *attributes["kernel_shape"]), np.float32), "w0"))
        inputs.append("w0")
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["a"], **attributes), helper.make_node("Conv", ["a", "w1"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=weights,
    )
    path = tmp_path / "window.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    height, width = session.run(None, {"x": np.zeros((1, 2, side, side), np.float32)})[0].shape[2:]
    first = 2 * height * width * 2 * 2 * int(np.prod(attributes["kernel_shape"])) if op == "Conv" else 0
    assert model_flops(path) == first + 2 * height * width * 4


@pytest.mark.parametrize("how", ["a free image size", "a Transpose on the way"])
def test_a_conv_the_graph_does_not_size_is_named_not_guessed(how, tmp_path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from runtimes.roofline import LimitUnavailable

    free = how == "a free image size"
    nodes = [] if free else [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2])]
    nodes.append(helper.make_node("Conv", ["x" if free else "t", "w"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"] if free else [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")],
    )
    path = tmp_path / "unsized.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    with pytest.raises(LimitUnavailable, match="cannot size Conv 'y' from the graph"):
        model_flops(path)


def test_by_default_every_runtime_here_runs_and_torch_only_with_a_checkpoint(demo_export, demo_ckpt, tmp_path, capsys):
    from runtimes.adapters import available_providers
    from runtimes.bench import default_providers
    from runtimes.spec import ModelSpec

    if "torch" not in available_providers():
        pytest.skip("torch is not installed: nothing to leave out")
    model = _copy_model(demo_export.path, tmp_path / "alone")
    here = [p for p in available_providers() if p != "torch"]
    assert default_providers(model, None) == here
    assert default_providers(model, demo_ckpt) == available_providers()
    beside = model.parent / ModelSpec.from_onnx(model).checkpoint_name
    beside.write_bytes(demo_ckpt.read_bytes())
    assert default_providers(model, None) == available_providers()
    beside.unlink()
    assert main(["--model", str(model), "--iterations", "1", "--warmup", "0", "--no-cold-start", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["provider"] for r in rows] == here and all("median_ms" in r for r in rows), rows


def test_a_skipped_row_gives_its_whole_reason(demo_export, tmp_path, capsys):
    """The torch row without a checkpoint: the table shows the runner's reason, fix included, not its first 120 characters."""
    from runtimes.bench import _markdown

    model = _copy_model(demo_export.path, tmp_path / "alone")
    assert main(["--model", str(model), "--providers", "torch", "--iterations", "1", "--no-cold-start", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["skipped"].startswith("failed to load: torch: pass the checkpoint") and len(row["skipped"]) > 120
    assert row["skipped"].endswith("and no such file is beside the model"), row["skipped"]
    assert f"| PyTorch eager (reference) | fp32 | 1 | {row['threads']} | skipped: {row['skipped']} |||||||" in _markdown(report).splitlines()


def test_a_model_with_nothing_to_count_is_measured_with_a_note_instead_of_a_limit(tmp_path, capsys):
    """The doctor's tiny pooling model has no Conv or Gemm: the rows are measured, the limit is a note."""
    from runtimes.doctor import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny.onnx")
    plot = tmp_path / "bench.png"
    args = ["--model", str(model), "--providers", "cpu", "--iterations", "2", "--warmup", "0", "--no-cold-start"]
    assert main([*args, "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "bound_ms_per_image" not in report and "has no Conv, Gemm or MatMul" in report["limit_note"]
    (row,) = report["rows"]
    assert row["median_ms"] > 0 and "of_limit" not in row
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].endswith(f"no hardware limit: {report['limit_note']}")
    assert "| ONNX Runtime CPU | fp32 | 1 |" in table


def test_progress_is_drawn_on_a_terminal_only(demo_export):
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "runtimes.bench", "--model", str(demo_export.path), "--providers", "cpu",
               "--iterations", "1", "--warmup", "0", "--no-cold-start", "--json"]
    repo = Path(__file__).resolve().parents[2]
    piped = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    terminal, other_end = pty.openpty()
    with subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=other_end) as proc:
        os.close(other_end)
        drawn = b""
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = proc.communicate(timeout=120)
    os.close(terminal)
    assert proc.returncode == 0 and json.loads(out)["rows"][0]["provider"] == "cpu"
    text = drawn.decode()
    assert "\r\x1b[K[1/2] counting FLOPs and measuring the GEMM peak" in text and "\r\x1b[K[2/2] cpu fp32 batch 1" in text
    assert text.endswith("\r\x1b[K"), repr(text)
