"""What people choose a runtime by: latency percentiles and throughput per runtime,
precision and batch size, against the hardware limit; throughput from image files; cold start.

    python -m runtimes.bench [--model M | --bundle DIR|DIR.tar.gz] [--providers cpu,openvino,opencv,torch]
        [--batch-sizes 1,8,32] [--precisions fp32,fp16,int8,bf16] [--iterations 50 | --seconds 5]
        [--rounds 1] [--images DIR] [--json] [--plot bench.png]

By default it measures every runtime available here (``runtimes.doctor`` says which),
PyTorch only when it has the checkpoint to run (``--ckpt``, or the one the model names,
beside it), in fp32; with ``--bundle``, each model the bundle holds on the bundle's own
providers. Neither torch nor the ``onnx`` package is needed: a device runs it on exactly
the bundle's requirements.

Rows run one at a time, each runner closed before the next loads, so no two thread
pools compete for the cores. ``--rounds N`` measures the whole plan N times, every other
round backwards, and gives each row the median of its rounds; on a shared machine that
is the figure to quote. The speed-up column is against ONNX Runtime CPU fp32 at the same
batch size (the median of per-round ratios); the PyTorch row is the correctness
reference. The hardware limit is FLOPs per image over the measured fp32 GEMM peak of
these cores (``runtimes.roofline``). Speed targets are checked here, not in timed unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtimes.cli import add_max_pixels, csv_list, non_negative_int, positive_int, run_cli
from runtimes.progress import Progress
from runtimes.race import percentile
from runtimes.spec import DEFAULT_MODEL, ModelSpec
from runtimes.tuned import RUNTIME_PRECISIONS as RUNTIME_BY_PROVIDER
# Precisions a runtime applies to the fp32 model itself (OpenVINO's inference hint),
# as opposed to variant files (fp16, int8) made by converters.quantize.
RUNTIME_PRECISIONS = tuple(RUNTIME_BY_PROVIDER["openvino"])
# Every row's speed-up is against this row at the same batch size: the default runtime.
BASELINE = ("cpu", "fp32")
COLD_START_RUNS = 5
MIN_TIMED_CALLS = 3
NAMES = {"torch": "PyTorch eager (reference)", "cpu": "ONNX Runtime CPU", "cuda": "ONNX Runtime CUDA",
         "tensorrt": "ONNX Runtime TensorRT", "openvino": "OpenVINO", "opencv": "OpenCV DNN"}


def bench_runtime(
    provider: str,
    model: Path,
    *,
    batch_size: int = 1,
    iterations: int = 50,
    warmup: int = 5,
    seconds: float | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """p50/p90/p99 latency (ms) and images/s of ``provider``; a skip names its reason.

    Times ``iterations`` calls, or with ``seconds`` as many as fit in that budget (at
    least 3) after ``warmup`` untimed ones.
    """
    row, times = _measure(provider, model, batch_size, iterations, warmup, seconds, options)
    return row if times is None else _summary(row, [times])


def _summary(row: dict[str, Any], rounds: list[list[float]]) -> dict[str, Any]:
    """``row`` with latency over every timed call of every round; the median is the median
    of the rounds' medians, so one noisy round cannot move it far."""
    medians = [statistics.median(times) for times in rounds]
    pooled = [t for times in rounds for t in times]
    median = statistics.median(medians)
    summary = {
        **row,
        "calls": len(pooled),
        "median_ms": round(median * 1e3, 2),
        "p90_ms": round(percentile(pooled, 0.9) * 1e3, 2),
        "p99_ms": round(percentile(pooled, 0.99) * 1e3, 2),
        "images_per_s": round(row["batch_size"] / median, 1),
    }
    if len(rounds) > 1:
        summary["rounds"] = len(rounds)
        summary["round_medians_ms"] = [round(m * 1e3, 3) for m in medians]
    return summary


