"""The two models ``deploy.serve`` puts behind KServe's Open Inference Protocol (v2).

``googlenet``        FP32 ``input`` [N, 3, H, W]  ->  FP32 ``logits`` [N, classes], the raw graph
``googlenet-image``  BYTES ``image`` [N]          ->  top-k per image, preprocessing included:
                     ``label`` BYTES [N, k], ``probability`` FP32 [N, k], ``class_index`` INT64 [N, k]
                     and ``error`` BYTES [N] ("" when the image was classified)

Both share one :class:`Engine` (one runtime session). Decoding and inference run in the
event loop's thread pool, so a long call never blocks the REST and gRPC servers that
share the loop. Each model's ``check`` reads only a request's header
(input names, shapes, datatypes, parameters) and bounds the batch; then the data must
hold exactly the declared elements, checked before any is converted: a request declaring
one image but carrying 16 million elements is refused after reading one length.
A request that breaks a rule raises kserve's ``InvalidInput``, which the server answers
with HTTP 400 or gRPC INVALID_ARGUMENT and the message. One unreadable image is an
``error`` entry for that image; the others in the request are still classified.

An image element is the encoded file: raw bytes (gRPC, or REST binary) or base64 text
(REST JSON; kserve cannot carry raw binary BYTES over REST JSON). Raw image formats all
start with a byte outside the base64 alphabet, so the two cannot be confused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
import re
import struct
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from deploy.budget import Budget
from deploy.kserve_import import command_line_hidden

with command_line_hidden():
    from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import to_http_parameters

from runtimes.classifier import Classifier
from runtimes.errors import first_line
from runtimes.spec import ModelSpec

TENSOR_MODEL = "googlenet"
IMAGE_MODEL = "googlenet-image"
IMAGE_INPUT = "image"
DEFAULT_TOPK = 5
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_STARTS_BASE64 = re.compile(rb"\s*[A-Za-z0-9+/]")  # raw JPEG, PNG, GIF, BMP, TIFF and WebP do not


class Engine:
    """One loaded model shared by both served models; built lazily so it can travel to a Ray replica.

    ``inflight_pixels`` bounds the images that decode at once, over every request of this
    process (``deploy.budget``): an image waits up to ``wait_s`` for its share, then its
    request is refused with ServerBusy (HTTP 503). None: no bound but the per-image ``max_pixels``.
    """

    def __init__(self, model: str | Path, provider: str = "cpu", *, spec: ModelSpec | None = None,
                 max_batch: int, max_pixels: int | None = None, inflight_pixels: int | None = None,
                 wait_s: float = 10.0, options: dict[str, Any] | None = None) -> None:
        self.model, self.provider, self.max_batch, self.max_pixels = Path(model), provider, max_batch, max_pixels
        self.inflight_pixels, self.wait_s = inflight_pixels, wait_s
        self._spec, self._options = spec, dict(options or {})
        self._classifier: Classifier | None = None
        self._lock = threading.Lock()
        self.pixels = self._pixel_budget()

    def _pixel_budget(self) -> Budget | None:
        if self.inflight_pixels is None:
            return None
        return Budget(self.inflight_pixels, unit="pixels", flag="--max-inflight-pixels", wait_s=self.wait_s)

    def _admit(self, cost: int, name: str):
        return self.pixels.hold(cost, f"image {name}")

    @property
    def classifier(self) -> Classifier:
        if self._classifier is not None:  # every request: no lock once loaded
            return self._classifier
        with self._lock:
            if self._classifier is None:
                self._classifier = Classifier(self.model, self.provider, batch_size=self.max_batch, spec=self._spec,
                                              workers=2, max_pixels=self.max_pixels,
                                              admit=self._admit if self.pixels else None, **self._options)
            return self._classifier

    @property
    def spec(self) -> ModelSpec:
        """The model's spec; kept after :meth:`close`, so a Ray driver can give the models' types without a session."""
        if self._spec is None:
            self._spec = self.classifier.spec
        return self._spec

    def __getstate__(self) -> dict[str, Any]:  # a runtime session cannot be pickled: the replica loads its own
        return {**self.__dict__, "_classifier": None, "_lock": None, "pixels": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())
        self.pixels = self._pixel_budget()  # a replica process bounds its own decodes

    def for_replicas(self, replicas: int) -> "Engine":
        """An unloaded copy for one of ``replicas`` replicas on this machine, sharing its CPUs between them."""
        from runtimes.adapters import runner_class

        options = dict(self._options)
        if "threads" in runner_class(self.provider).OPTIONS:
            share = max(1, (os.cpu_count() or 1) // replicas)  # a tuned or given count is capped at the share too
            options["threads"] = min(options.get("threads") or share, share)
        # The pixel budget is the machine's: each replica decodes within its share.
        pixels = self.inflight_pixels and max(1, self.inflight_pixels // replicas)
        return Engine(self.model, self.provider, spec=self._spec, max_batch=self.max_batch,
                      max_pixels=self.max_pixels, inflight_pixels=pixels, wait_s=self.wait_s, options=options)

    def close(self) -> None:
        with self._lock:
            if self._classifier is not None:
                self._classifier.close()
                self._classifier = None


def _input(request: InferRequest, name: str, datatype: str) -> InferInput:
    if len(request.inputs) != 1 or request.inputs[0].name != name:
        got = ", ".join(i.name for i in request.inputs) or "none"
        raise InvalidInput(f"model {request.model_name!r} takes one input named {name!r}; got: {got}")
    tensor = request.inputs[0]
    if tensor.datatype != datatype:
        raise InvalidInput(f"input {name!r} must be {datatype}, got {tensor.datatype}")
    return tensor


def _mismatch(tensor: InferInput, detail: str) -> InvalidInput:
    return InvalidInput(f"input {tensor.name!r}: data does not match shape {list(tensor.shape)}: {detail}")


def _as_numpy(tensor: InferInput) -> np.ndarray:
    """The tensor's values: JSON or gRPC lists of exactly the declared count, or a raw buffer.

    ``_raw_data``: kserve 0.21 has no public name for a binary input's bytes.
    """
    count = math.prod(tensor.shape)
    data = tensor.data
    if tensor._raw_data is None and data and not isinstance(data[0], list) and len(data) != count:
        raise _mismatch(tensor, f"{count} elements declared, {len(data)} sent")  # nested lists: numpy says
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise _mismatch(tensor, first_line(exc)) from None


def _fp32_values(tensor: InferInput) -> np.ndarray:
    """An FP32 tensor as an array of finite numbers; raw data must be exactly 4 bytes per declared
    element, and JSON data numbers, not strings or booleans (numpy would read "nan" as NaN, and
    the answer would be null logits)."""
    raw = tensor._raw_data
    if raw is not None and len(raw) != 4 * math.prod(tensor.shape):
        raise _mismatch(tensor, f"FP32 needs {4 * math.prod(tensor.shape)} bytes, the request carries {len(raw)}")
    if raw is None and tensor.data is not None and len(tensor.data):
        kind = np.asarray(tensor.data).dtype.kind  # a string anywhere makes every element one
        if kind in "fiu" and any(type(v) is bool for v in np.asarray(tensor.data, dtype=object).ravel()):
            kind = "b"  # JSON true among numbers: numpy reads it as 1.0
        if kind not in "fiu":
            what = {"U": "strings", "S": "strings", "b": "booleans"}.get(kind, "values that are not all numbers")
            raise InvalidInput(f"input {tensor.name!r}: FP32 data must be numbers; the request sends {what}")
    values = np.ascontiguousarray(_as_numpy(tensor), dtype=np.float32)
    if not np.isfinite(values).all():
        raise InvalidInput(f"input {tensor.name!r}: FP32 data holds NaN or Inf; send finite numbers")
    return values


def split_bytes(raw: bytes | memoryview, count: int) -> list[bytes | memoryview]:
    """The ``count`` elements of a raw BYTES tensor (each a little-endian uint32 length, then the bytes).

    Only ``count`` lengths are read, so a body of millions of empty elements costs
    nothing; it is refused because bytes are left after the declared elements.
    """
    elements, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ValueError(f"{count} elements declared, the data ends in element {index}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ValueError(f"element {index} declares {size} bytes, {len(raw) - offset} are left")
        elements.append(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise ValueError(f"{count} elements declared, {len(raw) - offset} more bytes follow them")
    return elements


def _byte_elements(tensor: InferInput) -> list[Any]:
    """A BYTES tensor's elements in row-major order, exactly as many as its shape declares."""
    raw = tensor._raw_data
    data = tensor.data
    if raw is None and isinstance(data, list) and len(data) == math.prod(tensor.shape) == 1 \
            and isinstance(data[0], bytearray):
        return data  # a plain body (plain_image_request)
    if raw is None:
        return list(_as_numpy(tensor).reshape(-1))
    try:
        return split_bytes(raw, math.prod(tensor.shape))
    except ValueError as exc:
        raise _mismatch(tensor, str(exc)) from None


