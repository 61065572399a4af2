"""``serve`` with a labels topic (``labels.topic``): label messages in, the join's performance records out.

The consumer (:mod:`stream.service.consumer`) assigns every partition of ``labels.topic`` next to those of
``kafka.topic`` on the same Kafka consumer (same connection settings and group), splits each batch
by topic and hands the label messages to :class:`ServeLabels`, which owns everything of them:

Decoding (:class:`LabelDecoder`)
    A typed ``msgspec`` decode of the three fields the join reads (``labels.id_field``,
    ``labels.label_field``, ``labels.time_field``; others are skipped), checked column by column;
    a message the fast path cannot settle takes :func:`detectors.events.decode_labels` (the
    backfill's decoder), so a label is accepted or rejected, with the same reason, whichever path
    it takes. Rejected messages go to the dead-letter topic with their reason code and are counted
    in ``streamdrift_dead_letters_total{reason}`` like prediction messages.

The labels' own watermark (:class:`LabelMerge`)
    Label partitions never take part in the windows' watermark: an empty, idle or lagging labels
    topic cannot stop drift windows from closing. Each label partition has its own watermark (the
    largest label time read on it). Valid labels are buffered per partition and released to the
    join in an order that does not depend on how the partitions' messages interleave in batches:
    each partition in offset order, the partitions merged by each label's running maximum time
    (then partition); a label is released once no other active label partition can still bring
    one that sorts before it (their watermarks have passed it). With one label partition every
    label goes at once. A label partition is idle (not holding the others
    back) when no valid label arrived on it for ``window.idle_timeout``, as prediction partitions.
    With one label partition the order is its offset order: the order ``backfill --labels`` reads
    the label file in, so ``serve`` gives the backfill's records on the same data.

The join, windows and records
    :class:`detectors.labelled.PerformanceTracker`, driven as the backfill drives it: predictions
    the windows accepted (not late) are added with their segment; labels in release order; after
    every batch the tracker advances to the windows' close frontier (the prediction watermark).

When a window's performance is emitted, and when labels stop
    As in the backfill (:mod:`detectors.labelled`): at a tick of the label watermark, once its
    label coverage reaches ``labels.min_coverage``, or once the label watermark is ``max_delay``
    past its end. If the labels stop (every label partition idle for ``window.idle_timeout``, no
    label buffered or held) the label watermark is taken to have reached the predictions'
    watermark minus ``labels.clock_skew`` (a label arriving now could not be older): the windows
    whose end + ``max_delay`` that passes are emitted with the labels they have, and the
    predictions older than ``max_delay`` count as ``label_timeout``. Labels that still come later
    than that pair only with predictions younger than ``max_delay`` (the others are orphans).
    While predictions stop, labels wait for them (they are ``held``).

Checkpoints
    The tracker's binary snapshot (join table, held labels, per-pane performance state, concept
    detector) is written with every checkpoint (:meth:`stream.service.checkpoint.StateStore.save`'s
    ``blob``), together with each label partition's *first offset not released* to the join and
    its running maximum: buffered labels are read again after a restart, so a checkpoint is
    consistent with the offsets of both topics and a restart resumes exactly (kill -9 included).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.engine import SegmentRouter, _take_events
from detectors.events import LabelColumns, decode_labels
from detectors.join import id_text
from detectors.labelled import PerformanceTracker, route_all
from stream.decode import MAX_EVENT_DEPTH, Rejection, epoch_ms, reason_code, too_deep

log = logging.getLogger("streamdrift.labels")

I64 = npt.NDArray[np.int64]
_NEG = -(2**62)
_STR_ONLY = {str}
_INT_ONLY = {int}


class LabelDecoder:
    """Label message values to :class:`LabelColumns` (rows: positions in the batch) and rejections."""

    def __init__(
        self, config: MonitorConfig, max_event_bytes: int = 1 << 20, wall_clock: Callable[[], float] = time.time
    ) -> None:
        lab = config.labels
        assert lab is not None
        self.config = config
        self.max_event_bytes = max_event_bytes
        self.wall_clock = wall_clock
        self.classification = lab.task == "classification"
        ev = config.events
        self._unit = ev.time_unit
        self._min_ms = ev.min_time_ms
        self._skew_ms = ev.max_future_skew_ms
        self._use_kts = lab.time_field is None
        spec: list[Any] = [("i", bool | int | float | str | None, None), ("y", bool | int | float | None, None)]
        rename = {"i": lab.id_field, "y": lab.label_field}
        if lab.time_field is not None and len({lab.id_field, lab.label_field, lab.time_field}) == 3:
            spec.append(("t", int | float | str | None, None))
            rename["t"] = lab.time_field
        self._timed = "t" in rename
        self._decoder: msgspec.json.Decoder[Any] | None = None
        if len(set(rename.values())) == len(rename):  # (one key read two ways: the reference path only)
            cls = msgspec.defstruct("Label", spec, rename=rename, gc=False)
            self._decoder = msgspec.json.Decoder(cls)

    def decode(
        self, values: Sequence[bytes | None], kts: Sequence[int | None] | None = None
    ) -> tuple[LabelColumns, list[Rejection]]:
        n = len(values)
        now_ms = int(self.wall_clock() * 1000)
        good, idx = self._typed(values)
        ok_ids: list[str] = []
        if good:
            ids = [o.i for o in good]
            if set(map(type, ids)) == _STR_ONLY and "" not in ids:
                ok = np.ones(len(good), dtype=bool)
                ok_ids = ids
            else:
                texts = [id_text(x) for x in ids]
                ok = np.fromiter((x is not None for x in texts), dtype=bool, count=len(texts))
                ok_ids = texts  # type: ignore[assignment]  # (None only where ok is False)
            ys = [o.y for o in good]
            try:
                y = np.fromiter(ys, dtype=np.float64, count=len(ys))  # (bools: 0.0/1.0; None: TypeError)
            except TypeError:
                y = np.array([math.nan if v is None else float(v) for v in ys], dtype=np.float64)
            ok &= (y == 0.0) | (y == 1.0) if self.classification else np.isfinite(y)
            t, t_ok = self._times(good, idx, kts, now_ms)
            ok &= t_ok
            if not ok.all():
                keep = np.flatnonzero(ok).tolist()
                ok_ids = [ok_ids[j] for j in keep]
                idx = [idx[j] for j in keep]
                y, t = y[ok], t[ok]
        else:
            y, t = np.zeros(0), np.zeros(0, dtype=np.int64)
        slow = sorted(set(range(n)).difference(idx)) if len(idx) != n else []
        rejected: list[Rejection] = []
        if slow:
            s_ids, s_t, s_y, s_rows = [], [], [], []
            for i in slow:
                got = self._slow(values[i], None if kts is None else kts[i], now_ms)
                if isinstance(got, Rejection):
                    rejected.append(Rejection(i, got.code, got.reason))
                    continue
                s_ids.append(got[0])
                s_t.append(got[1])
                s_y.append(got[2])
                s_rows.append(i)
            if s_rows:
                pos = np.concatenate([np.asarray(idx, dtype=np.int64), np.asarray(s_rows, dtype=np.int64)])
                order = np.argsort(pos, kind="stable")
                all_ids = ok_ids + s_ids
                ok_ids = [all_ids[j] for j in order.tolist()]
                t = np.concatenate([t, np.asarray(s_t, dtype=np.int64)])[order]
                y = np.concatenate([y, np.asarray(s_y, dtype=np.float64)])[order]
                idx = pos[order].tolist()
        return LabelColumns(ok_ids, t.astype(np.int64), y.astype(np.float64), list(idx)), rejected

    def _typed(self, values: Sequence[bytes | None]) -> tuple[list[Any], list[int]]:
        dec = self._decoder
        if dec is None:
            return [], []
        n = len(values)
        limit = self.max_event_bytes
        try:
            if n and max(map(len, values)) <= limit:  # type: ignore[arg-type]  # TypeError on None
                good, idx = list(map(dec.decode, values)), list(range(n))  # type: ignore[arg-type]
            else:
                good, idx = [], []
        except (TypeError, msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            good, idx = [], []
            for i, v in enumerate(values):
                if v is None or len(v) > limit:
                    continue
                try:
                    good.append(dec.decode(v))
                except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                    continue
                idx.append(i)
        if good:  # no message nests deeper than MAX_EVENT_DEPTH (one count for the batch, as stream.decode)
            chosen = values if len(idx) == n else [values[i] for i in idx]
            raw = np.frombuffer(b"".join(chosen), dtype=np.uint8)  # type: ignore[arg-type]
            opened = int(np.count_nonzero(raw == ord("{")) + np.count_nonzero(raw == ord("[")))
            if opened - (len(good) - 1) > MAX_EVENT_DEPTH:
                keep = [j for j, v in enumerate(chosen) if not too_deep(v)]  # type: ignore[arg-type]
                good, idx = [good[j] for j in keep], [idx[j] for j in keep]
        return good, idx

    def _times(
        self, good: list[Any], idx: list[int], kts: Sequence[int | None] | None, now_ms: int
    ) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Times of the typed rows and which the fast path settles (the others: the reference path)."""
        k = len(good)
        if self._timed:
            raw = [o.t for o in good]
            if set(map(type, raw)) != _INT_ONLY or self._unit == "iso":
                return np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
            try:
                arr = np.fromiter(raw, dtype=np.int64, count=k)
            except OverflowError:
                return np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
            if arr.min() < -(2**62) or arr.max() > 2**62:
                return np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
            t, ok = epoch_ms(arr, self._unit)
            if kts is None:
                limit: Any = now_ms + self._skew_ms
            else:
                chosen = kts if len(idx) == len(kts) else [kts[i] for i in idx]  # (idx is 0..n-1 then)
                try:
                    limit = np.fromiter(chosen, dtype=np.int64, count=k)
                except TypeError:  # a message without a timestamp: the clock
                    limit = np.fromiter((now_ms if x is None else x for x in chosen), dtype=np.int64, count=k)
                limit = limit + self._skew_ms
            return t, ok & (t >= self._min_ms) & (t <= limit)
        if self._use_kts and kts is not None:
            chosen = [kts[i] for i in idx]
            t = np.fromiter((_NEG if x is None else x for x in chosen), dtype=np.int64, count=k)
            return t, t >= self._min_ms
        return np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)

    def _slow(self, value: bytes | None, kts: int | None, now_ms: int) -> Rejection | tuple[str, int, float]:
        """The reference path for one message (the backfill's :func:`decode_labels`)."""
        if value is None:
            return Rejection(-1, "not_json", "empty message (no value)")
        if len(value) > self.max_event_bytes:
            return Rejection(-1, "too_large", f"message of {len(value)} bytes exceeds max_event_bytes")
        if too_deep(value):
            return Rejection(-1, "too_large", f"message nests arrays/objects deeper than {MAX_EVENT_DEPTH} levels")
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            return Rejection(-1, "not_json", f"not valid JSON: {exc}")
        except RecursionError:
            return Rejection(-1, "too_large", "message nests arrays/objects too deeply to parse")
        cols, errors = decode_labels([obj], self.config, [kts], now_ms)
        if errors:
            reason = errors[0][1]
            return Rejection(-1, reason_code(reason), reason)
        return cols.ids[0], int(cols.time_ms[0]), float(cols.label[0])


