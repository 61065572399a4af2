"""Files of events and baselines as the command line reads them, and what it says about their rows.

* **Shape.** Events are *nested* (the features in an object, ``events.features_field``) or *flat*
  (the features are columns, as in any CSV). :func:`detect_features_field` reads the shape from the
  rows, so the shipped example configuration works on both; the choice is said on stderr.
* **Types.** A CSV has none: categorical features and segment fields are read as text (``01234``
  stays a label), and a numeric column with a text cell somewhere keeps its numbers
  (:func:`stream.files.numbers_from_text`), so only that row is rejected, with its own row number.
  Parquet dictionary columns (pandas' ``category``) are categorical.
* **Rejections.** :func:`rejection_summary` groups rejected rows by reason code and field, with
  the first row of each and a fix-it hint; :func:`check_rejections` fails a run when more than
  ``--max-rejected`` of the rows were rejected (default :data:`DEFAULT_MAX_REJECTED`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import MonitorConfig
from detectors.reference import CategoricalProfile, ReferenceProfile
from stream.exceptions import InputFileError
from stream.files import EventRows, numbers_from_text, read_event_rows

#: a run fails when more than this share of its rows is rejected (``--max-rejected``)
DEFAULT_MAX_REJECTED = 0.01
#: reason groups shown in a rejection summary
TOP_REASONS = 5


def parse_share(text: str, name: str = "--max-rejected") -> float:
    """``"1%"`` or ``"0.01"`` as a share of rows in [0, 1].

    >>> parse_share("1%"), parse_share("0.25"), parse_share("100%")
    (0.01, 0.25, 1.0)
    """
    t = text.strip()
    try:
        share = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InputFileError(f"{name}: {text!r} is not a share of rows like 1% or 0.01") from None
    if not 0 <= share <= 1:
        raise InputFileError(f"{name}: {text!r} is not between 0 and 100%")
    return share


def percent(share: float) -> str:
    """``0.01`` -> ``'1%'``.

    >>> percent(0.01), percent(0.005), percent(1.0)
    ('1%', '0.5%', '100%')
    """
    return f"{share * 100:.6g}%"


# -- shape -----------------------------------------------------------------------------------
def detect_features_field(
    rows: Sequence[Any], configured: str | None, features: Sequence[str]
) -> tuple[str | None, str | None]:
    """The features field the rows have, and a note when it is not the configured one.

    Configured ``features`` but no row holds an object there: the rows are flat (the features are
    top-level columns). Configured flat (None) but none of ``features`` is a top-level column while a
    column holds objects with them: the rows are nested under that column. Rows of both shapes keep
    the configured one (the others are rejected, with a hint).

    >>> detect_features_field([{"t": 1, "x": 2.0}], "features", ["x"])[0] is None
    True
    >>> detect_features_field([{"t": 1, "payload": {"x": 2.0}}], None, ["x"])[0]
    'payload'
    """
    first = next((r for r in rows if isinstance(r, Mapping)), None)
    if first is None:
        return configured, None
    if configured is not None:
        if any(isinstance(r, Mapping) and isinstance(r.get(configured), Mapping) for r in rows):
            return configured, None
        return None, (
            f"the rows have no {configured!r} object, so they are flat: the features are read from the "
            "top-level columns (set events.features_field: null to say so)"
        )
    wanted = set(features)
    if not wanted or any(isinstance(r, Mapping) and wanted & r.keys() for r in rows[:1000]):
        return None, None
    for key, value in first.items():
        if isinstance(value, Mapping) and wanted & value.keys():
            return key, (
                f"the rows hold their features in the object {key!r}: reading them from there "
                f"(set events.features_field: {key} to say so)"
            )
    return None, None


def present_columns(data: EventRows, features_field: str | None, wanted: Sequence[str] = ()) -> list[str]:
    """The columns the rows have (keys of the features objects for nested rows), in order of first
    appearance. A table's rows all have the same columns; JSON lines are read to the end, or until
    every one of ``wanted`` is found."""
    seen: dict[str, None] = {}
    rows = data.rows if data.kind == "jsonl" else data.rows[:1]
    missing = set(wanted)
    last: Any = None
    for r in rows:
        if not isinstance(r, Mapping):
            continue
        obj = r if features_field is None else r.get(features_field)
        if not isinstance(obj, Mapping):
            continue
        keys = obj.keys()
        if keys == last:  # (most rows have the keys of the row before: a set comparison in C)
            continue
        last = set(keys)
        seen.update(dict.fromkeys(keys))
        if missing:
            missing -= last
            if not missing:
                break
    return list(seen)


def require_features(data: EventRows, features_field: str | None, features: Sequence[str], what: str) -> None:
    """Fail before processing when a feature is in no row at all: its windows would all say
    "too few events", and the run would look fine."""
    columns = present_columns(data, features_field, features)
    where = "columns" if features_field is None else f"fields in the {features_field!r} objects"
    missing = [f for f in features if f not in columns]
    if not missing:
        return
    first = next((r for r in data.rows if isinstance(r, Mapping)), {})
    holders = [k for k, v in first.items() if isinstance(v, Mapping) and set(missing) & v.keys()]
    fix = (
        f"the features are in the object {holders[0]!r}? set events.features_field: {holders[0]}"
        if holders
        else "rename the column(s), or monitor fewer features with features.include"
    )
    raise InputFileError(f"{what}: no row has the feature(s) {missing}; its {where} are {columns[:30]}. Fix: {fix}")


@dataclass
class Events:
    """An events file read for one monitor: its rows, and the monitor with the rows' shape."""

    rows: list[Any]
    config: MonitorConfig
    notes: list[str]


