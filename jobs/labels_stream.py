"""The Structured Streaming job's late labels: Spark's stream-stream join, performance per window.

With ``labels.topic`` in the monitor config, :func:`jobs.streaming.start` starts a second query
beside the window statistics (its checkpoint: ``<checkpoint>/labels``):

1. **Predictions** (``kafka.topic``) and **labels** (``labels.topic``) are read by the
   ``streamdrift-kafka`` source and decoded on the executors (:func:`detectors.events.decode_events`,
   :func:`detectors.events.decode_labels`); a prediction needs an id and a valid score to be
   joined. Rejected label events are counted (``label_invalid``); rejected predictions are the
   window query's (dead letters).
2. **Watermarks**: ``withWatermark`` on both event times with ``window.allowed_lateness``; Spark's
   query watermark is the smaller of the two.
3. **Join**: Spark's stream-stream inner join on the id's 64-bit hash
   (:func:`detectors.join.id_hashes`) with the event-time range condition
   ``p_time - clock_skew <= l_time < p_time + max_delay``: Spark keeps each side only as long as
   the watermark says a partner can still come (its state store, in the checkpoint).
4. **Performance state** (``applyInPandasWithState`` keyed by the monitor, :class:`PerformanceStep`):
   the pairs and every joinable prediction (for the window's prediction count) go into the
   performance state of their prediction's (segment, pane) (:class:`detectors.performance.PerformanceLayout`:
   integer counts per score bin, sums). A prediction pairs once: the first pair of an id, in the
   order (label partition, label offset, prediction time, prediction offset), counts; later pairs
   of the id (duplicate labels, duplicate predictions) are counted as ``duplicate``. The concept
   detector (``concept.stream: model_error``) runs on the pairs' errors in that order: label
   arrival order, for a labels topic of one partition.
5. **Emission**: a window's performance records are emitted once ``window end + max_delay`` is
   behind the watermark this operator is given (every label that may pair has come or is late);
   never re-sent. Spark gives an operator after a stream-stream join a watermark held back by the
   join's time range (pairs may still come for predictions that old), so the records come later
   than ``end + max_delay`` behind the query's watermark: late, never incomplete. Early emission
   on ``labels.min_coverage`` is not done here (serve and the backfill do it).
6. The driver (``foreachBatch``) publishes the records like the window records (statistics
   topic/file, alerts) and sets the performance metrics.

Against the local join (:mod:`detectors.join`) the pairs are the same when each labels partition
is in time order (Spark tests the label's own time against ``t_p + max_delay``; the local join the
label watermark, the largest label time so far: they differ only for labels out of time order)
and ids are not reused. Spark has no ``labels.budget``: the join's state is bounded by the
watermark instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from detectors.engine import OTHER_SEGMENT, ConceptTracker, SegmentRouter
from detectors.events import decode_labels
from detectors.join import id_hashes
from detectors.labelled import PerformanceTracker, pair_errors
from detectors.sequential import make_detector, restore
from jobs.common import JobError, Monitor, decode_chunk, parse_json_value, segment_dict, start_query, stateful_batch
from stream.records import record_line

log = logging.getLogger("streamdrift.spark.labels")

SEQ_SHIFT = 40
STATE_VERSION = 1
PRED_SCHEMA = "h long, tp long, score double, seg string, poff long"
LABEL_SCHEMA = "kind string, h long, tl long, y double, loff long, reason string"
OUT_SCHEMA = "kind string, n bigint, record string"
STATE_SCHEMA = "state binary"
Seg = tuple[str, ...] | None


# -- executors -------------------------------------------------------------------------------------
def _arrow_schema(ddl: str) -> Any:
    """The Arrow schema of a DDL string of long, double and string columns."""
    import pyarrow as pa

    types = {"long": pa.int64(), "double": pa.float64(), "string": pa.string()}
    return pa.schema([(name, types[t]) for name, t in (c.split() for c in ddl.split(", "))])


def decode_predictions(monitor: Monitor, batches: Iterator[Any]) -> Iterator[Any]:
    """Arrow batches of (value, partition, offset, ts) -> joinable predictions (:data:`PRED_SCHEMA`)."""
    import pyarrow as pa

    lab = monitor.config.labels
    assert lab is not None
    from detectors.performance import PerformanceLayout

    layout = PerformanceLayout(lab.task, lab.threshold)
    segmented = bool(monitor.segment_fields)
    for b in batches:
        values, parts, offsets, ts = (b.column(j).to_pylist() for j in range(4))
        if not values:
            continue
        rows = [parse_json_value(v) for v in values]
        seqs = [(p << SEQ_SHIFT) + o for p, o in zip(parts, offsets, strict=True)]
        d = decode_chunk(monitor, rows, seqs, ts)
        n = len(d.cols)
        ids = d.cols.ids
        if n == 0 or ids is None:
            continue
        has_id = np.fromiter((i is not None for i in ids), dtype=bool, count=n)
        idx = np.flatnonzero(has_id & layout.valid_scores(d.cols.prediction))
        h = id_hashes([ids[i] for i in idx.tolist()]).view(np.int64)  # type: ignore[misc]
        segs = [json.dumps(list(d.cols.segments[i])) if segmented else "" for i in idx.tolist()]
        yield pa.RecordBatch.from_pydict(
            {
                "h": h.tolist(),
                "tp": d.cols.time_ms[idx].tolist(),
                "score": d.cols.prediction[idx].tolist(),
                "seg": segs,
                "poff": d.seq[idx].tolist(),
            },
            schema=_arrow_schema(PRED_SCHEMA),
        )


def decode_label_batches(monitor: Monitor, batches: Iterator[Any]) -> Iterator[Any]:
    """Arrow batches of (value, partition, offset, ts) -> label rows (``kind`` "l") and rejected ones
    (``kind`` "bad", with the reason code) (:data:`LABEL_SCHEMA`)."""
    import time

    import pyarrow as pa

    from stream.decode import reason_code

    schema = _arrow_schema(LABEL_SCHEMA)
    for b in batches:
        values, parts, offsets, ts = (b.column(j).to_pylist() for j in range(4))
        if not values:
            continue
        rows = [parse_json_value(v) for v in values]
        labels, errors = decode_labels(rows, monitor.config, ts, now_ms=int(time.time() * 1000))
        seqs = np.asarray([(p << SEQ_SHIFT) + o for p, o in zip(parts, offsets, strict=True)], dtype=np.int64)
        n = len(labels)
        h = id_hashes(labels.ids).view(np.int64) if n else np.zeros(0, np.int64)
        kinds = ["l"] * n + ["bad"] * len(errors)
        yield pa.RecordBatch.from_pydict(
            {
                "kind": kinds,
                "h": h.tolist() + [None] * len(errors),
                "tl": labels.time_ms.tolist() + [None] * len(errors),
                "y": labels.label.tolist() + [None] * len(errors),
                "loff": seqs[np.asarray(labels.rows, dtype=np.int64)].tolist() + [int(seqs[i]) for i, _ in errors],
                "reason": [None] * n + [reason_code(msg) for _i, msg in errors],
            },
            schema=schema,
        )


# -- the performance state (in Spark's state store) ------------------------------------------------
@dataclass
class PerfState:
    fingerprint: str
    frontier: int | None = None  # windows with end + max_delay <= frontier have been emitted
    kept: list[tuple[str, ...]] = field(default_factory=list)
    panes: dict[tuple[Seg, int], np.ndarray] = field(default_factory=dict)
    joined: dict[int, int] = field(default_factory=dict)  # id hash -> pane, while the pane is kept
    concept: dict[str, Any] | None = None  # detector and tracker snapshots

    def to_bytes(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "frontier": self.frontier,
            "kept": [list(k) for k in self.kept],
            "panes": [
                [None if s is None else list(s), p, c.tobytes(), str(c.dtype)]
                for (s, p), c in sorted(self.panes.items(), key=lambda kv: (kv[0][0] or (), kv[0][1]))
            ],
            "joined": sorted(self.joined.items()),
            "concept": self.concept,
        }
        return msgspec.msgpack.encode(doc)

    @classmethod
    def from_bytes(cls, data: bytes, fingerprint: str) -> PerfState:
        doc = msgspec.msgpack.decode(data)
        if doc.get("version") != STATE_VERSION:
            raise JobError(f"the checkpoint's performance state has version {doc.get('version')}")
        if doc["fingerprint"] != fingerprint:
            raise JobError(
                f"the labels checkpoint was written against reference {doc['fingerprint']}, not {fingerprint}"
            )
        return cls(
            fingerprint,
            doc["frontier"],
            [tuple(k) for k in doc["kept"]],
            {
                (None if s is None else tuple(s), int(p)): np.frombuffer(c, dtype=dt).copy()
                for s, p, c, dt in doc["panes"]
            },
            {int(h): int(p) for h, p in doc["joined"]},
            doc["concept"],
        )


class PerformanceStep:
    """The ``applyInPandasWithState`` function of the labels query (see the module docstring); emits
    rows of :data:`OUT_SCHEMA`: ``perf`` / ``concept`` records (JSON), counts ``joined``,
    ``duplicate``, ``late_prediction``, ``label_invalid:<code>``, and ``watermark``."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def tracker(self) -> PerformanceTracker:
        """(lends its layout, profile and rules)"""
        return PerformanceTracker(self.monitor.config, self.monitor.reference, SegmentRouter((), 1, True))

    def __call__(self, key: Any, pdfs: Iterator[Any], state: Any) -> Iterator[Any]:
        import pandas as pd

        out = stateful_batch(pdfs, state, PerfState, self.monitor.reference.fingerprint, self.step, self.next_emit)
        yield pd.DataFrame(
            {
                "kind": pd.Series([r[0] for r in out], dtype=object),
                "n": pd.Series([r[1] for r in out], dtype="Int64"),
                "record": pd.Series([r[2] for r in out], dtype=object),
            }
        )

    # -- one micro-batch ------------------------------------------------------------------------------
    def step(self, st: PerfState, rows: Any, watermark: int) -> list[tuple[str, int | None, str | None]]:
        out: list[tuple[str, int | None, str | None]] = []
        tr = self.tracker()
        if rows is not None:
            kinds = rows["kind"]
            bad = rows[kinds == "bad"]
            for code, n in sorted(bad["reason"].value_counts().items()):
                out.append((f"label_invalid:{code}", int(n), None))
            self._predictions(st, tr, rows[kinds == "n"], out)
            self._pairs(st, tr, rows[kinds == "j"], out)
        self._emit(st, tr, watermark, out)
        out.append(("watermark", watermark, None))
        return out

    def _route(self, st: PerfState, seg_json: str) -> list[Seg]:
        m = self.monitor
        targets: list[Seg] = []
        if m.segment_fields:
            raw = tuple(json.loads(seg_json))
            if raw not in st.kept and len(st.kept) < m.config.segments.max_segments:
                st.kept.append(raw)
            targets.append(raw if raw in st.kept else tuple(OTHER_SEGMENT for _ in m.segment_fields))
        if m.overall:
            targets.append(None)
        return targets

    def _emitted(self, st: PerfState, pane: int) -> bool:
        """Every window of the pane has been emitted."""
        spec = self.monitor.spec
        assert self.monitor.config.labels is not None
        last_end = int(spec.window_end(pane))  # (the end of the last window the pane belongs to)
        return st.frontier is not None and last_end + self.monitor.config.labels.max_delay_ms <= st.frontier

    def _predictions(self, st: PerfState, tr: PerformanceTracker, p: Any, out: list[Any]) -> None:
        if not len(p):
            return
        spec = self.monitor.spec
        late = 0
        p = p.sort_values(["tp", "poff"], kind="stable")  # first appearance of a segment: (time, position)
        for tp, seg in zip(p["tp"].tolist(), p["seg"].tolist(), strict=True):
            pane = int(spec.pane_of(int(tp)))
            if self._emitted(st, pane):
                late += 1
                continue
            for s in self._route(st, seg):
                state = st.panes.get((s, pane))
                if state is None:
                    state = st.panes[(s, pane)] = tr.layout.empty()
                state[0] += 1
        if late:
            out.append(("late_prediction", late, None))

    def _pairs(self, st: PerfState, tr: PerformanceTracker, j: Any, out: list[Any]) -> None:
        if not len(j):
            return
        cfg = self.monitor.config
        spec = self.monitor.spec
        j = j.sort_values(["loff", "tp", "poff"], kind="stable")
        keep = np.ones(len(j), dtype=bool)
        hs, tps = j["h"].to_numpy(dtype=np.int64), j["tp"].to_numpy(dtype=np.int64)
        for i, (h, tp) in enumerate(zip(hs.tolist(), tps.tolist(), strict=True)):
            pane = int(spec.pane_of(tp))
            if h in st.joined or self._emitted(st, pane):
                keep[i] = False
            else:
                st.joined[h] = pane
        dup = int(len(j) - keep.sum())
        if dup:
            out.append(("duplicate", dup, None))
        j = j[keep]
        if not len(j):
            return
        out.append(("joined", len(j), None))
        score = j["score"].to_numpy(dtype=np.float64)
        label = j["y"].to_numpy(dtype=np.float64)
        panes = np.asarray(self.monitor.spec.pane_of(j["tp"].to_numpy(dtype=np.int64)), dtype=np.int64)
        groups: dict[tuple[Seg, int], list[int]] = {}
        for i, (seg, pane) in enumerate(zip(j["seg"].tolist(), panes.tolist(), strict=True)):
            for s in self._route(st, seg):
                groups.setdefault((s, pane), []).append(i)
        for key, idx in groups.items():
            state = st.panes.get(key)
            if state is None:  # (its prediction was counted in this batch or before: not reached)
                state = st.panes[key] = tr.layout.empty()
            tr.layout.add(state, score[idx], label[idx])
        if cfg.concept_on_labels:
            self._concept(st, j, pair_errors(cfg, score, label), out)

    def _concept(self, st: PerfState, j: Any, err: Any, out: list[Any]) -> None:
        cfg = self.monitor.config
        fp = self.monitor.reference.fingerprint
        tracker = ConceptTracker(cfg, fp)
        if st.concept is None:
            det = make_detector(cfg.concept.detector, cfg.concept.params)
        else:
            det = restore(st.concept["detector"])
            tracker.restore(st.concept["tracker"])
        for x, t in zip(err.tolist(), j["tl"].tolist(), strict=True):
            rec = tracker.update(det, x, int(t))
            if rec is not None:
                out.append(("concept", None, record_line(rec)))
        st.concept = {"detector": det.snapshot(), "tracker": tracker.snapshot()}

    def _window_ends(self, st: PerfState) -> list[tuple[int, int]]:
        """(first pane, end) of every window with a pane in the state, sorted."""
        spec = self.monitor.spec
        panes = sorted({p for _s, p in st.panes})
        return [(f, spec.window_bounds(f)[1]) for f in spec.windows_of_panes(panes)]

    def next_emit(self, st: PerfState) -> int | None:
        assert self.monitor.config.labels is not None
        delay = self.monitor.config.labels.max_delay_ms
        due = [end + delay for _f, end in self._window_ends(st)]
        due = [d for d in due if st.frontier is None or d > st.frontier]
        return min(due) if due else None

    def _emit(self, st: PerfState, tr: PerformanceTracker, watermark: int, out: list[Any]) -> None:
        m = self.monitor
        assert m.config.labels is not None
        delay = m.config.labels.max_delay_ms
        if st.frontier is not None and watermark <= st.frontier:
            return
        spec = m.spec
        k = spec.panes_per_window
        order = {None: -1, **{s: i for i, s in enumerate(st.kept)}}
        other = tuple(OTHER_SEGMENT for _ in m.segment_fields)
        order[other] = len(st.kept)
        for first, end in self._window_ends(st):
            if end + delay > watermark or (st.frontier is not None and end + delay <= st.frontier):
                continue
            start = int(spec.pane_start(first))
            by_segment: dict[Seg, np.ndarray] = {}
            for (s, p), state in st.panes.items():
                if first <= p < first + k:
                    by_segment[s] = by_segment[s] + state if s in by_segment else state.copy()
            members = [
                ({} if s is None else segment_dict(m, s), by_segment[s])
                for s in sorted(by_segment, key=lambda s: order[s])
                if by_segment[s][0]
            ]
            if not members:
                continue
            recs = tr.window_records(members, first, start, end)
            out.extend(("perf", None, record_line(r)) for r in recs)
        st.frontier = watermark
        gone = {(s, p) for s, p in st.panes if self._emitted(st, p)}
        for key in gone:
            del st.panes[key]
        st.joined = {h: p for h, p in st.joined.items() if not self._emitted(st, p)}


