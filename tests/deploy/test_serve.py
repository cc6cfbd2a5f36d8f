"""deploy.serve against a real kserve ModelServer on loopback, driven by tritonclient over REST and gRPC."""

from __future__ import annotations

import base64
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from deploy.load import load_run, seeded_batch
from deploy.v2_client import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from deploy.v2_client import grpc_infer, http_infer
from runtimes.classifier import Classifier
from tests.deploy.serving import MAX_PIXELS, REPO, SAMPLES, free_port

GARBAGE = b"this is not an image"


@pytest.fixture(scope="module")
def local(demo_export):
    """The same model in this process: the answers the server must give."""
    with Classifier(demo_export.path, workers=1) as classifier:
        yield classifier


def _infer_tensor(server, protocol: str, batch: np.ndarray) -> np.ndarray:
    if protocol == "grpc":
        return grpc_infer(server.grpc)(batch)
    return http_infer(server.http, binary=protocol == "http-binary")(batch)


@pytest.mark.parametrize(("protocol", "images"), [("grpc", 3), ("http-binary", 3), ("http-json", 2)])
def test_logits_equal_in_process_inference(server, local, protocol, images):
    batch = seeded_batch(images)  # 3 images as JSON are over the default --max-json-mb
    served = _infer_tensor(server, protocol, batch)
    assert served.shape == (images, local.spec.num_classes) and served.dtype == np.float32
    np.testing.assert_allclose(served, local.runner.infer(batch), rtol=0, atol=1e-5)


def _images_grpc(server, images: list[bytes], topk: int):
    client = grpcclient.InferenceServerClient(server.grpc)
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return client.infer("googlenet-image", [tensor], parameters={"topk": topk})


def _images_http(server, images: list[bytes], topk: int, encode_base64: bool):
    client = httpclient.InferenceServerClient(server.http)
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    if encode_base64:  # JSON carries text: the REST recipe for clients that cannot send binary
        tensor.set_data_from_numpy(np.array([base64.b64encode(i) for i in images], dtype=np.object_), binary_data=False)
    else:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return client.infer("googlenet-image", [tensor], parameters={"topk": topk})


def test_text_that_is_not_base64_is_that_images_error(server):
    body = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                        "data": ["\u20acuro", base64.b64encode(SAMPLES[0].read_bytes()).decode()]}]}
    response = httpx.post(f"http://{server.http}/v2/models/googlenet-image/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert "not a JPEG, PNG" in outputs["error"][0] and outputs["error"][1] == ""


@pytest.mark.parametrize("protocol", ["grpc-raw", "http-raw", "http-base64"])
def test_images_get_labels_and_a_bad_one_its_own_error(server, local, protocol):
    images = [p.read_bytes() for p in SAMPLES]
    images.insert(1, GARBAGE)
    if protocol == "grpc-raw":
        result = _images_grpc(server, images, topk=3)
    else:
        result = _images_http(server, images, topk=3, encode_base64=protocol == "http-base64")
    labels, probs = result.as_numpy("label"), result.as_numpy("probability")
    indices, errors = result.as_numpy("class_index"), result.as_numpy("error")
    assert labels.shape == probs.shape == indices.shape == (4, 3) and errors.shape == (4,)
    expected = local.predict([p.read_bytes() for p in SAMPLES], topk=3)
    assert b"not a JPEG" in errors[1] and list(indices[1]) == [-1, -1, -1]
    for row, want in zip((0, 2, 3), expected):
        assert errors[row] == b""
        assert [label.decode() for label in labels[row]] == [s.label for s in want.topk]
        assert list(indices[row]) == [s.index for s in want.topk]
        np.testing.assert_allclose(probs[row], [s.prob for s in want.topk], rtol=0, atol=1e-6)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(server):
    ok, big = cv2.imencode(".png", np.zeros((1000, 1001, 3), np.uint8))  # 1,001,000 pixels
    assert ok
    result = _images_grpc(server, [big.tobytes(), SAMPLES[0].read_bytes()], topk=1)
    errors = result.as_numpy("error")
    assert f"over the {MAX_PIXELS:,}-pixel limit" in errors[0].decode() and errors[1] == b""


def test_health_and_metadata_follow_the_protocol(server, demo_export):
    spec = demo_export.spec
    for client in (httpclient.InferenceServerClient(server.http), grpcclient.InferenceServerClient(server.grpc)):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("googlenet") and client.is_model_ready("googlenet-image")
    meta = httpclient.InferenceServerClient(server.http).get_model_metadata("googlenet")
    assert meta["inputs"] == [{"name": spec.input_name, "datatype": "FP32", "shape": [-1, 3, spec.crop_size, spec.crop_size]}]
    assert meta["outputs"] == [{"name": spec.output_name, "datatype": "FP32", "shape": [-1, spec.num_classes]}]
    meta = grpcclient.InferenceServerClient(server.grpc).get_model_metadata("googlenet-image", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["image"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probability", "class_index", "error"]
    assert not httpclient.InferenceServerClient(server.http).is_model_ready("resnet50")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (Linux /proc/net), hex-decoded."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_listens_on_loopback_only(server):
    # 127.0.0.1 is 0100007F in /proc/net/tcp and ::ffff:127.0.0.1 ends in it in tcp6.
    for address in (server.http, server.grpc):
        listening = _listening_addresses(int(address.rsplit(":", 1)[1]))
        assert listening and all(a.endswith("0100007F") for a in listening), listening


def _good_request_still_answers(server, local):
    batch = seeded_batch(1)
    expected = local.runner.infer(batch)
    np.testing.assert_allclose(grpc_infer(server.grpc)(batch), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(http_infer(server.http)(batch), expected, rtol=0, atol=1e-5)


def _json_tensor(shape, datatype="FP32", data=None, name="input") -> bytes:
    count = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data if data is not None else [0] * count}]}).encode()


