"""Events to columns: the reference semantics of validation, shared by every path.

An event is a mapping (a decoded JSON object or a file row). :func:`decode_events` turns
a sequence of them into columns and a list of rejected rows with the reason. The
consumer's fast decoder must give the same columns and the same rejections (a test
compares them).

Rules
    * event time from ``events.time_field``: epoch milliseconds or seconds (``auto`` takes
      numbers of magnitude >= 1e11 as milliseconds), or an ISO-8601 string (UTC unless it
      says otherwise), or a ``datetime`` (Parquet/CSV timestamp columns; naive means UTC).
      Absent -> the Kafka timestamp if ``time_missing: kafka_timestamp``, else the event
      is rejected. ``time_field: null`` always uses the Kafka timestamp.
    * numeric features: a number; ``null``/absent/NaN is *missing* (never 0); +-inf is
      counted as invalid in the histogram; any other type rejects the event.
    * categorical features: a string, integer or boolean (as ``"true"``/``"false"``);
      ``null``/absent/``""`` is missing; any other type rejects the event.
    * segment fields: string, integer or boolean; absent or null -> ``"__missing__"``.
    * prediction and label: numbers or booleans; absent/null -> NaN (no model-error update).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.exceptions import InputError
from detectors.reference import MISSING, NumericProfile, ReferenceProfile, int_label

MS_THRESHOLD = 1e11  # |t| at or above this is epoch milliseconds in `auto` mode (1973 in ms)
_NUMERIC = re.compile(r"^[+-]?\d+(\.\d*)?([eE][+-]?\d+)?$")


def parse_time_ms(value: Any, unit: str = "auto") -> int:
    """Event time as integer epoch milliseconds (UTC).

    >>> parse_time_ms(1700000000), parse_time_ms(1700000000123), parse_time_ms("2023-11-14T22:13:20Z")
    (1700000000000, 1700000000123, 1700000000000)
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"event time {value!r} is not a time")
    if isinstance(value, datetime):
        # Parquet/CSV timestamp columns arrive as datetime objects; naive ones are UTC
        if unit in ("ms", "s"):
            raise InputError(f"event time {value!r} is not a number of {unit}")
        dt_value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        d = dt_value - datetime(1970, 1, 1, tzinfo=UTC)
        return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000
    if isinstance(value, str):
        s = value.strip()
        if unit != "iso" and _NUMERIC.match(s):
            return parse_time_ms(float(s), unit)
        if unit in ("ms", "s"):
            raise InputError(f"event time {value!r} is not a number of {unit}")
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InputError(f"event time {value!r} is not ISO-8601 or epoch") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, (int, np.integer)) and abs(int(value)) > 2**62:
            raise InputError("event time is an integer out of range (beyond +-2**62 ms)")
        v = float(value)
        if not math.isfinite(v):
            raise InputError(f"event time {value!r} is not finite")
        if unit == "iso":
            raise InputError(f"event time {value!r} is not an ISO-8601 string")
        ms = v if unit == "ms" or (unit == "auto" and abs(v) >= MS_THRESHOLD) else v * 1000.0
        if abs(ms) > 2**62:
            raise InputError(f"event time {value!r} is out of range")
        return math.floor(ms + 0.5)
    raise InputError(f"event time {value!r} is not a time")


@dataclass
class EventColumns:
    """Decoded, valid events as columns."""

    time_ms: npt.NDArray[np.int64]
    features: dict[str, Any]  # numeric: float64 array; categorical: list of str | None
    segments: Sequence[tuple[str, ...]]
    prediction: npt.NDArray[np.float64]
    label: npt.NDArray[np.float64]
    rows: list[int] = field(default_factory=list)  # index of each valid event in the input
    #: with one segment field, its values when all are plain strings (``segments[i] ==
    #: (segment_values[i],)``): the router looks them up without the tuples
    segment_values: list[str] | None = None

    def __len__(self) -> int:
        return len(self.time_ms)


