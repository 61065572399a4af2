"""Reading event files and writing window statistic records (JSON lines or Parquet).

File formats go by extension: ``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``/``.json``
(JSON lines). Nested objects (a ``features`` object) are kept as mappings.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from detectors.evaluate import RECORD_TYPES
from stream.exceptions import InputFileError

PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson", ".json")
CSV = (".csv",)


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        return "parquet"
    if suffix in JSONL:
        return "jsonl"
    if suffix in CSV:
        return "csv"
    raise InputFileError(f"{path}: unknown file type {suffix!r}; use .parquet, .csv or .jsonl")


def read_rows(path: str | Path) -> list[Any]:
    """Every row of an events file as a Python object (normally a dict).

    A JSON-lines line that is not valid JSON is kept as its text, so validation can reject
    it with a reason instead of the whole file failing.
    """
    p = Path(path)
    kind = file_kind(p)
    if not p.exists():
        raise InputFileError(f"input file {p} does not exist")
    if kind == "jsonl":
        rows: list[Any] = []
        with p.open("r", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(line.rstrip("\n"))
        return rows
    try:
        table = pq.read_table(p) if kind == "parquet" else pa_csv.read_csv(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputFileError(f"cannot read {p}: {exc}") from exc
    return table_rows(table)


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a table as dicts; timestamp columns (any unit, with or without a time zone) as
    ``numpy.datetime64`` values in their own unit, so that every value converts (a ``datetime`` holds
    neither nanoseconds nor years beyond 9999, and a bad time must be rejected, not crash the read)."""
    stamps = [i for i, f in enumerate(table.schema) if pa.types.is_timestamp(f.type)]
    if not stamps:
        return list(table.to_pylist())
    plain = table.drop_columns([table.schema.field(i).name for i in stamps])
    rows = plain.to_pylist() if plain.num_columns else [{} for _ in range(table.num_rows)]
    for i in stamps:
        field = table.schema.field(i)
        unit = field.type.unit
        raw = table.column(i).cast(pa.int64()).to_pylist()  # (epoch in its unit; UTC when zoned)
        values = [None if v is None else np.datetime64(v, unit) for v in raw]
        for row, v in zip(rows, values, strict=True):
            row[field.name] = v
    order = table.schema.names
    return [{k: row[k] for k in order} for row in rows]


def read_columns(path: str | Path) -> dict[str, list[Any]]:
    """A flat table as columns (for building a reference). Nested ``features`` objects are flattened."""
    rows = read_rows(path)
    cols: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputFileError(f"{path}: row {i + 1} is not an object")
        flat = dict(row)
        nested = flat.pop("features", None)
        if isinstance(nested, Mapping):
            flat.update(nested)
        for k in flat:
            if k not in cols:
                cols[k] = [None] * i
        for k, col in cols.items():
            col.append(flat.get(k))
    return cols


def _json_default(o: Any) -> Any:
    raise TypeError(f"cannot serialise {type(o).__name__}")


def record_line(rec: Mapping[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"), allow_nan=False, default=_json_default)


def write_records(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write records atomically (temp file + rename), JSON lines or Parquet by extension."""
    p = Path(path)
    kind = file_kind(p)
    if kind == "csv":
        raise InputFileError(f"{p}: records are written as .jsonl or .parquet, not CSV")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            if kind == "jsonl":
                for rec in records:
                    fh.write(record_line(rec).encode() + b"\n")
            else:
                pq.write_table(records_table(records), fh)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RECORD_SCHEMA = pa.schema(
    [(name, pa.map_(pa.string(), pa.string()) if t == "map" else pa.type_for_alias(t)) for name, t in RECORD_TYPES]
)


def records_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = [{**r, "segment": list(dict(r["segment"]).items())} for r in records]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Window statistic records back from JSON lines or Parquet."""
    p = Path(path)
    kind = file_kind(p)
    if kind == "jsonl":
        with p.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if kind == "parquet":
        out = []
        for r in pq.read_table(p).to_pylist():
            r["segment"] = dict(r["segment"] or [])
            out.append(r)
        return out
    raise InputFileError(f"{p}: records are read from .jsonl or .parquet")