def _measure(
    provider: str, model: Path, batch_size: int, iterations: int, warmup: int,
    seconds: float | None, options: dict[str, Any] | None, *, spec: ModelSpec | None = None,
) -> tuple[dict[str, Any], list[float] | None]:
    """(row without latencies, seconds per timed call), or (row with its skip reason, None);
    ``spec`` None reads it from the model file."""
    import numpy as np

    from runtimes.adapters import create_runner, unavailable_reason
    from runtimes.errors import ToolkitError

    if batch_size < 1 or iterations < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, iterations >= 1, warmup >= 0; got {batch_size}, {iterations}, {warmup}")
    reason = unavailable_reason(provider)
    if reason is not None:
        return {"provider": provider, "batch_size": batch_size, "skipped": reason}, None
    runner = create_runner(provider, model, spec, batch_size=batch_size, **(options or {}))
    started = time.perf_counter()
    try:
        runner.load()
    except ToolkitError as exc:  # one runtime failing must not cost the others' numbers
        return {"provider": provider, "batch_size": batch_size, "skipped": f"failed to load: {exc}"}, None
    with runner:
        load_s = time.perf_counter() - started
        size = runner.spec.crop_size
        batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
        try:
            for _ in range(warmup):
                runner.infer(batch)
            times: list[float] = []
            deadline = None if seconds is None else time.perf_counter() + seconds
            while (len(times) < iterations) if deadline is None else (time.perf_counter() < deadline or len(times) < MIN_TIMED_CALLS):
                t0 = time.perf_counter()
                runner.infer(batch)
                times.append(time.perf_counter() - t0)
        except ToolkitError as exc:
            return {"provider": provider, "batch_size": batch_size, "skipped": f"failed to run: {exc}"}, None
        active = runner.active_providers()
    return {"provider": provider, "runs_on": active, "batch_size": batch_size, "load_s": round(load_s, 3)}, times


def _speedup(results: list, baseline: list | None) -> dict[str, Any]:
    """How many times faster than the baseline row: the median of the per-round ratios of
    medians, with their range when there are several rounds. Empty without a baseline."""
    if not baseline or any(times is None for _, times in baseline):
        return {}
    ratios = sorted(statistics.median(base) / statistics.median(times) for (_, base), (_, times) in zip(baseline, results))
    found: dict[str, Any] = {"speedup": round(statistics.median(ratios), 2)}
    if len(ratios) > 1:
        found["speedup_range"] = [round(ratios[0], 2), round(ratios[-1], 2)]
    return found


