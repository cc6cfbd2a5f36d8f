"""``make demo``: the toolkit's whole job on a fresh clone, with nothing to download.

1. build the embedded demo checkpoint once (``samples.checkpoint``, about a minute;
   cached under ``artifacts/demo/`` afterwards);
2. export it to ONNX with the demo labels, parity-checked against PyTorch
   (``converters.export``);
3. classify the committed sample images through the torch-free runtime
   (``runtimes.classifier``), and score them against the class in each file name.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from samples.checkpoint import DEFAULT_CKPT, REPO_ROOT
from samples.generate import IMAGES_DIR, LABELS_FILE, label_of

DEMO_MODEL = REPO_ROOT / "artifacts" / "demo" / "googlenet_demo.onnx"
MIN_ACCURACY = 0.9  # below this the pipeline is broken, not unlucky: exit non-zero


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m samples.demo",
        description="Build the demo checkpoint, export it to ONNX and classify the sample images.",
    )
    parser.add_argument("--provider", default="cpu", help="runtime to classify with (default: cpu)")
    parser.add_argument("--images", type=Path, default=IMAGES_DIR, help=f"folder of <class>_<k>.jpg (default: {IMAGES_DIR})")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the checkpoint even if it is cached")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    # Heavy imports only after argument parsing, so --help is instant.
    from converters.export import export
    from runtimes.classifier import Classifier
    from runtimes.errors import ImageError
    from samples.checkpoint import build_checkpoint

    print(f"[1/3] checkpoint {DEFAULT_CKPT.relative_to(REPO_ROOT)}")
    if args.rebuild or not DEFAULT_CKPT.is_file():
        print("      building: frozen random trunk, fc and both aux heads trained on synthetic images ...", flush=True)
        metrics = build_checkpoint(DEFAULT_CKPT)
        print(f"      built in {metrics['build_s']:.1f} s; held-out top-1 {metrics['heldout_top1']:.1%}")
    else:
        print("      cached (pass --rebuild to build it again)")

    print(f"[2/3] export {DEMO_MODEL.relative_to(REPO_ROOT)}", flush=True)
    start = time.perf_counter()
    result = export(DEFAULT_CKPT, DEMO_MODEL, labels=LABELS_FILE)
    parity = result.report["parity"]
    print(
        f"      {time.perf_counter() - start:.1f} s; {result.report['aux_stripped']['parameters']:,} aux parameters "
        f"stripped; parity vs PyTorch: max |diff| {max(p['max_abs'] for p in parity):.2g}, "
        f"top-1 agreement {min(p['top1_agreement'] for p in parity):.0%}"
    )

    paths = sorted(args.images.glob("*.jpg"))
    if not paths:
        raise ImageError(f"no .jpg images in {args.images}; regenerate them with `python -m samples.generate`")
    print(f"[3/3] classify {len(paths)} images with provider {args.provider!r}")
    correct = 0
    with Classifier(DEMO_MODEL, args.provider) as classifier:
        for path, prediction in zip(paths, classifier.predict(paths, topk=1)):
            if not prediction.ok:
                print(f"      {path.name:<24} error: {prediction.error}")
                continue
            best = prediction.topk[0]
            hit = best.label == label_of(path)
            correct += hit
            print(f"      {path.name:<24} {best.label:<16} {best.prob:6.1%}  {'ok' if hit else 'WRONG'}")
    accuracy = correct / len(paths)
    print(f"      {correct}/{len(paths)} correct ({accuracy:.0%})")
    return 0 if accuracy >= MIN_ACCURACY else 1


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