# -- the query ---------------------------------------------------------------------------------------
def labels_frame(spark: Any, monitor: Monitor, settings: Any, *, starting_offsets: str = "earliest") -> Any:
    """The stateful operator's output (:data:`OUT_SCHEMA`) as a streaming DataFrame."""
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout

    from jobs.kafka_source import read_kafka
    from jobs.streaming import source_options

    lab = monitor.config.labels
    if lab is None or not lab.topic:
        raise JobError("labels.topic: the streaming job joins labels from a topic; name it")
    opts = source_options(monitor, settings, starting_offsets)
    opts.pop("maxEventBytes", None)
    lateness = monitor.config.window.allowed_lateness_ms
    bc = spark.sparkContext.broadcast(monitor)

    def raw(topic: str) -> Any:
        df = read_kafka(spark, {**opts, "subscribe": topic}, streaming=True)
        return df.select("value", "partition", "offset", F.unix_millis("timestamp").alias("ts"))

    preds = (
        raw(settings.kafka.topic)
        .mapInArrow(lambda it: decode_predictions(bc.value, it), PRED_SCHEMA)
        .withColumn("p_time", F.timestamp_millis("tp"))
        .withWatermark("p_time", f"{lateness} milliseconds")
    )
    labels_all = raw(lab.topic).mapInArrow(lambda it: decode_label_batches(bc.value, it), LABEL_SCHEMA)
    labels = (
        labels_all.filter("kind = 'l'")
        .withColumn("l_time", F.timestamp_millis("tl"))
        .withWatermark("l_time", f"{lateness} milliseconds")
    )
    p, lb = preds.alias("p"), labels.alias("l")
    cond = F.expr(
        f"p.h = l.h AND l.l_time >= p.p_time - INTERVAL {lab.clock_skew_ms} MILLISECONDS "
        f"AND l.l_time < p.p_time + INTERVAL {lab.max_delay_ms} MILLISECONDS"
    )
    # (et: the prediction's event time, whose watermark the stateful operator's event-time timeout needs)
    cols = ["kind", "h", "tp", "score", "seg", "y", "tl", "loff", "poff", "reason", "et"]
    pairs = p.join(lb, cond, "inner").select(
        F.lit("j").alias("kind"), "p.h", "p.tp", "p.score", "p.seg", "l.y", "l.tl", "l.loff", "p.poff",
        F.lit(None).cast("string").alias("reason"), F.col("p.p_time").alias("et"),
    )  # fmt: skip
    counted = preds.select(
        F.lit("n").alias("kind"), "h", "tp", F.lit(None).cast("double").alias("score"), "seg",
        F.lit(None).cast("double").alias("y"), F.lit(None).cast("long").alias("tl"),
        F.lit(None).cast("long").alias("loff"), "poff", F.lit(None).cast("string").alias("reason"),
        F.col("p_time").alias("et"),
    )  # fmt: skip
    bad = labels_all.filter("kind = 'bad'").select(
        "kind", "h", F.lit(None).cast("long").alias("tp"), F.lit(None).cast("double").alias("score"),
        F.lit(None).cast("string").alias("seg"), "y", "tl", "loff", F.lit(None).cast("long").alias("poff"), "reason",
        F.lit(None).cast("timestamp").alias("et"),
    )  # fmt: skip
    rows = pairs.select(*cols).unionByName(counted.select(*cols)).unionByName(bad.select(*cols))
    return (
        rows.withColumn("monitor", F.lit(monitor.config.monitor))
        .groupBy("monitor")
        .applyInPandasWithState(
            PerformanceStep(monitor), OUT_SCHEMA, STATE_SCHEMA, "append", GroupStateTimeout.EventTimeTimeout
        )
    )


