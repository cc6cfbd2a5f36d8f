"""deploy.batch's output folder: the part files the driver writes, and the check that an OUTPUT may
be written or replaced (never INPUT, never what is not an earlier output of this tool)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deploy.batch_classify import columns
from deploy.batch_inputs import local_root
from runtimes.atomic import check_apart, check_replaceable
from runtimes.errors import ToolkitError

MANIFEST = "_manifest.json"
ROWS_PER_PART = 100_000


class PartWriter:
    """Rows into ``folder/part-NNNNN.{parquet,jsonl}``, ``ROWS_PER_PART`` to a file."""

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder, self.fmt = folder, fmt
        self.parts: list[str] = []
        self.rows = self.errors = 0
        self._buffer: list[tuple[str, dict]] = []  # each record and its parse
        self._part_rows = 0
        self._file = None

    def add(self, record: str) -> None:
        data = json.loads(record)
        self._buffer.append((record, data))
        self.rows += 1
        self.errors += data.get("error") is not None
        if len(self._buffer) >= 1000:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            if self._file is None:
                self._open()
            room = ROWS_PER_PART - self._part_rows
            chunk, self._buffer = self._buffer[:room], self._buffer[room:]
            self._write(chunk)
            self._part_rows += len(chunk)
            if self._part_rows >= ROWS_PER_PART:
                self._close_part()

    def close(self) -> None:
        self.flush()
        self._close_part()

    def _open(self) -> None:
        name = f"part-{len(self.parts):05d}.{self.fmt}"
        self.parts.append(name)
        if self.fmt == "jsonl":
            self._file = open(self.folder / name, "w", encoding="utf-8")
        else:
            import pyarrow.parquet as pq

            self._file = pq.ParquetWriter(self.folder / name, _schema())

    def _write(self, records: list[tuple[str, dict]]) -> None:
        if self.fmt == "jsonl":
            self._file.write("".join(line + "\n" for line, _ in records))
            return
        import pyarrow as pa

        rows = [columns(data) for _, data in records]
        self._file.write_table(pa.Table.from_pylist(rows, schema=_schema()))

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._part_rows = None, 0


def _schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("label", pa.string()), ("labels", pa.list_(pa.string())),
                      ("probs", pa.list_(pa.float32())), ("class_index", pa.int32()), ("error", pa.string()),
                      ("preprocess", pa.string())])


def check_output(out: Path, args) -> None:
    """Refuse OUTPUT before anything starts when it is, holds or lies in INPUT, or when it exists and
    ``--mode overwrite`` would replace what is not an earlier deploy.batch output."""
    root = local_root(args.input)
    inputs = [root] if root is not None else []
    if args.mode == "overwrite":
        check_replaceable(out, inputs, what="an earlier deploy.batch output", files_of=_output_files)
        return
    check_apart(out, inputs)
    if out.exists() or out.is_symlink():
        raise ToolkitError(f"{out} exists; a run never appends to another: --mode overwrite replaces an earlier "
                           "output whole, or give a new OUTPUT")


def _output_files(out: Path) -> set[str] | None:
    """What an earlier run wrote into ``out``: its manifest and the part files the manifest names."""
    try:
        parts = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
        return None
    return {MANIFEST, *parts}


def check_inputs_outside(out: Path, names: list[str]) -> None:
    """No listed input may lie inside OUTPUT, which the run replaces (a string check on absolute paths)."""
    inside = tuple({os.path.abspath(out) + os.sep, str(out.resolve()) + os.sep})
    for name in names:
        if "://" in name and not name.startswith("file://"):
            continue
        if os.path.abspath(name.removeprefix("file://")).startswith(inside):
            raise ToolkitError(f"the input {name} lies inside OUTPUT {out}, which the run replaces; "
                               "give an OUTPUT apart from the inputs")
