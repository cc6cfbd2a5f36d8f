"""Precision variants of an exported model: static int8 (QDQ) and fp16. Torch-free.

    python -m converters.quantize --model artifacts/googlenet.onnx --precision int8|fp16
        [--calib DIR] [--calib-count N] [--method minmax|entropy|percentile]
        [--keep-fp32 classifier|none|NODE,...] [--out PATH]

- int8: ``quant_pre_process`` (shape inference, graph optimisation), then static QDQ with
  per-channel int8 weights and uint8 activations (U8S8): ONNX Runtime runs it, and
  OpenVINO compiles it (it refuses signed int8 activations, S8S8: "No suitable
  implementations"). The classifier layer stays fp32 by default (``classifier_nodes``);
  ``--keep-fp32`` names other layers, or none. Calibration images go through
  ``runtimes.preprocess`` (exact), in sorted order, so the same folder gives the same model.
- fp16: weights and activations in fp16, inputs and outputs kept fp32 so callers do not
  change.

The variant's spec records its precision and how it was made (the fp32 parent's sha256,
the calibration method, image count and a hash of the file list). Before anything is
written, the variant is loaded on ONNX Runtime CPU and its top-1 agreement with the
parent on the calibration images is measured and reported. Output defaults to
``<stem>.int8.onnx`` / ``<stem>.fp16.onnx`` beside the model, where ``deploy.bundle``
and ``runtimes.bench`` look for variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import ExportError
from runtimes.bundle import sha256_file
from runtimes.progress import Progress
from runtimes.spec import DEFAULT_MODEL, METADATA_KEY, ModelSpec, variant_path

PRECISIONS = ("int8", "fp16")
METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_IMAGES = 100
DEFAULT_CALIBRATION_COUNT = 200
DEMO_CALIBRATION_SEED = 4242  # fresh demo images: neither the committed samples nor training data

log = logging.getLogger("converters.quantize")


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    spec: ModelSpec
    images: int
    top1_agreement: float  # with the fp32 parent, on the calibration images
    size_bytes: int


def calibration_images(
    folder: str | Path | None, count: int, spec: ModelSpec, *, warn: bool = True, max_pixels: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """(N x 3 x H x W inputs, file names) from ``folder`` (sorted, recursive), or fresh demo images."""
    from runtimes import preprocess

    if folder is None:
        from samples.generate import encode_jpeg, generate

        if warn:
            log.warning(
                "no --calib folder: calibrating on %d freshly generated demo images; "
                "calibrate on a few hundred of your own images for a real model", count
            )
        images, labels = generate(count, DEMO_CALIBRATION_SEED)
        names = [f"demo-{DEMO_CALIBRATION_SEED}-{i}-{label}" for i, label in enumerate(labels)]
        return preprocess.stack([preprocess.load(encode_jpeg(img), spec) for img in images]), names
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calib {folder} is not a directory of images")
    files = preprocess.find_images(folder)[:count]
    if not files:
        raise ExportError(f"--calib {folder} holds no images ({', '.join(sorted(preprocess.IMAGE_EXTENSIONS))})")
    tensors, names = [], []
    for path in files:
        try:
            tensors.append(preprocess.load(path.read_bytes(), spec, path.name, max_pixels=max_pixels))
            names.append(path.relative_to(folder).as_posix())
        except (OSError, preprocess.ImageError) as exc:
            log.warning("--calib: skipping %s: %s", path.name, exc)
    if not tensors:
        raise ExportError(f"--calib {folder}: none of the {len(files)} images could be read")
    return preprocess.stack(tensors), names


class _Reader:
    """ONNX Runtime's calibration data reader interface: one image per get_next()."""

    def __init__(self, input_name: str, inputs: np.ndarray, progress: Progress) -> None:
        self.input_name, self.inputs, self.next, self.progress = input_name, inputs, 0, progress

    def get_next(self) -> dict | None:
        if self.next >= len(self.inputs):
            return None
        self.next += 1
        self.progress.step(f"calibrating: image {self.next} of {len(self.inputs)}")
        return {self.input_name: self.inputs[self.next - 1 : self.next]}

    def rewind(self) -> None:
        self.next = 0


# Between the classifier and the graph's output: nothing that changes which class wins.
_PASS_THROUGH = ("Softmax", "Flatten", "Reshape", "Squeeze", "Identity")


