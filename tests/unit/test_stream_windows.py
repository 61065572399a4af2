"""Consumer windows against the local backfill: same records whatever the batch split or the interleaving of
partitions, lateness, idleness, restore from a checkpoint on disk."""

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
from stream.exceptions import CheckpointError
from stream.service.checkpoint import StateStore
from stream.service.consumer import closed_records
from stream.service.windows import WindowManager

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


def _roundtrip(wm: WindowManager, config: MonitorConfig, layout: Layout, store: StateStore) -> WindowManager:
    """Checkpoint ``wm`` to ``store`` (only what changed) and load it into a new manager, as a restart does."""
    changed, dropped = wm.changes()
    store.save(
        {"windows": json.loads(json.dumps(wm.snapshot()))}, wm.panes, changed, dropped, layout.size, layout.fingerprint
    )
    wm.saved()
    loaded = StateStore(store.dir, "m", layout.fingerprint).load()
    assert loaded is not None
    new = WindowManager(config, layout, clock=wm.clock)
    new.restore(loaded.state["windows"], loaded.panes)
    return new


def _run(
    cols: EventColumns, config: MonitorConfig, seed: int, restore_at: int | None = None, store: StateStore | None = None
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
        if store is not None and (restore_at is None or i <= restore_at):
            if restore_at is not None and i == restore_at:
                wm = _roundtrip(wm, config, layout, store)
                wm.assign([0])
            elif i % 3 == 0:  # (checkpoints along the way: the store appends what changed)
                changed, dropped = wm.changes()
                store.save({}, wm.panes, changed, dropped, layout.size, layout.fingerprint)
                wm.saved()
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
        {"kind": "tumbling", "size": "1m", "offset": "20s"},
        {"kind": "sliding", "size": "2m", "slide": "30s", "offset": "10s"},
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
def test_restore_mid_stream_gives_the_same_records(window: dict[str, Any], tmp_path: Any) -> None:
    config = _config(window)
    cols = _events(3000, seed=6)
    straight, _, _ = _run(cols, config, seed=6)
    for restore_at in (4, 7, 10):
        store = StateStore(tmp_path / f"at{restore_at}", "m", REF.fingerprint)
        restored, _, _ = _run(cols, config, seed=6, restore_at=restore_at, store=store)
        assert straight == restored
    assert straight


def test_tied_count_windows_keep_their_ordinals_across_a_restore(tmp_path: Any) -> None:
    """Count windows whose events all share one time differ only by window_index: the consumer numbers
    them per segment as the backfill does, and a restart from a checkpoint goes on counting."""
    config = _config({"kind": "count", "size": 100})
    cols = _events(3000, seed=8)
    cols.time_ms[:] = T0
    want = run_local(cols, config, REF, Layout(REF))
    assert len({(r["window_start"], r["window_end"]) for r in want}) == 1
    for restore_at in (None, 6):
        store = StateStore(tmp_path / f"at{restore_at}", "m", REF.fingerprint)
        got, _, _ = _run(cols, config, seed=8, restore_at=restore_at, store=store)
        key = lambda r: (json.dumps(r["segment"], sort_keys=True), r["window_index"], r["feature"], r["statistic"])  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key)
    overall = sorted({r["window_index"] for r in want if not r["segment"]})
    assert overall == list(range(30))


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


def test_windows_close_when_every_partition_has_gone_idle() -> None:
    """Liveness: a silent partition and a stream that stops (all its events within idle_timeout of
    the silent one's assignment): once both are idle, nothing holds the windows back."""
    config = _config({"kind": "tumbling", "size": "1m", "idle_timeout": "10s"})
    clock = FakeClock()
    wm = WindowManager(config, Layout(REF), clock=clock)
    wm.assign([0, 1])
    cols = _events(500, seed=8)
    wm.add(cols, np.zeros(len(cols), dtype=np.int64))
    assert wm.advance() == []  # partition 1 is silent but not idle yet: it holds windows back
    clock.now += 11  # both idle now (partition 0 delivered nothing more)
    closed = wm.advance()
    assert closed and max(c.end_ms for c in closed) <= int(cols.time_ms.max())
    assert wm.frontier == int(cols.time_ms.max())
    assert wm.advance() == []  # nothing new: nothing more closes


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


# -- several partitions in one store -------------------------------------------------------------


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


def _schedule(
    cols: EventColumns, seed: int, parts: int = 2
) -> tuple[dict[int, EventColumns], list[tuple[int, int, int]]]:
    """Events split over partitions (i % parts, each in time order) and a seeded schedule of batches
    (partition, lo, hi) that interleaves the partitions at different paces."""
    streams = {p: _take(cols, list(range(p, len(cols), parts))) for p in range(parts)}
    rng = np.random.default_rng(seed)
    pos = dict.fromkeys(range(parts), 0)
    batches: list[tuple[int, int, int]] = []
    while any(pos[p] < len(streams[p]) for p in range(parts)):
        p = int(rng.choice([q for q in range(parts) if pos[q] < len(streams[q])]))
        hi = min(len(streams[p]), pos[p] + int(rng.integers(1, 150)))
        batches.append((p, pos[p], hi))
        pos[p] = hi
    return streams, batches


