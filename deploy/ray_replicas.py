"""``deploy.serve --replicas N``: N copies of the model on a local Ray Serve cluster.

kserve's ModelServer keeps the REST and gRPC endpoints; each request goes through a
``RayModel`` handle to one of N Ray Serve replicas, and each replica holds one runtime
session serving both ``googlenet`` and ``googlenet-image``. Ray Serve's own HTTP proxy
is not started: the only ports are the ModelServer's.

A gRPC request reaches kserve as an ``InferRequest`` holding protobuf maps, which Ray
cannot pickle (kserve's ``RayModel`` answers "Internal server error"); it travels to the
replica as the serialized protobuf message instead and is rebuilt there. A refusal
(HTTP 400), a full pixel budget (503) or a runtime failure (500) in a replica comes back
as its one-line message.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from deploy.budget import ServerBusy
from deploy.kserve_models import Engine, ImageModel, InferRequest, InvalidInput, TensorModel
from kserve.model import InferenceVerb
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest
from kserve.ray import RayModel
from runtimes.errors import InferenceError, ToolkitError

DEPLOYMENT = "googlenet"


@dataclass(frozen=True)
class _Refused:
    reason: str
    server_fault: bool = False  # a runtime failure (HTTP 500), not the client's (400)
    retry_after_s: int | None = None  # the replica's pixel budget stayed full (HTTP 503)


class Replica:
    """One Ray Serve replica: its own session behind both served models."""

    def __init__(self, engine: Engine) -> None:
        self.models = {m.name: m for m in (TensorModel(engine), ImageModel(engine))}
        for model in self.models.values():
            model.load()

    async def __call__(self, body: InferRequest | bytes, headers: dict[str, str] | None = None):
        if isinstance(body, bytes):
            body = InferRequest.from_grpc(ModelInferRequest.FromString(body))
        try:
            return await self.models[body.model_name](body, headers)
        except InvalidInput as exc:  # Ray would wrap it in its own error and traceback: send the reason
            return _Refused(exc.reason)
        except ServerBusy as exc:
            return _Refused(str(exc), retry_after_s=exc.retry_after_s)
        except ToolkitError as exc:
            return _Refused(str(exc), server_fault=True)

    def pid(self) -> int:
        return os.getpid()


class ReplicatedModel(RayModel):
    """kserve's RayModel for one of the replicas' models, with gRPC requests made picklable.

    ``local`` is the same model unloaded, in the driver: its input and output types.
    """

    def __init__(self, local: TensorModel | ImageModel, handle: Any) -> None:
        super().__init__(local.name, handle)
        self._local = local

    async def __call__(self, body, headers=None, verb: InferenceVerb = InferenceVerb.PREDICT):
        if isinstance(body, InferRequest) and body.from_grpc:
            body = body.to_grpc().SerializeToString()
        answer = await self._handle.remote(body, headers=dict(headers or {}))
        if isinstance(answer, _Refused) and answer.retry_after_s is not None:
            raise ServerBusy(answer.reason, answer.retry_after_s)
        if isinstance(answer, _Refused):
            raise (InferenceError if answer.server_fault else InvalidInput)(answer.reason)
        return answer

    def load(self) -> bool:
        self.ready = True  # each replica loaded its session when Ray Serve started it
        return True

    def get_input_types(self) -> list[dict]:
        return self._local.get_input_types()

    def get_output_types(self) -> list[dict]:
        return self._local.get_output_types()


def shutdown() -> None:
    """Stop the replicas and the local Ray cluster."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def replicated_models(engine: Engine, replicas: int) -> list[ReplicatedModel]:
    """Start ``replicas`` replicas of ``engine`` on a local Ray cluster; the ModelServer's models for them.

    Call :func:`shutdown` when done.
    """
    import ray
    from ray import serve

    slots = max(os.cpu_count() or 1, replicas)
    ray.init(num_cpus=slots, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    serve.start(http_options={"location": "Disabled"})
    engine.spec  # noqa: B018 - kept after close(), for the driver's model types
    engine.close()  # the replicas load their own sessions; the driver needs none
    replica = serve.deployment(Replica, name=DEPLOYMENT, num_replicas=replicas,
                               ray_actor_options={"num_cpus": slots / replicas})
    handle = serve.run(replica.bind(engine.for_replicas(replicas)), name=DEPLOYMENT, route_prefix=None)
    pids: set[int] = set()
    for _ in range(32 * replicas):  # the router picks at random between the least busy: ask until all answered
        pids.add(handle.pid.remote().result())
        if len(pids) == replicas:
            break
    running = serve.status().applications[DEPLOYMENT].deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)
    print(f"ray serve: {running} replicas running; {len(pids)} answered", file=sys.stderr, flush=True)
    return [ReplicatedModel(local, handle) for local in (TensorModel(engine), ImageModel(engine))]
