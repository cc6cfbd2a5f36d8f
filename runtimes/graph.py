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
    source = "model bytes" if isinstance(model, bytes) else str(model)
    try:
        if isinstance(model, bytes):
            return _graph_io(model)
        with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _graph_io(mapped)
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
    span = next((v for n, v in _fields(buf, message) if n == number), (0, 0))
    return bytes(buf[span[0] : span[1]]).decode()


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
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 2:
            return bytes(buf[value[0] : value[1]]).decode()
    return "?"
