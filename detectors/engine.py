"""Windows, segments and the local (numpy) engine that turns events into window records.

Windows (all times epoch milliseconds, UTC, half-open ``[start, end)``)
    * tumbling of size ``S``: ``start = floor((t - O) / S) * S + O`` with the origin ``O`` the
      ``offset`` (plus Monday 1970-01-05 for weeks, ``1w``); calendar months (``1mo``): the 1st
      of the month (+ offset). :mod:`detectors.calendar` numbers the windows.
    * sliding of size ``S`` and slide ``L`` (``S`` a multiple of ``L``): the event belongs to
      the ``S / L`` windows whose start is ``O`` + a multiple of ``L`` in ``(t - S, t]``. The
      state is kept per *pane* of length ``L``; a window is the sum of its panes.
    * count windows of ``N`` events per segment, in input order; only full windows close.
      Their ``window_start`` / ``window_end`` are the first event's time and the last
      event's time + 1 ms.
    Records carry ``window_index``: a time window's first pane number, a count window's ordinal
    in its segment (0, 1, ...), so count windows whose times tie stay apart.
    A window is reported for a segment when it holds at least one event of that segment.

Segments
    the values of ``events.segment_fields`` form a segment; the first ``max_segments``
    distinct segments (in order of first appearance) are kept and later ones share
    ``__other__``. With ``segments.overall`` every event also counts in segment ``{}``.

The backfill (:func:`run_local`) sees all of history at once, so nothing is late and every
window with data is reported. On in-order data its windows match the consumer exactly. Its
concept detector runs once over the whole history in event-time order (records of segment
``{}``); the consumer and the streaming job run one per Kafka partition in offset order
(segment ``{"kafka_partition": "<p>"}``), which on a one-partition topic in time order gives the
same detections.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.calendar import DAY_MS, Steps
from detectors.config import MonitorConfig
from detectors.evaluate import evaluate_window, iso_ms, require_calibration, window_records
from detectors.events import EventColumns, concept_values
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from detectors.sequential import make_detector

OTHER_SEGMENT = "__other__"
#: the segment key of a concept-drift record of a detector that runs per Kafka partition (the
#: consumer's and the streaming job's: one detector per partition, in offset order); its value is
#: the partition. The backfill runs one detector over the whole history in event-time order, segment {}
PARTITION_SEGMENT = "kafka_partition"


class SegmentRouter:
    """Maps segment values to a bounded set of segment ids, first come first served."""

    def __init__(self, fields: Sequence[str], max_segments: int, overall: bool) -> None:
        self.fields = tuple(fields)
        self.max_segments = max_segments
        self.overall = overall or not self.fields
        self._ids: dict[tuple[str, ...], int] = {}
        self._ids1: dict[str, int] = {}  # one segment field: its value -> id (the same ids as _ids)
        self.keys: list[tuple[str, ...]] = []
        self.overflowed = 0  # events routed to __other__
        if self.overall:
            self._register(())
        self._other: int | None = None

    def _register(self, key: tuple[str, ...]) -> int:
        i = len(self.keys)
        self._ids[key] = i
        if len(key) == 1:
            self._ids1[key[0]] = i
        self.keys.append(key)
        return i

    @property
    def active(self) -> bool:
        return bool(self.fields)

    def segment(self, i: int) -> dict[str, str]:
        return dict(zip(self.fields, self.keys[i], strict=True)) if self.keys[i] else {}

    def route(self, keys: Sequence[tuple[str, ...]]) -> npt.NDArray[np.int64]:
        """Segment id of every event (-1 when there are no segment fields)."""
        if not self.fields:
            return np.full(len(keys), -1, dtype=np.int64)
        ids = self._ids
        try:  # the usual case: every segment seen before, one dict lookup each
            return np.fromiter(map(ids.__getitem__, keys), dtype=np.int64, count=len(keys))
        except KeyError:
            pass  # a new segment: register it (or send it to __other__) in arrival order below
        out = np.full(len(keys), -1, dtype=np.int64)
        n_seg = len(self.keys) - (1 if self.overall else 0) - (1 if self._other is not None else 0)
        for j, key in enumerate(keys):
            i = ids.get(key)
            if i is None:
                if n_seg < self.max_segments:
                    i = self._register(key)
                    n_seg += 1
                else:
                    if self._other is None:
                        self._other = self._register(tuple(OTHER_SEGMENT for _ in self.fields))
                    i = self._other
                    self.overflowed += 1
            out[j] = i
        return out

    def route_values(self, values: Sequence[str]) -> npt.NDArray[np.int64]:
        """:meth:`route` for one segment field, given its values rather than 1-tuples of them."""
        if len(self.fields) != 1:
            raise ValueError(f"route_values needs exactly one segment field, not {self.fields}")
        try:
            return np.fromiter(map(self._ids1.__getitem__, values), dtype=np.int64, count=len(values))
        except KeyError:
            return self.route([(v,) for v in values])

    def snapshot(self) -> dict[str, Any]:
        return {"keys": [list(k) for k in self.keys], "other": self._other, "overflowed": self.overflowed}

    def restore(self, snap: Mapping[str, Any]) -> None:
        self._ids.clear()
        self._ids1.clear()
        self.keys.clear()
        for k in snap["keys"]:
            self._register(tuple(k))
        self._other = snap["other"]
        self.overflowed = int(snap["overflowed"])


@dataclass(frozen=True)
class WindowSpec:
    """Windows as the engines compute them: time windows are sums of *panes* numbered by
    :class:`detectors.calendar.Steps` (fixed steps from an origin, or calendar months); a window is
    named by its first pane (its ``window_index``)."""

    kind: str
    size_ms: int  # a time window's length (calendar months: the longest, 31 days a month)
    slide_ms: int  # the pane's length (calendar months: 0, the pane is a month)
    count: int
    months: int = 0  # calendar months per window (tumbling only), else 0
    origin_ms: int = 0  # the start of pane 0 (the offset; from Monday 1970-01-05 for weeks)

    @classmethod
    def from_config(cls, config: MonitorConfig) -> WindowSpec:
        w = config.window
        if w.kind == "count":
            return cls("count", 0, 0, w.count)
        if w.months:
            return cls(w.kind, w.size_ms, 0, 0, w.months, w.origin_ms)
        return cls(w.kind, w.size_ms, w.slide_ms, 0, 0, w.origin_ms)

    @cached_property
    def steps(self) -> Steps:
        return Steps(0 if self.months else self.slide_ms, self.months, self.origin_ms)

    @property
    def panes_per_window(self) -> int:
        return self.size_ms // self.slide_ms if self.kind != "count" and not self.months else 1

    @property
    def tick_ms(self) -> int:
        """A fixed step at which to look for windows to close: the pane (a day for calendar months)."""
        return DAY_MS if self.months else self.slide_ms

    def pane_of(self, t_ms: Any) -> Any:
        """The pane of each time (an array for an array, an int for an int)."""
        return self.steps.pane_of(t_ms)

    def pane_start(self, pane: Any) -> Any:
        return self.steps.pane_start(pane)

    def window_end(self, first_pane: Any) -> Any:
        """The end of the window that starts with ``first_pane`` (also: the end of the last window a
        pane belongs to, the one it starts)."""
        return self.steps.pane_start(np.asarray(first_pane, dtype=np.int64) + self.panes_per_window)

    def last_closed(self, t_ms: int) -> int:
        """The first pane of the last window that ends at or before ``t_ms``."""
        return int(self.steps.pane_of(t_ms)) - self.panes_per_window

    def window_bounds(self, first_pane: int) -> tuple[int, int]:
        return int(self.pane_start(first_pane)), int(self.window_end(first_pane))

    def windows_of_panes(self, panes: Sequence[int]) -> list[int]:
        """First pane of every window that contains at least one of ``panes``, sorted."""
        k = self.panes_per_window
        out: set[int] = set()
        for p in panes:
            out.update(range(p - k + 1, p + 1))
        return sorted(out)


def record_sort_key(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    """Canonical order of window records: window, segment, feature, statistic."""
    seg = sorted(dict(rec["segment"]).items())
    return (rec["window_end"], rec["window_start"], seg, rec["feature"], rec["statistic"])


def run_local(
    cols: EventColumns,
    config: MonitorConfig,
    reference: ReferenceProfile,
    layout: Layout,
    model_name: str | None = None,
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """Every window statistic record (and concept-drift record) of a complete history (of the
    model version ``model_name``/``model_version`` when the reference is one's)."""
    require_calibration(layout)
    spec = WindowSpec.from_config(config)
    router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
    seg_ids = router.route(cols.segments)
    # every (segment, window) with data; a window's segments are evaluated together (one family
    # with statistics.family: window)
    by_window: dict[tuple[int, int, int], list[tuple[dict[str, str], Any, dict[str, Any] | None]]] = {}
    for seg_id, rows in _segment_rows(router, seg_ids, len(cols)):
        segment = router.segment(seg_id)
        for index, start, end, counts, raw in _windows(cols, rows, spec, layout, config):
            by_window.setdefault((start, end, index), []).append((segment, counts, raw))
    records: list[dict[str, Any]] = []
    for (start, end, index), members in by_window.items():
        verdicts = evaluate_window(layout, [(c, raw) for _s, c, raw in members], config.statistics)
        for (segment, _c, _raw), results in zip(members, verdicts, strict=True):
            records.extend(
                window_records(
                    results,
                    monitor=config.monitor,
                    segment=segment,
                    window_start_ms=start,
                    window_end_ms=end,
                    window_index=index,
                    fingerprint=reference.fingerprint,
                    model_name=model_name,
                    model_version=model_version,
                )
            )
    records.sort(key=record_sort_key)
    records.extend(concept_records(cols, config, reference, model_name, model_version))
    return records


def _segment_rows(
    router: SegmentRouter, seg_ids: npt.NDArray[np.int64], n: int
) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    all_rows = np.arange(n, dtype=np.int64)
    for i in range(len(router.keys)):
        if router.keys[i] == () and router.overall:
            yield i, all_rows
        else:
            rows = all_rows[seg_ids == i]
            if rows.size:
                yield i, rows


def _windows(
    cols: EventColumns,
    rows: npt.NDArray[np.int64],
    spec: WindowSpec,
    layout: Layout,
    config: MonitorConfig,
) -> Iterator[tuple[int, int, int, Any, dict[str, Any] | None]]:
    """(window index, start, end, counts, raw values) of every window of the events ``rows`` (of one
    segment). The index of a time window is its first pane; of a count window, its ordinal (0, 1, ...)."""
    sub = {f: _take(v, rows) for f, v in cols.features.items()}
    t = cols.time_ms[rows]
    if spec.kind == "count":
        n_full = len(rows) // spec.count
        if n_full == 0:
            return
        group = np.arange(len(rows), dtype=np.int64) // spec.count
        keep = group < n_full
        hist = layout.grouped_histograms(
            {f: _take(v, np.flatnonzero(keep)) for f, v in sub.items()}, group[keep], n_full
        )
        for g in range(n_full):
            lo, hi = g * spec.count, (g + 1) * spec.count
            raw = None
            if config.window.keep_raw:
                raw = {f: np.asarray(v[lo:hi]) for f, v in sub.items() if isinstance(v, np.ndarray)}
            yield g, int(t[lo:hi].min()), int(t[lo:hi].max()) + 1, hist[g], raw
        return
    panes = spec.pane_of(t)
    uniq, inv = np.unique(panes, return_inverse=True)
    hist = layout.grouped_histograms(sub, inv.astype(np.int64), len(uniq))
    pane_pos = {int(p): i for i, p in enumerate(uniq)}
    k = spec.panes_per_window
    for first in spec.windows_of_panes(uniq.tolist()):
        members = [pane_pos[p] for p in range(first, first + k) if p in pane_pos]
        counts = hist[members].sum(axis=0)
        start, end = spec.window_bounds(first)
        yield first, start, end, counts, None


def _take(values: Any, idx: npt.NDArray[np.int64]) -> Any:
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[i] for i in idx]