def _check_batch(n: int, max_batch: int) -> None:
    if not 1 <= n <= max_batch:
        raise InvalidInput(f"batch of {n}; this server takes 1 to {max_batch} per request (--max-batch)")


def _request_int(request: InferRequest, key: str, default: int) -> int:
    value = to_http_parameters(request.parameters or {}).get(key, default)  # gRPC's InferParameter too
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter {key!r} must be an integer, got {value!r}")
    return value


def image_bytes(element: Any, index: int) -> bytes | bytearray:
    """The encoded image in one BYTES element: raw bytes as they are, base64 text decoded.

    Anything but bytes or text (a JSON number, say: ``bytes(10**9)`` would allocate a
    gigabyte) is refused.
    """
    if isinstance(element, str):
        data = element.encode("utf-8", "surrogateescape")
    elif isinstance(element, (bytes, bytearray)):
        data = element  # a bytearray (a plain body) is decoded in place
    elif isinstance(element, memoryview):
        data = bytes(element)
    else:
        raise InvalidInput(f"input {IMAGE_INPUT!r} element {index} is {type(element).__name__}; "
                           "send each image as bytes (gRPC, REST binary) or base64 text (REST JSON)")
    if not _STARTS_BASE64.match(data):
        return data  # raw bytes: no copy without whitespace to scan
    stripped = b"".join(data.split())
    if _BASE64.fullmatch(stripped):
        try:
            return base64.b64decode(stripped, validate=True)
        except binascii.Error:
            pass  # not base64 after all: let the decoder say what it is
    return data


