"""Latency of each runtime on the same model, one runtime at a time, plus CLI cold start.

    python -m runtimes.bench [--providers cpu,openvino,opencv,torch] [--iterations 50] [--json]

Each runner is closed before the next loads, so no two thread pools compete for the
cores. Speed targets are checked here, not in timed unit tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtimes.cli import non_negative_int, positive_int, run_cli
from runtimes.spec import DEFAULT_MODEL

DEFAULT_PROVIDERS = ("cpu", "openvino", "opencv", "torch")
COLD_START_RUNS = 5


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_runtime(
    provider: str,
    model: Path,
    *,
    batch_size: int = 1,
    iterations: int = 50,
    warmup: int = 5,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Median and p90 latency (ms) and throughput (images/s) of ``provider``; a skip names its reason."""
    import numpy as np

    from runtimes.adapters import create_runner, unavailable_reason
    from runtimes.errors import ToolkitError

    if batch_size < 1 or iterations < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, iterations >= 1, warmup >= 0; got {batch_size}, {iterations}, {warmup}")
    reason = unavailable_reason(provider)
    if reason is not None:
        return {"provider": provider, "skipped": reason}
    runner = create_runner(provider, model, batch_size=batch_size, **(options or {}))
    started = time.perf_counter()
    try:
        runner.load()
    except ToolkitError as exc:  # one runtime failing must not cost the others' numbers
        return {"provider": provider, "skipped": f"failed to load: {exc}"}
    with runner:
        load_s = time.perf_counter() - started
        size = runner.spec.crop_size
        batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
        try:
            for _ in range(warmup):
                runner.infer(batch)
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                runner.infer(batch)
                times.append(time.perf_counter() - t0)
        except ToolkitError as exc:
            return {"provider": provider, "skipped": f"failed to run: {exc}"}
        active = runner.active_providers()
    median = statistics.median(times)
    return {
        "provider": provider,
        "runs_on": active,
        "batch_size": batch_size,
        "load_s": round(load_s, 3),
        "median_ms": round(median * 1e3, 2),
        "p90_ms": round(_percentile(times, 0.9) * 1e3, 2),
        "images_per_s": round(batch_size / median, 1),
    }


def cold_start(model: Path, runs: int = COLD_START_RUNS) -> dict[str, Any]:
    """Seconds from spawning ``python -m runtimes.run`` on one image to its first output line,
    and whether that process imported torch (checked with ``-X importtime``)."""
    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "noise.jpg"
        pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        image.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
        command = [sys.executable, "-m", "runtimes.run", "--json", "--model", str(model), str(image)]
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
                first_line = proc.stdout.readline()
                seconds.append(time.perf_counter() - started)
                _, stderr = proc.communicate()
            if proc.returncode != 0 or '"topk"' not in first_line:
                return {"error": f"`{' '.join(command)}` failed: {stderr.strip() or first_line.strip()}"}
        traced = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")}
    return {
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "runs": runs,
        "torch_imported": any(name == "torch" or name.startswith("torch.") for name in imported),
    }


def _print_table(results: list[dict[str, Any]], cold: dict[str, Any] | None) -> None:
    print(f"{'runtime':<10} {'median ms':>10} {'p90 ms':>8} {'images/s':>9} {'load s':>7}  runs on")
    for r in results:
        if "skipped" in r:
            print(f"{r['provider']:<10} skipped: {r['skipped']}")
        else:
            print(
                f"{r['provider']:<10} {r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['images_per_s']:>9.1f} "
                f"{r['load_s']:>7.2f}  {', '.join(r['runs_on'])}"
            )
    if cold is not None:
        if "error" in cold:
            print(f"cold start: {cold['error']}")
        else:
            print(
                f"cold start of `python -m runtimes.run` to first result: median {cold['median_s']:.3f} s "
                f"(min {cold['min_s']:.3f} s, {cold['runs']} runs); torch imported: {cold['torch_imported']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"ONNX model (default: {DEFAULT_MODEL})")
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS), help="comma-separated runtimes")
    parser.add_argument("--iterations", type=positive_int, default=50, help="timed calls per runtime (default: 50)")
    parser.add_argument("--warmup", type=non_negative_int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per call (default: 1)")
    parser.add_argument("--ckpt", type=Path, help="torch: the source checkpoint (default: the one the model records)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the CLI cold-start measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    from runtimes.adapters import runner_class
    from runtimes.spec import require_model

    require_model(args.model)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for provider in providers:  # a typo fails before minutes of measuring, not after
        runner_class(provider)
    results = []
    for provider in providers:
        options = {"ckpt": args.ckpt} if provider == "torch" and args.ckpt else {}
        results.append(
            bench_runtime(
                provider, args.model, batch_size=args.batch_size, iterations=args.iterations, warmup=args.warmup, options=options
            )
        )
    cold = None if args.no_cold_start else cold_start(args.model)
    if args.json:
        print(json.dumps({"model": str(args.model), "runtimes": results, "cold_start": cold}, indent=2))
    else:
        _print_table(results, cold)
    return 0


if __name__ == "__main__":
    run_cli(main)
