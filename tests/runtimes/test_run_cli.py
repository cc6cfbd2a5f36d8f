"""``python -m runtimes.run``: table and JSON Lines output, inputs, per-image errors, user mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes.adapters import available_providers, unavailable_reason
from runtimes.run import main
from samples.generate import IMAGES_DIR, label_of

REPO = Path(__file__).resolve().parents[2]
SAMPLES_FIRST = sorted(IMAGES_DIR.glob("*.jpg"))[0]
GOOD = ("red_checker_0.jpg", "green_vstripes_1.jpg", "blue_hstripes_0.jpg")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtimes.run", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """good/ holds three sample JPEGs (one nested); bad/ a truncated, an empty and a fake image."""
    root = tmp_path_factory.mktemp("cli")
    for i, name in enumerate(GOOD):
        target = root / "good" / ("nested" if i == 2 else "") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES_DIR / name, target)
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.jpg").write_bytes((IMAGES_DIR / GOOD[0]).read_bytes()[:600])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "fake.png").write_text("not a picture\n")
    (root / "notes.txt").write_text("a text file\n")
    return root


def test_table_lists_topk_labels_with_probabilities(demo_export, images, capsys):
    status = main(["--model", str(demo_export.path), "--topk", "2", str(images / "good")])
    out = capsys.readouterr().out
    assert status == 0
    blocks = out.strip().split("\n" + str(images))  # one block per image, path first
    assert len(blocks) == len(GOOD)
    for name in GOOD:
        assert name in out
    first = out.splitlines()[:3]
    assert first[1].split()[0] == "1" and first[1].endswith("%")
    assert first[2].split()[0] == "2"


def test_json_lines_schema_and_glob(demo_export, images, capsys):
    status = main(["--model", str(demo_export.path), "--json", "--topk", "3", str(images / "good" / "**" / "*.jpg")])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    records = [json.loads(line) for line in lines]
    assert sorted(Path(r["image"]).name for r in records) == sorted(GOOD)
    for record in records:
        assert set(record) == {"image", "topk", "preprocess"}
        assert record["preprocess"] == "exact"  # small JPEGs: nothing for the fast path to gain
        assert [set(t) for t in record["topk"]] == [{"index", "label", "prob"}] * 3
        probs = [t["prob"] for t in record["topk"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert record["topk"][0]["label"] == demo_export.spec.labels[record["topk"][0]["index"]]


def test_bad_files_get_their_own_errors_and_the_rest_are_classified(demo_export, images):
    result = run_cli("--model", demo_export.path, "--json", images / "good", images / "bad", images / "notes.txt", images / "missing.jpg")
    records = {Path(r["image"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    errors = {name for name, r in records.items() if "error" in r}
    assert errors == {"corrupt.jpg", "empty.jpg", "fake.png", "notes.txt", "missing.jpg"}
    assert {name for name, r in records.items() if "topk" in r} == set(GOOD)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "5 of 8 images could not be classified" in result.stderr


def test_unknown_provider_lists_the_known_ones(demo_export, images):
    result = run_cli("--provider", "tpu", "--model", demo_export.path, images / "good")
    assert result.returncode == 2 and result.stdout == ""
    known = "cpu, cuda, tensorrt, openvino, opencv, torch"
    available = ", ".join(available_providers())
    assert result.stderr.strip() == f"error: unknown provider 'tpu'; known: {known}; available here: {available}"


def test_missing_model_is_one_clear_line(tmp_path, images):
    result = run_cli("--model", tmp_path / "nope.onnx", images / "good")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "nope.onnx not found" in result.stderr and "converters.export" in result.stderr


def test_options_the_provider_does_not_take_are_named_as_flags(demo_export, images):
    result = run_cli("--fp16", "--device-id", "0", "--model", demo_export.path, images / "good")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: --device-id and --fp16 do not apply to provider 'cpu'; its options: --threads\n"
    result = run_cli("--provider", "opencv", "--allow-fallback", "--model", demo_export.path, images / "good")
    assert result.stderr == "error: --allow-fallback does not apply to provider 'opencv'; its options: --threads\n"


@pytest.mark.parametrize("flag", ["--batch-size", "--topk", "--threads"])
def test_counts_below_one_are_usage_errors(flag, images):
    result = run_cli(flag, "0", images / "good")
    assert result.returncode == 2 and f"argument {flag}: must be at least 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


LOADERS = [
    pytest.param(p, marks=pytest.mark.skipif(unavailable_reason(p) is not None, reason=f"{p}: {unavailable_reason(p)}"))
    for p in ("cpu", "openvino", "opencv")
]


@pytest.mark.parametrize("provider", LOADERS)
def test_a_file_that_is_not_a_model_is_one_line(provider, images, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage, not a protobuf")
    for model in (garbage, REPO / "README.md"):
        result = run_cli("--provider", provider, "--model", model, images / "good")
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {provider}: "), result.stderr
        assert str(model) in result.stderr


def test_a_reader_that_stops_early_ends_the_run_quietly(demo_export):
    """`run --json ... | head -1`: the pipe closes under us; no traceback, SIGPIPE's status."""
    command = [sys.executable, "-m", "runtimes.run", "--json", "--model", str(demo_export.path), str(IMAGES_DIR)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # before the first result is written: the first write fails
        stderr = proc.stderr.read().decode()
    assert proc.returncode == 141 and stderr == "", stderr


def test_directories_yield_exactly_the_formats_preprocessing_decodes(tmp_path):
    from PIL import Image

    from runtimes.errors import ImageError
    from runtimes.preprocess import decode_image
    from runtimes.run import collect_images

    # The oracle is the decoder: a folder search picks up a file exactly when decode_image
    # takes it. Formats Pillow writes, some of them under upper-case suffixes.
    decodes = set()
    for name in ("a.jpg", "b.JPEG", "c.png", "d.bmp", "e.gif", "f.webp", "g.tif", "h.TIFF", "i.ppm", "j.pgm", "k.tga", "l.ico", "m.pcx", "n.sgi"):
        path = tmp_path / name
        image = Image.new("L" if name.endswith(".pgm") else "RGB", (8, 8), "red" if not name.endswith(".pgm") else 128)
        image.save(path, format=Image.registered_extensions()[path.suffix.lower()])
        try:
            decode_image(path.read_bytes(), name)
        except ImageError:
            continue
        decodes.add(name)
    assert {"a.jpg", "c.png"} <= decodes and len(decodes) < 14  # both sides are exercised
    assert [p.name for p in collect_images([str(tmp_path)])] == sorted(decodes)


def test_a_gif_is_classified(demo_export, tmp_path, capsys):
    from PIL import Image

    Image.open(IMAGES_DIR / GOOD[0]).save(tmp_path / "red.gif")
    assert main(["--model", str(demo_export.path), "--json", str(tmp_path)]) == 0
    assert "topk" in json.loads(capsys.readouterr().out)


def test_no_images_found(demo_export, tmp_path):
    result = run_cli("--model", demo_export.path, tmp_path)
    assert result.returncode == 2 and "no images found" in result.stderr and "Traceback" not in result.stderr


CUDA_REASON = unavailable_reason("cuda")


@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA works on this machine")
def test_cuda_without_gpu_fails_and_does_not_classify_on_cpu(demo_export, images):
    result = run_cli("--provider", "cuda", "--model", demo_export.path, images / "good")
    assert result.returncode == 2
    assert result.stdout == "", "nothing may be classified on CPU behind the user's back"
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in result.stderr
    assert "requested provider 'cuda'" in message and "CUDA 13" in message
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in message


@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA works on this machine")
def test_cuda_allow_fallback_warns_and_runs_on_cpu(demo_export, images):
    result = run_cli("--provider", "cuda", "--allow-fallback", "--json", "--model", demo_export.path, images / "good")
    assert result.returncode == 0, result.stderr
    assert "warning: cuda unavailable, running on CPUExecutionProvider" in result.stderr
    assert len(result.stdout.splitlines()) == len(GOOD)


def test_help_is_instant():
    """--help must not import numpy, cv2 or any runtime (checked with -X importtime, not a timer)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runtimes.run", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--provider" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & {"numpy", "cv2", "onnxruntime", "onnx", "openvino", "torch"}


def test_demo_images_get_their_class(demo_export, capsys):
    main(["--model", str(demo_export.path), "--json", "--topk", "1", str(IMAGES_DIR)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == len(list(IMAGES_DIR.glob("*.jpg")))
    wrong = [r["image"] for r in records if r["topk"][0]["label"] != label_of(r["image"])]
    assert not wrong, f"misclassified: {wrong}"


def test_variant_needs_a_bundle(demo_export):
    proc = subprocess.run(
        [sys.executable, "-m", "runtimes.run", "--model", str(demo_export.path), "--variant", "fp16", str(IMAGES_DIR)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr == "error: --variant picks a model inside a bundle; pass --bundle DIR too\n"


def test_openvino_precision_is_a_runtime_option(demo_export):
    base = [sys.executable, "-m", "runtimes.run", "--model", str(demo_export.path), "--json", "--topk", "1", str(SAMPLES_FIRST)]
    proc = subprocess.run([*base, "--precision", "bf16"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--precision does not apply to provider 'cpu'" in proc.stderr
    if unavailable_reason("openvino") is None:
        proc = subprocess.run([*base, "--provider", "openvino", "--precision", "bf16"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["topk"][0]["label"] == label_of(SAMPLES_FIRST)
