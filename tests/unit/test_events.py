"""Events to columns: the reference validation semantics (time parsing, missing vs invalid, rejections)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.config import MonitorConfig
from detectors.events import ImplausibleTime, concept_values, decode_events, parse_time_ms
from detectors.exceptions import ConfigError, InputError
from detectors.reference import ReferenceProfile

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
REF = ReferenceProfile.build({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]}, categorical=["c"])


def _cfg(**events: Any) -> MonitorConfig:
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "r.json", "events": events})


# -- time ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "unit", "ms"),
    [
        (1_700_000_000, "auto", 1_700_000_000_000),
        (1_700_000_000_123, "auto", 1_700_000_000_123),
        (1_700_000_000.5, "auto", 1_700_000_000_500),
        (99_999_999_999, "auto", 99_999_999_999_000),  # just below 1e11: seconds
        (100_000_000_000, "auto", 100_000_000_000),  # at 1e11: milliseconds
        (1_700_000_000, "ms", 1_700_000_000),
        (1_700_000, "s", 1_700_000_000),
        (100_000_000, "auto", 100_000_000_000),  # 1e8: the smallest number auto takes (seconds, 1973)
        (99_999_999_999_999, "auto", 99_999_999_999_999),  # just below 1e14: milliseconds
        (100_000_000_000_000, "auto", 100_000_000_000),  # at 1e14: microseconds
        (1_700_000_000_123_456, "auto", 1_700_000_000_123),
        (1_700_000_000_123_500, "auto", 1_700_000_000_124),  # half a millisecond rounds up
        (-1_700_000_000_123_500, "auto", -1_700_000_000_123),  # (half up: towards +inf, as floor(x + 0.5))
        (99_999_999_999_999_499, "auto", 99_999_999_999_999),  # just below 1e17: microseconds
        (100_000_000_000_000_000, "auto", 100_000_000_000),  # at 1e17: nanoseconds
        (1_700_000_000_123_456_789, "auto", 1_700_000_000_123),  # exact: no float on the way
        (1_700_000_000_123_499_999, "ns", 1_700_000_000_123),
        (1_700_000_000_123_500_000, "ns", 1_700_000_000_124),
        (1_700_000_000_123_456, "us", 1_700_000_000_123),
        (1_700_000_000_000, "us", 1_700_000_000),  # an explicit unit is taken at its word
        (2024, "s", 2_024_000),  # (parsing only: events.min_time rejects it in decode_events)
        (1.7e15, "auto", 1_700_000_000_000),
        (1_700_000_000_123_456.0, "us", 1_700_000_000_123),
        ("1700000000123456789", "auto", 1_700_000_000_123),  # an integer string stays exact
        ("1.7e9", "auto", 1_700_000_000_000),
        ("1700000000123", "ms", 1_700_000_000_123),
        (np.int64(1_700_000_000_123_456_789), "auto", 1_700_000_000_123),
        (np.datetime64(1_700_000_000_123_456_789, "ns"), "auto", 1_700_000_000_123),  # typed: its own unit
        (np.datetime64(1_700_000_000_123_456, "us"), "s", 1_700_000_000_123),
        (np.datetime64(-1, "ns"), "auto", -1),  # (sub-ms digits are dropped, as a datetime's are: floor)
        (np.datetime64(1_700_000_000_000_000, "ms"), "ms", 1_700_000_000_000_000),  # beyond datetime: still a time
        (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), "ms", 1_700_000_000_000),
        ("1700000000", "auto", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", "auto", 1_700_000_000_000),
        ("2023-11-14T22:13:20.123+00:00", "iso", 1_700_000_000_123),
        ("2023-11-15T00:13:20+02:00", "auto", 1_700_000_000_000),
        ("2023-11-14T22:13:20", "auto", 1_700_000_000_000),  # naive ISO is UTC
        ("1969-12-31T23:59:59.999Z", "auto", -1),
        (datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC), "auto", 1_700_000_000_123),
        (datetime(2023, 11, 14, 22, 13, 20), "iso", 1_700_000_000_000),
        (datetime(2023, 11, 14, 23, 13, 20, tzinfo=timezone(timedelta(hours=1))), "auto", 1_700_000_000_000),
    ],
)
def test_parse_time(value: Any, unit: str, ms: int) -> None:
    assert parse_time_ms(value, unit) == ms


def test_parse_time_agrees_with_datetime_on_many_instants() -> None:
    rng = np.random.default_rng(0)
    for ms in rng.integers(-(10**12), 4 * 10**12, size=200):
        dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))
        assert parse_time_ms(dt.isoformat()) == ms
        assert parse_time_ms(int(ms), "ms") == ms


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        (True, "auto"),
        (None, "auto"),
        (math.nan, "auto"),
        (math.inf, "ms"),
        ("yesterday", "auto"),
        ("12", "iso"),
        ("2023-11-14", "ms"),
        (1_700_000_000, "iso"),
        ([1], "auto"),
        (1e30, "ms"),
        (1e30, "ns"),
        (2**62 + 1, "ns"),
        ("2023-11-14", "us"),
        (np.datetime64("NaT"), "auto"),
    ],
)
def test_parse_time_rejects(value: Any, unit: str) -> None:
    with pytest.raises(InputError, match="event time") as got:
        parse_time_ms(value, unit)
    assert not isinstance(got.value, ImplausibleTime)


@pytest.mark.parametrize("value", [2024, 0, -5, 99_999_999, -99_999_999, 1.5, 12_345.0, "2024", "1e7"])
def test_auto_rejects_small_numbers_as_implausible(value: Any) -> None:
    """A year, a counter, 0: no epoch clock gives these, so `auto` names them, never a 1970 window."""
    with pytest.raises(ImplausibleTime, match=r"^implausible event time .*a year or a counter\?"):
        parse_time_ms(value)


def test_auto_unit_bands_agree_with_explicit_units_and_exact_arithmetic() -> None:
    """Each magnitude band of `auto` reads a value as the explicit unit of that band does, and both
    equal the exact value (fractions) rounded to the nearest millisecond, half up."""
    scale = {"s": Fraction(1000), "ms": Fraction(1), "us": Fraction(1, 1000), "ns": Fraction(1, 10**6)}
    rng = np.random.default_rng(5)
    for lo, hi, unit in [(10**8, 10**11, "s"), (10**11, 10**14, "ms"), (10**14, 10**17, "us"), (10**17, 2**62, "ns")]:
        values = [lo, hi - 1, *rng.integers(lo, hi, 50).tolist(), lo + 500, lo + 500_000]
        for v in values:
            for x in (v, -v):
                want = math.floor(x * scale[unit] + Fraction(1, 2))
                assert parse_time_ms(x) == parse_time_ms(x, unit) == want, (x, unit)


# -- decode ---------------------------------------------------------------------------------------
def test_decode_missing_vs_invalid_vs_rejected() -> None:
    rows: list[Any] = [
        {"timestamp": 1_700_000_000_000, "features": {"x": 1.5, "c": "a"}},
        {"timestamp": 1_700_000_000_001, "features": {"x": None, "c": None}},
        {"timestamp": 1_700_000_000_002, "features": {"c": ""}},  # x absent: missing, never 0
        {"timestamp": 1_700_000_000_003, "features": {"x": float("inf"), "c": 7}},
        {"timestamp": 1_700_000_000_004, "features": {"x": True, "c": "a"}},  # bool in numeric
        {"timestamp": 1_700_000_000_005, "features": {"x": "1.5", "c": "a"}},  # string in numeric
        {"timestamp": 1_700_000_000_006, "features": {"x": 1.0, "c": 1.5}},  # float category
        {"timestamp": 1_700_000_000_007, "features": {"x": 1.0, "c": {"a": 1}}},
        {"features": {"x": 1.0}},  # no time
        {"timestamp": "soon", "features": {"x": 1.0}},
        {"timestamp": 1_700_000_000_010, "features": [1, 2]},
        "not json",
        {"timestamp": 1_700_000_000_012, "features": {"x": False, "c": True}},
    ]
    cols, errors = decode_events(rows, _cfg(), REF, ["x", "c"])
    assert cols.rows == [0, 1, 2, 3]
    x = cols.features["x"]
    assert x[0] == 1.5 and math.isnan(x[1]) and math.isnan(x[2]) and math.isinf(x[3])
    assert cols.features["c"] == ["a", None, None, "7"]
    assert [e[0] for e in errors] == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    reasons = dict(errors)
    assert "feature 'x'" in reasons[4] and "bool" in reasons[4]
    assert "feature 'x'" in reasons[5] and "str" in reasons[5]
    assert "feature 'c'" in reasons[6] and "float" in reasons[6]
    assert "missing event time field 'timestamp'" in reasons[8]
    assert "event time" in reasons[9]
    assert "features field" in reasons[10]
    assert "not a JSON object" in reasons[11]
    assert cols.time_ms.tolist() == [1_700_000_000_000 + i for i in range(4)]


def test_decode_time_fallbacks_to_kafka_timestamp() -> None:
    rows = [{"features": {"x": 1.0}}, {"timestamp": 1_600_000_000, "features": {"x": 2.0}}]
    kts = [T0 + 111, T0 + 222]
    cols, errors = decode_events(rows, _cfg(time_missing="kafka_timestamp"), REF, ["x"], kts)
    assert not errors and cols.time_ms.tolist() == [T0 + 111, 1_600_000_000_000]
    cols, errors = decode_events(rows, _cfg(time_field=None), REF, ["x"], kts)
    assert not errors and cols.time_ms.tolist() == kts
    cols, errors = decode_events(rows, _cfg(time_field=None), REF, ["x"], None)
    assert len(cols) == 0 and len(errors) == 2 and "no Kafka timestamp" in errors[0][1]


MIN_1980 = 315_532_800_000  # 1980-01-01T00:00:00Z, computed independently below
HOUR = 3_600_000


def test_min_time_default_is_1980_and_its_boundary_is_inclusive() -> None:
    assert int((datetime(1980, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000) == MIN_1980
    assert _cfg().events.min_time_ms == MIN_1980
    rows = [
        {"timestamp": MIN_1980, "features": {"x": 1.0}},  # exactly min_time: kept
        {"timestamp": MIN_1980 - 1, "features": {"x": 1.0}},  # 1 ms before
        {"timestamp": "1979-12-31T23:59:59.999Z", "features": {"x": 1.0}},
        {"timestamp": 2024, "features": {"x": 1.0}},  # a year
        {"timestamp": "2024", "features": {"x": 1.0}},
        {"timestamp": 1, "features": {"x": 1.0}},  # a counter
        {"timestamp": 0.0, "features": {"x": 1.0}},
    ]
    cols, errors = decode_events(rows, _cfg(), REF, ["x"], now_ms=T0)
    assert cols.rows == [0] and cols.time_ms.tolist() == [MIN_1980]
    assert [i for i, _r in errors] == [1, 2, 3, 4, 5, 6]
    for _i, reason in errors:
        assert reason.startswith("implausible event time"), reason
        assert "events.time_unit" in reason
    reasons = dict(errors)
    assert "before events.min_time 1980-01-01T00:00:00Z" in reasons[1] and "1979-12-31T23:59:59.999Z" in reasons[1]
    assert reasons[3].startswith("implausible event time 2024:") and "a year or a counter?" in reasons[3]
    # with an explicit unit the year is 2024 seconds after 1970: before min_time, and said so
    cols, errors = decode_events(rows[3:4], _cfg(time_unit="s"), REF, ["x"], now_ms=T0)
    assert not len(cols) and "1970-01-01T00:33:44Z" in errors[0][1] and "events.min_time" in errors[0][1]


def test_min_time_is_configurable() -> None:
    cfg = _cfg(min_time="1960-01-01T00:00:00+01:00", time_unit="s")
    assert cfg.events.min_time_ms == -315_622_800_000  # 1959-12-31T23:00:00Z
    rows = [{"timestamp": -315_622_800, "features": {"x": 1.0}}, {"timestamp": -315_622_801, "features": {"x": 1.0}}]
    cols, errors = decode_events(rows, cfg, REF, ["x"], now_ms=T0)
    assert cols.rows == [0] and [i for i, _r in errors] == [1]
    for bad, what in (("yesterday", "not an ISO-8601 time"), (5, "valid string")):
        with pytest.raises(ConfigError, match=f"events.min_time: .*{what}"):
            _cfg(min_time=bad)
    # YAML reads unquoted dates as dates
    for text, ms in (("1990-01-01", 631_152_000_000), ("1990-01-01T01:00:00Z", 631_155_600_000)):
        data = yaml.safe_load(f"monitor: m\nreference: r\nevents:\n  min_time: {text}\n")
        assert MonitorConfig.from_mapping(data).events.min_time_ms == ms


def test_future_skew_against_the_kafka_timestamp_and_the_clock() -> None:
    """At most ``max_future_skew`` (default 1h) ahead of the message's Kafka timestamp; without one,
    of ``now_ms``; the boundary itself is kept."""
    kts = T0
    rows = [
        {"timestamp": kts + HOUR, "features": {"x": 1.0}},  # exactly the skew: kept
        {"timestamp": kts + HOUR + 1, "features": {"x": 1.0}},
        {"timestamp": (kts + 3 * HOUR) * 1000, "features": {"x": 1.0}},  # µs, read as µs by auto: too far
        {"timestamp": kts - 10 * 365 * 24 * HOUR, "features": {"x": 1.0}},  # 10 years old: fine
    ]
    cols, errors = decode_events(rows, _cfg(), REF, ["x"], [kts] * 4, now_ms=0)
    assert cols.rows == [0, 3] and [i for i, _r in errors] == [1, 2]
    for _i, reason in errors:
        assert reason.startswith("future event time"), reason
        assert "events.max_future_skew" in reason and "its Kafka timestamp" in reason
    # no Kafka timestamp: the clock (now_ms) instead
    cols, errors = decode_events(rows, _cfg(), REF, ["x"], [None] * 4, now_ms=kts)
    assert cols.rows == [0, 3] and "ahead of the clock" in errors[0][1]
    cols, errors = decode_events(rows, _cfg(), REF, ["x"], None, now_ms=kts + HOUR)
    assert cols.rows == [0, 1, 3]
    # a configured skew
    cols, errors = decode_events(rows, _cfg(max_future_skew="2h"), REF, ["x"], [kts] * 4)
    assert cols.rows == [0, 1, 3]
    with pytest.raises(ConfigError, match=r"events\.max_future_skew: '0s' is not positive"):
        _cfg(max_future_skew="0s")


def test_microseconds_sent_as_milliseconds_are_future_not_year_55000() -> None:
    """The bug this guards: a µs time read as ms is the year ~55,800; with time_unit: ms it is rejected
    (future_time), with auto it is read as µs."""
    us = 1_700_000_000_123_456
    cols, errors = decode_events([{"timestamp": us, "features": {"x": 1.0}}], _cfg(time_unit="ms"), REF, ["x"], [T0])
    assert not len(cols) and errors[0][1].startswith("future event time 1700000000123456 (year 55840)")
    cols, errors = decode_events([{"timestamp": us, "features": {"x": 1.0}}], _cfg(), REF, ["x"], [T0])
    assert not errors and cols.time_ms.tolist() == [1_700_000_000_123]


def test_kafka_timestamp_as_event_time_is_checked_against_min_time_only() -> None:
    rows = [{"features": {"x": 1.0}}, {"features": {"x": 1.0}}]
    for cfg in (_cfg(time_field=None), _cfg(time_missing="kafka_timestamp")):
        cols, errors = decode_events(rows, cfg, REF, ["x"], [5, T0 + 100 * HOUR], now_ms=T0)
        assert cols.rows == [1] and errors[0][1].startswith("implausible event time 5 ")
    cols, errors = decode_events(rows[:1], _cfg(time_missing="kafka_timestamp"), REF, ["x"], [None])
    assert "missing event time field 'timestamp'" in errors[0][1]


def test_decode_top_level_features_segments_prediction_label() -> None:
    cfg = _cfg(features_field=None, segment_fields=["country", "tier"], prediction_field="score", label_field="y")
    rows = [
        {"timestamp": T0 + 1, "x": 1.0, "c": "a", "country": "fr", "tier": 2, "score": 0.8, "y": True},
        {"timestamp": T0 + 2, "x": 2.0, "c": "b", "country": None, "score": None, "y": 0},
        {"timestamp": T0 + 3, "x": 2.0, "c": "b", "country": 1.5},
        {"timestamp": T0 + 4, "x": 2.0, "c": "b", "score": "high"},
    ]
    cols, errors = decode_events(rows, cfg, REF, ["x", "c"])
    assert cols.segments == [("fr", "2"), ("__missing__", "__missing__")]
    assert cols.prediction[0] == 0.8 and math.isnan(cols.prediction[1])
    assert cols.label.tolist() == [1.0, 0.0]
    assert [e[0] for e in errors] == [2, 3]
    assert "segment field 'country'" in errors[0][1] and "field 'score'" in errors[1][1]


def test_concept_values_for_every_stream_kind() -> None:
    rows = [
        {"timestamp": T0 + 1, "features": {"x": 1.0, "c": "a"}, "s": 0.9, "y": 1},
        {"timestamp": T0 + 2, "features": {"x": 2.0, "c": "a"}, "s": 0.7, "y": 0},
        {"timestamp": T0 + 3, "features": {"x": None, "c": "a"}, "s": 0.2, "y": 0},
        {"timestamp": T0 + 4, "features": {"x": 4.0, "c": "a"}, "s": None, "y": 1},
    ]
    base = {"monitor": "m", "reference": "r", "events": {"prediction_field": "s", "label_field": "y"}}
    cfg = MonitorConfig.from_mapping(base)
    cols, _ = decode_events(rows, cfg, REF, ["x", "c"])
    got = concept_values(cols, cfg)
    assert got[:3] == pytest.approx([0.1, 0.7, 0.2]) and math.isnan(got[3])
    cfg = MonitorConfig.from_mapping({**base, "concept": {"error": "misclassification", "threshold": 0.5}})
    got = concept_values(cols, cfg)
    assert got[:3].tolist() == [0.0, 1.0, 0.0] and math.isnan(got[3])
    cfg = MonitorConfig.from_mapping({**base, "concept": {"stream": "feature:x"}})
    got = concept_values(cols, cfg)
    assert got[[0, 1, 3]].tolist() == [1.0, 2.0, 4.0] and math.isnan(got[2])
    for bad in ("feature:c", "feature:nope"):
        cfg = MonitorConfig.from_mapping({**base, "concept": {"stream": bad}})
        with pytest.raises(InputError, match=bad):
            concept_values(cols, cfg)


def test_concept_values_never_pass_infinities_to_a_detector() -> None:
    rows = [
        {"timestamp": T0 + 1, "features": {"x": float("inf"), "c": "a"}, "s": float("inf"), "y": 1},
        {"timestamp": T0 + 2, "features": {"x": -float("inf"), "c": "a"}, "s": 0.5, "y": 0},
    ]
    base = {"monitor": "m", "reference": "r", "events": {"prediction_field": "s", "label_field": "y"}}
    for concept in ({}, {"stream": "feature:x"}):
        cfg = MonitorConfig.from_mapping({**base, "concept": concept})
        cols, errors = decode_events(rows, cfg, REF, ["x", "c"])
        assert not errors
        got = concept_values(cols, cfg)
        if concept:
            assert np.isnan(got).all()
        else:
            assert math.isnan(got[0]) and got[1] == 0.5


def test_huge_integers_are_rejected_not_crashing() -> None:
    huge = 10**6000  # beyond float range and beyond Python's int-to-str limit
    rows = [
        {"timestamp": huge, "features": {"x": 1.0, "c": "a"}},
        {"timestamp": T0 + 1, "features": {"x": huge, "c": "a"}},
        {"timestamp": T0 + 1, "features": {"x": 1.0, "c": huge}},
        {"timestamp": T0 + 1, "features": {"x": 1.0, "c": 12}},
    ]
    cols, errors = decode_events(rows, _cfg(), REF, ["x", "c"])
    assert cols.rows == [3] and cols.features["c"] == ["12"]
    reasons = dict(errors)
    assert "out of range" in reasons[0]
    assert "feature 'x'" in reasons[1] and "too large" in reasons[1]
    assert "feature 'c'" in reasons[2] and "too long" in reasons[2]
    with pytest.raises(InputError, match="too large"):
        ReferenceProfile.build({"x": [1.0, huge]})