@dataclass
class _Part:
    """One label partition's buffered labels (offset order) and watermark."""

    ids: list[str] = field(default_factory=list)
    t: list[I64] = field(default_factory=list)
    y: list[npt.NDArray[np.float64]] = field(default_factory=list)
    run: list[I64] = field(default_factory=list)  # running maximum time, label by label
    off: list[I64] = field(default_factory=list)
    released_max: int = _NEG  # running maximum of the last label released
    max_time: int | None = None  # running maximum of the last label read (its watermark)
    next_offset: int | None = None  # after the last message read (valid or not)

    def buffered(self) -> int:
        return sum(len(a) for a in self.t)


class LabelMerge:
    """Valid labels of every label partition in, labels in a replayable order out (module docstring)."""

    def __init__(self, idle_s: float, clock: Callable[[], float]) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self.parts: dict[int, _Part] = {}
        self.last_seen: dict[int, float] = {}

    def assign(self, partitions: Sequence[int]) -> None:
        now = self.clock()
        for p in partitions:
            self.parts.setdefault(p, _Part())
            self.last_seen.setdefault(p, now)

    def add(self, p: int, labels: LabelColumns, offsets: I64, next_offset: int) -> None:
        """Valid labels of partition ``p`` in offset order (``offsets``: theirs); ``next_offset``: after the
        last message of the partition in this batch."""
        part = self.parts.setdefault(p, _Part())
        part.next_offset = next_offset
        if not len(labels):
            return
        start = part.max_time if part.max_time is not None else part.released_max
        run = np.maximum.accumulate(np.maximum(labels.time_ms, start))
        part.ids.extend(labels.ids)
        part.t.append(labels.time_ms)
        part.y.append(labels.label)
        part.run.append(run)
        part.off.append(offsets)
        part.max_time = int(run[-1])
        self.last_seen[p] = self.clock()

    def idle(self) -> bool:
        """Every label partition is idle."""
        now = self.clock()
        return all(now - seen >= self.idle_s for seen in self.last_seen.values())

    def bounds(self) -> dict[int, float]:
        """Per partition: its labels whose running maximum is below this are released (-inf: none, +inf:
        every one). A label (running maximum ``r``) of partition ``p`` goes once no active partition can
        still bring one that sorts before it by (running maximum, partition): ``r < watermark(q)`` for
        each other active partition ``q < p`` and ``r <= watermark(q)`` for ``q > p`` (its own partition
        brings only later ones)."""
        now = self.clock()
        active: list[tuple[int, int | None]] = [
            (p, self.parts[p].max_time) for p, seen in self.last_seen.items() if now - seen < self.idle_s
        ]
        out: dict[int, float] = {}
        for p in self.parts:
            b = math.inf
            for q, mt in active:
                if q == p:
                    continue
                if mt is None:
                    b = -math.inf
                    break
                b = min(b, mt if q < p else mt + 1)
            out[p] = b
        return out

    @property
    def buffered(self) -> int:
        return sum(part.buffered() for part in self.parts.values())

    def release(self) -> LabelColumns:
        bounds = self.bounds()
        ids: list[str] = []
        ts, ys, runs, ps = [], [], [], []
        for p in sorted(self.parts):
            part = self.parts[p]
            bound = bounds[p]
            if not part.t or bound == -math.inf:
                continue
            run = np.concatenate(part.run)
            k = len(run) if bound == math.inf else int(np.searchsorted(run, bound, side="left"))
            if k == 0:
                continue
            t, y, off = np.concatenate(part.t), np.concatenate(part.y), np.concatenate(part.off)
            ids.extend(part.ids[:k])
            ts.append(t[:k])
            ys.append(y[:k])
            runs.append(run[:k])
            ps.append(np.full(k, p, dtype=np.int64))
            part.released_max = int(run[k - 1])
            if k < len(run):
                part.ids = part.ids[k:]
                part.t, part.y, part.run, part.off = [t[k:]], [y[k:]], [run[k:]], [off[k:]]
            else:
                part.ids, part.t, part.y, part.run, part.off = [], [], [], [], []
        if not ts:
            return LabelColumns([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), [])
        run_all, p_all = np.concatenate(runs), np.concatenate(ps)
        order = np.lexsort((p_all, run_all)) if len(ps) > 1 else np.arange(len(run_all))
        ol = order.tolist()
        t_all, y_all = np.concatenate(ts)[order], np.concatenate(ys)[order]
        return LabelColumns([ids[j] for j in ol], t_all, y_all, [])

    def offsets(self) -> list[list[int]]:
        """[partition, first offset not released, running maximum released] of every partition read."""
        out = []
        for p, part in sorted(self.parts.items()):
            if part.off:
                first = int(part.off[0][0])
            elif part.next_offset is not None:
                first = part.next_offset
            else:
                continue
            out.append([p, first, part.released_max])
        return out

    def restore(self, saved: Sequence[Sequence[int]]) -> dict[int, int]:
        """Go on from :meth:`offsets`; returns partition -> offset to read from."""
        self.parts = {}
        where = {}
        for p, first, released in saved:
            # (the running maximum released is a lower bound of what the partition still has to bring)
            mt = None if int(released) <= _NEG else int(released)
            self.parts[int(p)] = _Part(released_max=int(released), max_time=mt, next_offset=int(first))
            where[int(p)] = int(first)
        return where


