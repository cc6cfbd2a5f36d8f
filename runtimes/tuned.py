"""A bundle's tuned configuration: what ``runtimes.tune`` chose on this device, and what the
commands that load a bundle (``runtimes.run``, ``runtimes.verify``, ``deploy.serve``) load.

``runtimes.tune`` writes ``DIR/tuned.json`` (for a tarball, the sidecar
``DIR.tar.gz.tuned.json``: the archive is never rewritten). It holds the choice and its
ranked fallbacks, each of which passed the parity gate, the sha256 of the ``bundle.json``
it was tuned for and the fingerprint of the device (``runtimes.device``). A command
uses it only while both still match and every configuration it names is one the file's
own evidence shows passing the gate (``candidates``), on a provider of the bundle's, in a
precision that provider has there, with a batch size of at most ``MAX_BATCH_SIZE`` and no
more threads than this process may use. It says so in one line, and otherwise warns once
with the reason and does what it did without one: the bundle's default model on the
bundle's providers, in order. Flags that pick the configuration (``--provider``,
``--variant``, an OpenVINO ``--precision``, TensorRT's ``--fp16``) override it;
``--threads`` and ``--batch-size`` override only their knob.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from runtimes.bundle import MANIFEST, Bundle, open_bundle, sha256_file
from runtimes.errors import BundleError, ProviderError
from runtimes.spec import ModelSpec

T = TypeVar("T")

TUNED = "tuned.json"
FORMAT = 1
# Precisions a runtime applies to the fp32 file itself, as opposed to the bundle's
# fp16 and int8 files: provider -> {precision: runner options}.
RUNTIME_PRECISIONS: dict[str, dict[str, dict[str, Any]]] = {
    "openvino": {"bf16": {"precision": "bf16"}, "f16": {"precision": "f16"}},
    "tensorrt": {"f16": {"fp16": True}},
}
# Ties go to the higher precision: fp32, then fp16 (either kind), bf16, int8.
PRECISION_RANK = {"fp32": 0, "fp16": 1, "f16": 1, "bf16": 2, "int8": 3}
# The flags that pick a configuration themselves: with any of them, tuned.json is not used.
PICKING_FLAGS = ("provider", "variant", "precision", "fp16")
# The largest batch the tuner tries (its --batch-sizes stop here), so the largest a tuned.json may
# name: a batch of 64 at 224 x 224 holds 38.5 MB of input, and ORT CPU peaked at 1.6 GB with it on
# the demo model (0.30 GB at batch 8; 2-core AMD EPYC). A tuned.json's 100,000 took run to 4.3 GB.
MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class Configuration:
    """One way to run a bundle: a provider, a precision, a batch size and the provider's knobs.

    ``precision`` is a bundle file's (fp32, fp16, int8) or one the runtime applies to the
    fp32 file (OpenVINO's bf16 and f16 inference precision, TensorRT's f16 engine).
    ``threads`` None leaves the runtime's default (a GPU's, say); ``hint`` is OpenVINO's
    performance hint, None elsewhere.
    """

    provider: str
    precision: str
    batch_size: int
    threads: int | None = None
    hint: str | None = None

    @property
    def model_precision(self) -> str:
        """The bundle file this configuration runs."""
        return "fp32" if self.precision in RUNTIME_PRECISIONS.get(self.provider, {}) else self.precision

    @property
    def tolerance_precision(self) -> str:
        """The precision whose named tolerance judges it (f16 is judged as fp16)."""
        return "fp16" if self.precision == "f16" else self.precision

    def options(self) -> dict[str, Any]:
        """The runner options this configuration sets."""
        options = dict(RUNTIME_PRECISIONS.get(self.provider, {}).get(self.precision, {}))
        if self.threads is not None:
            options["threads"] = self.threads
        if self.hint is not None:
            options["hint"] = self.hint
        return options

    def label(self) -> str:
        """``openvino int8, batch 1, 2 threads``."""
        parts = [f"{self.provider} {self.precision}", f"batch {self.batch_size}"]
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        if self.hint is not None:
            parts.append(f"{self.hint} hint")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Configuration":
        names = {f.name for f in fields(cls)}
        from runtimes.adapters import RUNNERS

        config = cls(**{k: v for k, v in data.items() if k in names})

        def count(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if not (config.provider in RUNNERS and config.precision in PRECISION_RANK and count(config.batch_size)
                and (config.threads is None or count(config.threads))
                and (config.hint is None or config.hint in ("LATENCY", "THROUGHPUT"))):
            raise ValueError(f"not a configuration: {data}")
        return config


@dataclass(frozen=True)
class Tuned:
    """A usable tuned.json: the choice first, then its fallbacks."""

    path: Path
    configurations: tuple[Configuration, ...]
    speedup: float | None = None  # the choice over the bundle's default, when that was measured

    @property
    def choice(self) -> Configuration:
        return self.configurations[0]


def tuned_path(bundle: str | Path) -> Path:
    """``DIR/tuned.json`` for a folder; ``DIR.tar.gz.tuned.json`` beside a tarball."""
    bundle = Path(bundle)
    if bundle.name.endswith((".tar.gz", ".tgz")) and not bundle.is_dir():
        return bundle.with_name(bundle.name + "." + TUNED)
    return bundle / TUNED


def read_tuned(bundle: str | Path, opened: Bundle) -> tuple[Tuned | None, str | None]:
    """(the tuned choice, None) when it applies here; (None, why not) when there is a
    tuned.json that does not; (None, None) when there is none."""
    from runtimes.device import fingerprint, fingerprint_mismatch

    path = tuned_path(bundle)
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        fmt, digest, device = record["format"], record["bundle_json_sha256"], record["device"]
        if not isinstance(fmt, int) or fmt > FORMAT:
            return None, f"{path} is of format {fmt}, newer than this runtime reads ({FORMAT})"
        if record["choice"] is None:
            return None, f"{path} holds no choice: no candidate gave PyTorch's answers when it was tuned"
        configurations = [Configuration.from_dict(c) for c in [record["choice"], *record.get("fallbacks", [])]]
        speedup = record.get("speedup_vs_default", {}).get("ratio") if record.get("speedup_vs_default") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{path} is unreadable or malformed ({type(exc).__name__}: {exc})"
    if digest != sha256_file(opened.root / MANIFEST):
        return None, f"{MANIFEST} changed since {path} was written"
    if not isinstance(device, dict) or not isinstance(device.get("versions", {}), dict):
        return None, f"{path} is malformed (its device fingerprint is not an object)"
    mismatch = fingerprint_mismatch(device, fingerprint())
    if mismatch is not None:
        return None, mismatch
    unproven = _unproven(record.get("candidates"), configurations, opened)
    if unproven is not None:
        return None, f"it {unproven}"
    return Tuned(path, tuple(configurations), speedup if isinstance(speedup, (int, float)) else None), None


def _key(config: Configuration | dict[str, Any]) -> tuple:
    data = config.as_dict() if isinstance(config, Configuration) else config
    return tuple(data.get(name) for name in ("provider", "precision", "batch_size", "threads", "hint"))


def _unproven(candidates: Any, configurations: Sequence[Configuration], opened: Bundle) -> str | None:
    """Why a configuration tuned.json names must not run here, or None when every one may.

    A tuned.json is evidence: its choice and fallbacks are obeyed only as what its own
    candidates show passing the gate, on this bundle's providers and files, and within the
    bounds a tuner keeps to. A hand-edited choice fails here, whatever else it claims.
    """
    from runtimes.device import allowed_cores

    gated = {_key(c) for c in candidates if isinstance(c, dict) and isinstance(c.get("gate"), dict)
             and c["gate"].get("passed") is True and c.get("status") not in ("rejected", "skipped")} \
        if isinstance(candidates, list) else set()
    cores = allowed_cores()
    for i, config in enumerate(configurations):
        what = f"names {'a fallback' if i else 'a choice'}, {config.label()},"
        if config.provider not in opened.providers:
            return f"{what} on {config.provider}, which is not one of the bundle's providers ({', '.join(opened.providers)})"
        if config.model_precision not in opened.models:  # a runtime's own precision runs the fp32 file
            return (f"{what} a precision {config.provider} cannot run here: the bundle holds no "
                    f"{config.model_precision} model (it has {', '.join(opened.models)})")
        if config.batch_size > MAX_BATCH_SIZE:
            return f"{what} a batch size above the {MAX_BATCH_SIZE} a tuner may try"
        if config.threads is not None and config.threads > cores:
            return f"{what} more threads than the {cores} cores this process may use"
        if _key(config) not in gated:
            return f"{what} which none of its candidates shows passing the gate (never gated, or edited by hand)"
    return None


@dataclass(frozen=True)
class Attempt:
    """One way to load the model, tried in order until one loads."""

    provider: str
    model: Path
    spec: ModelSpec | None  # None: read it from the model file
    options: dict[str, Any] = field(default_factory=dict)  # runner options, the user's flags included
    batch_size: int | None = None  # the tuned batch size; None: the command's own
    configuration: Configuration | None = None  # the tuned configuration this is, if any
    precision: str | None = None  # the precision that judges it; None: the model's own

    def label(self) -> str:
        return self.configuration.label() if self.configuration else self.provider


def provider_attempts(model: Path, spec: ModelSpec | None, providers: Sequence[str], given: dict[str, Any]) -> list[Attempt]:
    """Each of ``providers`` in order on one model, with the flags ``given`` that each takes.

    One provider asked for by name must take every flag set (checked here, before anything
    loads); a bundle's list of several drops, for each, the flags it does not take.
    """
    from runtimes.cli import runner_options

    lenient = len(providers) > 1
    return [Attempt(p, model, spec, runner_options(p, lenient=lenient, **given)) for p in providers]


def tuned_attempts(opened: Bundle, tuned: Tuned, given: dict[str, Any]) -> list[Attempt]:
    """The tuned choice and its fallbacks; the user's flags (``--threads``) go over their knobs."""
    from runtimes.cli import runner_options

    attempts = []
    for config in tuned.configurations:
        chosen = opened.model(config.model_precision)
        options = {**config.options(), **runner_options(config.provider, lenient=True, **given)}
        attempts.append(Attempt(config.provider, chosen.path, chosen.spec, options, config.batch_size, config,
                                config.tolerance_precision))
    return attempts


