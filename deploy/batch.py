"""Classify millions of images offline on a Ray cluster, every input answered exactly once.

    python -m deploy.batch INPUT OUTPUT [--model M | --bundle DIR|TAR [--variant P]] [--provider P]
        [--address auto|ray://HOST:PORT] [--actors N|MIN:MAX] [--threads N] [--batch-size N]
        [--topk K] [--exact] [--max-pixels N] [--format parquet|jsonl] [--mode create|overwrite]
        [--max-crash-retries N] [--no-runtime-env]

INPUT is a folder or glob, a URI prefix (``s3://bucket/photos/``), or a manifest file of
paths or URIs, one a line (``deploy.batch_inputs``). OUTPUT is a folder of part files
with one row per input (parquet: path, label, labels, probs, class_index, error,
preprocess; jsonl: the line ``runtimes.run --json`` prints, byte for byte) and
``_manifest.json``, written last: a finished run has one, a crashed run has no OUTPUT.
The folder is written beside OUTPUT and renamed into place at the end; ``--mode create``
(the default) refuses an existing OUTPUT, ``overwrite`` replaces it whole, but only when it is
empty or an earlier output of this tool (its ``_manifest.json`` and the parts it names); an
OUTPUT that is, holds or lies inside INPUT is refused in either mode.

Exactly once, checked: the driver writes every row itself, drops a row Ray delivers twice,
and compares the paths written with the input list. Inputs that a crashed process took
with it (named by the actors' ledger), and any input still unanswered when the Ray passes
end, are classified one at a time in a child process: an image that kills its process
costs only itself, and gets an error row naming the crash.

Without ``--address``, a private local cluster runs in a temp folder of its own and is
stopped at the end. With one, the model's bytes travel through Ray's object store and
each actor checks their sha256 before loading; a bundle's runtime wheel travels in the
job's ``runtime_env`` (``--no-runtime-env`` when every node has it installed).

Exit status: 0 every input answered, 1 some inputs have error rows (as ``runtimes.run``),
2 a user error (one line), 3 the job itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from deploy.batch_classify import Job, cached_model, sha256_bytes
from deploy.batch_inputs import list_inputs
from deploy.batch_output import MANIFEST, PartWriter, check_inputs_outside, check_output
from runtimes.atomic import replace_dir, write_text
from runtimes.cli import EXIT_FAILED, EXIT_PARITY_FAILED, add_max_pixels, positive_int, run_cli
from runtimes.errors import ToolkitError, first_line
from runtimes.progress import Progress
from runtimes.spec import DEFAULT_MODEL

EXIT_JOB_FAILED = EXIT_PARITY_FAILED  # 3: the job, not an input
PASSES = 3  # Ray passes before every unanswered input goes to the one-at-a-time rescue
RESCUE_TIMEOUT_S = 120  # per image, in the rescue process


class JobFailed(Exception):
    pass


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


def resolve_model(stack: contextlib.ExitStack, args) -> tuple[Job, bytes, Path | None]:
    """The job every worker runs, the model's bytes, and the bundle's runtime wheel (if any)."""
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
        if config is not None:
            chosen, provider = opened.model(config.model_precision), config.provider
            options = {**config.options(), **options_for(provider)}  # the actors' threads, not the tuned process's
        data = chosen.path.read_bytes()
        wheel = next(iter(sorted((opened.root / "wheels").glob("*.whl"))), None)
        job = Job(f"{args.bundle}:{chosen.path.relative_to(opened.root)}", sha256_bytes(data), chosen.spec.to_json(),
                  **{**common, "provider": provider, "options": options})
        return job, data, wheel
    from runtimes.spec import ModelSpec, require_model

    data = require_model(args.model).read_bytes()
    spec = ModelSpec.from_onnx(args.model).to_json()  # for a decode stage, which loads no model
    return Job(str(args.model), sha256_bytes(data), spec, **common), data, None


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


def rescue(names: list[str], job: Job, model_file: Path | None) -> Iterator[tuple[str, str, bool]]:
    """(name, record, crashed) for each of ``names``, classified one at a time in a child
    process; an input the child dies on gets an error record, and a new child goes on."""
    queue = list(names)
    while queue:
        header = json.dumps({"job": job.to_json(), "model": str(model_file)})
        proc = subprocess.Popen([sys.executable, "-m", "deploy.batch_classify"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(header + "\n" + "".join(n + "\n" for n in queue),
                                        timeout=RESCUE_TIMEOUT_S * len(queue) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = out.splitlines()
        if not lines or lines[0] != "ready":  # it never loaded the model: no input is to blame
            said = err.strip().splitlines()[-1] if err.strip() else "no output"
            raise JobFailed(f"the rescue process (on this machine, with provider {job.provider}) could not start: {said}")
        records = lines[1:]
        for name, record in zip(queue, records):
            yield name, record, False
        if len(records) >= len(queue):
            return
        dead = queue[len(records)]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        yield dead, json.dumps({"image": dead, "error": f"the worker process died ({how}) classifying this image, "
                                                        "alone in its own process"}), True
        queue = queue[len(records) + 1:]


def run(args) -> int:
    started = time.perf_counter()
    out = Path(args.output)
    check_output(out, args)
    names = list_inputs(args.input)
    if out.exists():
        check_inputs_outside(out, names)
    with contextlib.ExitStack() as stack:
        job, model_bytes, wheel = resolve_model(stack, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(0o755)  # mkdtemp makes 0700; the output is meant to be read by others
        stack.callback(shutil.rmtree, staging, ignore_errors=True)  # gone once renamed into place
        writer = PartWriter(staging, args.format)
        answered: set[str] = set()
        per_node: Counter[str] = Counter()
        summary = _ray_passes(names, job, model_bytes, wheel, args, writer, answered, per_node)
        missing = [n for n in names if n not in answered]
        crashed = []
        model_file = cached_model(model_bytes, job.sha256) if missing else None  # for the rescue process
        for name, record, died in rescue(missing, job, model_file):
            answered.add(name)
            writer.add(record)
            per_node["rescue process"] += 1
            if died:
                crashed.append(name)
        writer.close()
        if len(answered) != len(names) or writer.rows != len(names):
            raise JobFailed(f"{writer.rows} rows for {len(names)} inputs after the rescue; OUTPUT not written")
        manifest = {
            "complete": True, "inputs": len(names), "rows": writer.rows, "errors": writer.errors,
            "parts": writer.parts, "format": args.format,
            "model": {"name": job.model_name, "sha256": job.sha256, "provider": job.provider},
            "versions": _versions(), "wall_s": round(time.perf_counter() - started, 2),
            "rows_by_node": dict(per_node), "rescued": missing, "crashed": crashed, **summary,
        }
        write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        replace_dir(staging, out)
    for name in crashed:
        print(f"{name}: crashed the process classifying it (an error row says so)", file=sys.stderr)
    print(f"{len(names)} inputs, {writer.rows} rows in {out} ({writer.errors} errors, {len(crashed)} crashed a worker) "
          f"in {manifest['wall_s']:.1f} s; rows by node: "
          + ", ".join(f"{k[:12]} {v}" for k, v in per_node.items()), file=sys.stderr)
    return EXIT_FAILED if writer.errors else 0


def _ray_passes(names, job, model_bytes, wheel, args, writer, answered, per_node) -> dict:
    """Classify ``names`` on the cluster; what the rescue must do is whatever is not in ``answered`` after."""
    from deploy import batch_ray

    runtime_env = {"py_modules": [str(wheel)]} if wheel and args.address and not args.no_runtime_env else None
    if not args.address:  # the private cluster is this machine: a runtime it lacks is a one-line error now
        from runtimes.adapters import unavailable_error, unavailable_reason

        reason = unavailable_reason(job.provider)
        if reason is not None:
            raise unavailable_error(job.provider, reason)
    _check_reachable(args.address)
    began = time.perf_counter()
    try:
        cluster = batch_ray.start_cluster(args.address, args.cpus, runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ToolkitError(f"cannot start or reach the Ray cluster{' at ' + args.address if args.address else ''}: "
                           f"{first_line(exc)}") from None
    startup = time.perf_counter() - began
    actors = args.actors or (1, max(1, int(cluster["cpus"] // max(1, args.threads or 1))))
    try:
        cpus = batch_ray.actor_cpus(cluster, actors[1], args.threads or 1, args.split_decode)
    except ToolkitError:
        batch_ray.shutdown()
        raise
    progress = Progress(len(names), sys.stderr, quiet_up_to=args.batch_size)
    failures, duplicates, verified, workers = [], 0, {}, []
    try:
        model_ref = batch_ray.put_model(model_bytes)
        pending, suspects = list(names), []
        for _ in range(PASSES):
            ledger, failed = batch_ray.new_ledger(), None
            try:
                for name, record, node in batch_ray.run_pass(
                        pending, job, model_ref, ledger, actors=actors, cpus=cpus,
                        max_crash_retries=args.max_crash_retries, batch_size=args.batch_size,
                        split_decode=args.split_decode):
                    if name in answered:
                        duplicates += 1
                        continue
                    answered.add(name)
                    writer.add(record)
                    per_node[node] += 1
                    progress.advance()
            except Exception as exc:  # a Ray pass failed: find what the dead took with them
                refused = _model_refused(exc)
                if refused:
                    raise JobFailed(refused) from None
                failed = exc
            report = batch_ray.ledger_report(ledger)
            verified.update(report["verified"])
            workers += report["workers"]
            if failed is None:
                break
            if not report["workers"] and not answered:
                raise JobFailed(f"no actor could start: {_last_error_line(failed)}")
            failures.append(f"{type(failed).__name__}: {first_line(failed)[:300]}")
            suspects += [n for n in report["in_hand"] if n not in answered]
            held = set(suspects)
            pending = [n for n in pending if n not in answered and n not in held]
            if not pending:
                break
    finally:
        progress.clear()
        batch_ray.shutdown()
    return {"cluster": cluster, "actors": list(actors), "actor_cpus": cpus, "startup_s": round(startup, 2),
            "ray_failures": failures, "duplicates_dropped": duplicates, "verified_on": verified,
            "actor_processes": workers}


def _check_reachable(address: str | None) -> None:
    """A HOST:PORT that refuses connections is one line now (Ray itself retries for minutes)."""
    import re
    import socket

    found = re.fullmatch(r"(?:ray://)?([\w.-]+):(\d+)", address or "")
    if found:
        try:
            socket.create_connection((found.group(1), int(found.group(2))), timeout=10).close()
        except OSError as exc:
            raise ToolkitError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
                               "start one (`ray start --head`) or leave --address out for a private one") from None


def _model_refused(exc: BaseException) -> str | None:
    """The worker's own line when the model was refused (its sha256), wherever Ray wrapped it."""
    for line in str(exc).splitlines():
        if "refused on " in line and "sha256" in line:
            return line.strip().split("BundleError: ", 1)[-1]
    return None


def _last_error_line(exc: BaseException) -> str:
    """The innermost error Ray's wrapped message carries, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if "Error" in line and ": " in line]
    return (lines[-1] if lines else first_line(exc))[:500]


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
    parser.add_argument("--mode", choices=("create", "overwrite"), default="create",
                        help="create refuses an existing OUTPUT (default); overwrite replaces an empty one or an earlier "
                             "output of this tool, whole")
    parser.add_argument("--max-crash-retries", type=int, default=1,
                        help="restarts of a crashed actor, and retries of its block, before its inputs go "
                             "one at a time to a rescue process (default: 1)")
    parser.add_argument("--no-runtime-env", action="store_true",
                        help="with --address and a bundle: the nodes have the runtime installed; do not ship its wheel")
    args = parser.parse_args(argv)
    if args.max_crash_retries < 0:
        parser.error("--max-crash-retries must be 0 or more")
    try:
        return run(args)
    except JobFailed as exc:
        print(f"error: the job failed: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_cli(main)
