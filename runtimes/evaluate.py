"""Accuracy of a model (any precision, any runtime) on labelled images, and its drop against a reference.

    python -m runtimes.evaluate DATA --model M [--provider P] [--precision bf16|f16|f32]
        [--reference M2] [--max-top1-drop POINTS] [--json]

DATA holds one subfolder per class, named as the model's labels (the ImageFolder
convention). Preprocessing is exact. With ``--reference`` the same images also run
through M2 (the fp32 model, say), and top-1 agreement and the accuracy drop are
reported; ``--max-top1-drop`` makes a drop beyond that many points exit 1. Unreadable
images are counted and listed, not fatal, unless no image at all can be read: there is
then no accuracy to report, which is a mistake in DATA (one ``error:`` line, exit 2, as
for a DATA with no images).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.cli import EXIT_FAILED, add_max_pixels, points, positive_int, run_cli
from runtimes.labelled import labelled_files
from runtimes.errors import ImageError
from runtimes.progress import Progress
from runtimes.spec import DEFAULT_MODEL


@dataclass
class Evaluation:
    images: int = 0
    top1: float = 0.0
    top5: float = 0.0
    per_class: dict[str, float] = field(default_factory=dict)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)  # (truth, predicted, count), most first
    unreadable: list[str] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)  # top-1 index per readable image, in file order


def evaluate(classifier, files: list[tuple[Path, int]], progress: Progress | None = None) -> Evaluation:
    """Top-1/top-5, per-class accuracy and the commonest confusions of ``classifier`` on ``files``."""
    labels = classifier.spec.labels
    result = Evaluation()
    hits1 = hits5 = 0
    per_class_total, per_class_hits, confused = Counter(), Counter(), Counter()
    for (path, truth), prediction in zip(files, classifier.iter_predict([p for p, _ in files], topk=5)):
        if progress is not None:
            progress.advance(1)
        if not prediction.ok:
            result.unreadable.append(f"{path}: {prediction.error}")
            result.predictions.append(-1)
            continue
        top = [s.index for s in prediction.topk]
        result.predictions.append(top[0])
        per_class_total[truth] += 1
        if top[0] == truth:
            hits1 += 1
            per_class_hits[truth] += 1
        else:
            confused[(labels[truth], labels[top[0]])] += 1
        hits5 += truth in top
    result.images = sum(per_class_total.values())
    if result.images:
        result.top1, result.top5 = hits1 / result.images, hits5 / result.images
    result.per_class = {labels[c]: per_class_hits[c] / n for c, n in sorted(per_class_total.items())}
    result.confusions = [(a, b, n) for (a, b), n in confused.most_common(5)]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, metavar="DATA", help="a folder with one subfolder of images per class")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model to evaluate (default: {DEFAULT_MODEL})")
    parser.add_argument("--provider", default="cpu", help="runtime (default: cpu)")
    parser.add_argument("--precision", choices=("f32", "bf16", "f16"), help="openvino: inference precision")
    parser.add_argument("--reference", type=Path, help="a second model (e.g. the fp32 one) to compare with, on cpu")
    parser.add_argument("--max-top1-drop", type=points, metavar="POINTS", help="exit 1 if top-1 drops more than this against --reference")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per inference call (default: 8)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_max_pixels(parser)
    args = parser.parse_args(argv)
    if args.max_top1_drop is not None and args.reference is None:
        parser.error("--max-top1-drop needs --reference")

    from runtimes.classifier import Classifier
    from runtimes.cli import runner_options

    options = runner_options(args.provider, precision=args.precision)
    shared = dict(batch_size=args.batch_size, exact=True, max_pixels=args.max_pixels)
    with Classifier(args.model, args.provider, **shared, **options) as clf:
        files = labelled_files(args.data, clf.spec.labels)
        if not files:
            raise ImageError(f"{args.data}: no images in its class folders")
        progress = Progress(len(files) * (2 if args.reference else 1), quiet_up_to=args.batch_size)
        result = evaluate(clf, files, progress)
        if not result.images:  # no accuracy, and a drop of 0 points would pass the gate
            progress.clear()
            raise ImageError(
                f"{args.data}: none of the {len(files)} images in its class folders could be read; "
                f"the first: {result.unreadable[0]}"
            )
        precision = options.get("precision") or clf.spec.precision
    report = {"model": str(args.model), "provider": args.provider, "precision": precision, "images": result.images,
              "top1": result.top1, "top5": result.top5, "per_class": result.per_class,
              "confusions": result.confusions, "unreadable": result.unreadable}
    status = 0
    if args.reference is not None:
        with Classifier(args.reference, "cpu", **shared) as ref_clf:
            ref = evaluate(ref_clf, files, progress)
        both = [(a, b) for a, b in zip(result.predictions, ref.predictions) if a >= 0 and b >= 0]
        drop = (ref.top1 - result.top1) * 100
        report["reference"] = {"model": str(args.reference), "top1": ref.top1, "top5": ref.top5,
                               "top1_agreement": sum(a == b for a, b in both) / max(len(both), 1),
                               "top1_drop_points": drop}
        if args.max_top1_drop is not None and drop > args.max_top1_drop:
            report["gate"] = f"failed: top-1 dropped {drop:.2f} points, more than {args.max_top1_drop:g}"
            status = EXIT_FAILED
        elif args.max_top1_drop is not None:
            report["gate"] = f"passed: top-1 dropped {drop:.2f} points, at most {args.max_top1_drop:g}"
    progress.clear()
    print(json.dumps(report) if args.json else _text(report))
    return status


def _text(r: dict) -> str:
    lines = [
        f"{r['model']} on {r['provider']} ({r['precision']}): top-1 {r['top1']:.2%}, top-5 {r['top5']:.2%} "
        f"on {r['images']} images"
    ]
    worst = sorted(r["per_class"].items(), key=lambda kv: kv[1])[:5]
    lines.append("lowest per-class top-1: " + ", ".join(f"{k} {v:.0%}" for k, v in worst))
    if r["confusions"]:
        lines.append("commonest confusions: " + ", ".join(f"{a} -> {b} ({n})" for a, b, n in r["confusions"]))
    if r["unreadable"]:
        lines.append(f"unreadable: {len(r['unreadable'])}: " + "; ".join(r["unreadable"][:5]))
    if "reference" in r:
        ref = r["reference"]
        lines.append(
            f"reference {ref['model']}: top-1 {ref['top1']:.2%}; agreement {ref['top1_agreement']:.2%}; "
            f"drop {ref['top1_drop_points']:.2f} points"
        )
    if "gate" in r:
        lines.append(r["gate"])
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
