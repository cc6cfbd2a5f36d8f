"""ModelSpec read back from a model's metadata: defaults for what is absent, typed errors for what is wrong."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtimes.errors import ModelSpecError
from runtimes.spec import ModelSpec, require_model

FULL = ModelSpec(  # no field at its default, so the round trip shows each one is read back
    labels=("cat", "dog"),
    layout="torchvision",
    input_name="x",
    output_name="y",
    resize_size=232,
    crop_size=192,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    channel_order="BGR",
    scale=255.0,
    output_kind="probabilities",
    transform_input=True,
    precision="fp16",
    checkpoint_name="model.pth",
    checkpoint_sha256="ab" * 32,
    variant={"parent_sha256": "cd" * 32},
)


def test_json_round_trip_reads_every_field():
    defaults = ModelSpec(labels=("a",))
    assert all(getattr(FULL, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(ModelSpec))
    assert ModelSpec.from_json(FULL.to_json()) == FULL


def test_only_labels_are_required_and_absent_keys_take_the_defaults():
    assert ModelSpec.from_json(json.dumps({"labels": ["a", "b"]})) == ModelSpec(labels=("a", "b"))
    partial = ModelSpec.from_json(json.dumps({"labels": ["a"], "crop_size": 160, "future_key": 1}))
    assert partial.crop_size == 160 and partial.mean == ModelSpec(labels=("a",)).mean
    with pytest.raises(ModelSpecError, match=r"m\.onnx: googlenet_deploy\.spec metadata has no labels"):
        ModelSpec.from_json(json.dumps({"crop_size": 224}), source="m.onnx")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("crop_size", "224"),
        ("resize_size", 0),
        ("resize_size", True),
        ("labels", "cat"),
        ("labels", ["cat", 3]),
        ("labels", []),
        ("mean", [0.5, 0.5]),
        ("std", [0.2, "0.2", 0.2]),
        ("scale", 0),
        ("scale", True),
        ("output_kind", "probs"),
        ("layout", None),
        ("transform_input", "yes"),
        ("checkpoint_sha256", 12),
    ],
)
def test_a_wrongly_typed_value_is_named(key, value):
    data = {**json.loads(FULL.to_json()), key: value}
    with pytest.raises(ModelSpecError, match=rf"^m\.onnx: googlenet_deploy\.spec metadata has {key}=.*, expected ") as info:
        ModelSpec.from_json(json.dumps(data), source="m.onnx")
    assert "\n" not in str(info.value) and str(info.value).endswith("re-export the model")


def test_every_field_is_type_checked():
    """A string where a non-string field belongs is refused for each field: none slips through unchecked."""
    for field in dataclasses.fields(ModelSpec):
        if field.type != "str":
            with pytest.raises(ModelSpecError, match=f"has {field.name}="):
                ModelSpec.from_json(json.dumps({"labels": ["a"], field.name: "x"}))


def test_not_json_is_a_model_spec_error():
    with pytest.raises(ModelSpecError, match="metadata is not JSON"):
        ModelSpec.from_json("{", source="m.onnx")


def test_require_model_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelSpecError, match=r"absent\.onnx not found; export one with `python -m converters\.export"):
        require_model(tmp_path / "absent.onnx")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert require_model(str(tmp_path / "m.onnx")) == tmp_path / "m.onnx"
