"""A reference switch in the window manager: ``flush`` closes what is open (the windows the watermark
closed plus the flushed ones are exactly the local backfill's), ``successor`` keeps the time but no counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detectors.engine import record_sort_key, run_local
from detectors.evaluate import parse_iso_ms
from detectors.histogram import Layout
from stream.service.consumer import closed_records
from stream.service.windows import WindowManager
from tests.unit.test_stream_windows import REF, FakeClock, _config, _events, _run, _slice, assert_records_equal

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "window",
    [{"kind": "tumbling", "size": "60s"}, {"kind": "sliding", "size": "60s", "slide": "20s"}],
)
def test_flush_closes_the_open_windows_so_that_nothing_is_lost_or_twice(window: dict[str, Any]) -> None:
    config = _config(window)
    cols = _events(2000, seed=3)
    layout = Layout(REF)
    want = sorted(run_local(cols, config, REF, layout), key=record_sort_key)
    got, wm, n_late = _run(cols, config, seed=4)
    assert n_late == 0
    assert 0 < len(got) < len(want)  # the last windows are open
    frontier = wm.frontier
    flushed = closed_records(layout, config, wm.flush())
    assert flushed and all(parse_iso_ms(r["window_end"]) > (frontier or 0) for r in flushed)
    assert_records_equal(sorted(got + flushed, key=record_sort_key), want)
    assert wm.frontier == frontier  # a flush does not move the frontier


def test_flush_reports_partial_count_windows_and_the_successor_starts_empty() -> None:
    config = _config({"kind": "count", "size": 300})
    cols = _events(1000, seed=5)
    layout = Layout(REF)
    clock = FakeClock()
    wm = WindowManager(config, layout, clock=clock)
    wm.assign([0])
    wm.touch([0])
    res = wm.add(cols, np.zeros(len(cols), dtype=np.int64))
    full = closed_records(layout, config, res.closed)
    rest = wm.flush()
    # per segment: 3 countries + overall; every event is in exactly one window, full or flushed
    n_full = 300 * sum(1 for w in res.closed if not w.segment)
    n_rest = sum(int(w.counts.sum()) for w in rest if not w.segment) // len(layout.features)  # (a slot per feature)
    assert full and 0 < n_rest < 300
    assert n_full + n_rest == len(cols)
    new = wm.successor(config, Layout(REF, ["x"]))
    assert new.count_windows == {} and new.panes == {}
    assert new.layout.features == ("x",)


def test_the_successor_keeps_watermarks_and_frontier_and_counts_afresh() -> None:
    config = _config({"kind": "tumbling", "size": "60s"})
    cols = _events(1200, seed=8)
    layout = Layout(REF)
    clock = FakeClock()
    wm = WindowManager(config, layout, clock=clock)
    wm.assign([0])
    first, second = _slice(cols, 0, 600), _slice(cols, 600, 1200)
    wm.touch([0])
    wm.add(first, np.zeros(600, dtype=np.int64))
    before = closed_records(layout, config, wm.advance())
    assert before
    wm.flush()
    new = wm.successor(config, layout)
    assert new.max_time == wm.max_time and new.frontier == wm.frontier
    # its first checkpoint drops every pane of the old reference (a new log, or deletions in the same one)
    changed, dropped = new.changes()
    assert changed == set() and set(wm.panes) <= dropped and wm.panes
    assert new.panes == {} and new.router.keys == [()]
    new.touch([0])
    res = new.add(second, np.zeros(600, dtype=np.int64))
    assert res.n_late == 0
    after = closed_records(layout, config, new.advance() + new.flush())
    # the successor's windows hold only the events after the switch: the backfill of those alone
    want = sorted(run_local(second, config, REF, layout), key=record_sort_key)
    assert_records_equal(sorted(after, key=record_sort_key), want)