def _mixed(streams: dict[int, EventColumns], batch: list[tuple[int, int, int]]) -> tuple[EventColumns, np.ndarray]:
    """One consumed batch made of several partitions' runs (as librdkafka hands them over)."""
    cols = [_slice(streams[p], lo, hi) for p, lo, hi in batch]
    parts = np.concatenate([np.full(hi - lo, p, dtype=np.int64) for p, lo, hi in batch])
    both = EventColumns(
        time_ms=np.concatenate([c.time_ms for c in cols]),
        features={
            f: (
                np.concatenate([c.features[f] for c in cols])
                if f == "x"
                else list(itertools.chain.from_iterable(c.features[f] for c in cols))
            )
            for f in cols[0].features
        },
        segments=list(itertools.chain.from_iterable(c.segments for c in cols)),
        prediction=np.concatenate([c.prediction for c in cols]),
        label=np.concatenate([c.label for c in cols]),
        rows=list(range(len(parts))),
    )
    return both, parts


def _interleaved(
    config: MonitorConfig, cols: EventColumns, seed: int, parts: int = 2
) -> tuple[list[Any], WindowManager]:
    """Every window a manager closes when the partitions' batches arrive in a seeded order (several
    partitions in one consumed batch at times)."""
    layout = Layout(REF)
    clock = FakeClock()
    wm = WindowManager(config, layout, clock=clock)
    wm.assign(range(parts))
    streams, batches = _schedule(cols, seed, parts)
    rng = np.random.default_rng(seed + 100)
    closed: list[Any] = []
    i = 0
    while i < len(batches):
        k = int(rng.integers(1, 4))  # 1-3 partitions' runs in one consumed batch
        both, p = _mixed(streams, batches[i : i + k])
        i += k
        res = wm.add(both, p)
        assert res.n_late == 0  # every partition is in time order
        closed += [*res.closed, *wm.advance()]
    return closed, wm


@pytest.mark.parametrize(
    "window",
    [{"kind": "tumbling", "size": "1m"}, {"kind": "sliding", "size": "2m", "slide": "30s"}],
)
def test_partitions_in_any_interleaving_give_the_windows_of_one_stream(window: dict[str, Any]) -> None:
    """Panes are summed over partitions as events arrive; whatever the order in which the partitions'
    batches come, the records are the backfill's over the whole stream, and the same every time."""
    config = _config(window, segments={"max_segments": 5})
    layout = Layout(REF)
    cols = _events(4000, seed=9)
    runs = []
    for seed in (9, 10, 11):
        closed, wm = _interleaved(config, cols, seed, parts=3)
        got = sorted(closed_records(layout, config, closed), key=record_sort_key)
        assert len(got) > 50
        # every window the watermark passed (min over the three partitions) is the backfill's
        assert_records_equal(got, _closed_part(run_local(cols, config, REF, layout), wm.frontier))
        runs.append((got, wm.frontier))
    assert runs[0][0][: len(runs[1][0])] == runs[1][0][: len(runs[0][0])]  # (more or fewer closed: a prefix)


def test_count_windows_are_per_partition_in_offset_order_whatever_the_interleaving() -> None:
    """N events of one partition and segment, in offset order: the same windows under any interleaving
    of the partitions (what a replay after a crash produces), each the backfill of that partition alone."""
    config = _config({"kind": "count", "size": 100})
    layout = Layout(REF)
    cols = _events(3000, seed=14)
    streams, _ = _schedule(cols, 14)
    want = sorted(
        [r for p in (0, 1) for r in run_local(streams[p], config, REF, layout) if r["statistic"] != "adwin"],
        key=record_sort_key,
    )
    for seed in (14, 15):
        closed, _wm = _interleaved(config, cols, seed)
        got = sorted(closed_records(layout, config, closed), key=record_sort_key)
        assert [(r["window_start"], r["window_end"], r["n_window"], r["value"]) for r in got] == [
            (r["window_start"], r["window_end"], r["n_window"], r["value"]) for r in want
        ]


