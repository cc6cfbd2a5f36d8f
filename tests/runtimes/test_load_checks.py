"""A spec that does not fit its graph is one line at load, naming both sides, on every runtime."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtimes.adapters import create_runner
from runtimes.errors import ModelSpecError
from runtimes.graph import GraphIO, Tensor, read_graph_io
from runtimes.spec import METADATA_KEY
from samples.generate import IMAGES_DIR
from tests.helpers import provider_param

REPO = Path(__file__).resolve().parents[2]


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    for value in (*model.graph.input, *model.graph.output):
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _set_spec(model: onnx.ModelProto, spec) -> None:
    next(p for p in model.metadata_props if p.key == METADATA_KEY).value = spec.to_json()


CASES = {  # name -> (change to the demo model, what the one-line error says)
    "renamed input": (lambda m, s: _rename(m, "input", "data"), "the spec's input is 'input', but the graph's input is 'data' float32 [batch, 3, 224, 224]"),
    "renamed output": (lambda m, s: _rename(m, "logits", "scores"), "the spec's output is 'logits', but the graph's output is 'scores' float32 [batch, 9]"),
    "fewer labels": (lambda m, s: _set_spec(m, dataclasses.replace(s, labels=s.labels[:8])), "the spec has 8 labels, but the graph's output is 'logits' float32 [batch, 9]"),
    "other crop": (lambda m, s: _set_spec(m, dataclasses.replace(s, crop_size=256)), "the spec (crop_size 256) feeds float32 [N, 3, 256, 256], but the graph's input is 'input' float32 [batch, 3, 224, 224]"),
}


@pytest.fixture(scope="module")
def mismatched(demo_export, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mismatched")
    paths = {}
    for name, (change, _) in CASES.items():
        model = onnx.load(str(demo_export.path))
        change(model, demo_export.spec)
        paths[name] = folder / f"{name.replace(' ', '_')}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("provider", [provider_param(p) for p in ("cpu", "cuda", "tensorrt", "openvino", "opencv")])
def test_a_spec_that_does_not_fit_the_graph_fails_at_load(mismatched, provider, case):
    runner = create_runner(provider, mismatched[case])
    with pytest.raises(ModelSpecError) as info:
        runner.load()
    message = str(info.value)
    assert "\n" not in message and CASES[case][1] in message, message
    assert message.endswith("fix the spec with `python -m converters.annotate`")
    assert runner.active_providers() == []  # closed again


def test_run_cli_says_it_in_one_line(mismatched):
    image = sorted(IMAGES_DIR.glob("*.jpg"))[0]
    proc = subprocess.run(
        [sys.executable, "-m", "runtimes.run", "--model", str(mismatched["renamed input"]), str(image)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and CASES["renamed input"][1] in proc.stderr, proc.stderr


def _as_onnx_reads_it(model: onnx.ModelProto) -> GraphIO:
    def tensor(value) -> Tensor:
        kind = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value if d.HasField("dim_value") or d.dim_param else "?" for d in kind.shape.dim)
        return Tensor(value.name, kind.elem_type, dims if kind.HasField("shape") else None)

    weights = {i.name for i in model.graph.initializer}
    return GraphIO(tuple(tensor(v) for v in model.graph.input if v.name not in weights), tuple(map(tensor, model.graph.output)),
                   {p.key: p.value for p in model.metadata_props})


def test_the_reader_agrees_with_onnx_on_an_export(demo_export):
    model = onnx.load(str(demo_export.path))
    assert read_graph_io(demo_export.path) == _as_onnx_reads_it(model) != GraphIO((), (), {})
    assert read_graph_io(model.SerializeToString()) == read_graph_io(demo_export.path)


def test_the_reader_skips_weights_listed_as_inputs_and_reads_every_kind_of_dim():
    """Old IR versions list initializers among the inputs; dims may be fixed, named, -1, unset or absent."""
    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Identity", ["y"], ["z"])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, None, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 4, 5, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    model = helper.make_model(graph, ir_version=3, opset_imports=[helper.make_opsetid("", 9)])
    read = read_graph_io(model.SerializeToString())
    assert read == _as_onnx_reads_it(model)
    assert read.inputs == (Tensor("x", TensorProto.FLOAT, (-1, 3, "?", 8)),)
    assert read.outputs == (Tensor("y", TensorProto.FLOAT16, ("n", 4, 5, 8)), Tensor("z", TensorProto.FLOAT, None))
    assert read.fixed_batch is None


# b"8\x01": field 7 (the graph) as a varint, which protobuf itself would skip
@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x3a\xff\xff\x7f", b"8\x01", "a truncated export"])
def test_a_file_that_is_not_onnx_is_one_line(tmp_path, demo_export, data):
    path = tmp_path / "m.onnx"
    path.write_bytes(demo_export.path.read_bytes()[:100_000] if data == "a truncated export" else data)
    with pytest.raises(ModelSpecError, match=rf"^{path}: not a readable ONNX model \(.+\)$"):
        read_graph_io(path)
