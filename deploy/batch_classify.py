"""One worker of ``deploy.batch``: the model, checked by sha256, and a classifier over inputs.

Used in two places: inside each Ray actor (``deploy.batch_ray``), and in the child process
that answers, one image at a time, the inputs of a batch lost to crashes
(``deploy.batch_rescue``). Each record is the line ``runtimes.run --json`` prints for that
input, byte for byte. No Ray and no torch here.

The model is loaded from the bytes whose sha256 was checked, never from a shared path that
another process could swap: they are written into a private folder (0700, this process's
own), checked again through the open file just before loading, and the folder is removed
once the runtime has read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class JobFailed(Exception):
    """The job itself failed (exit 3), not one input: the message says why, in one line."""


class Worker:
    """The job's model, loaded from ``model_bytes`` once they hash to ``job.sha256``."""

    def __init__(self, job: Job, model_bytes: bytes, where: str = "this worker") -> None:
        from runtimes.classifier import Classifier

        got = sha256_bytes(model_bytes)
        if got != job.sha256:
            raise BundleError(f"model {job.model_name} refused on {where}: its sha256 is {got[:12]}..., "
                              f"the job's is {job.sha256[:12]}...; the file changed or did not arrive whole")
        self.job = job
        folder = tempfile.mkdtemp(prefix="googlenet-batch-model-")  # 0700: this process's alone
        try:
            path = Path(folder) / f"{got[:16]}.onnx"
            path.write_bytes(model_bytes)
            check_private(path, got)
            spec = spec_of(job) if job.spec_json else None
            self.classifier = Classifier(path, job.provider, batch_size=job.batch_size, spec=spec, exact=job.exact,
                                         workers=job.workers, max_pixels=job.max_pixels, **job.options)
            _ = self.classifier.spec  # read now: nothing reads the file after this
        finally:
            shutil.rmtree(folder, ignore_errors=True)

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


def check_private(path: Path, sha256: str) -> None:
    """Refuse to load ``path`` unless, through one open file, it is a plain file of ours in a folder
    only we can enter, and its bytes hash to ``sha256``."""
    folder = os.stat(path.parent, follow_symlinks=False)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        mine = getattr(os, "getuid", lambda: info.st_uid)()
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != mine or folder.st_uid != mine
                or stat.S_IMODE(folder.st_mode) & 0o077):
            raise BundleError(f"the model's private copy {path} is not private; refusing to load it")
        digest = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    finally:
        os.close(fd)
    if digest.hexdigest() != sha256:
        raise BundleError(f"the model's private copy {path} changed before loading; refusing to load it")
