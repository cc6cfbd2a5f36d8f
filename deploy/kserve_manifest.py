"""A KServe ``InferenceService`` that serves a Triton model repository (from ``deploy.triton``).

    python -m deploy.kserve_manifest --storage-uri s3://bucket/googlenet-repo --out isvc.yaml
        [--name googlenet] [--min-replicas 1] [--max-replicas 4] [--gpu] [--cpu 2] [--memory 4Gi]

The manifest is built from the kserve SDK's typed classes (``V1beta1InferenceService``
and friends) and serialized by its API client, so a misspelled field cannot slip in.
The predictor uses the ``triton`` model format (KServe's ``kserve-tritonserver``
runtime) with the v2 protocol; KServe scales it between the replica bounds. Upload the
repository that ``deploy.triton`` wrote to ``--storage-uri`` first, and apply with
``kubectl apply -f isvc.yaml``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from deploy.kserve_import import command_line_hidden
from runtimes.atomic import write_text
from runtimes.cli import positive_int, run_cli
from runtimes.errors import ToolkitError

# Kubernetes object names: RFC 1123 labels (KServe uses the name in hostnames).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_URI = re.compile(r"(s3|gs|pvc|https?|hdfs|webhdfs|oci)://\S+")


class ManifestError(ToolkitError):
    """The InferenceService cannot be built from these arguments."""


def _sdk():
    try:
        with command_line_hidden():
            import kserve
            from kubernetes.client import V1ObjectMeta, V1ResourceRequirements
    except ImportError:
        raise ManifestError("deploy.kserve_manifest needs kserve: pip install -e '.[serve]' in a clone of googlenet-deploy") from None
    return kserve, V1ObjectMeta, V1ResourceRequirements


def inference_service(*, name: str, storage_uri: str, min_replicas: int = 1, max_replicas: int = 4,
                      gpu: bool = False, cpu: str = "2", memory: str = "4Gi") -> dict:
    """The InferenceService as the plain dict Kubernetes takes (camelCase keys, no nulls)."""
    if len(name) > 63 or not _NAME.fullmatch(name):
        raise ManifestError(f"name {name!r} is not a Kubernetes name: lower-case letters, digits and '-', at most 63")
    if not _URI.fullmatch(storage_uri):
        raise ManifestError(f"storage URI {storage_uri!r}: use s3://, gs://, pvc://, https:// or oci:// "
                            "pointing at the repository deploy.triton wrote")
    if min_replicas > max_replicas:
        raise ManifestError(f"--min-replicas {min_replicas} is above --max-replicas {max_replicas}")
    kserve, V1ObjectMeta, V1ResourceRequirements = _sdk()
    limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": "1"} if gpu else {})}
    model = kserve.V1beta1ModelSpec(
        model_format=kserve.V1beta1ModelFormat(name="triton"),
        protocol_version="v2",
        storage_uri=storage_uri,
        resources=V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits=limits),
    )
    service = kserve.V1beta1InferenceService(
        api_version=f"{kserve.constants.KSERVE_GROUP}/{kserve.constants.KSERVE_V1BETA1_VERSION}",
        kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name=name),
        spec=kserve.V1beta1InferenceServiceSpec(
            predictor=kserve.V1beta1PredictorSpec(model=model, min_replicas=min_replicas, max_replicas=max_replicas)
        ),
    )
    return kserve.ApiClient().sanitize_for_serialization(service)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kserve_manifest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage-uri", required=True, help="where the Triton model repository is uploaded")
    parser.add_argument("--out", type=Path, required=True, help="the YAML file to write")
    parser.add_argument("--name", default="googlenet", help="the InferenceService's name (default: googlenet)")
    parser.add_argument("--min-replicas", type=positive_int, default=1)
    parser.add_argument("--max-replicas", type=positive_int, default=4)
    parser.add_argument("--gpu", action="store_true", help="ask for one NVIDIA GPU per replica")
    parser.add_argument("--cpu", default="2", help="CPU request and limit per replica (default: 2)")
    parser.add_argument("--memory", default="4Gi", help="memory request and limit per replica (default: 4Gi)")
    args = parser.parse_args(argv)
    import yaml

    manifest = inference_service(name=args.name, storage_uri=args.storage_uri, min_replicas=args.min_replicas,
                                 max_replicas=args.max_replicas, gpu=args.gpu, cpu=args.cpu, memory=args.memory)
    write_text(args.out, yaml.safe_dump(manifest, sort_keys=False))
    print(f"wrote {args.out}: InferenceService {args.name}, {args.min_replicas} to {args.max_replicas} replicas",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
