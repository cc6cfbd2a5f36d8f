"""What a sweep (``deploy.sweep``) reports: the plain-text table and the PNG of throughput and p99
against concurrency, both read from the sweep's report dict (the one ``--json`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _value(value: float | None, interval: list[float] | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    shown = f"{value:.{digits}f}"
    return shown + (f" [{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]" if interval else "")


def table(report: dict[str, Any]) -> str:
    """The plain-text table: the in-process line, a row per level, then each protocol's knee."""
    local = report["in_process"]
    base = local["images_per_s"]
    lines = [f"in-process, one caller: {_value(base, local['images_per_s_range'])} img/s, "
             f"p50 {_value(local['p50_ms'], local['p50_ms_range'], 2)} ms, "
             f"p99 {_value(local['p99_ms'], local['p99_ms_range'], 2)} ms; "
             f"{local['windows']} windows, {'stable' if local['stable'] else 'unstable'}",
             f"{'protocol':<12} {'conc':>4}  {'img/s [range]':<22} {'vs in-proc':>10}  {'p50 ms [range]':<26} "
             f"{'p99 ms [range]':<26} {'errors':>6} {'wrong':>6} {'windows':>7}  stability"]
    for row in report["levels"]:
        ratio = f"{row['images_per_s'] / base:.2f}x" if base else "-"
        rate = _value(row["images_per_s"], row["images_per_s_range"])
        lines.append(f"{row['protocol']:<12} {row['concurrency']:>4}  {rate:<22} "
                     f"{ratio:>10}  {_value(row['p50_ms'], row['p50_ms_range'], 2):<26} "
                     f"{_value(row['p99_ms'], row['p99_ms_range'], 2):<26} {row['errors']:>6} {row['wrong']:>6} "
                     f"{row['windows']:>7}  {'stable' if row['stable'] else 'unstable'}")
    bound = report["settings"]["max_p99_ms"]
    for protocol, best in report["knees"].items():
        if best is None:
            lines.append(f"knee {protocol}: none (no level kept p99 within {bound:g} ms "
                         "without errors or wrong answers)")
        else:
            lines.append(f"knee {protocol}: concurrency {best['concurrency']}, {best['images_per_s']:.1f} img/s, "
                         f"p99 {best['p99_ms']:.2f} ms (bound {bound:g} ms)")
    for row in report["levels"]:
        for kind in ("error", "wrong"):
            if row[f"first_{kind}"]:
                lines.append(f"first {kind} at {row['protocol']} concurrency {row['concurrency']}: "
                             f"{row[f'first_{kind}']}")
    lines.append(f"[ranges]: each figure window by window, over every window of the level; "
                 f"every answer checked: {report['rule']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path, title: str = "") -> None:
    """Throughput and p99 against concurrency, one line per protocol, ranges as error bars, knees starred; a PNG
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtimes.atomic import write_figure

    fig, (throughput, p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = report["levels"]
    for protocol in report["settings"]["protocols"]:
        rows = [row for row in levels if row["protocol"] == protocol]
        x = [row["concurrency"] for row in rows]
        for ax, key in ((throughput, "images_per_s"), (p99, "p99_ms")):
            shown = [(c, row[key], row[f"{key}_range"]) for c, row in zip(x, rows) if row[key] is not None]
            if not shown:
                continue
            error = [[max(v - (r or [v, v])[0], 0) for _, v, r in shown],
                     [max((r or [v, v])[1] - v, 0) for _, v, r in shown]]
            line = ax.errorbar([c for c, _, _ in shown], [v for _, v, _ in shown], yerr=error, marker="o", capsize=3,
                               label=protocol)
            best = report["knees"].get(protocol)
            if best is not None:
                ax.plot([best["concurrency"]], [best[key]], marker="*", markersize=14, color=line[0].get_color())
    local = report["in_process"]["images_per_s"]
    throughput.axhline(local, color="gray", linestyle="--", label="in-process, one caller")
    p99.axhline(report["settings"]["max_p99_ms"], color="tab:red", linestyle=":", label="--max-p99-ms")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    p99.set_yscale("log")  # from one request's time to a queue of sixteen
    p99.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    p99.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    p99.yaxis.set_minor_formatter(NullFormatter())
    ticks = report["settings"]["concurrency"]
    for ax, name, unit in ((throughput, "throughput (range over windows; * knee)", "images/s"),
                           (p99, "p99 latency (range over windows)", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(unit)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_figure(path, fig)


def has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
