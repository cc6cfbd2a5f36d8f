"""runtimes.evaluate: accuracy on labelled folders, agreement with a reference, and the gate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from runtimes import evaluate

REPO = Path(__file__).resolve().parents[2]


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtimes.evaluate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_int8_is_within_2_points_of_fp32_and_agrees_on_97_percent(demo_int8, demo_export, fresh_images):
    proc = _evaluate(fresh_images, "--model", demo_int8.path, "--reference", demo_export.path, "--max-top1-drop", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    print({k: report[k] for k in ("top1", "top5")}, report["reference"])
    assert report["images"] == 90 and report["precision"] == "int8"
    assert report["reference"]["top1_drop_points"] <= 2 and report["reference"]["top1_agreement"] >= 0.97
    assert report["top1"] >= 0.9 and set(report["per_class"]) == set(demo_export.spec.labels)


def test_the_gate_fails_when_the_drop_exceeds_the_limit(demo_export, fresh_images, tmp_path):
    worse = tmp_path / "worse.onnx"
    model = onnx.load(str(demo_export.path))
    bias = next(i for i in model.graph.initializer if i.name == "fc.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 8.0  # class 0 now wins many images it should not
    bias.CopyFrom(onnx.numpy_helper.from_array(values, "fc.bias"))
    onnx.save(model, str(worse))
    proc = _evaluate(fresh_images, "--model", worse, "--reference", demo_export.path, "--max-top1-drop", "1", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    assert report["reference"]["top1_drop_points"] > 1 and report["gate"].startswith("failed")
    assert report["confusions"] and all(predicted == demo_export.spec.labels[0] for _, predicted, _ in report["confusions"])


def test_a_corrupt_image_is_counted_not_fatal(demo_export, fresh_images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fresh_images, data)
    label = demo_export.spec.labels[3]
    (data / label / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = _evaluate(data, "--model", demo_export.path, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 90 and len(report["unreadable"]) == 1 and "broken.jpg" in report["unreadable"][0]


def test_folders_that_are_not_labels_are_refused(demo_export, tmp_path):
    (tmp_path / "cats").mkdir()
    proc = _evaluate(tmp_path, "--model", demo_export.path)
    assert proc.returncode == 2 and "not labels: cats" in proc.stderr and proc.stderr.count("\n") == 1


def test_no_readable_image_is_an_error_not_a_passed_gate(demo_export, tmp_path):
    """Before, 0 readable images gave top-1 0% for both models, a drop of 0 points, and "passed"."""
    folder = tmp_path / demo_export.spec.labels[0]
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = _evaluate(tmp_path, "--model", demo_export.path, "--reference", demo_export.path, "--max-top1-drop", "1")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path}: none of the 1 images in its class folders could be read; the first: ")
    assert "broken.jpg" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("limit", ["nan", "inf", "-0.5"])
def test_the_gate_takes_only_a_finite_number_of_points(limit, capsys):
    """NaN compares false with every drop, so --max-top1-drop nan passed any model."""
    with pytest.raises(SystemExit) as info:
        evaluate.main(["data", "--reference", "fp32.onnx", "--max-top1-drop", limit])
    assert info.value.code == 2
    assert f"argument --max-top1-drop: must be a finite number of points, 0 or more, got {limit}" in capsys.readouterr().err
    assert evaluate.points("0") == 0 and evaluate.points("2.5") == 2.5
