"""What ``runtimes.tune`` shows: the table of candidates, the dry run's plan, and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtimes.race import MIN_ROUNDS


def markdown(record: dict[str, Any], path: Path, written: bool = True) -> str:
    device = record["device"]
    lines = [f"{device['cpu']} ({', '.join(device['cpu_flags'])}), {device['cores']} cores"
             + (f", GPU {', '.join(device['gpu'])}" if device["gpu"] else "")
             + f"; metric {record['metric']}, {record['seconds']:.0f} s of a {record['protocol']['budget_s']:g} s budget, "
             f"{record['protocol']['rounds']} rounds ({record['protocol']['stopped_because']})", "",
             f"| configuration | gate | p50 ms | p99 ms | {'per-image cost ' if record['metric'] == 'throughput' else ''}"
             "vs choice (99% CI) | status | reason |",
             "|---|---|---|---|---|---|---|"]
    for c in record["candidates"]:
        shown = label(c)
        gate = "" if c["gate"] is None else ("pass" if c["gate"]["passed"] else "FAIL")
        t = c.get("timing") or {}
        vs = ""
        if c["status"] == "chosen":
            vs = "1.00x"
        elif "ratio_to_choice" in t:
            low, high = t["ratio_ci"]
            vs = (f"{t['ratio_to_choice']:.2f}x ({low:.2f}-{high:.2f})" if high is not None and t["rounds"] >= MIN_ROUNDS
                  else f"{t['ratio_to_choice']:.2f}x ({t['rounds']} rounds: no interval yet)")
        p50 = f"{t['median_ms']:.2f}" if t else ""
        p99 = f"{t['p99_ms']:.2f}" if t else ""
        lines.append(f"| {shown} | {gate} | {p50} | {p99} | {vs} | {c['status']} | {_cell(c['reason'])} |")
    lines.append("")
    for precision, repair in record.get("repaired", {}).items():
        lines.append(repair_line(precision, repair))
    labelled = next((c["labelled"] for c in record["candidates"] if c.get("labelled")), None)
    if labelled:
        lines.append(f"labelled: {labelled['images']} images, compared with fp32 image by image; with no image "
                     f"differing they bound a drop only to {labelled['detectable_points']:.1f} points at 95%")
    choice = record["choice"]
    if choice is None:
        if any(c["reason"].startswith("p99 ") for c in record["candidates"]):
            why = "every candidate that gives PyTorch's answers here exceeded --max-p99-ms"
        elif any(c["status"] == "rejected" for c in record["candidates"]):
            why = "no candidate gives PyTorch's answers here"
        else:
            why = "no candidate could run here"
        lines.append(f"no choice: {why}; " + (f"the evidence is in {path}" if written else f"{path} was kept"))
    else:
        lines.append(f"choice: {label(choice)}; " + (f"written to {path}" if written else f"not written: {path} was kept"))
        speedup = record["speedup_vs_default"]
        if speedup and speedup.get("ratio"):
            ci = speedup.get("ci")
            interval = f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci and ci[1] is not None else ""
            lines.append(f"{speedup['ratio']:.2f}x{interval} the bundle's default, {label(speedup['default'])}"
                         + (" (by their fastest calls: the default was not raced)" if "from" in speedup else ""))
        elif speedup:
            lines.append(f"the bundle's default, {label(speedup['default'])}: {speedup.get('why', 'not timed')}")
        confirmation = record["confirmation"]
        if confirmation.get("done"):
            pairs = f"{confirmation['pairs']} pair{'s' if confirmation['pairs'] != 1 else ''}"
            lines.append(f"confirmed in {pairs} of fresh processes: the runner-up "
                         f"{label(confirmation['runner_up'])} took {confirmation['median']:.2f}x the choice's time")
        else:
            lines.append(f"not confirmed in fresh processes: {confirmation['why']}")
    return "\n".join(lines)


def repaired_models(models: dict) -> dict[str, dict[str, Any]]:
    """precision -> what ``converters.quantize --repair`` did to make that model, for the bundle's repaired models."""
    return {precision: m.spec.variant["repair"] for precision, m in models.items() if m.spec.variant.get("repair")}


