"""``deploy.batch`` on a real two-node Ray cluster on this machine: the answers of
``runtimes.run``, one row per input whatever dies, and outputs that never mix two runs.

One cluster serves the module. Its worker processes, and each ``deploy.batch`` started
here, have ``tests/deploy/batch_poison`` on PYTHONPATH: a file whose bytes begin with
GOOGLENET-POISON kills the process decoding it with SIGSEGV, as a native decoder's crash
would, and one that begins with GOOGLENET-HANG never returns. Every other file is decoded
as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samples.generate import IMAGES_DIR

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the batch extra (ray) is not installed")

REPO = Path(__file__).resolve().parents[2]
POISON_PATH = str(Path(__file__).with_name("batch_poison"))
POISON = b"GOOGLENET-POISON"
HANG = b"GOOGLENET-HANG"
NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name: not UTF-8
NEWLINE = "0 line\nbreak.jpg"  # sorts before every demo image


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [POISON_PATH, os.environ.get("PYTHONPATH")]))}


def _with_poison_hook(start):
    """Run ``start`` with the poison hook on PYTHONPATH: the Ray processes it starts inherit it."""
    saved = dict(os.environ)
    os.environ.update(_env())
    try:
        return start()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node, one CPU each, their processes started with the poison hook."""
    def start():
        # A dead node is declared after 3 missed 1 s health checks (Ray's default: 5 missed 3 s ones, 15 s).
        health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
        cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": health})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        return cluster

    cluster = _with_poison_hook(start)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> str:
    return ray_cluster.address


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The demo images twice (top level and a subfolder), three broken files, one hidden file, and
    two more copies: one under a name that is not UTF-8, one with a newline in its name."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "sub").mkdir()
    for image in sorted(IMAGES_DIR.glob("*.jpg")):
        shutil.copyfile(image, folder / image.name)
        shutil.copyfile(image, folder / "sub" / image.name)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "truncated.jpg").write_bytes((IMAGES_DIR / "red_checker_0.jpg").read_bytes()[:2000])
    (folder / "empty.png").write_bytes(b"")
    (folder / ".hidden.jpg").write_bytes((IMAGES_DIR / "red_checker_0.jpg").read_bytes())
    shutil.copyfile(IMAGES_DIR / "green_checker_0.jpg", folder / NOT_UTF8)
    shutil.copyfile(IMAGES_DIR / "blue_vstripes_1.jpg", folder / NEWLINE)
    return folder