def concept_records(
    cols: EventColumns,
    config: MonitorConfig,
    reference: ReferenceProfile,
    model_name: str | None = None,
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """Run the concept detector over the whole stream in event-time order; one record per detection
    (segment ``{}``). The consumer runs one detector per Kafka partition in offset order instead
    (segment ``{PARTITION_SEGMENT: "<p>"}``): on a one-partition topic in time order, the same
    detections."""
    c = config.concept
    if not config.concept_active or config.concept_on_labels or len(cols) == 0:
        return []  # (with a labels section the detector runs on the joined labels: run_local_labels)
    values = concept_values(cols, config)
    order = np.argsort(cols.time_ms, kind="stable")
    det = make_detector(c.detector, c.params)
    tracker = ConceptTracker(config, reference.fingerprint, model_name, model_version)
    out = []
    for i in order:
        x = values[i]
        if np.isnan(x):
            continue
        rec = tracker.update(det, float(x), int(cols.time_ms[i]))
        if rec is not None:
            out.append(rec)
    return out


class ConceptTracker:
    """Turns a concept detector's detections into records (of ``segment``: {} for a detector over the whole
    stream, ``{PARTITION_SEGMENT: "<p>"}`` for one of a Kafka partition's); its state is two integers."""

    def __init__(
        self,
        config: MonitorConfig,
        fingerprint: str,
        model_name: str | None = None,
        model_version: str | None = None,
        segment: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self.model_name = model_name
        self.model_version = model_version
        self.segment = dict(segment or {})
        self.since_ms: int | None = None  # time of the first update after the last detection
        self.n_since = 0

    def update(self, det: Any, x: float, t_ms: int) -> dict[str, Any] | None:
        if self.since_ms is None:
            self.since_ms = t_ms
        self.n_since += 1
        if not det.update(x):
            return None
        c = self.config.concept
        rec = {
            "monitor": self.config.monitor,
            "segment": dict(self.segment),
            "feature": c.stream.removeprefix("feature:"),
            "statistic": c.detector,
            "method": f"river_{c.detector}",
            "value": det.estimation,
            "effect": None,
            "p_value": None,
            "p_value_adjusted": None,
            "threshold": float(det.params[det.threshold_param]),
            "drift": True,
            "severity": "warning",
            "window_start": iso_ms(self.since_ms),
            "window_end": iso_ms(t_ms + 1),
            "window_index": None,
            "n_reference": None,
            "n_window": self.n_since,
            "n_missing": 0,
            "reference_fingerprint": self.fingerprint,
            "model_name": self.model_name,
            "model_version": self.model_version,
        }
        self.since_ms = None
        self.n_since = 0
        return rec

    def snapshot(self) -> dict[str, Any]:
        return {"since_ms": self.since_ms, "n_since": self.n_since}

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.since_ms = snap["since_ms"]
        self.n_since = int(snap["n_since"])


#: the prediction watermark once every prediction has been read
END_OF_PREDICTIONS = 2**62


def run_local_labels(
    cols: EventColumns,
    labels: Any,
    config: MonitorConfig,
    reference: ReferenceProfile,
    model_name: str | None = None,
    model_version: str | None = None,
    chunk: int = 50_000,
) -> tuple[list[dict[str, Any]], Any]:
    """The performance records (and concept-drift records on the joined labels) of a history of
    predictions ``cols`` and label events ``labels`` (:class:`detectors.events.LabelColumns`, in
    arrival order), through the same :class:`detectors.labelled.PerformanceTracker` as ``serve``;
    also the tracker (its counts: what waits, what timed out).

    The predictions are read in event-time order, a chunk at a time; each label is handed over in
    arrival order as soon as the predictions have passed its time (as a live stream would bring it),
    so the join holds what a live one would. Nothing is late in a backfill. At the end of the input
    every label has been processed and the windows are checked once more at the last label's time
    (:meth:`~detectors.labelled.PerformanceTracker.finish`); a window whose labels are still not
    complete enough (coverage) and whose ``max_delay`` has not passed in the labels' time is left
    waiting, as in ``serve``, and not emitted (the tracker's ``waiting_windows``).
    """
    from detectors.labelled import PerformanceTracker

    router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
    seg_ids = router.route(cols.segments)
    tracker = PerformanceTracker(config, reference, router, model_name, model_version)
    skew = tracker.labels.clock_skew_ms
    order = np.argsort(cols.time_ms, kind="stable")
    t_sorted = cols.time_ms[order]
    records: list[dict[str, Any]] = []
    next_label = 0

    due = labels.time_ms + skew  # a label is handed over once the predictions have passed this

    def feed_labels(watermark: int) -> None:
        nonlocal next_label
        stop = next_label
        while stop < len(labels):  # the first label not due yet (in blocks: no scan of the whole rest)
            block = due[stop : stop + 65_536] >= watermark
            if block.any():
                stop += int(np.argmax(block))
                break
            stop += len(block)
        if stop > next_label:
            tracker.add_labels(_label_slice(labels, next_label, stop))
            next_label = stop

    i = 0
    while i < len(order):
        j = min(i + chunk, len(order))
        j = int(np.searchsorted(t_sorted, t_sorted[j - 1], side="right"))  # end at a time boundary
        rows = order[i:j]
        tracker.add_predictions(_take_events(cols, rows), seg_ids[rows])
        watermark = int(t_sorted[j - 1]) + 1
        feed_labels(watermark)
        records.extend(tracker.advance(watermark))
        i = j
    feed_labels(END_OF_PREDICTIONS)
    records.extend(tracker.advance(END_OF_PREDICTIONS))
    records.extend(tracker.finish())
    return records, tracker


def _label_slice(labels: Any, start: int, stop: int) -> Any:
    from detectors.events import LabelColumns

    return LabelColumns(
        labels.ids[start:stop], labels.time_ms[start:stop], labels.label[start:stop], labels.rows[start:stop]
    )


def _take_events(cols: EventColumns, rows: npt.NDArray[np.int64]) -> EventColumns:
    """The events ``rows`` of ``cols`` (the columns the performance tracker reads)."""
    ids = cols.ids
    return EventColumns(
        time_ms=cols.time_ms[rows],
        features={},
        segments=[cols.segments[i] for i in rows.tolist()],
        prediction=cols.prediction[rows],
        label=cols.label[rows],
        ids=None if ids is None else [ids[i] for i in rows.tolist()],
    )
