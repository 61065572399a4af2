"""Events to columns: the reference validation semantics (time parsing, missing vs invalid, rejections)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.events import concept_values, decode_events, parse_time_ms
from detectors.exceptions import InputError
from detectors.reference import ReferenceProfile

pytestmark = pytest.mark.unit

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
    ],
)
def test_parse_time_rejects(value: Any, unit: str) -> None:
    with pytest.raises(InputError, match="event time"):
        parse_time_ms(value, unit)


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
    rows = [{"features": {"x": 1.0}}, {"timestamp": 5_000, "features": {"x": 2.0}}]
    cols, errors = decode_events(rows, _cfg(time_missing="kafka_timestamp"), REF, ["x"], [111, 222])
    assert not errors and cols.time_ms.tolist() == [111, 5_000_000]
    cols, errors = decode_events(rows, _cfg(time_field=None), REF, ["x"], [111, 222])
    assert not errors and cols.time_ms.tolist() == [111, 222]
    cols, errors = decode_events(rows, _cfg(time_field=None), REF, ["x"], None)
    assert len(cols) == 0 and len(errors) == 2 and "no Kafka timestamp" in errors[0][1]


def test_decode_top_level_features_segments_prediction_label() -> None:
    cfg = _cfg(features_field=None, segment_fields=["country", "tier"], prediction_field="score", label_field="y")
    rows = [
        {"timestamp": 1, "x": 1.0, "c": "a", "country": "fr", "tier": 2, "score": 0.8, "y": True},
        {"timestamp": 2, "x": 2.0, "c": "b", "country": None, "score": None, "y": 0},
        {"timestamp": 3, "x": 2.0, "c": "b", "country": 1.5},
        {"timestamp": 4, "x": 2.0, "c": "b", "score": "high"},
    ]
    cols, errors = decode_events(rows, cfg, REF, ["x", "c"])
    assert cols.segments == [("fr", "2"), ("__missing__", "__missing__")]
    assert cols.prediction[0] == 0.8 and math.isnan(cols.prediction[1])
    assert cols.label.tolist() == [1.0, 0.0]
    assert [e[0] for e in errors] == [2, 3]
    assert "segment field 'country'" in errors[0][1] and "field 'score'" in errors[1][1]


def test_concept_values_for_every_stream_kind() -> None:
    rows = [
        {"timestamp": 1, "features": {"x": 1.0, "c": "a"}, "s": 0.9, "y": 1},
        {"timestamp": 2, "features": {"x": 2.0, "c": "a"}, "s": 0.7, "y": 0},
        {"timestamp": 3, "features": {"x": None, "c": "a"}, "s": 0.2, "y": 0},
        {"timestamp": 4, "features": {"x": 4.0, "c": "a"}, "s": None, "y": 1},
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
        {"timestamp": 1, "features": {"x": float("inf"), "c": "a"}, "s": float("inf"), "y": 1},
        {"timestamp": 2, "features": {"x": -float("inf"), "c": "a"}, "s": 0.5, "y": 0},
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
        {"timestamp": 1, "features": {"x": huge, "c": "a"}},
        {"timestamp": 1, "features": {"x": 1.0, "c": huge}},
        {"timestamp": 1, "features": {"x": 1.0, "c": 12}},
    ]
    cols, errors = decode_events(rows, _cfg(), REF, ["x", "c"])
    assert cols.rows == [3] and cols.features["c"] == ["12"]
    reasons = dict(errors)
    assert "out of range" in reasons[0]
    assert "feature 'x'" in reasons[1] and "too large" in reasons[1]
    assert "feature 'c'" in reasons[2] and "too long" in reasons[2]
    with pytest.raises(InputError, match="too large"):
        ReferenceProfile.build({"x": [1.0, huge]})