def cold_start(source: list[str], runs: int = COLD_START_RUNS) -> dict[str, Any]:
    """Seconds from spawning ``python -m runtimes.run`` with ``source`` (``["--model", M]`` or
    ``["--bundle", B]``) on one image to its first output line, and whether that process
    imported torch (checked with ``-X importtime``)."""
    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "noise.jpg"
        pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        image.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
        command = [sys.executable, "-m", "runtimes.run", "--json", *source, str(image)]
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


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    limit = (
        f"{report['flops_per_image'] / 1e9:.2f} GFLOPs per image; measured fp32 GEMM peak "
        f"{report['gemm_peak_gflops']:.0f} GFLOP/s, so at best {report['bound_ms_per_image']:.2f} ms per image"
        if "bound_ms_per_image" in report else f"no hardware limit: {report['limit_note']}"
    )
    lines = [
        f"{machine['model']} ({', '.join(machine['flags'])}), {machine['physical_cores']} cores; {limit}",
        "",
        "| runtime | precision | batch | threads | p50 ms | p90 ms | p99 ms | images/s | of the fp32 limit | speed-up vs ORT fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        name = NAMES.get(r["provider"], r["provider"])
        if "skipped" in r:
            lines.append(f"| {name} | {r['precision']} | {r['batch_size']} | {r['threads']} | skipped: {_cell(r['skipped'])} |||||||")
            continue
        lines.append(
            f"| {name} | {r['precision']} | {r['batch_size']} | {r['threads']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['images_per_s']:.1f} | {format(r['of_limit'], '.0%') if 'of_limit' in r else ''} | "
            f"{_speedup_cell(r)} |"
        )
    rounds = max((r.get("rounds", 1) for r in report["rows"]), default=1)
    if rounds > 1:
        lines += ["", f"{rounds} interleaved rounds: p50 is the median of the rounds' medians; the speed-up is the "
                  "median of the per-round ratios, with their range."]
    files = report.get("files")
    if files:
        run = files["runtimes_run"]
        lines += [
            "",
            f"From files: {files['images']} images in {files['folder']}, provider {files['provider']}, "
            f"batch {files['batch_size']}, {'exact' if files['exact'] else 'default (fast)'} preprocessing"
            + (f"; {files['decode']['unreadable']} could not be read or decoded" if files["decode"]["unreadable"] else ""),
            "",
            "| stage | images/s |",
            "|---|---|",
            f"| read + decode + preprocess alone ({files['decode']['workers']} threads) | {files['decode']['images_per_s']:.1f} |",
            f"| inference alone | {files['inference_images_per_s']:.1f} |",
            f"| shared-core bound 1 / (decode s + inference s) | {files['bound_images_per_s']:.1f} |",
        ]
        if "error" in run:
            lines.append(f"| `runtimes.run` end to end | failed: {run['error']} |")
        else:
            lines.append(
                f"| `runtimes.run` end to end | {run['images_per_s']:.1f} ({files['of_bound']:.0%} of the bound; "
                f"peak memory {run['peak_rss_mb']} MB) |"
            )
    cold = report.get("cold_start")
    if cold:
        lines.append("")
        lines.append(
            f"cold start: {cold['error']}" if "error" in cold else
            f"Cold start of `python -m runtimes.run` to its first result: median {cold['median_s']:.3f} s "
            f"of {cold['runs']} runs; torch imported: {cold['torch_imported']}"
        )
    return "\n".join(lines)


def _cell(text: str) -> str:
    """``text`` whole, as one markdown table cell: a reason cut short would hide its fix."""
    return " ".join(text.split()).replace("|", "\\|")


def _speedup_cell(row: dict[str, Any]) -> str:
    if "speedup" not in row:
        return ""
    low_high = row.get("speedup_range")
    return f"{row['speedup']:.2f}x" + (f" ({low_high[0]:.2f}-{low_high[1]:.2f})" if low_high else "")


def _plot(report: dict[str, Any], path: Path) -> None:
    """Latency and throughput against batch size, one line per runtime and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtimes.atomic import write_figure

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in report["rows"]:
        if "skipped" not in r:
            series.setdefault((r["provider"], r["precision"], r["threads"]), []).append(r)
    several = len({key[2] for key in series}) > 1
    for (provider, precision, threads), rows in series.items():
        label = f"{NAMES.get(provider, provider)} {precision}" + (f", {threads} threads" if several else "")
        batches = [r["batch_size"] for r in rows]
        latency.plot(batches, [r["median_ms"] for r in rows], marker="o", label=label)
        throughput.plot(batches, [r["images_per_s"] for r in rows], marker="o", label=label)
    if "bound_ms_per_image" in report:
        throughput.axhline(1e3 / report["bound_ms_per_image"], color="gray", linestyle="--", label="hardware limit")
    batch_sizes = sorted({r["batch_size"] for rows in series.values() for r in rows})
    latency.set_yscale("log")
    for ax, title, unit in ((latency, "latency (p50)", "ms per call"), (throughput, "throughput", "images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    throughput.legend(fontsize=8)
    fig.suptitle(f"{Path(report['model']).name} on {report['machine']['model']}, {report['machine']['physical_cores']} cores")
    fig.tight_layout()
    write_figure(path, fig)


def default_providers(model: Path, ckpt: Path | None) -> list[str]:
    """Every runtime available here; torch only with a checkpoint to run, ``ckpt`` or the one
    the model's spec names, beside the model (where the torch runner looks), since without
    one its row could only say so."""
    from runtimes.adapters import available_providers

    providers = available_providers()
    if "torch" in providers and ckpt is None and ModelSpec.from_onnx(model).checkpoint_beside(model) is None:
        providers.remove("torch")
    return providers


def _sources(stack: contextlib.ExitStack, args) -> tuple[dict[str, tuple[Path, ModelSpec | None]], list[str], list[str]]:
    """({file precision: (model file, its spec or None to read it from the file)}, default
    providers, default precisions): the bundle's models and provider preference (opened for
    as long as ``stack`` lasts), or ``--model``, its variants beside it and what runs here."""
    from runtimes.spec import require_model, variant_path
    from runtimes.tolerances import BY_PRECISION

    if args.bundle is not None:
        from runtimes.bundle import open_bundle

        opened = stack.enter_context(open_bundle(args.bundle))
        return {p: (m.path, m.spec) for p, m in opened.models.items()}, list(opened.providers), list(opened.models)
    require_model(args.model)
    models = {p: (variant_path(args.model, p), None) for p in BY_PRECISION if p not in RUNTIME_PRECISIONS}
    return models, default_providers(args.model, args.ckpt), ["fp32"]


def hardware_limit(model: Path, threads: int) -> dict[str, Any]:
    """FLOPs per image, the measured GEMM peak and the bound they give; or a note saying why not."""
    from runtimes.roofline import LimitUnavailable, gemm_peak_gflops, model_flops

    try:
        flops = model_flops(model)
        peak = gemm_peak_gflops(threads)
    except LimitUnavailable as exc:
        return {"limit_note": str(exc)}
    return {"flops_per_image": flops, "gemm_peak_gflops": round(peak, 1), "bound_ms_per_image": round(flops / peak / 1e6, 3)}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from runtimes.tolerances import BY_PRECISION

    parser = argparse.ArgumentParser(prog="python -m runtimes.bench", description=" ".join(__doc__.split("\n\n")[0].split()))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"ONNX model (default: {DEFAULT_MODEL})")
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz: its models, on its providers by default")
    parser.add_argument("--providers", help="comma-separated runtimes (default: every one available here; torch only "
                        "with a checkpoint; with --bundle, the bundle's)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default: 1)")
    parser.add_argument(
        "--precisions",
        help="fp32; variant files beside the model: fp16, int8; OpenVINO's bf16 or f16 inference "
             "(default: fp32; with --bundle, every model it holds)",
    )
    parser.add_argument("--threads", help="comma-separated intra-op thread counts, a row each (default: the physical cores)")
    parser.add_argument("--iterations", type=positive_int, default=50, help="timed calls per row (default: 50)")
    parser.add_argument("--seconds", type=float, help="time budget per row instead of --iterations")
    parser.add_argument("--warmup", type=non_negative_int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="measure every row this many times, interleaved; a row's median is the median of its "
                             "rounds, its speed-up the median of per-round ratios (default: 1)")
    parser.add_argument("--ckpt", type=Path, help="torch: the source checkpoint (default: the one named beside the model)")
    parser.add_argument("--images", type=Path, help="a folder of images: decode, inference and end-to-end throughput")
    parser.add_argument("--files-batch-size", type=positive_int, default=8, help="batch size for --images (default: 8)")
    parser.add_argument("--exact", action="store_true", help="--images: exact preprocessing instead of the default")
    add_max_pixels(parser)
    parser.add_argument("--no-cold-start", action="store_true", help="skip the CLI cold-start measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a markdown table")
    parser.add_argument("--plot", type=Path, help="write latency and throughput per runtime and batch to this PNG")
    args = parser.parse_args(argv)
    for name in ("batch_sizes", "threads"):
        text = getattr(args, name)
        if text is None:
            continue
        try:
            values = csv_list(text, int)
        except ValueError:
            parser.error(f"argument --{name.replace('_', '-')}: not a list of integers: {text!r}")
        if not values or min(values) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be at least 1")
        setattr(args, name, values)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("argument --seconds: must be positive")
    known = list(dict.fromkeys([*BY_PRECISION, *RUNTIME_PRECISIONS]))
    unknown = [p for p in csv_list(args.precisions or "") if p not in known]
    if unknown:
        parser.error(f"argument --precisions: unknown {unknown[0]!r}; known: {', '.join(known)}")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"argument --images: {args.images} is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with contextlib.ExitStack() as stack:
        models, providers, precisions = _sources(stack, args)
        report = _bench(args, models, csv_list(args.providers) if args.providers else providers,
                        csv_list(args.precisions) if args.precisions else precisions)
    print(json.dumps(report, indent=2) if args.json else _markdown(report))
    if args.plot:
        _plot(report, args.plot)
    return 0


def _bench(args, models: dict[str, tuple[Path, ModelSpec | None]], providers: list[str], precisions: list[str]) -> dict[str, Any]:
    """The report: every (precision, provider, batch size) row, the hardware limit, files, cold start."""
    from runtimes.adapters import runner_class
    from runtimes.device import physical_cores
    from runtimes.device import cpu_info
    from runtimes.versions import package_versions

    for provider in providers:  # a typo fails before minutes of measuring, not after
        runner_class(provider)
    fp32 = models.get("fp32", next(iter(models.values())))[0]
    threads = physical_cores()
    thread_counts = args.threads or [threads]
    plan = [(p, prec, b, t) for prec in precisions for p in providers for b in args.batch_sizes
            for t in (thread_counts if "threads" in runner_class(p).OPTIONS else thread_counts[:1])]
    progress = Progress(len(plan) * args.rounds + 1 + (args.images is not None) + (not args.no_cold_start))
    progress.step("counting FLOPs and measuring the GEMM peak")
    limit = hardware_limit(fp32, threads)
    measured: dict[tuple[str, str, int, int], list] = {item: [] for item in plan}  # per round: (row, times)
    for round_ in range(args.rounds):
        # Every other round runs the plan backwards, so a slow spell on a shared machine
        # does not always land on the same rows.
        for provider, precision, batch, count in plan if round_ % 2 == 0 else plan[::-1]:
            progress.step(f"{provider} {precision} batch {batch}" + (f", {count} threads" if args.threads else "")
                          + (f", round {round_ + 1}" if args.rounds > 1 else ""))
            earlier = measured[(provider, precision, batch, count)]
            if any(times is None for _, times in earlier):
                continue  # skipped once: the whole row is
            earlier.append(_row(args, models, provider, precision, batch, count))
    rows = []
    for (provider, precision, batch, count), results in measured.items():
        skipped = next((row for row, times in results if times is None), None)
        row = skipped or _summary(results[0][0], [times for _, times in results])
        row["precision"] = precision
        row["threads"] = count
        if skipped is None:
            if "bound_ms_per_image" in limit:
                row["of_limit"] = round(limit["bound_ms_per_image"] / (row["median_ms"] / batch), 3)
            row.update(_speedup(results, measured.get((BASELINE[0], BASELINE[1], batch, count))))
        rows.append(row)
    report: dict[str, Any] = {
        "model": str(args.bundle or args.model),
        "machine": cpu_info(),
        "threads": threads,
        "versions": package_versions("onnxruntime-gpu", "onnxruntime", "openvino", "opencv-python-headless", "numpy", "pillow", "torch"),
        **limit,
        "rows": rows,
    }
    if args.images is not None:
        progress.step(f"throughput from the files in {args.images}")
        report["files"] = _files_report(args, fp32, providers, rows)
    if not args.no_cold_start:
        progress.step("cold start")
        report["cold_start"] = cold_start(["--bundle", str(args.bundle)] if args.bundle else ["--model", str(args.model)])
    progress.clear()
    return report


def _row(args, models: dict[str, tuple[Path, ModelSpec | None]], provider: str, precision: str, batch: int,
         threads: int) -> tuple:
    """One round of one row: (row, seconds per call), or (row with the reason it is skipped, None)."""
    from runtimes.adapters import runner_class

    path, spec = models.get("fp32" if precision in RUNTIME_PRECISIONS else precision, (None, None))
    skipped = {"provider": provider, "batch_size": batch}
    if provider == "torch" and precision != "fp32":
        return {**skipped, "skipped": "the PyTorch reference runs fp32 only"}, None
    if precision in RUNTIME_PRECISIONS and provider != "openvino":
        return {**skipped, "skipped": f"{precision} is an OpenVINO inference precision"}, None
    if path is None:
        return {**skipped, "skipped": f"the bundle holds no {precision} model (it has: {', '.join(models)})"}, None
    if not path.is_file():
        return {**skipped, "skipped": f"no {precision} variant at {path}"}, None
    options: dict[str, Any] = {"ckpt": args.ckpt} if provider == "torch" and args.ckpt else {}
    if "threads" in runner_class(provider).OPTIONS:
        options["threads"] = threads
    if precision in RUNTIME_PRECISIONS:
        options["precision"] = precision
    return _measure(provider, path, batch, args.iterations, args.warmup, args.seconds, options, spec=spec)


def _files_report(args, model: Path, providers: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    from runtimes.classifier import default_workers
    from runtimes.errors import ImageError
    from runtimes.files_bench import decode_only, run_cli
    from runtimes.preprocess import find_images

    provider = next((p for p in providers if p != "torch"), "cpu")
    files = find_images(args.images)
    if not files:
        raise ImageError(f"--images {args.images} holds no images")
    batch = args.files_batch_size
    decode = decode_only(files, ModelSpec.from_onnx(model), exact=args.exact, workers=default_workers(),
                         max_pixels=args.max_pixels)
    inference = next((r for r in rows if r["provider"] == provider and r["precision"] == "fp32"
                      and r["batch_size"] == batch and "skipped" not in r), None)
    if inference is None:
        inference = bench_runtime(provider, model, batch_size=batch, iterations=10, warmup=2)
    bound = 1 / (1 / decode["images_per_s"] + 1 / inference["images_per_s"])
    run = run_cli(model, args.images, provider=provider, batch_size=batch, exact=args.exact, max_pixels=args.max_pixels)
    return {
        "folder": str(args.images),
        "images": len(files),
        "provider": provider,
        "batch_size": batch,
        "exact": args.exact,
        "decode": decode,
        "inference_images_per_s": inference["images_per_s"],
        "bound_images_per_s": round(bound, 2),
        "runtimes_run": run,
        "of_bound": round(run["images_per_s"] / bound, 3) if "images_per_s" in run else None,
    }

if __name__ == "__main__":
    run_cli(main)
