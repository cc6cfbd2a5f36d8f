"""Models that int8 breaks, made from the demo export, for the quantize gate and --repair tests.

- ``outliers``: at the chosen Conv -> Relu -> Conv pairs, one output channel of the first
  Conv is multiplied by ``scale`` and the matching input weights of the second divided by
  it. Relu(s x) = s Relu(x) for s > 0, so the fp32 function is unchanged (PyTorch's
  recorded answers still hold, copied beside it); int8's one scale per tensor is not.
- ``broken_weights``: at the chosen Convs, one input channel is made dead (the Conv that
  makes it has that output channel's weights and bias zeroed: the channel quietest on the
  seeded inputs, so the function changes least), then that channel's weights
  in the chosen Conv are set 1000 times its largest weight. 0 x w = 0, so fp32 does not
  see them, but each output channel's int8 weight scale is set by them and the real
  weights round to zero: no activation range, calibration or equalization can fix it,
  only fp32 weights. The dead channel changes the function a little, so the model's
  reference answers are re-recorded from ONNX Runtime CPU (within 1e-5 of what PyTorch would give).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from converters.equalize import pairs

# The places the tests use: the stem (conv2 -> conv3), and inception 3b, 4b and 4e.
OUTLIER_PLACES = (0, 3, 8, 13)


def _arrays(model) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _own(model, node, slot: int) -> onnx.TensorProto:
    """``node``'s initializer in input ``slot``, copied first when another node reads it too."""
    from converters.equalize import _own as own

    initializers = _arrays(model)
    own(model, node, slot, initializers)
    return _arrays(model)[node.input[slot]]


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))


def outliers(src: Path, dst: Path, places=OUTLIER_PLACES, scale: float = 512.0) -> list[str]:
    """Write the outlier model beside its copied reference answers; returns the second Convs' names."""
    model = onnx.load(str(src))
    nodes = {n.name: n for n in model.graph.node}
    found = pairs(model)
    seconds = []
    for k in places:
        a, b = nodes[found[k].first], nodes[found[k].second]
        wa, ba, wb = (_own(model, node, slot) for node, slot in ((a, 1), (a, 2), (b, 1)))
        w1, b1, w2 = (numpy_helper.to_array(t).copy() for t in (wa, ba, wb))
        channel = int(np.argmax(np.abs(w1).reshape(len(w1), -1).max(axis=1)))  # a live, wide channel
        w1[channel] *= scale
        b1[channel] *= scale
        w2[:, channel] /= scale
        for tensor, value in ((wa, w1), (ba, b1), (wb, w2)):
            _set(tensor, value)
        seconds.append(b.name)
    onnx.save(model, str(dst))
    shutil.copy(src.with_name(src.stem + ".reference.npz"), dst.with_name(dst.stem + ".reference.npz"))
    return seconds


def broken_weights(src: Path, dst: Path, layers: list[str]) -> None:
    """Write the broken-weights model (``layers``: Conv node names, each fed by Relu(Conv))
    with its reference answers re-recorded."""
    model = onnx.load(str(src))
    producers = {out: n for n in model.graph.node for out in n.output}
    nodes = {n.name: n for n in model.graph.node}
    for name in layers:
        layer = nodes[name]
        relu = producers[layer.input[0]]
        maker = producers[relu.input[0]]
        assert relu.op_type == "Relu" and maker.op_type == "Conv", (relu.op_type, maker.op_type)
        wa, ba, wl = _own(model, maker, 1), _own(model, maker, 2), _own(model, layer, 1)
        w1, b1, w = (numpy_helper.to_array(t).copy() for t in (wa, ba, wl))
        channel = _quietest_channel(src, relu.output[0])  # the function changes least
        w1[channel], b1[channel] = 0.0, 0.0  # Relu(0) = 0: the channel is dead
        w[:, channel] = 1000.0 * np.abs(w).max()
        for tensor, value in ((wa, w1), (ba, b1), (wl, w)):
            _set(tensor, value)
    onnx.save(model, str(dst))
    rerecord(src.with_name(src.stem + ".reference.npz"), dst)


def _quietest_channel(model_path: Path, tensor: str) -> int:
    """The channel of ``tensor`` with the smallest mean on the model's seeded reference inputs."""
    from runtimes.cut import run_reference
    from runtimes.reference import Reference

    reference = Reference.load(model_path.with_name(model_path.stem + ".reference.npz"))
    model = onnx.load(str(model_path))
    values = np.concatenate([run_reference(model, {model.graph.input[0].name: x}, [tensor])[tensor]
                             for x in reference.inputs])
    return int(np.argmin(values.mean(axis=(0, 2, 3))))


def rerecord(reference_path: Path, model_path: Path) -> None:
    """Write ``model_path``'s reference answers: ``reference_path``'s inputs and images, answered by ONNX Runtime CPU."""
    import onnxruntime as ort

    from runtimes import preprocess
    from runtimes.reference import Reference
    from runtimes.spec import ModelSpec

    old = Reference.load(reference_path)
    spec = ModelSpec.from_onnx(model_path)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def answer(x: np.ndarray) -> np.ndarray:
        return session.run(None, {spec.input_name: x})[0]

    images = preprocess.stack([preprocess.load(data, spec, name) for name, data in zip(old.image_names, old.images)])
    Reference(old.inputs, tuple(answer(x) for x in old.inputs), old.image_names, old.images,
              answer(images)).save(model_path.with_name(model_path.stem + ".reference.npz"))
