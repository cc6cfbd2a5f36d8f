"""One folder to copy to a device: the model, its reference answers, and the runtime, without torch.

    python -m deploy.bundle --model artifacts/googlenet.onnx [--variants int8,fp16] [--default fp32]
        [--target cpu|cuda|tensorrt|openvino|opencv[,...]] --out DIR

writes DIR and DIR.tar.gz holding::

    bundle.json        preprocessing, labels, provider preference, sha256 of every file
    requirements.txt   pinned, no torch: `pip install -r requirements.txt` is the installation, on
                       Python 3.10-3.13 (deploy.pins), x86_64 or aarch64
    README.md          the three commands to run on the device
    models/            the fp32 model and any variants (<stem>.<precision>.onnx beside it)
    reference.npz      PyTorch's logits for seeded inputs and images, from the export
    labels.txt
    wheels/            this toolkit's torch-free runtime as a wheel

On the device: ``python -m runtimes.verify --bundle DIR``, ``python -m runtimes.tune --bundle DIR``
(which picks the fastest configuration that still gives PyTorch's answers there), then
``python -m runtimes.run --bundle DIR IMAGES``. ``--target cpu,openvino`` installs both
runtimes, so the tuner has them to choose from.
The model run there by default is the fp32 one unless ``--default`` names a variant: fp16
is no faster on a CPU without fp16 arithmetic, and int8 trades accuracy for speed, so
that choice is the user's, made where the target is known.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import runtimes
from deploy.pins import JETPACK6, NEWER, PY310, PYTHONS
from runtimes.adapters.nvidia import JETSON_FIX
from runtimes.atomic import check_replaceable, replace_dir, write_bytes
from runtimes.bundle import FORMAT, MANIFEST, PROVIDERS, providers_for, sha256_file
from runtimes.errors import BundleError
from runtimes.reference import reference_path_for
from runtimes.spec import DEFAULT_MODEL, ModelSpec, variant_path
from runtimes.tuned import TUNED
from runtimes.versions import package_version

VARIANTS = ("fp16", "int8")
REFERENCE = "reference.npz"


def _ort_version() -> str:
    version = package_version("onnxruntime-gpu", "onnxruntime")
    if version is None:
        raise BundleError("cannot pin onnxruntime for the bundle: it is not installed here")
    return version


def _installed(name: str) -> str:
    version = package_version(name)
    if version is None:
        raise BundleError(f"cannot pin {name} for the bundle: it is not installed here; pip install {name}")
    return version


# Which device a pin is for: aarch64 below Python 3.11 (with a GPU target, a Jetson on JetPack 6),
# any other machine below 3.11, and every machine from 3.11 up (the build machine's versions).
_ARM_OLD, _OLD, _NEW = "aarch64, old Python", "old Python", "new Python"
_MARKERS = {
    frozenset({_ARM_OLD, _OLD, _NEW}): "",
    frozenset({_ARM_OLD, _OLD}): f'python_version < "{NEWER}"',
    frozenset({_NEW}): f'python_version >= "{NEWER}"',
    frozenset({_ARM_OLD}): f'platform_machine == "aarch64" and python_version < "{NEWER}"',
    frozenset({_OLD}): f'platform_machine != "aarch64" and python_version < "{NEWER}"',
    frozenset({_OLD, _NEW}): f'platform_machine != "aarch64" or python_version >= "{NEWER}"',
    frozenset({_ARM_OLD, _NEW}): f'platform_machine == "aarch64" or python_version >= "{NEWER}"',
}


def _pinned(name: str, versions: dict[str, str], only: str = "") -> list[str]:
    """``name==version`` once per distinct version in ``versions`` ({device: version}), with the
    marker of the devices it is for, and ``only`` (a marker, for versions without an aarch64
    exception) for all of them."""
    devices: dict[str, set[str]] = {}
    for device, version in versions.items():
        devices.setdefault(version, set()).add(device)
    lines = []
    for version, these in devices.items():
        if _ARM_OLD not in versions and _OLD in these:  # no aarch64 exception: every old Python's
            these = {*these, _ARM_OLD}
        marker = " and ".join(m for m in (only, _MARKERS[frozenset(these)]) if m)
        lines.append(f"{name}=={version}" + (f"; {marker}" if marker else ""))
    return lines


def requirements(targets: list[str]) -> list[str]:
    """Requirement lines for ``targets`` on every device Python (deploy.pins.PYTHONS), x86_64 and aarch64.

    From Python 3.11 up, the versions this machine verified the model with; below it, the tested
    versions in deploy.pins (this machine's need a newer Python). Environment markers choose, so
    every device gets exactly one line per package, and pip resolves all of them before it
    installs any."""
    gpu = any(t in ("cuda", "tensorrt") for t in targets)
    pins = []
    if gpu:
        pins.append(f"# aarch64 below Python {NEWER} is a Jetson on JetPack 6: numpy 1.x (and the newest OpenCV "
                    "for it), which NVIDIA's onnxruntime-gpu wheels there are built against")
    for name in ("numpy", "opencv-python-headless", "pillow"):
        old = {_ARM_OLD: JETPACK6.get(name, PY310[name])} if gpu else {}
        pins += _pinned(name, {**old, _OLD: PY310[name], _NEW: _installed(name)})
    if gpu:
        # Its CPU provider serves a cpu target too: the two packages cannot share one environment.
        # Every machine gets an ONNX Runtime: on aarch64 unpinned, since a Jetson's must match its
        # JetPack (NVIDIA's index, installed first, satisfies the line; without it, PyPI's
        # server build installs, and verify says where the Jetson one comes from). Below Python
        # 3.11 an x86_64 one is a CUDA 12 build (deploy.pins).
        pins += [*_pinned("onnxruntime-gpu", {_OLD: PY310["onnxruntime-gpu"], _NEW: _ort_version()},
                          only='platform_machine == "x86_64"'),
                 f"# {JETSON_FIX}",
                 'onnxruntime-gpu; platform_machine == "aarch64"']
    elif "cpu" in targets:
        pins += _pinned("onnxruntime", {_OLD: PY310["onnxruntime"], _NEW: _ort_version()})
    if "openvino" in targets:
        version = package_version("openvino")
        if version is None:
            raise BundleError("cannot pin openvino for an openvino bundle: it is not installed here; pip install openvino")
        pins += _pinned("openvino", {_OLD: PY310["openvino"], _NEW: version})
    return pins


def parse_targets(text: str) -> list[str]:
    """``"cpu,openvino"`` -> ["cpu", "openvino"]; a BundleError names an unknown one."""
    targets = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in targets if t not in PROVIDERS]
    if unknown or not targets:
        raise BundleError(f"unknown target {unknown[0] if unknown else text!r}; known: {', '.join(PROVIDERS)} "
                          "(several: --target cpu,openvino)")
    return targets


def _model_entries(model: Path, variants: list[str]) -> list[tuple[str, Path, ModelSpec]]:
    """(precision, source file, spec) for the fp32 model and each variant, all from one checkpoint."""
    base = ModelSpec.from_onnx(model)
    if base.precision != "fp32":
        raise BundleError(f"--model {model} is a {base.precision} model; give the fp32 model and name variants with --variants")
    entries = []
    for precision in variants:
        path = variant_path(model, precision)
        if not path.is_file():
            raise BundleError(
                f"no {precision} variant at {path}: variants are files named <stem>.{precision}.onnx beside the model"
            )
        spec = ModelSpec.from_onnx(path)
        if spec.precision != precision or spec.checkpoint_sha256 != base.checkpoint_sha256:
            raise BundleError(
                f"{path} is not the {precision} variant of {model.name}: it says precision {spec.precision} and "
                f"checkpoint {spec.checkpoint_sha256[:12] or 'none'}, the model {base.checkpoint_sha256[:12] or 'none'}"
            )
        gate = spec.variant.get("gate") or {}
        if gate and not gate.get("passed", True):
            raise BundleError(
                f"{path} failed its gate when converters.quantize made it (written only with --allow-failing): "
                f"{gate.get('summary', '?')}; make it again with --repair, or leave {precision} out of --variants"
            )
        entries.append((precision, path, spec))
    return [("fp32", model, base), *entries]


_PYTHON_RANGE = f"{PYTHONS[0]} to {PYTHONS[-1]}"


def _readme(target: str, providers: list[str]) -> str:
    return (
        f"# GoogLeNet bundle (target: {target})\n\n"
        f"Everything the device needs, without torch, for Python {_PYTHON_RANGE} on Linux x86_64 or aarch64 "
        "(pip refuses any other Python, before it installs anything). From inside this folder:\n\n"
        "```sh\n"
        "python3 -m venv .venv && . .venv/bin/activate\n"
        "pip install -r requirements.txt\n"
        "python -m runtimes.verify --bundle .          # same answers as PyTorch here?\n"
        "python -m runtimes.tune --bundle .            # the fastest configuration that still gives them (2 min)\n"
        "python -m runtimes.run --bundle . photo.jpg   # classify, with the tuned choice\n"
        "```\n\n"
        f"Without tuning, providers are tried in order: {', '.join(providers)}. `--provider NAME` picks one.\n"
        + (f"\n{JETSON_FIX[0].upper()}{JETSON_FIX[1:]}, before `pip install -r requirements.txt`. "
           f"On JetPack 6 (Python {PYTHONS[0]}), requirements.txt then installs numpy {JETPACK6['numpy']} and "
           f"OpenCV {JETPACK6['opencv-python-headless']} beside it: NVIDIA's JetPack 6 wheels are built against "
           "numpy 1.x.\n"
           if {"cuda", "tensorrt"} & set(providers) else "")
    )


def _bundle_files(out: Path) -> set[str] | None:
    """What an earlier bundle at ``out`` holds: the files its bundle.json lists, itself, and the tuner's tuned.json."""
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {*files, MANIFEST, TUNED} if isinstance(files, dict) else None


def build_bundle(
    model: str | Path = DEFAULT_MODEL,
    out: str | Path = "artifacts/bundle",
    *,
    target: str | list[str] = "cpu",
    variants: list[str] | tuple[str, ...] = (),
    default: str = "fp32",
) -> tuple[Path, Path]:
    """Write the bundle folder ``out`` and ``out.tar.gz``; returns both paths.

    ``default`` is the precision run when the device names none; it is listed first,
    which is how every reader of the format picks it.

    An existing bundle at ``out`` is replaced only once the new one is complete.
    """
    from deploy.wheel import build_wheel

    model, out = Path(model), Path(out)
    targets = parse_targets(target) if isinstance(target, str) else parse_targets(",".join(target))
    target, providers = ",".join(targets), providers_for(targets)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BundleError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)} (fp32 is always included)")
    check_replaceable(out, [model], what="a bundle", files_of=_bundle_files)
    variants = list(dict.fromkeys(variants))
    if default not in ("fp32", *variants):
        raise BundleError(f"--default {default} is not among the bundled models: {', '.join(['fp32', *variants])}")
    entries = sorted(_model_entries(model, variants), key=lambda entry: entry[0] != default)
    reference = reference_path_for(model)
    if not reference.is_file():
        raise BundleError(f"{reference} not found: re-export the model with `python -m converters.export` to make it")
    base_spec = next(spec for precision, _, spec in entries if precision == "fp32")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    staging.chmod(0o755)  # mkdtemp makes 0700; a bundle is meant to be read by others
    try:
        (staging / "models").mkdir()
        (staging / "wheels").mkdir()
        models = []
        for precision, path, spec in entries:
            shutil.copyfile(path, staging / "models" / path.name)
            models.append({"precision": precision, "file": f"models/{path.name}", "spec": json.loads(spec.to_json())})
        shutil.copyfile(reference, staging / REFERENCE)
        (staging / "labels.txt").write_text("\n".join(base_spec.labels) + "\n", encoding="utf-8")
        wheel, data = build_wheel()
        (staging / "wheels" / wheel).write_bytes(data)
        (staging / "requirements.txt").write_text(
            f"# googlenet-deploy {runtimes.__version__} bundle, target {target}, for Python {_PYTHON_RANGE} on x86_64 "
            "and aarch64: pip install -r requirements.txt (from inside this folder)\n"
            + "\n".join([*requirements(targets), f"./wheels/{wheel}"]) + "\n",
            encoding="utf-8",
        )
        (staging / "README.md").write_text(_readme(target, providers), encoding="utf-8")
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "toolkit": runtimes.__version__,
            "target": target,
            "providers": providers,
            "models": models,
            "reference": REFERENCE,
            "labels": "labels.txt",
            "files": files,
            # Byte sizes: a reader of the .tar.gz refuses a member of another size before writing it.
            "sizes": {name: (staging / name).stat().st_size for name in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        tarball = Path(f"{out}.tar.gz")
        write_bytes(tarball, _tar_gz(staging, out.name))
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, tarball


def _tar_gz(folder: Path, name: str) -> bytes:
    """``folder`` as ``name/...`` in a gzip tarball; fixed owners and times, so equal trees give equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in [folder, *sorted(folder.rglob("*"))]:
            info = archive.gettarinfo(str(path), arcname=f"{name}/{path.relative_to(folder).as_posix()}".rstrip("/."))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as fh:
                    archive.addfile(info, fh)
            else:
                archive.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"the exported fp32 model (default: {DEFAULT_MODEL})")
    parser.add_argument("--variants", default="", help=f"comma-separated: {', '.join(VARIANTS)} (fp32 is always included)")
    parser.add_argument("--default", default="fp32", help="the precision the device runs unless told otherwise (default: fp32)")
    parser.add_argument("--target", default="cpu",
                        help=f"where it will run: {', '.join(PROVIDERS)}, or several, comma-separated, for the tuner "
                             "to choose from (default: cpu)")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to write (DIR.tar.gz is written too)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    folder, tarball = build_bundle(args.model, args.out, target=args.target, variants=variants, default=args.default)
    manifest = json.loads((folder / MANIFEST).read_text())
    print(
        f"wrote {folder} ({_size(folder) / 1e6:.1f} MB) and {tarball} ({_size(tarball) / 1e6:.1f} MB): "
        f"target {args.target}, models {', '.join(m['precision'] for m in manifest['models'])} "
        f"({args.default} runs by default; --variant picks another), "
        f"providers {', '.join(manifest['providers'])}\n"
        f"on the device: cd {folder.name} && pip install -r requirements.txt && python -m runtimes.verify --bundle . "
        "&& python -m runtimes.tune --bundle ."
    )
    for m in manifest["models"]:
        repair = m["spec"].get("variant", {}).get("repair")
        if repair:
            print(f"{m['precision']} was repaired by converters.quantize --repair, as its spec records: {repair['steps']}; "
                  f"{len(repair['fp32_nodes'])} nodes kept in fp32 beyond the default")
    return 0


if __name__ == "__main__":
    from runtimes.cli import run_cli

    run_cli(main)