def repair_line(precision: str, repair: dict[str, Any]) -> str:
    """What the repair did to a model in the table, and what it cost in speed where it was measured."""
    speed = repair.get("speed") or {}
    cost = (f"; at repair its speed-up over fp32 on ONNX Runtime CPU was {speed['kept']:.0%} of the plain int8 "
            f"model's ({speed['speedup repaired int8']:.2f}x against {speed['speedup plain int8']:.2f}x, "
            f"{speed.get('cpu', 'CPU not recorded')})" if "kept" in speed else "")
    return (f"{precision} is repaired (converters.quantize --repair): {repair.get('steps', '?')}; "
            f"{len(repair.get('fp32_nodes', []))} nodes kept in fp32 beyond the default{cost}")


def label(config: dict[str, Any]) -> str:
    from runtimes.tuned import Configuration

    return Configuration(config["provider"], config["precision"], config["batch_size"], config.get("threads"),
                         config.get("hint")).label()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def print_plan(args, candidates: list, skipped: list, reference, pairs: int, out) -> None:
    seeded = sum(len(x) for x in reference.inputs)
    plan = {
        "dry_run": True,
        "choice": None,
        "candidates": [{**c.config.as_dict(), "status": "planned", "reason": ""} for c in candidates]
        + [{**c.config.as_dict(), "status": "skipped", "reason": c.reason} for c in skipped],
        "plan": {"budget_s": args.budget_s, "metric": args.metric, "to_gate": len(candidates), "dropped": len(skipped),
                 "reference": {"seeded_rows": seeded, "images": len(reference.images)}, "confirm_pairs": pairs},
    }
    if args.json:
        print(json.dumps(plan, indent=2), file=out)
        return
    print(f"{len(candidates)} candidates, {len(skipped)} dropped; budget {args.budget_s:g} s, metric {args.metric}", file=out)
    for i, c in enumerate(candidates, 1):
        print(f"  {i:>3}. {c.config.label()}", file=out)
    for c in skipped:
        print(f"  dropped: {c.config.label()}: {c.reason}", file=out)
    print(
        f"plan: gate each candidate ({seeded} seeded rows and {len(reference.images)} images at its batch size, "
        f"against PyTorch's logits); race those that pass in interleaved rounds until one is left, the rest tie "
        f"within {args.min_gain:g}, or the budget is spent; confirm the winner against the runner-up in {pairs} pairs "
        "of fresh processes; write tuned.json",
        file=out,
    )


def plot(record: dict[str, Any], path: Path) -> None:
    """Write :func:`figure` as a PNG, atomically."""
    from runtimes.atomic import write_figure

    write_figure(path, figure(record))


def figure(record: dict[str, Any]):
    """A bar per candidate: its p50 with the 99% interval of its ratio to the choice; rejected
    ones hatched, with their reason, so a fast-but-wrong one is visibly refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in record["candidates"] if c.get("timing") or (c["status"] == "rejected" and c.get("gate"))]
    chosen = next((c for c in rows if c["status"] == "chosen"), None)
    key = "cost_ms" if record["metric"] == "throughput" else "median_ms"  # what the ratios compare
    base = chosen["timing"][key] if chosen else None
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    colors = {"chosen": "tab:green", "tied": "tab:olive", "eliminated": "tab:gray"}
    for y, c in enumerate(rows):
        t = c.get("timing") or {}
        value = t.get(key)
        if c["status"] == "rejected":  # at its own p50 if it was timed, else as wide as the choice
            value = value or base or 1.0
            ax.barh(y, value, color="white", edgecolor="tab:red", hatch="//")
            ax.text(value, y, f"  rejected: {c['reason'][:90]}", va="center", fontsize=7, color="tab:red")
            continue
        error, end = None, value
        if base and t.get("ratio_ci") and t["ratio_ci"][1] is not None and t["rounds"] >= MIN_ROUNDS:
            low, high = (r * base for r in t["ratio_ci"])
            error, end = [[max(value - low, 0)], [max(high - value, 0)]], max(high, value)
        ax.barh(y, value, color=colors.get(c["status"], "tab:blue"), xerr=error, capsize=3)
        ax.text(end, y, f"  {c['status']}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label(c) for c in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{'ms per image' if key == 'cost_ms' else 'p50 ms per call'} "
                  "(bars: 99% interval of the paired ratio to the choice)")
    ax.set_title(f"runtimes.tune on {record['device']['cpu']}, {record['device']['cores']} cores: "
                 f"{'choice ' + label(record['choice']) if record['choice'] else 'no candidate passed'}", fontsize=9)
    fig.tight_layout()
    return fig
