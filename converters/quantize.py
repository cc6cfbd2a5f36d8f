"""Precision variants of an exported model: static int8 (QDQ) and fp16, gated before they are written. Torch-free.

    python -m converters.quantize --model artifacts/googlenet.onnx --precision int8|fp16
        [--calib DIR] [--calib-count N] [--method minmax|entropy|percentile]
        [--keep-fp32 classifier|none|NODE,...] [--targets cpu,openvino,...]
        [--repair [--repair-budget-s S] [--max-fp32-nodes N] [--report PATH]] [--allow-failing] [--out PATH]

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
written, the variant passes its gate (``converters.gate``: runtimes.verify's rule on ONNX
Runtime CPU and every ``--targets`` runtime); one that fails exits 3 and writes nothing,
unless ``--allow-failing``. ``--repair`` (``converters.repair``) makes a failing int8
variant pass: equalization, re-ranging, then the fewest nodes in fp32. Output defaults to
``<stem>.int8.onnx`` / ``<stem>.fp16.onnx`` beside the model, where ``deploy.bundle``
and ``runtimes.bench`` look for variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import ExportError
from converters.gate import Gate, GateResult
from converters.repair import Repaired, Repairer
from runtimes.bundle import sha256_file
from runtimes.errors import ParityError
from runtimes.progress import Progress
from runtimes.spec import DEFAULT_MODEL, METADATA_KEY, ModelSpec, variant_path

PRECISIONS = ("int8", "fp16")
METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_IMAGES = 100
DEFAULT_CALIBRATION_COUNT = 200
DEFAULT_REPAIR_BUDGET_S = 180.0
DEFAULT_MAX_FP32_NODES = 8
DEMO_CALIBRATION_SEED = 4242  # fresh demo images: neither the committed samples nor training data

log = logging.getLogger("converters.quantize")


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

    def __init__(self, input_name: str, inputs: np.ndarray, on_image=None) -> None:
        self.input_name, self.inputs, self.next, self.on_image = input_name, inputs, 0, on_image

    def get_next(self) -> dict | None:
        if self.next >= len(self.inputs):
            return None
        self.next += 1
        if self.on_image is not None:
            self.on_image(self.next)
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


class Int8Maker:
    """Makes int8 files from one fp32 model: pre-processed once (shape inference, clean-up)
    and calibrated once per method, where ONNX Runtime keeps a calibration cache (1.22+);
    the repair makes several variants of the same model."""

    def __init__(self, model_path: Path, spec: ModelSpec, inputs: np.ndarray, work: Path, progress: Progress,
                 *, prepared: bool = False) -> None:
        """``prepared``: ``model_path`` is already pre-processed (an equalized copy of ``self.prepared``)."""
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.spec, self.inputs, self.work, self.progress = spec, inputs, Path(work), progress
        self.work.mkdir(parents=True, exist_ok=True)
        self.prepared = Path(model_path) if prepared else self.work / "prepared.onnx"
        if not prepared:
            progress.step("shape inference and graph clean-up before quantizing")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(model_path), str(self.prepared))
        self.graph = onnx.load(str(self.prepared))
        self.node_names = [node.name for node in self.graph.graph.node]

    def resolve(self, keep_fp32: Sequence[str], source: str) -> list[str]:
        """``keep_fp32``'s names, "classifier" expanded (``classifier_nodes``); an unknown name is
        an ExportError naming ``source``."""
        kept = [found for name in keep_fp32 for found in (classifier_nodes(self.graph) if name == "classifier" else [name])]
        kept = list(dict.fromkeys(kept))
        unknown = [name for name in kept if name not in self.node_names]
        if unknown:
            layers = [n.name for n in self.graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
            raise ExportError(
                f"--keep-fp32: no layer named {', '.join(map(repr, unknown))} in {source}; "
                f"its layers are named like {', '.join(layers[:2])} ... {layers[-1]}"
            )
        return kept

    def make(self, out: Path, method: str, kept: Sequence[str], ranges: dict[str, tuple[float, float]] | None = None) -> None:
        """Write the int8 model to ``out``, ``kept`` nodes in fp32; ``ranges`` sets a tensor's
        calibrated (min, max) instead of ``method``'s."""
        import inspect

        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        cached = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cached["calibration_cache_path"] = str(self.work / f"calibration.{method}.json")
        def on_image(k: int) -> None:
            self.progress.note(f"calibrating ({method}): image {k} of {len(self.inputs)}")
        overrides = {name: [{"rmin": float(low), "rmax": float(high)}] for name, (low, high) in (ranges or {}).items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(self.prepared), str(out), _Reader(self.spec.input_name, self.inputs, on_image),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate, nodes_to_exclude=list(kept),
                extra_options={"CalibTensorRangeSymmetric": False, "TensorQuantOverrides": overrides}, **cached,
            )


