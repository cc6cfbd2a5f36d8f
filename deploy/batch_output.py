"""deploy.batch's OUTPUT folder: part files committed as the job runs, a progress record that
names them, and the manifest written last.

A part holds the rows of one contiguous range of the input listing (``rows_per_part``
inputs, in listing order), so a resumed run skips a committed part's inputs by its
index: no set of answered paths is ever held. Each part file is written atomically, then
``_progress.json`` (atomic too) names it with its row count, errors, the sha256 of the
paths its rows carry and the sha256 of the file. ``_manifest.json``, written last, marks
a finished output; a killed run leaves ``_progress.json`` and its committed parts.

OUTPUT is never INPUT, never holds or lies inside it, and a folder is only replaced or
continued when it is this tool's: empty, or holding exactly the files its own record
names (and temp files of the names this module writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from deploy.batch_classify import JobFailed
from deploy.batch_inputs import Digest, local_root, name_bytes
from runtimes.atomic import check_apart, check_replaceable, write_bytes, write_text
from runtimes.errors import ToolkitError

MANIFEST = "_manifest.json"
PROGRESS = "_progress.json"
ROWS_PER_PART = 10_000
_PART = re.compile(r"part-\d{5}\.(parquet|jsonl)")
_TEMP = re.compile(r"\.(part-\d{5}\.(parquet|jsonl)|_progress\.json|_manifest\.json)\.[^/]+\.tmp")


class Output:
    """The OUTPUT folder of one job: what is committed, and committing more."""

    def __init__(self, folder: Path, record: dict[str, Any], created: bool = False) -> None:
        self.folder, self.record, self.created = folder, record, created
        self.reused = self.rows()

    def rows(self) -> int:
        return sum(part["rows"] for part in self.record["parts"].values())

    def errors(self) -> int:
        return sum(part["errors"] for part in self.record["parts"].values())

    def abandon(self) -> bool:
        """After a failure: a run that committed nothing removes what it wrote (the progress record, and
        the folder it made). True when it did; False when there are parts to resume."""
        if self.record["parts"] or self.record["resumed"]:
            return False
        (self.folder / PROGRESS).unlink(missing_ok=True)
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: nothing of the user's goes
        return True

    @classmethod
    def open(cls, folder: Path, mode: str, fingerprint: dict[str, Any], source: str) -> "Output":
        """Prepare ``folder`` for a job with ``fingerprint`` (the model, the listing and every flag
        that changes an answer): new (create), emptied of an earlier output of ours (overwrite),
        or continued (resume: its record's fingerprint must be this one)."""
        refuse_early(folder, mode, source)
        record = _read(folder / PROGRESS) if folder.is_dir() else None
        finished = _read(folder / MANIFEST) if folder.is_dir() else None
        if mode == "resume" and (record is not None or finished is not None):
            earlier = finished or record
            _check_same(earlier.get("fingerprint"), fingerprint, folder)
            if finished is not None:
                return cls(folder, {**finished, "complete": True})
            record = {**record, "resumed": record.get("resumed", 0) + 1}
            _check_parts(folder, record)
            _remove_temps(folder)
            write_text(folder / PROGRESS, json.dumps(record, indent=1) + "\n")
            return cls(folder, record)
        created = not folder.exists()
        if folder.is_dir():  # overwrite (or resume of nothing): remove exactly what an earlier run wrote
            for name in sorted(_output_files(folder) or ()):
                (folder / name).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"tool": "deploy.batch", "fingerprint": fingerprint, "resumed": 0, "started": _now(), "parts": {}}
        write_text(folder / PROGRESS, json.dumps(record, indent=1) + "\n")
        return cls(folder, record, created)

    @property
    def complete(self) -> bool:
        return bool(self.record.get("complete"))

    @property
    def rows_per_part(self) -> int:
        return self.record["fingerprint"]["rows_per_part"]

    def committed(self, index: int) -> dict[str, Any] | None:
        return self.record["parts"].get(f"{index:05d}")

    def commit(self, index: int, records: list[str], names_sha256: str, **extra: Any) -> dict[str, Any]:
        """Write part ``index`` (``records``, in listing order) and name it in the progress record.
        The paths the rows carry must hash to ``names_sha256``, the listing's for that range."""
        fmt = self.record["fingerprint"]["format"]
        parsed = [json.loads(record) for record in records]
        carried = Digest()
        for data in parsed:
            carried.add(data["image"])
        if carried.hexdigest() != names_sha256:
            raise JobFailed(f"the rows of part {index} do not carry the paths of its {len(records)} inputs; "
                            "it was not written")
        data = _encode(records, parsed, fmt)
        name = f"part-{index:05d}.{fmt}"
        self.record["pending"] = name  # named before it exists: a kill mid-commit leaves nothing unnamed
        write_text(self.folder / PROGRESS, json.dumps(self.record, indent=1) + "\n")
        write_bytes(self.folder / name, data)
        del self.record["pending"]
        entry = {"file": name, "rows": len(records), "errors": sum(d.get("error") is not None for d in parsed),
                 "paths_sha256": names_sha256, "sha256": hashlib.sha256(data).hexdigest(),
                 "run": self.record["resumed"], **extra}
        self.record["parts"][f"{index:05d}"] = entry
        write_text(self.folder / PROGRESS, json.dumps(self.record, indent=1) + "\n")
        return entry

    def finish(self, manifest: dict[str, Any]) -> None:
        """The manifest, last: the output is complete. The progress record goes (this tool wrote it)."""
        write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        (self.folder / PROGRESS).unlink(missing_ok=True)


