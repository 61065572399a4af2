"""The fast decoder equals the reference semantics (json.loads + decode_events) message by message."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.config import MonitorConfig
from detectors.histogram import FeatureColumns, Layout
from detectors.reference import ReferenceProfile
from stream.decode import AVRO_REASON_CODES, REASON_CODES, EventDecoder, reference_decode

pytestmark = pytest.mark.unit


def _reference() -> ReferenceProfile:
    rng = np.random.default_rng(7)
    return ReferenceProfile.build(
        {
            "x": rng.normal(0, 1, 2000),
            "y": rng.exponential(2.0, 2000),
            "c": rng.choice(["a", "b", "c", "1", "true"], 2000).tolist(),
        },
        features=["x", "y", "c"],
        categorical=["c"],
        fine_bins=20,
        coarse_bins=5,
    )


def _config(**events: object) -> MonitorConfig:
    ev = {"segment_fields": ["country"], "prediction_field": "score", "label_field": "label"}
    ev.update(events)
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "unused.json", "events": ev})


REF = _reference()
FEATURES = ["x", "y", "c"]
LAYOUT = Layout(REF, FEATURES)
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
NOW = 1_800_000_000_000  # the injected clock (2027-01-15T08:00:00Z): future times are checked against it
HOUR = 3_600_000


def decoder(config: MonitorConfig, now_ms: int = NOW, max_event_bytes: int = 1 << 20) -> EventDecoder:
    return EventDecoder(config, REF, FEATURES, max_event_bytes, wall_clock=lambda: now_ms / 1000)


def assert_same(
    values: list[bytes | None], config: MonitorConfig, kts: list[int | None] | None = None, now_ms: int = NOW
) -> None:
    fast, rejected = decoder(config, now_ms, max_event_bytes=10_000).decode(values, kts)
    slow, errors = reference_decode(values, config, REF, FEATURES, kts, now_ms)
    # the size limit is the only rejection the reference path does not know about
    too_large = {r.index for r in rejected if r.code == "too_large"}
    assert sorted((r.index, r.reason) for r in rejected if r.code != "too_large") == [
        e for e in errors if e[0] not in too_large
    ]
    assert all(r.code in REASON_CODES for r in rejected)
    keep = [i for i, r in enumerate(slow.rows) if r not in too_large]
    assert fast.rows == [slow.rows[i] for i in keep]
    np.testing.assert_array_equal(fast.time_ms, slow.time_ms[keep])
    for f in FEATURES:
        a, b = fast.features[f], slow.features[f]
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b[keep])  # NaN == NaN here
            assert a.dtype == np.float64
        else:
            assert a == [b[i] for i in keep]
    assert fast.segments == [slow.segments[i] for i in keep]
    if fast.segment_values is not None:  # (the one segment field's plain values, for routing)
        assert [(v,) for v in fast.segment_values] == fast.segments
    np.testing.assert_array_equal(fast.prediction, slow.prediction[keep])
    np.testing.assert_array_equal(fast.label, slow.label[keep])
    # the slots the decoder carries (numeric matrix, categorical codes) bin like the reference's columns
    assert isinstance(fast.features, FeatureColumns) and set(fast.features.carried(REF)) == {"c"}
    plain = {f: b[keep] if isinstance(b, np.ndarray) else [b[i] for i in keep] for f, b in slow.features.items()}
    np.testing.assert_array_equal(LAYOUT.flat_indices(fast.features, len(keep)), LAYOUT.flat_indices(plain, len(keep)))


def ev(t: object = T0, **kw: object) -> dict[str, object]:
    d: dict[str, object] = {"timestamp": t, "features": {"x": 0.5, "y": 1.0, "c": "a"}, "country": "de"}
    d.update(kw)
    return d


VARIED: list[bytes | None] = [
    json.dumps(ev()).encode(),
    json.dumps(ev(1_700_000_000)).encode(),  # seconds
    json.dumps(ev(1_700_000_000.4567)).encode(),
    json.dumps(ev(1_700_000_000_123_456)).encode(),  # microseconds (auto)
    json.dumps(ev(1_700_000_000_123_456_789)).encode(),  # nanoseconds (auto)
    json.dumps(ev("1700000000123456789")).encode(),  # nanoseconds as text
    json.dumps(ev(1_700_000_000_123_456.5)).encode(),  # microseconds as a float
    json.dumps(ev(2024)).encode(),  # a year: implausible
    json.dumps(ev(0)).encode(),  # 1970 by accident: implausible
    json.dumps(ev(-1_700_000_000_000)).encode(),  # before 1970: implausible
    json.dumps(ev("1979-12-31T23:59:59Z")).encode(),  # before events.min_time: implausible
    json.dumps(ev(NOW + 2 * HOUR)).encode(),  # ahead of the clock: future
    json.dumps(ev("2999-01-01T00:00:00Z")).encode(),  # future
    json.dumps(ev(1_700_000_000_000_000_000_000)).encode(),  # beyond int64 (as ns: far future)
    json.dumps(ev("2023-11-14T22:13:20.5Z")).encode(),
    json.dumps(ev("2023-11-14T22:13:20+02:00")).encode(),
    json.dumps(ev("1700000000")).encode(),  # numeric string
    json.dumps(ev("yesterday")).encode(),  # bad time
    json.dumps(ev(True)).encode(),  # bad time
    json.dumps(ev(None)).encode(),  # missing time
    json.dumps({k: v for k, v in ev().items() if k != "timestamp"}).encode(),
    json.dumps(ev(features={"x": None, "c": ""})).encode(),  # missing values
    json.dumps(ev(features={"x": 3, "y": -2, "c": 1})).encode(),  # ints
    json.dumps(ev(features={"x": "3", "y": 1.0, "c": "a"})).encode(),  # wrong type
    json.dumps(ev(features={"x": True})).encode(),  # bool is not a number
    json.dumps(ev(features={"x": 1.0, "c": 2.5})).encode(),  # float category
    json.dumps(ev(features={"x": 1.0, "c": True})).encode(),  # bool category
    json.dumps(ev(features={"x": 1.0, "c": ["a"]})).encode(),
    json.dumps(ev(features=None)).encode(),
    json.dumps(ev(features=[1, 2])).encode(),
    json.dumps({k: v for k, v in ev().items() if k != "features"}).encode(),
    json.dumps(ev(country=None)).encode(),
    json.dumps(ev(country=3)).encode(),
    json.dumps(ev(country=False)).encode(),
    json.dumps(ev(country=1.5)).encode(),
    json.dumps(ev(score=0.7, label=1)).encode(),
    json.dumps(ev(score=True, label=False)).encode(),
    json.dumps(ev(score="0.7", label=1)).encode(),
    json.dumps(ev(score=None, label=None)).encode(),
    b'{"timestamp": 1700000000000, "features": {"x": NaN, "y": Infinity, "c": "b"}}',
    b'{"timestamp": 1e400, "features": {}}',
    b'{"timestamp": 123456789012345678901234567890, "features": {}}',
    b'{"timestamp": NaN, "features": {}}',
    b'{"timestamp": 1700000000000, "features": {"x": 1e400}}',
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"not json at all",
    b"\xff\xfe garbage",
    b'{"timestamp": 1700000000000, "features": {"x": 1.0}',  # truncated
    b"",
    None,
    json.dumps(ev(features={"x": 1.0, "pad": "p" * 20_000})).encode(),  # too large
    json.dumps(ev(extra={"nested": [1, {"a": None}]})).encode(),
]


def test_varied_messages_match_reference() -> None:
    assert_same(VARIED, _config())


def test_kafka_timestamp_fallback_and_time_units() -> None:
    kts: list[int | None] = [T0 + i for i in range(len(VARIED))]
    assert_same(VARIED, _config(time_missing="kafka_timestamp"), kts)
    assert_same(VARIED, _config(time_field=None), kts)
    for unit in ("auto", "s", "ms", "us", "ns", "iso"):
        assert_same(VARIED, _config(time_unit=unit), kts)
        assert_same(VARIED, _config(time_unit=unit), [None, *kts[1:-1], None])  # (some without: the clock)
    assert_same(VARIED, _config(time_field=None), [None, 5, *kts[2:]])  # (a Kafka timestamp of 1970: implausible)


def test_time_rejections_are_coded_and_keep_the_other_rows() -> None:
    us = 1_700_000_000_123_456
    msgs = [json.dumps(ev(t)).encode() for t in (T0, us, 2024, T0 + 1, T0 + 2 * HOUR, "1960-01-01T00:00:00Z", T0 + 2)]
    cols, rejected = decoder(_config(time_unit="ms")).decode(msgs, [T0] * len(msgs))
    assert cols.rows == [0, 3, 6] and cols.time_ms.tolist() == [T0, T0 + 1, T0 + 2]
    assert [(r.index, r.code) for r in rejected] == [
        (1, "future_time"),
        (2, "implausible_time"),
        (4, "future_time"),
        (5, "bad_time"),  # (text under time_unit: ms)
    ]
    cols, rejected = decoder(_config()).decode(msgs, [T0] * len(msgs))  # auto
    assert cols.rows == [0, 1, 3, 6] and cols.time_ms.tolist()[1] == 1_700_000_000_123
    assert [(r.index, r.code) for r in rejected] == [
        (2, "implausible_time"),
        (4, "future_time"),
        (5, "implausible_time"),
    ]
    assert_same(msgs, _config(time_unit="ms"), [T0] * len(msgs))
    assert_same(msgs, _config(), [T0] * len(msgs))


def test_future_check_uses_the_clock_only_without_a_kafka_timestamp() -> None:
    msgs = [json.dumps(ev(T0 + i * HOUR)).encode() for i in range(4)]
    cols, rejected = decoder(_config(), now_ms=T0).decode(msgs)  # no Kafka timestamps: the clock
    assert cols.rows == [0, 1] and {r.code for r in rejected} == {"future_time"}
    cols, rejected = decoder(_config(), now_ms=T0).decode(msgs, [T0 + 2 * HOUR, None, T0 + 2 * HOUR, None])
    assert cols.rows == [0, 1, 2] and [r.index for r in rejected] == [3]


def test_features_at_top_level() -> None:
    msgs = [
        json.dumps({"timestamp": 1_700_000_000_000 + i, **e["features"]}).encode()
        for i, e in enumerate(
            [ev(), ev(features={"x": None, "c": 1}), ev(features={"x": "bad"}), ev(features={"y": 2})]
        )
    ]
    assert_same(msgs, _config(features_field=None, segment_fields=[]))


def test_a_categorical_that_is_also_the_segment_keeps_the_typed_path() -> None:
    msgs = [
        json.dumps({"timestamp": 1_700_000_000_000 + i, "x": 1.0, "y": 2.0, "c": c}).encode()
        for i, c in enumerate(["a", "zz", "", None, True, 1, "b"])
    ]
    decoder = EventDecoder(_config(features_field=None, segment_fields=["c"]), REF, FEATURES)
    assert decoder._decoder is not None
    assert_same(msgs, _config(features_field=None, segment_fields=["c"]))


MIN_1980 = 315_532_800_000
UNITS = ("auto", "s", "ms", "us", "ns")


def plausible_time(unit: str) -> st.SearchStrategy[int]:
    """Integer times in ``unit`` that decode_events accepts with the clock at NOW (1980 .. NOW + 1h)."""
    ms = st.integers(MIN_1980 + 1000, NOW + HOUR - 1)
    if unit == "s":
        return ms.map(lambda m: m // 1000)
    if unit == "ms":
        return ms
    if unit == "us":
        return st.builds(lambda m, f: m * 1000 + f, ms, st.integers(0, 999))
    if unit == "ns":
        return st.builds(lambda m, f: m * 10**6 + f, ms, st.integers(0, 10**6 - 1))
    return st.one_of(*(plausible_time(u) for u in UNITS[1:]))  # auto: any unit, per value


def strict_event(unit: str) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda t, x, c, country: json.dumps(
            {
                "timestamp": t,
                "features": {"y": 1.5, **({} if x is ... else {"x": x}), **({} if c is ... else {"c": c})},
                "country": country,
            }
        ).encode(),
        plausible_time(unit),  # (no row leaves the batch path)
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.none(), st.integers(-(10**6), 10**6), st.just(...)
        ),
        st.one_of(st.sampled_from(["a", "b", "c", "1", "true", "zz", "", "ä"]), st.text(max_size=3), st.just(...)),
        st.sampled_from(["de", "fr"]),
    )


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(UNITS).flatmap(lambda u: st.tuples(st.just(u), st.lists(strict_event(u), min_size=1, max_size=30)))
)
def test_strict_batches_bin_categoricals_while_decoding(case: tuple[str, list[bytes]]) -> None:
    """Batches the strict decoder takes whole: categoricals arrive as their slots, with the
    reference's values (string, None for "" or absent) on demand."""
    from stream.decode import CodedColumn

    unit, msgs = case
    cols, rejected = decoder(_config(time_unit=unit)).decode(msgs)
    assert not rejected and cols.rows == list(range(len(msgs)))
    assert isinstance(cols.features["c"], CodedColumn)  # the strict decoder took the batch
    # its slots are the last column of its float matrix (numeric values, then slots), binned whole
    assert isinstance(cols.features, FeatureColumns) and cols.features.coded == ("c",)
    assert cols.features.matrix is not None and cols.features.matrix.shape == (len(msgs), 3)
    assert_same(msgs, _config(time_unit=unit))