def test_a_restart_from_any_checkpoint_replays_to_the_same_windows(tmp_path: Any, monkeypatch: Any) -> None:
    """Two partitions, checkpoints through the store (appending, pruning, and now and then a new log), a
    "crash" at several points: load the newest checkpoint, replay each partition from its saved position,
    in another interleaving. Every window closed before and after equals an uninterrupted run's; none twice
    with other values."""
    import stream.service.checkpoint as cp

    monkeypatch.setattr(cp, "COMPACT_MIN_BYTES", 0)  # (start new logs often)
    monkeypatch.setattr(cp, "COMPACT_FACTOR", 1.2)
    config = _config({"kind": "sliding", "size": "2m", "slide": "30s"}, segments={"max_segments": 5})
    layout = Layout(REF)
    cols = _events(4000, seed=16)
    streams, batches = _schedule(cols, seed=16)
    straight, wm0 = _interleaved(config, cols, 16)
    want = {(_key(r)): r for r in closed_records(layout, config, straight)}
    clock = FakeClock()
    for crash_at in (len(batches) // 3, len(batches) // 2, 3 * len(batches) // 4):
        store = StateStore(tmp_path / f"c{crash_at}", "m", REF.fingerprint)
        wm = WindowManager(config, layout, clock=clock)
        wm.assign([0, 1])
        pos = {0: 0, 1: 0}
        emitted: list[Any] = []
        saved_pos = dict(pos)
        new_logs = 0
        for i, (p, lo, hi) in enumerate(batches[:crash_at]):
            both, parts = _mixed(streams, [(p, lo, hi)])
            wm.add(both, parts)
            emitted += wm.advance()
            pos[p] = hi
            if i % 2 == 1:
                changed, dropped = wm.changes()
                store.save(
                    {"windows": wm.snapshot(), "pos": pos}, wm.panes, changed, dropped, layout.size, REF.fingerprint
                )
                wm.saved()
                new_logs += store.last_compacted
                saved_pos = dict(pos)
                saved_snap = json.loads(json.dumps(wm.snapshot()))
                saved_panes = {k: (st.n_events, st.counts.tolist()) for k, st in wm.panes.items()}
        assert new_logs >= 2  # (the first log, and at least one more)
        loaded = StateStore(store.dir, "m", REF.fingerprint).load()
        assert loaded is not None and {int(k): v for k, v in loaded.state["pos"].items()} == saved_pos
        resumed = WindowManager(config, layout, clock=clock)
        resumed.restore(loaded.state["windows"], loaded.panes)
        # what was saved comes back: the small state and exactly the live panes (none dropped comes back)
        assert json.loads(json.dumps(resumed.snapshot())) == saved_snap
        assert {k: (st.n_events, st.counts.tolist()) for k, st in resumed.panes.items()} == saved_panes
        resumed.assign([0, 1])
        rest = [(p, max(lo, saved_pos[p]), hi) for p, lo, hi in batches if hi > saved_pos[p]]
        # the rest, interleaved otherwise than the first time (a seeded shuffle that keeps each partition's order)
        rng = np.random.default_rng(crash_at)
        by_p = {q: [b for b in rest if b[0] == q] for q in (0, 1)}
        rest = []
        while by_p[0] or by_p[1]:
            q = int(rng.integers(0, 2)) if by_p[0] and by_p[1] else (0 if by_p[0] else 1)
            rest.append(by_p[q].pop(0))
        for p, lo, hi in rest:
            both, parts = _mixed(streams, [(p, lo, hi)])
            res = resumed.add(both, parts)
            assert res.n_late == 0
            emitted += resumed.advance()
        assert resumed.frontier == wm0.frontier
        got: dict[Any, dict[str, Any]] = {}
        for r in closed_records(layout, config, emitted):
            if _key(r) in got:
                assert got[_key(r)] == r, "a window re-closed with other values"
            got[_key(r)] = r
        assert_records_equal(list(got.values()), list(want.values()))


def test_a_version_3_window_state_restores_for_time_windows_only() -> None:
    """Version 3 states (before window_index) have no count-window ordinals: time windows go on from
    them, count windows with events refuse them (ordinals from 0 again would repeat indexes)."""
    layout = Layout(REF)
    cols = _events(600, seed=9)
    for window, ok in (({"kind": "tumbling", "size": "1m"}, True), ({"kind": "count", "size": 250}, False)):
        config = _config(window)
        wm = WindowManager(config, layout, clock=FakeClock())
        wm.assign([0])
        wm.add(cols, np.zeros(len(cols), dtype=np.int64))
        snap = json.loads(json.dumps(wm.snapshot()))
        assert snap["version"] == 4
        del snap["count_index"]
        snap["version"] = 3
        new = WindowManager(config, layout, clock=FakeClock())
        panes = {k: (st.n_events, st.counts) for k, st in wm.panes.items()}
        if ok:
            new.restore(snap, panes)
            assert new.panes.keys() == wm.panes.keys() and new.count_index == {}
        else:
            with pytest.raises(CheckpointError, match="version 3 has no count-window ordinals"):
                new.restore(snap, panes)