def plain_image_request(body: bytes | bytearray) -> InferRequest:
    """A ``googlenet-image`` request for one image sent as the whole body (``curl -T cat.jpg``).

    The body is the element as it is, not copied: :func:`_byte_elements` hands a list of
    bytes-like elements over without numpy (which would take a bytearray for a sequence
    of numbers), and the decoder reads a bytearray in place.
    """
    return InferRequest(IMAGE_MODEL, [InferInput(IMAGE_INPUT, [1], "BYTES", data=[body])])


def top_classes(response: InferResponse) -> dict[str, float]:
    """TorchServe's answer for one image from a ``googlenet-image`` response: ``{label: probability}``, best first.

    An image that could not be classified raises InvalidInput with its error.
    """
    outputs = {o.name: o.data for o in response.outputs}
    if outputs["error"][0]:
        raise InvalidInput(outputs["error"][0])
    return dict(zip(outputs["label"], outputs["probability"]))


class _ServedModel(Model):
    NAME = ""

    def __init__(self, engine: Engine) -> None:
        super().__init__(self.NAME)
        # Not ``self.engine``: kserve's Model uses that name for a flag that makes the
        # server call start_engine() and stop_engine().
        self.backend = engine

    def load(self) -> bool:
        self.backend.classifier  # noqa: B018 - build the session now, not on the first request
        self.ready = True
        return True


