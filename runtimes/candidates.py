"""The configurations ``runtimes.tune`` measures: every provider, precision, batch size,
thread count and, where it matters, provider option a bundle can run here. Enumerated,
not sampled; a knob that cannot matter is dropped, and every dropped configuration is
kept with its reason, so the tuner's report shows what was not tried and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtimes.tuned import PRECISION_RANK, RUNTIME_PRECISIONS, Configuration

GPU_PROVIDERS = ("cuda", "tensorrt")
# The CPU flags with which OpenVINO computes in bf16, and in f16, natively; without
# them it runs that precision as another (f16 as bf16 or f32, bf16 as f32).
NATIVE = {"bf16": ("avx512_bf16", "amx_bf16"), "f16": ("avx512_fp16", "amx_fp16", "asimdhp")}
DEFAULT_BATCH_SIZES = {"latency": (1,), "throughput": (1, 8)}


@dataclass(frozen=True)
class Dropped:
    configuration: Configuration
    reason: str


def default_threads(cores: int) -> list[int]:
    """One thread and every physical core: the two ends, which is where the fastest lies on a small CPU."""
    return sorted({1, cores})


def default_precisions(models: Sequence[str]) -> list[str]:
    """The bundle's files, then the precisions runtimes apply to the fp32 file."""
    runtime = [p for options in RUNTIME_PRECISIONS.values() for p in options]
    return list(dict.fromkeys([*models, *runtime]))


def enumerate_candidates(
    *,
    models: Sequence[str],
    providers: Sequence[str],
    precisions: Sequence[str],
    batch_sizes: Sequence[int],
    threads: Sequence[int],
    metric: str,
    cpu_flags: Sequence[str],
    unavailable: Callable[[str], str | None],
) -> tuple[list[Configuration], list[Dropped]]:
    """(the configurations to measure, those dropped with their reasons), in the order given."""
    kept: list[Configuration] = []
    dropped: list[Dropped] = []
    for provider in providers:
        missing = unavailable(provider)
        collapsed = missing or provider in GPU_PROVIDERS  # no thread or hint knob to try
        for precision in precisions:
            for batch in batch_sizes:
                reason = _why_not(Configuration(provider, precision, batch), missing, models, cpu_flags)
                if reason:  # whatever the knobs: listed once
                    dropped.append(Dropped(Configuration(provider, precision, batch), reason))
                    continue
                for count in [None] if collapsed else threads:
                    for hint in ("LATENCY", "THROUGHPUT") if provider == "openvino" else (None,):
                        config = Configuration(provider, precision, batch, count, hint)
                        if hint == "THROUGHPUT" and metric == "latency":
                            dropped.append(Dropped(config, "the latency metric sends one request at a time; the "
                                                   "THROUGHPUT hint's streams only fill with concurrent ones"))
                            continue
                        kept.append(config)
                if provider in GPU_PROVIDERS:
                    dropped += [Dropped(Configuration(provider, precision, batch, t), f"threads do not apply "
                                        f"to {provider}: the GPU runs the graph") for t in threads]
    return kept, dropped


def _why_not(config: Configuration, missing: str | None, models: Sequence[str], cpu_flags: Sequence[str]) -> str | None:
    """Why ``config`` cannot be tried here whatever its threads and hint, or None."""
    provider, precision = config.provider, config.precision
    if missing:
        return f"{provider} cannot run here: {missing}"
    if provider == "torch":
        return "torch is the reference the gate compares with, not a deployment runtime"
    if precision not in PRECISION_RANK:
        return f"unknown precision {precision}"
    applied_by = [p for p, options in RUNTIME_PRECISIONS.items() if precision in options]
    if precision not in models and applied_by and provider not in applied_by:
        verb = "applies" if len(applied_by) == 1 else "apply"
        return (f"{precision} is a precision {' and '.join(applied_by)} {verb} to the fp32 file; "
                f"{provider} runs the bundle's files")
    if config.model_precision not in models:
        return f"the bundle holds no {precision} model (it has {', '.join(models)})"
    native = NATIVE.get(precision) if provider == "openvino" and precision in RUNTIME_PRECISIONS["openvino"] else None
    if native and not any(flag in cpu_flags for flag in native):
        runs_as = "f32, the fp32 candidate" if precision == "bf16" else "bf16 or f32, another candidate"
        return f"this CPU has no {' or '.join(native)}: OpenVINO would run {precision} as {runs_as}"
    return None


def tie_break(config: Configuration, provider_order: Sequence[str]) -> tuple:
    """Sort key among tied configurations: the higher precision, then fewer threads, then the
    bundle's own provider order, then the smaller batch and OpenVINO's default hint."""
    order = list(provider_order)
    return (
        PRECISION_RANK.get(config.precision, len(PRECISION_RANK)),
        config.threads or 0,
        order.index(config.provider) if config.provider in order else len(order),
        config.batch_size,
        config.hint not in (None, "LATENCY"),
    )