def test_events_with_fields_the_monitor_does_not_read_take_the_lenient_decoder_and_the_nesting_check() -> None:
    from stream.decode import MAX_EVENT_DEPTH, STRICT_RETRY

    decoder = EventDecoder(_config(), REF, FEATURES)
    clean = [json.dumps(ev(T0 + i)).encode() for i in range(20)]
    cols, rejected = decoder.decode(clean)
    assert cols.rows == list(range(20)) and not rejected and decoder._strict_wait == 0  # strict took them all
    deep = json.loads("[" * MAX_EVENT_DEPTH + "]" * MAX_EVENT_DEPTH)
    mixed = [*clean[:5], json.dumps(ev(T0 + 5, extra=1)).encode(), json.dumps(ev(T0 + 6, extra=deep)).encode()]
    cols, rejected = decoder.decode(mixed)
    assert cols.rows == [0, 1, 2, 3, 4, 5] and [(r.index, r.code) for r in rejected] == [(6, "too_large")]
    assert decoder._strict_wait == STRICT_RETRY  # the next batches skip the strict attempt
    assert_same(mixed, _config())


def test_a_key_read_two_ways_takes_the_reference_path() -> None:
    # the segment field is also the numeric feature "x" at the top level: no typed fast path
    msgs = [
        json.dumps({"timestamp": 1_700_000_000_000, "x": 1.5, "y": 2.0, "c": "a"}).encode(),
        json.dumps({"timestamp": 1_700_000_000_001, "x": "de", "y": 2.0, "c": "b"}).encode(),
        json.dumps({"timestamp": 1_700_000_000_002, "y": 2.0}).encode(),
    ]
    assert_same(msgs, _config(features_field=None, segment_fields=["x"]))