def _binary_tensor(batch: np.ndarray, send: int, declare: int | None = None) -> tuple[bytes, dict]:
    """``send`` bytes of ``batch`` after a header declaring ``declare`` of them (default: all)."""
    size = batch.nbytes if declare is None else declare
    header = json.dumps({"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + batch.tobytes()[:send], {"Inference-Header-Content-Length": str(len(header))}


BAD_REST = {
    "wrong shape": ("googlenet", _json_tensor([1, 3, 32, 32]), {}, 400, "must have shape [N, 3, 224, 224]"),
    "wrong dtype": ("googlenet", _json_tensor([1, 3, 224, 224], "INT32"), {}, 400, "must be FP32, got INT32"),
    "wrong input name": ("googlenet", _json_tensor([1, 3, 224, 224], name="data"), {}, 400, "one input named 'input'"),
    "too few values": ("googlenet", _json_tensor([1, 3, 224, 224], data=[0.5] * 10), {}, 400, "does not match shape"),
    "batch over the limit": ("googlenet", _json_tensor([9, 3, 224, 224]), {}, 400, "batch of 9"),
    "unknown model": ("resnet50", _json_tensor([1, 3, 224, 224]), {}, 404, "resnet50"),
    "truncated binary body": ("googlenet", *_binary_tensor(seeded_batch(1), 1000), 400, "declares 602112 bytes"),
    "binary size off the shape": ("googlenet", *_binary_tensor(seeded_batch(1), 1200, declare=1200), 400,
                                  "data does not match shape [1, 3, 224, 224]: FP32 needs 602112 bytes, the request carries 1200"),
    "oversized body": ("googlenet", *_binary_tensor(seeded_batch(28), 28 * 602112), 413, "at most 16777216"),
    "not JSON": ("googlenet", b"{inputs: oops", {"Content-Type": "application/json"}, 400,
                 "malformed JSON inference request: Invalid JSON: key must be a string"),
    "image topk out of range": ("googlenet-image", json.dumps({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(GARBAGE).decode()]}],
        "parameters": {"topk": 0}}).encode(), {}, 400, "'topk' must be 1 to 9"),
    "image as FP32": ("googlenet-image", _json_tensor([1], name="image"), {}, 400, "must be BYTES, got FP32"),
    "image as a number": ("googlenet-image", _json_tensor([1], "BYTES", [10**9], "image"), {}, 400,
                          "element 0 is int; send each image as bytes"),
}


