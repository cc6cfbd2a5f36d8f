"""The model's preprocessing and labels, carried inside the ONNX file.

The exporter writes a :class:`ModelSpec` as JSON into ``metadata_props`` under
:data:`METADATA_KEY`; every runtime reads it back from there. This is the single
source of truth for mean, std, scale, resize, crop, channel order and what the output
is: nothing re-types them. ``converters.annotate`` writes one into an ONNX file from elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.errors import ModelSpecError

METADATA_KEY = "googlenet_deploy.spec"
# Where the file came from (exporter, opset, library versions), kept apart from the
# contract above; runtimes never read it. Neither holds a path or a time, so the same
# checkpoint and options give the same bytes wherever and whenever they are exported.
PROVENANCE_KEY = "googlenet_deploy.provenance"
DEFAULT_MODEL = Path("artifacts/googlenet.onnx")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runtime needs besides the graph itself."""

    labels: tuple[str, ...]
    layout: str = "paper"
    input_name: str = "input"
    output_name: str = "logits"
    resize_size: int = 256  # shorter side, before the center crop
    crop_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    # Pixel levels 0..255 become 0..scale before mean and std apply: 1 for torchvision's
    # ToTensor, 255 for Caffe-trained models (mean subtraction in levels, no std).
    scale: float = 1.0
    # "logits" (runtimes apply softmax for probabilities) or "probabilities" (the graph
    # ends in a softmax already).
    output_kind: str = "logits"
    # Whether the graph re-scales its ImageNet-normalized input to [-1, 1] first (baked
    # in: runtimes feed the same input either way); the torch runner rebuilds it so.
    transform_input: bool = False
    precision: str = "fp32"
    # The source checkpoint: its file name (never a path) and the sha256 of its bytes,
    # which the torch reference runner checks before it answers for this model.
    checkpoint_name: str = ""
    checkpoint_sha256: str = ""
    # For an fp16 or int8 variant: how it was made from its fp32 parent (parent_sha256,
    # and for int8 the calibration method, image count and a hash of the file list).
    variant: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def checkpoint_beside(self, model: str | Path) -> Path | None:
        """The source checkpoint named here, where the torch reference runner looks for it:
        beside ``model``; None when none is named or it is not there."""
        found = Path(model).parent / self.checkpoint_name if self.checkpoint_name else None
        return found if found is not None and found.is_file() else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelSpec":
        """The spec from its JSON; absent keys take the defaults above, except ``labels``."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelSpecError(f"{source}: {METADATA_KEY} metadata is not JSON ({exc}); re-export the model") from None
        if not isinstance(data, dict) or "labels" not in data:
            raise ModelSpecError(f"{source}: {METADATA_KEY} metadata has no labels (the one required key); re-export the model")
        values = {}
        for name, (convert, expected) in _FIELD_TYPES.items():
            if name in data:
                try:
                    values[name] = convert(data[name])
                except TypeError:
                    raise ModelSpecError(
                        f"{source}: {METADATA_KEY} metadata has {name}={data[name]!r:.60}, expected {expected}; "
                        "re-export the model"
                    ) from None
        return cls(**values)  # unknown keys are ignored: a newer exporter may add some

    @classmethod
    def from_onnx(cls, path: str | Path) -> "ModelSpec":
        """Read the spec from an ONNX file's metadata_props (without onnx: the weights are not parsed)."""
        from runtimes.graph import read_graph_io  # it imports this module

        path = require_model(path)
        return cls.from_metadata_map(read_graph_io(path).metadata, source=str(path))

    @classmethod
    def from_metadata_map(cls, metadata: Mapping[str, str], source: str = "metadata") -> "ModelSpec":
        """Read the spec from a model's key/value metadata, e.g. ONNX Runtime's custom_metadata_map."""
        if METADATA_KEY not in metadata:
            raise ModelSpecError(
                f"{source}: no {METADATA_KEY} metadata, so its preprocessing is unknown; "
                "export it with `python -m converters.export`, or describe a model from elsewhere "
                "with `python -m converters.annotate MODEL --labels FILE`"
            )
        return cls.from_json(metadata[METADATA_KEY], source=source)


def variant_path(model: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of ``model`` lives: ``dir/googlenet.onnx`` -> ``dir/googlenet.fp16.onnx``."""
    model = Path(model)
    return model if precision == "fp32" else model.with_name(f"{model.stem}.{precision}{model.suffix}")


def load_onnx(path: str | Path, *, external_data: bool = False):
    """The ``onnx.ModelProto`` at ``path``, with weights in external files only if asked; a ModelSpecError if unreadable."""
    import onnx  # deferred: keeps `--help` fast

    path = require_model(path)
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelSpecError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def require_model(path: str | Path) -> Path:
    """``path`` as a Path if it is a file; else a ModelSpecError that says how to make one."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(
            f"model {path} not found; export one with `python -m converters.export --ckpt CKPT --out {path}`"
        )
    return path


# Converters from JSON values to field values; each raises TypeError on a wrongly typed
# value. bool is a subclass of int, so `true` is refused explicitly where a number is meant.
def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError
    return value


def _three_numbers(value: object) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise TypeError
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise TypeError
    return (float(value[0]), float(value[1]), float(value[2]))


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TypeError
    return float(value)


def _one_of(choices: tuple[str, ...]):
    def convert(value: object) -> str:
        if value not in choices:
            raise TypeError
        return value

    return convert


def _labels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError
    return tuple(value)


def _of_type(kind: type):
    def convert(value: object):
        if not isinstance(value, kind):
            raise TypeError
        return value

    return convert


_FIELD_TYPES = {  # field -> (converter, what the message says was expected)
    "labels": (_labels, "a non-empty list of strings"),
    "layout": (_of_type(str), "a string"),
    "input_name": (_of_type(str), "a string"),
    "output_name": (_of_type(str), "a string"),
    "resize_size": (_positive_int, "a positive integer"),
    "crop_size": (_positive_int, "a positive integer"),
    "interpolation": (_of_type(str), "a string"),
    "mean": (_three_numbers, "3 numbers"),
    "std": (_three_numbers, "3 numbers"),
    "channel_order": (_of_type(str), "a string"),
    "scale": (_positive_number, "a positive number"),
    "output_kind": (_one_of(OUTPUT_KINDS), " or ".join(OUTPUT_KINDS)),
    "transform_input": (_of_type(bool), "true or false"),
    "precision": (_of_type(str), "a string"),
    "checkpoint_name": (_of_type(str), "a string"),
    "checkpoint_sha256": (_of_type(str), "a string"),
    "variant": (_of_type(dict), "an object"),
}
