"""The locator as the tools run it: anchor the reference, run the candidate as it normally
runs, locate (``runtimes.locate``), and report: the table, the verdict line, the ``--out``
folder. For ``runtimes.diverge``, ``runtimes.verify --locate``, ``runtimes.tune`` and
``converters.quantize --repair``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import ToolkitError
from runtimes.cut import onnx_module, run_reference
from runtimes.locate import locate, verdict_line


def precision_options(provider: str, precision: str) -> dict[str, Any]:
    """The runner options that make ``provider`` run at ``precision`` (OpenVINO's bf16 or f16, TensorRT's f16)."""
    from runtimes.tuned import RUNTIME_PRECISIONS

    return dict(RUNTIME_PRECISIONS.get(provider, {}).get(precision, {}))


def failing_input(checks, reference, spec) -> np.ndarray:
    """The input of the first failing check of a replay (``runtimes.reference.replay``): its
    seeded batch, or for the images the first reference image."""
    from runtimes import preprocess

    first = next(c for c in checks if not c.passed)
    sizes = [f"seeded batch {len(x)}" for x in reference.inputs]
    if first.name in sizes:
        return reference.inputs[sizes.index(first.name)]
    return preprocess.stack([preprocess.load(reference.images[0], spec, reference.image_names[0])])


def anchor(reference_model, reference) -> None:
    """The reference must itself give PyTorch's recorded answers within fp32 tolerance."""
    from runtimes.errors import ParityError
    from runtimes.parity import compare as parity
    from runtimes.tolerances import FP32

    input_name, output = reference_model.graph.input[0].name, reference_model.graph.output[0].name
    for x, logits in zip(reference.inputs, reference.input_logits):
        stats = parity(logits, run_reference(reference_model, {input_name: x}, [output])[output], FP32)
        if not stats.passed:
            raise ParityError(
                f"the reference itself (ONNX Runtime CPU, optimizations off, on the fp32 model) does not give "
                f"PyTorch's answers for seeded batch {len(x)}: max |d| {stats.max_abs:.2e}, {stats.violations} logits "
                "outside fp32 tolerance; re-export the model before locating anything"
            )


def diagnose(fp32_model: Path, candidate: Path, provider: str, precision: str, reference, x: np.ndarray, *,
             options: dict[str, Any] | None = None, mode: str = "auto") -> dict[str, Any]:
    """Anchor the reference, run the candidate as it normally runs, then locate; the report as a dict."""
    import time

    from runtimes.adapters import create_runner

    onnx = onnx_module()
    started = time.perf_counter()
    options = options or {}
    reference_model, candidate_model = onnx.load(str(fp32_model)), onnx.load(str(candidate))
    anchor(reference_model, reference)
    logits, failed = None, None
    try:
        with create_runner(provider, candidate, None, batch_size=len(x), **options) as runner:
            logits = runner.infer(x)
    except ToolkitError as exc:
        failed = str(exc)
    located = locate(reference_model, candidate_model, provider, precision, x, mode=mode, options=options,
                     logits=logits)
    return {
        "provider": provider, "precision": precision, "candidate": str(candidate), "reference": str(fp32_model),
        "mode": located.mode, "budget": located.budget, "logits_rel_l2": located.logits_rel_l2,
        "candidate_failed": failed,
        "verdict": located.verdict, "line": verdict_line(located.verdict, precision, provider),
        "notes": located.notes, "stats": [s.as_dict() for s in located.stats],
        "seconds": round(time.perf_counter() - started, 2),
        "_reduced": located.reduced, "_reduced_inputs": located.reduced_inputs, "_input": x,
    }


def table(report: dict[str, Any], rows: int = 12) -> str:
    """The tensors around the first divergence: topo index, node, op, tensor, relative L2, jump, local error."""
    stats = report["stats"]
    observed = [s for s in stats if s["rel_l2"] is not None]
    budget = report["budget"]
    first = next((i for i, s in enumerate(stats) if s["rel_l2"] is not None and s["rel_l2"] > budget), None)
    shown = stats[max(0, first - 3): first + rows] if first is not None else observed[-rows:]
    lines = [f"{'#':>4}  {'node':<44} {'op':<18} {'rel L2':>9} {'jump':>8} {'local':>9}  tensor"]
    for s in shown:
        rel = "not obs." if not s["observable"] and s["rel_l2"] is None else (
            f"{s['rel_l2']:.2e}" if s["rel_l2"] is not None else "-")
        jump = f"{s['jump']:.1f}x" if s["jump"] is not None else ("new" if s["rel_l2"] and s["inherited"] == 0 else "")
        local = f"{s['local']:.2e}" if s["local"] is not None else ""
        lines.append(f"{s['index']:>4}  {s['node'][-44:]:<44} {s['op']:<18} {rel:>9} {jump:>8} {local:>9}  {s['tensor']}")
    hidden = sum(1 for s in stats if not s["observable"])
    lines.append(f"{len(observed)} of {len(stats)} tensors observed ({report['mode']}; budget relative L2 "
                 f"{budget:g} for {report['precision']})" + (f"; {hidden} not observable on this candidate" if hidden else ""))
    return "\n".join(lines)


def write_out(report: dict[str, Any], folder: Path) -> list[Path]:
    """report.json, the smallest failing model and its inputs (.npz, no pickle): written into a staging
    folder beside ``folder`` and renamed into place, so ``folder`` holds one run's files. ``folder``
    must be new or empty (``runtimes.atomic.check_replaceable``)."""
    import io
    import json
    import shutil

    from runtimes.atomic import check_replaceable, replace_dir

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        (staging / "report.json").write_text(json.dumps(public(report), indent=2) + "\n", encoding="utf-8")
        inputs = report["_reduced_inputs"] if report["_reduced"] is not None else {"input": report["_input"]}
        buffer = io.BytesIO()
        np.savez(buffer, **inputs)  # keyed by tensor name, as the model reads them
        (staging / "inputs.npz").write_bytes(buffer.getvalue())
        if report["_reduced"] is not None:
            (staging / "reduced.onnx").write_bytes(report["_reduced"])
        staging.chmod(0o755)  # mkdtemp makes 0700
        check_replaceable(folder)  # runtimes.diverge checked before its run; it may have filled since
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in ("report.json", "inputs.npz", "reduced.onnx") if (folder / name).is_file()]


def public(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if not k.startswith("_")}
