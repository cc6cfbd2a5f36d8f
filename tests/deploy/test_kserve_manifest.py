"""The KServe InferenceService for a Triton repository: built with the kserve SDK, round-trips through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.kserve_manifest import ManifestError, _sdk, inference_service

REPO = Path(__file__).resolve().parents[2]


def _unknown_keys(data, type_name: str, where: str = "") -> list[str]:
    """Keys of ``data`` that the SDK's typed class ``type_name`` (kserve or kubernetes) does not define."""
    import kubernetes.client.models as k8s

    kserve = _sdk()[0]
    if type_name.startswith("dict("):
        value_type = type_name[type_name.index(",") + 1:-1].strip()
        return [k for key, v in data.items() for k in _unknown_keys(v, value_type, f"{where}.{key}")]
    if type_name.startswith("list["):
        return [k for i, v in enumerate(data) for k in _unknown_keys(v, type_name[5:-1], f"{where}[{i}]")]
    klass = getattr(kserve.models, type_name, None) or getattr(k8s, type_name, None)
    if klass is None:  # str, int, object...
        return []
    by_json_name = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    unknown = []
    for key, value in data.items():
        if key not in by_json_name:
            unknown.append(f"{where}.{key}")
        else:
            unknown += _unknown_keys(value, klass.openapi_types[by_json_name[key]], f"{where}.{key}")
    return unknown


def test_cli_writes_a_triton_inference_service_with_replica_bounds(tmp_path):
    out = tmp_path / "isvc.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "deploy.kserve_manifest", "--storage-uri", "s3://models/googlenet-repo",
         "--out", str(out), "--name", "googlenet-prod", "--min-replicas", "2", "--max-replicas", "6", "--gpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(out.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert manifest["metadata"] == {"name": "googlenet-prod"}
    predictor = manifest["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/googlenet-repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _unknown_keys(manifest, "V1beta1InferenceService") == []  # every key is one the SDK defines


def test_cpu_manifest_asks_for_no_gpu():
    manifest = inference_service(name="googlenet", storage_uri="gs://b/repo", cpu="4", memory="8Gi")
    resources = manifest["spec"]["predictor"]["model"]["resources"]
    assert resources == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    assert _unknown_keys(manifest, "V1beta1InferenceService") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "GoogLeNet_v1"}, "not a Kubernetes name"),
    ({"storage_uri": "/local/repo"}, "storage URI"),
    ({"min_replicas": 5, "max_replicas": 2}, "above --max-replicas"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    arguments = {"name": "googlenet", "storage_uri": "s3://b/repo", **kwargs}
    with pytest.raises(ManifestError, match=message):
        inference_service(**arguments)
