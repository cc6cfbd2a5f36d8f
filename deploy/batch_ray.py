"""The Ray side of ``deploy.batch``: a cluster, a pool of classifying actors, and the driver's
scheduler. Imported only by ``deploy.batch`` (the ``batch`` extra).

Plain Ray actors, no Ray Data: the driver hands each actor one batch of paths at a time,
so it always knows which inputs a process holds. A batch whose actor dies (a crashing
image, a killed process, a lost node) is retried on another actor up to
``max_crash_retries`` times, then handed back as lost, for the one-at-a-time rescue. A
dead actor is replaced. Actors never restart themselves (``max_restarts=0``): an input
that kills its process cannot loop, and Ray has nothing to warn about at shutdown.

Only the paths travel to the actors and only the records come back: each actor reads and
decodes its own inputs (the least memory; no image crosses the object store). With
``split_decode`` a decode task per batch runs first, its tensors passed to the actor.

A watchdog fails the job when nothing finishes for ``stall_s`` seconds, naming what it
waited for.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from deploy.batch_classify import Job, JobFailed, Worker, decode, spec_of

if TYPE_CHECKING:
    from deploy.batch_job import Batch

# A decode task's CPUs, where decoding has a stage of its own.
DECODE_CPUS = 0.45
PRIVATE_PREFIX = "googlenet-ray-"
OWNER = "googlenet-batch.owner"  # in a private cluster's temp folder: "pid starttime" of the driver
_private: list[str] = []  # the temp folder of the private cluster this process started


class ClassifyActor:
    """One worker in a Ray actor: the model's bytes from the object store, checked by sha256."""

    def __init__(self, job_json: str, model: bytes) -> None:
        self.node = ray.get_runtime_context().get_node_id()
        self.job = Job.from_json(job_json)
        self.worker = Worker(self.job, model, f"node {self.node[:12]}")

    def ready(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid(), "sha256": self.job.sha256}

    def classify(self, names: list[str]) -> list[str]:
        return self.worker.classify(names)

    def classify_decoded(self, decoded: list[tuple[str, Any, str | None]]) -> list[str]:
        return self.worker.classify_prepared(decoded)


def decode_task(names: list[str], job_json: str) -> list[tuple[str, Any, str | None]]:
    """The decode stage: (name, CHW tensor or error message, mode) for each input."""
    job = Job.from_json(job_json)
    return decode(job, spec_of(job), names)


@dataclass
class _Actor:
    handle: Any
    node: str = ""
    key: str = ""  # node:pid, once ready


