"""The Ray side of ``deploy.batch``: a cluster, an actor pool of workers, and what each
crash leaves behind. Imported only by ``deploy.batch`` (the ``batch`` extra: ``ray[data]``).

The pipeline is ``from_items(paths)`` -> ``map_batches(ClassifyActor)`` on an actor pool
-> the driver, which writes every row itself. Decoding happens inside the actor (the
least memory: no image crosses the object store). The traps of Ray's defaults, each
avoided here on purpose:

- unlimited actor restarts and task retries: an input that kills its process would loop
  forever. Both are bounded (``max_crash_retries``); when they run out, the pass fails,
  and the ledger says which inputs were in the dead process's hands;
- an actor asking for every CPU leaves none for Ray Data's own tasks, and the job hangs
  with no warning: each actor asks for less than its share;
- Ray's writers append, escape ``/`` in JSON, and lose order with two actors or a retry:
  the driver writes the rows, one per input, checked against the input list.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from deploy.batch_classify import Job, Worker, decode, spec_of

# The share of a CPU each actor leaves free for Ray Data's scheduling and block tasks.
CPU_HEADROOM = 0.9
# A decode stage's CPUs: other than any actor's, so that Ray Data does not fuse it into the
# actors (it fuses a task stage whose resources match), which would undo the split.
DECODE_CPUS = 0.45
_private: list[str] = []  # the temp folder of the private cluster this process started


@ray.remote(num_cpus=0)
class Ledger:
    """Which inputs each live actor has in hand: what a crash would take with it."""

    def __init__(self) -> None:
        self.in_hand: dict[str, list[str]] = {}
        self.verified: dict[str, str] = {}  # node -> the model sha256 its actors checked
        self.workers: list[str] = []  # node:pid of every actor process that loaded the model

    def begin(self, key: str, names: list[str]) -> None:
        self.in_hand[key] = names

    def end(self, key: str) -> None:
        self.in_hand.pop(key, None)

    def loaded(self, key: str, node: str, sha256: str) -> None:
        self.verified[node] = sha256
        self.workers.append(key)

    def report(self) -> dict[str, Any]:
        return {"in_hand": [n for names in self.in_hand.values() for n in names], "verified": dict(self.verified),
                "workers": list(self.workers)}


class ClassifyActor:
    """One worker in a Ray actor: the model from the object store, checked by sha256 on arrival."""

    def __init__(self, job_json: str, model_ref: list, ledger) -> None:
        self.node = ray.get_runtime_context().get_node_id()
        self.key = f"{self.node}:{os.getpid()}"
        job = Job.from_json(job_json)
        self.worker = Worker(job, ray.get(model_ref[0]), f"node {self.node[:12]}")
        self.ledger = ledger
        ray.get(ledger.loaded.remote(self.key, self.node, job.sha256))
        self.batches = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        names = [str(n) for n in batch["path"]]
        key = f"{self.key}#{self.batches}"
        self.batches += 1
        ray.get(self.ledger.begin.remote(key, names))  # before the work: a crash from here on names them
        if "tensor" in batch:  # decoded by the decode stage
            loaded = [(n, t if not e else str(e), str(m) or None)
                      for n, t, e, m in zip(names, batch["tensor"], batch["error"], batch["mode"])]
            records = self.worker.classify_prepared(loaded)
        else:
            records = self.worker.classify(names)
        ray.get(self.ledger.end.remote(key))
        return {"path": names, "record": records, "node": [self.node] * len(names)}


def start_cluster(address: str | None, cpus: int | None, runtime_env: dict | None = None) -> dict[str, Any]:
    """Connect to ``address``, or start a private local cluster in a temp folder of its own."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                  runtime_env=runtime_env)
    if address:
        ray.init(address=address, **kwargs)
    else:
        _private.append(tempfile.mkdtemp(prefix="googlenet-ray-"))
        ray.init(num_cpus=cpus, _temp_dir=_private[-1], **kwargs)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [n.get("Resources", {}).get("CPU", 0) for n in nodes]
    return {"nodes": len(nodes), "cpus": ray.cluster_resources().get("CPU", 0),
            "min_node_cpus": min((c for c in node_cpus if c > 0), default=0)}


