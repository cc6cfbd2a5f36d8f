"""A REST v2 infer body decoded into kserve's InferRequest, off the event loop.

A body is the binary-tensor extension when it has an Inference-Header-Content-Length
header, one image for ``googlenet-image`` when its Content-Type is ``image/*`` or
``application/octet-stream`` (or it came to TorchServe's ``/predictions`` route), and JSON
otherwise (:func:`body_kind`). kserve's own route parses JSON and converts binary inputs
to Python lists on the event loop; :func:`decode_rest` runs in a worker thread and keeps
binary inputs as views of the body.
"""

from __future__ import annotations

import orjson
import pydantic

from deploy.kserve_import import command_line_hidden
from deploy.kserve_models import IMAGE_MODEL, plain_image_request

with command_line_hidden():
    from fastapi import Request
    from kserve import InferInput, InferRequest
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import RequestedOutput, to_np_dtype
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

BINARY_HEADER = "inference-header-content-length"
PLAIN_TYPES = ("image/", "application/octet-stream")  # a body of one image, without the binary header


def body_kind(headers: dict[str, str], path: str = "") -> str:
    """"binary" (the binary-tensor extension), "image" (one image as the whole body: an image or
    octet-stream Content-Type, or TorchServe's ``/predictions`` route) or "json"."""
    if BINARY_HEADER in headers:
        return "binary"
    if path.startswith("/predictions/") or headers.get("content-type", "").lower().startswith(PLAIN_TYPES):
        return "image"
    return "json"


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(value, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {value!r:.80}")
    return value


def _binary_input(spec, body: bytearray, offset: int) -> tuple[InferInput, memoryview | None]:
    """One input of a binary-extension header, with a view of its raw bytes from ``offset`` (None: JSON ``data``)."""
    name = spec["name"]
    parameters = dict(_mapping(spec.get("parameters"), f"input {name!r} parameters"))
    datatype = spec["datatype"]
    if not isinstance(datatype, str) or to_np_dtype(datatype.upper()) is None:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    tensor = InferInput(name, _shape(spec["shape"], name), datatype, parameters=parameters)
    if "data" in spec:
        if not isinstance(spec["data"], list):
            raise InvalidInput(f"input {name!r}: data must be a JSON array, got {type(spec['data']).__name__}")
        tensor.data = spec["data"]
        return tensor, None
    size = parameters.pop("binary_data_size", None)
    if not isinstance(size, int) or size < 0 or offset + size > len(body):
        raise InvalidInput(f"input {name!r} declares {size!r} bytes of binary data; the body has {len(body) - offset} left")
    return tensor, memoryview(body)[offset:offset + size]


def decode_binary(body: bytearray, declared: str, model_name: str) -> InferRequest:
    """A binary-extension request, each input a view of its bytes in the body.

    kserve 0.21 turns each binary input into a JSON-style Python list: 70 ms for one
    224x224 image, and a 500 for a BYTES input that is not UTF-8 (an encoded image).
    Here a binary input keeps its bytes, as a gRPC request's do, not even copied (a
    64 MB copy holds the interpreter for 40 ms), and the model checks their size
    against the declared shape before reading them.
    """
    if not declared.isdigit() or int(declared) > len(body):
        raise InvalidInput(f"header {BINARY_HEADER}: {declared!r} is not a length within the {len(body)}-byte body")
    offset = int(declared)
    try:
        header = _mapping(orjson.loads(body[:offset]), "the binary inference request header")
        inputs, raw = [], []
        for spec in header["inputs"]:
            tensor, data = _binary_input(spec, body, offset)
            if data is not None:
                raw.append(data)
                offset += len(data)
            inputs.append(tensor)
        outputs = [RequestedOutput(o["name"], _mapping(o.get("parameters"), "output parameters"))
                   for o in header.get("outputs") or []]
        parameters = _mapping(header.get("parameters"), "request parameters")
        request_id = header.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise TypeError(f"id must be a string, got {type(request_id).__name__}")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"malformed binary inference request header: {type(exc).__name__}: {exc}") from None
    if offset != len(body):
        raise InvalidInput(f"the body has {len(body) - offset} bytes after the declared binary data")
    if raw and len(raw) != len(inputs):
        raise InvalidInput("send every input as binary data, or none")
    return InferRequest(model_name, inputs, request_id=request_id, raw_inputs=raw or None,
                        parameters=parameters, request_outputs=outputs or None)


def decode_json(body: bytearray, model_name: str) -> InferRequest:
    """A JSON request, validated with kserve's own schema; the first problem in one line."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        hint = ""
        if error["type"] == "json_invalid" and model_name == IMAGE_MODEL:
            hint = "; to send one image as the body, give it Content-Type image/* or application/octet-stream"
        raise InvalidInput(f"malformed JSON inference request: {where + ': ' if where else ''}{error['msg']}{hint}") from None
    return InferRequest.from_inference_request(request, model_name)


def decode_rest(body: bytearray, headers: dict[str, str], model_name: str) -> InferRequest:
    """A REST v2 infer body as kserve's InferRequest; run in a worker thread, off the event loop."""
    kind = body_kind(headers)
    if kind == "binary":
        return decode_binary(body, headers[BINARY_HEADER], model_name)
    if kind == "image":
        if model_name != IMAGE_MODEL:
            raise InvalidInput(f"a body of raw bytes without the {BINARY_HEADER} header is one image, for model "
                               f"{IMAGE_MODEL!r}; send {model_name!r} a JSON or binary-extension request")
        return plain_image_request(body)
    return decode_json(body, model_name)


async def read_body(request: Request) -> bytearray:
    """The body in one buffer, sized from Content-Length when the request declares it.

    Starlette's ``body()`` joins the chunks at the end, one more copy of the whole body
    that holds the interpreter (60 ms for 64 MB) while health checks wait; a buffer grown
    chunk by chunk may briefly hold two copies as it is moved. A declared length (already
    checked against the server's limit) is filled in place.
    """
    declared = request.headers.get("content-length", "")
    body = bytearray(int(declared)) if declared.isdigit() else bytearray()
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end <= len(body):
            body[filled:end] = chunk
        else:
            del body[filled:]
            body += chunk
        filled = end
    del body[filled:]  # a body shorter than declared: uvicorn reports it, but keep only what came
    return body
