"""A bundle's tuned.json, as ``runtimes.run``, ``runtimes.verify`` and ``deploy.serve`` use it.

Every command runs in a real subprocess on a copy of the ``tuned_bundle`` fixture. The
tuned choice differs between machines, so the expectations are read from its tuned.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from runtimes.device import fingerprint, fingerprint_mismatch
from samples.generate import IMAGES_DIR, label_of
from tests.deploy.serving import start_server

REPO = Path(__file__).resolve().parents[2]
IMAGES = [IMAGES_DIR / "blue_checker_0.jpg", IMAGES_DIR / "red_vstripes_1.jpg"]
RUNS_ON = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINO:CPU", "opencv": "OpenCV:CPU"}
DEFAULT_PROVIDER_LINE = "provider: cpu (CPUExecutionProvider)"
HIDE_OPENVINO = ("import sys, runpy; sys.modules['openvino'] = None; sys.argv = ['runtimes.run', *sys.argv[1:]]; "
                 "runpy.run_module('runtimes.run', run_name='__main__')")


def run(module: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=180)


def classify(bundle: Path, *flags: str) -> subprocess.CompletedProcess:
    """``runtimes.run --bundle BUNDLE --json`` on the two sample images."""
    return run("runtimes.run", "--bundle", bundle, "--json", *flags, *IMAGES)


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def label(config: dict) -> str:
    """The start of a configuration's label: ``openvino int8, batch 1``."""
    return f"{config['provider']} {config['precision']}, batch {config['batch_size']}"


def model_precision(config: dict) -> str:
    """The bundle model a configuration runs: OpenVINO's bf16 and f16 run the fp32 file."""
    return "fp32" if config["precision"] in ("bf16", "f16") else config["precision"]


def assert_correct(stdout: str) -> None:
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["image"] for r in records] == [str(i) for i in IMAGES]
    assert [r["topk"][0]["label"] for r in records] == [label_of(i) for i in IMAGES]


def ran_on(stderr: str) -> str:
    """What the closing ``classified 2 images in ... (... images/s, RUNTIME)`` line names."""
    found = lines(stderr, "classified 2 images")
    assert len(found) == 1, stderr
    return found[0].rsplit("images/s, ", 1)[1].removesuffix(")")


def edit_tuned(folder: Path, change) -> dict:
    path = folder / "tuned.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2))
    return record


@pytest.fixture(scope="module")
def record(tuned_bundle) -> dict:
    """The tuned_bundle's tuned.json."""
    return json.loads((tuned_bundle / "tuned.json").read_text())


@pytest.fixture
def copy(tuned_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tuned_bundle, tmp_path / "gnet"))


@pytest.fixture(scope="module")
def default_stdout(tuned_bundle, tmp_path_factory) -> str:
    """What ``runtimes.run`` prints for the tuned bundle with its tuned.json removed: the old behaviour."""
    folder = Path(shutil.copytree(tuned_bundle, tmp_path_factory.mktemp("untuned") / "gnet"))
    (folder / "tuned.json").unlink()
    result = classify(folder)
    assert result.returncode == 0, result.stderr
    assert not lines(result.stderr, "tuned:") and not lines(result.stderr, "warning:"), result.stderr
    assert DEFAULT_PROVIDER_LINE in result.stderr.splitlines()
    assert_correct(result.stdout)
    return result.stdout


def test_run_uses_the_tuned_choice(copy, record):
    """run --bundle says it uses the tuned choice in one line, runs that runtime, and classifies correctly."""
    choice = record["choice"]
    result = classify(copy)
    assert result.returncode == 0, result.stderr
    tuned = lines(result.stderr, "tuned:")
    assert len(tuned) == 1 and tuned[0].startswith(f"tuned: {label(choice)}"), result.stderr
    assert str(copy / "tuned.json") in tuned[0]
    assert not lines(result.stderr, "warning:") and not lines(result.stderr, "provider:"), result.stderr
    assert ran_on(result.stderr) == RUNS_ON[choice["provider"]]
    assert_correct(result.stdout)


def _touch_bundle_json(folder: Path, here: dict) -> str:
    with open(folder / "bundle.json", "a") as manifest:
        manifest.write(" ")
    return "bundle.json changed since"