def read_events(
    path: str | Path,
    config: MonitorConfig,
    reference: ReferenceProfile,
    features: Sequence[str],
    flag: str = "--input",
) -> Events:
    """Read an events file for ``config``: CSV columns typed by the reference (categorical features and
    segment fields as text, numeric features' numbers out of text columns), the shape detected, and
    every monitored feature present in some row (else an error before anything is processed)."""
    cats = [f for f in features if isinstance(reference.features[f], CategoricalProfile)]
    data = read_event_rows(path, text=[*cats, *config.events.segment_fields])
    numbers_from_text(data, [f for f in features if f not in cats])
    field, note = detect_features_field(data.rows, config.events.features_field, features)
    notes = [note] if note else []
    if field != config.events.features_field:
        doc = config.model_dump()
        doc["events"]["features_field"] = field
        config = MonitorConfig.model_validate(doc)
    if data.rows:
        require_features(data, field, features, f"{flag} {path}")
    return Events(data.rows, config, notes)


# -- rejections ------------------------------------------------------------------------------
_SUBJECT = re.compile(r"^(feature|segment field|field) '([^']*)'")


def _group(reason: str) -> str:
    """What a rejection is about: the field it names, or the kind of time problem."""
    m = _SUBJECT.match(reason)
    if m:
        return f"{m.group(1)} {m.group(2)!r}"
    if reason.startswith("missing event time field"):
        return "time field"
    if reason.startswith("missing or non-object features field"):
        return "features field"
    return ""


