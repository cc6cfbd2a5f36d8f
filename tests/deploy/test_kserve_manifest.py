"""The KServe InferenceService for a Triton repository, built from the kserve SDK's typed classes.

The CLI runs in a subprocess: kserve and tritonclient.grpc register the same v2 protobuf
messages, so one process cannot import both, and other tests import tritonclient.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.kserve_manifest import ManifestError, inference_service

REPO = Path(__file__).resolve().parents[2]


def _manifest(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "isvc.yaml"
    done = subprocess.run([sys.executable, "-m", "deploy.kserve_manifest", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(out.read_text())


def test_cli_writes_a_triton_inference_service_with_replica_bounds(tmp_path):
    manifest = _manifest(tmp_path, "--storage-uri", "s3://models/googlenet-repo", "--name", "googlenet-prod",
                         "--min-replicas", "2", "--max-replicas", "6", "--gpu")
    assert (manifest["apiVersion"], manifest["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert manifest["metadata"] == {"name": "googlenet-prod"}
    predictor = manifest["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/googlenet-repo"
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}


def test_cpu_manifest_asks_for_no_gpu(tmp_path):
    manifest = _manifest(tmp_path, "--storage-uri", "gs://b/repo", "--cpu", "4", "--memory", "8Gi")
    resources = manifest["spec"]["predictor"]["model"]["resources"]
    assert resources == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    assert manifest["metadata"]["name"] == "googlenet"


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "GoogLeNet_v1"}, "not a Kubernetes name"),
    ({"storage_uri": "/local/repo"}, "storage URI"),
    ({"min_replicas": 5, "max_replicas": 2}, "above --max-replicas"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    arguments = {"name": "googlenet", "storage_uri": "s3://b/repo", **kwargs}
    with pytest.raises(ManifestError, match=message):
        inference_service(**arguments)


def test_cli_refuses_bad_arguments_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deploy.kserve_manifest", "--storage-uri", "bucket/repo",
                           "--out", str(tmp_path / "x.yaml")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "storage URI" in done.stderr
    assert not (tmp_path / "x.yaml").exists()
