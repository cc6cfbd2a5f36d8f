"""Classify images from the command line.

    python -m runtimes.run [--provider cpu] [--json] IMAGES...
    python -m runtimes.run --bundle DIR IMAGES...   # the bundle's tuned choice, else its default model and providers

IMAGES are files, directories (searched recursively for image extensions, hidden files
skipped), globs, or ``-`` for one image read from stdin (``... run - < photo.jpg``).
Each image gets its result or its own error; the exit status is 1 if any failed,
2 for a user mistake (unknown provider, missing model), reported in one line, and 141
when the reader of stdout stops early (``| head -1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from runtimes.cli import EXIT_FAILED, add_max_pixels, non_negative_int, positive_int, run_cli
from runtimes.errors import ImageError
from runtimes.progress import Progress
from runtimes.spec import DEFAULT_MODEL

STDIN = "-"  # the IMAGES argument that reads one image from stdin


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtimes.run",
        description="Classify images with an exported GoogLeNet on ONNX Runtime, OpenVINO or OpenCV.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, directories, globs, or - for stdin")
    parser.add_argument(
        "--provider", help="cpu, cuda, tensorrt, openvino, opencv or torch (default: the bundle's preference, else cpu)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"exported ONNX model (default: {DEFAULT_MODEL})")
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz from `python -m deploy.bundle`")
    parser.add_argument("--variant", help="bundle: which model to run, fp32, fp16 or int8 (default: the bundle's default)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per inference call (default: a tuned bundle's, else 8)")
    parser.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default: 5)")
    parser.add_argument("--json", dest="json_lines", action="store_true", help="JSON Lines on stdout, one object per image")
    parser.add_argument(
        "--exact", action="store_true",
        help="PIL-identical preprocessing for every image (default: large JPEGs are decoded at reduced size, faster)",
    )
    parser.add_argument("--workers", type=positive_int, help="preprocessing threads (default: one per CPU, at most 8)")
    add_max_pixels(parser)
    parser.add_argument("--allow-fallback", action="store_true", help="cuda/tensorrt: run on CPU instead of failing")
    parser.add_argument("--device-id", type=non_negative_int, help="cuda/tensorrt: GPU index (default: 0)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: physical cores)")
    parser.add_argument("--fp16", action="store_true", help="tensorrt: build an fp16 engine")
    parser.add_argument("--precision", choices=("f32", "bf16", "f16"), help="openvino: inference precision (default: f32, which keeps parity)")
    parser.add_argument("--ckpt", type=Path, help="torch: the source checkpoint (default: the one the model records)")
    return parser


def collect_images(inputs: list[str]) -> list[Path]:
    """Expand directories (recursively, image extensions only) and globs, in argument order.

    A path that matches nothing is kept as is, so it is reported as its own error; so is
    ``-`` (stdin).
    """
    from runtimes.preprocess import find_images, glob_images  # imports cv2: not before --help is handled

    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found += find_images(path)
        elif not path.exists() and glob.has_magic(text):
            found += glob_images(text) or [path]
        else:
            found.append(path)
    return found


def read_stdin() -> bytes:
    """The image piped to stdin, for the argument ``-``."""
    if sys.stdin is None or sys.stdin.isatty():
        raise ImageError(f"{STDIN} reads one image from stdin, but stdin is a terminal; pipe one in: ... {STDIN} < photo.jpg")
    return sys.stdin.buffer.read()


def format_prediction(prediction, label_width: int) -> str:
    """The human-readable block for one image: its path, then rank, label and probability."""
    if prediction.error is not None:
        return f"{prediction.image}\n  error: {prediction.error}"
    rows = [f"  {rank:>2}  {s.label:<{label_width}}  {s.prob * 100:6.2f}%" for rank, s in enumerate(prediction.topk, 1)]
    return "\n".join([prediction.image, *rows])


def classify(
    images: list[str],
    *,
    provider: str | None = None,
    model: Path = DEFAULT_MODEL,
    bundle: Path | None = None,
    variant: str | None = None,
    batch_size: int | None = None,
    topk: int = 5,
    json_lines: bool = False,
    exact: bool = False,
    workers: int | None = None,
    max_pixels: int | None = None,
    allow_fallback: bool = False,
    device_id: int | None = None,
    threads: int | None = None,
    fp16: bool = False,
    precision: str | None = None,
    ckpt: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Classify ``images`` and write results to ``out`` (stdout); 0 if all succeeded, 1 if any failed.

    With ``bundle``, the bundle's tuned choice runs when it applies here (``runtimes.tuned``);
    otherwise its model (``variant`` picks fp32, fp16 or int8) on the first of its providers
    that loads here, unless ``provider`` names one.
    """
    import contextlib

    from runtimes.preprocess import IMAGE_EXTENSIONS
    from runtimes.tuned import classifier_for, first_loadable, plan, skipped_line  # numpy, cv2 and the runtime load only now

    out, err = out or sys.stdout, err or sys.stderr
    given = dict(provider=provider, variant=variant, threads=threads, device_id=device_id, ckpt=ckpt,
                 allow_fallback=allow_fallback, fp16=fp16, precision=precision)
    paths = collect_images(images)
    if not paths:
        raise ImageError(f"no images found in {', '.join(images)} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    inputs = [read_stdin() if str(p) == STDIN else p for p in paths]  # read before the model loads
    with contextlib.ExitStack() as stack:
        attempts = plan(stack, model=model, bundle=bundle, given=given, say=lambda line: print(line, file=err))

        classifier, used, skipped = first_loadable(attempts, lambda attempt: classifier_for(
            attempt, batch_size=batch_size, exact=exact, workers=workers, max_pixels=max_pixels))
        for reason in skipped:
            print(skipped_line(reason, used), file=err)
        if len(attempts) > 1 and not (used.configuration and not skipped):
            print(f"provider: {used.label()} ({', '.join(classifier.active_providers())})", file=err)
        with classifier:
            return _classify_paths(classifier, inputs, topk, json_lines, classifier.batch_size, out, err)


def _classify_paths(classifier, paths: list[Path | bytes], topk: int, json_lines: bool, batch_size: int, out, err) -> int:
    """Print each image's prediction as it is ready; 0 if all succeeded, 1 if any failed.

    ``paths`` holds the bytes read from stdin where ``-`` was given; its record says ``-``.
    """
    failed = 0
    label_width = min(40, max(map(len, classifier.spec.labels)))
    progress = Progress(len(paths), err, quiet_up_to=batch_size)
    started = time.perf_counter()
    for path, prediction in zip(paths, classifier.iter_predict(paths, topk)):
        if isinstance(path, bytes):
            prediction = dataclasses.replace(prediction, image=STDIN)
        progress.clear()
        failed += not prediction.ok
        record = json.dumps(prediction.to_dict()) if json_lines else format_prediction(prediction, label_width)
        print(record, file=out)
        out.flush()
        progress.advance(1)
    progress.clear()
    if failed:
        print(f"error: {failed} of {len(paths)} images could not be classified", file=err)
    elif len(paths) > 1:
        seconds = time.perf_counter() - started
        print(f"classified {len(paths)} images in {seconds:.2f} s ({len(paths) / seconds:.1f} images/s, "
              f"{', '.join(classifier.active_providers())})", file=err)
    return EXIT_FAILED if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return classify(**vars(args))


if __name__ == "__main__":
    run_cli(main)
