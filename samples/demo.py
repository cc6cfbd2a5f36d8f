"""``make demo``: the toolkit's whole job on a fresh clone, with nothing to download.

1. build the embedded demo checkpoint if absent (``python -m samples.checkpoint``,
   under a minute; cached as ``artifacts/googlenet_demo.pth`` afterwards, beside the
   model, where the torch reference runner finds it);
2. ``python -m converters.export`` it, labelled with the class names saved in it, to the default model path
   the runtimes read (``artifacts/googlenet.onnx``), parity-checked against PyTorch;
3. ``python -m runtimes.run --provider cpu`` on the committed sample images, scored
   against the class in each file name;
4. ``python -m converters.quantize`` an int8 variant, and ``python -m deploy.bundle`` both
   into a torch-free edge bundle (for cpu, and OpenVINO where it is installed);
5. on the bundle, as a device would: ``python -m runtimes.verify`` (the check against
   PyTorch), ``python -m runtimes.tune`` (a short budget here) and
   ``python -m runtimes.run``, which uses the tuned choice;
6. PyTorch eager against ONNX Runtime CPU latency at batch 1 (``runtimes.bench``).

Each step is the same command a user would type; the demo only runs and reads them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

from converters.export import report_path_for
from runtimes.cli import EXIT_FAILED
from runtimes.errors import ToolkitError
from runtimes.spec import DEFAULT_MODEL
from samples.checkpoint import DEFAULT_CKPT, REPO_ROOT
from samples.generate import IMAGES_DIR, label_of

MIN_ACCURACY = 0.9  # below this the pipeline is broken, not unlucky: exit non-zero
LATENCY_ITERATIONS = 20
TUNE_BUDGET_S = 30  # a device tunes with the default 120 s; the demo shows the same steps in less


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _step(title: str, *args: str, capture: bool = False) -> str:
    """Run ``python -m ARGS`` in the repo root, echoing the command; fail on a non-zero exit."""
    print(f"\n== {title}\n$ python -m {shlex.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE if capture else None
    )
    if proc.returncode != 0:
        raise ToolkitError(f"`python -m {shlex.join(args)}` exited with {proc.returncode}")
    return proc.stdout or ""


def _score(jsonl: str) -> float:
    """Print each sample's prediction against the class in its file name; return accuracy."""
    records = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    correct = 0
    print(f"{'image':<24} {'truth':<16} {'predicted':<16} {'prob':>7}")
    for record in records:
        name, truth = Path(record["image"]).name, label_of(record["image"])
        if "error" in record:
            print(f"{name:<24} {truth:<16} error: {record['error']}")
            continue
        best = record["topk"][0]
        hit = best["label"] == truth
        correct += hit
        print(f"{name:<24} {truth:<16} {best['label']:<16} {best['prob']:>7.1%}  {'ok' if hit else 'WRONG'}")
    accuracy = correct / max(len(records), 1)
    print(f"{correct}/{len(records)} correct ({accuracy:.0%})")
    return accuracy


def _latency(model: Path) -> None:
    from runtimes.bench import bench_runtime

    print(f"\n== latency at batch 1, fp32, median of {LATENCY_ITERATIONS} calls (one runtime at a time)")
    for provider in ("torch", "cpu"):
        options = {"ckpt": DEFAULT_CKPT} if provider == "torch" else {}
        r = bench_runtime(provider, model, iterations=LATENCY_ITERATIONS, options=options)
        if "skipped" in r:
            print(f"{provider:<6} skipped: {r['skipped']}")
        else:
            shown = "PyTorch eager" if provider == "torch" else "ONNX Runtime CPU"
            print(f"{shown:<17} {r['median_ms']:7.2f} ms  (p90 {r['p90_ms']:.2f} ms, {r['images_per_s']:.1f} images/s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samples.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the demo checkpoint even if it is cached")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"where to export (default: {DEFAULT_MODEL})")
    args = parser.parse_args(argv)
    args.model = args.model.resolve()  # the steps run in the repo root, this process may not

    build = ["samples.checkpoint"] + (["--force"] if args.rebuild else [])
    _step("demo checkpoint (paper layout, both aux heads)", *build)
    _step(
        "export: aux-free, simplified, parity-checked ONNX",
        "converters.export", "--ckpt", _rel(DEFAULT_CKPT), "--out", str(args.model),  # labels: the checkpoint's own
    )
    report = json.loads(report_path_for(args.model).read_text())
    for p in report["parity"]:
        print(
            f"parity batch {p['batch']}: max |d| {p['max_abs']:.2e}, mean |d| {p['mean_abs']:.2e}, "
            f"top-1 {p['top1_agreement']:.0%}, top-5 {p['top5_agreement']:.0%}"
        )
    jsonl = _step(
        "classify the sample images on ONNX Runtime CPU",
        "runtimes.run", "--provider", "cpu", "--model", str(args.model), "--topk", "1", "--json", _rel(IMAGES_DIR),
        capture=True,
    )
    accuracy = _score(jsonl)
    _step("an int8 variant, calibrated on fresh demo images", "converters.quantize", "--model", str(args.model),
          "--precision", "int8")
    bundle = args.model.with_name("bundle")
    target = "cpu,openvino" if importlib.util.find_spec("openvino") else "cpu"
    _step("edge bundle: fp32 and int8 models, reference answers, pinned torch-free requirements",
          "deploy.bundle", "--model", str(args.model), "--variants", "int8", "--target", target, "--out", str(bundle))
    _step("verify the bundle as a device would", "runtimes.verify", "--bundle", str(bundle))
    _step(f"tune it on this machine ({TUNE_BUDGET_S} s budget): the fastest configuration that still gives "
          "PyTorch's answers", "runtimes.tune", "--bundle", str(bundle), "--budget-s", str(TUNE_BUDGET_S))
    tuned_jsonl = _step("classify the sample images with the tuned bundle", "runtimes.run", "--bundle", str(bundle),
                        "--topk", "1", "--json", _rel(IMAGES_DIR), capture=True)
    tuned_accuracy = _score(tuned_jsonl)
    _latency(args.model)
    return 0 if min(accuracy, tuned_accuracy) >= MIN_ACCURACY else EXIT_FAILED


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
