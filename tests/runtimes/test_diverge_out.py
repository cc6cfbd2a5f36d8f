"""``runtimes.diverge --out DIR`` writes a fresh folder or refuses: a model and inputs from two
runs never share one folder, and a folder of anything is never written into."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtimes.atomic import OutputRefused
from runtimes.diagnosis import write_out

REPO = Path(__file__).resolve().parents[2]


def _diverge(demo_export, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtimes.diverge", "--model", str(demo_export.path), "--provider", "cpu",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stale_out_folder_is_refused_before_the_diagnosis(demo_export, tmp_path):
    out = tmp_path / "diag"
    out.mkdir()
    (out / "report.json").write_text('{"verdict": {"kind": "culprit"}}\n')  # an earlier run's, with its reduced model
    (out / "reduced.onnx").write_bytes(b"an earlier run's model")
    (out / "inputs.npz").write_bytes(b"an earlier run's inputs")
    before = _snapshot(tmp_path)
    proc = _diverge(demo_export, out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == [f"error: {out} exists and is not empty; give a new or empty folder"], proc.stderr
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["diag"]


@pytest.mark.parametrize("exists", [False, True], ids=["new", "empty"])
def test_a_new_or_empty_out_folder_gets_exactly_this_runs_files(demo_export, tmp_path, exists):
    out = tmp_path / "diag"
    if exists:
        out.mkdir()
    proc = _diverge(demo_export, out)
    assert proc.returncode == 0, proc.stderr  # the fp32 model on cpu: no divergence, so no reduced model
    assert sorted(os.listdir(out)) == ["inputs.npz", "report.json"]
    assert sorted(os.listdir(tmp_path)) == ["diag"]  # no staging folder left beside it


def test_write_out_refuses_a_folder_that_filled_during_the_run(tmp_path):
    """The check in runtimes.diverge comes before the slow run; write_out checks again before its rename."""
    report = {"verdict": {"kind": "none"}, "_reduced": b"model", "_reduced_inputs": {"x": np.zeros(2, np.float32)}}
    out = tmp_path / "diag"
    out.mkdir()
    (out / "reduced.onnx").write_bytes(b"another run's model")
    with pytest.raises(OutputRefused, match="exists and is not empty"):
        write_out(report, out)
    assert _snapshot(tmp_path) == {"diag/reduced.onnx": b"another run's model"}
    assert sorted(os.listdir(tmp_path)) == ["diag"]
    written = write_out(report, tmp_path / "fresh")
    assert [p.name for p in written] == ["report.json", "inputs.npz", "reduced.onnx"]
    assert (tmp_path / "fresh" / "reduced.onnx").read_bytes() == b"model"
