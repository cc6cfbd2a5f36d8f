"""Checkpoint intake: safe loading, unwrapping, layout detection, aux stripping.

Only ``torch.load(weights_only=True)`` and safetensors are used, so a checkpoint can
carry tensors and plain containers but never code. A file that needs arbitrary pickle
globals is refused before any of its code runs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from converters.errors import CheckpointError
from converters.googlenet import AUX_PREFIXES, LAYOUTS, GoogLeNet
from runtimes.errors import first_line

# Wrapper keys trainers put the weights under, most specific first. EMA weights are
# taken only when no plain weights exist (pass an EMA-only file to export those).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema", "model_ema", "state_dict_ema", "ema_state_dict")
_ANCHOR = "conv1.conv.weight"  # present in both layouts; locates any key prefix
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """An aux-free state dict plus what was learned about it."""

    path: Path
    sha256: str
    layout: str
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    aux_keys_stripped: int
    aux_params_stripped: int
    wrapper: str  # e.g. "model", "state_dict > module." or "raw"
    # Class names saved beside the weights ("classes", "class_names", "labels", or an
    # ImageFolder "class_to_idx"), with the key they came from; () and "" when there are none.
    classes: tuple[str, ...] = ()
    classes_key: str = ""


def _read(path: Path, data: bytes) -> object:
    """Deserialize ``data`` (the bytes of ``path``) without ever running pickle code."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            detail = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: loading it needs arbitrary pickle code{detail}, and none of it was run; "
                "if you trust its source, re-save just the state_dict or as .safetensors"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}); re-save or re-download it") from None
    except Exception as exc:  # garbage bytes surface as almost any exception type
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({first_line(exc)}); re-save or re-download it"
        ) from None


CLASS_KEYS = ("classes", "class_names", "labels", "class_to_idx")


def _classes(obj: object, path: Path) -> tuple[tuple[str, ...], str]:
    """The class names a training script saved at the checkpoint's top level, and their key.

    A list of strings, or a name -> index dict (torchvision's ImageFolder.class_to_idx)
    that numbers the classes 0..N-1; anything else under those keys is not class names.
    """
    if not isinstance(obj, dict):
        return (), ""
    for key in CLASS_KEYS:
        value = obj.get(key)
        if value is None or _is_state_dict(value):
            continue
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(i, int) for k, i in value.items()):
            if sorted(value.values()) != list(range(len(value))):
                raise CheckpointError(f"{path}: {key!r} does not number its classes 0..{len(value) - 1}")
            names = tuple(sorted(value, key=value.__getitem__))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(n, str) for n in value):
            names = tuple(value)
        else:
            continue
        return names, key
    return (), ""


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside common training-checkpoint wrappers."""
    trail = []
    for _ in range(4):  # wrappers nest at most a few levels deep
        if _is_state_dict(obj):
            break
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a state dict or a dict wrapping one, found {type(obj).__name__}")
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise CheckpointError(
                f"{path}: no weights found: top-level keys are [{keys}], none a state dict "
                f"or one of the known wrappers ({', '.join(WRAPPER_KEYS)})"
            )
        trail.append(key)
        obj = obj[key]
    else:
        raise CheckpointError(f"{path}: weights nested too deeply under {' > '.join(trail)}")

    # Strip whatever prefix sits in front of the model's own names: `module.`
    # (DataParallel), `_orig_mod.` (torch.compile), `model.` (Lightning), or a chain.
    anchor = next((k for k in obj if k.endswith(_ANCHOR)), None)
    if anchor is None:
        raise CheckpointError(
            f"{path}: not a GoogLeNet checkpoint: no '{_ANCHOR}' among its {len(obj)} tensors "
            f"(first: {', '.join(list(obj)[:5])})"
        )
    prefix = anchor[: -len(_ANCHOR)]
    if prefix:
        if not all(k.startswith(prefix) for k in obj):
            raise CheckpointError(f"{path}: mixed key prefixes; expected every key to start with '{prefix}'")
        obj = {k[len(prefix):]: v for k, v in obj.items()}
        trail.append(prefix)
    return obj, " > ".join(trail) or "raw"


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """'torchvision' (BatchNorm, 3x3 "5x5" branch) or 'paper' (biased convs, true 5x5)."""
    has_bn = "conv1.bn.running_mean" in state_dict
    has_bias = "conv1.conv.bias" in state_dict
    k5 = state_dict.get("inception3a.branch3.1.conv.weight")
    k5 = k5.shape[-1] if k5 is not None else None
    if has_bn and not has_bias and k5 in (3, None):
        return "torchvision"
    if has_bias and not has_bn and k5 in (5, None):
        return "paper"
    raise CheckpointError(
        f"cannot tell the layout: conv1 batchnorm={has_bn}, conv1 bias={has_bias}, "
        f"inception3a 5x5-branch kernel={k5}; pass --layout {' or '.join(LAYOUTS)}"
    )


def _num_classes(state_dict: dict[str, torch.Tensor], path: Path) -> int:
    fc = state_dict.get("fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != 1024:
        shape = tuple(fc.shape) if fc is not None else "missing"
        raise CheckpointError(f"{path}: fc.weight should be [num_classes, 1024], found {shape}")
    return int(fc.shape[0])


def load_checkpoint(path: str | Path, layout: str | None = None) -> LoadedCheckpoint:
    """Load a GoogLeNet checkpoint safely and strip its aux heads.

    ``layout`` overrides detection. Raises :class:`CheckpointError` on anything wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if layout is not None and layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    top = _read(path, data)
    state_dict, wrapper = _unwrap(top, path)
    layout = layout or detect_layout(state_dict)
    aux = {k: v for k, v in state_dict.items() if k.startswith(AUX_PREFIXES)}
    main = {k: v for k, v in state_dict.items() if k not in aux}
    aux_params = sum(v.numel() for k, v in aux.items() if not k.endswith(_BUFFER_SUFFIXES))
    num_classes = _num_classes(main, path)
    classes, classes_key = _classes(top, path)
    return LoadedCheckpoint(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        layout=layout,
        num_classes=num_classes,
        state_dict=main,
        aux_keys_stripped=len(aux),
        aux_params_stripped=aux_params,
        wrapper=wrapper,
        classes=classes,
        classes_key=classes_key,
    )


def _mismatch_report(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{title}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def build_model(ckpt: LoadedCheckpoint, transform_input: bool = False) -> GoogLeNet:
    """An eval-mode, aux-free GoogLeNet with the checkpoint's weights loaded strictly."""
    model = GoogLeNet(ckpt.layout, num_classes=ckpt.num_classes, aux_logits=False, transform_input=transform_input)
    problems = _mismatch_report(model, ckpt.state_dict)
    if problems:
        raise CheckpointError(f"{ckpt.path}: does not fit the {ckpt.layout} layout: {problems}")
    model.load_state_dict(ckpt.state_dict, strict=True)
    for tensor in ckpt.state_dict.values():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{ckpt.path}: contains NaN or infinite weights; the training run diverged")
    return model.eval()
