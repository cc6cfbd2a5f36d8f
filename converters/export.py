"""Export a GoogLeNet training checkpoint to a verified, aux-free, dynamic-batch ONNX model.

    python -m converters.export --ckpt model.pth [--out artifacts/googlenet.onnx]

Steps: safe load and aux strip -> ONNX export -> full checker and shape inference ->
simplify (onnxsim, else onnxslim, else keep) -> ceil-mode pools to explicit pads ->
LRN to Mul/Conv/Sqrt/Div (``converters.lrn``) ->
embed the preprocessing spec and, apart from it, the provenance -> parity gate on the
exact bytes to be written -> atomic write of the model, its reference answers
(``<name>.reference.npz``: the gate's inputs and a few images, with PyTorch's logits)
and its report.

The model's bytes depend only on the checkpoint's bytes, the options and the library
versions: no path, user name or time goes into them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from converters.errors import ExportError
from runtimes.errors import ImageError, ParityError, first_line
from runtimes.spec import DEFAULT_MODEL, METADATA_KEY, PROVENANCE_KEY, ModelSpec
from runtimes import __version__
from runtimes.versions import package_versions

# Opset 17 is the newest that TensorRT 8.6 (JetPack 5), OpenCV DNN 4.x and older
# OpenVINO builds all read; GoogLeNet uses no operator that needs a newer one.
DEFAULT_OPSET = 17
# Opset 10 brought MaxPool's ceil_mode; the TorchScript exporter stops at 20.
OPSETS = range(10, 21)
INPUT_SIZE = ModelSpec(labels=()).crop_size
IMAGENET_LABELS = Path(__file__).with_name("imagenet_classes.txt")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Images whose PyTorch logits travel with the model: enough to cover preprocessing on a
# device, few enough to stay small (the 18 demo JPEGs take 315 KB).
MAX_VERIFY_IMAGES = 32

log = logging.getLogger("converters.export")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    report_path: Path
    reference_path: Path
    checkpoint: Path  # as given: the model and report record only its name and sha256
    spec: ModelSpec
    report: dict


def report_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".report.json")


def read_labels(labels: str | Path | None, num_classes: int | None) -> tuple[str, ...]:
    """Labels from a file (one per line), ImageNet's for 1000 classes, else class_0..N-1.

    ``num_classes`` None takes as many as the file has (at least one).
    """
    if labels is None:
        if num_classes == 1000:
            labels = IMAGENET_LABELS
        else:
            return tuple(f"class_{i}" for i in range(num_classes))
    try:
        names = [line.strip() for line in Path(labels).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read labels file {labels}: {exc}") from None
    while names and not names[-1]:
        names.pop()
    if num_classes is None and not names:
        raise ExportError(f"labels file {labels} is empty; give one class name a line")
    if num_classes is not None and len(names) != num_classes:
        raise ExportError(f"labels file {labels} has {len(names)} labels but the checkpoint has {num_classes} classes")
    return tuple(names)


def _labels(labels: str | Path | None, ckpt) -> tuple[tuple[str, ...], str]:
    """The model's labels and where they came from: --labels, else the checkpoint's own class names, else the default."""
    if labels is not None:
        return read_labels(labels, ckpt.num_classes), Path(labels).name
    if ckpt.classes:
        if len(ckpt.classes) != ckpt.num_classes:
            raise ExportError(
                f"{ckpt.path.name}: its {ckpt.classes_key!r} names {len(ckpt.classes)} classes but fc has "
                f"{ckpt.num_classes}; give the right names with --labels FILE"
            )
        return ckpt.classes, f"the checkpoint's {ckpt.classes_key!r}"
    if ckpt.num_classes == 1000:
        return read_labels(None, 1000), "ImageNet (no --labels, none in the checkpoint)"
    return read_labels(None, ckpt.num_classes), "class_0..N-1 (no --labels, none in the checkpoint)"


def _check_destination(out: Path) -> None:
    """Fail before the minutes of work if the model could not be written anyway."""
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file path such as {out / 'googlenet.onnx'}")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write {out}: {parent} is not a writable directory")


def _torch_to_onnx(model, opset: int):
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), _as_export_error("torch.onnx.export failed"):
        warnings.simplefilter("ignore")  # the tracer's shape-inference chatter
        # dynamo=False: the TorchScript exporter. The dynamo exporter (the default
        # since torch 2.9) needs onnxscript and gains nothing on a static CNN; the
        # tracer emits plain Conv/Relu/MaxPool/Concat/LRN with a symbolic batch dim.
        torch.onnx.export(
            model,
            torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _as_export_error(what: str):
    """Turn a library's exception into one ExportError line."""
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:  # torch and onnx raise many unrelated types
        raise ExportError(f"{what}: {first_line(exc)}") from None


