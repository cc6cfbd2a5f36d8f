"""deploy.serve --replicas 2: kserve's ModelServer in front of two Ray Serve replicas, answering over gRPC."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deploy.bundle import build_bundle
from deploy.load import load_run, seeded_batch
from deploy.v2_client import grpc_infer, http_infer
from runtimes.classifier import Classifier
from runtimes.reference import reference_path_for
from tests.deploy.serving import SAMPLES, start_server


@pytest.fixture(scope="module")
def ray_server(demo_export, tmp_path_factory):
    """Two replicas serving the demo model from a bundle tarball, as it would reach a server."""
    folder = tmp_path_factory.mktemp("serve-ray")
    shutil.copyfile(demo_export.path, folder / "googlenet.onnx")
    shutil.copyfile(demo_export.reference_path, reference_path_for(folder / "googlenet.onnx"))
    _, tarball = build_bundle(folder / "googlenet.onnx", folder / "bundle")
    running = start_server(folder / "serve.log", "--bundle", str(tarball), "--replicas", "2", ready_within=180)
    yield running
    running.stop()


def test_two_replicas_answer_grpc_like_in_process(ray_server, demo_export):
    assert "ray serve: 2 replicas running; 2 answered" in ray_server.log_text()
    batch = seeded_batch(2)
    with Classifier(demo_export.path, workers=1) as local:
        expected = local.runner.infer(batch)
        labels = [p.topk[0].label for p in local.predict([p.read_bytes() for p in SAMPLES], topk=1)]
    result = load_run(grpc_infer(ray_server.grpc), "grpc via ray", clients=4, requests=5, batch=batch)
    assert (result.errors, result.wrong) == (0, 0), result.first_error
    np.testing.assert_allclose(grpc_infer(ray_server.grpc)(batch), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(http_infer(ray_server.http)(batch), expected, rtol=0, atol=1e-5)

    client = grpcclient.InferenceServerClient(ray_server.grpc)
    images = grpcclient.InferInput("image", [len(SAMPLES)], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in SAMPLES], dtype=np.object_))
    answer = client.infer("googlenet-image", [images], parameters={"topk": 1})  # parameters: a protobuf map
    assert [row[0].decode() for row in answer.as_numpy("label")] == labels
    plain = httpx.put(f"http://{ray_server.http}/predictions/googlenet", content=SAMPLES[0].read_bytes(), timeout=60)
    assert plain.status_code == 200 and next(iter(plain.json())) == labels[0], plain.text


def test_a_replica_refusal_is_the_plain_message(ray_server):
    tensor = grpcclient.InferInput("input", [1, 3, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as error:
        grpcclient.InferenceServerClient(ray_server.grpc).infer("googlenet", [tensor])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.value.message().endswith("must have shape [N, 3, 224, 224], got [1, 3, 8, 8]")
    body = {"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]}
    response = httpx.post(f"http://{ray_server.http}/v2/models/googlenet/infer", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json() == {"error": "input 'input' must have shape [N, 3, 224, 224], got [1, 3, 8, 8]"}


def test_sigterm_stops_the_server_and_its_replicas(ray_server):
    assert ray_server.stop(timeout=60) == 0, ray_server.log_text()[-2000:]