def test_rejections_are_coded() -> None:
    cfg = _config()
    _cols, rejected = EventDecoder(cfg, REF, FEATURES, max_event_bytes=10_000).decode(VARIED)
    codes = {r.code for r in rejected}
    assert codes == set(REASON_CODES) - set(AVRO_REASON_CODES)
    by_index = {r.index: r for r in rejected}
    assert by_index[VARIED.index(b"not json at all")].code == "not_json"
    assert by_index[VARIED.index(b"[1, 2, 3]")].code == "not_object"
    assert by_index[len(VARIED) - 2].code == "too_large"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["a", "b", "1", "", "2023-11-14T22:13:20Z", "1700000000", "true"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
feature_obj = st.fixed_dictionaries(
    {}, optional={"x": json_values, "y": json_values, "c": json_values, "z": json_values}
)
event_obj = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": st.one_of(json_scalars, st.integers(min_value=0, max_value=2 * 10**12)),
        "features": st.one_of(feature_obj, json_values),
        "country": json_values,
        "score": json_values,
        "label": json_values,
    },
)
message = st.one_of(
    event_obj.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, min_size=1, max_size=20))
def test_hypothesis_messages_match_reference(msgs: list[bytes]) -> None:
    assert_same(list(msgs), _config())
    assert_same(list(msgs), _config(time_missing="kafka_timestamp"), [1_650_000_000_000] * len(msgs))
    assert_same(list(msgs), _config(time_unit="us"), [T0] * len(msgs))


