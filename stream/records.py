"""Window statistic records in and out: the one record schema and the one rule for undefined values.

Every writer of records uses this module: ``serve`` (Kafka topics and its JSON-lines file,
through :func:`encode`), ``backfill`` and the report (files, :func:`write_records` /
:func:`read_records`) and the Spark jobs (:mod:`jobs.common`). The fields and their types are
:data:`detectors.evaluate.RECORD_TYPES` (see docs/architecture.md, "Record schema").

**Undefined is null.** A statistic that is undefined (too few events, no positives for a
recall, ...) is ``None`` in a record. A non-finite float that reaches a writer (NaN, +-inf) is
undefined as well and is written as JSON ``null`` / a Parquet null, never as ``NaN`` (not
JSON), never as 0. Reading gives ``None`` back.

File writes are atomic (a temporary file beside the target, then a rename) and honour the
umask.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from detectors.evaluate import RECORD_TYPES
from stream.exceptions import InputFileError
from stream.files import file_kind

#: Parquet schema of records (``segment`` is a string map)
RECORD_SCHEMA = pa.schema(
    [(name, pa.map_(pa.string(), pa.string()) if t == "map" else pa.type_for_alias(t)) for name, t in RECORD_TYPES]
)


def defined(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record with every non-finite float (undefined) replaced by ``None``."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _no_default(o: Any) -> Any:
    raise TypeError(f"a record field cannot be a {type(o).__name__}")


#: ``json.dumps(..., separators=(",", ":"), allow_nan=False, default=_no_default)``, made once (``dumps``
#: with options makes a new encoder per call, which costs as much as encoding a record)
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_no_default)

#: msgspec's encoder, for records of plain fields: 0.6 against 5.3 us a window statistic record. It
#: writes the same JSON values (floats in their shortest round-trip form, spelled ``6.2e-5`` where
#: ``json`` writes ``6.2e-05``; text as UTF-8 where ``json`` escapes it) and a non-finite float as
#: ``null``, the rule above.
_MSGSPEC = msgspec.json.Encoder()
_SCALARS = frozenset({str, int, float, bool, type(None)})
_SCALARS_AND_MAP = _SCALARS | {dict}
_TEXT = frozenset({str})


def _plain(record: Mapping[str, Any]) -> bool:
    """Whether every field is a JSON scalar, but for one map of strings to scalars, the segment: msgspec
    would write what ``json`` refuses (a set, as an array), so anything else goes to ``json``."""
    kinds = list(map(type, record.values()))
    kind = set(kinds)
    if kind <= _SCALARS:
        return True
    seg = record.get("segment")
    return (
        kind <= _SCALARS_AND_MAP
        and kinds.count(dict) == 1
        and seg.__class__ is dict
        and set(map(type, seg)) <= _TEXT
        and set(map(type, seg.values())) <= _SCALARS
    )


def encode(record: Mapping[str, Any]) -> bytes:
    """A record as one line of strict JSON, in bytes (no trailing newline): the value of a Kafka
    message and a line of a records file."""
    if _plain(record):
        return _MSGSPEC.encode(record)
    try:
        return _JSON.encode(record).encode()
    except ValueError:  # a non-finite float: undefined
        return _JSON.encode(defined(record)).encode()


def record_line(record: Mapping[str, Any]) -> str:
    """One record as one line of strict JSON (no trailing newline)."""
    return encode(record).decode()


def records_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Records as an Arrow table of :data:`RECORD_SCHEMA`."""
    rows = [{**defined(r), "segment": list(dict(r["segment"]).items())} for r in records]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _kind(path: Path) -> str:
    kind = file_kind(path)
    if kind == "csv":
        raise InputFileError(f"{path}: records are written and read as .jsonl or .parquet, not CSV")
    return kind


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file next to ``path`` (for an atomic rename onto it), open for writing, created
    with mode 0666 less the umask, as any file a user's program writes (``tempfile.mkstemp`` makes 0600,
    which a team's shared directory or a web server cannot read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_records(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write records atomically, JSON lines or Parquet by extension."""
    p = Path(path)
    kind = _kind(p)
    fd, tmp = temp_beside(p)
    try:
        with os.fdopen(fd, "wb") as fh:
            if kind == "jsonl":
                for rec in records:
                    fh.write(encode(rec) + b"\n")
            else:
                pq.write_table(records_table(records), fh)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file (a report page) atomically, honouring the umask."""
    p = Path(path)
    fd, tmp = temp_beside(p)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Window statistic records back from JSON lines or Parquet."""
    p = Path(path)
    if _kind(p) == "jsonl":
        with p.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    out = []
    for r in pq.read_table(p).to_pylist():
        r["segment"] = dict(r["segment"] or [])
        out.append(r)
    return out
