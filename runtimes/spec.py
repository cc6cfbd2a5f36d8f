"""The model's preprocessing and labels, carried inside the ONNX file.

The exporter writes a :class:`ModelSpec` as JSON into ``metadata_props`` under
:data:`METADATA_KEY`; every runtime reads it back from there. This is the single
source of truth for mean, std, resize, crop and channel order: nothing re-types them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.errors import ModelSpecError

METADATA_KEY = "googlenet_deploy.spec"
DEFAULT_MODEL = Path("artifacts/googlenet.onnx")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    transform_input: bool = False  # already baked into the graph; informational
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)  # opset, exporter, versions, checkpoint sha256

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelSpec":
        try:
            data = json.loads(text)
            data["labels"] = tuple(data["labels"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelSpecError(f"{source}: malformed {METADATA_KEY} metadata ({exc}); re-export the model") from None

    @classmethod
    def from_onnx(cls, path: str | Path) -> "ModelSpec":
        """Read the spec from an ONNX file's metadata_props."""
        import onnx  # deferred: keeps `--help` fast

        path = Path(path)
        if not path.is_file():
            raise ModelSpecError(
                f"model {path} not found; export one with `python -m converters.export --ckpt CKPT --out {path}`"
            )
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises several unrelated types
            raise ModelSpecError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        return cls.from_metadata_map({p.key: p.value for p in model.metadata_props}, source=str(path))

    @classmethod
    def from_metadata_map(cls, metadata: Mapping[str, str], source: str = "metadata") -> "ModelSpec":
        """Read the spec from a model's key/value metadata, e.g. ONNX Runtime's custom_metadata_map."""
        if METADATA_KEY not in metadata:
            raise ModelSpecError(
                f"{source}: no {METADATA_KEY} metadata, so its preprocessing is unknown; "
                "export it with `python -m converters.export`"
            )
        return cls.from_json(metadata[METADATA_KEY], source=source)
