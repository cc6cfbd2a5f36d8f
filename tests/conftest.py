"""Session-wide fixtures: expensive checkpoints and exports are made once per run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from converters.googlenet import GoogLeNet


@pytest.fixture(scope="session", autouse=True)
def bundle_cache(tmp_path_factory) -> Path:
    """Tarball bundles unpack into a cache of the run's own, never the user's ~/.cache; the
    commands the tests start inherit it."""
    import os

    from runtimes.tarball import CACHE_ENV

    folder = tmp_path_factory.mktemp("bundle-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


def save_training_checkpoint(path: Path, layout: str, num_classes: int = 1000, seed: int = 0) -> Path:
    """A random training checkpoint with both aux heads, wrapped like a trainer saves it.

    Biases and BatchNorm statistics are randomised too, as training leaves them: freshly
    initialised ones are all equal, which lets a simplifier merge them and hides bugs.
    """
    torch.manual_seed(seed)
    model = GoogLeNet(layout, num_classes=num_classes, aux_logits=True)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("bias") or name.endswith("running_mean"):
                tensor.normal_(0, 0.05)
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                tensor.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict(), "epoch": 3, "optimizer": {}}, path)
    return path


@pytest.fixture(scope="session")
def paper_ckpt(tmp_path_factory) -> Path:
    return save_training_checkpoint(tmp_path_factory.mktemp("ckpt") / "paper.pth", "paper")


@pytest.fixture(scope="session")
def paper_export(tmp_path_factory, paper_ckpt):
    """The default export of a random paper-layout checkpoint (1000 classes)."""
    from converters.export import export

    return export(paper_ckpt, tmp_path_factory.mktemp("export") / "paper.onnx")


@pytest.fixture(scope="session")
def demo_ckpt() -> Path:
    """The embedded demo checkpoint, built on first use and cached under artifacts/. Under a lock: with
    two pytest workers (``-n 2``) the first builds it and the other waits, instead of both training."""
    import fcntl

    from samples.checkpoint import DEFAULT_CKPT, ensure_checkpoint

    DEFAULT_CKPT.parent.mkdir(parents=True, exist_ok=True)
    with open(DEFAULT_CKPT.with_name(f".{DEFAULT_CKPT.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_checkpoint()


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory, demo_ckpt):
    """The demo checkpoint exported with the demo class names."""
    from converters.export import export
    from samples.generate import LABELS_FILE

    return export(demo_ckpt, tmp_path_factory.mktemp("demo") / "demo.onnx", labels=LABELS_FILE)


@pytest.fixture(scope="session")
def demo_calib(tmp_path_factory) -> Path:
    """An ImageFolder of 108 fresh demo images (12 per class, seed 31, not the evaluation ones):
    what ``demo_int8`` is calibrated on. Read-only: copy it before changing it."""
    from samples.generate import write_dataset

    return write_dataset(tmp_path_factory.mktemp("calib"), per_class=12, seed=31)[0].parents[1]


@pytest.fixture(scope="session")
def demo_int8(demo_export, demo_calib):
    """The demo model's int8 variant, calibrated on ``demo_calib``'s 108 fresh demo images (not the evaluation ones)."""
    from converters.quantize import quantize

    return quantize(demo_export.path, "int8", calib=demo_calib, out=demo_export.path.with_name("demo.int8.onnx"))


@pytest.fixture(scope="session")
def demo_fp16(demo_export) -> Path:
    """The demo model's fp16 variant, beside it as <stem>.fp16.onnx (where deploy.bundle looks for variants)."""
    from runtimes.spec import variant_path
    from tests.helpers import save_fp16_variant

    return save_fp16_variant(demo_export.path, variant_path(demo_export.path, "fp16"))


@pytest.fixture(scope="session")
def fresh_images(tmp_path_factory) -> Path:
    """An ImageFolder of 90 fresh demo images (10 per class), for accuracy."""
    from samples.generate import write_dataset

    folder = tmp_path_factory.mktemp("fresh")
    write_dataset(folder, per_class=10, seed=77)
    return folder


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test run, for every pytest-xdist worker: in the run's shared temp
    folder, under a lock, so the first worker to ask builds it and the other waits and reuses it. Only
    for read-only folders (tests copy them before changing them)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <run>/popen-gwN
    folder = root / f"built-once-{name}"
    with open(root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / f".{folder.name}.done"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tune_bundle(tmp_path_factory, request) -> Path:
    """A bundle of the demo model in fp32 and int8 for cpu and, where it is installed, OpenVINO:
    something for runtimes.tune to choose from. Built once for all workers; copy it before changing it."""
    import importlib.util

    from deploy.bundle import build_bundle

    def build(folder: Path) -> None:  # the models are asked for only by the worker that builds
        model, _ = request.getfixturevalue("demo_export").path, request.getfixturevalue("demo_int8")
        target = "cpu,openvino" if importlib.util.find_spec("openvino") else "cpu"
        build_bundle(model, folder / "gnet", target=target, variants=["int8"])

    return _built_once(tmp_path_factory, "tune", build) / "gnet"


@pytest.fixture(scope="session")
def tuned_bundle(tmp_path_factory, tune_bundle) -> Path:
    """``tune_bundle`` tuned on this machine (cpu and openvino, fp32 and int8, 2 threads, with
    confirming pairs of fresh processes): its tuned.json beside bundle.json. Built once for all workers;
    copy it before changing it."""
    from runtimes.tune import main

    def build(folder: Path) -> None:
        shutil.copytree(tune_bundle, folder / "gnet")
        status = main(["--bundle", str(folder / "gnet"), "--precisions", "fp32,int8", "--threads", "2",
                       "--budget-s", "50", "--json"])
        assert status == 0 and (folder / "gnet" / "tuned.json").is_file()

    return _built_once(tmp_path_factory, "tuned", build) / "gnet"


# The slowest modules, slowest first (seconds each on a 2-core EPYC, 2026-12-07). `make test` runs two
# pytest-xdist workers, each taking a whole module at a time (--dist loadfile, so a module's Ray cluster or
# server starts once); starting the longest modules first keeps one worker from finishing long after the other.
SLOWEST_FIRST = [
    "tests/deploy/test_batch.py", "tests/converters/test_repair.py", "tests/converters/test_export.py",
    "tests/runtimes/test_bench.py", "tests/converters/test_quantize.py", "tests/runtimes/test_diverge.py",
    "tests/deploy/test_bundle.py", "tests/runtimes/test_tune.py", "tests/runtimes/test_threads.py",
    "tests/runtimes/test_preprocess_properties.py", "tests/runtimes/test_tuned.py", "tests/deploy/test_serve_ray.py",
]


def pytest_collection_modifyitems(session, config, items):
    """The slowest modules first, in SLOWEST_FIRST's order; every other test after them, in its own order.
    Stable, and the same in every worker (pytest-xdist requires one collection order)."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
