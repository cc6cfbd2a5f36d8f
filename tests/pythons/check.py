"""`make test-pythons`: the demo bundle on every device Python a bundle supports (deploy.pins.PYTHONS).

    python tests/pythons/check.py [--bundle artifacts/bundle] [--work artifacts/pythons] [--keep]

1. installed: for each CPython 3.10-3.13 on this machine (pyenv's versions/3.X.*/bin/python3, or python3.X
   on PATH), a fresh venv and, from inside the bundle, what its README says: ``pip install -r
   requirements.txt``, ``python -m runtimes.verify --bundle .`` and ``python -m runtimes.run --bundle .
   IMAGES``, with that venv's python. The runtime that runs is the bundle's wheel, installed in the venv
   (asserted: this repository's ``runtimes`` is not importable there), and what pip installed is what
   requirements.txt pins for that Python. Then, from a folder outside the bundle and this repository,
   ``runtimes.doctor`` and ``runtimes.bench --bundle`` (no torch, no onnx package: doctor says so; bench
   measures every model of the bundle).
2. jetpack-like: Python 3.10 with JetPack 6's numpy and OpenCV (deploy.pins.JETPACK6), pillow 12.3.0,
   onnxruntime 1.23.2 (CPU) and the bundle's wheel; verify and run on the CPU provider (a GPU bundle's
   fallback; OpenCV DNN is no provider of a cuda or tensorrt bundle). It proves the runtime on that
   numpy/OpenCV pair; it does NOT prove the CUDA provider or NVIDIA's onnxruntime-gpu wheel, which need a
   Jetson.
3. resolved, without installing: for each Python, the demo bundle's requirements for aarch64, and the
   cuda/tensorrt set (deploy.bundle.requirements(["cuda"]), with the bundle's wheel) for x86_64 and aarch64.
   Markers are evaluated with packaging for that Python and machine (exactly one line per package), and the
   flattened pins resolved by that Python's own pip (``--dry-run --only-binary=:all:`` with manylinux
   tags): pip evaluates requirement markers against the interpreter running it, not ``--platform``, hence the
   flattening. On (3.10, aarch64) the unpinned onnxruntime-gpu line is left out: JetPack 6 gets it from
   NVIDIA's index (PyPI has no cp310 aarch64 build).

A Python not on this machine is a "skipped:" line. Prints a table (python x machine x target -> pins) and
each venv's install time and size; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # deploy.pins and deploy.bundle.requirements (this venv's versions)

from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

from deploy.bundle import requirements  # noqa: E402
from deploy.pins import JETPACK6, PY310, PYTHONS, device_environment  # noqa: E402

SAMPLES = [REPO / "samples" / "images" / name for name in ("red_checker_0.jpg", "blue_vstripes_1.jpg")]
MACHINES = ("x86_64", "aarch64")
# Linux glibc 2.17 (manylinux2014) to 2.35 (Ubuntu 22.04, JetPack 6): pip takes one tag per --platform.
GLIBC_MINORS = range(17, 36)
TIMEOUT_S = 1200  # one pip install or verify; longer has hung
# Only the child's own packages: nothing from this venv, this repository, or the user's site.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
ENV.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")


class Failed(Exception):
    pass


def last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]


def sh(command: list, *, cwd: Path, what: str) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd``; Failed, naming ``what``, with its last line, unless it exits 0."""
    try:
        proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=ENV,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Failed(f"{what} did not end in {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise Failed(f"{what} exited {proc.returncode}: {last_line(proc)}")
    return proc


def find_python(version: str) -> tuple[Path | None, str]:
    """(a CPython ``version`` interpreter with venv and ensurepip, its full version) or (None, why not)."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv"), "/root/.pyenv"]
    if shutil.which("pyenv"):
        proc = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        roots.append(proc.stdout.strip() if proc.returncode == 0 else None)

    def patch(path: str) -> tuple[int, ...]:
        found = re.search(rf"/{re.escape(version)}\.(\d+)/", path)
        return (int(found.group(1)),) if found else (-1,)

    candidates = sorted({p for root in dict.fromkeys(filter(None, roots))
                         for p in glob.glob(f"{root}/versions/{version}.*/bin/python3")
                         if re.search(rf"/{re.escape(version)}\.\d+/", p)}, key=patch, reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    refused = []
    for candidate in candidates:
        proc = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; print(sys.implementation.name, "
                               "'%d.%d' % sys.version_info[:2], sys.version.split()[0])"],
                              capture_output=True, text=True, env=ENV, timeout=60)
        said = proc.stdout.split()
        if proc.returncode == 0 and said[:2] == ["cpython", version]:
            return Path(candidate), said[2]
        refused.append(f"{candidate}: {last_line(proc) if proc.returncode else ' '.join(said)}")
    looked = f"looked for ~/.pyenv/versions/{version}.*/bin/python3 and python{version} on PATH"
    return None, f"Python {version} is not on this machine ({looked}" + (
        f"; refused {'; '.join(refused)})" if refused else ")")


def same_versions(want: dict[str, str], got: dict[str, str], asked: str) -> None:
    """Failed unless pip installed every version in ``want`` (what ``asked`` names)."""
    differ = {n: (v, got.get(n)) for n, v in want.items() if got.get(n) != v}
    if differ:
        raise Failed(f"pip installed other versions than {asked} ({asked}, installed): {differ}")


def flatten(lines: list[str], python: str, machine: str, bundle: Path, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The lines pip would install on ``python`` and ``machine``, without their markers; Failed unless every
    package named has exactly one line there. Paths become absolute; ``leave_out`` names are then dropped."""
    chosen: dict[str, list[str]] = {}
    flat = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("./") or line.endswith(".whl"):
            flat.append(str((bundle / line).resolve()))
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        chosen.setdefault(name, [])
        if requirement.marker is None or requirement.marker.evaluate(device_environment(python, machine)):
            chosen[name].append(line)
            requirement.marker = None
            if name not in leave_out:
                flat.append(str(requirement))
    wrong = {name: found for name, found in chosen.items() if len(found) != 1}
    if wrong:
        raise Failed(f"Python {python} on {machine}: not exactly one line per package: {wrong}")
    return flat


def pinned(flat: list[str]) -> dict[str, str]:
    """{package: version} of the ``==`` lines."""
    pins = {}
    for line in flat:
        if not line.startswith("/"):
            requirement = Requirement(line)
            exact = [s.version for s in requirement.specifier if s.operator == "=="]
            if exact:
                pins[canonicalize_name(requirement.name)] = exact[0]
    return pins


def resolve(pip_python: Path, flat: list[str], python: str, machine: str, scratch: Path, what: str) -> dict[str, str]:
    """What ``pip_python``'s pip would install from ``flat`` on ``python`` and ``machine`` (nothing is
    installed): {package: version}; Failed unless it resolves to every pin."""
    scratch.mkdir(parents=True, exist_ok=True)
    listed, report = scratch / f"{what}-{python}-{machine}.txt", scratch / f"{what}-{python}-{machine}.json"
    listed.write_text("\n".join(flat) + "\n")
    platforms = [f"manylinux2014_{machine}", *(f"manylinux_2_{m}_{machine}" for m in GLIBC_MINORS)]
    sh([pip_python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp", *(a for p in platforms for a in ("--platform", p)),
        "--target", scratch / "target", "-r", listed, "--report", report],
       cwd=scratch, what=f"resolving {what} for Python {python} on {machine}")
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    differ = {name: (version, resolved.get(name)) for name, version in pinned(flat).items()
              if resolved.get(name) != version}
    if differ:
        raise Failed(f"{what} for Python {python} on {machine} resolved other versions than pinned "
                     f"(pinned, resolved): {differ}")
    return resolved


def installed(python: Path) -> dict[str, str]:
    proc = sh([python, "-m", "pip", "list", "--format=json"], cwd=python.parent, what="pip list")
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(proc.stdout)}


