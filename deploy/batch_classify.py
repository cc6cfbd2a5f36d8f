"""One worker of ``deploy.batch``: the model, checked by sha256, and a classifier over inputs.

Used in two places: inside each Ray actor, and in the child process that answers, one
image at a time, the inputs of a block lost to a crash (``python -m deploy.batch_classify``,
which reads a JSON job on its first stdin line, then one input a line, and writes one
record a line, flushed, so that a crash names the input it died on).

Each record is the line ``runtimes.run --json`` prints for that input, byte for byte.
No Ray and no torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.atomic import write_bytes
from runtimes.bundle import sha256_file
from runtimes.errors import BundleError, ImageError


@dataclass(frozen=True)
class Job:
    """What every worker needs to classify as the driver would; JSON-able."""

    model_name: str  # as the user named it, for messages
    sha256: str  # what the model's bytes must hash to
    spec_json: str | None  # a bundle's spec for the model; None: the one inside the file
    provider: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    topk: int = 5
    exact: bool = False
    max_pixels: int | None = None
    workers: int | None = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Job":
        return cls(**json.loads(text))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_model(data: bytes, sha256: str) -> Path:
    """The model's one copy on this machine, shared by its actors and rescue processes: named
    by its sha256, checked before reuse, written atomically (a process killed mid-write leaves
    no half model behind)."""
    path = Path(tempfile.gettempdir()) / "googlenet-batch-models" / f"{sha256}.onnx"
    if not path.is_file() or sha256_file(path) != sha256:
        write_bytes(path, data)
    return path


class Worker:
    """The job's model, loaded from ``model_bytes`` once they hash to ``job.sha256``."""

    def __init__(self, job: Job, model_bytes: bytes, where: str = "this worker") -> None:
        from runtimes.classifier import Classifier

        got = sha256_bytes(model_bytes)
        if got != job.sha256:
            raise BundleError(f"model {job.model_name} refused on {where}: its sha256 is {got[:12]}..., "
                              f"the job's is {job.sha256[:12]}...; the file changed or did not arrive whole")
        self.job = job
        self.model_path = cached_model(model_bytes, got)
        spec = spec_of(job) if job.spec_json else None
        self.classifier = Classifier(self.model_path, job.provider, batch_size=job.batch_size, spec=spec,
                                     exact=job.exact, workers=job.workers, max_pixels=job.max_pixels, **job.options)

    def classify(self, names: list[str]) -> list[str]:
        """One ``runtimes.run --json`` line per input, in order; an unreadable input is its own error."""
        from deploy.batch_inputs import read_input

        items: list[Any] = []
        unread: dict[int, str] = {}
        for i, name in enumerate(names):
            try:  # a local path goes as it is: the classifier reads it, with runtimes.run's own error text
                items.append(read_input(name) if "://" in name else name)
            except ImageError as exc:
                unread[i] = str(exc)
                items.append(b"")
        records = []
        for i, (name, prediction) in enumerate(zip(names, self.classifier.iter_predict(items, self.job.topk))):
            prediction = dataclasses.replace(prediction, image=name)
            if i in unread:
                prediction = dataclasses.replace(prediction, topk=(), error=unread[i], preprocess=None)
            records.append(json.dumps(prediction.to_dict()))
        return records

    def classify_prepared(self, loaded: list[tuple[str, Any, str | None]]) -> list[str]:
        """The lines for inputs ``decode`` prepared, here or in a decode stage of their own."""
        records = []
        for start in range(0, len(loaded), self.job.batch_size):
            piece = loaded[start : start + self.job.batch_size]
            records += [json.dumps(p.to_dict()) for p in self.classifier.predict_prepared(piece, self.job.topk)]
        return records

    def close(self) -> None:
        self.classifier.close()


def decode(job: Job, spec, names: list[str]) -> list[tuple[str, Any, str | None]]:
    """(name, CHW tensor or error message, mode) for each input, as ``runtimes.run`` prepares it."""
    from deploy.batch_inputs import read_input
    from runtimes.classifier import load_input

    loaded = []
    for name in names:
        try:
            item = read_input(name) if "://" in name else name  # a local path: runtimes.run's own read and error text
        except ImageError as exc:
            loaded.append((name, str(exc), None))
            continue
        loaded.append(load_input(item, name, spec, exact=job.exact, max_pixels=job.max_pixels))
    return loaded


def spec_of(job: Job):
    """The job's spec, for a decode stage that loads no model."""
    from runtimes.spec import ModelSpec

    return ModelSpec.from_json(job.spec_json, "the job")


def columns(data: dict[str, Any]) -> dict[str, Any]:
    """The table row of one parsed record: path, label, labels, probs, class_index, error, preprocess."""
    topk = data.get("topk") or []
    return {
        "path": data["image"],
        "label": topk[0]["label"] if topk else None,
        "labels": [t["label"] for t in topk],
        "probs": [t["prob"] for t in topk],
        "class_index": topk[0]["index"] if topk else None,
        "error": data.get("error"),
        "preprocess": data.get("preprocess"),
    }


def child_main() -> int:
    """The rescue child: the job and model file on the first line, then inputs, one a line."""
    first = json.loads(sys.stdin.readline())
    job = Job.from_json(first["job"])
    worker = Worker(job, Path(first["model"]).read_bytes(), "the rescue process")
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.rstrip("\n")
        print(worker.classify([name])[0], flush=True)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
