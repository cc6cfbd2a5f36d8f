"""Classify millions of images offline on a Ray cluster, every input answered exactly once.

    python -m deploy.batch INPUT OUTPUT [--model M | --bundle DIR|TAR [--variant P]] [--provider P]
        [--address auto|ray://HOST:PORT] [--actors N|MIN:MAX] [--threads N] [--batch-size N]
        [--topk K] [--exact] [--max-pixels N] [--format parquet|jsonl]
        [--mode create|overwrite|resume] [--rows-per-part N] [--max-crash-retries N]
        [--stall-timeout-s S] [--no-runtime-env]

INPUT is a folder or glob, a URI prefix (``s3://bucket/photos/``), or a manifest file of
paths or URIs, one a line (``deploy.batch_inputs``), listed as a stream. OUTPUT is a
folder of part files with one row per input (parquet: path, path_bytes, label, labels,
probs, class_index, error, preprocess; jsonl: the line ``runtimes.run --json`` prints,
byte for byte), committed as the job runs, and ``_manifest.json``, written last
(``deploy.batch_output``).

``--mode create`` (the default) refuses an existing OUTPUT. ``resume`` continues a killed
or failed job in the same OUTPUT: its committed parts are kept and their inputs skipped;
it refuses in one line when the model, the inputs or a flag that changes answers differ
from the first run's. ``overwrite`` starts again, removing only what an earlier run of this
tool wrote. An OUTPUT that is, holds or lies inside INPUT is refused in every mode.

Exactly once, checked: the driver hands out every batch and writes every row itself, each
record checked to be the one for the name sent; each part's rows must carry the paths of
its range of the listing, and at the end every part must be committed. A batch whose
process died is retried (``--max-crash-retries``), then classified one input at a time
in a child process (``deploy.batch_rescue``): an image that kills its process costs only
itself, and gets an error row naming the crash.

Without ``--address``, a private local cluster runs in a temp folder of its own and is
stopped at the end. With one, the model's bytes travel through Ray's object store and
each actor checks their sha256 before loading; a bundle's runtime wheel travels in the
job's ``runtime_env`` (``--no-runtime-env`` when every node has it installed). With
``--bundle``, a gated ``tuned.json`` choice is obeyed as ``runtimes.run`` obeys it.

Exit status: 0 every input answered, 1 some inputs have error rows (as ``runtimes.run``),
2 a user error (one line), 3 the job itself failed (the committed parts are kept), 130
Ctrl-C and 143 SIGTERM (the committed parts are kept: ``--mode resume`` goes on).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from deploy.batch_classify import Job, JobFailed, sha256_bytes
from deploy.batch_inputs import Listing
from deploy.batch_job import Parts, classify, plan, preflight
from deploy.batch_output import ROWS_PER_PART, Output, refuse_early
from runtimes.cli import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PARITY_FAILED, EXIT_TERMINATED, add_max_pixels,
                          positive_int, run_cli, seconds)
from runtimes.spec import DEFAULT_MODEL

EXIT_JOB_FAILED = EXIT_PARITY_FAILED  # 3: the job, not an input
STALL_TIMEOUT_S = 300


class Terminated(BaseException):
    """SIGTERM, what schedulers send: unwinds as Ctrl-C does, so that every clean-up runs."""


def parse_actors(text: str) -> tuple[int, int]:
    """``"4"`` -> (4, 4); ``"1:8"`` -> (1, 8): an autoscaling pool."""
    low, _, high = text.partition(":")
    try:
        pool = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--actors takes N or MIN:MAX, not {text!r}") from None
    if not 1 <= pool[0] <= pool[1]:
        raise argparse.ArgumentTypeError(f"--actors {text}: need 1 <= MIN <= MAX")
    return pool


def resolve_model(stack: contextlib.ExitStack, args) -> tuple[Job, bytes, Path | None, dict]:
    """The job every worker runs, the model's bytes, the bundle's runtime wheel (if any), and
    the configuration chosen and why (for the manifest)."""
    from runtimes.cli import runner_options

    def options_for(provider: str) -> dict:  # one thread an actor unless told: actors are the parallelism
        return runner_options(provider, lenient=args.threads is None, threads=args.threads or 1)

    options = options_for(args.provider or "cpu")
    common = dict(provider=args.provider or "cpu", options=options, batch_size=args.batch_size, topk=args.topk,
                  exact=args.exact, max_pixels=args.max_pixels, workers=args.threads or 1)
    if args.bundle is not None:
        from runtimes.bundle import open_bundle

        opened = stack.enter_context(open_bundle(args.bundle))  # every file's sha256 checked here
        chosen = opened.model(args.variant)
        provider = args.provider or opened.providers[0]
        options = options_for(provider)
        config = _tuned_configuration(opened, args)
        configuration = {"from": "flags" if args.provider or args.variant else "the bundle's default",
                         "provider": provider, "variant": chosen.precision}
        if config is not None:
            chosen, provider = opened.model(config.model_precision), config.provider
            options = {**config.options(), **options_for(provider)}  # the actors' threads, not the tuned process's
            configuration = {"from": "tuned.json", "provider": provider, "precision": config.precision,
                             "tuned": config.label()}
        data = chosen.path.read_bytes()
        wheel = next(iter(sorted((opened.root / "wheels").glob("*.whl"))), None)
        job = Job(f"{args.bundle}:{chosen.path.relative_to(opened.root)}", sha256_bytes(data), chosen.spec.to_json(),
                  **{**common, "provider": provider, "options": options})
        return job, data, wheel, {**configuration, "options": options}
    from runtimes.spec import ModelSpec, require_model

    data = require_model(args.model).read_bytes()
    spec = ModelSpec.from_onnx(args.model).to_json()  # for a decode stage, which loads no model
    configuration = {"from": "flags", "provider": common["provider"], "options": options}
    return Job(str(args.model), sha256_bytes(data), spec, **common), data, None, configuration


def _tuned_configuration(opened, args):
    """The bundle's tuned configuration (``runtimes.tuned``: gated evidence only) that the actors run, or None.

    Its provider and precision are obeyed; the batch size and threads stay this tool's: the
    actors are the parallelism, and a batch amortises each call. The first configuration
    whose runtime is installed on the driver is taken; the workers check the rest.
    """
    from runtimes.adapters import unavailable_reason
    from runtimes.tuned import usable_tuned

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    given = {"provider": args.provider, "variant": args.variant, "threads": args.threads}
    tuned = usable_tuned(args.bundle, opened, given, say)
    if tuned is None:
        return None
    for config in tuned.configurations:
        if unavailable_reason(config.provider) is None:
            if config is not tuned.choice:
                say(f"note: the tuned {tuned.choice.provider} is not installed here; its fallback {config.label()} runs")
            say(f"note: the actors run {config.provider} {config.precision} at --batch-size {args.batch_size} with "
                f"{args.threads or 1} thread(s) each, not the tuned batch size and threads")
            return config
    say("warning: no tuned configuration's runtime is installed here; the bundle's default runs")
    return None


def run(args) -> int:
    started = time.perf_counter()
    out = Path(args.output)
    refuse_early(out, args.mode, args.input)
    listing = Listing.survey(args.input, inside=out)  # one streamed pass: how many, and their names' sha256
    with contextlib.ExitStack() as stack:
        job, model_bytes, wheel, configuration = resolve_model(stack, args)
        fingerprint = {
            "model_sha256": job.sha256, "provider": job.provider,
            "options": {k: v for k, v in sorted(job.options.items()) if k != "threads"},
            "topk": job.topk, "exact": job.exact, "max_pixels": job.max_pixels, "format": args.format,
            "rows_per_part": args.rows_per_part, "listing": {"inputs": listing.count, "sha256": listing.sha256},
        }
        preflight(job, args.address)
        output = Output.open(out, args.mode, fingerprint, args.input)
        if output.complete:
            done = output.record
            print(f"{out} is complete already ({done['rows']} rows, {done['errors']} errors): nothing to resume",
                  file=sys.stderr)
            return EXIT_FAILED if done["errors"] else 0
        if output.reused:
            print(f"resuming {out}: {output.reused} of {listing.count} rows committed by earlier runs are kept",
                  file=sys.stderr)
        parts = Parts(output, listing.count)
        try:
            summary = classify(parts, plan(args.input, output, listing, args.batch_size, parts), listing, job,
                               model_bytes, wheel, args)
            parts.check_complete()
        except BaseException:
            if not output.abandon():  # a run that committed nothing leaves nothing behind
                print(f"{out}: {output.rows()} of {listing.count} rows committed; --mode resume with the same "
                      "inputs, model and flags finishes the rest", file=sys.stderr)
            raise
    parts_done = output.record["parts"]
    crashed = [name for part in parts_done.values() for name in part.get("crashed", [])]
    manifest = {
        "complete": True, "inputs": listing.count, "rows": output.rows(), "errors": output.errors(),
        "format": args.format, "parts": parts_done, "fingerprint": fingerprint,
        "model": {"name": job.model_name, "sha256": job.sha256, "provider": job.provider},
        "configuration": configuration, "versions": _versions(),
        "reused": output.reused, "resumed": output.record["resumed"],
        "wall_s": round(time.perf_counter() - started, 2), "rows_by_node": dict(parts.by_node),
        "rescued": parts.rescued, "crashed": crashed, **summary, **_driver_costs(),
    }
    output.finish(manifest)
    for name in crashed:
        print(f"{name}: crashed the process classifying it (an error row says so)", file=sys.stderr)
    print(f"{listing.count} inputs, {manifest['rows']} rows in {out} ({manifest['errors']} errors, {len(crashed)} "
          f"crashed a worker{f', {output.reused} reused' if output.reused else ''}) in {manifest['wall_s']:.1f} s; "
          "rows by node: " + ", ".join(f"{k[:12]} {v}" for k, v in parts.by_node.items()), file=sys.stderr)
    return EXIT_FAILED if manifest["errors"] else 0


def _driver_costs() -> dict[str, float]:
    """This process's peak resident memory and CPU time: the driver alone, not Ray's daemons or actors."""
    try:
        import resource
    except ImportError:  # Windows
        return {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"driver_peak_rss_mb": round(usage.ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1),
            "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def _versions() -> dict[str, str]:
    import runtimes
    from runtimes.versions import package_versions

    return {"googlenet-deploy": runtimes.__version__, "python": sys.version.split()[0],
            **package_versions("ray", "pyarrow", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino",
                               "opencv-python-headless")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.batch", description=__doc__.splitlines()[0])
    parser.add_argument("input", metavar="INPUT", help="a folder, glob, URI prefix, or manifest of paths/URIs")
    parser.add_argument("output", metavar="OUTPUT", help="the output folder (part files and _manifest.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"exported ONNX model (default: {DEFAULT_MODEL})")
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz from `python -m deploy.bundle`")
    parser.add_argument("--variant", help="bundle: fp32, fp16 or int8 (default: the bundle's default)")
    parser.add_argument("--provider", help="cpu, cuda, tensorrt, openvino or opencv (default: the bundle's first, else cpu)")
    parser.add_argument("--address", help="an existing cluster: auto, or ray://HOST:PORT (default: a private local one)")
    parser.add_argument("--cpus", type=positive_int, help="the private local cluster's CPUs (default: all)")
    parser.add_argument("--actors", type=parse_actors, help="N, or MIN:MAX to autoscale (default: 1:CPUs/threads)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads per actor (default: 1)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per inference call (default: 16)")
    parser.add_argument("--topk", type=positive_int, default=5, help="classes kept per image (default: 5)")
    parser.add_argument("--exact", action="store_true", help="PIL-identical preprocessing for every image")
    add_max_pixels(parser)
    parser.add_argument("--split-decode", action="store_true",
                        help="decode in a stage of its own, before the actors: pays where decoding is the bottleneck "
                             "and the actors are GPUs, or photos are large and nodes many; costs the tensors' memory")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--mode", choices=("create", "overwrite", "resume"), default="create",
                        help="create refuses an existing OUTPUT (default); resume continues a killed or failed run in "
                             "OUTPUT (or starts one where there is none); overwrite starts again, removing only what "
                             "an earlier run of this tool wrote")
    parser.add_argument("--rows-per-part", type=positive_int, default=ROWS_PER_PART,
                        help=f"inputs per part file, each committed when full: what a crash can lose "
                             f"(default: {ROWS_PER_PART})")
    parser.add_argument("--max-crash-retries", type=int, default=1,
                        help="retries of a batch whose process died, on another actor, before its inputs go "
                             "one at a time to a rescue process (default: 1)")
    parser.add_argument("--stall-timeout-s", type=seconds, default=STALL_TIMEOUT_S, metavar="S",
                        help=f"fail the job when no batch finishes for S seconds, naming what it waited for "
                             f"(default: {STALL_TIMEOUT_S})")
    parser.add_argument("--no-runtime-env", action="store_true",
                        help="with --address and a bundle: the nodes have the runtime installed; do not ship its wheel")
    args = parser.parse_args(argv)
    if args.max_crash_retries < 0:
        parser.error("--max-crash-retries must be 0 or more")

    def terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return run(args)
    except JobFailed as exc:
        print(f"error: the job failed: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_cli(main)