def usable_tuned(bundle: str | Path, opened: Bundle, given: dict[str, Any], say: Callable[[str], None]) -> Tuned | None:
    """The tuned choice for ``bundle`` if it applies and no flag in ``given`` overrides it;
    ``say`` gets the one line that tells which, if there is a tuned.json at all."""
    tuned, why_not = read_tuned(bundle, opened)
    picked = [f"--{name}" for name in PICKING_FLAGS if given.get(name) not in (None, False)]
    if tuned is not None and picked:
        say(f"note: {tuned.path} not used: {picked[0]} picks the configuration")
        return None
    if tuned is not None:
        gain = f", {tuned.speedup:.2f}x the bundle's default here" if tuned.speedup else ""
        threads = f"; --threads {given['threads']} instead of its threads" if given.get("threads") else ""
        say(f"tuned: {tuned.choice.label()} ({tuned.path}{gain}){threads}")
        return tuned
    if why_not is not None:
        say(f"warning: {tuned_path(bundle)} not used: {why_not}; the bundle's default runs "
            f"(re-tune with `python -m runtimes.tune --bundle {bundle}`)")
    return None


def plan(
    stack: contextlib.ExitStack, *, model: str | Path, bundle: str | Path | None, given: dict[str, Any],
    say: Callable[[str], None],
) -> list[Attempt]:
    """What to load for ``--model`` or ``--bundle`` (opened for as long as ``stack`` lasts),
    in order: the tuned choice and its fallbacks when they apply, else the chosen model
    (``given["variant"]``, default the bundle's) on the bundle's providers, or on
    ``given["provider"]``. ``given`` holds the user's flags, None where not set."""
    flags = {k: v for k, v in given.items() if k not in ("provider", "variant")}
    provider, variant = given.get("provider"), given.get("variant")
    if bundle is None:
        if variant is not None:
            raise ProviderError("--variant picks a model inside a bundle; pass --bundle DIR too")
        return provider_attempts(Path(model), None, (provider or "cpu",), flags)
    opened = stack.enter_context(open_bundle(bundle))
    tuned = usable_tuned(bundle, opened, given, say)
    if tuned is not None:
        return tuned_attempts(opened, tuned, flags)
    chosen = opened.model(variant)
    return provider_attempts(chosen.path, chosen.spec, (provider,) if provider else opened.providers, flags)


