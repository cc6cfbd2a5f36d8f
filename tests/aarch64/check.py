"""`make test-aarch64`: the demo bundle installed and checked on an arm64 userland, under qemu-user.

    python tests/aarch64/check.py [--bundle artifacts/bundle] [--cache artifacts/aarch64] [--images 6]

What a Raspberry Pi would do with the bundle, on this x86_64 machine:
1. an arm64 Debian bookworm userland with Python 3.11 (``arm64.sh userland``; kept in the cache);
2. the bundle's own requirements.txt, installed as manylinux aarch64 wheels into a folder of its
   own, which is all the emulated Python sees besides its standard library (no torch: asserted);
3. on an emulated Cortex-A72 (Pi 4): ``runtimes.verify --bundle --images N`` (fp32 and int8 on
   ONNX Runtime, judged with PyTorch's tolerances), the fp32 model on OpenVINO and OpenCV DNN
   with fewer images, ``runtimes.run --bundle`` on two sample images (same top-1 as this x86
   machine, probabilities within fp32's tolerance) and ``runtimes.doctor``;
4. on an emulated Cortex-A76 (Pi 5), whose dotprod instructions ONNX Runtime's int8 kernels use:
   the int8 model verified again, the doctor, and the fp32 model on OpenVINO, whose own default
   on this fp16-capable core is f16 (the adapter pins f32).
It prints the emulated CPUs, the wheel set and the time of each step, and exits 1 on the first
failure, with one line saying which. Speed under emulation means nothing (hundreds of times slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARM64 = HERE / "arm64.sh"
SAMPLES = [REPO / "samples" / "images" / name for name in ("red_checker_0.jpg", "blue_vstripes_1.jpg")]
STEP_TIMEOUT_S = 1200  # an emulated step that takes longer has hung: the whole check is a few minutes
PROB_ATOL = 1e-4  # fp32 on two CPU architectures: the bundle's fp32 tolerance, on probabilities


class Failed(Exception):
    pass


def last_line(proc: subprocess.CompletedProcess) -> str:
    """What a failed command said last: its error line."""
    return (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]


def sh(command: list[str], *, env: dict | None = None, cwd: Path | None = None) -> str:
    """Run ``command``; its stdout, or Failed with the last line it printed."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Failed(f"{' '.join(command[:6])}... did not end in {STEP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise Failed(f"{' '.join(command[:8])}... exited {proc.returncode}: {last_line(proc)}")
    return proc.stdout


class Arm64:
    """The emulated Python of ``cache``'s userland, seeing only ``site`` besides its standard library."""

    def __init__(self, cache: Path):
        self.cache, self.site = cache, None

    def python(self, cpu: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONPATH": str(self.site or "")}
        # -P and a working folder outside the repository: the runtime comes from the bundle's wheel.
        command = ["bash", str(ARM64), "python", str(self.cache), cpu, "-P", *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.site or self.cache,
                                  timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Failed(f"{cpu}: python {' '.join(args[:4])}... did not end in {STEP_TIMEOUT_S} s") from None

    def json(self, cpu: str, *args: str, ok=(0,)) -> tuple[list[dict], str]:
        proc = self.python(cpu, *args)
        if proc.returncode not in ok:
            raise Failed(f"{cpu}: {' '.join(args[:3])} exited {proc.returncode}: {last_line(proc)}")
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc.stderr


def install_wheels(bundle: Path, cache: Path, arm: Arm64) -> tuple[Path, list[str]]:
    """The bundle's requirements.txt as aarch64 wheels for the userland's glibc and Python, in a
    folder named by what went into it (reused while those stay the same); the wheel set."""
    probe = arm.python("cortex-a72", "-c", "import platform, sys; print(platform.libc_ver()[1], '%d.%d' % sys.version_info[:2])")
    if probe.returncode != 0:
        raise Failed(f"the arm64 Python does not start: {last_line(probe)}")
    glibc, python = probe.stdout.split()
    requirements = bundle / "requirements.txt"
    digest = hashlib.sha256(f"{glibc} {python}".encode() + requirements.read_bytes())
    for wheel in sorted((bundle / "wheels").glob("*.whl")):
        digest.update(wheel.read_bytes())
    site = cache / f"site-{digest.hexdigest()[:16]}"
    if not site.is_dir():
        for old in cache.glob("site-*"):
            shutil.rmtree(old)
        partial = site.with_name(site.name + ".partial")
        major, minor = map(int, glibc.split("."))
        # pip takes one tag per --platform: every manylinux glibc this userland's satisfies.
        platforms = [f"manylinux_{major}_{m}_aarch64" for m in range(minor, 16, -1)] + ["manylinux2014_aarch64"]
        sh([sys.executable, "-m", "pip", "install", "-qq", "--no-warn-conflicts", "--disable-pip-version-check",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            *[arg for p in platforms for arg in ("--platform", p)],
            "--target", str(partial), "-r", requirements.name], cwd=bundle)
        partial.rename(site)
    wheels = sorted(re.sub(r"\.dist-info$", "", d.name).replace("-", " ", 1) for d in site.glob("*.dist-info"))
    installed = {(normalized(w.split()[0]), w.split()[1]) for w in wheels}
    if any(name == "torch" for name, _ in installed):
        raise Failed("torch entered the bundle's environment")
    from packaging.requirements import InvalidRequirement, Requirement

    from deploy.pins import device_environment

    device = device_environment(python, "aarch64")
    for line in requirements.read_text().splitlines():
        try:
            wanted = Requirement(line)
        except InvalidRequirement:
            continue  # a comment, a blank line, the wheel's path
        if wanted.marker is not None and not wanted.marker.evaluate(device):
            continue  # a line for another Python or machine
        pins = [s.version for s in wanted.specifier if s.operator == "=="]
        if pins and (normalized(wanted.name), pins[0]) not in installed:
            raise Failed(f"{line} is not what was installed for aarch64: {', '.join(wheels)}")
    arm.site = site
    return site, wheels


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top1(records: list[dict]) -> dict[str, tuple[str, dict[str, float]]]:
    return {Path(r["image"]).name: (r["topk"][0]["label"], {t["label"]: t["prob"] for t in r["topk"]}) for r in records}


def check_run(arm: Arm64, bundle: Path) -> str:
    """Two sample images on the device's default (tuned.json was tuned on x86: not used there)
    against this x86 machine's fp32 on ONNX Runtime."""
    images = [str(p) for p in SAMPLES]
    here = top1([json.loads(line) for line in sh(
        [sys.executable, "-m", "runtimes.run", "--bundle", str(bundle), "--provider", "cpu", "--json", *images],
        cwd=REPO).splitlines()])
    records, stderr = arm.json("cortex-a72", "-m", "runtimes.run", "--bundle", str(bundle), "--json", *images)
    there = top1(records)
    if set(there) != set(here):
        raise Failed(f"runtimes.run answered for {sorted(there)}, not {sorted(here)}")
    lines = []
    for name, (label, probs) in here.items():
        arm_label, arm_probs = there[name]
        worst = max(abs(arm_probs.get(k, 0.0) - p) for k, p in probs.items())
        if arm_label != label or worst > PROB_ATOL:
            raise Failed(f"{name}: {arm_label} on aarch64, {label} on x86_64 (largest probability difference {worst:.1e})")
        lines.append(f"{name}: {label} on both, probabilities within {worst:.1e}")
    if os.path.exists(bundle / "tuned.json") and "not used" not in stderr:
        raise Failed("the bundle's tuned.json (tuned on x86_64) was not refused on aarch64")
    return "; ".join(lines)


def check_verify(arm: Arm64, bundle: Path, cpu: str, images: int, *flags: str, expect: tuple[str, ...]) -> str:
    """runtimes.verify --json on ``cpu``: passed, with exactly the ``expect`` precisions checked."""
    records, _ = arm.json(cpu, "-m", "runtimes.verify", "--bundle", str(bundle), "--images", str(images), "--json",
                          *flags, ok=(0, 3))
    if len(records) != 1:
        raise Failed(f"{cpu}: runtimes.verify printed {len(records)} JSON records, not 1")
    record = records[0]
    checked = tuple(m["precision"] for m in record["models"])
    if checked != expect:
        raise Failed(f"{cpu}: runtimes.verify {' '.join(flags)} checked {checked}, not {expect}")
    parts = []
    for m in record["models"]:
        judged = [c for c in m["checks"] if c["judged"]]
        figures = ", ".join(f"{c['name']} max |d| {c['max_abs']:.1e} top-1 {c['top1_agreement']:.0%}" for c in m["checks"])
        parts.append(f"{m['precision']} on {m['provider']} ({', '.join(m['runs_on'])}): {figures}")
        if not judged or not all(c["passed"] for c in judged):
            raise Failed(f"{cpu}: {m['precision']} on {m['provider']} outside PyTorch's tolerance: {figures}")
    if not record["passed"]:
        raise Failed(f"{cpu}: runtimes.verify {' '.join(flags)} failed")
    return "; ".join(parts)


def check_no_gpu_provider(arm: Arm64, bundle: Path) -> str:
    """`--provider cuda` on an arm64 machine without it: one line, exit 2, naming NVIDIA's Jetson index."""
    proc = arm.python("cortex-a72", "-m", "runtimes.verify", "--bundle", str(bundle), "--provider", "cuda")
    said = proc.stderr.strip()
    if proc.returncode != 2 or len(said.splitlines()) != 1 or "pypi.jetson-ai-lab.io" not in said:
        raise Failed(f"verify --provider cuda on aarch64 exited {proc.returncode} and said {said[-300:]!r}, "
                     "not one line naming the Jetson index")
    return said


def check_doctor(arm: Arm64, cpu: str, core: str, features: tuple[str, ...]) -> str:
    """runtimes.doctor names the emulated core and its NEON, dotprod and i8mm features."""
    proc = arm.python(cpu, "-m", "runtimes.doctor")
    if proc.returncode != 0:
        raise Failed(f"{cpu}: runtimes.doctor exited {proc.returncode}: {last_line(proc)}")
    line = next((l.strip() for l in proc.stdout.splitlines() if l.strip().startswith("CPU:")), "")
    missing = [f for f in (core, *features) if f not in line]
    if missing:
        raise Failed(f"{cpu}: runtimes.doctor's CPU line lacks {', '.join(missing)}: {line!r}")
    for runtime in ("cpu", "openvino", "opencv"):
        section = proc.stdout.partition("runtimes (each ran a tiny model)")[2].partition("precisions on this CPU")[0]
        found = re.search(rf"^\s+{runtime}\s+(.+)$", section, re.M)
        if not found or not found.group(1).startswith("ok"):
            raise Failed(f"{cpu}: runtimes.doctor: {runtime} {found.group(1) if found else 'not reported'}")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "bundle")
    parser.add_argument("--cache", type=Path, default=REPO / "artifacts" / "aarch64")
    parser.add_argument("--images", type=int, default=6, help="reference images per ONNX Runtime verify")
    args = parser.parse_args(argv)
    bundle, cache = args.bundle.resolve(), args.cache.resolve()
    arm = Arm64(cache)
    started = time.perf_counter()
    times: list[tuple[str, float]] = []

    def step(name: str, work):
        began = time.perf_counter()
        result = work()
        times.append((name, time.perf_counter() - began))
        print(f"== {name} ({times[-1][1]:.0f} s): {result if isinstance(result, str) else result[0]}", flush=True)
        return result

    try:
        if not (bundle / "bundle.json").is_file():
            raise Failed(f"no bundle at {bundle}: `make demo` makes it")
        step("arm64 userland", lambda: sh(["bash", str(ARM64), "userland", str(cache)]).strip().splitlines()[-1])
        site, wheels = step("aarch64 wheels", lambda: install_wheels(bundle, cache, arm))
        print(f"   wheel set ({len(wheels)}, nothing else importable): {', '.join(wheels)}")
        a72 = step("doctor, Cortex-A72", lambda: check_doctor(arm, "cortex-a72", "Cortex-A72", ("NEON", "no dotprod", "no i8mm")))
        step(f"verify fp32 and int8 on ONNX Runtime, {args.images} images, Cortex-A72", lambda: check_verify(
            arm, bundle, "cortex-a72", args.images, expect=("fp32", "int8")))
        for provider in ("openvino", "opencv"):
            step(f"verify fp32 on {provider}, 2 images, Cortex-A72", lambda: check_verify(
                arm, bundle, "cortex-a72", 2, "--provider", provider, "--precision", "fp32", expect=("fp32",)))
        step("run on two sample images, against x86_64, Cortex-A72", lambda: check_run(arm, bundle))
        step("verify --provider cuda, Cortex-A72", lambda: check_no_gpu_provider(arm, bundle))
        a76 = step("doctor, Cortex-A76", lambda: check_doctor(arm, "cortex-a76", "Cortex-A76", ("NEON", "dotprod (asimddp)", "no i8mm")))
        step(f"verify int8 on ONNX Runtime (dotprod kernels), {args.images} images, Cortex-A76", lambda: check_verify(
            arm, bundle, "cortex-a76", args.images, "--precision", "int8", expect=("int8",)))
        # OpenVINO's own default on an fp16-capable core is f16: the adapter's f32 pin must hold there.
        step("verify fp32 on openvino, 2 images, Cortex-A76", lambda: check_verify(
            arm, bundle, "cortex-a76", 2, "--provider", "openvino", "--precision", "fp32", expect=("fp32",)))
    except Failed as exc:
        print(f"test-aarch64: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"test-aarch64: passed in {time.perf_counter() - started:.0f} s on emulated cores ({a72} | {a76}); "
          f"the emulated verify steps took {sum(t for n, t in times if n.startswith('verify')):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