@pytest.mark.parametrize("case", BAD_REST, ids=list(BAD_REST))
def test_malformed_rest_requests_get_a_4xx_and_the_server_goes_on(server, local, case):
    model, body, headers, status, message = BAD_REST[case]
    response = httpx.post(f"http://{server.http}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert message in response.text and len(response.text) < 600
    _good_request_still_answers(server, local)


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "oversized", "unknown model"])
def test_malformed_grpc_requests_get_a_status_and_the_server_goes_on(server, local, case):
    batch, datatype, model = seeded_batch(1), "FP32", "googlenet"
    if case == "wrong shape":
        batch = batch[:, :, :32, :32].copy()
    elif case == "wrong dtype":
        batch, datatype = batch.astype(np.float64), "FP64"
    elif case == "oversized":
        batch = np.concatenate([seeded_batch(8)] * 4)  # 19 MB, over the server's 16 MiB
    else:
        model = "resnet50"
    tensor = grpcclient.InferInput("input", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    with pytest.raises(InferenceServerException) as error:
        grpcclient.InferenceServerClient(server.grpc).infer(model, [tensor])
    expected = {"wrong shape": ("StatusCode.INVALID_ARGUMENT", "must have shape"),
                "wrong dtype": ("StatusCode.INVALID_ARGUMENT", "must be FP32, got FP64"),
                "oversized": ("StatusCode.RESOURCE_EXHAUSTED", "larger than max"),
                "unknown model": ("StatusCode.NOT_FOUND", "resnet50")}[case]
    assert (error.value.status(), expected[1] in error.value.message()) == (expected[0], True), error.value.message()
    _good_request_still_answers(server, local)


def test_grpc_contents_must_hold_the_declared_element_count(server, local):
    request = service_pb2.ModelInferRequest(model_name="googlenet-image")
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.extend([b""] * 3)
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as error:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "input 'image': data does not match shape [1]: 1 elements declared, 3 sent"
    _good_request_still_answers(server, local)


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_json_requests_with_or_without_content_type(server, local, content_type):
    batch = seeded_batch(1)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                   "data": batch.ravel().tolist()}]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(f"http://{server.http}/v2/models/googlenet/infer", content=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    logits = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
    np.testing.assert_allclose(logits, local.runner.infer(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "http-binary"])
def test_load_run_completes_with_no_errors(server, local, protocol, record_property):
    infer = grpc_infer(server.grpc) if protocol == "grpc" else http_infer(server.http)
    result = load_run(infer, protocol, clients=8, requests=25, batch=seeded_batch(1))
    record_property("load_run", str(result))  # a plain string: a report crosses to pytest-xdist's controller
    print(f"\n{result}")
    assert (result.requests, result.errors, result.wrong) == (200, 0, 0), result.first_error
    np.testing.assert_allclose(infer(seeded_batch(1)), local.runner.infer(seeded_batch(1)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("busy", ["--http-port", "--grpc-port"])
def test_a_port_in_use_is_one_line_before_anything_loads(busy, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"--http-port": str(free_port()), "--grpc-port": str(free_port()), busy: str(taken.getsockname()[1])}
        done = subprocess.run([sys.executable, "-m", "deploy.serve", "--model", str(tmp_path / "absent.onnx"),
                               *(x for pair in ports.items() for x in pair)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    protocol = "HTTP" if busy == "--http-port" else "gRPC"
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot listen for {protocol} on 127.0.0.1:{ports[busy]}: Address already in use")



def test_the_same_port_for_both_protocols_is_one_line_before_the_model_loads(demo_export):
    port = str(free_port())
    done = subprocess.run([sys.executable, "-m", "deploy.serve", "--model", str(demo_export.path),
                           "--http-port", port, "--grpc-port", port],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (
        2, f"error: --http-port and --grpc-port are both {port}; give each protocol its own port\n")


def _top1_over_grpc(server, image: bytes) -> tuple[str, float]:
    result = _images_grpc(server, [image], topk=5)
    return result.as_numpy("label")[0][0].decode(), float(result.as_numpy("probability")[0][0])


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_a_plain_image_body_is_one_image(server, local, content_type):
    image = SAMPLES[0].read_bytes()
    response = httpx.post(f"http://{server.http}/v2/models/googlenet-image/infer", content=image,
                          headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["shape"] == [1, 5] and outputs["error"]["data"] == [""]
    label, prob = _top1_over_grpc(server, image)
    assert outputs["label"]["data"][0] == label == local.predict(image, topk=1)[0].topk[0].label
    assert outputs["probability"]["data"][0] == pytest.approx(prob, abs=1e-6)


def test_a_plain_body_to_the_tensor_model_says_where_images_go(server):
    response = httpx.post(f"http://{server.http}/v2/models/googlenet/infer", content=SAMPLES[0].read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 400 and "is one image, for model 'googlenet-image'" in response.json()["error"]


@pytest.mark.parametrize(("method", "model"), [("PUT", "googlenet"), ("POST", "googlenet"), ("POST", "googlenet-image")])
def test_torchserve_predictions_route_answers_label_probabilities(server, method, model):
    image = SAMPLES[1].read_bytes()
    response = httpx.request(method, f"http://{server.http}/predictions/{model}", content=image, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer) == 5 and list(answer.values()) == sorted(answer.values(), reverse=True)
    label, prob = _top1_over_grpc(server, image)
    assert next(iter(answer.items())) == (label, pytest.approx(prob, abs=1e-6))


def test_torchserve_predictions_route_refuses_in_one_line(server):
    response = httpx.put(f"http://{server.http}/predictions/googlenet", content=GARBAGE, timeout=60)
    assert response.status_code == 400 and "not a JPEG, PNG" in response.json()["error"]
    assert httpx.put(f"http://{server.http}/predictions/resnet50", content=GARBAGE, timeout=60).status_code == 404


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("how", ["upload", "post"])
def test_the_readme_curl_commands(server, how):
    """``curl -T`` (a PUT with no Content-Type) and ``curl --data-binary`` with an image type, as documented."""
    image = str(SAMPLES[2])
    if how == "upload":
        command = ["curl", "-sS", "-T", image, f"http://{server.http}/predictions/googlenet"]
    else:
        command = ["curl", "-sS", "--data-binary", f"@{image}", "-H", "Content-Type: image/jpeg",
                   f"http://{server.http}/v2/models/googlenet-image/infer"]
    answer = json.loads(subprocess.run(command, capture_output=True, check=True, timeout=60).stdout)
    label = next(iter(answer)) if how == "upload" else answer["outputs"][0]["data"][0]
    assert label == _top1_over_grpc(server, SAMPLES[2].read_bytes())[0]


def _load_command(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.load", *arguments, "--clients", "1", "--requests", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protocol", ["--grpc", "--http"])
def test_load_against_a_dead_address_is_one_line(protocol):
    with socket.socket() as bound:  # bound, not listening: a connection is refused
        bound.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound.getsockname()[1]}"
        done = _load_command(protocol, address)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: the first request to {protocol[2:]} {address} failed: "), done.stderr
    assert "refused" in done.stderr.lower() and done.stdout == ""


@pytest.mark.parametrize(("protocol", "port"), [("--grpc", DEFAULT_GRPC_PORT), ("--http", DEFAULT_HTTP_PORT)])
def test_load_without_a_port_uses_the_servers_default(protocol, port):
    with socket.socket() as bound:  # deploy.serve's default port, held dead for the test
        bound.bind(("127.0.0.1", port))
        done = _load_command(protocol, "127.0.0.1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: the first request to {protocol[2:]} 127.0.0.1:{port} failed: "), done.stderr


def test_load_shows_progress_on_a_terminal_only(demo_export):
    command = [sys.executable, "-m", "deploy.load", "--in-process", str(demo_export.path), "--clients", "1",
               "--requests", "4"]
    leader, follower = pty.openpty()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=follower) as process:
        os.close(follower)
        stdout = process.stdout.read()
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the follower side is closed: everything was read
                break
            if not chunk:
                break
            terminal += chunk
    os.close(leader)
    assert process.returncode == 0 and json.loads(stdout)["requests"] == 4
    assert b"] 3/4" in terminal and terminal.endswith(b"\r\x1b[K"), terminal
    piped = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == ""
