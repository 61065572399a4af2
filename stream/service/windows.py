"""Window and watermark state of the consumer: panes, count windows, per-partition watermarks.

The active ``serve`` process consumes every partition of its topic (:mod:`stream.service.consumer`), so
this is a single-process store with no knowledge of other processes. Time windows keep one
:class:`~detectors.histogram.WindowState` per (segment, pane), summed over the partitions as
events arrive; a window is the sum of its panes (tumbling: one pane per window).

Watermarks and lateness, per partition, event by event in offset order:
    * an event is *late* if its time is older than the largest event time seen before it on
      its own partition minus ``allowed_lateness``, or if every window it belongs to has
      already closed (ends at or before the close frontier); late events are counted and not
      added;
    * the watermark of a partition is its largest event time minus ``allowed_lateness``;
    * window ``[start, end)`` closes when ``end <= min(watermark)`` over the *active*
      partitions. A partition is idle (not active) when no *accepted* event arrived on it for
      ``idle_timeout`` (measured with the injectable ``clock``), whatever else it carries:
      rejected messages (dead letters) and late events do not keep it active, so a partition of
      garbage cannot stop windows from closing. A partition without a watermark yet (assigned,
      no event) holds windows back until it is idle. The close frontier never moves back;
    * a window is reported for a segment when it holds at least one event of that segment.
While its partition is active, an event that is not late on its own partition belongs to a
window that has not closed (the frontier is at most that partition's watermark), so what a
window contains does not depend on how the partitions' messages interleave in batches: a replay
after a crash gives the same windows. (A partition that went idle and comes back can find its
windows closed: its events for them are late.)

Segments get ids in order of first appearance (:class:`~detectors.engine.SegmentRouter`); with
more distinct values than ``segments.max_segments``, which ones got their own id around the moment
the cap filled can depend on how the partitions interleaved.

Count windows: every ``N`` events per segment *and partition* in offset order (no lateness:
every valid event counts), closed as they fill; ``window_start``/``window_end`` are the first
event's time and the last event's time + 1 ms, as in :func:`detectors.engine.run_local` (equal to
it on a one-partition topic). Their ``window_index`` is the window's ordinal in its segment, in the
order the segment's count windows close over all partitions (on a one-partition topic, the backfill's).

Updates are vectorised: one ``flat_indices`` and one ``bincount`` per batch.

Checkpoints (:mod:`stream.service.checkpoint`): :meth:`WindowManager.snapshot` is the small state (plain
JSON: watermarks, frontier, segment router, count windows); the panes are written apart, and only
those changed or dropped since the last checkpoint (:meth:`WindowManager.changes`).

Silent segments (for metric ownership, :meth:`WindowManager.silent_segments`): windows are
numbered (time windows: the pane of their end; the newest is the last one the close frontier
passed, so windows without any event count too; count windows: valid events // ``N``); a segment
is silent when ``ttl`` windows have passed since its newest window with events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.engine import SegmentRouter, WindowSpec
from detectors.events import EventColumns
from detectors.histogram import Layout, WindowState
from stream.exceptions import CheckpointError

_NEG = -(2**62)
SNAPSHOT_VERSION = 4  # 3: one store for every partition; panes kept apart (stream.service.checkpoint); 4: count_index

PaneKey = tuple[int, int]  # (segment id, pane)


@dataclass
class ClosedWindow:
    segment_id: int
    segment: dict[str, str]
    start_ms: int
    end_ms: int
    index: int  # the record's window_index: a time window's first pane, a count window's ordinal in its segment
    counts: npt.NDArray[np.int64]
    raw: dict[str, Any] | None = None


@dataclass
class _CountWindow:
    state: WindowState
    first_ms: int
    last_ms: int
    raw: dict[str, list[float]] | None


@dataclass
class AddResult:
    n_added: int
    n_late: int
    closed: list[ClosedWindow]  # count windows that filled up
    rows: npt.NDArray[np.int64] | None = None  # positions of the events added (None: every one)


def unique_pairs(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``np.unique(np.stack([a, b], 1), axis=0, return_inverse=True)`` for integer columns, fast.

    Row-unique with ``axis=0`` sorts structured rows (~0.35 µs per event per batch); here each
    pair becomes one integer key, so a small key space needs only a bincount and a larger one
    a 1-D unique. Same rows, same order (lexicographic), same inverse.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
    amin, bmin = int(a.min()), int(b.min())
    na, nb = int(a.max()) - amin + 1, int(b.max()) - bmin + 1
    if na * nb > 1 << 62:
        uniq, inv = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
        return uniq.astype(np.int64), inv.reshape(-1).astype(np.int64)
    key = (a - amin) * nb + (b - bmin)
    if na * nb <= 1 << 20:
        present = np.bincount(key, minlength=na * nb)
        ukey = np.flatnonzero(present)
        rank = np.zeros(na * nb, dtype=np.int64)
        rank[ukey] = np.arange(len(ukey), dtype=np.int64)
        inv = rank[key]
    else:
        ukey, inv = np.unique(key, return_inverse=True)
        inv = inv.reshape(-1).astype(np.int64)
    uniq = np.stack([ukey // nb + amin, ukey % nb + bmin], axis=1).astype(np.int64)
    return uniq, inv


def _partition_key(
    seg: npt.NDArray[np.int64], parts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """One integer per (segment, partition): ``seg * n + index of the partition``; returns it, the
    partitions present (sorted) and ``n``. One partition (the common case): the segment ids."""
    if len(parts) == 0 or int(parts.min()) == int(parts.max()):
        one = parts[:1] if len(parts) else np.zeros(1, dtype=np.int64)
        return seg, one.astype(np.int64), 1
    pu, pinv = np.unique(parts, return_inverse=True)
    n = len(pu)
    return seg * n + pinv.reshape(-1).astype(np.int64), pu.astype(np.int64), n


class WindowManager:
    """The open windows of one monitor, over every partition of its topic, with the watermarks that close them."""

    def __init__(self, config: MonitorConfig, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.spec = WindowSpec.from_config(config)
        self.router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
        self.lateness_ms = config.window.allowed_lateness_ms
        self.idle_s = config.window.idle_timeout_ms / 1000.0
        self.keep_raw = config.window.keep_raw
        self.panes: dict[PaneKey, WindowState] = {}  # (segment, pane), summed over partitions
        self.count_windows: dict[tuple[int, int], _CountWindow] = {}  # (partition, segment)
        self.max_time: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.frontier: int | None = None  # every window with end <= frontier has closed
        # silence of segments: the number of the newest window, and each segment's newest window with events
        self.window_clock: int | None = None
        self.segment_window: dict[int, int] = {}
        self._count_events = 0  # count windows: valid events added (the windows' clock)
        self.count_index: dict[int, int] = {}  # count windows: segment id -> ordinal of its next window to close
        # panes written (or dropped) since the last checkpoint: what the next one must write
        self._changed: set[PaneKey] = set()
        self._dropped: set[PaneKey] = set()

    # -- partitions ---------------------------------------------------------------------
    def assign(self, partitions: Iterable[int]) -> None:
        """These partitions are consumed from now on: active (holding windows back until they have a
        watermark) until they go idle."""
        now = self.clock()
        for p in partitions:
            self.last_seen.setdefault(p, now)

    def touch(self, partitions: Iterable[int]) -> None:
        """Accepted events arrived on these partitions now (:meth:`add` calls it)."""
        now = self.clock()
        for p in partitions:
            self.last_seen[p] = now

    def is_idle(self, partition: int) -> bool:
        seen = self.last_seen.get(partition)
        return seen is None or self.clock() - seen >= self.idle_s

    def watermark(self) -> int | None:
        """min watermark over the active partitions (None while nothing can close). When every
        partition is idle the stream has paused and none holds windows back: the largest watermark
        of those that had events (so the windows their events completed close, whichever partition
        went idle last)."""
        now = self.clock()
        marks: list[int] = []
        for p, seen in self.last_seen.items():
            if now - seen < self.idle_s:
                if p not in self.max_time:
                    return None
                marks.append(self.max_time[p])
        if marks:
            return min(marks) - self.lateness_ms
        return max(self.max_time.values()) - self.lateness_ms if self.max_time else None

    # -- updates ------------------------------------------------------------------------
    def _segment_rows(self, cols: EventColumns, rows: npt.NDArray[np.int64]) -> tuple[Any, Any]:
        """(segment id, row) pairs: each row in its routed segment and, if configured, in overall."""
        if not self.router.active:
            return np.zeros(len(rows), dtype=np.int64), rows
        keys = cols.segments
        seg = self.router.route([keys[i] for i in rows.tolist()])
        if self.router.overall:
            return np.concatenate([seg, np.zeros(len(rows), dtype=np.int64)]), np.concatenate([rows, rows])
        return seg, rows

    def add(self, cols: EventColumns, partitions: npt.NDArray[np.int64]) -> AddResult:
        """Add a batch of valid events (``partitions[i]`` = partition of event ``i``)."""
        n = len(cols)
        if n == 0:
            return AddResult(0, 0, [])
        partitions = np.asarray(partitions, dtype=np.int64)
        t = cols.time_ms
        late = np.zeros(n, dtype=bool) if self.spec.kind == "count" else self._late(t, partitions)
        rows = np.flatnonzero(~late).astype(np.int64)
        if len(rows):  # the partitions with an accepted event are active (liveness: see the module doc)
            live = partitions if len(rows) == n else partitions[rows]
            p0 = int(live[0])
            self.touch([p0] if (live == p0).all() else np.unique(live).tolist())
        idx = self.layout.flat_indices(cols.features, n).reshape(n, -1)
        if self.spec.kind == "count":
            closed = self._add_count(cols, idx, rows, partitions)
        else:
            self._add_panes(cols, idx, rows)
            closed = []
        return AddResult(len(rows), int(late.sum()), closed, None if len(rows) == n else rows)

    def _late(self, t: npt.NDArray[np.int64], partitions: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        p0 = int(partitions[0])
        if (partitions == p0).all():  # the usual batch: one partition, no masks
            late = self._late_in(p0, t)
        else:
            late = np.zeros(len(t), dtype=bool)
            for p in np.unique(partitions).tolist():
                m = partitions == p
                late[m] = self._late_in(p, t[m])
        # the last window an event belongs to ends at window_end(pane_of(t)), monotone in t:
        # unless the earliest event's is at or before the frontier, no event's is
        spec = self.spec
        if self.frontier is not None and int(spec.window_end(spec.pane_of(t.min()))) <= self.frontier:
            late |= spec.window_end(spec.pane_of(t)) <= self.frontier
        return late

    def _late_in(self, p: int, tp: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Events of partition ``p`` (in offset order) behind its watermark; advances the watermark."""
        prev = self.max_time.get(p, _NEG)
        before = np.maximum.accumulate(np.concatenate([[prev], tp]))[:-1]
        self.max_time[p] = max(prev, int(tp.max()))
        return tp < before - self.lateness_ms

    def _grouped(
        self, idx: npt.NDArray[np.int64], seg: npt.NDArray[np.int64], rows: npt.NDArray[np.int64], key2: Any
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Unique (segment, key2) groups, their count vectors and sizes: one bincount.

        ``idx`` is given up by the caller: each row's slots are moved to its group's in place."""
        uniq, inv = unique_pairs(seg, key2)
        size = self.layout.size
        whole = len(rows) == len(idx) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(idx) - 1))
        flat = idx if whole else idx[rows]  # whole: rows = 0..n-1
        if len(uniq) > 1:  # (one group: its slots are the slots)
            flat += (inv * size)[:, None]
        flat = flat.reshape(-1)
        counts = np.bincount(flat, minlength=len(uniq) * size).reshape(len(uniq), size).astype(np.int64)
        sizes = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
        return uniq, counts, sizes

    def _add_panes(self, cols: EventColumns, idx: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        if len(rows) == 0:
            return
        with_overall = self.router.active and self.router.overall
        if self.router.active:  # each row in its routed segment; the overall is summed from them below
            keys: Any = cols.segments
            route: Callable[[Any], npt.NDArray[np.int64]] = self.router.route
            if cols.segment_values is not None and len(self.router.fields) == 1:
                keys, route = cols.segment_values, self.router.route_values
            seg = route(keys if len(rows) == len(keys) else [keys[i] for i in rows.tolist()])
        else:
            seg = np.zeros(len(rows), dtype=np.int64)
        panes = self.spec.pane_of(cols.time_ms[rows])
        uniq, counts, sizes = self._grouped(idx, seg, rows, panes)
        pairs = uniq.tolist()
        groups = [((s, p), c, k) for (s, p), c, k in zip(pairs, counts, sizes.tolist(), strict=True)]
        if with_overall and len(uniq):
            # the overall segment (id 0) of a pane is the sum of its segments' counts: one small sum
            # over groups instead of binning every event a second time
            opanes, oinv = np.unique(uniq[:, 1], return_inverse=True)
            ocounts = np.zeros((len(opanes), counts.shape[1]), dtype=np.int64)
            np.add.at(ocounts, oinv.reshape(-1), counts)
            osizes = np.bincount(oinv.reshape(-1), weights=sizes, minlength=len(opanes)).astype(np.int64)
            groups += [((0, p), c, k) for p, c, k in zip(opanes.tolist(), ocounts, osizes.tolist(), strict=True)]
        for key, c, k in groups:
            st = self.panes.get(key)
            if st is None:
                self.panes[key] = WindowState(c.copy(), k, self.layout.fingerprint)
            else:
                st.add_(c, k)
            self._changed.add(key)

    def _new_count_window(self) -> _CountWindow:
        raw: dict[str, list[float]] | None = {f: [] for f in self.layout.numeric} if self.keep_raw else None
        return _CountWindow(WindowState(self.layout.empty().counts, 0, self.layout.fingerprint), 0, 0, raw)

    def _add_count(
        self,
        cols: EventColumns,
        idx: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
        partitions: npt.NDArray[np.int64],
    ) -> list[ClosedWindow]:
        seg, r = self._segment_rows(cols, rows)
        key, pu, n_p = _partition_key(seg, partitions[r])
        size_n = self.spec.count
        self._count_events += len(rows)
        self.window_clock = self._count_events // size_n
        for s in np.unique(seg).tolist():
            self.segment_window[int(s)] = self.window_clock
        # ordinal of each event within its (partition, segment) stream, from the current window's fill
        ordinal = np.empty(len(r), dtype=np.int64)
        for a in np.unique(key).tolist():
            m = key == a
            cw = self.count_windows.get((int(pu[a % n_p]), a // n_p))
            fill = cw.state.n_events if cw is not None else 0
            ordinal[m] = fill + np.arange(int(m.sum()), dtype=np.int64)
        group = ordinal // size_n  # 0 = the open window, 1.. = later ones
        uniq, counts, sizes = self._grouped(idx, key, r, group)
        t = cols.time_ms[r]
        pair_rows: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
        order = np.lexsort((np.arange(len(r)), group, key))
        so, gs = key[order], group[order]
        bounds = np.flatnonzero((np.diff(so) != 0) | (np.diff(gs) != 0)) + 1
        for chunk in np.split(order, bounds):
            if len(chunk):
                pair_rows[(int(key[chunk[0]]), int(group[chunk[0]]))] = chunk
        closed: list[ClosedWindow] = []
        for (a, g), c, k in zip(uniq.tolist(), counts, sizes.tolist(), strict=True):
            chunk = pair_rows[(a, g)]
            tc = t[chunk]
            s, ck = a // n_p, (int(pu[a % n_p]), a // n_p)
            cw = self.count_windows.get(ck)
            if cw is None:
                cw = self._new_count_window()
                cw.first_ms, cw.last_ms = int(tc.min()), int(tc.max())
                self.count_windows[ck] = cw
            elif cw.state.n_events == 0:
                cw.first_ms, cw.last_ms = int(tc.min()), int(tc.max())
            else:
                cw.first_ms, cw.last_ms = min(cw.first_ms, int(tc.min())), max(cw.last_ms, int(tc.max()))
            cw.state.add_(c, k)
            if cw.raw is not None:
                src = r[chunk]
                for f in self.layout.numeric:
                    cw.raw[f].extend(np.asarray(cols.features[f])[src].tolist())
            if cw.state.n_events >= size_n:
                raw_arr = {f: np.asarray(v, dtype=np.float64) for f, v in cw.raw.items()} if cw.raw else None
                closed.append(self._close_count(s, cw, raw_arr))
                self.count_windows[ck] = self._new_count_window()
        return closed

    def _close_count(self, s: int, cw: _CountWindow, raw: dict[str, Any] | None) -> ClosedWindow:
        """A count window of segment ``s`` closes: it takes the segment's next ordinal."""
        index = self.count_index.get(s, 0)
        self.count_index[s] = index + 1
        return ClosedWindow(s, self.router.segment(s), cw.first_ms, cw.last_ms + 1, index, cw.state.counts, raw)

    # -- closing ------------------------------------------------------------------------
    def advance(self) -> list[ClosedWindow]:
        """Close every time window the watermark has passed (in order of end, then segment)."""
        if self.spec.kind == "count":
            return []
        wm = self.watermark()
        if wm is None or (self.frontier is not None and wm <= self.frontier):
            return []
        old = self.frontier
        self.frontier = wm
        spec = self.spec
        # the first panes of the windows that end in (old, wm]
        hi = spec.last_closed(wm)
        lo = None if old is None else spec.last_closed(old) + 1
        closed: list[ClosedWindow] = []
        if lo is None or lo <= hi:
            closed = self._windows(lo, hi)
            self._prune()
        # silence: every window that ends by the frontier has closed, with or without events; a segment
        # is reported for a window iff it has events in it
        self.window_clock = int(spec.pane_of(wm))
        for cw in closed:
            w = int(spec.pane_of(cw.end_ms))
            if w > self.segment_window.get(cw.segment_id, w - 1):
                self.segment_window[cw.segment_id] = w
        return closed

    def _windows(self, lo: int | None, hi: int | None) -> list[ClosedWindow]:
        """Every window with events whose first pane is in ``[lo, hi]`` (None: unbounded), summed from its
        panes, in order of end, then segment."""
        spec = self.spec
        k = spec.panes_per_window
        by_seg: dict[int, set[int]] = {}
        for s, p in self.panes:
            if (lo is None or p >= lo) and (hi is None or p < hi + k):
                by_seg.setdefault(s, set()).add(p)
        closed: list[ClosedWindow] = []
        for s in sorted(by_seg):
            panes = by_seg[s]
            for first in spec.windows_of_panes(sorted(panes)):
                if (lo is not None and first < lo) or (hi is not None and first > hi):
                    continue
                members = [self.panes[(s, p)].counts for p in range(first, first + k) if p in panes]
                total = members[0].copy()
                for m in members[1:]:
                    total += m
                start, end = spec.window_bounds(first)
                closed.append(ClosedWindow(s, self.router.segment(s), start, end, first, total))
        closed.sort(key=lambda c: (c.end_ms, c.segment_id))
        return closed

    def silent_segments(self, ttl: int) -> list[dict[str, str]]:
        """Segments without an event in the newest ``ttl`` windows (then forgotten until they have one again)."""
        clock = self.window_clock
        if clock is None:
            return []
        gone = [s for s, w in self.segment_window.items() if clock - w >= ttl]
        for s in gone:
            del self.segment_window[s]
        return [self.router.segment(s) for s in gone]

    def _prune(self) -> None:
        """Drop the panes whose every window has closed."""
        if self.frontier is None:
            return
        spec, f = self.spec, self.frontier
        for key in [key for key in self.panes if spec.window_end(key[1]) <= f]:
            del self.panes[key]
            self._changed.discard(key)
            self._dropped.add(key)

    # -- state --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The small state (plain JSON): watermarks, frontier, segment router, count windows, silence.
        The panes are saved apart (:meth:`changes`)."""
        return {
            "version": SNAPSHOT_VERSION,
            "frontier": self.frontier,
            "router": self.router.snapshot(),
            "max_time": [[p, t] for p, t in sorted(self.max_time.items())],
            "count_windows": [
                [q, s, cw.state.snapshot(), cw.first_ms, cw.last_ms, cw.raw]
                for (q, s), cw in sorted(self.count_windows.items())
            ],
            "count_events": self._count_events,
            "count_index": [[s, i] for s, i in sorted(self.count_index.items())],
            "window_clock": self.window_clock,
            "segment_window": [[s, w] for s, w in sorted(self.segment_window.items())],
        }

    def changes(self) -> tuple[set[PaneKey], set[PaneKey]]:
        """(panes written, panes dropped) since the last :meth:`saved`."""
        return self._changed, self._dropped

    def saved(self) -> None:
        """A checkpoint holds the panes as they are now."""
        self._changed = set()
        self._dropped = set()

    def restore(self, snap: Mapping[str, Any], panes: Mapping[PaneKey, tuple[int, npt.NDArray[np.int64]]]) -> None:
        """Go on from a checkpoint: :meth:`snapshot`'s state and the panes (as the checkpoint holds them)."""
        version = snap.get("version")
        if version not in (3, SNAPSHOT_VERSION):
            raise CheckpointError(f"window state version {version!r} is not {SNAPSHOT_VERSION}")
        if version == 3 and self.spec.kind == "count" and int(snap["count_events"]):
            # (time windows need no ordinals: a version 3 state of theirs goes on as it is)
            raise CheckpointError(
                "window state version 3 has no count-window ordinals (window_index): start count windows "
                "afresh with a new state.dir"
            )
        self.router.restore(snap["router"])
        self.frontier = None if snap["frontier"] is None else int(snap["frontier"])
        self.max_time = {int(p): int(t) for p, t in snap["max_time"]}
        self.count_windows = {
            (int(q), int(s)): _CountWindow(WindowState.from_snapshot(st, self.layout), int(a), int(b), raw)
            for q, s, st, a, b, raw in snap["count_windows"]
        }
        self._count_events = int(snap["count_events"])
        self.count_index = {int(s): int(i) for s, i in snap.get("count_index", [])}  # (version 3: none)
        self.window_clock = snap["window_clock"]
        self.segment_window = {int(s): int(w) for s, w in snap["segment_window"]}
        size, fp = self.layout.size, self.layout.fingerprint
        self.panes = {}
        for key, (n, counts) in panes.items():
            if len(counts) != size:
                raise CheckpointError(f"a pane of {len(counts)} counts in a layout of {size}")
            self.panes[key] = WindowState(np.asarray(counts, dtype=np.int64), int(n), fp)
        self.saved()

    # -- a reference switch ---------------------------------------------------------------
    def flush(self) -> list[ClosedWindow]:
        """Close every window that holds an event now, whatever the watermark: the reference they
        were counted against ends here (a model version switch). Time windows past the frontier and
        count windows, filled or not. The frontier does not move: the same time windows go on,
        empty, under the successor."""
        closed: list[ClosedWindow] = []
        for (_q, s), cw in sorted(self.count_windows.items()):
            if cw.state.n_events:
                raw = {f: np.asarray(v, dtype=np.float64) for f, v in cw.raw.items()} if cw.raw else None
                closed.append(self._close_count(s, cw, raw))
        if self.spec.kind == "count":
            return closed
        spec, old = self.spec, self.frontier
        lo = None if old is None else spec.last_closed(old) + 1
        return closed + self._windows(lo, None)

    def successor(self, config: MonitorConfig, layout: Layout) -> WindowManager:
        """An empty manager for another reference (``layout``) that keeps this one's time: the
        partitions' watermarks and liveness, and the close frontier. Windows and segments start
        afresh (:meth:`flush` first, to report what this one holds); its first checkpoint drops
        this one's panes."""
        new = WindowManager(config, layout, clock=self.clock)
        new.max_time = dict(self.max_time)
        new.last_seen = dict(self.last_seen)
        new.frontier = self.frontier
        new._dropped = set(self.panes) | self._dropped
        return new