class Pool:
    """Classifying actors and the scheduler that feeds them; ``run`` yields each batch's records."""

    def __init__(self, job: Job, model_ref, *, actors: tuple[int, int], cpus: float, max_crash_retries: int,
                 stall_s: float, split_decode: bool = False, batches: int | None = None) -> None:
        self.job, self.model_ref = job, model_ref
        self.low, self.high = actors
        self.first = max(self.low, min(self.high, batches or self.low))  # no more actors than batches to start with
        self.cpus, self.retries, self.stall_s, self.split = cpus, max_crash_retries, stall_s, split_decode
        self.starting: dict[Any, _Actor] = {}  # ready() ref -> actor
        self.idle: deque[_Actor] = deque()
        self.busy: dict[Any, tuple[_Actor, Batch]] = {}  # result ref -> (actor, batch)
        self.again: deque[Batch] = deque()  # batches to retry
        self.verified: dict[str, str] = {}  # node -> the sha256 its actors checked
        self.processes: list[str] = []  # node:pid of every actor that loaded the model
        self.deaths: list[str] = []
        self.start_failures: list[str] = []
        self._decode = ray.remote(decode_task).options(num_cpus=DECODE_CPUS, max_retries=max_crash_retries)
        self._actor_class = ray.remote(ClassifyActor).options(
            num_cpus=cpus, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD")

    def run(self, batches: Iterator[Batch]) -> Iterator[tuple[Batch, list[str] | None, str]]:
        """(batch, records, node) as batches finish; records None for a batch lost to crashes (its
        ``deaths`` say how), for the rescue."""
        for _ in range(self.first):
            self._start()
        source, drained, last = iter(batches), False, time.monotonic()
        try:
            while True:
                while self.idle:
                    batch = self.again.popleft() if self.again else None if drained else next(source, None)
                    if batch is None:
                        drained = True
                        break
                    self._submit(self.idle.popleft(), batch)
                if drained and not self.busy and not self.again:
                    return
                if not self.starting and not self.busy and not self.idle:
                    raise JobFailed(f"every actor died and none can start: {self._why()}")
                done, _ = ray.wait([*self.starting, *self.busy], num_returns=1, timeout=1.0)
                if not done:
                    if time.monotonic() - last > self.stall_s:
                        raise JobFailed(f"no progress in {self.stall_s:g} s (--stall-timeout-s): {self.waiting_for()}")
                    continue
                last = time.monotonic()
                (ref,) = done
                if ref in self.starting:
                    self._started(ref, more_work=not drained)
                    continue
                actor, batch = self.busy.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    lost = self._failed(actor, batch, exc)
                    if lost is not None:
                        yield lost, None, ""
                        last = time.monotonic()  # the driver's own work (a rescue) is not the cluster stalling
                    continue
                self.idle.append(actor)
                yield batch, records, actor.node
                last = time.monotonic()  # nor is committing a part
        finally:
            for actor in [*self.starting.values(), *self.idle, *(a for a, _ in self.busy.values())]:
                ray.kill(actor.handle, no_restart=True)

    def _start(self) -> None:
        actor = _Actor(self._actor_class.remote(self.job.to_json(), self.model_ref))
        self.starting[actor.handle.ready.remote()] = actor

    def _started(self, ref, more_work: bool) -> None:
        actor = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = _cause(exc)
            if "refused on " in reason and "sha256" in reason:
                raise JobFailed(reason.split("BundleError: ", 1)[-1]) from None
            self.start_failures.append(reason)
            if len(self.start_failures) > 2 * self.high:
                raise JobFailed(f"actors keep failing to start ({len(self.start_failures)} times): {reason}") from None
            if not self.starting and not self.idle and not self.busy:
                self._start()
            return
        actor.node, actor.key = info["node"], f"{info['node']}:{info['pid']}"
        self.verified[info["node"]] = info["sha256"]
        self.processes.append(actor.key)
        self.idle.append(actor)
        live = len(self.starting) + len(self.idle) + len(self.busy)
        if more_work and live < self.high:  # scale up while work remains, one actor at a time
            self._start()

    def _submit(self, actor: _Actor, batch: Batch) -> None:
        if self.split:
            decoded = self._decode.remote(batch.names, self.job.to_json())
            ref = actor.handle.classify_decoded.remote(decoded)
        else:
            ref = actor.handle.classify.remote(batch.names)
        self.busy[ref] = (actor, batch)

    def _failed(self, actor: _Actor, batch: Batch, exc: Exception) -> Batch | None:
        """The batch's attempt failed: retry it, or hand it back as lost (returned)."""
        died = isinstance(exc, ray.exceptions.RayActorError)
        if not died and not self.split:  # our own code raised inside a live actor: not an input's crash
            raise JobFailed(f"an actor failed on node {actor.node[:12]}: {_cause(exc)}") from None
        how = f"{'the actor process' if died else 'the decode task'} on node {actor.node[:12]} died: {_cause(exc)}"
        batch.attempts += 1
        batch.deaths.append(how)
        if died:
            self.deaths.append(how)
            self._start()  # a replacement, scheduled wherever the cluster has room
        else:
            self.idle.append(actor)
        if batch.attempts > self.retries:
            return batch
        self.again.append(batch)
        return None

    def waiting_for(self) -> str:
        """What the pool waits for, in one line."""
        if self.busy:
            held = sorted(self.busy.values(), key=lambda pair: (pair[1].part, pair[1].offset))
            first = held[0][1]
            return (f"{len(self.busy)} batch(es) unfinished on {len(held)} actor(s) (the first: {len(first.names)} "
                    f"inputs from {first.names[0]!r}, on node {held[0][0].node[:12]} pid "
                    f"{held[0][0].key.rsplit(':', 1)[-1]})")
        free = ray.available_resources().get("CPU", 0.0)
        return (f"{len(self.starting)} actor(s) to start, each asking for {self.cpus:g} CPU; the cluster has "
                f"{free:g} CPU free")

    def _why(self) -> str:
        return (self.deaths or self.start_failures or ["no reason given"])[-1]


def _cause(exc: BaseException) -> str:
    """The innermost error Ray's wrapped message carries, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line and ": " in line]
    return (named[-1] if named else lines[0] if lines else type(exc).__name__)[:500]


def start_cluster(address: str | None, cpus: int | None, runtime_env: dict | None = None) -> dict[str, Any]:
    """Connect to ``address``, or start a private local cluster in a temp folder of its own."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                  runtime_env=runtime_env)
    ours = signal.getsignal(signal.SIGTERM)  # ray.init puts its own in (exit 15, a C++ stack dump): ours goes back
    if address:
        ray.init(address=address, **kwargs)
    else:
        _remove_stale_clusters()
        _private.append(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
        (Path(_private[-1]) / OWNER).write_text(_identity(os.getpid()) or "")
        ray.init(num_cpus=cpus, _temp_dir=_private[-1], **kwargs)
    signal.signal(signal.SIGTERM, ours)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [n.get("Resources", {}).get("CPU", 0) for n in nodes]
    return {"nodes": len(nodes), "cpus": ray.cluster_resources().get("CPU", 0),
            "min_node_cpus": min((c for c in node_cpus if c > 0), default=0)}


def _identity(pid: int) -> str | None:
    """``pid`` and its start time (Linux): a pid reused by another process does not match."""
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"{pid} {started}"


def _remove_stale_clusters() -> None:
    """The temp folders of private clusters whose driver was killed (SIGKILL runs no clean-up):
    only folders of this name, ours, holding the owner record we write, whose owner is gone."""
    for entry in Path(tempfile.gettempdir()).glob(f"{PRIVATE_PREFIX}*"):
        try:
            if entry.is_symlink() or entry.stat().st_uid != os.getuid():
                continue
            owner = (entry / OWNER).read_text().strip()
        except OSError:
            continue
        pid = owner.split()[0] if owner else ""
        if pid.isdigit() and _identity(int(pid)) != owner:
            shutil.rmtree(entry, ignore_errors=True)


def actor_cpus(cluster: dict[str, Any], max_actors: int, threads: int, split_decode: bool = False) -> float:
    """Each actor's CPU request: its threads, but no more than its share of a node (a decode
    task's CPUs left free where decoding has a stage of its own); a ToolkitError where no share fits."""
    from runtimes.errors import ToolkitError

    nodes = max(1, cluster["nodes"])
    per_node = -(-max_actors // nodes)  # actors on the busiest node
    room = cluster["min_node_cpus"] - (DECODE_CPUS if split_decode else 0.0)
    cpus = round(min(float(threads), room / per_node), 2)
    if cpus < 0.1:
        raise ToolkitError(f"{max_actors} actors on nodes of {cluster['min_node_cpus']:g} CPUs leave no CPU for "
                           f"{'the decode stage and ' if split_decode else ''}each actor: fewer --actors")
    return cpus


def put_model(data: bytes):
    return ray.put(data)


def shutdown() -> None:
    """Disconnect; a private cluster stops, and its temp folder (sessions, logs, sockets) goes."""
    ray.shutdown()
    while _private:
        shutil.rmtree(_private.pop(), ignore_errors=True)
