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
from stream.windows import ForeignPartition, WindowManager

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


def test_only_accepted_events_keep_a_partition_active() -> None:
    """Liveness: add() marks the partitions of accepted events; a partition that gets only late
    events (or, in the consumer, only rejected messages) goes idle after idle_timeout."""
    config = _config({"kind": "tumbling", "size": "1m", "idle_timeout": "10s"})
    clock = FakeClock()
    wm = WindowManager(config, Layout(REF), clock=clock)
    wm.assign([0, 1])
    cols = _events(600, seed=12)
    half = len(cols) // 2
    wm.add(_slice(cols, 0, half), np.zeros(half, dtype=np.int64))  # partition 0: the first half
    wm.add(_slice(cols, half, len(cols)), np.ones(len(cols) - half, dtype=np.int64))  # partition 1: the second
    for _ in range(3):  # partition 1 keeps delivering, but only events behind its own watermark (late)
        clock.now += 4
        res = wm.add(_slice(cols, 0, 50), np.ones(50, dtype=np.int64))
        assert res.n_late == 50 and res.n_added == 0
        # partition 0 keeps delivering accepted events (out of order, within its watermark: not late)
        res = wm.add(_slice(cols, half - 1, half), np.zeros(1, dtype=np.int64))
        assert res.n_added == 1
    assert wm.is_idle(1) and not wm.is_idle(0)
    closed = wm.advance()  # partition 1 no longer holds windows back: partition 0's watermark closes them
    assert closed and max(c.end_ms for c in closed) <= int(cols.time_ms[half - 1])


def test_an_accepted_event_wakes_an_idle_partition() -> None:
    config = _config({"kind": "tumbling", "size": "1m", "idle_timeout": "10s"})
    clock = FakeClock()
    wm = WindowManager(config, Layout(REF), clock=clock)
    wm.assign([0, 1])
    cols = _events(200, seed=13)
    clock.now += 11
    assert wm.is_idle(0) and wm.is_idle(1)
    wm.add(_slice(cols, 0, 10), np.ones(10, dtype=np.int64))
    assert not wm.is_idle(1) and wm.is_idle(0)
    clock.now += 9.9
    assert not wm.is_idle(1)
    clock.now += 0.1
    assert wm.is_idle(1)


def _segment_events(times_ms: list[int], countries: list[str]) -> EventColumns:
    n = len(times_ms)
    return EventColumns(
        time_ms=np.asarray(times_ms, dtype=np.int64),
        features={"x": np.zeros(n), "c": ["a"] * n},
        segments=[(c,) for c in countries],
        prediction=np.full(n, np.nan),
        label=np.full(n, np.nan),
        rows=list(range(n)),
    )


def test_a_segment_is_silent_after_ttl_windows_without_events() -> None:
    """Time windows: windows are numbered by end // slide, so a window without any event counts too."""
    config = _config({"kind": "tumbling", "size": "1m"})
    wm = WindowManager(config, Layout(REF), clock=FakeClock())
    wm.assign([0])
    minute = 60_000
    # minute 0: de and fr; minutes 1-2: de only; minute 3: nothing at all; minute 4: de
    times = [T0, T0 + 1, T0 + minute, T0 + 2 * minute, T0 + 4 * minute, T0 + 5 * minute]
    cols = _segment_events(times, ["de", "fr", "de", "de", "de", "de"])
    silent: list[list[dict[str, str]]] = []
    for i in range(len(times)):
        wm.add(_slice(cols, i, i + 1), np.zeros(1, dtype=np.int64))
        wm.advance()
        silent.append(wm.silent_segments(3))
    # fr's newest window is minute 0's; minutes 1, 2 and 3 (closed by minute 4's event, though no event
    # fell in minute 3) have none of it: silent then, once
    assert silent == [[], [], [], [], [{"country": "fr"}], []]
    assert wm.silent_segments(1) == []  # de and the overall segment were in the newest window


