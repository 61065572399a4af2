"""Events to columns: the reference semantics of validation, shared by every path.

An event is a mapping (a decoded JSON object or a file row). :func:`decode_events` turns
a sequence of them into columns and a list of rejected rows with the reason. The
consumer's fast decoder must give the same columns and the same rejections (a test
compares them).

Rules
    * event time from ``events.time_field``: an epoch number in ``events.time_unit`` (``s``,
      ``ms``, ``us``, ``ns``; ``auto`` infers the unit of each value from its magnitude and
      rejects numbers below 1e8), or an ISO-8601 string (UTC unless it says otherwise), or a
      typed timestamp (Parquet/CSV timestamp columns; naive means UTC). Absent -> the Kafka
      timestamp if ``time_missing: kafka_timestamp``, else the event is rejected.
      ``time_field: null`` always uses the Kafka timestamp.
    * a time must be plausible, so that no single event can move a watermark where no real
      clock is: not before ``events.min_time`` (implausible: a year, a counter, 1970 by
      accident), and not more than ``events.max_future_skew`` ahead of the message's Kafka
      timestamp, or, without one, of ``now_ms`` (the wall clock; files: the run's start).
      A time taken from the Kafka timestamp itself is only checked against ``min_time``.
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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.exceptions import InputError
from detectors.join import id_text
from detectors.reference import MISSING, NumericProfile, ReferenceProfile, int_label

#: ``time_unit: auto`` reads a number by its magnitude ``|v|``: below AUTO_MIN it is rejected (a
#: year, a counter: no epoch time), then seconds, milliseconds, microseconds, nanoseconds up from
#: each bound (1e8 s is 1973; 1e11 ms is 1973; 1e14 us and 1e17 ns are 1973 too)
AUTO_MIN = 10**8
AUTO_BOUNDS = ((10**11, "s"), (10**14, "ms"), (10**17, "us"))
#: milliseconds per unit of a numeric event time, as (multiplier, divisor)
_UNIT_SCALE = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}
_NUMERIC = re.compile(r"^[+-]?\d+(\.\d*)?([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d{1,19}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: how a rejected time's reason begins: the code follows from it (user text comes only after it)
IMPLAUSIBLE_PREFIX = "implausible event time"
FUTURE_PREFIX = "future event time"
_HINT = "send epoch s/ms/us/ns or ISO-8601, or set events.time_unit"


class ImplausibleTime(InputError):
    """A time no epoch clock gives here: a year or a counter as time, or before ``events.min_time``."""


class FutureTime(InputError):
    """A time further ahead of its Kafka timestamp (or of the run's clock) than ``events.max_future_skew``."""


def auto_unit(magnitude: float) -> str:
    """The unit ``time_unit: auto`` reads a number of this magnitude in (``|v| >= AUTO_MIN``).

    >>> [auto_unit(v) for v in (1.7e9, 1.7e12, 1.7e15, 1.7e18)]
    ['s', 'ms', 'us', 'ns']
    """
    for bound, unit in AUTO_BOUNDS:
        if magnitude < bound:
            return unit
    return "ns"


def _datetime_ms(dt: datetime) -> int:
    if dt.tzinfo is None:  # naive: UTC
        dt = dt.replace(tzinfo=UTC)
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def parse_time_ms(value: Any, unit: str = "auto") -> int:
    """Event time as integer epoch milliseconds (UTC).

    Numbers (and numeric strings) are epoch times in ``unit``; ``auto`` infers the unit of each
    value from its magnitude (:func:`auto_unit`) and rejects magnitudes below 1e8
    (:class:`ImplausibleTime`). Strings are ISO-8601 (UTC unless they say otherwise); typed
    timestamps (``datetime``, ``numpy.datetime64`` from Parquet/CSV columns) carry their own unit,
    whatever ``unit`` says. Numbers round to the nearest millisecond (half up); ISO strings and typed
    timestamps drop their sub-millisecond digits.

    >>> parse_time_ms(1700000000), parse_time_ms(1700000000123), parse_time_ms(1700000000123456)
    (1700000000000, 1700000000123, 1700000000123)
    >>> parse_time_ms(1700000000123456789), parse_time_ms("2023-11-14T22:13:20Z"), parse_time_ms(2024, "s")
    (1700000000123, 1700000000000, 2024000)
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"event time {value!r} is not a time")
    if isinstance(value, datetime):  # Parquet/CSV timestamp columns (pandas' Timestamp too); naive is UTC
        return _datetime_ms(value)
    if isinstance(value, np.datetime64):  # (read_rows gives timestamp columns as these: any unit, any year)
        if np.isnat(value):
            raise InputError("event time NaT is not a time")
        return int(value.astype("datetime64[ms]").astype(np.int64))  # (floors, as a datetime's microseconds do)
    if isinstance(value, str):
        s = value.strip()
        if unit != "iso" and _NUMERIC.match(s):
            return parse_time_ms(int(s) if _INTEGER.match(s) else float(s), unit)
        if unit != "auto" and unit != "iso":
            raise InputError(f"event time {value!r} is not a number of {unit}")
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InputError(f"event time {value!r} is not ISO-8601 or epoch") from None
        return _datetime_ms(dt)
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if abs(v) > 2**62:
            raise InputError("event time is an integer out of range (beyond +-2**62)")
        if unit == "iso":
            raise InputError(f"event time {value!r} is not an ISO-8601 string")
        if unit == "auto":
            if abs(v) < AUTO_MIN:
                raise ImplausibleTime(_implausible_small(v))
            unit = auto_unit(abs(v))
        mul, div = _UNIT_SCALE[unit]
        return (v * mul + div // 2) // div  # exact: round half up, as floor(x + 0.5) below
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise InputError(f"event time {value!r} is not finite")
        if unit == "iso":
            raise InputError(f"event time {value!r} is not an ISO-8601 string")
        if unit == "auto":
            if abs(f) < AUTO_MIN:
                raise ImplausibleTime(_implausible_small(f))
            unit = auto_unit(abs(f))
        mul, div = _UNIT_SCALE[unit]
        ms = f * mul / div
        if abs(ms) > 2**62:
            raise InputError(f"event time {value!r} is out of range")
        return math.floor(ms + 0.5)
    raise InputError(f"event time {value!r} is not a time")


def _implausible_small(v: float) -> str:
    return f"{IMPLAUSIBLE_PREFIX} {v!r}: below 1e8, so no epoch time in time_unit auto — a year or a counter? {_HINT}"


def format_ms(ms: int) -> str:
    """An epoch-ms instant for a reason text (ISO-8601 where a datetime can hold it).

    >>> format_ms(0), format_ms(1_700_000_000_000_000)
    ('1970-01-01T00:00:00Z', 'year 55840')
    """
    try:
        dt = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return f"year {1970 + ms // 31_556_952_000}"  # (the mean Gregorian year in ms)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def check_time(t_ms: int, raw: Any, min_ms: int, limit_ms: int | None, against: str) -> None:
    """Reject a parsed time before ``events.min_time`` (``min_ms``) or after ``limit_ms``
    (its Kafka timestamp or the run's clock, named by ``against``, plus ``events.max_future_skew``).

    ``raw`` is the value as sent (for the reason text).
    """
    if t_ms < min_ms:
        raise ImplausibleTime(
            f"{IMPLAUSIBLE_PREFIX} {raw!r} ({format_ms(t_ms)}): before events.min_time {format_ms(min_ms)}"
            f" — a year or a counter? {_HINT}"
        )
    if limit_ms is not None and t_ms > limit_ms:
        raise FutureTime(
            f"{FUTURE_PREFIX} {raw!r} ({format_ms(t_ms)}): more than events.max_future_skew ahead of {against}"
            f" — microseconds or nanoseconds read as a coarser unit? {_HINT}"
        )


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
    #: with a ``labels`` section: each event's id (:func:`detectors.join.id_text`; None: none usable)
    ids: list[str | None] | None = None

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


def _feature_values(
    fobj: Mapping[str, Any], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[list[float], list[str | None]]:
    """One event's numeric values (missing: NaN) and categorical values (missing: None); an
    :class:`InputError` naming the feature for a value of the wrong type."""
    nums = []
    for f in numeric:
        try:
            x = _num(fobj.get(f))
        except TypeError as exc:
            raise InputError(f"feature {f!r}: expected a number, got {exc}") from None
        nums.append(math.nan if x is None else x)
    cats = []
    for f in categorical:
        try:
            cats.append(_cat(fobj.get(f)))
        except TypeError as exc:
            raise InputError(f"feature {f!r}: expected a string, got {exc}") from None
    return nums, cats


def decode_events(
    rows: Sequence[Any],
    config: MonitorConfig,
    reference: ReferenceProfile,
    features: Sequence[str],
    kafka_timestamps_ms: Sequence[int | None] | None = None,
    now_ms: int | None = None,
) -> tuple[EventColumns, list[tuple[int, str]]]:
    """Validate and columnise ``rows``; return the columns and ``(row, reason)`` rejections.

    ``now_ms``: the clock future times are checked against where a row has no Kafka timestamp
    (default: the wall clock when called).
    """
    ev = config.events
    min_ms, skew_ms = ev.min_time_ms, ev.max_future_skew_ms
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    numeric = [f for f in features if isinstance(reference.features[f], NumericProfile)]
    categorical = [f for f in features if f not in numeric]
    times: list[int] = []
    num_cols: dict[str, list[float]] = {f: [] for f in numeric}
    cat_cols: dict[str, list[str | None]] = {f: [] for f in categorical}
    segs: list[tuple[str, ...]] = []
    preds: list[float] = []
    labels: list[float] = []
    id_field = config.labels.id_field if config.labels is not None else None
    ids: list[str | None] = []
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
            raw_t = None if ev.time_field is None else row.get(ev.time_field)
            if raw_t is not None:
                t = parse_time_ms(raw_t, ev.time_unit)
                if kts is None:
                    check_time(t, raw_t, min_ms, now_ms + skew_ms, "the clock")
                else:
                    check_time(t, raw_t, min_ms, int(kts) + skew_ms, "its Kafka timestamp")
            elif ev.time_field is None or ev.time_missing == "kafka_timestamp":
                if kts is None:
                    raise InputError(
                        "no Kafka timestamp and no events.time_field"
                        if ev.time_field is None
                        else f"missing event time field {ev.time_field!r} and no Kafka timestamp"
                    )
                t = int(kts)
                check_time(t, t, min_ms, None, "")  # (the Kafka timestamp: only min_time applies)
            else:
                raise InputError(f"missing event time field {ev.time_field!r}")
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
            nums, cats = _feature_values(fobj, numeric, categorical)
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
        if id_field is not None:
            ids.append(id_text(row.get(id_field)))
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
            ids=ids if id_field is not None else None,
        ),
        errors,
    )


def decode_reference_rows(
    rows: Sequence[Any],
    features: Sequence[str],
    categorical: Sequence[str],
    features_field: str | None,
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """A baseline's rows as the columns of a reference build, by the feature rules of
    :func:`decode_events` (times, segments, prediction and label are not read): a row with a value of
    the wrong type is rejected with its index and reason, every other row is used.

    Numeric columns come back as float64 arrays (missing: NaN), categorical ones as lists of labels.

    >>> cols, errors = decode_reference_rows(
    ...     [{"x": 1.5, "c": "a"}, {"x": "abc", "c": "b"}, {"x": None, "c": 3}], ["x", "c"], ["c"], None)
    >>> cols["x"].tolist(), cols["c"], errors
    ([1.5, nan], ['a', '3'], [(1, "feature 'x': expected a number, got str")])
    """
    cats = set(categorical)
    numeric = [f for f in features if f not in cats]
    labels = [f for f in features if f in cats]
    num_cols: dict[str, list[float]] = {f: [] for f in numeric}
    cat_cols: dict[str, list[str | None]] = {f: [] for f in labels}
    errors: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append((i, f"event is not a JSON object (got {type(row).__name__})"))
            continue
        fobj = row if features_field is None else row.get(features_field)
        if not isinstance(fobj, Mapping):
            errors.append((i, f"missing or non-object features field {features_field!r}"))
            continue
        try:
            nums, cs = _feature_values(fobj, numeric, labels)
        except InputError as exc:
            errors.append((i, str(exc)))
            continue
        for f, x in zip(numeric, nums, strict=True):
            num_cols[f].append(x)
        for f, c in zip(labels, cs, strict=True):
            cat_cols[f].append(c)
    cols: dict[str, Any] = {f: np.asarray(v, dtype=np.float64) for f, v in num_cols.items()}
    cols.update(cat_cols)
    return {f: cols[f] for f in features}, errors


@dataclass
class LabelColumns:
    """Decoded, valid label events as columns, in arrival order."""

    ids: list[str]  # :func:`detectors.join.id_text` of each label's id
    time_ms: npt.NDArray[np.int64]
    label: npt.NDArray[np.float64]
    rows: list[int] = field(default_factory=list)  # index of each valid label event in the input

    def __len__(self) -> int:
        return len(self.time_ms)


def decode_labels(
    rows: Sequence[Any],
    config: MonitorConfig,
    kafka_timestamps_ms: Sequence[int | None] | None = None,
    now_ms: int | None = None,
) -> tuple[LabelColumns, list[tuple[int, str]]]:
    """Validate label events (``labels.id_field``, ``labels.label_field``, ``labels.time_field`` at their
    top level); return the columns and ``(row, reason)`` rejections.

    The id is a non-empty string or an integer; the label of a classification is 0/1 or a boolean,
    of a regression a finite number; the time follows the rules of :func:`decode_events`
    (``events.time_unit``, ``min_time``, ``max_future_skew``; absent: the Kafka timestamp when
    ``events.time_missing`` says so, or ``labels.time_field`` is null).
    """
    lab = config.labels
    if lab is None:
        raise InputError("labels: the monitor config has no labels section")
    ev = config.events
    min_ms, skew_ms = ev.min_time_ms, ev.max_future_skew_ms
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    classification = lab.task == "classification"
    ids: list[str] = []
    times: list[int] = []
    values: list[float] = []
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append((i, f"event is not a JSON object (got {type(row).__name__}): a label event must be"))
            continue
        kts = kafka_timestamps_ms[i] if kafka_timestamps_ms is not None else None
        try:
            ident = id_text(row.get(lab.id_field))
            if ident is None:
                raise InputError(f"label event without a usable id field {lab.id_field!r} (a string or integer)")
            raw_y = row.get(lab.label_field)
            if raw_y is None:
                raise InputError(f"label event without its label field {lab.label_field!r}")
            if isinstance(raw_y, bool):
                y = 1.0 if raw_y else 0.0
            elif isinstance(raw_y, (int, float)) and not isinstance(raw_y, bool):
                y = float(raw_y)
            else:
                raise InputError(f"label field {lab.label_field!r}: expected a number, got {type(raw_y).__name__}")
            if classification and y not in (0.0, 1.0):
                raise InputError(
                    f"label field {lab.label_field!r}: {raw_y!r} is not 0 or 1 (labels.task: classification)"
                )
            if not math.isfinite(y):
                raise InputError(f"label field {lab.label_field!r}: {raw_y!r} is not finite")
            raw_t = None if lab.time_field is None else row.get(lab.time_field)
            if raw_t is not None:
                t = parse_time_ms(raw_t, ev.time_unit)
                if kts is None:
                    check_time(t, raw_t, min_ms, now_ms + skew_ms, "the clock")
                else:
                    check_time(t, raw_t, min_ms, int(kts) + skew_ms, "its Kafka timestamp")
            elif (lab.time_field is None or ev.time_missing == "kafka_timestamp") and kts is not None:
                t = int(kts)
                check_time(t, t, min_ms, None, "")
            else:
                raise InputError(
                    "no Kafka timestamp and no labels.time_field"
                    if lab.time_field is None
                    else f"missing label time field {lab.time_field!r}"
                )
        except InputError as exc:
            errors.append((i, str(exc)))
            continue
        ids.append(ident)
        times.append(t)
        values.append(y)
        kept.append(i)
    return (
        LabelColumns(ids, np.asarray(times, dtype=np.int64), np.asarray(values, dtype=np.float64), kept),
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
