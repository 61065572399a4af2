"""Reading event files (Parquet, CSV, JSON lines); records are :mod:`stream.records`.

File formats go by extension: ``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``/``.json``
(JSON lines). Nested objects (a ``features`` object) are kept as mappings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

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


@dataclass
class EventRows:
    """The rows of an events file, with what the file says about its columns' types."""

    rows: list[Any]
    kind: str  # parquet | csv | jsonl
    #: CSV columns held as text (pyarrow found a cell that is not a number, or they were asked for as text)
    text_columns: frozenset[str] = frozenset()
    #: Parquet dictionary-encoded columns of strings or integers (pandas' ``category``): categorical
    dictionary_columns: frozenset[str] = frozenset()


def read_rows(path: str | Path) -> list[Any]:
    """Every row of an events file as a Python object (normally a dict); see :func:`read_event_rows`."""
    return read_event_rows(path).rows


def read_event_rows(path: str | Path, text: Iterable[str] = ()) -> EventRows:
    """Every row of an events file as a Python object (normally a dict).

    A JSON-lines line that is not valid JSON is kept as its text, so validation can reject
    it with a reason instead of the whole file failing. CSV columns named in ``text``
    (categorical features, segment fields) are read as text, so that ``01234`` stays a label.
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
        return EventRows(rows, kind)
    try:
        if kind == "parquet":
            table = pq.read_table(p)
        else:
            as_text = pa_csv.ConvertOptions(column_types={c: pa.string() for c in text})
            table = pa_csv.read_csv(p, convert_options=as_text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputFileError(f"cannot read {p}: {exc}") from exc
    texts = frozenset(f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    return EventRows(table_rows(table), kind, texts if kind == "csv" else frozenset(), dictionary_columns(table.schema))


def dictionary_columns(schema: pa.Schema) -> frozenset[str]:
    """Categorical columns by their type: dictionary encoded with string or integer values (and fields of
    struct columns, such as a nested ``features`` object), or pandas ``category`` columns by pandas'
    metadata (an integer category is read back as plain integers)."""

    def categorical(t: pa.DataType) -> bool:
        if not pa.types.is_dictionary(t):
            return False
        v = t.value_type
        return bool(pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_integer(v))

    out = set()
    for f in schema:
        if categorical(f.type):
            out.add(f.name)
        elif pa.types.is_struct(f.type):
            out.update(f.type.field(i).name for i in range(f.type.num_fields) if categorical(f.type.field(i).type))
    try:
        pandas = json.loads((schema.metadata or {}).get(b"pandas", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        pandas = {}  # (not pandas' metadata: the types say it all)
    for col in pandas.get("columns", []) if isinstance(pandas, dict) else []:
        if isinstance(col, dict) and col.get("pandas_type") == "categorical" and isinstance(col.get("name"), str):
            out.add(col["name"])
    return frozenset(out)


#: the CSV cells pyarrow reads as null in a numeric column (its defaults), for numeric columns held as text
CSV_NULLS = frozenset(pa_csv.ConvertOptions().null_values)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")


def numbers_from_text(data: EventRows, columns: Iterable[str]) -> None:
    """CSV only: in the numeric ``columns`` that pyarrow held as text (a cell somewhere is not a
    number), turn every cell that is a number into one, in place, and pyarrow's null markers
    (``""``, ``NA``, ``null``...) into None. The other cells stay text, so only their rows are rejected,
    each with its own row number, as in a JSON-lines file.

    >>> d = EventRows([{"x": "1.5"}, {"x": "abc"}, {"x": "NA"}, {"x": "7"}], "csv", frozenset({"x"}))
    >>> numbers_from_text(d, ["x"]); [r["x"] for r in d.rows]
    [1.5, 'abc', None, 7]
    """
    cols = [c for c in columns if c in data.text_columns]
    if data.kind != "csv" or not cols:
        return
    for row in data.rows:
        for c in cols:
            v = row.get(c)
            if not isinstance(v, str):
                continue
            t = v.strip()
            if t in CSV_NULLS:
                row[c] = None
            elif _NUMBER.match(t):
                row[c] = int(t) if _INT.match(t) else float(t)


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
