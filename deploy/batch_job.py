"""The mechanics of a ``deploy.batch`` job: the batches still to do, streamed from the listing;
the parts they fill, each committed once full; and the run on the cluster, with the rescue
of what crashes lose. Used by ``deploy.batch`` alone.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from deploy.batch_classify import Job, JobFailed
from deploy.batch_inputs import Digest, Listing, iter_inputs
from deploy.batch_output import Output
from deploy.batch_rescue import rescue
from runtimes.errors import ToolkitError, first_line
from runtimes.progress import Progress


@dataclass
class Batch:
    """Inputs ``names``, at ``offset`` in part ``part`` of the listing."""

    part: int
    offset: int
    names: list[str]
    attempts: int = 0
    deaths: list[str] = field(default_factory=list)  # how each attempt's process died


def plan(source: str, output: Output, listing: Listing, batch_size: int, parts: "Parts") -> Iterator[Batch]:
    """The batches still to classify, streamed from the listing: a committed part's inputs are
    skipped (their names checked against the part's record), and each part's names' sha256 is
    known before its last batch goes out."""
    size = output.rows_per_part
    everything, names, position = Digest(), [], 0
    part_digest = Digest()
    for name in iter_inputs(source):
        index, offset = divmod(position, size)
        last = offset == min(size, listing.count - index * size) - 1  # the part's last input
        everything.add(name)
        part_digest.add(name)
        position += 1
        committed = output.committed(index)
        if committed is None:
            names.append(name)
        if last:
            if committed is not None and committed["paths_sha256"] != part_digest.hexdigest():
                raise JobFailed(f"the inputs of committed part {index} are not those the listing names now; "
                                "the inputs changed since the first run")
            if committed is None:
                parts.expect(index, part_digest.hexdigest())
            part_digest = Digest()
        if names and (len(names) == batch_size or last):
            yield Batch(index, offset + 1 - len(names), names)
            names = []
    if position != listing.count or everything.hexdigest() != listing.sha256:
        raise JobFailed(f"the inputs changed while the job ran ({listing.count} listed at the start, {position} now); "
                        "the committed parts are kept: --mode overwrite starts again")


class Parts:
    """The parts being filled: each batch's records at their place; a full part is committed."""

    def __init__(self, output: Output, count: int) -> None:
        self.output, self.count = output, count
        self.open: dict[int, dict] = {}
        self.by_node: Counter[str] = Counter()
        self.rescued = 0

    def expect(self, index: int, names_sha256: str) -> None:
        self.open.setdefault(index, self._new(index))["sha256"] = names_sha256

    def _new(self, index: int) -> dict:
        size = min(self.output.rows_per_part, self.count - index * self.output.rows_per_part)
        return {"records": [None] * size, "filled": 0, "sha256": None, "crashed": [], "rescued": 0}

    def add(self, batch: Batch, records: list[str], node: str, crashed: list[str] = ()) -> None:
        """The records of ``batch``, each checked to be the one for the name sent."""
        if len(records) != len(batch.names):
            raise JobFailed(f"{len(records)} records came back for a batch of {len(batch.names)} inputs")
        part = self.open.setdefault(batch.part, self._new(batch.part))
        for i, (name, record) in enumerate(zip(batch.names, records)):
            if not _names(record, name):
                raise JobFailed(f"the record for {name!r} names another input; it was not written")
            part["records"][batch.offset + i] = record
        part["filled"] += len(records)
        part["crashed"] += crashed
        self.by_node[node] += len(records)
        if node == "rescue process":
            part["rescued"] += len(records)
            self.rescued += len(records)
        if part["filled"] == len(part["records"]) and part["sha256"] is not None:
            self.output.commit(batch.part, part["records"], part["sha256"], rescued=part["rescued"],
                               crashed=part["crashed"])
            del self.open[batch.part]

    def check_complete(self) -> None:
        """Every part committed, and the rows add up to the listing: every input exactly once."""
        size = self.output.rows_per_part
        missing = [i for i in range(-(-self.count // size)) if self.output.committed(i) is None]
        rows = sum(p["rows"] for p in self.output.record["parts"].values())
        if missing or rows != self.count:
            raise JobFailed(f"{rows} rows for {self.count} inputs ({len(missing)} parts unwritten, the first "
                            f"{missing[:1]}); the committed parts are kept")


def _names(record: str, name: str) -> bool:
    """Whether ``record`` is the one for ``name``. Every record begins ``{"image": <name>, ``
    (``Prediction.to_dict``, serialised by json.dumps), so a prefix says it without a parse:
    parsing every row here left the driver's heap about 4 KB a held row larger."""
    head = '{"image": ' + json.dumps(name)
    if record.startswith(head):
        return record[len(head):len(head) + 1] in (",", "}")
    return json.loads(record).get("image") == name


def classify(parts: Parts, batches: Iterator[Batch], listing: Listing, job: Job, model_bytes: bytes, wheel,
              args) -> dict:
    """Run ``batches`` on the cluster, and the lost ones through the rescue; what happened, for the manifest."""
    from deploy import batch_ray

    runtime_env = {"py_modules": [str(wheel)]} if wheel and args.address and not args.no_runtime_env else None
    began = time.perf_counter()
    try:
        cluster = batch_ray.start_cluster(args.address, args.cpus, runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ToolkitError(f"cannot start or reach the Ray cluster{' at ' + args.address if args.address else ''}: "
                           f"{first_line(exc)}") from None
    startup = time.perf_counter() - began
    try:
        actors = args.actors or (1, max(1, int(cluster["cpus"] // max(1, args.threads or 1))))
        cpus = batch_ray.actor_cpus(cluster, actors[1], args.threads or 1, args.split_decode)
        pool = batch_ray.Pool(job, batch_ray.put_model(model_bytes), actors=actors, cpus=cpus,
                              max_crash_retries=args.max_crash_retries, stall_s=args.stall_timeout_s,
                              split_decode=args.split_decode,
                              batches=-(-(listing.count - parts.output.reused) // args.batch_size))
        progress = Progress(listing.count - parts.output.reused, sys.stderr, quiet_up_to=args.batch_size)
        first = last = None
        after_first = 0
        try:
            for batch, records, node in pool.run(batches):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    after_first += len(batch.names)
                crashed = []
                if records is None:  # lost to crashes on the cluster: one at a time, here
                    records, node = [], "rescue process"
                    for name, record, died in rescue(batch.names, job, model_bytes):
                        records.append(record)
                        crashed += [name] if died else []
                parts.add(batch, records, node, crashed)
                progress.advance(len(records))
                last = time.perf_counter()
        finally:
            progress.clear()
    finally:
        batch_ray.shutdown()
    steady = round(last - first, 2) if first is not None and last > first else None
    return {"cluster": cluster, "actors": list(actors), "actor_cpus": cpus, "startup_s": round(startup, 2),
            "first_rows_s": round(first - began, 2) if first is not None else None,
            "steady": {"rows": after_first, "seconds": steady,  # from the first batch's records to the last's
                       "images_per_s": round(after_first / steady, 1) if steady else None}, "ray_failures": pool.deaths,
            "verified_on": pool.verified, "actor_processes": pool.processes}

def preflight(job: Job, address: str | None) -> None:
    """The mistakes that are one line before anything is written: a runtime missing on this
    machine (the private cluster's), a cluster address that refuses connections (Ray itself
    retries for minutes)."""
    import re
    import socket

    if not address:
        from runtimes.adapters import unavailable_error, unavailable_reason

        reason = unavailable_reason(job.provider)
        if reason is not None:
            raise unavailable_error(job.provider, reason)
        return
    found = re.fullmatch(r"(?:ray://)?([\w.-]+):(\d+)", address)
    if found:
        try:
            socket.create_connection((found.group(1), int(found.group(2))), timeout=10).close()
        except OSError as exc:
            raise ToolkitError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
                               "start one (`ray start --head`) or leave --address out for a private one") from None
