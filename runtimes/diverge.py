"""When a runtime or precision fails parity, name the layer where it goes wrong.

    python -m runtimes.diverge (--bundle DIR | --model M) --provider P [--precision bf16|f16]
        [--variant fp16|int8 | --candidate FILE] [--input seeded:N | --image NAME|PATH]
        [--mode auto|mark-all|bisect] [--json] [--out DIR]

The candidate is what runs on ``--provider``: the fp32 model, a variant (``--variant``),
or any model file derived from the fp32 one (``--candidate``), at OpenVINO's or
TensorRT's ``--precision`` if given. The reference is ONNX Runtime CPU on the fp32 model
with optimizations off, first checked against PyTorch's recorded answers
(``runtimes.locate`` says how the rest works). The table of tensors around the first
divergence and a one-line verdict go to stderr; ``--json`` prints one object on stdout,
whose ``"verdict"`` has ``"kind"`` (culprit, accumulated or none) and, for a culprit,
``"node"``, ``"op"`` and ``"tensor"``. ``--out DIR`` writes report.json, the smallest
failing model (reduced.onnx) and its inputs (inputs.npz) to reproduce it anywhere, into
a fresh folder renamed into place: a DIR that exists and is not empty is refused.

Needs the onnx package, not torch. Exit status: 0 no divergence beyond the precision's
budget, 3 a divergence was located, 2 a user error or a reference that fails its anchor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtimes.cli import EXIT_PARITY_FAILED, run_cli
from runtimes.errors import ToolkitError


def _source(args, stack) -> tuple[Path, Path, str, object, object]:
    """(the fp32 model, the candidate file, the budget's precision, the reference answers, the
    spec); a bundle stays open for as long as ``stack`` lasts."""
    from runtimes.bundle import open_bundle
    from runtimes.reference import Reference, reference_for
    from runtimes.spec import ModelSpec, variant_path

    if args.bundle is not None:
        opened = stack.enter_context(open_bundle(args.bundle))
        fp32, spec = opened.model("fp32").path, opened.model("fp32").spec
        reference = Reference.load(opened.reference)
        candidate = opened.model(args.variant).path if args.variant else fp32
    else:
        fp32, spec = args.model, ModelSpec.from_onnx(args.model)
        reference = Reference.load(reference_for(args.model, spec))
        candidate = variant_path(args.model, args.variant) if args.variant else fp32
    if args.candidate is not None:
        candidate = args.candidate
    precision = args.precision or ModelSpec.from_onnx(candidate).precision
    return fp32, candidate, precision, reference, spec


def _input(args, reference, spec):
    from runtimes import preprocess

    if args.image is not None:
        names = list(reference.image_names)
        if args.image in names:
            data = reference.images[names.index(args.image)]
        elif Path(args.image).is_file():
            data = Path(args.image).read_bytes()
        else:
            raise ToolkitError(f"--image {args.image}: neither a reference image ({', '.join(names[:3])}, ...) nor a file")
        return preprocess.stack([preprocess.load(data, spec, args.image)])
    kind, _, number = (args.input or "seeded:0").partition(":")
    if kind != "seeded" or not number.isdigit() or int(number) >= len(reference.inputs):
        raise ToolkitError(f"--input {args.input}: give seeded:N with N below {len(reference.inputs)}")
    return reference.inputs[int(number)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.diverge", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz")
    source.add_argument("--model", type=Path, help="the exported fp32 model, its reference answers beside it")
    parser.add_argument("--provider", required=True, help="the runtime to check: cpu, openvino, opencv, cuda, tensorrt")
    parser.add_argument("--precision", choices=("bf16", "f16"), help="OpenVINO's (bf16, f16) or TensorRT's (f16) inference precision on the fp32 file")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--variant", choices=("fp16", "int8"), help="the bundle's, or the model's <stem>.VARIANT.onnx")
    which.add_argument("--candidate", type=Path, help="any model file derived from the fp32 one")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--input", help="seeded:N, the N-th seeded batch of the reference answers (default: seeded:0)")
    where.add_argument("--image", help="a reference image by name, or an image file")
    parser.add_argument("--mode", choices=("auto", "mark-all", "bisect"), default="auto",
                        help="auto: mark-all, bisect on OpenCV DNN (one output at a time) or when marking hides the failure")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--out", type=Path, help="write report.json, reduced.onnx and inputs.npz here: a new or empty folder")
    args = parser.parse_args(argv)
    if args.out is not None:  # before the slow part: a fresh folder, never one holding another run's files
        from runtimes.atomic import check_replaceable

        check_replaceable(args.out, [p for p in (args.bundle, args.model, args.candidate) if p is not None])
    import contextlib

    from runtimes.diagnosis import diagnose, precision_options, public, table, write_out

    with contextlib.ExitStack() as stack:
        fp32, candidate, precision, reference, spec = _source(args, stack)
        report = diagnose(fp32, candidate, args.provider, precision, reference, _input(args, reference, spec),
                          options=precision_options(args.provider, precision), mode=args.mode)
    print(table(report), file=sys.stderr)
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(report["line"], file=sys.stderr)
    suggestion = report["verdict"].get("suggestion")
    if suggestion:
        print(f"suggestion: {suggestion}", file=sys.stderr)
    if args.out is not None:
        written = write_out(report, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(public(report)))
    return 0 if report["verdict"]["kind"] == "none" else EXIT_PARITY_FAILED


if __name__ == "__main__":
    run_cli(main)