def _fp16(model_path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    onnx.save(half, str(out))


class GateFailed(ParityError):
    """The variant fails its gate (and --allow-failing was not given): exit 3, nothing written."""


@dataclass(frozen=True)
class QuantizeResult:
    path: Path | None  # None: not written (a failing gate without --allow-failing)
    spec: ModelSpec
    images: int
    gate: GateResult
    size_bytes: int
    repaired: Repaired | None = None
    report: Path | None = None  # --repair's JSON report

    @property
    def top1_agreement(self) -> float:
        """With the fp32 model on ONNX Runtime CPU, on the calibration (check) images."""
        cpu = next(t for t in self.gate.targets if t.target == "cpu")
        return cpu.figures[-1].top1


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
    targets: Sequence[str] = ("cpu",),
    repair: bool = False,
    repair_budget_s: float = DEFAULT_REPAIR_BUDGET_S,
    max_fp32_nodes: int = DEFAULT_MAX_FP32_NODES,
    allow_failing: bool = False,
    report: str | Path | None = None,
) -> QuantizeResult:
    """Write the ``precision`` variant of the fp32 ``model`` once it passes its gate on every
    target; see the module docstring. A failing variant raises GateFailed, unless
    ``allow_failing``: then it is written with the failure in its spec."""
    from runtimes.atomic import write_bytes, write_text

    model = Path(model)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if repair and precision != "int8":
        raise ExportError("--repair repairs int8 variants; an fp16 variant that fails has nothing to equalize")
    targets = list(dict.fromkeys(["cpu", *targets]))  # ONNX Runtime CPU always: the toolkit's own runtime
    for target in targets:  # a runtime missing here is the user's to install, not the variant's failure
        from runtimes.adapters import unavailable_reason
        from runtimes.errors import ProviderError

        reason = unavailable_reason(target)
        if reason is not None:
            raise ProviderError(f"--targets {target}: {reason}")
    parent = ModelSpec.from_onnx(model)
    if parent.precision != "fp32":
        raise ExportError(f"{model} is already a {parent.precision} model; quantize the fp32 export")
    out = Path(out) if out else variant_path(model, precision)
    report_path = Path(report) if report else (out.with_suffix(".repair.json") if repair else None)
    inputs, names = calibration_images(calib, calib_count, parent, warn=precision == "int8", max_pixels=max_pixels)
    if precision == "int8" and len(inputs) < MIN_CALIBRATION_IMAGES:
        log.warning("calibrating on %d images; %d or more give steadier ranges", len(inputs), MIN_CALIBRATION_IMAGES)
    what = "calibration" if precision == "int8" else "check"
    variant = {"parent_sha256": sha256_file(model)}
    progress = Progress(4 if not repair else 30)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, progress:
        work = Path(tmp)
        progress.step(f"fp32 logits on the {len(inputs)} {what} images")
        gate = Gate(model, parent, inputs, what, targets)
        made = work / "variant.onnx"
        if precision == "int8":
            maker = Int8Maker(model, parent, inputs, work / "plain", progress)
            kept = maker.resolve(keep_fp32, model.name)
            maker.make(made, method, kept)
            variant.update({
                "method": method, "images": len(inputs),
                "file_list_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
                "activations": "uint8", "weights": "int8 per channel", "format": "QDQ", "fp32_layers": kept,
            })
        else:
            progress.step("converting the weights to fp16")
            _fp16(model, made)
        spec = dataclasses.replace(parent, precision=precision, variant=variant)
        _stamp(made, spec)
        progress.step(f"gate: {', '.join(targets)}")
        verdict = gate.judge(made, spec)
        repaired = None
        if not verdict.passed and repair:
            repaired = Repairer(
                model=model, spec=spec, inputs=inputs, gate=gate, method=method, kept=kept, maker=maker,
                stamp=lambda path: _stamp(path, spec), work=work, budget_s=repair_budget_s,
                max_fp32_nodes=max_fp32_nodes, progress=progress,
            ).run(made, verdict, time.monotonic() - began)
            if repaired.passed:
                made, verdict = repaired.path, repaired.attempts[-1].gate
                variant["fp32_layers"] = [*kept, *repaired.fp32_nodes]
            variant["repair"] = {k: v for k, v in repaired.record().items() if k != "attempts"} | {
                "steps": repaired.steps()}
        variant["gate"] = {"passed": verdict.passed, "summary": verdict.summary(), "targets": targets}
        spec = dataclasses.replace(spec, variant=variant)
        _stamp(made, spec)
        data = made.read_bytes()
    if report_path is not None and repaired is not None:
        write_text(report_path, json.dumps({"model": str(model), "out": str(out), "precision": precision,
                                            "targets": targets, "repair": repaired.record()}, indent=2) + "\n")
    if not verdict.passed and not allow_failing:
        raise GateFailed(_failure_line(precision, verdict, repaired, report_path if repaired else None))
    write_bytes(out, data)
    return QuantizeResult(out, spec, len(inputs), verdict, len(data), repaired, report_path if repaired else None)


