"""An ONNX model's graph inputs and outputs, and the check that its spec fits them.

Every runner runs :func:`check_spec` when it loads, so a spec that names another input,
another output, another input size or another number of classes than the graph is
one line naming both sides, on every runtime (ORT would fail at the first inference
with a long traceback; OpenCV and OpenVINO would ignore the names). A device installs
no ``onnx`` package, so :func:`read_graph_io` reads the few fields it needs straight
from the protobuf wire format: the graph's inputs, outputs and initializer names; the
weights and nodes are skipped by their length, not parsed.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

from runtimes.errors import ModelSpecError
from runtimes.spec import ModelSpec

FLOAT = 1  # onnx.TensorProto.FLOAT: the only input type the preprocessing produces
_ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 2: "uint8", 3: "int8", 6: "int32", 7: "int64"}


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: its name, element type and dims (a size, or a free dim's name)."""

    name: str
    elem_type: int
    dims: tuple[int | str, ...] | None  # None: the graph does not say its rank

    def describe(self) -> str:
        """E.g. "'data_0' float32 [1, 3, 224, 224]"."""
        kind = _ELEM_TYPES.get(self.elem_type, f"type {self.elem_type}")
        shape = "[" + ", ".join(map(str, self.dims)) + "]" if self.dims is not None else "of unknown shape"
        return f"{self.name!r} {kind} {shape}"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[Tensor, ...]  # without initializers, which old IR versions list as inputs too
    outputs: tuple[Tensor, ...]
    metadata: dict[str, str]  # ModelProto.metadata_props, where the spec lives

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph's only input is fixed to (1 in many model zoos), or None if free."""
        dims = self.inputs[0].dims if len(self.inputs) == 1 else None
        return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def read_graph_io(model: str | Path | bytes) -> GraphIO:
    """The inputs, outputs and metadata of an ONNX model, from its file or its bytes.

    A file is memory-mapped: only the pages holding field headers are read (the weights
    are skipped): 1-6 ms for the demo model, where reading all its 24 MB takes 36.
    """
    return _parse(model, _graph_io)


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, int | str | tuple[int, ...]]  # the int, ints and string ones; float ones are left out


@dataclass(frozen=True)
class Graph:
    io: GraphIO
    nodes: tuple[Node, ...]  # in the file's order: topological as ONNX asks, unless a converter appended some (roofline sorts)
    initializers: dict[str, tuple[int, ...]]  # name -> dims; the weights themselves are not read


def read_graph(model: str | Path | bytes) -> Graph:
    """:func:`read_graph_io` plus the nodes and the initializers' dims, for counting a model's
    FLOPs without the ``onnx`` package (``runtimes.roofline``). Weights are skipped by length."""
    return _parse(model, _graph)


def _parse(model: str | Path | bytes, parse):
    """``parse`` of the model's bytes (a file is memory-mapped); a ModelSpecError if unreadable."""
    source = "model bytes" if isinstance(model, bytes) else str(model)
    try:
        if isinstance(model, bytes):
            return parse(model)
        with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return parse(mapped)
    except OSError as exc:
        raise ModelSpecError(f"cannot read {source}: {exc.strerror or exc}") from None
    except (IndexError, ValueError, UnicodeDecodeError, TypeError) as exc:  # TypeError: a field of another wire type
        raise ModelSpecError(f"{source}: not a readable ONNX model ({exc or type(exc).__name__})") from None


def _graph_io(buf: bytes | mmap.mmap) -> GraphIO:
    graph, metadata = None, {}
    for number, value in _fields(buf, (0, len(buf))):
        if number == 7:  # ModelProto.graph
            graph = value
        elif number == 14:  # ModelProto.metadata_props: StringStringEntryProto key (1), value (2)
            metadata[_string(buf, value, 1)] = _string(buf, value, 2)
    if graph is None:
        raise ValueError("no graph")
    fields = list(_fields(buf, graph))
    initializers = {_string(buf, v, 8) for n, v in fields if n == 5}  # GraphProto.initializer, TensorProto.name
    inputs = [_tensor(buf, v) for n, v in fields if n == 11]
    outputs = [_tensor(buf, v) for n, v in fields if n == 12]
    return GraphIO(tuple(t for t in inputs if t.name not in initializers), tuple(outputs), metadata)