def test_missing_is_not_zero() -> None:
    msgs = [json.dumps(ev(features={"x": None, "y": 0.0, "c": None})).encode()]
    cols, rejected = EventDecoder(_config(), REF, FEATURES).decode(msgs)
    assert not rejected
    assert math.isnan(cols.features["x"][0]) and cols.features["y"][0] == 0.0 and cols.features["c"] == [None]


def test_deep_nesting_is_rejected_before_parsing() -> None:
    from stream.decode import MAX_EVENT_DEPTH

    def nested(depth: int) -> bytes:
        inner = "[" * depth + "]" * depth
        return f'{{"timestamp": 1700000000000, "features": {{"x": 1.0}}, "deep": {inner}}}'.encode()

    ok, deep, huge = nested(MAX_EVENT_DEPTH - 1), nested(MAX_EVENT_DEPTH), b"[" * 50_000 + b"]" * 50_000
    in_string = json.dumps(ev(note="[" * 500)).encode()  # brackets inside a string do not nest
    cols, rejected = EventDecoder(_config(), REF, FEATURES).decode([ok, deep, huge, in_string])
    assert cols.rows == [0, 3]
    assert [(r.index, r.code) for r in rejected] == [(1, "too_large"), (2, "too_large")]
    assert "deeper than" in rejected[0].reason


