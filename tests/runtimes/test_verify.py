"""``runtimes.verify`` replays the export's reference answers on each runtime and judges them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import provider_param, save_fp16_variant, save_perturbed_copy

REPO = Path(__file__).resolve().parents[2]


def _verify(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtimes.verify", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("provider", [provider_param(p) for p in ("cpu", "cuda", "tensorrt", "openvino", "opencv")])
def test_each_runtime_gives_pytorchs_answers(demo_export, provider):
    proc = _verify("--model", str(demo_export.path), "--provider", provider, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (model,) = json.loads(proc.stdout)["models"]
    print(provider, [(c["name"], c["max_abs"]) for c in model["checks"]])
    assert [c["name"] for c in model["checks"]] == ["seeded batch 1", "seeded batch 4", "18 images"]
    assert all(c["passed"] and c["judged"] and c["atol"] == 1e-4 for c in model["checks"])
    assert all(c["top1_agreement"] == 1.0 for c in model["checks"])


def test_a_model_that_disagrees_fails_with_exit_3(demo_export, tmp_path):
    bad = save_perturbed_copy(demo_export.path, tmp_path / "bad.onnx")
    proc = _verify("--model", str(bad))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout.splitlines()[-1]
    rows = [line for line in proc.stdout.splitlines() if line.strip().startswith(("seeded", "18 images"))]
    assert len(rows) == 3 and all(row.endswith("FAILED") for row in rows)


def test_fp16_model_is_judged_by_the_fp16_tolerance(demo_export, tmp_path):
    shutil.copyfile(demo_export.reference_path, tmp_path / "half.reference.npz")
    half = save_fp16_variant(demo_export.path, tmp_path / "half.onnx")
    proc = _verify("--model", str(half), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(proc.stdout)["models"][0]["checks"]
    assert all(c["atol"] == 5e-2 and c["rtol"] == 1e-2 for c in checks)
    # fp16 really moves the logits: under the fp32 tolerance this model would fail.
    assert max(c["max_abs"] for c in checks) > 1e-3


def test_no_reference_beside_the_model_is_one_line(demo_export, tmp_path):
    shutil.copyfile(demo_export.path, tmp_path / "lonely.onnx")
    proc = _verify("--model", str(tmp_path / "lonely.onnx"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "lonely.reference.npz not found; re-export the model" in proc.stderr


def test_a_precision_this_toolkit_does_not_know_is_one_line(demo_export, tmp_path):
    import dataclasses

    import onnx

    from runtimes.spec import METADATA_KEY

    model = onnx.load(str(demo_export.path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = dataclasses.replace(demo_export.spec, precision="fp8").to_json()
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(tmp_path / "odd.onnx"))
    shutil.copyfile(demo_export.reference_path, tmp_path / "odd.reference.npz")
    proc = _verify("--model", str(tmp_path / "odd.onnx"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no tolerance for precision 'fp8'" in proc.stderr
