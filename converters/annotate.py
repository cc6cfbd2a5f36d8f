"""Describe an ONNX classifier from elsewhere: write the preprocessing spec and labels into a copy of it.

    python -m converters.annotate MODEL --labels FILE [--mean M M M] [--std S S S] [--scale 255]
        [--channel-order BGR] [--input-name NAME] [--output-kind logits|probabilities]
        [--resize N] [--crop N] [--out PATH]

The ONNX Model Zoo's BVLC GoogLeNet, say (input ``data_0``; Caffe preprocessing: BGR,
0-255 levels, mean subtraction, no std; a softmax at the end):

    python -m converters.annotate googlenet-12.onnx --labels synset.txt --channel-order BGR --scale 255 --mean 104 117 123

Mean and std are listed in the model's channel order, in units of ``--scale``. What is
not given comes from the graph, and the command says so: the input and output names
(the only ones), the crop (the input's fixed size), the resize (crop x 256/224), the
output kind (probabilities where the graph ends in Softmax), std 1 when only a mean is
given, else ImageNet's mean and std. The spec is then checked against the graph as
every runner checks it when it loads, and the copy is written atomically (default
``<stem>.annotated.onnx`` beside MODEL); the graph and weights are not touched.
Needs onnx, not torch.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from converters.errors import ExportError
from converters.export import read_labels
from runtimes import __version__
from runtimes.cli import positive_int
from runtimes.graph import check_spec, read_graph_io
from runtimes.spec import IMAGENET_MEAN, IMAGENET_STD, METADATA_KEY, OUTPUT_KINDS, PROVENANCE_KEY, ModelSpec, load_onnx

# ImageNet evaluation, torchvision's and Caffe's alike: resize the shorter side to 256, crop 224.
RESIZE_PER_CROP = 256 / 224


@dataclass(frozen=True)
class Annotated:
    path: Path
    spec: ModelSpec
    notes: tuple[str, ...]  # what was inferred from the graph or defaulted, a line each


def annotate(
    model: str | Path,
    labels: str | Path,
    *,
    out: str | Path | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    scale: float = 1.0,
    channel_order: str = "RGB",
    input_name: str | None = None,
    output_kind: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
) -> Annotated:
    """Write ``model`` with a spec built from these options and its graph to ``out``; see the module docstring."""
    import onnx

    from runtimes.atomic import write_bytes
    from runtimes.bundle import sha256_file

    model = Path(model)
    out = Path(out) if out else model.with_name(f"{model.stem}.annotated{model.suffix}")
    if not model.is_file():
        raise ExportError(f"model {model} not found")
    if out.resolve() == model.resolve():
        raise ExportError(f"--out {out} is the model itself; annotate writes a copy, so give another path")
    channel_order = channel_order.upper()
    if channel_order not in ("RGB", "BGR"):
        raise ExportError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
    if not scale > 0 or (std is not None and 0 in std):
        raise ExportError(f"--scale must be positive and --std nonzero, got scale {scale} and std {std}")
    proto = load_onnx(model, external_data=True)
    graph = read_graph_io(model)
    notes = []
    if input_name is None and len(graph.inputs) == 1:
        input_name = graph.inputs[0].name
        notes.append(f"input {graph.inputs[0].describe()}: the graph's only input")
    output_name = graph.outputs[0].name if len(graph.outputs) == 1 else ""
    if crop is None:
        dims = graph.inputs[0].dims if len(graph.inputs) == 1 else None
        if not dims or len(dims) != 4 or not isinstance(dims[2], int) or dims[2] != dims[3] or dims[2] < 1:
            raise ExportError(f"{model}: the graph's input has no fixed square size to take the crop from; pass --crop")
        crop = dims[2]
        notes.append(f"crop {crop}: the input's fixed size")
    if resize is None:
        resize = round(crop * RESIZE_PER_CROP)
        notes.append(f"resize {resize}: crop x 256/224, as ImageNet models are evaluated")
    if output_kind is None:
        producer = next((n.op_type for n in proto.graph.node if output_name in n.output), "nothing")
        output_kind = "probabilities" if producer == "Softmax" else "logits"
        notes.append(f"output {output_name!r}: {output_kind}, as the graph ends in {producer}")
    order = slice(None, None, -1 if channel_order == "BGR" else None)  # ImageNet's are listed in RGB order
    if std is None and mean is not None:
        std = (1.0, 1.0, 1.0)
        notes.append("std 1 1 1: a mean without a std is mean subtraction only, as in Caffe")
    if mean is None:
        mean = tuple(m * scale for m in IMAGENET_MEAN[order])
        notes.append(f"mean {_numbers(mean)}: ImageNet's, in {channel_order} order, for levels 0..{scale:g}")
    if std is None:
        std = tuple(s * scale for s in IMAGENET_STD[order])
        notes.append(f"std {_numbers(std)}: ImageNet's, in {channel_order} order, for levels 0..{scale:g}")
    spec = ModelSpec(
        labels=read_labels(labels, None),
        layout="",  # not one of this toolkit's GoogLeNet layouts
        input_name=input_name or "",
        output_name=output_name,
        resize_size=resize,
        crop_size=crop,
        mean=tuple(map(float, mean)),
        std=tuple(map(float, std)),
        channel_order=channel_order,
        scale=float(scale),
        output_kind=output_kind,
    )
    check_spec(spec, graph, str(model), fix="give options that fit the graph")
    if graph.fixed_batch is not None:
        notes.append(f"the graph takes batches of exactly {graph.fixed_batch}: runners split larger ones")

    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = spec.to_json()
    provenance = {"toolkit": __version__, "annotated_from": {"file": model.name, "sha256": sha256_file(model)}}
    props.setdefault(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))  # an export keeps its own
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    try:
        write_bytes(out, proto.SerializeToString())
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Annotated(out, spec, tuple(notes))


def _numbers(values) -> str:
    return " ".join(f"{v:g}" for v in values)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m converters.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, metavar="MODEL", help="an ONNX classifier with one input and one output")
    parser.add_argument("--labels", required=True, type=Path, help="class names, one a line, in output order")
    parser.add_argument("--mean", nargs=3, type=float, metavar="M", help="per channel, model order, units of --scale")
    parser.add_argument("--std", nargs=3, type=float, metavar="S", help="per channel (default: 1 with --mean, else ImageNet's)")
    parser.add_argument("--scale", type=float, default=1.0, help="pixel levels 0..255 become 0..SCALE first (Caffe: 255; default: 1)")
    parser.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB", help="the model's (Caffe: BGR; default: RGB)")
    parser.add_argument("--input-name", help="the graph's input (default: its only input)")
    parser.add_argument("--output-kind", choices=OUTPUT_KINDS, help="default: probabilities if the graph ends in Softmax")
    parser.add_argument("--resize", type=positive_int, help="shorter side before the center crop (default: crop x 256/224)")
    parser.add_argument("--crop", type=positive_int, help="square input size (default: the graph's input size)")
    parser.add_argument("--out", type=Path, help="where to write the copy (default: MODEL's <stem>.annotated.onnx)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    result = annotate(**vars(_parse_args(argv)))
    spec = result.spec
    print(
        f"wrote {result.path}: {len(spec.labels)} labels; {spec.channel_order}, levels 0..{spec.scale:g}, "
        f"mean {_numbers(spec.mean)}, std {_numbers(spec.std)}; resize {spec.resize_size}, crop {spec.crop_size}; "
        f"{spec.input_name!r} -> {spec.output_name!r} ({spec.output_kind})"
    )
    for note in result.notes:
        print(f"  inferred: {note}")
    return 0


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
