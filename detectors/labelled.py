"""The labelled half of a monitor: predictions and late labels in, performance and concept records out.

:class:`PerformanceTracker` owns the join (:class:`detectors.join.LabelJoin`), the performance
state of every (segment, pane) (:mod:`detectors.performance`), the windows waiting to be emitted
and the concept detector on the error stream. The backfill (:func:`detectors.engine.run_local_labels`)
and ``serve`` drive the same object, so they give the same records.

Windows are by *prediction* event time (the monitor's ``window``: tumbling or sliding; a pane is
``window.slide`` long). A prediction counts in its window when it has an id and a valid score
(:meth:`detectors.performance.PerformanceLayout.valid_scores`); the others are ``unjoinable``.
Every prediction that counts is in ``n_predictions`` (duplicates and predictions the budget
turned away included, so that coverage shows them); a pair adds its label to the state of its
prediction's pane.

When a window's performance is emitted
    at a *tick* of the label watermark (each time it crosses a multiple of the pane length, see
    :mod:`detectors.join`), for every window not yet emitted whose end is at or before the tick
    (every prediction of it has arrived: labels are processed only after the prediction watermark
    has passed them), once

    * its label coverage (over all its predictions, every segment together) is at least
      ``labels.min_coverage``, or
    * the tick is at least ``max_delay`` after the window's end (every label it can get has come).

    Then all its segments' records are emitted together (one family with ``statistics.family:
    window``). Labels that pair with its predictions later are counted (``joined``) but the
    window's records are **not re-sent**: a window's performance is reported once. A window whose
    labels never come (the label stream stops) waits; ``serve`` reports it with the pending count.

Concept detection on late labels
    With ``concept.stream: model_error`` the detector (ADWIN by default) is fed each pair's error
    (``concept.error``: ``|score - label|`` or misclassification at ``concept.threshold``) in
    *label-arrival order*, the order in which the truth became known: a change is detected as soon
    as enough of the labels that arrived show it, and replaying the label stream replays the
    detector exactly. (Prediction order would need every label of a stretch of predictions before
    the detector could move, so its delay would be at least ``max_delay``.) A detection record's
    ``window_start``/``window_end`` are label times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.engine import ConceptTracker, SegmentRouter, WindowSpec
from detectors.events import EventColumns, LabelColumns
from detectors.exceptions import ConfigError, ReferenceMismatchError, SnapshotError
from detectors.join import Joined, LabelJoin, id_hashes, pack, unpack
from detectors.performance import (
    CLASSIFICATION,
    PerformanceLayout,
    PerformanceProfile,
    Rules,
    evaluate_window,
)
from detectors.performance import Floors as _Floors
from detectors.reference import ReferenceProfile
from detectors.sequential import ConceptDetector, make_detector
from detectors.sequential import restore as restore_detector

I64 = npt.NDArray[np.int64]
SNAPSHOT_VERSION = 1
_SEG_SPAN = 1 << 21  # (segment id + 1) < this, in the combined (pane, segment) key


def check_profile(config: MonitorConfig, reference: ReferenceProfile) -> PerformanceProfile | None:
    """The reference's performance if it can judge this monitor's (None: the profile has none); an
    error naming the setting when it was measured differently."""
    lab = config.labels
    perf = reference.performance
    if lab is None or perf is None:
        return None
    if perf.task != lab.task:
        raise ConfigError(
            f"labels.task: the reference's performance is of a {perf.task} (rebuild the reference, or set "
            f"labels.task: {perf.task})"
        )
    if lab.task == CLASSIFICATION and perf.threshold != lab.threshold:
        raise ConfigError(
            f"labels.threshold: {lab.threshold} differs from the reference's {perf.threshold} (its accuracy, "
            "precision and recall were measured there); rebuild the reference with this threshold"
        )
    return perf


class PerformanceTracker:
    """See the module docstring. ``router``: the caller's segment router (the ids of the segment
    ids it passes); records name segments through it."""

    def __init__(
        self,
        config: MonitorConfig,
        reference: ReferenceProfile,
        router: SegmentRouter,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> None:
        lab = config.labels
        if lab is None:
            raise ConfigError("labels: the monitor has no labels section")
        self.config = config
        self.labels = lab
        self.reference = reference
        self.router = router
        self.model_name = model_name
        self.model_version = model_version
        self.profile = check_profile(config, reference)
        self.layout = PerformanceLayout(lab.task, lab.threshold)
        self.spec = WindowSpec.from_config(config)
        st = config.statistics
        self.rules = Rules(
            metrics=lab.chosen_metrics,
            min_labels=lab.min_labels,
            min_drop=_Floors(lab.min_drop.rate, lab.min_drop.loss, lab.min_drop.bias),
            critical_drop=_Floors(lab.critical_drop.rate, lab.critical_drop.loss, lab.critical_drop.bias),
            false_alarm_rate=st.false_alarm_rate,
            correction=st.correction,
            family=st.family,
        )
        self.reset()

    def reset(self) -> None:
        lab = self.labels
        self.join = LabelJoin(
            max_delay_ms=lab.max_delay_ms,
            clock_skew_ms=lab.clock_skew_ms,
            budget=lab.budget,
            tick_ms=self.spec.tick_ms,
        )
        self._panes: dict[tuple[int, int], npt.NDArray[Any]] = {}  # (segment id, pane) -> state
        self._totals: dict[int, list[int]] = {}  # pane -> [predictions, labelled] over all segments
        self._awaiting: set[int] = set()  # first panes of the windows not yet emitted
        self._pruned_below: int | None = None  # panes below this are gone (every window of them emitted)
        self.unjoinable = 0
        self.windows_emitted = 0
        self._detector: ConceptDetector | None = None
        self._concept: ConceptTracker | None = None
        if self.config.concept_on_labels:
            self._detector = make_detector(self.config.concept.detector, self.config.concept.params)
            self._concept = ConceptTracker(self.config, self.reference.fingerprint, self.model_name, self.model_version)

    # -- what it holds ------------------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """The join's counters, ``unjoinable`` predictions, ``pending`` and ``held`` now."""
        return {
            **self.join.counts,
            "unjoinable": self.unjoinable,
            "pending": self.join.pending,
            "held": self.join.held,
            "windows_waiting": len(self._awaiting),
            "windows_emitted": self.windows_emitted,
        }

    @property
    def waiting_windows(self) -> list[tuple[int, int]]:
        """(start, end) of the windows whose performance has not been emitted yet."""
        return [self.spec.window_bounds(p) for p in sorted(self._awaiting)]

    # -- input -------------------------------------------------------------------------------------
    def add_predictions(self, cols: EventColumns, seg_ids: I64) -> None:
        """Predictions the caller's windows accepted (not late), with their router segment ids (-1: no
        segment fields)."""
        if cols.ids is None:
            raise ConfigError("labels: the events were decoded without ids (labels.id_field)")
        n = len(cols)
        if n == 0:
            return
        ids = cols.ids
        if None in ids:
            ok = np.fromiter((i is not None for i in ids), dtype=bool, count=n)
            ok &= self.layout.valid_scores(cols.prediction)
        else:  # (the usual batch: every prediction has an id)
            ok = self.layout.valid_scores(cols.prediction)
        self.unjoinable += int(n - ok.sum())
        idx = np.flatnonzero(ok)
        if not len(idx):
            return
        t = cols.time_ms[idx]
        panes = self.spec.pane_of(t)
        if self._pruned_below is not None:
            keep = panes >= self._pruned_below
            idx, t, panes = idx[keep], t[keep], panes[keep]
        segs = np.asarray(seg_ids, dtype=np.int64)[idx]
        h = id_hashes(ids if len(idx) == n else [ids[i] for i in idx.tolist()])  # type: ignore[arg-type,misc]
        self.join.add_predictions(h, t, cols.prediction[idx], segs.astype(np.int32))
        self._count(panes, segs)

    def add_labels(self, labels: LabelColumns) -> None:
        """Label events in arrival order (valid ones, :func:`detectors.events.decode_labels`)."""
        if len(labels):
            self.join.add_labels(id_hashes(labels.ids), labels.time_ms, labels.label)

    def advance(self, prediction_watermark: int) -> list[dict[str, Any]]:
        """Process the labels the prediction watermark allows; the records due (performance of the
        windows emitted at the ticks passed, and concept-drift detections), in order."""
        out: list[dict[str, Any]] = []
        for chunk in self.join.process(prediction_watermark):
            self._pairs(chunk, out)
            if chunk.tick is not None:
                out.extend(self._emit(chunk.tick))
        return out

    def labels_stopped(self, prediction_watermark: int) -> list[dict[str, Any]]:
        """The label stream has stopped (``serve``: every label partition idle): its watermark is taken to
        have reached ``prediction_watermark - clock_skew - 1`` (a label arriving now could not be stamped
        earlier and still be processed); the windows due at the tick that reaches."""
        tick = self.join.advance_to(prediction_watermark - self.labels.clock_skew_ms - 1)
        return self._emit(tick) if tick is not None else []

    def finish(self) -> list[dict[str, Any]]:
        """The end of the input (a backfill): check the windows once more at the label watermark itself
        (the labels' stream has ended, so no further tick would come)."""
        wl = self.join.label_watermark
        return self._emit(wl) if wl > -(2**62) else []

    # -- state -------------------------------------------------------------------------------------
    def _targets(self, segs: I64) -> tuple[I64, I64]:
        """Each event's segment ids to add to, as (row index, segment id) pairs: its own segment and,
        with ``segments.overall``, the overall one (segment id -1 is the overall one)."""
        n = len(segs)
        rows = np.arange(n, dtype=np.int64)
        overall = 0 if self.router.overall else None
        if not self.router.active:  # no segment fields: the overall segment only
            return rows, np.zeros(n, dtype=np.int64)
        if overall is None:
            return rows, segs
        return np.concatenate([rows, rows]), np.concatenate([np.zeros(n, dtype=np.int64), segs])

    def _count(self, panes: I64, segs: I64) -> None:
        rows, ids = self._targets(segs)
        keys = panes[rows] * _SEG_SPAN + ids + 1
        uniq, counts = np.unique(keys, return_counts=True)
        for key, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            pane, sid = divmod(key, _SEG_SPAN)
            state = self._panes.get((sid - 1, pane))
            if state is None:
                state = self._panes[(sid - 1, pane)] = self.layout.empty()
            state[0] += c
        for pane, c in zip(*np.unique(panes, return_counts=True), strict=True):
            p = int(pane)
            tot = self._totals.setdefault(p, [0, 0])
            if tot[0] == 0:
                self._awaiting.update(self.spec.windows_of_panes([p]))
            tot[0] += int(c)

    def _pairs(self, chunk: Joined, out: list[dict[str, Any]]) -> None:
        if not len(chunk.t_pred):
            return
        panes = self.spec.pane_of(chunk.t_pred)
        live = np.ones(len(panes), dtype=bool) if self._pruned_below is None else panes >= self._pruned_below
        if live.any():
            self._accumulate(panes[live], chunk.seg[live].astype(np.int64), chunk.score[live], chunk.label[live])
        if self._detector is not None:
            self._concept_updates(chunk, out)

    def _accumulate(self, panes: I64, segs: I64, score: Any, label: Any) -> None:
        layout = self.layout
        cell, head = layout.contributions(score, label)
        rows, ids = self._targets(segs)
        keys = panes[rows] * _SEG_SPAN + ids + 1
        uniq, inv = np.unique(keys, return_inverse=True)
        g = len(uniq)
        sums = np.stack([np.bincount(inv, weights=head[rows, c], minlength=g) for c in range(head.shape[1])], axis=1)
        if layout.task == CLASSIFICATION:
            sums = np.rint(sums).astype(np.int64)
            cells = np.bincount(inv * layout.size + cell[rows], minlength=g * layout.size).reshape(g, layout.size)
        for j, key in enumerate(uniq.tolist()):
            pane, sid = divmod(key, _SEG_SPAN)
            state = self._panes.get((sid - 1, pane))
            if state is None:
                state = self._panes[(sid - 1, pane)] = layout.empty()
            state[: sums.shape[1]] += sums[j]
            if layout.task == CLASSIFICATION:
                state += cells[j]
        for pane, c in zip(*np.unique(panes, return_counts=True), strict=True):
            self._totals.setdefault(int(pane), [0, 0])[1] += int(c)

    def _concept_updates(self, chunk: Joined, out: list[dict[str, Any]]) -> None:
        assert self._detector is not None and self._concept is not None
        err = pair_errors(self.config, chunk.score, chunk.label)
        det, tracker = self._detector, self._concept
        for x, t in zip(err.tolist(), chunk.t_label.tolist(), strict=True):
            rec = tracker.update(det, x, t)
            if rec is not None:
                out.append(rec)

    def _emit(self, tick: int) -> list[dict[str, Any]]:
        lab = self.labels
        k = self.spec.panes_per_window
        out: list[dict[str, Any]] = []
        for first in sorted(self._awaiting):
            start, end = self.spec.window_bounds(first)
            if end > tick:
                break
            n_pred = n_lab = 0
            for p in range(first, first + k):
                tot = self._totals.get(p)
                if tot is not None:
                    n_pred += tot[0]
                    n_lab += tot[1]
            if n_pred and n_lab / n_pred < lab.min_coverage and tick < end + lab.max_delay_ms:
                continue
            self._awaiting.discard(first)
            if n_pred:
                out.extend(self._window_records(first, start, end))
                self.windows_emitted += 1
        self._prune()
        return out

    def _window_records(self, first: int, start: int, end: int) -> list[dict[str, Any]]:
        k = self.spec.panes_per_window
        by_segment: dict[int, npt.NDArray[Any]] = {}
        for (sid, pane), state in self._panes.items():
            if first <= pane < first + k:
                if sid in by_segment:
                    by_segment[sid] = by_segment[sid] + state
                else:
                    by_segment[sid] = state.copy()
        members = [(self.router.segment(sid), by_segment[sid]) for sid in sorted(by_segment) if by_segment[sid][0]]
        return self.window_records(members, first, start, end)

    def window_records(
        self, members: Sequence[tuple[Mapping[str, str], npt.NDArray[Any]]], first: int, start: int, end: int
    ) -> list[dict[str, Any]]:
        """The performance records of one window from its segments' summed states (also the Spark
        jobs', which sum the states themselves)."""
        return evaluate_window(
            self.layout,
            members,
            self.profile,
            self.rules,
            monitor=self.config.monitor,
            window_start_ms=start,
            window_end_ms=end,
            window_index=first,
            fingerprint=self.reference.fingerprint,
            model_name=self.model_name,
            model_version=self.model_version,
        )

    def _prune(self) -> None:
        """Drop the panes of which every window has been emitted."""
        if self._awaiting:
            below = min(self._awaiting)
        elif self._totals:
            below = max(self._totals) + 1
        else:
            return
        if self._pruned_below is not None and below <= self._pruned_below:
            return
        self._pruned_below = below
        for key in [key for key in self._panes if key[1] < below]:
            del self._panes[key]
        for p in [p for p in self._totals if p < below]:
            del self._totals[p]

    # -- snapshot ------------------------------------------------------------------------------------
    def _settings(self) -> list[Any]:
        lab = self.labels
        return [
            lab.task,
            lab.threshold,
            lab.max_delay_ms,
            lab.clock_skew_ms,
            lab.budget,
            self.spec.kind,
            self.spec.size_ms,
            self.spec.slide_ms,
        ] + ([self.spec.months, self.spec.origin_ms] if self.spec.months or self.spec.origin_ms else [])

    def snapshot(self) -> bytes:
        """Compact binary state; segments are named by their keys, so a restore into another router maps them."""
        keys = sorted(self._panes)
        states = np.stack([self._panes[k] for k in keys]) if keys else np.zeros((0, self.layout.size))
        totals = sorted(self._totals.items())
        header = {
            "version": SNAPSHOT_VERSION,
            "fingerprint": self.reference.fingerprint,
            "settings": self._settings(),
            "segments": [list(k) for k in self.router.keys],
            "awaiting": sorted(self._awaiting),
            "pruned_below": self._pruned_below,
            "unjoinable": self.unjoinable,
            "windows_emitted": self.windows_emitted,
            "detector": None if self._detector is None else self._detector.snapshot(),
            "concept": None if self._concept is None else self._concept.snapshot(),
        }
        return pack(
            header,
            {
                "join": np.frombuffer(self.join.snapshot(), dtype=np.uint8),
                "pane_keys": np.asarray([[s, p] for s, p in keys], dtype=np.int64).reshape(-1, 2),
                "pane_states": states,
                "totals": np.asarray([[p, a, b] for p, (a, b) in totals], dtype=np.int64).reshape(-1, 3),
            },
        )

    def restore(self, data: bytes) -> None:
        """Resume from :meth:`snapshot` (refused for another reference, or other labels/window settings)."""
        header, arrays = unpack(data)
        if header.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"performance snapshot version {header.get('version')!r} is not {SNAPSHOT_VERSION}")
        if header.get("fingerprint") != self.reference.fingerprint:
            raise ReferenceMismatchError(
                f"performance state was computed against reference {header.get('fingerprint')}, not "
                f"{self.reference.fingerprint}"
            )
        if header.get("settings") != json.loads(json.dumps(self._settings())):
            raise SnapshotError(
                f"labels or window settings changed since the snapshot ({header.get('settings')} -> {self._settings()})"
            )
        try:
            join = LabelJoin.restore(arrays["join"].tobytes())
            old = [tuple(k) for k in header["segments"]]
            router = self.router
            mapping = router.route(old) if router.active else np.zeros(len(old), dtype=np.int64)

            def new_id(sid: int) -> int:
                return -1 if sid < 0 else int(mapping[sid])

            table = join._table
            live = table.live_slots()
            table.seg[live] = np.asarray([new_id(int(s)) for s in table.seg[live].tolist()], dtype=np.int32)
            panes: dict[tuple[int, int], npt.NDArray[Any]] = {}
            for (sid, pane), state in zip(arrays["pane_keys"].tolist(), arrays["pane_states"], strict=True):
                panes[(new_id(int(sid)), int(pane))] = np.asarray(state, dtype=self.layout.dtype).copy()
            self.join = join
            self._panes = panes
            self._totals = {int(p): [int(a), int(b)] for p, a, b in arrays["totals"].tolist()}
            self._awaiting = {int(p) for p in header["awaiting"]}
            self._pruned_below = None if header["pruned_below"] is None else int(header["pruned_below"])
            self.unjoinable = int(header["unjoinable"])
            self.windows_emitted = int(header["windows_emitted"])
            if self._concept is not None and header["concept"] is not None and header["detector"] is not None:
                self._detector = restore_detector(header["detector"])
                self._concept.restore(header["concept"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"performance snapshot is malformed: {type(exc).__name__}: {exc}") from exc


def pair_errors(config: MonitorConfig, score: npt.NDArray[np.float64], label: npt.NDArray[np.float64]) -> Any:
    """The concept detector's input for joined pairs (``concept.error``: ``|score - label|``, or
    misclassification at ``concept.threshold``)."""
    c = config.concept
    if c.error == "absolute":
        return np.abs(score - label)
    return ((score >= c.threshold) != (label >= 0.5)).astype(np.float64)


def route_all(router: SegmentRouter, segments: Sequence[tuple[str, ...]], values: Sequence[str] | None) -> I64:
    """Router segment ids of events (the decoder's single-field fast path when it has one)."""
    if values is not None and len(router.fields) == 1:
        return router.route_values(values)
    return router.route(segments)


def join_summary(counts: Mapping[str, int]) -> str:
    """One line for people: what the join did."""
    return (
        f"labels: {counts['joined']:,} joined, {counts['label_timeout']:,} timed out, {counts['label_orphan']:,} "
        f"orphans, {counts['duplicate_prediction']:,} duplicate predictions, {counts['unjoinable']:,} predictions "
        f"without id or valid score, {counts['overflow']:,} over budget; {counts['pending']:,} predictions still "
        f"waiting; {counts['windows_emitted']:,} windows emitted, {counts['windows_waiting']:,} still waiting "
        "for labels (not emitted)"
    )