class LabelsWriter:
    """``foreachBatch`` handler of the labels query: publish the records, count, set metrics."""

    def __init__(self, monitor: Monitor, publisher: Any, metrics: Any | None, lock: Any = None) -> None:
        import threading

        self.monitor = monitor
        self.publisher = publisher
        self.metrics = metrics
        self.lock = lock if lock is not None else threading.Lock()  # (shared with the window query's writer)
        self.counts: dict[str, int] = {}  # this process's counts

    def __call__(self, df: Any, batch_id: int) -> None:
        import time

        from detectors.evaluate import make_alert

        rows = df.toArrow().to_pylist()
        records: list[dict[str, Any]] = []
        for r in rows:
            kind = r["kind"]
            if kind in ("perf", "concept"):
                records.append(json.loads(r["record"]))
            elif kind != "watermark":
                self.counts[kind] = self.counts.get(kind, 0) + int(r["n"])
        if records and self.publisher is not None:
            alerts = [make_alert(rec, int(time.time() * 1000)) for rec in records if rec["drift"]]
            with self.lock:
                self.publisher.records(records)
                self.publisher.alerts(alerts)
                self.publisher.flush()  # before Spark commits the batch
        if self.metrics is not None:
            self.metrics.performance_records(records)
            joined = sum(int(r["n"]) for r in rows if r["kind"] == "joined")
            if joined:  # (Spark's inner join shows no timeouts or orphans: only the pairs are counted)
                self.metrics.label_joins.labels(self.monitor.config.monitor, "joined").inc(joined)
        prefix = "label_invalid:"
        new_bad = {r["kind"][len(prefix) :]: int(r["n"]) for r in rows if r["kind"].startswith(prefix)}
        if new_bad:
            total = {k: n for k, n in self.counts.items() if k.startswith("label_invalid:")}
            log.warning("batch %d: label events rejected: %s (so far: %s)", batch_id, new_bad, total)


def start_labels(
    spark: Any,
    monitor: Monitor,
    checkpoint: str,
    publisher: Any,
    metrics: Any | None,
    *,
    starting_offsets: str = "earliest",
    trigger_ms: int = 5000,
    lock: Any = None,
) -> tuple[Any, LabelsWriter]:
    """Start the labels query (its own checkpoint: ``checkpoint``); the query and its writer. ``lock``:
    held while publishing (the window query's writer's, when they share the publisher)."""
    frame = labels_frame(spark, monitor, monitor.settings(), starting_offsets=starting_offsets)
    writer = LabelsWriter(monitor, publisher, metrics, lock)
    name = f"streamdrift-labels-{monitor.config.monitor}"
    return start_query(spark, frame, checkpoint, trigger_ms, name, writer), writer