def classifier_for(attempt: Attempt, *, batch_size: int | None = None, **settings: Any):
    """The Classifier ``attempt`` describes: how ``runtimes.run`` loads a model, and the
    tuner's fresh-process confirmation too, so what was confirmed is what runs."""
    from runtimes.classifier import DEFAULT_BATCH_SIZE, Classifier

    return Classifier(attempt.model, attempt.provider, batch_size=batch_size or attempt.batch_size or DEFAULT_BATCH_SIZE,
                      spec=attempt.spec, **settings, **attempt.options)


def skipped_line(reason: str, used: Attempt) -> str:
    """The warning for an attempt that did not load, once ``used`` did."""
    following = "next tuned choice" if used.configuration else "bundle's next provider"
    return f"warning: {reason}; using the {following}"


def first_loadable(attempts: Sequence[Attempt], load: Callable[[Attempt], T]) -> tuple[T, Attempt, list[str]]:
    """``load(attempt)`` for the first attempt that loads: (result, attempt, why the earlier ones did not).

    Once a provider is found missing here, its later attempts are passed over.
    """
    from runtimes.adapters import unavailable_reason

    failures: list[str] = []
    missing: set[str] = set()
    for attempt in attempts:
        if attempt.provider in missing:
            continue
        try:
            return load(attempt), attempt, failures
        except ProviderError as exc:
            if len(attempts) == 1:
                raise
            failures.append(f"{attempt.label()}: {exc}" if attempt.configuration else str(exc))
            if unavailable_reason(attempt.provider) is not None:
                missing.add(attempt.provider)
    tried = ", ".join(dict.fromkeys(a.label() for a in attempts))
    raise BundleError(f"none of {tried} runs here: " + " | ".join(failures))