class ServeLabels:
    """Everything ``serve`` does with late labels (module docstring): the decoder, the label partitions'
    merge and watermark, and the :class:`~detectors.labelled.PerformanceTracker` (its own segment router,
    as the backfill's)."""

    def __init__(
        self,
        config: MonitorConfig,
        reference: Any,
        *,
        max_event_bytes: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> None:
        lab = config.labels
        assert lab is not None and lab.topic is not None
        self.config = config
        self.topic = lab.topic
        self.router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
        self.tracker = PerformanceTracker(config, reference, self.router, model_name, model_version)
        self.decoder = LabelDecoder(config, max_event_bytes, wall_clock)
        self.merge = LabelMerge(config.window.idle_timeout_ms / 1000.0, clock)
        self.stopped = False  # every label partition idle (the label watermark follows the predictions')

    # -- input --------------------------------------------------------------------------------------
    def add_predictions(self, cols: Any, rows: I64 | None) -> None:
        """The predictions of a batch the windows accepted (``rows``: their positions in ``cols``; None: all)."""
        if rows is not None:
            if not len(rows):
                return
            cols = _take_events(cols, rows)
        if not len(cols):
            return
        seg = route_all(self.router, cols.segments, getattr(cols, "segment_values", None))
        self.tracker.add_predictions(cols, seg)

    def add_labels(
        self, values: list[bytes | None], partitions: I64, offsets: I64, kts: list[int | None]
    ) -> list[Rejection]:
        """Label messages of a batch (in offset order per partition): decoded, buffered; the rejections
        (``index``: position in ``values``)."""
        cols, rejected = self.decoder.decode(values, kts)
        rows = np.asarray(cols.rows, dtype=np.int64)
        vparts = partitions[rows] if len(rows) else np.zeros(0, dtype=np.int64)
        for p in np.unique(partitions).tolist():
            in_p = np.flatnonzero(partitions == p)
            nxt = int(offsets[in_p[-1]]) + 1
            sel = np.flatnonzero(vparts == p)
            part = LabelColumns([cols.ids[j] for j in sel.tolist()], cols.time_ms[sel], cols.label[sel], [])
            self.merge.add(int(p), part, offsets[rows[sel]], nxt)
        return rejected

    def advance(self, prediction_watermark: int | None) -> list[dict[str, Any]]:
        """Release what the label partitions' watermark allows into the join; advance it to the windows'
        close frontier; the records due (performance, concept detections)."""
        released = self.merge.release()
        if len(released):
            self.tracker.add_labels(released)
        if prediction_watermark is None:
            return []
        out = self.tracker.advance(prediction_watermark)
        self.stopped = self.merge.idle() and self.merge.buffered == 0 and self.tracker.join.held == 0
        if self.stopped:
            out.extend(self.tracker.labels_stopped(prediction_watermark))
        return out

    @property
    def counts(self) -> dict[str, int]:
        c = self.tracker.counts
        c["held"] += self.merge.buffered  # (labels waiting for the other label partitions, too)
        return c

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The small state (JSON, in the manifest): the label partitions' offsets and running maxima."""
        return {"topic": self.topic, "partitions": self.merge.offsets()}

    def snapshot(self) -> bytes:
        return self.tracker.snapshot()

    def restore(self, state: dict[str, Any] | None, blob: bytes | None) -> dict[int, int]:
        """Go on from a checkpoint; partition -> the offset to read the labels topic from."""
        if state is None or blob is None:
            return {}
        if state.get("topic") != self.topic:
            from stream.exceptions import CheckpointError

            raise CheckpointError(
                f"the checkpoint's labels are of topic {state.get('topic')!r}, not labels.topic={self.topic!r}"
            )
        self.tracker.restore(blob)
        return self.merge.restore(state["partitions"])


def check_serve_labels(config: Any) -> None:
    """Refuse, naming the setting, what ``serve`` cannot do with a labels section (``config``: ServeConfig)."""
    from detectors.config import is_model_uri
    from detectors.exceptions import ConfigError

    mon = config.monitor
    lab = mon.labels
    if lab is None:
        return
    if not lab.topic:
        raise ConfigError("labels.topic: serve reads the labels from a topic; name it (backfill: --labels FILE)")
    if lab.topic == config.kafka.topic:
        raise ConfigError(f"labels.topic: {lab.topic!r} is kafka.topic; labels need a topic of their own")
    if mon.window.kind == "count":
        raise ConfigError(
            "labels: performance windows are time windows; window.kind: count cannot have a labels section"
        )
    if mon.events.format != "json":
        raise ConfigError(f"labels: serve joins labels to JSON predictions only (events.format: {mon.events.format})")
    if is_model_uri(mon.reference) and "@" in mon.reference:
        raise ConfigError(
            "labels: a reference that follows an alias (models:/NAME@ALIAS) cannot have a labels section in serve "
            "yet (the join would span model versions); name the version (models:/NAME/VERSION)"
        )