def _stamp(path: Path, spec: ModelSpec) -> None:
    """Write ``spec`` into the model file's metadata, as the runtimes read it."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = spec.to_json()
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _failure_line(precision: str, verdict: GateResult, repaired: Repaired | None, report: Path | None) -> str:
    if repaired is None:
        return (f"the {precision} variant fails its gate, so it was not written: {verdict.summary()}; "
                + ("--repair can fix an int8 variant (or --allow-failing writes it anyway)" if precision == "int8"
                   else "keep the fp32 model, or --allow-failing writes it anyway"))
    return (f"--repair found no int8 variant that passes: {repaired.steps()}; stopped: {repaired.stopped}; "
            f"nothing written but the report {report}")


def _keep_fp32(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == ["none"] else names


def main(argv: list[str] | None = None) -> int:
    from runtimes.cli import add_max_pixels, positive_int, seconds

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
    parser.add_argument("--targets", default="cpu", type=_targets, metavar="LIST",
                        help="runtimes the variant must pass on, comma-separated: cpu (always), openvino, opencv, cuda, "
                        "tensorrt (default: cpu)")
    parser.add_argument("--repair", action="store_true",
                        help="int8: if the variant fails, find what breaks it and fix it (equalize, re-range, keep "
                        "layers in fp32) until it passes on every target")
    parser.add_argument("--repair-budget-s", type=seconds, default=DEFAULT_REPAIR_BUDGET_S, metavar="S",
                        help="stop repairing after about this long (default: %(default)s)")
    parser.add_argument("--max-fp32-nodes", type=positive_int, default=DEFAULT_MAX_FP32_NODES, metavar="N",
                        help="the repair keeps at most this many nodes in fp32 beyond --keep-fp32 (default: %(default)s)")
    parser.add_argument("--allow-failing", action="store_true",
                        help="write a variant that fails its gate anyway, the failure recorded in its spec")
    parser.add_argument("--report", type=Path, help="--repair: its JSON report (default: <out>.repair.json)")
    parser.add_argument("--out", help="output path (default: <stem>.<precision>.onnx beside the model)")
    add_max_pixels(parser)
    args = parser.parse_args(argv)
    if args.report and not args.repair:
        parser.error("--report is --repair's report")
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    r = quantize(args.model, args.precision, calib=args.calib, calib_count=args.calib_count, method=args.method,
                 keep_fp32=_keep_fp32(args.keep_fp32), out=args.out, max_pixels=args.max_pixels,
                 targets=args.targets, repair=args.repair, repair_budget_s=args.repair_budget_s,
                 max_fp32_nodes=args.max_fp32_nodes, allow_failing=args.allow_failing, report=args.report)
    verdict = "passed" if r.gate.passed else "FAILED (written anyway: --allow-failing)"
    print(f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB, {args.precision}); gate {verdict}: {r.gate.summary()}")
    if r.repaired is not None:
        speed = r.repaired.speed or {}
        kept = f"; it keeps {speed['kept']:.0%} of plain int8's speed-up over fp32 on ONNX Runtime CPU" if "kept" in speed else ""
        print(f"repaired in {r.repaired.seconds:.0f} s: {r.repaired.steps()}{kept}; report {r.report}")
    return 0


def _targets(text: str) -> list[str]:
    from runtimes.adapters import RUNNERS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNNERS or name == "torch"]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown target {', '.join(unknown) or repr(text)}; known: "
                                         f"{', '.join(n for n in RUNNERS if n != 'torch')}")
    return names


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
