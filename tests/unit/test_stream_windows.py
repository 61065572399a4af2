"""Consumer windows against the local backfill: same records whatever the batch split, lateness, restore."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.engine import record_sort_key, run_local
from detectors.evaluate import parse_iso_ms
from detectors.events import EventColumns
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.consumer import closed_records
from stream.windows import WindowManager

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reference() -> ReferenceProfile:
    rng = np.random.default_rng(11)
    return ReferenceProfile.build(
        {"x": rng.normal(0, 1, 3000), "c": rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2]).tolist()},
        features=["x", "c"],
        categorical=["c"],
        fine_bins=30,
        coarse_bins=6,
        keep_values=3000,
    )


REF = _reference()


def _config(window: dict[str, Any], **extra: Any) -> MonitorConfig:
    data = {
        "monitor": "m",
        "reference": "unused.json",
        "events": {"segment_fields": ["country"]},
        "window": window,
        "statistics": {"min_events": 20},
        "segments": {"max_segments": 2},
        "concept": {"detector": "none"},
    }
    data.update(extra)
    return MonitorConfig.from_mapping(data)


def _events(n: int, seed: int, jitter_ms: int = 0) -> EventColumns:
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, 600_000, n))
    if jitter_ms:
        t = t + rng.integers(-jitter_ms, jitter_ms + 1, n)
    x = rng.normal(0, 1, n)
    x[n // 2 :] += 1.0  # drift half way
    x[rng.random(n) < 0.02] = np.nan
    c = rng.choice(["a", "b", "c", "zz"], n, p=[0.4, 0.3, 0.2, 0.1]).tolist()
    countries = rng.choice(["de", "fr", "it"], n, p=[0.5, 0.3, 0.2]).tolist()
    return EventColumns(
        time_ms=t.astype(np.int64),
        features={"x": x, "c": c},
        segments=[(s,) for s in countries],
        prediction=np.full(n, np.nan),
        label=np.full(n, np.nan),
        rows=list(range(n)),
    )


def _slice(cols: EventColumns, lo: int, hi: int) -> EventColumns:
    return EventColumns(
        time_ms=cols.time_ms[lo:hi],
        features={f: v[lo:hi] for f, v in cols.features.items()},
        segments=cols.segments[lo:hi],
        prediction=cols.prediction[lo:hi],
        label=cols.label[lo:hi],
        rows=list(range(hi - lo)),
    )


def _run(
    cols: EventColumns, config: MonitorConfig, seed: int, restore_at: int | None = None
) -> tuple[list[dict[str, Any]], WindowManager, int]:
    layout = Layout(REF)
    clock = FakeClock()
    wm = WindowManager(config, layout, clock=clock)
    wm.assign([0])
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(cols)), size=12, replace=False)).tolist()
    bounds = [0, *cuts, len(cols)]
    records: list[dict[str, Any]] = []
    n_late = 0
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if restore_at is not None and i == restore_at:
            snap = json.loads(json.dumps(wm.snapshot()))
            wm = WindowManager(config, layout, clock=clock)
            wm.restore(snap)
            wm.assign([0])
        part = _slice(cols, lo, hi)
        wm.touch([0])
        res = wm.add(part, np.zeros(len(part), dtype=np.int64))
        n_late += res.n_late
        records += closed_records(layout, config, res.closed + wm.advance())
    return sorted(records, key=record_sort_key), wm, n_late


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["window_start"], r["window_end"], json.dumps(r["segment"], sort_keys=True), r["feature"], r["statistic"])


def assert_records_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    g = {_key(r): r for r in got}
    w = {_key(r): r for r in want}
    assert len(g) == len(got), "a window was closed twice"
    assert g.keys() == w.keys()
    for k in w:
        a, b = g[k], w[k]
        for field in a:
            if isinstance(b[field], float):
                assert a[field] == pytest.approx(b[field], rel=1e-9, abs=1e-12), (k, field)
            else:
                assert a[field] == b[field], (k, field)


def _closed_part(want: list[dict[str, Any]], frontier: int | None) -> list[dict[str, Any]]:
    assert frontier is not None
    return [r for r in want if parse_iso_ms(r["window_end"]) <= frontier]


@pytest.mark.parametrize(
    "window",
    [
        {"kind": "tumbling", "size": "1m"},
        {"kind": "sliding", "size": "2m", "slide": "30s"},
    ],
)
def test_time_windows_equal_backfill_for_any_batch_split(window: dict[str, Any]) -> None:
    config = _config(window)
    cols = _events(4000, seed=1)
    want = run_local(cols, config, REF, Layout(REF))
    for seed in (1, 2):
        got, wm, _ = _run(cols, config, seed)
        expected = _closed_part(want, wm.frontier)
        assert len(expected) > 50
        assert_records_equal(got, expected)
        assert any(r["drift"] for r in got) and any(r["drift"] is False for r in got)


def test_out_of_order_within_lateness_equals_backfill() -> None:
    config = _config({"kind": "tumbling", "size": "1m", "allowed_lateness": "5s"})
    cols = _events(3000, seed=3, jitter_ms=2000)
    want = run_local(cols, config, REF, Layout(REF))
    got, wm, n_late = _run(cols, config, seed=3)
    assert n_late == 0
    assert_records_equal(got, _closed_part(want, wm.frontier))


def test_late_events_are_counted_and_left_out() -> None:
    config = _config({"kind": "tumbling", "size": "1m", "allowed_lateness": "1s"})
    cols = _events(3000, seed=4, jitter_ms=1500)
    # independent rule: late if older than the running max before it minus the lateness
    t = cols.time_ms.tolist()
    keep, run_max = [], -(2**62)
    for i, ti in enumerate(t):
        if ti >= run_max - 1000:
            keep.append(i)
        run_max = max(run_max, ti)
    kept = EventColumns(
        time_ms=cols.time_ms[keep],
        features={"x": cols.features["x"][keep], "c": [cols.features["c"][i] for i in keep]},
        segments=[cols.segments[i] for i in keep],
        prediction=cols.prediction[keep],
        label=cols.label[keep],
        rows=list(range(len(keep))),
    )
    assert 0 < len(t) - len(keep) < len(t) // 2
    want = run_local(kept, config, REF, Layout(REF))
    got, wm, n_late = _run(cols, config, seed=4)
    assert n_late == len(t) - len(keep)
    assert_records_equal(got, _closed_part(want, wm.frontier))


def test_count_windows_with_raw_values_equal_backfill() -> None:
    config = _config({"kind": "count", "size": 250, "keep_raw": True})
    cols = _events(3000, seed=5)
    want = run_local(cols, config, REF, Layout(REF))
    got, _wm, _ = _run(cols, config, seed=5)
    assert any(r["method"] == "ks_exact" for r in got)
    assert_records_equal(got, want)


@pytest.mark.parametrize(
    "window",
    [
        {"kind": "sliding", "size": "2m", "slide": "30s"},
        {"kind": "count", "size": 250, "keep_raw": True},
    ],
)
def test_restore_mid_stream_gives_the_same_records(window: dict[str, Any]) -> None:
    config = _config(window)
    cols = _events(3000, seed=6)
    straight, _, _ = _run(cols, config, seed=6)
    restored, _, _ = _run(cols, config, seed=6, restore_at=7)
    assert straight == restored
    assert straight


def test_idle_partition_stops_holding_windows_back() -> None:
    config = _config({"kind": "tumbling", "size": "1m", "idle_timeout": "10s"})
    clock = FakeClock()
    wm = WindowManager(config, Layout(REF), clock=clock)
    wm.assign([0, 1])
    cols = _events(500, seed=8)
    wm.touch([0])
    wm.add(cols, np.zeros(len(cols), dtype=np.int64))
    assert wm.advance() == []  # partition 1 is silent but not idle yet: it holds windows back
    clock.now += 11
    wm.touch([0])
    closed = wm.advance()
    assert closed and max(c.end_ms for c in closed) <= int(cols.time_ms.max())
