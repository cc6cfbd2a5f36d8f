"""``runtimes.verify`` replays the export's reference answers on each runtime and judges them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes.reference import reference_path_for
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


def test_fp16_variant_is_judged_by_the_fp16_tolerance_against_its_parents_answers(demo_fp16):
    """As `converters.quantize` leaves it: beside its fp32 parent and the parent's answers, with none of its own."""
    assert not reference_path_for(demo_fp16).exists()
    proc = _verify("--model", str(demo_fp16), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (model,) = json.loads(proc.stdout)["models"]
    assert model["precision"] == "fp16" and model["tolerance"]["atol"] == 5e-2 and model["tolerance"]["rtol"] == 1e-2
    assert all(c["atol"] == 5e-2 and c["rtol"] == 1e-2 for c in model["checks"])
    # fp16 really moves the logits: under the fp32 tolerance this model would fail.
    assert max(c["max_abs"] for c in model["checks"]) > 1e-3
    text = _verify("--model", str(demo_fp16))
    assert text.returncode == 0 and f"fp16  {demo_fp16}  (atol 0.05, rtol 0.01)" in text.stdout.splitlines()


@pytest.mark.parametrize("neighbour", ["none", "another model"])
def test_a_variant_without_its_parent_beside_it_is_one_line(demo_export, demo_fp16, tmp_path, neighbour):
    """Answers are taken only from the parent the variant's spec names by sha256, not from any model nearby."""
    lonely = Path(shutil.copyfile(demo_fp16, tmp_path / demo_fp16.name))
    if neighbour == "another model":  # a different fp32 model, with a copy of the true answers beside it
        save_perturbed_copy(demo_export.path, tmp_path / "demo.onnx")
    proc = _verify("--model", str(lonely))
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "this fp16 variant is checked against those of the fp32 model it was made from" in proc.stderr
    assert "put that model and its .reference.npz beside it" in proc.stderr


def test_int8_is_shown_with_the_figure_it_is_judged_by(demo_int8):
    """int8 is judged by top-1 on the images; top-5 set agreement means nothing there (it
    printed 0.0% next to "verified"), so it is not shown."""
    proc = _verify("--model", str(demo_int8.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert f"int8  {demo_int8.path}  (top-1 agreement on images >= 97%)" in lines
    head = next(line for line in lines if line.strip().startswith("check"))
    assert head.split() == ["check", "max", "|d|", "mean", "|d|", "top-1", "result"]
    rows = [line.split() for line in lines if line.strip().startswith(("seeded", "18 images"))]
    assert [row[-1] for row in rows] == ["shown", "shown", "ok"] and rows[-1][-2] == "100.0%"


def test_torch_takes_its_checkpoint_from_ckpt(demo_export, demo_ckpt):
    """The torch runner's error says to pass --ckpt: verify has it, and it reaches the runner."""
    proc = _verify("--model", str(demo_export.path), "--provider", "torch", "--ckpt", str(demo_ckpt), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (model,) = json.loads(proc.stdout)["models"]
    assert model["runs_on"] == ["PyTorch:CPU"] and all(c["passed"] for c in model["checks"])
    wrong = _verify("--model", str(demo_export.path), "--provider", "cpu", "--ckpt", str(demo_ckpt))
    assert wrong.returncode == 2 and wrong.stderr == "error: --ckpt does not apply to provider 'cpu'; its options: --threads\n"


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


def test_images_n_is_a_quick_check_that_names_what_it_checked(demo_export, tmp_path):
    """For a slow device: the smallest seeded batch and N images spanning the classes, listed
    in the output; a wrong model still fails it."""
    proc = _verify("--model", str(demo_export.path), "--images", "3", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)
    (model,) = record["models"]
    assert [c["name"] for c in model["checks"]] == ["seeded batch 1", "3 images"]
    (note,) = [n for n in record["notes"] if n.startswith("quick check")]
    shown = note.rsplit(": ", 1)[1].split(", ")
    assert len(shown) == 3 and len({name.rsplit("_", 1)[0] for name in shown}) == 3  # three classes
    assert "seeded batch 1 of 2, and 3 of 18 images" in note
    bad = save_perturbed_copy(demo_export.path, tmp_path / "bad.onnx")
    assert _verify("--model", str(bad), "--images", "1").returncode == 3
    assert _verify("--model", str(demo_export.path), "--images", "0").returncode == 2
