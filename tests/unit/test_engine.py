"""The local engine: window assignment, segments, order invariance and concept records,
each compared with an independent computation from the documented definitions."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift

from detectors.config import MonitorConfig
from detectors.engine import ConceptTracker, SegmentRouter, WindowSpec, record_sort_key, run_local
from detectors.evaluate import evaluate_counts, parse_iso_ms, window_records
from detectors.events import EventColumns, decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(20)
REF = ReferenceProfile.build(
    {"x": RNG.normal(size=3000), "c": RNG.choice(["a", "b", "c"], size=3000).tolist()},
    categorical=["c"],
    fine_bins=20,
    coarse_bins=5,
)
LAYOUT = Layout(REF)


def _config(window: dict[str, Any], **extra: Any) -> MonitorConfig:
    doc: dict[str, Any] = {
        "monitor": "m",
        "reference": "r.json",
        "events": {"segment_fields": ["g"]},
        "window": window,
        "statistics": {"min_events": 5},
        "concept": {"detector": "none"},
    }
    doc.update(extra)
    return MonitorConfig.from_mapping(doc)


def _events(n: int, seed: int, t0: int = 1_700_000_000_000, span_ms: int = 3_600_000) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t0 + span_ms, size=n))
    x = rng.normal(np.linspace(0, 1.0, n), 1.0)
    x[rng.random(n) < 0.05] = np.nan
    return [
        {
            "timestamp": int(t[i]),
            "g": str(rng.choice(["eu", "us", "apac"])),
            "features": {"x": None if math.isnan(x[i]) else float(x[i]), "c": str(rng.choice(["a", "b", "c", "z"]))},
        }
        for i in range(n)
    ]


def _decode(rows: list[dict[str, Any]], cfg: MonitorConfig) -> EventColumns:
    cols, errors = decode_events(rows, cfg, REF, LAYOUT.features)
    assert not errors
    return cols


def _expected_time_records(cols: EventColumns, cfg: MonitorConfig) -> list[dict[str, Any]]:
    """Window membership straight from the definition: windows start at multiples of the slide
    in (t - size, t]; a window is reported per segment when it holds one of its events."""
    size, slide = cfg.window.size_ms, cfg.window.slide_ms
    t = cols.time_ms
    seg_keys = cols.segments
    segments: list[tuple[dict[str, str], np.ndarray]] = [({}, np.ones(len(t), dtype=bool))]
    for key in dict.fromkeys(seg_keys):
        segments.append(({"g": key[0]}, np.array([s == key for s in seg_keys])))
    out = []
    for seg, seg_mask in segments:
        starts: set[int] = set()
        for ti in t[seg_mask]:
            first = (int(ti) - size) // slide * slide + slide  # smallest multiple of slide > t - size
            starts.update(range(first, int(ti) + 1, slide))
        for s in sorted(starts):
            mask = seg_mask & (t >= s) & (t < s + size)
            assert mask.any()
            idx = np.flatnonzero(mask)
            sub = {f: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for f, v in cols.features.items()}
            res = evaluate_counts(LAYOUT, LAYOUT.histogram(sub).counts, cfg.statistics)
            out.extend(
                window_records(
                    res,
                    monitor="m",
                    segment=seg,
                    window_start_ms=s,
                    window_end_ms=s + size,
                    window_index=s // slide,
                    fingerprint=REF.fingerprint,
                )
            )
    return sorted(out, key=record_sort_key)


@pytest.mark.parametrize(
    "window",
    [
        {"kind": "tumbling", "size": "10m"},
        {"kind": "sliding", "size": "10m", "slide": "5m"},
        {"kind": "sliding", "size": "15m", "slide": "5m"},
        {"kind": "sliding", "size": "7m", "slide": "7m"},
    ],
)
def test_time_windows_match_the_definition(window: dict[str, Any]) -> None:
    cfg = _config(window)
    cols = _decode(_events(1500, 1), cfg)
    got = run_local(cols, cfg, REF, LAYOUT)
    expected = _expected_time_records(cols, cfg)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    # edge windows of a sliding window hold only part of the data but are reported
    starts = sorted({r["window_start"] for r in got})
    assert len(starts) == len({r["window_start"] for r in expected})


def test_sliding_window_is_sum_of_tumbling_panes() -> None:
    rows = _events(2000, 2)
    slide = _config({"kind": "sliding", "size": "20m", "slide": "5m"})
    tumble = _config({"kind": "tumbling", "size": "20m"})
    s = {
        (r["window_start"], json.dumps(r["segment"]), r["feature"], r["statistic"]): r
        for r in run_local(_decode(rows, slide), slide, REF, LAYOUT)
    }
    for r in run_local(_decode(rows, tumble), tumble, REF, LAYOUT):
        # every tumbling window is also a sliding window (its start is a multiple of the slide)
        other = s[(r["window_start"], json.dumps(r["segment"]), r["feature"], r["statistic"])]
        # ... numbered in slides (5 m) rather than in sizes (20 m)
        assert other["window_index"] == r["window_index"] * 4 == parse_iso_ms(r["window_start"]) // 300_000
        assert {**other, "window_index": None} == {**r, "window_index": None}


def test_count_windows_are_full_groups_in_input_order() -> None:
    cfg = _config({"kind": "count", "size": 100}, segments={"overall": False})
    rows = _events(1050, 3)
    cols = _decode(rows, cfg)
    got = run_local(cols, cfg, REF, LAYOUT)
    expected = []
    for g in ("eu", "us", "apac"):
        idx = np.array([i for i, s in enumerate(cols.segments) if s == (g,)])
        for k in range(len(idx) // 100):
            part = idx[k * 100 : (k + 1) * 100]
            sub = {"x": cols.features["x"][part], "c": [cols.features["c"][i] for i in part]}
            res = evaluate_counts(LAYOUT, LAYOUT.histogram(sub).counts, cfg.statistics)
            t = cols.time_ms[part]
            expected.extend(
                window_records(
                    res,
                    monitor="m",
                    segment={"g": g},
                    window_start_ms=int(t.min()),
                    window_end_ms=int(t.max()) + 1,
                    window_index=k,
                    fingerprint=REF.fingerprint,
                )
            )
    assert got == sorted(expected, key=record_sort_key)
    # every event of a window is a valid or missing value of each feature (a categorical's PSI and
    # chi-square count only the categories the reference had; its unseen test counts them all)
    whole = [r for r in got if not (r["feature"] == "c" and r["statistic"] in ("psi", "chi2"))]
    assert whole and all(r["n_window"] + r["n_missing"] == 100 for r in whole)


def test_count_windows_with_raw_values_use_exact_ks() -> None:
    ref = ReferenceProfile.build({"x": RNG.normal(size=800)}, keep_values=1000)
    layout = Layout(ref)
    cfg = _config({"kind": "count", "size": 50, "keep_raw": True}, events={"segment_fields": []})
    rows = [
        {"timestamp": 1_700_000_000_000 + i, "features": {"x": float(v)}} for i, v in enumerate(RNG.normal(size=120))
    ]
    cols, _ = decode_events(rows, cfg, ref, layout.features)
    recs = [r for r in run_local(cols, cfg, ref, layout) if r["statistic"] == "ks"]
    assert [r["method"] for r in recs] == ["ks_exact", "ks_exact"]
    from scipy import stats

    assert recs[0]["value"] == float(stats.ks_2samp(ref.features["x"].values, cols.features["x"][:50]).statistic)


def test_segment_router_bounds_segments_and_snapshots() -> None:
    router = SegmentRouter(["g"], max_segments=2, overall=True)
    ids = router.route([("a",), ("b",), ("c",), ("a",), ("d",)])
    assert router.segment(0) == {}
    assert [router.segment(int(i)) for i in ids] == [
        {"g": "a"},
        {"g": "b"},
        {"g": "__other__"},
        {"g": "a"},
        {"g": "__other__"},
    ]
    assert router.overflowed == 2
    clone = SegmentRouter(["g"], max_segments=2, overall=True)
    clone.restore(json.loads(json.dumps(router.snapshot())))
    assert clone.route([("e",), ("b",)]).tolist() == router.route([("e",), ("b",)]).tolist()
    assert SegmentRouter([], 5, overall=False).route([(), ()]).tolist() == [-1, -1]


def test_routing_values_of_one_field_equals_routing_their_tuples() -> None:
    by_tuple = SegmentRouter(["g"], max_segments=3, overall=True)
    by_value = SegmentRouter(["g"], max_segments=3, overall=True)
    batches = [["a", "b", "a"], ["c", "a", "d", "e", "b"], ["e", "f", "c"]]
    for values in batches:
        assert by_value.route_values(values).tolist() == by_tuple.route([(v,) for v in values]).tolist()
    assert by_value.keys == by_tuple.keys and by_value.overflowed == by_tuple.overflowed == 4
    restored = SegmentRouter(["g"], max_segments=3, overall=True)
    restored.restore(json.loads(json.dumps(by_value.snapshot())))
    assert restored.route_values(["c", "zz", "a"]).tolist() == by_tuple.route([("c",), ("zz",), ("a",)]).tolist()
    with pytest.raises(ValueError, match="one segment field"):
        SegmentRouter(["g", "h"], 3, overall=True).route_values(["a"])


def test_window_spec() -> None:
    spec = WindowSpec.from_config(_config({"kind": "sliding", "size": "10m", "slide": "5m"}))
    assert spec.panes_per_window == 2
    assert spec.windows_of_panes([3, 7]) == [2, 3, 6, 7]
    assert spec.window_bounds(3) == (900_000, 1_500_000)
    assert spec.pane_of(np.array([-1, 0, 299_999, 300_000])).tolist() == [-1, 0, 0, 1]


# -- order invariance -----------------------------------------------------------------------------
event = st.fixed_dictionaries(
    {
        "timestamp": st.integers(0, 3_000_000).map(lambda t: 1_700_000_000_000 + t),
        "g": st.sampled_from(["a", "b"]),
        "features": st.fixed_dictionaries(
            {"x": st.one_of(st.floats(-4, 4), st.none()), "c": st.sampled_from(["a", "b", "c", "q", ""])}
        ),
    }
)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    rows=st.lists(event, min_size=1, max_size=120),
    perm_seed=st.integers(0, 2**32 - 1),
    window=st.sampled_from([{"kind": "tumbling", "size": "10m"}, {"kind": "sliding", "size": "10m", "slide": "2m"}]),
)
def test_shuffled_events_give_the_same_records(
    rows: list[dict[str, Any]], perm_seed: int, window: dict[str, Any]
) -> None:
    cfg = _config(window)
    shuffled = [rows[i] for i in np.random.default_rng(perm_seed).permutation(len(rows))]
    a, b = _decode(rows, cfg), _decode(shuffled, cfg)
    ha, hb = LAYOUT.histogram(a.features), LAYOUT.histogram(b.features)
    assert np.array_equal(ha.counts, hb.counts)
    assert run_local(a, cfg, REF, LAYOUT) == run_local(b, cfg, REF, LAYOUT)


# -- concept records ----------------------------------------------------------------------------------
def test_concept_records_are_rivers_detections_in_event_time_order() -> None:
    cfg = _config(
        {"kind": "tumbling", "size": "1h"},
        concept={"detector": "adwin", "stream": "feature:x"},
        events={"segment_fields": []},
    )
    rng = np.random.default_rng(5)
    n = 3000
    x = np.concatenate([rng.normal(0, 1, n // 2), rng.normal(2, 1, n // 2)])
    t = 1_700_000_000_000 + np.arange(n) * 1000
    order = rng.permutation(n)  # input order is shuffled; the detector must see event-time order
    rows = [{"timestamp": int(t[i]), "features": {"x": float(x[i]), "c": "a"}} for i in order]
    cols = _decode(rows, cfg)
    recs = [r for r in run_local(cols, cfg, REF, LAYOUT) if r["statistic"] == "adwin"]
    ref = drift.ADWIN()
    hits = []
    for i in range(n):
        ref.update(float(x[i]))
        if ref.drift_detected:
            hits.append(i)
    assert hits and len(recs) == len(hits)
    from detectors.evaluate import iso_ms

    prev = 0
    for rec, h in zip(recs, hits, strict=True):
        assert rec["window_end"] == iso_ms(int(t[h]) + 1)
        assert rec["window_start"] == iso_ms(int(t[prev]))
        assert rec["n_window"] == h - prev + 1
        assert rec["threshold"] == 0.002 and rec["drift"] is True and rec["method"] == "river_adwin"
        prev = h + 1


def test_concept_tracker_threshold_names_each_detectors_parameter() -> None:
    from detectors.sequential import make_detector

    for kind, expected in (("adwin", 0.002), ("page_hinkley", 50.0), ("kswin", 0.005)):
        cfg = _config({"kind": "tumbling", "size": "1h"}, concept={"detector": kind, "stream": "feature:x"})
        tracker = ConceptTracker(cfg, REF.fingerprint)
        det = make_detector(kind)
        rec = None
        for i, v in enumerate(np.concatenate([np.zeros(500), np.full(500, 10.0)])):
            rec = tracker.update(det, float(v), i) or rec
        assert rec is not None and rec["threshold"] == expected
        clone = ConceptTracker(cfg, REF.fingerprint)
        clone.restore(tracker.snapshot())
        assert clone.snapshot() == tracker.snapshot()