def make_venv(base: Path, venv: Path) -> float:
    """A fresh venv at ``venv`` from ``base``; the seconds it took."""
    shutil.rmtree(venv, ignore_errors=True)
    began = time.perf_counter()
    sh([base, "-m", "venv", venv], cwd=venv.parent, what=f"{base} -m venv")
    return time.perf_counter() - began


def size_mb(path: Path) -> float:
    proc = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return int(proc.stdout.split()[0]) / 1024 if proc.returncode == 0 else float("nan")


def check_wheel_runs(python: Path, venv: Path, bundle: Path) -> str:
    """The venv's ``runtimes`` is the installed wheel, and torch is not there."""
    proc = sh([python, "-c", "import importlib.util, runtimes; print(runtimes.__file__); "
               "print(importlib.util.find_spec('torch') is not None)"], cwd=bundle, what="import runtimes")
    where, torch = proc.stdout.split("\n")[:2]
    if not Path(where).resolve().is_relative_to(venv.resolve()):
        raise Failed(f"runtimes came from {where}, not from the venv's installed wheel")
    if torch == "True":
        raise Failed("torch is importable in the bundle's venv")
    return where


def check_verify(python: Path, bundle: Path, *flags: str) -> str:
    """runtimes.verify passes; else Failed naming the checks that failed, with their differences."""
    what = f"runtimes.verify --bundle . {' '.join(flags)}".strip()
    try:
        proc = subprocess.run([str(python), "-m", "runtimes.verify", "--bundle", ".", *flags], capture_output=True,
                              text=True, cwd=bundle, env=ENV, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Failed(f"{what} did not end in {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        rows = [" ".join(l.split()) for l in proc.stdout.splitlines() if l.rstrip().endswith("FAILED")]
        raise Failed(f"{what} exited {proc.returncode}: {last_line(proc)}" + (f" [{'; '.join(rows)}]" if rows else ""))
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "passed"


def check_run(python: Path, bundle: Path, *flags: str) -> str:
    """runtimes.run on the sample images: each one's top-1 is the class its file is named after."""
    proc = sh([python, "-m", "runtimes.run", "--bundle", ".", *flags, "--json", *SAMPLES], cwd=bundle,
              what=f"runtimes.run --bundle . {' '.join(flags)}".strip())
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(records) != len(SAMPLES):
        raise Failed(f"runtimes.run answered for {len(records)} images, not {len(SAMPLES)}")
    answers = []
    for record in records:
        name, top = Path(record["image"]).name, record["topk"][0]
        if top["label"] != name.rsplit("_", 1)[0]:
            raise Failed(f"runtimes.run: {name} is {top['label']}")
        answers.append(f"{name}: {top['label']} {top['prob']:.3f}")
    said = [l for l in proc.stderr.splitlines() if l.startswith(("tuned:", "provider:", "warning:"))]
    return f"{', '.join(answers)} ({'; '.join(said) or 'the bundle default'})"


def check_device_tools(python: Path, bundle: Path, elsewhere: Path) -> str:
    """runtimes.doctor and runtimes.bench on the bundle, from a folder outside it and this repository: both
    exit 0 with nothing on stderr, with neither torch nor the onnx package installed, every model measured."""
    doctor = sh([python, "-m", "runtimes.doctor", "--bundle", bundle], cwd=elsewhere, what="runtimes.doctor --bundle")
    for needed in ("  onnx         not installed", "  torch        not installed", "  cpu       ok: CPUExecutionProvider"):
        if needed not in doctor.stdout:
            raise Failed(f"runtimes.doctor --bundle did not say {needed.strip()!r}")
    if doctor.stderr.strip():
        raise Failed(f"runtimes.doctor --bundle wrote to stderr: {last_line(doctor)}")
    bench = sh([python, "-m", "runtimes.bench", "--bundle", bundle, "--providers", "cpu", "--iterations", "3",
                "--warmup", "1", "--no-cold-start", "--json"], cwd=elsewhere, what="runtimes.bench --bundle")
    report = json.loads(bench.stdout)
    models = [m["precision"] for m in json.loads((bundle / "bundle.json").read_text())["models"]]
    rows = [(r["provider"], r["precision"], r["runs_on"], r["calls"]) for r in report["rows"]]
    if sorted(rows) != sorted(("cpu", p, ["CPUExecutionProvider"], 3) for p in models) or "torch" in report["versions"]:
        raise Failed(f"runtimes.bench --bundle measured {rows} (versions {sorted(report['versions'])}), not every "
                     f"model of {models} on cpu without torch")
    return f"doctor ok; bench {', '.join(f'{r[1]} {m:.1f} ms' for r, m in zip(rows, (x['median_ms'] for x in report['rows'])))}"


def summary(pins: dict[str, str], top: list[str]) -> str:
    shown = [f"{name} {pins[name]}" for name in top if name in pins]
    rest = len(pins) - len(shown) - ("googlenet-deploy-runtime" in pins)
    return ", ".join(shown) + (f" (+{rest} dependencies)" if rest else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "bundle")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "pythons",
                        help="where the fresh venvs are made (each is removed once checked, unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs")
    args = parser.parse_args(argv)
    bundle, work = args.bundle.resolve(), args.work.resolve()
    if not (bundle / "bundle.json").is_file():
        print(f"test-pythons: FAILED: no bundle at {bundle}: `make demo` makes it", file=sys.stderr)
        return 1
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix="resolve."))
    demo_lines = (bundle / "requirements.txt").read_text().splitlines()
    target = json.loads((bundle / "bundle.json").read_text())["target"]
    wheel = next(line for line in demo_lines if line.startswith("./wheels/"))
    gpu_lines = requirements(["cuda"])
    if requirements(["tensorrt"]) != gpu_lines:
        print("test-pythons: FAILED: the tensorrt target's requirements differ from cuda's: check both",
              file=sys.stderr)
        return 1
    gpu_lines = [*gpu_lines, wheel]
    top = ["numpy", "opencv-python-headless", "pillow", "onnxruntime", "onnxruntime-gpu", "openvino"]
    here = platform.machine()
    rows: list[tuple[str, str, str, str, str]] = []  # python, machine, target, how, pins (or what failed)
    venvs: list[tuple[str, str, float, float, float, float]] = []  # name, python, venv s, install s, MB, checks s
    failures: list[str] = []
    started = time.perf_counter()

    def failed(python: str, machine: str, what: str, how: str, exc: Failed) -> None:
        failures.append(f"Python {python} {machine} {what}: {exc}")
        rows.append((python, machine, what, how, f"FAILED: {exc}"))
        print(f"   FAILED: {exc}", flush=True)

    def fresh(name: str, base: Path, full: str, install: list[str]) -> tuple[Path, Path]:
        """A fresh venv ``name`` with ``install`` run by its pip in the bundle; its folder and python."""
        venv = work / name
        venv_s = make_venv(base, venv)
        began = time.perf_counter()
        sh([venv / "bin" / "pip", *install], cwd=bundle, what=f"{name}: pip {' '.join(install)}")
        install_s = time.perf_counter() - began
        venvs.append((name, full, venv_s, install_s, size_mb(venv), 0.0))
        print(f"== {name} (Python {full}): venv {venv_s:.1f} s, pip {' '.join(install)} {install_s:.1f} s, "
              f"{venvs[-1][4]:.0f} MB", flush=True)
        return venv, venv / "bin" / "python"

    def checked(name: str, began: float) -> None:
        i = next(i for i, v in enumerate(venvs) if v[0] == name)
        venvs[i] = (*venvs[i][:5], time.perf_counter() - began)

    found: dict[str, tuple[Path, str]] = {}
    for version in PYTHONS:
        base, full = find_python(version)
        if base is None:
            print(f"skipped: {full}", flush=True)
            for machine, what in [(here, target), ("aarch64", target), *((m, "cuda/tensorrt") for m in MACHINES)]:
                rows.append((version, machine, what, "skipped", full))
            continue
        found[version] = (base, full)
        name = f"py{version}"
        venv = python = None
        try:
            venv, python = fresh(name, base, full, ["install", "-r", "requirements.txt"])
            began = time.perf_counter()
            where = check_wheel_runs(python, venv, bundle)
            want = pinned(flatten(demo_lines, version, here, bundle))
            got = installed(python)
            same_versions(want, got, "requirements.txt pins")
            print(f"   runtimes from {where}", flush=True)
            print(f"   verify: {check_verify(python, bundle)}", flush=True)
            print(f"   run: {check_run(python, bundle)}", flush=True)
            elsewhere = Path(tempfile.mkdtemp(dir=work, prefix="elsewhere."))
            try:
                print(f"   device tools: {check_device_tools(python, bundle, elsewhere)}", flush=True)
            finally:
                shutil.rmtree(elsewhere, ignore_errors=True)
            checked(name, began)
            rows.append((version, here, target, "installed", summary(got, top)))
        except Failed as exc:
            failed(version, here, target, "installed", exc)
        # Resolution with this Python's own pip (the fresh venv's, or the interpreter's when that failed).
        pip_python = python if python is not None and python.exists() else base
        checks = [("aarch64", target, demo_lines, ())]
        for machine in MACHINES:
            jetpack = version == PYTHONS[0] and machine == "aarch64"
            checks.append((machine, "cuda/tensorrt", gpu_lines, ("onnxruntime-gpu",) if jetpack else ()))
        for machine, what, lines, leave_out in checks:
            try:
                flat = flatten(lines, version, machine, bundle, leave_out)
                pins = resolve(pip_python, flat, version, machine, scratch, what.replace("/", "+").replace(",", "+"))
                note = (" [onnxruntime-gpu left out: JetPack 6's comes from NVIDIA's index; PyPI has no cp310 "
                        "aarch64 build]" if leave_out else "")
                rows.append((version, machine, what, "resolved", summary(pins, top) + note))
                print(f"   resolved {what} for {machine}: {rows[-1][4]}", flush=True)
            except Failed as exc:
                failed(version, machine, what, "resolved", exc)
        if venv is not None and not args.keep:
            shutil.rmtree(venv, ignore_errors=True)

    # JetPack 6's numpy and OpenCV under the runtime, on the CPU provider (a Jetson's CUDA is not here).
    name, version = "jetpack-like", PYTHONS[0]
    what = "jetpack-like (CPU provider only)"
    if version not in found:
        print(f"skipped: {name}: Python {version} is not on this machine", flush=True)
        rows.append((version, here, what, "skipped", f"Python {version} is not on this machine"))
    else:
        packages = [f"numpy=={JETPACK6['numpy']}", f"opencv-python-headless=={JETPACK6['opencv-python-headless']}",
                    f"pillow=={PY310['pillow']}", f"onnxruntime=={PY310['onnxruntime']}", wheel]
        venv = None
        try:
            venv, python = fresh(name, *found[version], ["install", *packages])
            began = time.perf_counter()
            check_wheel_runs(python, venv, bundle)
            got = installed(python)
            want = pinned([p for p in packages if not p.startswith("./")])
            same_versions(want, got, "asked")
            print(f"   verify --provider cpu: {check_verify(python, bundle, '--provider', 'cpu')}", flush=True)
            print(f"   run --provider cpu: {check_run(python, bundle, '--provider', 'cpu')}", flush=True)
            checked(name, began)
            rows.append((version, here, what, "installed", summary(got, top)))
        except Failed as exc:
            failed(version, here, what, "installed", exc)
        if venv is not None and not args.keep:
            shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{'python':7} {'machine':8} {'target':33} {'how':10} pins")
    for python, machine, what, how, pins in rows:
        print(f"{python:7} {machine:8} {what:33} {how:10} {pins}")
    print(f"\n{'venv':14} {'python':8} {'venv s':>7} {'install s':>10} {'size MB':>8} {'checks s':>9}")
    for name, full, venv_s, install_s, mb, checks_s in venvs:
        print(f"{name:14} {full:8} {venv_s:7.1f} {install_s:10.1f} {mb:8.0f} {checks_s:9.1f}")
    print("\njetpack-like proves the runtime with JetPack 6's numpy and OpenCV on ONNX Runtime's CPU provider; it "
          "does not prove the CUDA provider or NVIDIA's onnxruntime-gpu wheel (that needs a Jetson).")
    elapsed = time.perf_counter() - started
    if failures:
        print(f"test-pythons: FAILED ({len(failures)}) in {elapsed:.0f} s:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    skipped = sorted(set(PYTHONS) - set(found))
    print(f"test-pythons: passed in {elapsed:.0f} s on Python {', '.join(found[v][1] for v in found)}"
          + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