class TensorModel(_ServedModel):
    """``googlenet``: a preprocessed FP32 batch in, the graph's logits out."""

    NAME = TENSOR_MODEL

    def get_input_types(self) -> list[dict]:
        spec = self.backend.spec
        return [{"name": spec.input_name, "datatype": "FP32", "shape": [-1, 3, spec.crop_size, spec.crop_size]}]

    def get_output_types(self) -> list[dict]:
        spec = self.backend.spec
        return [{"name": spec.output_name, "datatype": "FP32", "shape": [-1, spec.num_classes]}]

    def check(self, request: InferRequest) -> InferInput:
        """The request's one input, its header checked (InvalidInput if it breaks a rule); no data is read."""
        spec = self.backend.spec
        tensor = _input(request, spec.input_name, "FP32")
        size = spec.crop_size
        if len(tensor.shape) != 4 or list(tensor.shape[1:]) != [3, size, size]:
            raise InvalidInput(f"input {spec.input_name!r} must have shape [N, 3, {size}, {size}], got {list(tensor.shape)}")
        _check_batch(tensor.shape[0], self.backend.max_batch)
        return tensor

    def _logits(self, tensor: InferInput) -> np.ndarray:
        return self.backend.classifier.runner.infer(_fp32_values(tensor))

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        spec = self.backend.spec
        logits = await asyncio.to_thread(self._logits, self.check(payload))
        out = InferOutput(spec.output_name, list(logits.shape), "FP32")
        out.set_data_from_numpy(np.asarray(logits, dtype=np.float32), binary_data=payload.use_binary_outputs)
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, [out], use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


class ImageModel(_ServedModel):
    """``googlenet-image``: encoded images in, each image's top-k labels (or its error) out."""

    NAME = IMAGE_MODEL

    def get_input_types(self) -> list[dict]:
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "probability", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "error", "datatype": "BYTES", "shape": [-1]},
        ]

    def check(self, request: InferRequest) -> tuple[InferInput, int]:
        """The request's one input and its topk, the header checked (InvalidInput if it breaks a rule); no data is read."""
        tensor = _input(request, IMAGE_INPUT, "BYTES")
        shape = list(tensor.shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], one encoded image each; got {shape}")
        _check_batch(shape[0], self.backend.max_batch)
        k = _request_int(request, "topk", DEFAULT_TOPK)
        classes = self.backend.spec.num_classes
        if not 1 <= k <= classes:
            raise InvalidInput(f"parameter 'topk' must be 1 to {classes}, got {k}")
        return tensor, k

    def _predict(self, tensor: InferInput, k: int) -> list:
        images = [image_bytes(e, i) for i, e in enumerate(_byte_elements(tensor))]
        return self.backend.classifier.predict(images, k)

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        tensor, k = self.check(payload)
        predictions = await asyncio.to_thread(self._predict, tensor, k)
        n = len(predictions)
        labels = np.full((n, k), b"", dtype=np.object_)
        probs = np.zeros((n, k), dtype=np.float32)
        indices = np.full((n, k), -1, dtype=np.int64)
        errors = np.array([(p.error or "").encode() for p in predictions], dtype=np.object_)
        for row, p in enumerate(predictions):
            for col, score in enumerate(p.topk):
                labels[row, col], probs[row, col], indices[row, col] = score.label.encode(), score.prob, score.index
        binary = payload.use_binary_outputs
        outputs = []
        for name, array, datatype in (("label", labels, "BYTES"), ("probability", probs, "FP32"),
                                      ("class_index", indices, "INT64"), ("error", errors, "BYTES")):
            out = InferOutput(name, list(array.shape), datatype)
            out.set_data_from_numpy(array, binary_data=binary)
            outputs.append(out)
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, outputs, use_binary_outputs=binary,
                             requested_outputs=payload.request_outputs)