def decode_batch(batch: dict[str, Any], job_json: str) -> dict[str, Any]:
    """The decode stage: each input's CHW float32 tensor (zeros where it failed), error and mode."""
    import numpy as np

    job = Job.from_json(job_json)
    spec = spec_of(job)
    loaded = decode(job, spec, [str(n) for n in batch["path"]])
    shape = (3, spec.crop_size, spec.crop_size)
    return {
        "path": [name for name, _, _ in loaded],
        "tensor": np.stack([t if not isinstance(t, str) else np.zeros(shape, np.float32) for _, t, _ in loaded]),
        "error": [t if isinstance(t, str) else "" for _, t, _ in loaded],
        "mode": [m or "" for _, _, m in loaded],
    }


def actor_cpus(cluster: dict[str, Any], max_actors: int, threads: int, split_decode: bool = False) -> float:
    """Each actor's CPU request: its threads, but less than its share of a node, so that Ray
    Data's own tasks (and a decode stage's) always find a CPU; a ToolkitError where no share fits."""
    from runtimes.errors import ToolkitError

    nodes = max(1, cluster["nodes"])
    per_node = -(-max_actors // nodes)  # actors on the busiest node
    room = cluster["min_node_cpus"] - (DECODE_CPUS if split_decode else 0.0)
    cpus = round(min(float(threads), room / per_node * CPU_HEADROOM), 2)
    if cpus < 0.1:
        raise ToolkitError(f"{max_actors} actors on nodes of {cluster['min_node_cpus']:g} CPUs leave no CPU for "
                           f"{'the decode stage and ' if split_decode else ''}Ray Data's own tasks: fewer --actors")
    return cpus


def run_pass(names: list[str], job: Job, model_ref, ledger, *, actors: tuple[int, int], cpus: float,
             max_crash_retries: int, batch_size: int, split_decode: bool = False) -> Iterator[tuple[str, str, str]]:
    """(path, record, node) for ``names``, as blocks finish; raises when the pass fails."""
    # Enough blocks for every actor to have work, and for a crash to take little with it.
    blocks = min(len(names), max(4 * actors[1], -(-len(names) // batch_size)))
    ds = ray.data.from_items([{"path": n} for n in names], override_num_blocks=blocks)
    if split_decode:
        ds = ds.map_batches(decode_batch, fn_kwargs={"job_json": job.to_json()}, batch_size=batch_size,
                            batch_format="numpy", zero_copy_batch=False, num_cpus=DECODE_CPUS,
                            max_retries=max_crash_retries)
    with warnings.catch_warnings():  # max_restarts has no other spelling in Ray 2.60 (pinned)
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            ClassifyActor, batch_size=batch_size, batch_format="numpy", zero_copy_batch=False,
            fn_constructor_kwargs={"job_json": job.to_json(), "model_ref": [model_ref], "ledger": ledger},
            compute=ActorPoolStrategy(min_size=actors[0], max_size=actors[1]), num_cpus=cpus,
            max_restarts=max_crash_retries, max_task_retries=max_crash_retries,
        )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from zip(map(str, batch["path"]), map(str, batch["record"]), map(str, batch["node"]))


def new_ledger():
    """A ledger on the driver's own node: a worker node's death must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Ledger.options(scheduling_strategy=here).remote()


def ledger_report(ledger) -> dict[str, Any]:
    """What the ledger knows; nothing, if it is gone too (then every unanswered input is suspect)."""
    try:
        return ray.get(ledger.report.remote(), timeout=30)
    except ray.exceptions.RayError:
        return {"in_hand": [], "verified": {}, "workers": []}


def put_model(data: bytes):
    return ray.put(data)


def shutdown() -> None:
    """Disconnect; a private cluster stops, and its temp folder (sessions, logs, sockets) goes."""
    ray.shutdown()
    while _private:
        shutil.rmtree(_private.pop(), ignore_errors=True)