def _graph(buf: bytes | mmap.mmap) -> Graph:
    graph = next((v for n, v in _fields(buf, (0, len(buf))) if n == 7), None)  # ModelProto.graph
    fields = list(_fields(buf, graph)) if graph else []
    nodes = tuple(_node_read(buf, v) for n, v in fields if n == 1)  # GraphProto.node
    initializers = {}
    for tensor in (v for n, v in fields if n == 5):  # GraphProto.initializer: TensorProto dims (1), name (8)
        initializers[_string(buf, tensor, 8)] = _ints(buf, [v for n, v in _fields(buf, tensor) if n == 1])
    return Graph(_graph_io(buf), nodes, initializers)


def _node_read(buf: bytes | mmap.mmap, node: tuple[int, int]) -> Node:
    """NodeProto: input (1), output (2), op_type (4), attribute (5)."""
    fields = list(_fields(buf, node))
    text = {n: [_text(buf, v) for m, v in fields if m == n] for n in (1, 2, 4)}
    attributes = {}
    for attribute in (v for n, v in fields if n == 5):
        # AttributeProto: name (1), i (3), s (4), ints (8); the float (2) and tensor (5) kinds are not needed
        values = list(_fields(buf, attribute))
        ints = [v for n, v in values if n == 8]
        one = [_ints(buf, [v])[0] for n, v in values if n == 3] + [_text(buf, v) for n, v in values if n == 4]
        if ints or one:
            attributes[_string(buf, attribute, 1)] = _ints(buf, ints) if ints else one[0]
    return Node(text[4][0] if text[4] else "", tuple(text[1]), tuple(text[2]), attributes)


