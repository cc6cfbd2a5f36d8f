"""converters.annotate: a model from elsewhere, built to Caffe's conventions, gives the original's answers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converters.annotate as annotate_mod
from runtimes.cli import run_cli
from runtimes.errors import ModelSpecError, ProviderError
from runtimes.run import classify
from runtimes.spec import ModelSpec
from samples.generate import IMAGES_DIR, LABELS_FILE
from tests.helpers import provider_param
from tests.runtimes.test_no_torch import run_module_without_torch

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # BVLC GoogLeNet's, in 0-255 levels


@pytest.fixture(scope="module")
def caffe_model(demo_export, tmp_path_factory) -> Path:
    """The demo model as the ONNX Model Zoo ships Caffe's GoogLeNet: input ``data_0``
    [1, 3, 224, 224] of BGR levels minus a per-channel mean (no std), a Softmax at the end
    (output ``prob_1``), and no metadata of this toolkit."""
    model = onnx.load(str(demo_export.path))
    spec, graph = demo_export.spec, model.graph
    mean, std = np.array(spec.mean), np.array(spec.std)
    # The demo's input, per RGB channel: ((x + caffe_mean) / 255 - mean) / std, x = data_0 in RGB order.
    gain = 1 / (255 * std)
    shift = (np.array(CAFFE_MEAN_BGR[::-1]) / 255 - mean) / std
    graph.initializer.extend([
        numpy_helper.from_array(np.array([2, 1, 0], np.int64), "bgr_to_rgb"),
        numpy_helper.from_array(gain.astype(np.float32).reshape(1, 3, 1, 1), "gain"),
        numpy_helper.from_array(shift.astype(np.float32).reshape(1, 3, 1, 1), "shift"),
    ])
    nodes = [
        helper.make_node("Gather", ["data_0", "bgr_to_rgb"], ["rgb"], axis=1),
        helper.make_node("Mul", ["rgb", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], [spec.input_name]),
        *graph.node,
        helper.make_node("Softmax", [spec.output_name], ["prob_1"], axis=1),
    ]
    del graph.node[:], graph.input[:], graph.output[:], graph.value_info[:], model.metadata_props[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224]))
    graph.output.append(helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, spec.num_classes]))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("caffe") / "googlenet-caffe.onnx"
    onnx.save(model, str(path))
    return path


def _records(model: Path, provider: str = "cpu") -> list[dict]:
    out = io.StringIO()
    assert classify([str(IMAGES_DIR)], model=model, provider=provider, json_lines=True, exact=True, out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def annotated(caffe_model, tmp_path_factory):
    """(path, stdout) of the Caffe-style model annotated by the CLI, in an interpreter without torch."""
    out = tmp_path_factory.mktemp("annotated") / "caffe.onnx"
    proc = run_module_without_torch(
        "converters.annotate", str(caffe_model), "--labels", str(LABELS_FILE), "--out", str(out),
        "--channel-order", "BGR", "--scale", "255", "--mean", *map(str, CAFFE_MEAN_BGR),
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_annotate_says_what_it_inferred_from_the_graph(annotated):
    path, stdout = annotated
    assert "inferred: input 'data_0' float32 [1, 3, 224, 224]: the graph's only input" in stdout
    assert "inferred: crop 224: the input's fixed size" in stdout and "inferred: resize 256" in stdout
    assert "inferred: output 'prob_1': probabilities, as the graph ends in Softmax" in stdout
    assert "inferred: std 1 1 1: a mean without a std" in stdout
    assert "the graph takes batches of exactly 1" in stdout
    spec = ModelSpec.from_onnx(path)
    assert (spec.input_name, spec.output_name, spec.output_kind, spec.scale) == ("data_0", "prob_1", "probabilities", 255.0)
    assert (spec.mean, spec.std, spec.channel_order, spec.layout) == (CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), "BGR", "")


@pytest.mark.parametrize("provider", [provider_param(p) for p in ("cpu", "openvino", "opencv")])
def test_annotated_model_gives_the_original_answers(annotated, demo_export, provider):
    """Same labels and probabilities as the demo model it wraps, in batches of 8 through a
    graph fixed at batch 1: no second softmax, Caffe's levels, mean and channel order."""
    theirs, ours = _records(annotated[0], provider), _records(demo_export.path)
    assert len(ours) == 18 and [r["image"] for r in theirs] == [r["image"] for r in ours]
    for a, b in zip(theirs, ours):
        assert [s["label"] for s in a["topk"]] == [s["label"] for s in b["topk"]]
        np.testing.assert_allclose([s["prob"] for s in a["topk"]], [s["prob"] for s in b["topk"]], atol=1e-4)
    assert max(r["topk"][0]["prob"] for r in ours) > 0.9  # confident: a second softmax would flatten it


