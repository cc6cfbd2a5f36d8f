"""PyTorch's answers, kept beside the model so any device can check itself against them.

At export, the parity gate's seeded inputs and a few images are run through the
source checkpoint in PyTorch; their logits, the inputs and the images' file bytes go
into one ``<model>.reference.npz``. ``runtimes.verify`` replays them on whatever
runtime a device has, with no torch there. The file is plain arrays, read with
``allow_pickle=False``: loading it can run no code.

The seeded inputs are rounded to float16 values when made, so storing them as float16
halves the file and loses nothing.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

from runtimes.atomic import write_bytes
from runtimes.bundle import sha256_file
from runtimes.errors import BundleError
from runtimes.spec import ModelSpec

if TYPE_CHECKING:
    from runtimes.parity import ParityStats
    from runtimes.tolerances import Tolerance

SUFFIX = ".reference.npz"


def reference_path_for(model_path: str | Path) -> Path:
    """``dir/googlenet.onnx`` -> ``dir/googlenet.reference.npz``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SUFFIX)


def reference_for(model_path: str | Path, spec: ModelSpec) -> Path:
    """The reference answers for ``model_path``: its own, or, for a variant that
    ``converters.quantize`` made (which writes none), those of its fp32 parent beside it,
    recognised by the sha256 the variant's spec records. PyTorch's answers are the
    parent's: the variant is judged against them under its own precision's tolerance."""
    own = reference_path_for(model_path)
    parent_sha256 = spec.variant.get("parent_sha256")
    if own.is_file() or not parent_sha256:
        return own  # Reference.load says it is missing
    for candidate in sorted(own.parent.glob("*" + SUFFIX)):
        parent = candidate.with_name(candidate.name[: -len(SUFFIX)] + ".onnx")
        if parent.is_file() and sha256_file(parent) == parent_sha256:
            return candidate
    raise BundleError(
        f"reference answers for {model_path} not found: this {spec.precision} variant is checked against those of the "
        f"fp32 model it was made from (sha256 {parent_sha256[:12]}...); put that model and its {SUFFIX} beside it"
    )


@dataclass(frozen=True)
class Reference:
    """Seeded input batches and images, each with the PyTorch logits it must produce."""

    inputs: tuple[np.ndarray, ...]  # float32 (N, 3, H, W) batches, float16-exact
    input_logits: tuple[np.ndarray, ...]  # float32 (N, C), one per batch
    image_names: tuple[str, ...] = ()
    images: tuple[bytes, ...] = ()  # the encoded files, decoded on the device
    image_logits: np.ndarray | None = None  # float32 (len(images), C)

    def save(self, path: str | Path) -> Path:
        """Write atomically; the bytes depend only on the contents."""
        arrays: dict[str, np.ndarray] = {}
        for i, (x, y) in enumerate(zip(self.inputs, self.input_logits)):
            if not np.array_equal(x.astype(np.float16).astype(np.float32), x):
                raise ValueError("reference inputs must be float16-exact; round them when they are made")
            arrays[f"input_{i}"], arrays[f"input_logits_{i}"] = x.astype(np.float16), y.astype(np.float32)
        if self.images:
            arrays["image_names"] = np.array(self.image_names, dtype=str)
            arrays["image_offsets"] = np.cumsum([0, *map(len, self.images)]).astype(np.int64)
            arrays["image_data"] = np.frombuffer(b"".join(self.images), np.uint8)
            arrays["image_logits"] = np.asarray(self.image_logits, np.float32)
        return write_bytes(path, _npz_bytes(arrays))

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {name: npz[name] for name in npz.files}
        except FileNotFoundError:
            raise BundleError(f"reference answers {path} not found; re-export the model to make them") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise BundleError(f"reference answers {path} are unreadable ({exc}); re-export the model") from None
        try:
            count = sum(name.startswith("input_logits_") for name in data)
            inputs = tuple(data[f"input_{i}"].astype(np.float32) for i in range(count))
            logits = tuple(data[f"input_logits_{i}"] for i in range(count))
            if "image_data" not in data:
                return cls(inputs, logits)
            blob, offsets = data["image_data"].tobytes(), data["image_offsets"]
            images = tuple(blob[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
            return cls(inputs, logits, tuple(str(n) for n in data["image_names"]), images, data["image_logits"])
        except KeyError as exc:
            raise BundleError(f"reference answers {path} lack the array {exc}; re-export the model") from None


    def subset(self, images: int) -> "Reference":
        """A quicker check: the smallest seeded batch, and ``images`` of the images, taken in
        turn from each class PyTorch answered (the first image of every class, then the
        second, ...), so that a few images still span the classes."""
        if not self.inputs:
            raise BundleError("the reference answers hold no seeded inputs; re-export the model")
        smallest = min(range(len(self.inputs)), key=lambda i: len(self.inputs[i]))
        chosen: list[int] = []
        if self.images:
            by_class: dict[int, list[int]] = {}
            for i, row in enumerate(self.image_logits):
                by_class.setdefault(int(np.argmax(row)), []).append(i)
            turns = [queue[k] for k in range(len(self.images)) for queue in by_class.values() if k < len(queue)]
            chosen = sorted(turns[:images])
        return Reference(
            (self.inputs[smallest],), (self.input_logits[smallest],),
            tuple(self.image_names[i] for i in chosen), tuple(self.images[i] for i in chosen),
            self.image_logits[chosen] if self.images else None,
        )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz that np.load reads, with fixed timestamps so equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


# Images per call when no batch size is asked for: within every runner's default batch
# range (tensorrt's profile included).
IMAGE_BATCH = 8


@dataclass(frozen=True)
class Check:
    """One replayed part of the reference: its parity statistics and whether they are judged."""

    name: str  # "seeded batch 1", "18 images"
    stats: "ParityStats"
    judged: bool

    @property
    def passed(self) -> bool:
        return self.stats.passed or not self.judged


def replay(runner, reference: Reference, tol: "Tolerance", batch_size: int | None = None) -> list[Check]:
    """``runner``'s logits for the reference's seeded inputs and images, compared with PyTorch's under ``tol``.

    With ``batch_size``, every call is exactly that many rows, as a configuration tuned for
    it runs (a seeded batch or the images' last call is filled up by repeating its rows);
    without, each seeded batch runs as it is and the images ``IMAGE_BATCH`` at a time.
    Seeded inputs are judged elementwise only: an int8 model is judged on the images alone.
    """
    from runtimes import preprocess
    from runtimes.parity import compare

    def logits(rows: np.ndarray, per_call: int) -> np.ndarray:
        outputs = []
        for start in range(0, len(rows), per_call):
            piece = rows[start : start + per_call]
            if batch_size is not None and len(piece) < per_call:  # repeat its rows up to the batch size
                piece = np.resize(piece, (per_call, *piece.shape[1:]))
            outputs.append(runner.infer(piece))
        return np.concatenate(outputs)[: len(rows)]

    checks = [
        Check(f"seeded batch {len(x)}", compare(ref, logits(x, batch_size or len(x)), tol), judged=tol.elementwise)
        for x, ref in zip(reference.inputs, reference.input_logits)
    ]
    if reference.images:
        batch = preprocess.stack(
            [preprocess.load(data, runner.spec, name) for name, data in zip(reference.image_names, reference.images)]
        )
        got = logits(batch, batch_size or IMAGE_BATCH)
        checks.append(Check(f"{len(batch)} images", compare(reference.image_logits, got, tol), judged=True))
    return checks