def test_a_count_window_segment_is_silent_after_ttl_windows_of_events() -> None:
    config = _config({"kind": "count", "size": 10})
    wm = WindowManager(config, Layout(REF), clock=FakeClock())
    wm.assign([0])
    de_only = _segment_events([T0 + i for i in range(10)], ["de"] * 10)
    wm.add(_segment_events([T0, T0 + 1], ["de", "fr"]), np.zeros(2, dtype=np.int64))
    got = []
    for _ in range(4):  # 10 events each: one window's worth
        wm.add(de_only, np.zeros(10, dtype=np.int64))
        got.append(wm.silent_segments(3))
    # fr's last events were in window 0 (events 0-9); windows 1, 2, 3 filled without it
    assert got == [[], [], [{"country": "fr"}], []]


# -- state per partition: two processes vs one ---------------------------------------------------


def _take(cols: EventColumns, idx: list[int]) -> EventColumns:
    ix = np.asarray(idx, dtype=np.int64)
    return EventColumns(
        time_ms=cols.time_ms[ix],
        features={
            f: (np.asarray(v)[ix] if isinstance(v, np.ndarray) else [v[i] for i in idx])
            for f, v in cols.features.items()
        },
        segments=[cols.segments[i] for i in idx],
        prediction=cols.prediction[ix],
        label=cols.label[ix],
        rows=list(range(len(idx))),
    )


def _schedule(cols: EventColumns, seed: int) -> tuple[dict[int, EventColumns], list[tuple[int, int, int]]]:
    """Events split over partitions 0 and 1 (i % 2, each in time order) and a seeded schedule of batches
    (partition, lo, hi) that interleaves the two partitions at different paces."""
    streams = {p: _take(cols, list(range(p, len(cols), 2))) for p in (0, 1)}
    rng = np.random.default_rng(seed)
    pos = {0: 0, 1: 0}
    batches: list[tuple[int, int, int]] = []
    while any(pos[p] < len(streams[p]) for p in (0, 1)):
        p = int(rng.integers(0, 2))
        if pos[p] >= len(streams[p]):
            p = 1 - p
        hi = min(len(streams[p]), pos[p] + int(rng.integers(1, 150)))
        batches.append((p, pos[p], hi))
        pos[p] = hi
    return streams, batches


def _feed(wm: WindowManager, streams: dict[int, EventColumns], p: int, lo: int, hi: int) -> list[Any]:
    part = _slice(streams[p], lo, hi)
    wm.touch([p])
    res = wm.add(part, np.full(len(part), p, dtype=np.int64))
    return [*res.closed, *wm.advance()]


def _sync(closer: WindowManager, other: WindowManager) -> list[Any]:
    """What the consumer does through the checkpoints: the closer reads partition 1's state (a JSON
    round trip), the other learns the frontier."""
    snap = json.loads(json.dumps(other.partition_snapshot(1)))
    closer.foreign = {1: closer.foreign_partition(snap, idle=False)}
    closed = closer.advance()
    other.learn_frontier(closer.frontier)
    return closed


@pytest.mark.parametrize(
    "window",
    [{"kind": "tumbling", "size": "1m"}, {"kind": "sliding", "size": "2m", "slide": "30s"}],
)
def test_two_processes_merge_partitions_like_one(window: dict[str, Any]) -> None:
    config = _config(window, segments={"max_segments": 5})
    layout = Layout(REF)
    cols = _events(4000, seed=9)
    streams, batches = _schedule(cols, seed=9)
    clock = FakeClock()
    single = WindowManager(config, layout, clock=clock)
    single.assign([0, 1])
    a, b = WindowManager(config, layout, clock=clock), WindowManager(config, layout, clock=clock)
    a.assign([0])
    b.assign([1])
    a.foreign = None  # partition 1 unknown until its first checkpoint is read
    b.closer = False
    one: list[Any] = []
    two: list[Any] = []
    for p, lo, hi in batches:
        one += _feed(single, streams, p, lo, hi)
        two += _feed(a if p == 0 else b, streams, p, lo, hi)
        two += _sync(a, b)
    assert b.advance() == [] and b.frontier == a.frontier  # only the closer closes
    assert a.frontier == single.frontier
    spec = b.spec
    assert b.panes and not any(k[2] * spec.slide_ms + spec.size_ms <= a.frontier for k in b.panes)  # pruned
    got = sorted(closed_records(layout, config, two), key=record_sort_key)
    want = sorted(closed_records(layout, config, one), key=record_sort_key)
    assert len(want) > 50
    assert_records_equal(got, want)
    # and both are the backfill over the whole stream
    assert_records_equal(want, _closed_part(run_local(cols, config, REF, layout), single.frontier))