def _num(v: Any) -> float | None:
    """A JSON number as float; None if missing; raise on other types."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError("boolean")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise TypeError("an integer too large for a float") from None
    raise TypeError(type(v).__name__)


def _cat(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        label = int_label(v)
        if label is None:
            raise TypeError("an integer too long for a category")
        return label
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(type(v).__name__)


def decode_events(
    rows: Sequence[Any],
    config: MonitorConfig,
    reference: ReferenceProfile,
    features: Sequence[str],
    kafka_timestamps_ms: Sequence[int | None] | None = None,
) -> tuple[EventColumns, list[tuple[int, str]]]:
    """Validate and columnise ``rows``; return the columns and ``(row, reason)`` rejections."""
    ev = config.events
    numeric = [f for f in features if isinstance(reference.features[f], NumericProfile)]
    categorical = [f for f in features if f not in numeric]
    times: list[int] = []
    num_cols: dict[str, list[float]] = {f: [] for f in numeric}
    cat_cols: dict[str, list[str | None]] = {f: [] for f in categorical}
    segs: list[tuple[str, ...]] = []
    preds: list[float] = []
    labels: list[float] = []
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    nan = math.nan
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append((i, f"event is not a JSON object (got {type(row).__name__})"))
            continue
        # time
        kts = kafka_timestamps_ms[i] if kafka_timestamps_ms is not None else None
        try:
            if ev.time_field is None:
                if kts is None:
                    raise InputError("no Kafka timestamp and no events.time_field")
                t = int(kts)
            else:
                raw_t = row.get(ev.time_field)
                if raw_t is None:
                    if ev.time_missing == "kafka_timestamp" and kts is not None:
                        t = int(kts)
                    else:
                        raise InputError(f"missing event time field {ev.time_field!r}")
                else:
                    t = parse_time_ms(raw_t, ev.time_unit)
        except InputError as exc:
            errors.append((i, str(exc)))
            continue
        # features
        if ev.features_field is None:
            fobj: Any = row
        else:
            fobj = row.get(ev.features_field)
            if not isinstance(fobj, Mapping):
                errors.append((i, f"missing or non-object features field {ev.features_field!r}"))
                continue
        try:
            nums = []
            for f in numeric:
                try:
                    x = _num(fobj.get(f))
                except TypeError as exc:
                    raise InputError(f"feature {f!r}: expected a number, got {exc}") from None
                nums.append(nan if x is None else x)
            cats = []
            for f in categorical:
                try:
                    cats.append(_cat(fobj.get(f)))
                except TypeError as exc:
                    raise InputError(f"feature {f!r}: expected a string, got {exc}") from None
            seg = []
            for s in ev.segment_fields:
                try:
                    sv = _cat(row.get(s))
                except TypeError as exc:
                    raise InputError(f"segment field {s!r}: expected a string, got {exc}") from None
                seg.append(MISSING if sv is None else sv)
            pl = []
            for name in (ev.prediction_field, ev.label_field):
                if name is None:
                    pl.append(nan)
                    continue
                v = row.get(name)
                if isinstance(v, bool):
                    pl.append(1.0 if v else 0.0)
                    continue
                try:
                    x = _num(v)
                except TypeError as exc:
                    raise InputError(f"field {name!r}: expected a number, got {exc}") from None
                pl.append(nan if x is None else x)
        except InputError as exc:
            errors.append((i, str(exc)))
            continue
        times.append(t)
        for f, x in zip(numeric, nums, strict=True):
            num_cols[f].append(x)
        for f, c in zip(categorical, cats, strict=True):
            cat_cols[f].append(c)
        segs.append(tuple(seg))
        preds.append(pl[0])
        labels.append(pl[1])
        kept.append(i)
    cols: dict[str, Any] = {f: np.asarray(v, dtype=np.float64) for f, v in num_cols.items()}
    cols.update(cat_cols)
    return (
        EventColumns(
            time_ms=np.asarray(times, dtype=np.int64),
            features={f: cols[f] for f in features},
            segments=segs,
            prediction=np.asarray(preds, dtype=np.float64),
            label=np.asarray(labels, dtype=np.float64),
            rows=kept,
        ),
        errors,
    )


def concept_values(cols: EventColumns, config: MonitorConfig) -> npt.NDArray[np.float64]:
    """The per-event value a concept detector consumes (NaN where it cannot be computed).

    Non-finite values (a missing feature, +-inf, a missing score or label) are NaN: callers
    skip NaN, so an infinite value never reaches (and poisons) a detector's running mean.
    """
    c = config.concept
    if c.stream == "model_error":
        if c.error == "absolute":
            return _finite_or_nan(np.abs(cols.prediction - cols.label))
        pred = (cols.prediction >= c.threshold).astype(np.float64)
        err: npt.NDArray[np.float64] = (pred != (cols.label >= 0.5)).astype(np.float64)
        err[np.isnan(cols.prediction) | np.isnan(cols.label)] = np.nan
        return err
    name = c.stream.removeprefix("feature:")
    col = cols.features.get(name)
    if col is None or not isinstance(col, np.ndarray):
        raise InputError(f"concept.stream {c.stream!r}: not a monitored numeric feature")
    return _finite_or_nan(np.asarray(col, dtype=np.float64))


def _finite_or_nan(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.array(x, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out