def refuse_early(folder: Path, mode: str, source: str) -> None:
    """The refusals that need no listing and no model: OUTPUT is, holds or lies in INPUT; it exists
    (create); it is not empty nor an earlier output of this tool (overwrite, resume)."""
    root = local_root(source)
    inputs = [root] if root is not None else []
    if mode != "create":
        check_replaceable(folder, inputs, what="an earlier deploy.batch output", files_of=_output_files)
        return
    check_apart(folder, inputs)
    if folder.exists() or folder.is_symlink():
        unfinished = folder.is_dir() and _read(folder / PROGRESS) is not None
        hint = ("it holds an unfinished run: --mode resume continues it, --mode overwrite starts again" if unfinished
                else "a run never appends to another: --mode overwrite replaces an earlier output, or give a new OUTPUT")
        raise ToolkitError(f"{folder} exists; {hint}")


def _check_same(earlier: Any, now: dict[str, Any], folder: Path) -> None:
    """One line naming the first thing that differs from the first run's, or nothing."""
    if not isinstance(earlier, dict):
        raise ToolkitError(f"{folder} has no record of its first run's model and flags; --mode overwrite starts again")
    for key, value in now.items():
        if earlier.get(key) != value:
            was, now_ = _short(earlier.get(key)), _short(value)
            raise ToolkitError(f"cannot resume {folder}: its {key.replace('_', ' ')} was {was}, now {now_}; resume "
                               "with the first run's model, inputs and flags, or --mode overwrite to start again")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_parts(folder: Path, record: dict[str, Any]) -> None:
    """Every committed part is still the file that was committed (its sha256)."""
    for index, part in sorted(record["parts"].items()):
        try:
            data = (folder / part["file"]).read_bytes()
        except OSError as exc:
            raise ToolkitError(f"cannot resume {folder}: its part {part['file']} is unreadable ({exc.strerror}); "
                               "--mode overwrite starts again") from None
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise ToolkitError(f"cannot resume {folder}: its part {part['file']} changed since it was committed; "
                               "--mode overwrite starts again")


def _remove_temps(folder: Path) -> None:
    """The temp files of a write this module began and a kill cut short."""
    for entry in os.scandir(folder):
        if _TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("parts"), (dict, list)) else None


def _output_files(folder: Path) -> set[str] | None:
    """What an earlier run wrote into ``folder``: its manifest or progress record, the parts they name,
    and temp files of this module's names; None when it has neither record."""
    names: set[str] = set()
    for record_name in (MANIFEST, PROGRESS):
        record = _read(folder / record_name)
        if record is None:
            continue
        parts = record["parts"]
        files = [p.get("file") if isinstance(p, dict) else p for p in (parts.values() if isinstance(parts, dict)
                                                                        else parts)]
        if not all(isinstance(f, str) and _PART.fullmatch(f) for f in files):
            return None
        names |= {record_name, *files}
        pending = record.get("pending")  # a part being written when a kill came
        if isinstance(pending, str) and _PART.fullmatch(pending):
            names.add(pending)
    if not names:
        return None
    try:  # and the temp files of writes a kill cut short
        names |= {e.name for e in os.scandir(folder) if _TEMP.fullmatch(e.name) and e.is_file(follow_symlinks=False)}
    except OSError:
        return None
    return names


def _encode(records: list[str], parsed: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(record + "\n" for record in records).encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([columns(data) for data in parsed], schema=schema()), buffer)
    return buffer.getvalue()


def schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("path_bytes", pa.binary()), ("label", pa.string()),
                      ("labels", pa.list_(pa.string())), ("probs", pa.list_(pa.float32())),
                      ("class_index", pa.int32()), ("error", pa.string()), ("preprocess", pa.string())])


def columns(data: dict[str, Any]) -> dict[str, Any]:
    """The table row of one parsed record. A path that is not UTF-8 (a file name's raw bytes) is
    kept whole in ``path_bytes``; ``path`` then shows it with its bad bytes escaped (\\xff)."""
    topk = data.get("topk") or []
    path = data["image"]
    raw = name_bytes(path)
    try:
        raw.decode("utf-8")
        shown, exact = path, None
    except UnicodeDecodeError:
        shown, exact = raw.decode("utf-8", "backslashreplace"), raw
    return {
        "path": shown,
        "path_bytes": exact,
        "label": topk[0]["label"] if topk else None,
        "labels": [t["label"] for t in topk],
        "probs": [t["prob"] for t in topk],
        "class_index": topk[0]["index"] if topk else None,
        "error": data.get("error"),
        "preprocess": data.get("preprocess"),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