# -- the batch path: batches where every message is for the typed decoder ------------------------
any_time = st.one_of(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.integers(min_value=-(10**12), max_value=10**12),  # seconds and milliseconds around 1e11
    st.sampled_from(
        [2**53, 2**53 + 1, -(2**53) - 1, 2**53 // 1000, 2**53 // 1000 + 1, 10**11, 10**11 - 1, 2**62 + 1, 2**62]
    ),
    # the edges of auto's bands, min_time and the future limit
    st.sampled_from([10**8 - 1, 10**8, 10**14 - 1, 10**14, 10**17 - 1, 10**17, MIN_1980 - 1, MIN_1980]),
    st.sampled_from([NOW + HOUR, NOW + HOUR + 1, (NOW + HOUR) * 1000 + 499, (NOW + HOUR) * 1000 + 500]),
    st.sampled_from([(NOW + HOUR) * 10**6 + 499_999, (NOW + HOUR) * 10**6 + 500_000, (NOW + HOUR) // 1000 + 1]),
)


def valid_event(time: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda t, x, y, c, country, score: json.dumps(
            {"timestamp": t, "features": {"x": x, "y": y, "c": c}, "country": country, "score": score, "label": 1}
        ).encode(),
        time,
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none(), st.integers(-(10**6), 10**6)),
        st.floats(-5, 5),
        st.one_of(st.sampled_from(["a", "b", "zz", ""]), st.none(), st.booleans(), st.integers(0, 3)),
        st.one_of(st.sampled_from(["de", "fr", ""]), st.none(), st.integers(0, 2)),
        st.one_of(st.floats(0, 1), st.none(), st.booleans()),
    )


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([*UNITS, "iso"]).flatmap(
        lambda u: st.tuples(
            st.just(u),
            st.lists(
                valid_event(st.one_of(any_time, plausible_time(u if u != "iso" else "ms"))), min_size=1, max_size=40
            ),
            st.sampled_from([None, "same", "mixed"]),
        )
    )
)
def test_batches_of_typed_messages_match_reference(case: tuple[str, list[bytes], str | None]) -> None:
    """Integer times of every magnitude (the vectorised rule) in every unit, with and without Kafka
    timestamps: the same times and the same rejections as the reference."""
    unit, msgs, stamps = case
    kts: list[int | None] | None = None
    if stamps == "same":
        kts = [T0] * len(msgs)
    elif stamps == "mixed":
        kts = [None if i % 3 == 0 else NOW - HOUR * (i % 5) for i in range(len(msgs))]
    assert_same(msgs, _config(time_unit=unit), kts)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(UNITS).flatmap(
        lambda u: st.tuples(st.just(u), st.lists(plausible_time(u), min_size=1, max_size=40))
    )
)
def test_plausible_integer_times_stay_on_the_batch_path(case: tuple[str, list[int]]) -> None:
    """Times every unit accepts are all kept by the vectorised rule, with the reference's values."""
    unit, times = case
    msgs = [json.dumps(ev(t)).encode() for t in times]
    cols, rejected = decoder(_config(time_unit=unit)).decode(msgs)
    assert not rejected and cols.rows == list(range(len(msgs)))
    ref, _ = reference_decode(msgs, _config(time_unit=unit), REF, FEATURES, None, NOW)
    assert cols.time_ms.tolist() == ref.time_ms.tolist()