def _other_cpu(folder: Path, here: dict) -> str:
    edit_tuned(folder, lambda r: r["device"].update(cpu="Imaginary CPU 9000"))
    return f"tuned on the CPU Imaginary CPU 9000, this machine has {here['cpu']}"


def _other_version(folder: Path, here: dict) -> str:
    record = edit_tuned(folder, lambda r: r["device"]["versions"].update(numpy="0.0.1"))
    assert "numpy" in here["versions"] and record["device"]["versions"]["numpy"] != here["versions"]["numpy"]
    return f"tuned with numpy 0.0.1, this machine has numpy {here['versions']['numpy']}"


@pytest.mark.parametrize("mismatch", [_touch_bundle_json, _other_cpu, _other_version],
                         ids=["bundle-json-changed", "other-cpu", "other-numpy"])
def test_a_mismatch_warns_once_and_runs_the_default(copy, default_stdout, mismatch):
    """A changed bundle.json, another CPU or another installed runtime version: tuned.json is not
    used, one warning gives the reason, and the bundle's default runs as it did without tuned.json."""
    reason = mismatch(copy, fingerprint())
    result = classify(copy)
    assert result.returncode == 0, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: {copy / 'tuned.json'} not used: {reason}")
    assert "the bundle's default runs" in warnings[0]
    assert not lines(result.stderr, "tuned:")
    assert DEFAULT_PROVIDER_LINE in result.stderr.splitlines()
    assert result.stdout == default_stdout


def test_provider_flag_overrides_the_tuned_choice(copy):
    """--provider cpu: no tuned line, a note saying why, and CPUExecutionProvider runs the default model."""
    result = classify(copy, "--provider", "cpu")
    assert result.returncode == 0, result.stderr
    assert not lines(result.stderr, "tuned:") and not lines(result.stderr, "warning:"), result.stderr
    assert lines(result.stderr, "note:") == [f"note: {copy / 'tuned.json'} not used: --provider picks the configuration"]
    assert ran_on(result.stderr) == "CPUExecutionProvider"
    assert_correct(result.stdout)


def test_threads_flag_keeps_the_tuned_choice(copy, record):
    """--threads only overrides its knob: the tuned choice still runs."""
    choice = record["choice"]
    result = classify(copy, "--threads", "1")
    assert result.returncode == 0, result.stderr
    tuned = lines(result.stderr, "tuned:")
    assert len(tuned) == 1 and tuned[0].startswith(f"tuned: {label(choice)}"), result.stderr
    assert tuned[0].endswith("; --threads 1 instead of its threads"), result.stderr
    assert not lines(result.stderr, "note:") and not lines(result.stderr, "warning:")
    assert ran_on(result.stderr) == RUNS_ON[choice["provider"]]
    assert_correct(result.stdout)


def _expect_fallback(result: subprocess.CompletedProcess, fallback: dict, missing: str) -> None:
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stderr, "tuned:")) == 1, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1, result.stderr
    assert f"provider '{missing}'" in warnings[0] and warnings[0].endswith("using the next tuned choice")
    used = lines(result.stderr, "provider:")
    assert len(used) == 1 and used[0].startswith(f"provider: {label(fallback)}"), result.stderr
    assert ran_on(result.stderr) == RUNS_ON[fallback["provider"]]
    assert_correct(result.stdout)