def _batch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.batch", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def _jsonl_rows(out: Path) -> list[str]:
    return [line for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_records(demo_export, inputs) -> dict[str, dict]:
    """What `runtimes.run --json` says of every input."""
    proc = subprocess.run([sys.executable, "-m", "runtimes.run", "--model", str(demo_export.path), "--json",
                           "--threads", "1", str(inputs)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # the three broken files
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return {r["image"]: r for r in records}


@pytest.fixture(scope="module")
def first_run(cluster, demo_export, inputs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("runs") / "out"
    proc = _batch(str(inputs), str(out), "--model", str(demo_export.path), "--address", cluster,
                  "--actors", "2", "--batch-size", "4", "--format", "jsonl")
    return out, proc


def test_every_input_gets_runtimes_runs_answer_once_on_both_nodes(first_run, reference_records):
    out, proc = first_run
    assert proc.returncode == 1, proc.stderr  # some inputs are broken: as runtimes.run says
    rows = _jsonl_rows(out)
    records = [json.loads(line) for line in rows]
    assert sorted(r["image"] for r in records) == sorted(reference_records)  # one row each, hidden file skipped
    assert len(records) == 41
    for line, record in zip(rows, records):
        assert json.dumps(record) == line  # runtimes.run's own serialisation
        expected = reference_records[record["image"]]
        assert record.keys() == expected.keys()
        if "error" in expected:
            assert record["error"] == expected["error"]
            continue
        assert [t["label"] for t in record["topk"]] == [t["label"] for t in expected["topk"]]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(record["topk"], expected["topk"])) < 1e-6
    manifest = _manifest(out)
    assert (manifest["complete"], manifest["inputs"], manifest["rows"], manifest["errors"]) == (True, 41, 41, 3)
    assert (manifest["reused"], manifest["resumed"], manifest["configuration"]["from"]) == (0, 0, "flags")
    nodes = {n: rows for n, rows in manifest["rows_by_node"].items() if n != "rescue process"}
    assert len(nodes) == 2 and all(rows > 0 for rows in nodes.values()), manifest["rows_by_node"]
    assert set(manifest["verified_on"]) == set(nodes)  # each node's actors checked the model's sha256
    assert set(manifest["verified_on"].values()) == {manifest["model"]["sha256"]}


def test_a_rerun_is_refused_and_overwrite_replaces_the_whole_output(first_run, cluster, demo_export, inputs,
                                                                    reference_records):
    out, _ = first_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = _batch(str(inputs), str(out), "--model", str(demo_export.path), "--address", cluster)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "exists" in again.stderr and "--mode overwrite" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    import pyarrow.parquet as pq

    proc = _batch(str(inputs), str(out), "--model", str(demo_export.path), "--address", cluster,
                  "--mode", "overwrite", "--format", "parquet", "--actors", "2", "--split-decode")
    assert proc.returncode == 1, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_manifest.json", "part-00000.parquet"]  # nothing of the jsonl run is left
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left behind
    table = pq.read_table(out / "part-00000.parquet").to_pylist()  # after all the work: no UnicodeEncodeError
    paths = [os.fsdecode(r["path_bytes"]) if r["path_bytes"] is not None else r["path"] for r in table]
    assert sorted(paths) == sorted(reference_records) and _manifest(out)["format"] == "parquet"
    odd = next(r for r in table if r["path_bytes"] is not None)
    assert odd["path_bytes"] == os.fsencode(inputs / NOT_UTF8) and odd["path"].endswith("caf\\xe9.jpg")
    assert odd["label"] == "green_checker"
    for row, path in zip(table, paths):
        expected = reference_records[path]
        if "error" in expected:
            assert row["error"] == expected["error"] and row["label"] is None and row["probs"] == []
            continue
        assert row["label"] == expected["topk"][0]["label"] and row["class_index"] == expected["topk"][0]["index"]
        assert row["labels"] == [t["label"] for t in expected["topk"]] and row["preprocess"] == expected["preprocess"]
        assert max(abs(p - t["prob"]) for p, t in zip(row["probs"], expected["topk"])) < 1e-6  # float32 storage


def _actor_pids() -> set[int]:
    """This module's actor processes busy classifying a batch: Ray titles a process ``ray::Class.method``
    while the call runs, so these have loaded the model and hold inputs. Only processes with the poison
    hook on their PYTHONPATH: another deploy.batch on this machine is not the test's to kill."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ((entry / "cmdline").read_bytes().startswith(b"ray::ClassifyActor.classify")
                        and POISON_PATH.encode() in (entry / "environ").read_bytes()):
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def test_a_poison_image_costs_only_itself_and_every_row_is_its_own(cluster, demo_export, tmp_path):
    """The poison shares its batch with a file whose name holds a newline: the rescue, which
    classifies that batch one input at a time, must still pair every answer with its own file."""
    folder = tmp_path / "poisoned"
    shutil.copytree(IMAGES_DIR, folder)
    shutil.copyfile(IMAGES_DIR / "red_hstripes_1.jpg", folder / NEWLINE)
    (folder / "poison.jpg").write_bytes(POISON + b" and the rest of a file")
    out = tmp_path / "out"
    proc = _batch(str(folder), str(out), "--model", str(demo_export.path), "--address", cluster,
                  "--actors", "2", "--batch-size", "20", "--format", "jsonl", "--max-crash-retries", "1", timeout=240)
    assert proc.returncode == 1, proc.stderr
    records = {r["image"]: r for r in map(json.loads, _jsonl_rows(out))}
    assert len(records) == 20
    poison = records.pop(str(folder / "poison.jpg"))
    assert "the worker process died (signal 11)" in poison["error"]
    assert records.pop(str(folder / NEWLINE))["topk"][0]["label"] == "red_hstripes"
    for name, record in records.items():  # every other image answered, each with its own answer
        assert record["topk"][0]["label"] == Path(name).stem.rsplit("_", 1)[0], record
    manifest = _manifest(out)
    assert manifest["crashed"] == [str(folder / "poison.jpg")] and manifest["rescued"] == 20
    assert len(manifest["ray_failures"]) == 2  # the batch's first try and its one retry; then the rescue


def test_a_changed_model_file_is_refused_by_name(tune_bundle, tmp_path, inputs):
    bundle = tmp_path / "bundle"
    shutil.copytree(tune_bundle, bundle)
    model = next((bundle / "models").glob("*.int8.onnx"))
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    proc = _batch(str(inputs), str(tmp_path / "out"), "--bundle", str(bundle), "--variant", "int8")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"models/{model.name}" in proc.stderr and not (tmp_path / "out").exists()


def test_a_tuned_bundle_runs_its_gated_choice(tuned_bundle, tmp_path, capsys):
    """With --bundle, the job the actors run takes the tuned provider and precision, as run and
    serve do (which choices are refused is runtimes.tuned's, tested with run and verify); checked
    on the job itself, before any cluster starts."""
    import argparse
    import contextlib

    from deploy.batch import resolve_model

    bundle = Path(shutil.copytree(tuned_bundle, tmp_path / "bundle"))
    choice = json.loads((bundle / "tuned.json").read_text())["choice"]
    models = {m["precision"]: m["file"] for m in json.loads((bundle / "bundle.json").read_text())["models"]}
    model = models["fp32" if choice["precision"] in ("bf16", "f16") else choice["precision"]]
    args = argparse.Namespace(bundle=bundle, model=None, variant=None, provider=None, threads=None, batch_size=16,
                              topk=5, exact=False, max_pixels=None)
    with contextlib.ExitStack() as stack:
        job, data, _, configuration = resolve_model(stack, args)
    assert job.provider == choice["provider"] and job.model_name.endswith(model), job
    assert configuration["from"] == "tuned.json" and configuration["provider"] == choice["provider"]
    assert data == (bundle / model).read_bytes()
    said = capsys.readouterr().err
    assert [line for line in said.splitlines() if line.startswith("tuned: ")], said


def test_each_worker_checks_the_models_sha256_before_loading_it(demo_export):
    """What each actor runs on arrival of the model's bytes; a mismatch names the model and the node."""
    from deploy.batch_classify import Job, Worker, sha256_bytes
    from runtimes.errors import BundleError

    data = demo_export.path.read_bytes()
    job = Job("models/googlenet.onnx", sha256_bytes(data), None)
    worker = Worker(job, data, "node abc")
    (record,) = worker.classify([str(IMAGES_DIR / "red_checker_0.jpg")])
    worker.close()
    assert json.loads(record)["topk"][0]["label"] == "red_checker"
    with pytest.raises(BundleError, match=r"model models/googlenet.onnx refused on node abc: its sha256"):
        Worker(job, data[:-1] + b"\x01", "node abc")


def test_inputs_from_a_folder_a_glob_a_manifest_and_a_uri_prefix(inputs, tmp_path):
    from deploy.batch_inputs import Listing, iter_inputs
    from runtimes.errors import ToolkitError

    from_folder = list(iter_inputs(str(inputs)))
    assert len(from_folder) == len(set(from_folder)) == 41 and not any(".hidden" in p for p in from_folder)
    assert list(iter_inputs(str(inputs / "sub" / "*.jpg"))) == sorted(str(p) for p in (inputs / "sub").glob("*.jpg"))
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(f"# photos\n{inputs / 'broken.jpg'}\n\nrel/a.jpg\ns3://bucket/x.jpg\n".encode()
                         + os.fsencode(inputs / NOT_UTF8) + b"\n")
    assert list(iter_inputs(str(manifest))) == [str(inputs / "broken.jpg"), str(tmp_path / "rel" / "a.jpg"),
                                                 "s3://bucket/x.jpg", str(inputs / NOT_UTF8)]  # bytes kept
    from_uri = list(iter_inputs(f"file://{inputs}"))
    assert sorted(u.removeprefix("file://") for u in from_uri) == sorted(from_folder)
    listing = Listing.survey(str(inputs))
    assert listing.count == 41 and listing == Listing.survey(str(inputs))
    (inputs / "sub" / "new.jpg").write_bytes(b"x")
    try:
        assert Listing.survey(str(inputs)).sha256 != listing.sha256  # what a resume checks
    finally:
        (inputs / "sub" / "new.jpg").unlink()
    with pytest.raises(ToolkitError, match="not found"):
        list(iter_inputs(str(tmp_path / "nowhere")))


@pytest.mark.parametrize("flags, says", [
    (["--provider", "cuda"], "requested provider 'cuda'"),
    (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["--actors", "3:2"], "need 1 <= MIN <= MAX"),
], ids=["provider-missing-here", "address-refused", "actors"])
def test_a_mistake_is_one_line_before_any_cluster_starts(demo_export, inputs, tmp_path, flags, says):
    from runtimes.adapters import unavailable_reason

    if flags[0] == "--provider" and unavailable_reason("cuda") is None:
        pytest.skip("cuda runs here: nothing is missing")
    started = time.monotonic()
    proc = _batch(str(inputs), str(tmp_path / "out"), "--model", str(demo_export.path), *flags, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("error:") or "error:" in l]) == 1
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


def _parquet_paths(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [r["path"] for part in sorted(out.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()]


def test_a_killed_driver_resumes_and_a_node_dying_in_the_resumed_run_loses_nothing(ray_cluster, demo_export,
                                                                                  tmp_path):
    """SIGKILL of the driver's process group at about half way, then --mode resume, in which a third
    node joins, takes work and is killed (raylet and workers), and an actor on another node is
    killed in the middle of a batch: every input exactly once, the dead batches retried elsewhere."""
    folder = tmp_path / "many"
    for k in range(30):  # 540 images
        shutil.copytree(IMAGES_DIR, folder / f"copy{k:02d}")
    count = len(list(folder.rglob("*.jpg")))
    out = tmp_path / "out"
    flags = [str(folder), str(out), "--model", str(demo_export.path), "--address", ray_cluster.address,
             "--batch-size", "4", "--rows-per-part", "30", "--max-crash-retries", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "deploy.batch", *flags, "--actors", "2"], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 9 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    kept = sorted(p["file"] for p in json.loads((out / "_progress.json").read_text())["parts"].values())
    assert 9 <= len(kept) < 18 and not (out / "_manifest.json").exists(), kept
    refused = _batch(*flags[:-6], "--batch-size", "4", "--rows-per-part", "30")  # --mode create: an unfinished run
    assert refused.returncode == 2 and "--mode resume continues it" in refused.stderr, refused.stderr
    changed = _batch(*flags, "--mode", "resume", "--topk", "3")
    assert changed.returncode == 2 and "its topk was 5, now 3" in changed.stderr, changed.stderr

    node = _with_poison_hook(lambda: ray_cluster.add_node(num_cpus=1))
    ray_cluster.wait_for_nodes()
    proc = subprocess.Popen([sys.executable, "-m", "deploy.batch", *flags, "--mode", "resume", "--actors", "3"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, removed = time.monotonic() + 120, False
    seen: set[int] = set()
    while not removed and time.monotonic() < deadline and proc.poll() is None:
        seen |= _actor_pids()
        if len(seen) >= 3:  # all three have begun work
            ray_cluster.remove_node(node, allow_graceful=False)
            removed = True
        time.sleep(0.1)
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        working = _actor_pids()
        if working:  # an actor of the surviving nodes, mid-batch
            with contextlib.suppress(ProcessLookupError):
                os.kill(min(working), signal.SIGKILL)
                killed = min(working)
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=300)
    assert removed and killed, f"the run ended before all three actors were up and one killed: {stderr}"
    assert proc.returncode == 0, stderr
    paths = _parquet_paths(out)
    assert len(paths) == len(set(paths)) == count
    assert sorted(paths) == sorted(str(p) for p in folder.rglob("*.jpg"))
    manifest = _manifest(out)
    assert manifest["reused"] == 30 * len(kept) and manifest["resumed"] == 1 and manifest["errors"] == 0
    assert len(manifest["ray_failures"]) >= 2  # the node's actor and the killed one (each batch then retried)
    assert any(key.endswith(f":{killed}") for key in manifest["actor_processes"])  # the killed one had loaded
    assert len(manifest["actor_processes"]) >= 4  # and another took its place
    assert [p["file"] for p in manifest["parts"].values()][: len(kept)] == kept  # the first run's parts, untouched
    assert not (out / "_progress.json").exists()


def test_sigterm_stops_the_private_cluster_and_keeps_the_committed_parts(demo_export, tmp_path):
    """What a scheduler sends: exit 143, no Ray process or temp folder left, the committed parts kept
    for --mode resume (which the SIGKILL test runs)."""
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="gt", dir="/tmp"))  # short: Ray's socket paths must fit
    folder = tmp_path / "many"
    for k in range(8):
        shutil.copytree(IMAGES_DIR, folder / f"copy{k}")
    out = tmp_path / "out"
    flags = [str(folder), str(out), "--model", str(demo_export.path), "--cpus", "2", "--batch-size", "4",
             "--rows-per-part", "16"]
    try:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.batch", *flags], cwd=REPO,
                                env={**_env(), "TMPDIR": str(temp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while not list(out.glob("part-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143, stderr
        assert "terminated (SIGTERM)" in stderr and "--mode resume" in stderr, stderr
        assert not list(temp.glob("googlenet-*")), list(temp.iterdir())  # the private cluster's folder is gone
        assert not [p for p in _ray_processes() if str(temp) in p], _ray_processes()
        kept = sorted(p.name for p in out.iterdir())  # no temp file; every part named by the record
        committed = [p["file"] for p in json.loads((out / "_progress.json").read_text())["parts"].values()]
        assert committed and kept == sorted([*committed, "_progress.json"]), kept
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _ray_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "ray" in line and ("raylet" in line or "gcs_server" in line or "ray::" in line):
                    found.append(line)
    return found


def test_the_watchdog_fails_a_job_that_makes_no_progress(cluster, demo_export, tmp_path):
    folder = tmp_path / "stuck"
    shutil.copytree(IMAGES_DIR, folder)
    (folder / "stuck.jpg").write_bytes(HANG + b" forever")
    out = tmp_path / "out"
    started = time.monotonic()
    proc = _batch(str(folder), str(out), "--model", str(demo_export.path), "--address", cluster, "--actors", "1",
                  "--batch-size", "2", "--rows-per-part", "4", "--stall-timeout-s", "4", timeout=120)
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no progress in 4 s" in errors[0] and "stuck.jpg" in errors[0], proc.stderr
    assert time.monotonic() - started < 60
    assert len(list(out.glob("part-*.parquet"))) == 4  # the parts before the stuck image: kept for a resume


def test_a_model_file_swapped_by_another_process_is_never_loaded(demo_export, tmp_path):
    """Another process keeps planting a different model where workers once shared a copy of this
    one (a folder in the temp folder that anyone can write); the worker loads the bytes it checked,
    from a private folder of its own."""
    import tempfile

    from deploy.batch_classify import Job, Worker, sha256_bytes

    data = demo_export.path.read_bytes()
    job = Job("googlenet.onnx", sha256_bytes(data), None)
    other = tmp_path / "other.onnx"
    _other_model(demo_export.path, other)
    shared = Path(tempfile.gettempdir()) / "googlenet-batch-models" / f"{job.sha256}.onnx"
    shared.parent.mkdir(exist_ok=True)
    swap = ("import os, sys\nother, shared = sys.argv[1:]\nlink = f'{shared}.{os.getpid()}'\nwhile True:\n"
            "    try:\n        os.link(other, link)\n        os.replace(link, shared)\n    except OSError:\n"
            "        os.unlink(link) if os.path.lexists(link) else None\n")
    before = set(Path(tempfile.gettempdir()).glob("googlenet-batch-model-*"))
    swapper = subprocess.Popen([sys.executable, "-c", swap, str(other), str(shared)])
    try:
        labels = []
        for _ in range(5):
            worker = Worker(job, data, "this test")
            labels.append(json.loads(worker.classify([str(IMAGES_DIR / "red_checker_0.jpg")])[0])["topk"][0]["label"])
            worker.close()
    finally:
        swapper.kill()
        swapper.wait()
        shared.unlink(missing_ok=True)
        Path(f"{shared}.{swapper.pid}").unlink(missing_ok=True)
    assert labels == ["red_checker"] * 5
    assert set(Path(tempfile.gettempdir()).glob("googlenet-batch-model-*")) <= before  # no copy left behind


def _other_model(model: Path, out: Path) -> None:
    """The same graph with its classifier's bias favouring class 0: a model that answers otherwise."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    last = next(node for node in graph.graph.node if graph.graph.output[0].name in node.output)
    bias = next(t for t in graph.graph.initializer if t.name == last.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[0] += 1000.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(graph, str(out))