def test_batch_path_on_a_large_clean_batch_and_with_one_bad_message() -> None:
    rng = np.random.default_rng(11)
    msgs = [
        json.dumps(ev(int(1_700_000_000_000 + i), features={"x": float(x), "y": 1.0, "c": "b"})).encode()
        for i, x in enumerate(rng.normal(size=2000))
    ]
    assert_same(msgs, _config())
    bad = [*msgs[:700], b'{"timestamp": "soon", "features": {}}', *msgs[700:1500], b"{", *msgs[1500:]]
    assert_same(bad, _config())
    cols, rejected = EventDecoder(_config(), REF, FEATURES).decode(bad)
    assert [r.index for r in rejected] == [700, 1501]
    assert cols.rows == [i for i in range(2002) if i not in (700, 1501)]


def test_message_boundaries_hold_on_the_batch_path() -> None:
    """Two events in one message, and one event split over two messages, are each rejected."""
    one = json.dumps(ev()).encode()
    two_in_one = one + b"," + one
    head, tail = one[:20], one[20:]
    cols, rejected = EventDecoder(_config(), REF, FEATURES).decode([one, two_in_one, head, tail, one])
    assert cols.rows == [0, 4]
    assert [r.index for r in rejected] == [1, 2, 3]
    assert_same([one, two_in_one, head, tail, one], _config())


def test_nesting_bound_per_batch_does_not_reject_shallow_messages() -> None:
    """Many shallow nested fields add up past the limit over a batch; only the deep message goes."""
    from stream.decode import MAX_EVENT_DEPTH

    shallow = json.dumps(ev(extra=[[{"a": [1]}]] * 5)).encode()  # depth 5, 20 openers
    deep = json.dumps(ev(extra=json.loads("[" * MAX_EVENT_DEPTH + "]" * MAX_EVENT_DEPTH))).encode()
    cols, rejected = EventDecoder(_config(), REF, FEATURES).decode([shallow] * 50 + [deep] + [shallow] * 50)
    assert cols.rows == [i for i in range(101) if i != 50]
    assert [(r.index, r.code) for r in rejected] == [(50, "too_large")]


def test_numeric_only_batches_convert_missing_values_to_nan() -> None:
    """The numeric-only strict path packs a batch's values as doubles; a batch with a missing value
    (None) takes the conversion that maps it to NaN. Both equal the reference path value by value."""
    numeric = ["x", "y"]
    cfg = _config(segment_fields=[], prediction_field=None, label_field=None)
    full = [json.dumps({"timestamp": T0 + i, "features": {"x": i / 7, "y": -i * 1e300}}).encode() for i in range(50)]
    holed = [*full[:20], json.dumps({"timestamp": T0, "features": {"x": None, "y": 2.5}}).encode(), *full[20:]]
    for msgs in (full, holed):
        dec = EventDecoder(cfg, REF, numeric, wall_clock=lambda: NOW / 1000)
        cols, rejected = dec.decode(msgs)
        slow, errors = reference_decode(msgs, cfg, REF, numeric, None, NOW)
        assert rejected == [] and errors == [] and cols.rows == slow.rows == list(range(len(msgs)))
        for f in numeric:
            got = cols.features[f]
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, slow.features[f])
    assert math.isnan(float(cols.features["x"][20])) and float(cols.features["y"][20]) == 2.5
    assert float(cols.features["y"][49]) == -48 * 1e300