def test_a_missing_openvino_falls_back_to_the_next_choice(copy, record):
    """With openvino not importable, the first fallback on another runtime runs, after one warning."""
    if record["choice"]["provider"] != "openvino":
        pytest.skip(f"the tuned choice here is {label(record['choice'])}, not openvino")
    fallback = next((f for f in record["fallbacks"] if f["provider"] != "openvino"), None)
    if fallback is None:
        pytest.skip("no tuned fallback here runs on another runtime than openvino")
    result = subprocess.run([sys.executable, "-c", HIDE_OPENVINO, "--bundle", str(copy), "--json", *map(str, IMAGES)],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    _expect_fallback(result, fallback, "openvino")


def with_provider(folder: Path, provider: str) -> None:
    """Add ``provider`` to the bundle's providers, as a bundle for it would list it, and point
    tuned.json at the changed bundle.json (which no file hash covers)."""
    path = folder / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest["providers"].append(provider)
    path.write_text(json.dumps(manifest, indent=2))
    edit_tuned(folder, lambda r: r.update(bundle_json_sha256=hashlib.sha256(path.read_bytes()).hexdigest()))


def gated(change):
    """An edit that changes the choice, and gives the file the passing gate record the changed
    choice would have had: the forgery only a guard other than the gate check can refuse."""
    def edit(record: dict) -> None:
        change(record["choice"])
        entry = next(c for c in record["candidates"] if c["status"] == "chosen")
        record["candidates"].append({**entry, **record["choice"], "status": "eliminated"})
    return edit


def test_an_unavailable_cuda_choice_falls_back_to_the_first_fallback(copy, record):
    """A gated choice on cuda, in a bundle that lists cuda, where cuda cannot load here, gives way to
    the first fallback."""
    from runtimes.adapters import unavailable_reason

    if unavailable_reason("cuda") is None:
        pytest.skip("cuda is available here: a cuda choice would load")
    if not record["fallbacks"]:
        pytest.skip("the tuned choice here has no fallbacks")
    with_provider(copy, "cuda")
    edit_tuned(copy, gated(lambda choice: choice.update(provider="cuda", hint=None, threads=None)))
    _expect_fallback(classify(copy), record["fallbacks"][0], "cuda")


def _never_gated(record: dict) -> str:
    """A batch size no candidate had: a configuration that was never measured or gated."""
    record["choice"].update(batch_size=3)
    return "none of its candidates shows passing the gate"


def _gate_failed(record: dict) -> str:
    entry = next(c for c in record["candidates"] if c["status"] == "chosen")
    entry.update(status="rejected", reason="18 images: top-1 agrees with PyTorch on 50.0%, below 97%")
    entry["gate"]["passed"] = False
    return "none of its candidates shows passing the gate"


def _fallback_never_gated(record: dict) -> str:
    record["fallbacks"].append({**record["choice"], "batch_size": 5})
    return "names a fallback"


def _provider_lacked(record: dict) -> str:
    gated(lambda choice: choice.update(provider="tensorrt", hint=None, threads=None))(record)
    return "on tensorrt, which is not one of the bundle's providers"


def _precision_not_run(record: dict) -> str:
    gated(lambda choice: choice.update(provider="cpu", precision="bf16", hint=None))(record)
    return "a precision cpu cannot run here: the bundle holds no bf16 model"


def _batch_unbounded(record: dict) -> str:
    gated(lambda choice: choice.update(batch_size=100000))(record)
    return "a batch size above the 64 a tuner may try"


def _threads_unbounded(record: dict) -> str:
    gated(lambda choice: choice.update(threads=400))(record)
    return "more threads than the"


FORGERIES = [_never_gated, _gate_failed, _fallback_never_gated, _provider_lacked, _precision_not_run,
             _batch_unbounded, _threads_unbounded]
FORGERY_IDS = ["never-gated", "gate-failed", "fallback-never-gated", "provider-lacked", "precision-not-run",
               "batch-unbounded", "threads-unbounded"]


@pytest.mark.parametrize("forge", FORGERIES, ids=FORGERY_IDS)
def test_a_choice_without_gated_evidence_is_refused(copy, forge):
    """tuned.json is evidence: a choice or fallback that its own candidates do not show passing the
    gate, on a provider and precision the bundle runs, within the tuner's bounds, is refused with
    the reason (what run, verify and serve print as their one warning; the next test runs one)."""
    from runtimes.bundle import open_bundle
    from runtimes.tuned import read_tuned

    record = json.loads((copy / "tuned.json").read_text())
    expected = forge(record)
    (copy / "tuned.json").write_text(json.dumps(record))
    with open_bundle(copy) as opened:
        tuned, why = read_tuned(copy, opened)
    assert tuned is None and why.startswith("it names") and expected in why, why


def test_a_forged_choice_is_one_warning_and_the_default_runs(copy, default_stdout):
    """End to end, through runtimes.run: one warning naming why, then the bundle's default, as
    without tuned.json."""
    record = edit_tuned(copy, lambda r: r.update(forged=_batch_unbounded(r)))
    result = classify(copy)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: {copy / 'tuned.json'} not used: it names"), warnings[0]
    assert record["forged"] in warnings[0] and "the bundle's default runs" in warnings[0], warnings[0]
    assert not lines(result.stderr, "tuned:")
    assert DEFAULT_PROVIDER_LINE in result.stderr.splitlines()
    assert result.stdout == default_stdout


def test_verify_judges_the_defaults_when_the_choice_is_forged(copy):
    """The issue's forgery: a never-gated choice on OpenVINO's bf16. verify refuses it, judges every
    model file as the bundle runs it at its own tolerance (fp32 at atol 1e-4, not bf16's 0.4), and
    names the configurations it judged."""
    edit_tuned(copy, lambda r: r.update(
        choice={"provider": "openvino", "precision": "bf16", "batch_size": 2, "threads": 1, "hint": "LATENCY"}))
    result = run("runtimes.verify", "--bundle", copy)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert len(lines(out, "warning:")) == 1 and "shows passing the gate" in lines(out, "warning:")[0], out
    assert not lines(out, "tuned:") and "bf16" not in lines(out, "verified:")[0]
    verdict = lines(out, "verified:")
    assert len(verdict) == 1 and verdict[0].endswith("(cpu fp32 at atol 0.0001; cpu int8 at top-1 >= 97%)"), out


def test_no_choice_runs_as_before(copy, default_stdout):
    """tuned.json with no choice (nothing passed the gate): one warning, then the untuned behaviour."""
    edit_tuned(copy, lambda r: r.update(choice=None, fallbacks=[]))
    result = classify(copy)
    assert result.returncode == 0, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1 and "no candidate" in warnings[0], result.stderr
    assert not lines(result.stderr, "tuned:")
    assert result.stdout == default_stdout


@pytest.mark.parametrize("damage", [
    lambda r: r.update(device="a string"),
    lambda r: r["device"].update(versions=["numpy"]),
    lambda r: r["choice"].update(provider="foo"),
    lambda r: r["choice"].update(batch_size=True),
], ids=["device", "versions", "provider", "batch-size"])
def test_a_malformed_tuned_json_warns_and_runs_as_before(copy, default_stdout, damage):
    """A tuned.json edited by hand into nonsense is one warning, never a traceback."""
    edit_tuned(copy, damage)
    result = classify(copy)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1 and "malformed" in warnings[0], result.stderr
    assert result.stdout == default_stdout


def test_a_tuned_tarball_gets_a_sidecar_and_is_not_rewritten(tune_bundle, tmp_path):
    """tune on a .tar.gz writes X.tar.gz.tuned.json beside it, leaves the archive's bytes alone,
    and run --bundle X.tar.gz uses the sidecar's choice."""
    tarball = Path(shutil.copy(tune_bundle.with_name(tune_bundle.name + ".tar.gz"), tmp_path / "gnet.tar.gz"))
    before = hashlib.sha256(tarball.read_bytes()).hexdigest()
    tuned = run("runtimes.tune", "--bundle", tarball, "--providers", "cpu", "--precisions", "fp32,int8",
                "--threads", "2", "--budget-s", "15")
    assert tuned.returncode == 0, tuned.stderr
    sidecar = tmp_path / "gnet.tar.gz.tuned.json"
    assert sidecar.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["gnet.tar.gz", sidecar.name]
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == before
    choice = json.loads(sidecar.read_text())["choice"]
    result = run("runtimes.run", "--bundle", tarball, "--json", *IMAGES)
    assert result.returncode == 0, result.stderr
    tuned_lines = lines(result.stderr, "tuned:")
    assert len(tuned_lines) == 1 and tuned_lines[0].startswith(f"tuned: {label(choice)}"), result.stderr
    assert str(sidecar) in tuned_lines[0]
    assert ran_on(result.stderr) == "CPUExecutionProvider"
    assert_correct(result.stdout)


def test_verify_checks_every_model_and_the_tuned_configuration(copy, record):
    """verify --bundle checks every model file as the bundle runs it by default, each at its own
    tolerance, then the tuned choice on its runtime in addition; the final line names them all."""
    choice = record["choice"]
    result = run("runtimes.verify", "--bundle", copy)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert len(lines(out, "tuned:")) == 1 and lines(out, "tuned:")[0].startswith(f"tuned: {label(choice)}"), out
    models = json.loads((copy / "bundle.json").read_text())["models"]
    providers = lines(out, "provider ")
    assert providers[:-1] == ["provider cpu (CPUExecutionProvider)"] * len(models), out
    assert providers[-1].startswith(f"provider {label(choice)}"), out
    assert providers[-1].endswith(f"({RUNS_ON[choice['provider']]})")
    model_file = next(m["file"] for m in models if m["precision"] == model_precision(choice))
    judged_as = "fp16" if choice["precision"] == "f16" else choice["precision"]
    headers = [line for line in out.splitlines() if line.split("  ")[0] in ("fp32", "fp16", "int8", "bf16")]
    assert [h.split("  ")[:2] for h in headers] == [*([m["precision"], m["file"]] for m in models),
                                                  [judged_as, model_file]], out
    verdict = lines(out, "verified:")
    assert len(verdict) == 1 and verdict[0].startswith("verified: every configuration judged agrees"), out
    named = verdict[0].split(" within tolerance (", 1)[1]
    assert named.startswith("; ".join(f"cpu {m['precision']} at " for m in models[:1])), verdict
    assert f"{label(choice)}" in named and "(tuned) at " in named, verdict


def test_verify_with_provider_checks_every_model_on_it(copy):
    """verify --bundle --provider cpu ignores tuned.json and checks each of the bundle's models on cpu."""
    models = json.loads((copy / "bundle.json").read_text())["models"]
    result = run("runtimes.verify", "--bundle", copy, "--provider", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert not lines(out, "tuned:")
    assert lines(out, "note:") == [f"note: {copy / 'tuned.json'} not used: --provider picks the configuration"]
    assert lines(out, "provider ") == ["provider cpu (CPUExecutionProvider)"] * len(models), out
    for model in models:
        assert any(line.startswith(f"{model['precision']}  {model['file']}") for line in out.splitlines()), out
    assert lines(out, "verified:"), out


def test_serve_uses_the_tuned_choice(copy, record, tmp_path):
    """deploy.serve --bundle says it uses the tuned choice, serves on it, and classifies an image correctly."""
    choice = record["choice"]
    models = json.loads((copy / "bundle.json").read_text())["models"]
    model_file = Path(next(m["file"] for m in models if m["precision"] == model_precision(choice))).name
    server = start_server(tmp_path / "serve.log", "--bundle", str(copy))
    try:
        image = IMAGES[0]
        response = httpx.post(f"http://{server.http}/v2/models/googlenet-image/infer", content=image.read_bytes(),
                              headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["label"][0] == label_of(image) and outputs["error"] == [""]
    finally:
        server.stop()
    log = server.log_text()
    tuned = lines(log, "tuned:")
    assert len(tuned) == 1 and tuned[0].startswith(f"tuned: {label(choice)}"), log
    serving = lines(log, "serving ")
    assert len(serving) == 1 and f"({label(choice)}" in serving[0] and f", {model_file})" in serving[0], log
    assert not lines(log, "warning:"), log


def test_fingerprint_mismatch_rules():
    """Equal fingerprints match; another CPU or another version of a runtime installed on both
    sides is a reason naming both; a runtime on one side only is not a mismatch."""
    here = fingerprint()
    assert fingerprint_mismatch(dict(here), here) is None

    other_cpu = {**here, "cpu": "Imaginary CPU 9000"}
    reason = fingerprint_mismatch(other_cpu, here)
    assert reason is not None and "Imaginary CPU 9000" in reason and here["cpu"] in reason

    name, version = next(iter(here["versions"].items()))
    other_version = {**here, "versions": {**here["versions"], name: version + ".post9"}}
    reason = fingerprint_mismatch(other_version, here)
    assert reason is not None and f"{name} {version}.post9" in reason
    assert reason.endswith(f"this machine has {name} {version}")

    only_tuned = {**here, "versions": {**here["versions"], "not-installed-runtime": "1.0"}}
    assert fingerprint_mismatch(only_tuned, here) is None
    only_here = {**here, "versions": {k: v for k, v in here["versions"].items() if k != name}}
    assert fingerprint_mismatch(only_here, here) is None
