"""Window and watermark state of the consumer: panes, count windows, per-partition watermarks.

State is kept **per partition**, so that it can follow a partition from one consumer process
to another through its checkpoint (see :mod:`stream.checkpoint`): time windows keep one
:class:`~detectors.histogram.WindowState` per (partition, segment, pane); a window is the sum
over partitions and panes (tumbling: one pane per window). Segment ids are this process's
router ids; persisted state names a segment by its key tuple.

Watermarks and lateness, per partition, event by event in arrival order:
    * an event is *late* if its time is older than the largest event time seen before it
      on its own partition minus ``allowed_lateness``, or if every window it belongs to
      has already closed (is at or before the known close frontier); late events are
      counted and not added;
    * the watermark of a partition is its largest event time minus ``allowed_lateness``;
    * only the *closer* (the process that owns partition 0) closes windows: window
      ``[start, end)`` closes when ``end <= min(watermark)`` over the *active* partitions of
      the topic: its own (live), and the others' (:attr:`WindowManager.foreign`, read from
      their owners' newest checkpoints). An own partition is idle (not active) when no
      *accepted* event arrived on it for ``idle_timeout`` (measured with the injectable
      ``clock``), whatever else it carries: rejected messages (dead letters) and late
      events do not keep it active, so a partition of garbage cannot stop windows from
      closing; a foreign one is idle when its owner's checkpoint says so. A partition
      without a watermark yet (no event, or a foreign one never checkpointed) holds
      windows back until it is idle. A foreign
      partition's panes of a window are final once its checkpointed watermark has passed
      the window's end (later events for it are late on their own partition), so summing
      them from the file is exact. The close frontier never moves back;
    * a process that does not close windows learns the frontier from partition 0's
      checkpoint (:meth:`WindowManager.learn_frontier`) and prunes its panes up to it;
    * a window is reported for a segment when it holds at least one event of that segment.
With one partition (or in-order partitions), what a window contains does not depend on
how messages are split into batches, so a replay after a crash gives the same windows.

Count windows: every ``N`` events per segment *and partition* in offset order (no lateness:
every valid event counts), closed by the partition's owner as they fill;
``window_start``/``window_end`` are the first event's time and the last event's time + 1 ms,
as in :func:`detectors.engine.run_local` (equal to it on a one-partition topic).

Updates are vectorised: one ``flat_indices`` and one ``bincount`` per batch.

Silent segments (for metric ownership, :meth:`WindowManager.silent_segments`): windows are
numbered (time windows: ``end // slide``; the newest is the last one the close frontier
passed, so windows without any event count too; count windows: this process's valid events
// ``N``); a segment is silent when ``ttl`` windows have passed since its newest window with
events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.engine import OTHER_SEGMENT, SegmentRouter, WindowSpec
from detectors.events import EventColumns
from detectors.histogram import Layout, WindowState
from stream.exceptions import CheckpointError

_NEG = -(2**62)
SNAPSHOT_VERSION = 2  # 2: per-partition state, segments named by key


@dataclass
class ClosedWindow:
    segment_id: int
    segment: dict[str, str]
    start_ms: int
    end_ms: int
    counts: npt.NDArray[np.int64]
    raw: dict[str, Any] | None = None


@dataclass
class _CountWindow:
    state: WindowState
    first_ms: int
    last_ms: int
    raw: dict[str, list[float]] | None


@dataclass
class ForeignPartition:
    """What the closer knows of a partition another process owns, from that partition's newest checkpoint.

    ``max_time`` None and not ``idle``: no watermark yet, the partition holds windows back.
    ``panes`` maps (this process's segment id, pane) to counts.
    """

    max_time: int | None
    idle: bool
    panes: dict[tuple[int, int], npt.NDArray[np.int64]] = field(default_factory=dict)
    pruned_to: int | None = None


@dataclass
class AddResult:
    n_added: int
    n_late: int
    closed: list[ClosedWindow]  # count windows that filled up


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
    """The open windows of one monitor's partitions in this process, with the watermarks that close them."""

    def __init__(self, config: MonitorConfig, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.spec = WindowSpec.from_config(config)
        self.router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
        self.lateness_ms = config.window.allowed_lateness_ms
        self.idle_s = config.window.idle_timeout_ms / 1000.0
        self.keep_raw = config.window.keep_raw
        self.panes: dict[tuple[int, int, int], WindowState] = {}  # (partition, segment, pane)
        self.count_windows: dict[tuple[int, int], _CountWindow] = {}  # (partition, segment)
        self.max_time: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.frontier: int | None = None  # every window with end <= frontier has closed
        #: whether this process closes windows (it owns partition 0)
        self.closer = True
        #: the topic's other partitions; None = not known yet (nothing closes)
        self.foreign: dict[int, ForeignPartition] | None = {}
        # silence of segments: the number of the newest window, and each segment's newest window with events
        self.window_clock: int | None = None
        self.segment_window: dict[int, int] = {}
        self._count_events = 0  # count windows: valid events added (the windows' clock)

    # -- partitions ---------------------------------------------------------------------
    def assign(self, partitions: Iterable[int]) -> None:
        now = self.clock()
        for p in partitions:
            self.last_seen.setdefault(p, now)

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget these partitions' state (their owner's checkpoint has it)."""
        gone = set(partitions)
        for p in gone:
            self.last_seen.pop(p, None)
            self.max_time.pop(p, None)
        self.panes = {k: v for k, v in self.panes.items() if k[0] not in gone}
        self.count_windows = {k: v for k, v in self.count_windows.items() if k[0] not in gone}

    def touch(self, partitions: Iterable[int]) -> None:
        """Accepted events arrived on these partitions now (:meth:`add` calls it)."""
        now = self.clock()
        for p in partitions:
            self.last_seen[p] = now

    def is_idle(self, partition: int) -> bool:
        seen = self.last_seen.get(partition)
        return seen is None or self.clock() - seen >= self.idle_s

    def watermark(self) -> int | None:
        """min watermark over the active partitions, own and foreign (None while nothing can close)."""
        if self.foreign is None:
            return None
        now = self.clock()
        marks: list[int] = []
        for p, seen in self.last_seen.items():
            if now - seen < self.idle_s:
                if p not in self.max_time:
                    return None
                marks.append(self.max_time[p])
        for fp in self.foreign.values():
            if fp.idle:
                continue
            if fp.max_time is None:
                return None
            marks.append(fp.max_time)
        if not marks:
            return None
        return min(marks) - self.lateness_ms

    # -- segments by key ----------------------------------------------------------------
    def segment_id(self, key: tuple[str, ...]) -> int:
        """This process's id of a segment named by its key (registered if new: another process
        labelled it, so the cap of this router does not apply)."""
        r = self.router
        i = r._ids.get(key)
        if i is not None:
            return i
        if r.fields and key == tuple(OTHER_SEGMENT for _ in r.fields):
            r._other = r._register(key)
            return r._other
        return r._register(key)

    def segment_key(self, segment_id: int) -> list[str]:
        return list(self.router.keys[segment_id])

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
            self._add_panes(cols, idx, rows, partitions)
            closed = []
        return AddResult(len(rows), int(late.sum()), closed)

    def _late(self, t: npt.NDArray[np.int64], partitions: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        p0 = int(partitions[0])
        if (partitions == p0).all():  # the usual batch: one partition, no masks
            late = self._late_in(p0, t)
        else:
            late = np.zeros(len(t), dtype=bool)
            for p in np.unique(partitions).tolist():
                m = partitions == p
                late[m] = self._late_in(p, t[m])
        # the last window an event belongs to ends at pane_of(t) * slide + size, monotone in t:
        # when the earliest event's is past the frontier, every event's is
        spec = self.spec
        if self.frontier is not None and int(spec.pane_of(t.min())) * spec.slide_ms + spec.size_ms <= self.frontier:
            late |= spec.pane_of(t) * spec.slide_ms + spec.size_ms <= self.frontier
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
        """Unique (segment, key2) groups, their count vectors and sizes: one bincount."""
        uniq, inv = unique_pairs(seg, key2)
        size = self.layout.size
        whole = len(rows) == len(idx) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(idx) - 1))
        flat = idx if whole else idx[rows]  # whole: rows = 0..n-1
        if len(uniq) > 1:  # (one group: its slots are the slots)
            flat = flat + (inv * size)[:, None]
        flat = flat.reshape(-1)
        counts = np.bincount(flat, minlength=len(uniq) * size).reshape(len(uniq), size).astype(np.int64)
        sizes = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
        return uniq, counts, sizes

    def _add_panes(
        self,
        cols: EventColumns,
        idx: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
        partitions: npt.NDArray[np.int64],
    ) -> None:
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
        key, pu, n_p = _partition_key(seg, partitions[rows])
        panes = self.spec.pane_of(cols.time_ms[rows])
        uniq, counts, sizes = self._grouped(idx, key, rows, panes)
        groups = [
            ((int(pu[a % n_p]), a // n_p, p), c, k)
            for (a, p), c, k in zip(uniq.tolist(), counts, sizes.tolist(), strict=True)
        ]
        if with_overall and len(uniq):
            # the overall segment (id 0) of a (partition, pane) is the sum of its segments' counts:
            # one small sum over groups instead of binning every event a second time
            ouniq, oinv = unique_pairs(uniq[:, 0] % n_p, uniq[:, 1])
            ocounts = np.zeros((len(ouniq), counts.shape[1]), dtype=np.int64)
            np.add.at(ocounts, oinv, counts)
            osizes = np.bincount(oinv, weights=sizes, minlength=len(ouniq)).astype(np.int64)
            groups += [
                ((int(pu[pi]), 0, p), c, k)
                for (pi, p), c, k in zip(ouniq.tolist(), ocounts, osizes.tolist(), strict=True)
            ]
        for pk, c, k in groups:
            st = self.panes.get(pk)
            if st is None:
                self.panes[pk] = WindowState(c.copy(), k, self.layout.fingerprint)
            else:
                st.add_(c, k)

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
                closed.append(
                    ClosedWindow(s, self.router.segment(s), cw.first_ms, cw.last_ms + 1, cw.state.counts, raw_arr)
                )
                self.count_windows[ck] = self._new_count_window()
        return closed

    # -- closing ------------------------------------------------------------------------
    def advance(self) -> list[ClosedWindow]:
        """Close every time window the watermark has passed (in order of end, then segment).

        Only in the closer; the counts of a window are summed over its own and the foreign
        partitions' panes.
        """
        if self.spec.kind == "count" or not self.closer:
            return []
        wm = self.watermark()
        if wm is None or (self.frontier is not None and wm <= self.frontier):
            return []
        old = self.frontier
        self.frontier = wm
        spec = self.spec
        k = spec.panes_per_window
        members_of: dict[tuple[int, int], list[npt.NDArray[np.int64]]] = {}
        for (_part, s, p), st in self.panes.items():
            members_of.setdefault((s, p), []).append(st.counts)
        for fp in (self.foreign or {}).values():
            for sp, c in fp.panes.items():
                members_of.setdefault(sp, []).append(c)
        by_seg: dict[int, set[int]] = {}
        for s, p in members_of:
            by_seg.setdefault(s, set()).add(p)
        closed: list[ClosedWindow] = []
        for s in sorted(by_seg):
            panes = by_seg[s]
            for first in spec.windows_of_panes(sorted(panes)):
                start, end = spec.window_bounds(first)
                if end > wm or (old is not None and end <= old):
                    continue
                members = [c for p in range(first, first + k) if p in panes for c in members_of[(s, p)]]
                total = members[0].copy()
                for m in members[1:]:
                    total += m
                closed.append(ClosedWindow(s, self.router.segment(s), start, end, total))
        self._prune()
        closed.sort(key=lambda c: (c.end_ms, c.segment_id))
        # silence: every window that ends by the frontier has closed, with or without events; a segment
        # is reported for a window iff it has events in it
        self.window_clock = wm // spec.slide_ms
        for cw in closed:
            w = cw.end_ms // spec.slide_ms
            if w > self.segment_window.get(cw.segment_id, w - 1):
                self.segment_window[cw.segment_id] = w
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

    def forget_segment_windows(self) -> None:
        """Start the silence of segments afresh (this process stopped closing windows)."""
        self.window_clock = None
        self.segment_window.clear()

    def learn_frontier(self, frontier: int | None) -> None:
        """Every window with end <= ``frontier`` has closed (elsewhere, or before a restart): never
        close them again, drop their panes, count later events for them as late."""
        if frontier is None or (self.frontier is not None and frontier <= self.frontier):
            return
        self.frontier = int(frontier)
        self._prune()

    def _prune(self) -> None:
        if self.frontier is None:
            return
        spec, f = self.spec, self.frontier
        for key in [key for key in self.panes if key[2] * spec.slide_ms + spec.size_ms <= f]:
            del self.panes[key]
        for fp in (self.foreign or {}).values():
            for sp in [sp for sp in fp.panes if sp[1] * spec.slide_ms + spec.size_ms <= f]:
                del fp.panes[sp]

    # -- state --------------------------------------------------------------------------
    def partition_snapshot(self, partition: int) -> dict[str, Any]:
        """One partition's state: its watermark, panes, count windows, and ``pruned_to`` (the frontier
        up to which its panes were dropped)."""
        return {
            "version": SNAPSHOT_VERSION,
            "max_time": self.max_time.get(partition),
            "panes": [
                [self.segment_key(s), p, st.snapshot()]
                for (q, s, p), st in sorted(self.panes.items())
                if q == partition
            ],
            "count_windows": [
                [self.segment_key(s), cw.state.snapshot(), cw.first_ms, cw.last_ms, cw.raw]
                for (q, s), cw in sorted(self.count_windows.items())
                if q == partition
            ],
            "pruned_to": self.frontier,
        }

    def load_partition(self, partition: int, snap: Mapping[str, Any]) -> None:
        """Take over a partition from its checkpoint (replaces what this process held of it)."""
        _check_version(snap)
        seen = self.last_seen.get(partition)
        self.revoke([partition])
        if seen is not None:
            self.last_seen[partition] = seen
        if snap["max_time"] is not None:
            self.max_time[partition] = int(snap["max_time"])
        for key, p, st in snap["panes"]:
            s = self.segment_id(tuple(key))
            self.panes[(partition, s, int(p))] = WindowState.from_snapshot(st, self.layout)
        for key, st, a, b, raw in snap["count_windows"]:
            s = self.segment_id(tuple(key))
            self.count_windows[(partition, s)] = _CountWindow(
                WindowState.from_snapshot(st, self.layout), int(a), int(b), raw
            )
        self.learn_frontier(snap["pruned_to"])
        self._prune()

    def foreign_partition(self, snap: Mapping[str, Any], idle: bool) -> ForeignPartition:
        """A foreign partition's view from its checkpoint (segments mapped to this process's ids)."""
        _check_version(snap)
        panes: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
        for key, p, st in snap["panes"]:
            panes[(self.segment_id(tuple(key)), int(p))] = WindowState.from_snapshot(st, self.layout).counts
        mt = snap["max_time"]
        pruned = snap["pruned_to"]
        return ForeignPartition(None if mt is None else int(mt), idle, panes, None if pruned is None else int(pruned))

    def shared_snapshot(self) -> dict[str, Any]:
        """What the closer keeps in partition 0's checkpoint: the frontier and its segment router."""
        return {"version": SNAPSHOT_VERSION, "frontier": self.frontier, "router": self.router.snapshot()}

    def load_shared(self, snap: Mapping[str, Any]) -> None:
        """Partition 0's shared state: the frontier (never moving back) and the router's segments, in
        their order (added to this router's; the first loaded keeps its ids)."""
        _check_version(snap)
        router = snap["router"]
        for key in router["keys"]:
            self.segment_id(tuple(key))
        self.router.overflowed = max(self.router.overflowed, int(router["overflowed"]))
        self.learn_frontier(snap["frontier"])

    def snapshot(self) -> dict[str, Any]:
        """Everything this process holds (tests; the consumer saves one partition per file)."""
        parts = {q for q, _s, _p in self.panes} | {q for q, _s in self.count_windows} | set(self.max_time)
        return {
            "shared": self.shared_snapshot(),
            "partitions": [[q, self.partition_snapshot(q)] for q in sorted(parts)],
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.load_shared(snap["shared"])
        for q, part in snap["partitions"]:
            self.load_partition(int(q), part)

    # -- a reference switch ---------------------------------------------------------------
    def flush(self) -> list[ClosedWindow]:
        """Close every window that holds an event now, whatever the watermark: the reference they
        were counted against ends here (a model version switch). Time windows in the closer (its
        panes and the foreign ones it knows), the count windows of the owned partitions, filled or
        not. The frontier does not move: the same time windows go on, empty, under the successor."""
        closed: list[ClosedWindow] = []
        for (_q, s), cw in sorted(self.count_windows.items()):
            if cw.state.n_events:
                raw = {f: np.asarray(v, dtype=np.float64) for f, v in cw.raw.items()} if cw.raw else None
                closed.append(
                    ClosedWindow(s, self.router.segment(s), cw.first_ms, cw.last_ms + 1, cw.state.counts, raw)
                )
        if self.spec.kind == "count" or not self.closer:
            return closed
        spec, old = self.spec, self.frontier
        members_of: dict[tuple[int, int], list[npt.NDArray[np.int64]]] = {}
        for (_part, s, p), st in self.panes.items():
            members_of.setdefault((s, p), []).append(st.counts)
        for fp in (self.foreign or {}).values():
            for sp, c in fp.panes.items():
                members_of.setdefault(sp, []).append(c)
        by_seg: dict[int, set[int]] = {}
        for s, p in members_of:
            by_seg.setdefault(s, set()).add(p)
        for s in sorted(by_seg):
            panes = by_seg[s]
            for first in spec.windows_of_panes(sorted(panes)):
                start, end = spec.window_bounds(first)
                if old is not None and end <= old:
                    continue
                members = [
                    c for p in range(first, first + spec.panes_per_window) if p in panes for c in members_of[(s, p)]
                ]
                total = members[0].copy()
                for m in members[1:]:
                    total += m
                closed.append(ClosedWindow(s, self.router.segment(s), start, end, total))
        closed.sort(key=lambda c: (c.end_ms, c.segment_id))
        return closed

    def successor(self, config: MonitorConfig, layout: Layout) -> WindowManager:
        """An empty manager for another reference (``layout``) that keeps this one's time: the
        partitions' watermarks and liveness, the close frontier, the closer role. Windows and
        segments start afresh (:meth:`flush` first, to report what this one holds)."""
        new = WindowManager(config, layout, clock=self.clock)
        new.max_time = dict(self.max_time)
        new.last_seen = dict(self.last_seen)
        new.frontier = self.frontier
        new.closer = self.closer
        new.foreign = None if self.foreign is None else {}  # (the foreign view is read again, of the new version)
        return new


def _check_version(snap: Mapping[str, Any]) -> None:
    if snap.get("version") != SNAPSHOT_VERSION:
        raise CheckpointError(f"window state version {snap.get('version')!r} is not {SNAPSHOT_VERSION}")