def test_a_model_from_elsewhere_points_to_annotate(caffe_model):
    with pytest.raises(ModelSpecError, match=r"no googlenet_deploy\.spec metadata.*python -m converters\.annotate MODEL"):
        classify([str(IMAGES_DIR)], model=caffe_model, out=io.StringIO())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input-name", "data"], "the spec's input is 'data', but the graph's input is 'data_0' float32 [1, 3, 224, 224]"),
        (["--labels", "{eight_labels}"], "the spec has 8 labels, but the graph's output is 'prob_1' float32 [1, 9]"),
        (["--crop", "227"], "the spec (crop_size 227) feeds float32 [N, 3, 227, 227], but the graph's input is 'data_0'"),
        (["--out", "{model}"], "is the model itself; annotate writes a copy"),
    ],
)
def test_options_that_do_not_fit_the_graph_are_one_line(caffe_model, tmp_path, capsys, args, message):
    eight_labels = tmp_path / "eight.txt"
    eight_labels.write_text("\n".join(LABELS_FILE.read_text().split()[:8]) + "\n")
    out = tmp_path / "out.onnx"
    argv = [str(caffe_model), "--labels", str(LABELS_FILE), "--out", str(out), "--scale", "255", "--channel-order", "BGR"]
    argv += [a.format(eight_labels=eight_labels, model=caffe_model) for a in args]
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: annotate_mod.main(argv))
    stderr = capsys.readouterr().err
    assert info.value.code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists()


def test_channel_order_is_case_insensitive_and_checked(caffe_model, tmp_path):
    upper = annotate_mod.annotate(caffe_model, LABELS_FILE, out=tmp_path / "a.onnx", scale=255, channel_order="BGR")
    lower = annotate_mod.annotate(caffe_model, LABELS_FILE, out=tmp_path / "b.onnx", scale=255, channel_order="bgr")
    fields = lambda spec: (spec.channel_order, spec.mean, spec.std)  # noqa: E731
    assert fields(lower.spec) == fields(upper.spec) == ("BGR", tuple(m * 255 for m in (0.406, 0.456, 0.485)),
                                                        tuple(s * 255 for s in (0.225, 0.224, 0.229)))
    with pytest.raises(annotate_mod.ExportError, match="must be RGB or BGR, got 'GRB'"):
        annotate_mod.annotate(caffe_model, LABELS_FILE, out=tmp_path / "c.onnx", channel_order="grb")


def test_free_height_and_width_run_on_every_runtime(tmp_path):
    """A graph whose input is [N, 3, H, W] (fully convolutional), annotated with a crop."""
    weights = np.random.default_rng(0).standard_normal((3, 9)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "free_hw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 9])], [numpy_helper.from_array(weights, "w")],
    )
    model = tmp_path / "free.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    annotated = annotate_mod.annotate(model, LABELS_FILE, crop=32, resize=36).path
    answers = {p: [(r["image"], r["topk"][0]["label"]) for r in _records(annotated, p)] for p in ("cpu", "openvino")}
    assert answers["openvino"] == answers["cpu"] and len(answers["cpu"]) == 18
    # OpenCV 5 runs it too; OpenCV 4.x cannot import a graph with a free height and width
    # (its MatMul sees K = 0) and says so in one line at load.
    try:
        opencv = [(r["image"], r["topk"][0]["label"]) for r in _records(annotated, "opencv")]
    except ProviderError as exc:
        assert cv2.__version__.startswith("4.") and str(exc).startswith("opencv: cv2.dnn cannot import "), exc
        assert "\n" not in str(exc)
    else:
        assert opencv == answers["cpu"]