def _check(model) -> None:
    import onnx

    with _as_export_error("exported graph fails onnx.checker"):
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def simplify(model):
    """(model, tool): onnxsim, else onnxslim, else the graph unchanged. Never fatal."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified, "onnxsim"
        reason = "onnxsim's own check failed"
    except Exception as exc:  # a simplifier bug must not cost the export
        reason = f"onnxsim failed: {type(exc).__name__}: {exc}"
    log.warning("%s; trying onnxslim", reason)
    try:
        import onnxslim

        return onnxslim.slim(model), "onnxslim"
    except Exception as exc:
        log.warning("onnxslim failed too (%s: %s); keeping the unsimplified graph", type(exc).__name__, exc)
        return model, "none"


def _assert_io(model, num_classes: int) -> None:
    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]  # old IRs list weights as inputs
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"expected one input and one output, found {len(inputs)} and {len(model.graph.output)}")
    (inp,), (out,) = inputs, model.graph.output
    if dims(inp) != ["batch", 3, INPUT_SIZE, INPUT_SIZE] or dims(out) != ["batch", num_classes]:
        raise ExportError(f"unexpected graph I/O after simplification: {inp.name}{dims(inp)} -> {out.name}{dims(out)}")


def _serialized(model, spec: ModelSpec, provenance: dict) -> bytes:
    """The model's bytes with the spec and, apart from it, the provenance in its metadata.

    Metadata goes in after simplification, which may drop it.
    """
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(
        model, {METADATA_KEY: spec.to_json(), PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}
    )
    model.producer_name, model.producer_version = "googlenet-deploy", provenance["toolkit"]
    return model.SerializeToString()


def _count_params(model) -> int:
    import numpy as np

    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def _verify_images(folder: str | Path | None, spec: ModelSpec, max_pixels: int | None = None):
    """(names, file bytes, preprocessed batch) of the images whose PyTorch logits travel
    with the model: ``folder``'s (recursively, sorted), or the demo samples'. Read first,
    so a bad image fails the export before any work."""
    from runtimes.preprocess import IMAGE_EXTENSIONS, find_images, load, stack

    if folder is None:
        from samples.generate import IMAGES_DIR

        folder = IMAGES_DIR
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--verify-images {folder} is not a directory of images")
    files = find_images(folder)
    if not files:
        raise ExportError(f"--verify-images {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if len(files) > MAX_VERIFY_IMAGES:
        log.warning("--verify-images %s: keeping the first %d of %d images", folder, MAX_VERIFY_IMAGES, len(files))
        files = files[:MAX_VERIFY_IMAGES]
    names = tuple(p.relative_to(folder).as_posix() for p in files)
    try:
        data = tuple(p.read_bytes() for p in files)
        batch = stack([load(d, spec, name, max_pixels=max_pixels) for d, name in zip(data, names)])
    except OSError as exc:
        raise ExportError(f"--verify-images: cannot read {exc.filename}: {exc.strerror}") from None
    except ImageError as exc:
        raise ExportError(f"--verify-images: {exc}") from None
    return names, data, batch


def export(
    ckpt: str | Path,
    out: str | Path = DEFAULT_MODEL,
    *,
    labels: str | Path | None = None,
    layout: str | None = None,
    opset: int = DEFAULT_OPSET,
    transform_input: bool | None = None,
    simplify_graph: bool = True,
    keep_ceil_pools: bool = False,
    keep_lrn: bool = False,
    verify_images: str | Path | None = None,
    max_pixels: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``ckpt`` to ``out``; see the module docstring. Raises ToolkitError subclasses.

    ``transform_input`` defaults to on for the torchvision layout (its ImageNet weights
    and models fine-tuned from them need it) and off for the paper layout.
    ``keep_ceil_pools`` keeps ceil-mode MaxPools instead of rewriting them to explicit
    pads. ``keep_lrn`` keeps ONNX's LRN op instead of the Mul/Conv/Sqrt/Div form that
    ONNX Runtime runs faster (the rewrite is dropped, with a warning, if it misses
    parity). ``verify_images`` is a folder of images whose PyTorch logits are kept with the
    model (default: the demo sample images); ``max_pixels`` is their decompression-bomb
    guard (default: ``runtimes.preprocess.MAX_PIXELS``).
    """
    import onnx

    from converters.checkpoint import build_model, load_checkpoint
    from converters.googlenet import count_parameters
    from converters.parity import check_parity, seeded_inputs, torch_logits
    from converters.lrn import rewrite_lrn
    from converters.portable import ceil_mode_pools, rewrite_ceil_pools
    from runtimes.atomic import write_bytes, write_text
    from runtimes.reference import Reference, reference_path_for

    out = Path(out)
    _check_destination(out)
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; use {OPSETS.start} to {OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    timings = {}
    start = t0 = time.perf_counter()
    ckpt = load_checkpoint(ckpt, layout=layout)
    if transform_input is None:
        transform_input = ckpt.layout == "torchvision"
    model = build_model(ckpt, transform_input=transform_input)
    names, labels_from = _labels(labels, ckpt)
    spec = ModelSpec(
        labels=names,
        layout=ckpt.layout,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        transform_input=transform_input,
        checkpoint_name=ckpt.path.name,
        checkpoint_sha256=ckpt.sha256,
    )
    image_names, images, image_batch = _verify_images(verify_images, spec, max_pixels)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_model = _torch_to_onnx(model, opset)
    _check(onnx_model)
    timings["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nodes_exported = len(onnx_model.graph.node)
    tool = "disabled"
    if simplify_graph:
        onnx_model, tool = simplify(onnx_model)
        _check(onnx_model)
    nodes_simplified = len(onnx_model.graph.node)
    rewritten, kept = ([], []) if keep_ceil_pools else rewrite_ceil_pools(onnx_model)
    if rewritten:
        _check(onnx_model)
    for reason in kept:
        log.warning("kept a ceil-mode MaxPool: %s", reason)
    _assert_io(onnx_model, ckpt.num_classes)
    timings["simplify_s"] = time.perf_counter() - t0

    native_lrn, lrn_count = onnx_model, 0
    if not keep_lrn:
        onnx_model = onnx.ModelProto()
        onnx_model.CopyFrom(native_lrn)
        lrn_count = rewrite_lrn(onnx_model)
        if lrn_count:
            _check(onnx_model)

    provenance = {
        "toolkit": __version__,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "opset": opset,
        "simplifier": tool,
        "ceil_mode_pools": {"rewritten": len(rewritten), "kept": len(ceil_mode_pools(onnx_model))},
        "lrn": f"rewritten to Mul/Conv/Sqrt/Div ({lrn_count})" if lrn_count else "native",
        "versions": package_versions("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxsim", "onnxslim"),
    }
    data = _serialized(onnx_model, spec, provenance)

    t0 = time.perf_counter()
    cases = [(x, torch_logits(model, x)) for x in (seeded_inputs(b, INPUT_SIZE, seed) for b in (1, 4))]
    try:
        stats = check_parity(model, data, cases=cases)
    except ParityError as exc:
        if not lrn_count:
            raise
        log.warning("the LRN rewrite misses parity (%s); keeping the native LRN", exc)
        onnx_model, provenance["lrn"] = native_lrn, "native (the rewrite missed parity)"
        data = _serialized(onnx_model, spec, provenance)
        stats = check_parity(model, data, cases=cases)
    timings["verify_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = Reference(
        inputs=tuple(x for x, _ in cases),
        input_logits=tuple(y for _, y in cases),
        image_names=image_names,
        images=images,
        image_logits=torch_logits(model, image_batch),
    )
    timings["reference_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    report = {
        "model": out.name,
        "checkpoint": {"name": ckpt.path.name, "sha256": ckpt.sha256, "wrapper": ckpt.wrapper, "layout": ckpt.layout},
        "num_classes": ckpt.num_classes,
        "labels_from": labels_from,
        "transform_input": transform_input,
        "aux_stripped": {"keys": ckpt.aux_keys_stripped, "parameters": ckpt.aux_params_stripped},
        "parameters": {"torch": count_parameters(model), "onnx_initializers": _count_params(onnx_model)},
        "nodes": {"exported": nodes_exported, "simplified": nodes_simplified, "final": len(onnx_model.graph.node)},
        "ops": dict(Counter(n.op_type for n in onnx_model.graph.node)),
        "provenance": provenance,
        "size_bytes": len(data),
        "parity": [s.as_dict() for s in stats],
        "reference": {"file": reference_path_for(out).name, "seeded_batches": [1, 4], "images": len(images)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    try:
        write_bytes(out, data)
        reference.save(reference_path_for(out))
        report_path = write_text(report_path_for(out), json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return ExportResult(
        path=out, report_path=report_path, reference_path=reference_path_for(out), checkpoint=ckpt.path, spec=spec, report=report
    )


def _parse_args(argv=None) -> argparse.Namespace:
    from runtimes.cli import add_max_pixels

    parser = argparse.ArgumentParser(
        prog="python -m converters.export",
        description="Export a GoogLeNet checkpoint to a verified, aux-free ONNX model.",
    )
    parser.add_argument("--ckpt", required=True, help="training checkpoint (.pth/.pt/.safetensors)")
    parser.add_argument("--out", default=str(DEFAULT_MODEL), help="output model (default: %(default)s)")
    parser.add_argument(
        "--labels",
        help="class names, one per line (default: the checkpoint's own 'classes', 'class_names', 'labels' or "
        "'class_to_idx', else ImageNet's for 1000 classes)",
    )
    parser.add_argument("--layout", help="override layout detection: paper or torchvision")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument(
        "--no-transform-input", dest="transform_input", action="store_false", default=None,
        help="torchvision layout: do not bake transform_input into the graph",
    )
    parser.add_argument("--no-simplify", dest="simplify_graph", action="store_false", help="skip onnxsim/onnxslim")
    parser.add_argument(
        "--keep-ceil-pools", action="store_true",
        help="keep ceil_mode MaxPools (default: rewrite them to explicit pads, which every runtime reads alike)",
    )
    parser.add_argument(
        "--keep-lrn", action="store_true",
        help="keep ONNX's LRN op (default: rewrite it into ops ONNX Runtime runs 1.5x faster; OpenVINO runs both well)",
    )
    parser.add_argument(
        "--verify-images", metavar="DIR",
        help=f"keep PyTorch's logits for up to {MAX_VERIFY_IMAGES} images from DIR with the model (default: the demo samples)",
    )
    add_max_pixels(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    result = export(**vars(args))
    r = result.report
    worst = max(s["max_abs"] for s in r["parity"])
    print(
        f"wrote {result.path} ({r['size_bytes'] / 1e6:.1f} MB, {r['checkpoint']['layout']} layout, "
        f"{r['num_classes']} classes, labels from {r['labels_from']}, aux stripped: {r['aux_stripped']['parameters']:,} params)\n"
        f"nodes {r['nodes']['exported']} -> {r['nodes']['simplified']} ({r['provenance']['simplifier']}) "
        f"-> {r['nodes']['final']} (lrn: {r['provenance']['lrn']}), "
        f"parity max |d| {worst:.2e} at batches {[s['batch'] for s in r['parity']]}, "
        f"total {r['timings_s']['total_s']:.1f} s\nreport {result.report_path}\n"
        f"reference answers {result.reference_path} "
        f"({r['reference']['images']} images, seeded batches {r['reference']['seeded_batches']})"
    )
    return 0


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