def _text(buf: bytes | mmap.mmap, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode()


def _ints(buf: bytes | mmap.mmap, values: list) -> tuple[int, ...]:
    """A repeated int64 field's values, each a varint or a span of packed varints, as signed ints."""
    found = []
    for value in values:
        if isinstance(value, tuple):
            pos, end = value
            while pos < end:
                number, pos = _varint(buf, pos)
                found.append(number)
        else:
            found.append(value)
    return tuple(map(_signed, found))


def _signed(value: int) -> int:
    """An int64 read as a varint (negative ones come as 64-bit two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def check_spec(spec: ModelSpec, graph: GraphIO, source: str, fix: str = "fix the spec with `python -m converters.annotate`") -> None:
    """Raise ModelSpecError, one line naming both sides and ending in ``fix``, where ``spec`` does not fit ``graph``."""

    def listed(tensors: tuple[Tensor, ...], what: str) -> str:
        if len(tensors) == 1:
            return f"the graph's {what} is {tensors[0].describe()}"
        return f"the graph has {len(tensors)} {what}s ({', '.join(repr(t.name) for t in tensors) or 'none'}); one is supported"

    if [t.name for t in graph.inputs] != [spec.input_name]:
        raise ModelSpecError(f"{source}: the spec's input is {spec.input_name!r}, but {listed(graph.inputs, 'input')}; {fix}")
    if [t.name for t in graph.outputs] != [spec.output_name]:
        raise ModelSpecError(f"{source}: the spec's output is {spec.output_name!r}, but {listed(graph.outputs, 'output')}; {fix}")
    (inp,), (out,) = graph.inputs, graph.outputs
    wanted = (3, spec.crop_size, spec.crop_size)
    if inp.elem_type != FLOAT or (inp.dims is not None and (len(inp.dims) != 4 or not _fits(inp.dims[1:], wanted))):
        raise ModelSpecError(
            f"{source}: the spec (crop_size {spec.crop_size}) feeds float32 [N, 3, {spec.crop_size}, {spec.crop_size}], "
            f"but the graph's input is {inp.describe()}; {fix}"
        )
    if out.dims is not None and (len(out.dims) != 2 or not _fits(out.dims[1:], (spec.num_classes,))):
        raise ModelSpecError(
            f"{source}: the spec has {spec.num_classes} labels, but the graph's output is {out.describe()}; {fix}"
        )


def _fits(dims: tuple[int | str, ...], wanted: tuple[int, ...]) -> bool:
    """Every fixed size in ``dims`` equals the wanted one; a free dim fits anything."""
    return all(not isinstance(d, int) or d <= 0 or d == w for d, w in zip(dims, wanted))


# Protobuf wire format: each field is a varint key (number << 3 | wire type), then a
# varint (type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5).
# Messages are (start, end) offsets into the buffer: slices of a memory map would have
# to be released before it can close.
def _varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes | mmap.mmap, span: tuple[int, int]):
    """(field number, value) for each field of the message at ``span``: an int, or the span of its bytes."""
    pos, end = span
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated")
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        yield key >> 3, value


def _string(buf: bytes | mmap.mmap, message: tuple[int, int], number: int) -> str:
    return _text(buf, next((v for n, v in _fields(buf, message) if n == number), (0, 0)))


def _tensor(buf: bytes | mmap.mmap, value_info: tuple[int, int]) -> Tensor:
    """A ValueInfoProto: name (1), type (2) -> tensor_type (1) -> elem_type (1), shape (2) -> dim (1)."""
    elem_type, dims = 0, None
    for tensor_type in (v for n, t in _fields(buf, value_info) if n == 2 for m, v in _fields(buf, t) if m == 1):
        for n, v in _fields(buf, tensor_type):
            if n == 1:
                elem_type = v
            elif n == 2:
                dims = tuple(_dim(buf, d) for m, d in _fields(buf, v) if m == 1)
    return Tensor(_string(buf, value_info, 1), elem_type, dims)


def _dim(buf: bytes | mmap.mmap, dimension: tuple[int, int]) -> int | str:
    """dim_value (1, an int64) or dim_param (2, a name); "?" when neither is set."""
    for number, value in _fields(buf, dimension):
        if number == 1:
            return _signed(value)
        if number == 2:
            return _text(buf, value)
    return "?"


# The writing side, for the few tiny graphs this toolkit builds itself (doctor's probe,
# roofline's GEMM): a device has no ``onnx`` package to build them with.
def model_bytes(
    nodes: list[tuple[str, list[str], list[str]]],
    inputs: list[Tensor],
    outputs: list[Tensor],
    metadata: dict[str, str] | None = None,
    *,
    opset: int = 17,
    ir_version: int = 8,
) -> bytes:
    """A serialized ModelProto: nodes as (op_type, inputs, outputs) without attributes, in the
    default domain at ``opset``. IR 8 and opset 17 load on every runtime this toolkit supports."""
    graph = b"".join(_message(1, _node_bytes(*node)) for node in nodes) + _message(2, b"graph")
    graph += b"".join(_message(11, _value_info(t)) for t in inputs)
    graph += b"".join(_message(12, _value_info(t)) for t in outputs)
    model = _int(1, ir_version) + _message(7, graph) + _message(8, _message(1, b"") + _int(2, opset))
    for key, value in (metadata or {}).items():
        model += _message(14, _message(1, key.encode()) + _message(2, value.encode()))
    return model


def _node_bytes(op_type: str, inputs: list[str], outputs: list[str]) -> bytes:
    """NodeProto: input (1), output (2), op_type (4)."""
    names = b"".join(_message(1, n.encode()) for n in inputs) + b"".join(_message(2, n.encode()) for n in outputs)
    return names + _message(4, op_type.encode())


def _value_info(tensor: Tensor) -> bytes:
    """ValueInfoProto, the mirror of :func:`_tensor`."""
    shape = b"".join(_message(1, _message(2, d.encode()) if isinstance(d, str) else _int(1, d)) for d in tensor.dims or ())
    tensor_type = _int(1, tensor.elem_type) + (_message(2, shape) if tensor.dims is not None else b"")
    return _message(1, tensor.name.encode()) + _message(2, _message(1, tensor_type))


def _int(number: int, value: int) -> bytes:
    """A varint field (wire type 0); ``value`` is a non-negative int."""
    return _encode_varint(number << 3) + _encode_varint(value)


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