def classifier_nodes(model: "onnx.ModelProto") -> list[str]:
    """The layers that make each output's class scores: Gemm, MatMul or Conv, found by
    walking back from the output through shape ops and Softmax.

    int8 keeps them in fp32: GoogLeNet's logits are what is left after large terms of the
    1024-wide product cancel, so int8 there multiplies the error of everything before it.
    On the demo model (450 fresh images) quantizing the fc layer alone moved the logits by
    8.5% (relative L2) and the whole int8 model by 13.8%; keeping fc in fp32 gives 10.6%,
    at no measurable cost in speed on ONNX Runtime or OpenVINO (it is 0.1% of the FLOPs).
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ("Gemm", "MatMul", "Conv") and node.name:
            found.append(node.name)
    return found


def _int8(
    model_path: Path, out: Path, spec: ModelSpec, inputs: np.ndarray, method: str, keep_fp32: Sequence[str],
    progress: Progress,
) -> list[str]:
    """Writes the int8 model; returns the layers it kept in fp32 ("classifier" stands for
    ``classifier_nodes``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        progress.step("shape inference and graph clean-up before quantizing")
        quant_pre_process(str(model_path), str(prepared))
        graph = onnx.load(str(prepared))
        kept = [found for name in keep_fp32 for found in (classifier_nodes(graph) if name == "classifier" else [name])]
        kept = list(dict.fromkeys(kept))
        names = {node.name for node in graph.graph.node}
        unknown = [name for name in kept if name not in names]
        if unknown:
            layers = [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
            raise ExportError(
                f"--keep-fp32: no layer named {', '.join(map(repr, unknown))} in {model_path.name}; "
                f"its layers are named like {', '.join(layers[:2])} ... {layers[-1]}"
            )
        quantize_static(
            str(prepared), str(out), _Reader(spec.input_name, inputs, progress),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate, nodes_to_exclude=kept,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    return kept


def _fp16(model_path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    onnx.save(half, str(out))


def _logits(model: Path, spec: ModelSpec, inputs: np.ndarray) -> np.ndarray:
    from runtimes.adapters import create_runner

    with create_runner("cpu", model, spec) as runner:
        return np.concatenate([runner.infer(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])


def quantize(
    model: str | Path = DEFAULT_MODEL,
    precision: str = "int8",
    *,
    calib: str | Path | None = None,
    calib_count: int = DEFAULT_CALIBRATION_COUNT,
    method: str = "minmax",
    keep_fp32: Sequence[str] = ("classifier",),
    out: str | Path | None = None,
    max_pixels: int | None = None,
) -> QuantizeResult:
    """Write the ``precision`` variant of the fp32 ``model``; see the module docstring."""
    import onnx

    from runtimes.atomic import write_bytes

    model = Path(model)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    parent = ModelSpec.from_onnx(model)
    if parent.precision != "fp32":
        raise ExportError(f"{model} is already a {parent.precision} model; quantize the fp32 export")
    out = Path(out) if out else variant_path(model, precision)
    inputs, names = calibration_images(calib, calib_count, parent, warn=precision == "int8", max_pixels=max_pixels)
    if precision == "int8" and len(inputs) < MIN_CALIBRATION_IMAGES:
        log.warning("calibrating on %d images; %d or more give steadier ranges", len(inputs), MIN_CALIBRATION_IMAGES)
    variant = {"parent_sha256": sha256_file(model)}
    # int8: the clean-up, one step per calibration image, the agreement check; fp16: conversion and check
    progress = Progress(len(inputs) + 2 if precision == "int8" else 2)
    with tempfile.TemporaryDirectory() as tmp, progress:
        made = Path(tmp) / "variant.onnx"
        if precision == "int8":
            kept = _int8(model, made, parent, inputs, method, keep_fp32, progress)
            variant.update({
                "method": method, "images": len(inputs),
                "file_list_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
                "activations": "uint8", "weights": "int8 per channel", "format": "QDQ", "fp32_layers": kept,
            })
        else:
            progress.step("converting the weights to fp16")
            _fp16(model, made)
        spec = dataclasses.replace(parent, precision=precision, variant=variant)
        result = onnx.load(str(made))
        props = {p.key: p.value for p in result.metadata_props}
        props[METADATA_KEY] = spec.to_json()
        del result.metadata_props[:]
        onnx.helper.set_model_props(result, props)
        onnx.save(result, str(made))
        progress.step(f"top-1 agreement with the fp32 model on {len(inputs)} images")
        try:  # it must load and run on ONNX Runtime before it is written anywhere
            agreement = float(np.mean(_logits(made, spec, inputs).argmax(1) == _logits(model, parent, inputs).argmax(1)))
        except Exception as exc:
            raise ExportError(f"the {precision} model does not run on ONNX Runtime CPU: {exc}") from None
        data = made.read_bytes()
    write_bytes(out, data)
    return QuantizeResult(out, spec, len(inputs), agreement, len(data))


def _keep_fp32(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == ["none"] else names


def main(argv: list[str] | None = None) -> int:
    from runtimes.cli import add_max_pixels, positive_int

    parser = argparse.ArgumentParser(prog="python -m converters.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"the fp32 export (default: {DEFAULT_MODEL})")
    parser.add_argument("--precision", required=True, choices=PRECISIONS)
    parser.add_argument("--calib", help="a folder of your own images: int8 calibrates on them, both check agreement on them "
                        "(default: fresh demo images, with a warning for int8)")
    parser.add_argument("--calib-count", type=positive_int, default=DEFAULT_CALIBRATION_COUNT, help="images to use (default: %(default)s)")
    parser.add_argument("--method", default="minmax", choices=METHODS, help="int8 calibration (default: minmax)")
    parser.add_argument(
        "--keep-fp32", default="classifier", metavar="LAYERS",
        help="int8: layers left in fp32, comma-separated ONNX node names and 'classifier' (the layer that makes the "
        "class scores, where int8 costs the most accuracy), or 'none' (default: classifier)",
    )
    parser.add_argument("--out", help="output path (default: <stem>.<precision>.onnx beside the model)")
    add_max_pixels(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    r = quantize(args.model, args.precision, calib=args.calib, calib_count=args.calib_count, method=args.method,
                 keep_fp32=_keep_fp32(args.keep_fp32), out=args.out, max_pixels=args.max_pixels)
    print(
        f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB, {args.precision}); top-1 agreement with the fp32 model on "
        f"the {r.images} {'calibration' if args.precision == 'int8' else 'check'} images: {r.top1_agreement:.1%}"
    )
    return 0


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
