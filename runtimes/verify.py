"""Does this device give PyTorch's answers? Replay the reference answers on its runtime.

    python -m runtimes.verify --bundle DIR [--provider P] [--precision fp32|fp16|int8] [--images N] [--json]
    python -m runtimes.verify --model artifacts/googlenet.onnx [--provider P]
    python -m runtimes.verify --model artifacts/googlenet.int8.onnx   # a variant: its parent's answers

The seeded inputs of the export's parity gate and the reference images (decoded and
preprocessed here, with the exact PIL-identical path) run on the device's runtime; the
logits are compared with the PyTorch logits recorded at export, under the named
tolerance of each model's precision (``runtimes.tolerances``), the one its header prints.
int8 models are judged by top-1 agreement on the images; their noise-input statistics
are shown, not judged, and no top-5 figure is shown for them (see ``_report``).
A variant from ``converters.quantize`` is checked against the answers of the fp32
model it was made from, found beside it by the parent's sha256 its spec records.
``--images N`` is the quick check for a slow device (or an emulator): the smallest seeded
batch and N images spanning PyTorch's classes, named in the output.

Exit status: 0 all within tolerance, 3 some outside it, 2 a user error (a missing or
tampered bundle, a provider that cannot run here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runtimes.cli import EXIT_PARITY_FAILED, positive_int, run_cli
from runtimes.spec import DEFAULT_MODEL

if TYPE_CHECKING:
    from runtimes.reference import Check
    from runtimes.tolerances import Tolerance

def _report(model_name: str, precision: str, tol: "Tolerance", checks: list["Check"], out) -> None:
    """The table, headed by the rule ``checks`` were judged with.

    Without an elementwise bound (int8), violations count nothing and top-5 agreement is
    not judged: it is the share of rows whose five highest classes are PyTorch's, and int8
    swaps near-equal low logits around fifth place (on the demo model's one-row seeded
    batch, 0 of 1 rows: the "top-5 0.0%" once printed next to "verified"). The figure
    judged, top-1 agreement, is shown alone.
    """
    rule = f"atol {tol.atol:g}, rtol {tol.rtol:g}" if tol.elementwise else f"top-1 agreement on images >= {tol.min_top1:.0%}"
    print(f"{precision}  {model_name}  ({rule})", file=out)
    extra = f" {'violations':>10} {'top-1':>7} {'top-5':>7}" if tol.elementwise else f" {'top-1':>7}"
    print(f"  {'check':<16} {'max |d|':>9} {'mean |d|':>9}{extra}  result", file=out)
    for c in checks:
        s = c.stats
        result = ("ok" if s.passed else "FAILED") if c.judged else "shown"
        figures = (
            f" {s.violations:>10} {s.top1_agreement:>7.1%} {s.top5_agreement:>7.1%}" if tol.elementwise
            else f" {s.top1_agreement:>7.1%}"
        )
        print(f"  {c.name:<16} {s.max_abs:>9.2e} {s.mean_abs:>9.2e}{figures}  {result}", file=out)


def verify(
    *,
    bundle: Path | None = None,
    model: Path = DEFAULT_MODEL,
    provider: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    ckpt: Path | None = None,
    json_output: bool = False,
    locate: bool = False,
    images: int | None = None,
    out=None,
) -> int:
    """Run the checks and print them; 0 if every judged check passed, else EXIT_PARITY_FAILED.

    A bundle's every model file is checked as the bundle runs it without tuning, each at its
    own precision's tolerance. A tuned choice that applies here is checked in addition, in
    exactly the configuration ``runtimes.run --bundle`` loads: the first of the choice and
    its fallbacks that loads, with its options, at its batch size, at its precision's
    tolerance. ``provider`` or ``precision`` check the bundle's models as named instead.
    The final line names every configuration judged.
    """
    import contextlib

    from runtimes.adapters import create_runner
    from runtimes.bundle import open_bundle
    from runtimes.reference import IMAGE_BATCH, Reference, reference_for, replay
    from runtimes.spec import ModelSpec
    from runtimes.tolerances import for_precision
    from runtimes.tuned import first_loadable, provider_attempts, tuned_attempts, usable_tuned

    out = out or sys.stdout
    given = {"threads": threads, "ckpt": ckpt}
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        if bundle is not None:
            opened = stack.enter_context(open_bundle(bundle))
            reference = Reference.load(opened.reference)
            header = f"bundle {bundle} (made by googlenet-deploy {opened.made_by}, target {opened.target})"
            tuned = usable_tuned(bundle, opened, {**given, "provider": provider, "precision": precision}, notes.append)
            chosen = [opened.model(precision)] if precision else list(opened.models.values())
            providers = (provider,) if provider else opened.providers
            # every model file as the bundle runs it by default, each at its own precision's tolerance;
            # the tuned configuration in addition, never instead
            groups = [provider_attempts(m.path, m.spec, providers, given) for m in chosen]
            if tuned is not None:
                groups.append(tuned_attempts(opened, tuned, given))
        else:
            spec = ModelSpec.from_onnx(model)
            groups = [provider_attempts(model, spec, (provider or "cpu",), given)]
            reference = Reference.load(reference_for(model, spec))
            header = f"model {model}"
        if images is not None:
            whole, reference = reference, reference.subset(images)
            notes.append(f"quick check (--images {images}): seeded batch {len(reference.inputs[0])} of "
                         f"{len(whole.inputs)}, and {len(reference.images)} of {len(whole.images)} images: "
                         f"{', '.join(reference.image_names) or 'none'}")
        results, failed = [], False
        for attempts in groups:
            runner, used, skipped = first_loadable(attempts, lambda a: create_runner(
                a.provider, a.model, a.spec, batch_size=a.batch_size or IMAGE_BATCH, **a.options).load())
            with runner:
                judged_as = used.precision or runner.spec.precision
                tol = for_precision(judged_as)  # the one rule: judged with, and printed
                checks = replay(runner, reference, tol, used.batch_size)
                active = runner.active_providers()
            failed |= not all(c.passed for c in checks)
            shown = used.model.relative_to(opened.root).as_posix() if bundle is not None else str(used.model)
            results.append({"model": shown, "precision": judged_as, "tolerance": tol, "provider": used.label(),
                            "tuned": used.configuration is not None, "passed": all(c.passed for c in checks),
                            "runs_on": active, "providers_skipped": skipped, "checks": checks})
            if locate and not all(c.passed for c in checks) and not any("located" in r for r in results):
                fp32 = opened.model("fp32").path if bundle is not None else _fp32_beside(reference_for(model, spec))
                results[-1]["located"] = _locate(fp32, used, judged_as, reference, checks, runner.spec)
    if json_output:
        from runtimes.diagnosis import public

        record = {"source": header, "passed": not failed, "notes": notes, "models": [
            {**r, "tolerance": dataclasses.asdict(r["tolerance"]),
             **({"located": public(r["located"])} if "located" in r else {}),
             "checks": [{"name": c.name, "judged": c.judged, **c.stats.as_dict()} for c in r["checks"]]}
            for r in results
        ]}
        print(json.dumps(record), file=out)
    else:
        print(header, file=out)
        for note in notes:
            print(note, file=out)
        for r in results:
            for reason in r["providers_skipped"]:
                print(f"note: skipped: {reason}", file=out)
            print(f"provider {r['provider']} ({', '.join(r['runs_on'])})", file=out)
            _report(r["model"], r["precision"], r["tolerance"], r["checks"], out)
            if "located" in r:
                from runtimes.diagnosis import table

                print(table(r["located"]), file=out)
                print(r["located"]["line"], file=out)
        judged = "; ".join(_judged(r) for r in results)
        verdict = (f"FAILED: outside tolerance (judged: {judged})" if failed
                   else f"verified: every configuration judged agrees with PyTorch within tolerance ({judged})")
        print(verdict, file=out)
    return EXIT_PARITY_FAILED if failed else 0


def _judged(result: dict) -> str:
    """``openvino int8, batch 1, 2 threads (tuned) at top-1 >= 95%``: one configuration verify checked, and by what rule."""
    tol = result["tolerance"]
    rule = f"atol {tol.atol:g}" if tol.elementwise else f"top-1 >= {tol.min_top1:.0%}"
    what = result["provider"] if result["tuned"] else f"{result['provider']} {result['precision']}"
    return f"{what}{' (tuned)' if result['tuned'] else ''} at {rule}" + ("" if result["passed"] else ": FAILED")


def _fp32_beside(reference: Path) -> Path:
    """The fp32 model whose reference answers ``reference`` are: ``dir/stem.reference.npz`` -> ``dir/stem.onnx``."""
    from runtimes.reference import SUFFIX

    return reference.with_name(reference.name[: -len(SUFFIX)] + ".onnx")


def _locate(fp32: Path, used, precision: str, reference, checks, spec) -> dict:
    """runtimes.locate on the input of the first failing check."""
    from runtimes.diagnosis import diagnose, failing_input, precision_options

    options = {**precision_options(used.provider, precision), **used.options}
    return diagnose(fp32, used.model, used.provider, precision, reference, failing_input(checks, reference, spec),
                    options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimes.verify", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", type=Path, help="a bundle folder or .tar.gz from `python -m deploy.bundle`")
    source.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"an exported model with its .reference.npz beside it (default: {DEFAULT_MODEL})")
    parser.add_argument("--provider", help="runtime to check (default: the bundle's preference, else cpu)")
    parser.add_argument("--precision", help="bundle: check only this model (fp32, fp16, int8); default: all")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: physical cores)")
    parser.add_argument("--ckpt", type=Path, help="torch: the source checkpoint (default: the one the model records, beside it)")
    parser.add_argument("--images", type=positive_int, metavar="N",
                        help="quick check: the smallest seeded batch and N of the reference images, spanning the classes")
    parser.add_argument("--json", dest="json_output", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--locate", action="store_true",
                        help="on the first failing check, name the layer where the model goes wrong (runtimes.diverge; needs onnx)")
    return verify(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