def test_a_foreign_partition_without_a_checkpoint_holds_windows_back_an_idle_one_does_not() -> None:
    config = _config({"kind": "tumbling", "size": "1m"})
    clock = FakeClock()
    wm = WindowManager(config, Layout(REF), clock=clock)
    wm.assign([0])
    cols = _events(500, seed=12)
    wm.touch([0])
    wm.add(cols, np.zeros(len(cols), dtype=np.int64))
    wm.foreign = None  # the topic's partitions are not known yet
    assert wm.advance() == []
    wm.foreign = {1: ForeignPartition(None, idle=False)}  # never checkpointed
    assert wm.advance() == []
    wm.foreign = {1: ForeignPartition(T0 + 120_000, idle=False)}  # its watermark: 2 minutes in
    closed = wm.advance()
    assert closed and max(c.end_ms for c in closed) == T0 - T0 % 60_000 + 120_000
    wm.foreign = {1: ForeignPartition(None, idle=True)}
    assert max(c.end_ms for c in wm.advance()) > T0 + 120_000


def test_frontier_after_falling_back_to_an_older_partition_0_checkpoint() -> None:
    """Partition 0's newest checkpoint is lost (corrupt): the process resumes partition 0 from the
    previous generation (older frontier, older offset) and partition 1 from its newest one, whose
    panes were pruned up to a later frontier. The frontier is the max of both, so no window is closed
    again with panes missing, and the records equal an uninterrupted run."""
    config = _config({"kind": "sliding", "size": "2m", "slide": "30s"})
    layout = Layout(REF)
    cols = _events(4000, seed=13)
    streams, batches = _schedule(cols, seed=13)
    clock = FakeClock()

    def fresh() -> WindowManager:
        wm = WindowManager(config, layout, clock=clock)
        wm.assign([0, 1])
        return wm

    straight = fresh()
    want: list[Any] = []
    for p, lo, hi in batches:
        want += _feed(straight, streams, p, lo, hi)

    wm = fresh()
    emitted: list[Any] = []
    pos = {0: 0, 1: 0}
    saved: dict[int, list[tuple[dict[str, Any], dict[str, Any] | None, int]]] = {0: [], 1: []}
    cut = len(batches) // 2
    for i, (p, lo, hi) in enumerate(batches[:cut]):
        emitted += _feed(wm, streams, p, lo, hi)
        pos[p] = hi
        if i in (cut // 2, cut - 1):  # two checkpoints: partition 0's file, then partition 1's
            for q in (0, 1):
                shared = wm.shared_snapshot() if q == 0 else None
                saved[q].append((json.loads(json.dumps(wm.partition_snapshot(q))), shared, pos[q]))
    (old0, old_shared, old_pos0), (new1, _, new_pos1) = saved[0][0], saved[1][1]
    assert old_shared is not None and new1["pruned_to"] > old_shared["frontier"]

    resumed = fresh()
    resumed.load_shared(json.loads(json.dumps(old_shared)))
    resumed.load_partition(0, old0)
    resumed.load_partition(1, new1)
    assert resumed.frontier == new1["pruned_to"]  # max(partition 0's frontier, every pruned_to)
    pos = {0: old_pos0, 1: new_pos1}
    for p, lo, hi in batches:  # replay each partition from its checkpoint's offset
        if hi <= pos[p]:
            continue
        emitted += _feed(resumed, streams, p, max(lo, pos[p]), hi)
    got = closed_records(layout, config, emitted)
    keys = [_key(r) for r in got]
    assert len(keys) == len(set(keys)), "a window was closed twice"
    assert_records_equal(
        sorted(got, key=record_sort_key), sorted(closed_records(layout, config, want), key=record_sort_key)
    )