def hint(code: str, reason: str, config: MonitorConfig | None) -> str:
    """A fix-it hint for a rejection reason (its code, then its text)."""
    ev = config.events if config is not None else None
    if code == "missing_field":
        if reason.startswith("missing or non-object features field"):
            return (
                "flat file? set events.features_field: null (the features are then the top-level columns); "
                "nested events need every row to carry the object"
            )
        return (
            "set events.time_field to the column that holds the event time (events.time_missing: kafka_timestamp "
            "takes the Kafka timestamp instead, for serve)"
        )
    if code == "not_object":
        return "a row that is not an object: JSON lines need one JSON object per line (is this line JSON at all?)"
    if code == "bad_time":
        if reason.startswith("no Kafka timestamp"):
            return "a file has no Kafka timestamps: set events.time_field to the column that holds the event time"
        return (
            "write event times as ISO-8601 (2026-01-31T12:00:00Z) or epoch numbers in events.time_unit; "
            "day-first or month-first dates such as 31/01/2026 are not read"
        )
    if code == "implausible_time":
        field = ev.time_field if ev is not None else "the time field"
        return (
            f"{field!r} does not hold epoch times: a year or a counter is not an event time; point "
            "events.time_field at a timestamp column (times before events.min_time are rejected too)"
        )
    if code == "future_time":
        return (
            "times in microseconds or nanoseconds read as a coarser unit? set events.time_unit (auto reads each "
            "number by its size); times further ahead of the run's start than events.max_future_skew are rejected"
        )
    m = _SUBJECT.match(reason)
    if m and m.group(1) == "feature":
        name = m.group(2)
        if "expected a number" in reason:
            return (
                f"a text cell in the numeric column {name!r}: fix or blank it; if {name!r} holds labels, declare it "
                "categorical (features.categorical, or --categorical) and rebuild the reference"
            )
        if "got float" in reason:
            return f"categories coded as floats (1.0)? write {name!r} as integers or text"
        return f"{name!r} takes text, integers or booleans"
    if m and m.group(1) == "segment field":
        return f"segment values are text, integers or booleans; {m.group(2)!r} has something else"
    if m and m.group(1) == "field":
        return f"{m.group(2)!r} (events.prediction_field / label_field) must hold numbers or booleans"
    return "see the reason codes in deploy/runbook.md"


def _value_of(row: Any, reason: str, features_field: str | None) -> str:
    """The offending value of a feature's rejection, for the example line."""
    m = _SUBJECT.match(reason)
    if not m or not isinstance(row, Mapping):
        return ""
    obj = row if m.group(1) != "feature" or features_field is None else row.get(features_field)
    if not isinstance(obj, Mapping) or m.group(2) not in obj:
        return ""
    text = repr(obj[m.group(2)])
    return f" ({text[:60]})"


def rejection_summary(
    errors: Sequence[tuple[int, str]],
    total: int,
    rows: Sequence[Any],
    config: MonitorConfig | None,
    what: str = "rows",
) -> list[str]:
    """Lines for stderr: how many rows were rejected, by code, then the top reasons, each with its
    count, first row (counted from 1, a CSV's header not counted) and a fix-it hint."""
    from stream.decode import reason_code

    if not errors:
        return []
    codes = Counter(reason_code(r) for _i, r in errors)
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, r in errors:
        groups.setdefault((reason_code(r), _group(r)), []).append((i, r))
    by_code = ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items()))
    lines = [f"{len(errors):,} of {total:,} {what} rejected ({by_code}); rows count from 1, a CSV's header not counted"]
    field = config.events.features_field if config is not None else None
    top = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0][0]))
    for (code, _subject), hits in top[:TOP_REASONS]:
        i, reason = hits[0]
        value = _value_of(rows[i] if i < len(rows) else None, reason, field)
        lines.append(f"  {code} x{len(hits):,}, first row {i + 1}: {reason}{value}")
        lines.append(f"    fix: {hint(code, reason, config)}")
    if len(top) > TOP_REASONS:
        lines.append(f"  ... and {len(top) - TOP_REASONS} more kinds of rejection")
    return lines


def check_rejections(errors: Sequence[tuple[int, str]], total: int, max_rejected: float, flag: str) -> None:
    """Fail (an :class:`InputFileError`) when more than ``max_rejected`` of ``total`` rows were rejected,
    or there was no row at all."""
    if total == 0:
        raise InputFileError("--input has no rows")
    share = len(errors) / total
    if share > max_rejected:
        raise InputFileError(
            f"{len(errors):,} of {total:,} rows rejected ({share:.1%}), more than {flag} {percent(max_rejected)}; "
            f"nothing written (the reasons are above). Fix the input or the config, or raise {flag}"
        )
