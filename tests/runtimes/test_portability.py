"""Portability: atomic writes without os.fchmod, consoles that cannot show a file name,
and ONNX Runtime's own CUDA library preloading on machines without a GPU."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

from runtimes import atomic
from runtimes.adapters import nvidia
from samples.generate import IMAGES_DIR

REPO = Path(__file__).resolve().parents[2]
UMASK = os.umask(0o022)
os.umask(UMASK)


def test_atomic_write_needs_no_fchmod(tmp_path, monkeypatch):
    """Windows has os.fchmod only from Python 3.13."""
    monkeypatch.delattr(os, "fchmod", raising=False)
    target = atomic.write_text(tmp_path / "report.json", "{}")
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the real fsync, noting what it flushed and whether the rename had happened
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_bytes(target, b"graph")
    assert synced == [(False, False), (True, True)]  # the temp file's data, then the folder holding the new name


@pytest.mark.parametrize("encoding", ["ascii", "cp1252"])
def test_a_name_the_console_cannot_show_is_printed_escaped(demo_export, tmp_path, encoding):
    image = tmp_path / "katze_\u732b_\xf1.jpg"  # a CJK character neither encoding has, an n-tilde cp1252 has
    shutil.copy(sorted(IMAGES_DIR.glob("*.jpg"))[0], image)
    model = REPO / "artifacts" / "no_such_\u732b.onnx"
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    shown = str(image).replace("\u732b", "\\u732b").encode(encoding, "backslashreplace")

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runtimes.run", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, timeout=120)

    missing_model = run("--model", model, image)
    assert missing_model.returncode == 2
    assert missing_model.stderr.startswith(b"error: model ") and b"no_such_\\u732b.onnx" in missing_model.stderr
    assert missing_model.stderr.count(b"\n") == 1

    table = run("--model", demo_export.path, "--topk", "1", image)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == shown
    assert b"Traceback" not in table.stderr


def test_ort_preload_keeps_stdout_clean(capfd):
    """This machine's onnxruntime may lack the CUDA libraries preload_dlls looks for: whatever it
    reports must not land on stdout, where runtimes.run writes JSON Lines."""
    nvidia.ort_preload_dlls.cache_clear()
    nvidia.ort_preload_dlls()
    assert capfd.readouterr().out == ""


def test_ort_preload_is_skipped_on_onnxruntime_before_1_21(monkeypatch):
    monkeypatch.delattr(onnxruntime, "preload_dlls", raising=False)
    nvidia.ort_preload_dlls.cache_clear()
    assert nvidia.ort_preload_dlls() is None
    nvidia.ort_preload_dlls.cache_clear()


@pytest.mark.skipif(not isinstance(nvidia.gpu_names(), str), reason="a GPU is visible here")
def test_without_a_gpu_the_gpu_runners_say_why_and_print_nothing_else():
    code = (
        "import json\n"
        "from runtimes.adapters import runner_class\n"
        "print(json.dumps([runner_class(name).unavailable_reason() for name in ('cuda', 'tensorrt')]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reasons = json.loads(result.stdout)  # fails if anything else was printed
    assert all(isinstance(r, str) and r for r in reasons)
