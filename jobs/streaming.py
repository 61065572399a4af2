"""The Structured Streaming job: window statistics from a Kafka topic, results back to Kafka.

Run it with spark-submit (Spark settings are spark-submit's)::

    spark-submit --master local[2] \\
        --conf spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods \\
        jobs/streaming.py --config monitor.yaml --checkpoint /var/lib/streamdrift/spark-ckpt

The plan of every micro-batch, from the executors to the driver:

1. **Read, decode, bin, pre-aggregate** (executors, one task per Kafka partition): the
   ``streamdrift-binned`` source (:mod:`jobs.binned`) reads the partition's offset range of
   the micro-batch with confluent-kafka, decodes it with the consumer's decoder, bins every
   valid event and emits one count vector per (raw segment, pane), a tally, and the concept
   stream; invalid messages go to the dead-letter topic. No row per event leaves the task.
2. **Watermark**: ``withWatermark("event_time", allowed_lateness)``: Spark's watermark is
   the latest event time seen in earlier micro-batches minus ``window.allowed_lateness``.
3. **Window state** (one Spark stateful task, ``applyInPandasWithState`` keyed by the
   monitor, :class:`WindowStep`): the open panes' count vectors, the segment router, the
   close frontier and the concept detectors live in Spark's state store, versioned with the
   micro-batch, so a restart from the checkpoint resumes from exactly the state of the last
   committed batch. Each batch adds the new count vectors, counts late events per window,
   runs the concept detectors, and emits the windows whose end the watermark passed.
4. **Evaluate and publish** (driver, ``foreachBatch``, :class:`BatchWriter`): all segments
   of a closed window together (:func:`detectors.evaluate.evaluate_window`: one family with
   ``statistics.family: window``), as the consumer and the local engine do; the
   records to ``outputs.statistics_topic`` (key: :func:`detectors.evaluate.alert_id`) and/or
   ``outputs.statistics_file``, drifted ones as alerts to ``outputs.alerts_topic``; outputs
   are flushed before the batch returns (Spark commits the batch after that); metrics.

Rules (see the README for how they differ from ``streamdrift serve``):

* a *pane* is numbered by :class:`detectors.engine.WindowSpec` (``floor((t - offset) / slide)``, or a
  calendar month); a window is the sum of its panes (tumbling: one pane);
* an event is *late* if Spark's watermark, when its micro-batch runs, is at or past the end
  of every window it belongs to (those windows close in that batch, or closed before);
  late events are counted, per window (the last window they belong to), not added. The
  watermark of a batch depends only on the events of earlier batches, so whether an event
  is late does not depend on when Spark runs its data-less batches;
* windows close when Spark's watermark reaches their end. The state's key has an event-time
  timeout at the next window end, so when a micro-batch moves the watermark past it Spark
  runs a data-less micro-batch at the next trigger that closes the window, even if no more
  data comes;
* segments beyond ``segments.max_segments`` share ``__other__``, in order of first
  appearance: (event time, partition, offset) of their first event in its micro-batch;
* the concept detector runs per Kafka partition in offset order (one detector each); its
  records have segment ``{"kafka_partition": "<p>"}``;
* count windows and ``window.keep_raw`` are not supported (they need a global event order,
  and raw values, respectively).

Exactly-once: a micro-batch that runs again after a crash (Spark re-runs the last one that
was not committed) reads the same offsets, starts from the same state version and sees the
same watermark, so it emits the same windows with the same values; the records are re-sent
with the same keys. Dead letters of such a batch are sent again (see the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from detectors.engine import OTHER_SEGMENT, ConceptTracker, record_sort_key
from detectors.evaluate import (
    evaluate_window,
    make_alert,
    parse_iso_ms,
    require_calibration,
    segment_label,
    window_records,
)
from detectors.exceptions import StreamdriftError
from detectors.sequential import make_detector, restore
from jobs.common import JobError, Monitor, segment_dict, start_query, stateful_batch
from jobs.kafka_source import KafkaSourceError
from stream.records import record_line

log = logging.getLogger("streamdrift.spark")

#: what the window state emits each micro-batch
OUT_SCHEMA = "kind string, start bigint, end bigint, seg string, n bigint, counts array<bigint>, record string"
STATE_SCHEMA = "state binary"
FORMATS = ("streamdrift-binned", "streamdrift-kafka", "kafka")
#: the segment of a concept-drift record: the Kafka partition whose detector fired
CONCEPT_SEGMENT = "kafka_partition"
STATE_VERSION = 1


# -- the window state (in Spark's state store) ------------------------------------------------------
Seg = tuple[str, ...] | None  # a routed segment key; None = the overall segment {}


@dataclass
class StreamState:
    """Everything the job remembers between micro-batches; one value in Spark's state store."""

    fingerprint: str
    frontier: int | None = None  # every window with end <= frontier has closed
    kept: list[tuple[str, ...]] = field(default_factory=list)  # segments with their own windows, in order
    panes: dict[tuple[Seg, int], np.ndarray] = field(default_factory=dict)  # (segment, pane) -> counts
    concept: dict[int, dict[str, Any]] = field(default_factory=dict)  # partition -> detector, tracker

    def to_bytes(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "frontier": self.frontier,
            "kept": [list(k) for k in self.kept],
            "panes": [
                [None if s is None else list(s), p, c.astype("<i8").tobytes()]
                for (s, p), c in sorted(self.panes.items(), key=lambda kv: (kv[0][0] or (), kv[0][1]))
            ],
            "concept": {str(p): v for p, v in sorted(self.concept.items())},
        }
        return zlib.compress(msgspec.msgpack.encode(doc), 1)

    @classmethod
    def from_bytes(cls, data: bytes, fingerprint: str) -> StreamState:
        doc = msgspec.msgpack.decode(zlib.decompress(data))
        if doc.get("version") != STATE_VERSION:
            raise JobError(f"the checkpoint's window state has version {doc.get('version')}, not {STATE_VERSION}")
        if doc["fingerprint"] != fingerprint:
            raise JobError(
                f"the checkpoint was written against reference {doc['fingerprint']}, not the configured "
                f"{fingerprint}; use a new --checkpoint for a new reference"
            )
        return cls(
            fingerprint,
            doc["frontier"],
            [tuple(k) for k in doc["kept"]],
            {
                (None if s is None else tuple(s), int(p)): np.frombuffer(c, dtype="<i8").astype(np.int64)
                for s, p, c in doc["panes"]
            },
            {int(p): v for p, v in doc["concept"].items()},
        )


class WindowStep:
    """The ``applyInPandasWithState`` function: one call per micro-batch (and per timeout) with the
    executors' rows (:data:`jobs.binned.SCHEMA`); emits rows of :data:`OUT_SCHEMA`:

    * ``w``: a closed window of one segment (``seg`` JSON, null for the overall), its counts;
    * ``late``: late events of a window (``n``);
    * ``messages``, ``valid``, ``invalid`` (``seg`` = reason code), ``overflow``: counts;
    * ``lag``: a partition's (``seg``) high watermark minus the end of the range read (``n``);
    * ``concept``: a concept-drift record (``record``, JSON);
    * ``watermark``: the watermark this call ran with (``n``).
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def __call__(self, key: Any, pdfs: Iterator[Any], state: Any) -> Iterator[Any]:
        import pandas as pd

        # (next_close: Spark calls again once its watermark reaches the next window end)
        out = stateful_batch(pdfs, state, StreamState, self.monitor.reference.fingerprint, self.step, self.next_close)
        yield pd.DataFrame(
            {
                "kind": pd.Series([r["kind"] for r in out], dtype=object),
                **{c: pd.Series([r.get(c) for r in out], dtype="Int64") for c in ("start", "end")},
                "seg": pd.Series([r.get("seg") for r in out], dtype=object),
                "n": pd.Series([r.get("n") for r in out], dtype="Int64"),
                **{c: pd.Series([r.get(c) for r in out], dtype=object) for c in ("counts", "record")},
            }
        )

    def step(self, st: StreamState, rows: Any, watermark: int) -> list[dict[str, Any]]:
        """Add one micro-batch's rows (None: a timeout) to ``st``, then close windows up to ``watermark``."""
        out: list[dict[str, Any]] = []
        if rows is not None:
            kinds = rows["kind"]
            self._tally(rows[kinds == "t"], out)
            self._counts(st, rows[kinds == "c"], watermark, out)
            self._concept(st, rows[kinds == "v"], out)
        self._close(st, watermark, out)
        out.append({"kind": "watermark", "n": watermark})
        return out

    def next_close(self, st: StreamState) -> int | None:
        """The end of the next window to close (None: no open window)."""
        spec = self.monitor.spec
        k = spec.panes_per_window
        ends = [
            end
            for _s, p in st.panes
            for first in range(p - k + 1, p + 1)
            if (end := int(spec.window_end(first))) > (st.frontier if st.frontier is not None else -(2**62))
        ]
        return min(ends) if ends else None

    def _tally(self, t: Any, out: list[dict[str, Any]]) -> None:
        import pandas as pd

        if not len(t):
            return
        reasons: dict[str, int] = {}
        for rs in t["reasons"]:
            for code, n in rs.items() if isinstance(rs, dict) else rs:  # (a map arrives as pairs or a dict)
                reasons[code] = reasons.get(code, 0) + int(n)
        out.append({"kind": "messages", "n": int(t["n"].sum()) + sum(reasons.values())})
        for code, n in sorted(reasons.items()):
            out.append({"kind": "invalid", "seg": code, "n": n})
        for part, end, high in zip(t["partition"], t["end_offset"], t["high"], strict=True):
            if not pd.isna(high):  # (unknown on the raw-rows path: null)
                out.append({"kind": "lag", "seg": str(int(part)), "n": max(0, int(high) - int(end))})

    def _counts(self, st: StreamState, c: Any, watermark: int, out: list[dict[str, Any]]) -> None:
        m = self.monitor
        spec = m.spec
        fields = m.segment_fields
        cap = m.config.segments.max_segments
        other = tuple(OTHER_SEGMENT for _ in fields)
        kept = set(st.kept)
        valid = late = overflow = 0
        late_by_window: dict[tuple[int, int], int] = {}
        # first appearance decides which segments keep their own windows: (event time, partition, offset)
        c = c.sort_values(["first_ms", "partition", "offset", "seg", "pane"], na_position="first", kind="stable")
        for seg_json, pane, n, counts in zip(c["seg"], c["pane"], c["n"], c["counts"], strict=True):
            pane, n = int(pane), int(n)
            # the last window the events belong to starts with their pane
            last_start, last_end = spec.window_bounds(pane)
            if last_end <= watermark:
                late += n
                late_by_window[(last_start, last_end)] = late_by_window.get((last_start, last_end), 0) + n
                continue
            valid += n
            targets: list[Seg] = []
            if fields:
                raw = tuple(json.loads(seg_json))
                if raw not in kept and len(st.kept) < cap:
                    st.kept.append(raw)
                    kept.add(raw)
                routed = raw if raw in kept else other
                if routed == other:
                    overflow += n
                targets.append(routed)
            if m.overall:
                targets.append(None)
            for s in targets:
                have = st.panes.get((s, pane))
                if have is None:
                    st.panes[(s, pane)] = np.asarray(counts, dtype=np.int64).copy()
                else:
                    have += np.asarray(counts, dtype=np.int64)
        out.append({"kind": "valid", "n": valid})
        if overflow:
            out.append({"kind": "overflow", "n": overflow})
        for (start, end), n in sorted(late_by_window.items()):
            out.append({"kind": "late", "start": start, "end": end, "n": n})

    def _concept(self, st: StreamState, v: Any, out: list[dict[str, Any]]) -> None:
        cfg = self.monitor.config
        if not cfg.concept_active or cfg.concept_on_labels or not len(v):  # (on labels: jobs.labels_stream)
            return
        fp = self.monitor.reference.fingerprint
        v = v.sort_values(["partition", "offset"], kind="stable")
        for part, group in v.groupby("partition", sort=True):
            p = int(part)
            saved = st.concept.get(p)
            if saved is None:
                det = make_detector(cfg.concept.detector, cfg.concept.params)
                tracker = ConceptTracker(cfg, fp)
            else:
                det = restore(saved["detector"])
                tracker = ConceptTracker(cfg, fp)
                tracker.restore(saved["tracker"])
            for times, values in zip(group["times"], group["values"], strict=True):
                for t, x in zip(np.asarray(times).tolist(), np.asarray(values).tolist(), strict=True):
                    rec = tracker.update(det, x, t)
                    if rec is not None:
                        # the partition whose detector fired names the record (and so its key: two
                        # partitions' detectors can fire for the same span of event time)
                        rec["segment"] = {CONCEPT_SEGMENT: str(p)}
                        out.append({"kind": "concept", "record": record_line(rec)})
            st.concept[p] = {"detector": det.snapshot(), "tracker": tracker.snapshot()}

    def _close(self, st: StreamState, watermark: int, out: list[dict[str, Any]]) -> None:
        """Emit every window with ``frontier < end <= watermark`` that holds data; drop panes no open window needs."""
        spec = self.monitor.spec
        if st.frontier is not None and watermark <= st.frontier:
            return
        k = spec.panes_per_window
        closing: set[tuple[Seg, int]] = set()
        for s, p in st.panes:
            for first in range(p - k + 1, p + 1):
                end = int(spec.window_end(first))
                if end <= watermark and (st.frontier is None or end > st.frontier):
                    closing.add((s, first))
        for s, first in sorted(closing, key=lambda x: (x[1], x[0] is not None, x[0] or ())):
            members = [st.panes[(s, q)] for q in range(first, first + k) if (s, q) in st.panes]
            start, end = spec.window_bounds(first)
            seg = None if s is None else json.dumps(list(s))
            out.append({"kind": "w", "start": start, "end": end, "seg": seg, "counts": np.sum(members, axis=0)})
        st.panes = {(s, p): c for (s, p), c in st.panes.items() if spec.window_end(p) > watermark}
        st.frontier = watermark


# -- the driver: evaluation, outputs, metrics -------------------------------------------------------
@dataclass
class BatchOutput:
    """What one micro-batch produced on the driver."""

    records: list[dict[str, Any]]
    concept: list[dict[str, Any]]
    late: dict[tuple[int, int], int]
    counts: dict[str, int]  # messages, valid, late, overflow, invalid:<code>
    watermark: int | None  # the window state's watermark (None: it did not run)
    lag: dict[int, int]  # partition -> lag after its range of this micro-batch


class BatchWriter:
    """``foreachBatch`` handler: evaluate the closed windows, publish, set metrics."""

    def __init__(
        self, monitor: Monitor, publisher: Any, metrics: Any | None, segment_ttl_windows: int = 3, topic: str = ""
    ) -> None:
        self.monitor = monitor
        self.topic = topic
        self.publisher = publisher
        self.metrics = metrics
        self.segment_ttl_windows = segment_ttl_windows
        self.late_by_window: dict[tuple[int, int], int] = {}  # this process's late counts (also logged)
        self.batches = 0
        self.partitions: set[int] = set()  # Kafka partitions read so far
        #: the last window (the pane of its end) in which each segment (by label) had events: a segment silent
        #: for segment_ttl_windows windows loses its verdict series, as in the consumer
        self._segment_window: dict[str, int] = {}
        #: held while publishing (the labels query, :mod:`jobs.labels_stream`, shares the publisher)
        self.lock = threading.Lock()

    def __call__(self, df: Any, batch_id: int) -> None:
        t0 = time.perf_counter()
        rows = df.toArrow().to_pylist()  # runs the micro-batch: read, decode, bin, window state
        out = self.collect(rows)
        now = time.time()
        alerts = [make_alert(r, int(now * 1000)) for r in out.records + out.concept if r["drift"]]
        if self.publisher is not None and (out.records or out.concept):
            with self.lock:
                self.publisher.records(out.records + out.concept)
                self.publisher.alerts(alerts)
                self.publisher.flush()  # before Spark commits the batch: a committed batch's outputs are delivered
        for (start, end), n in sorted(out.late.items()):
            self.late_by_window[(start, end)] = self.late_by_window.get((start, end), 0) + n
            log.warning("batch %d: %d late events of window [%d, %d) not counted in it", batch_id, n, start, end)
        self.batches += 1
        if self.metrics is not None:
            if batch_id > 0:  # Spark committed the previous micro-batch (its checkpoint) before planning this one
                mon = self.monitor.config.monitor
                self.metrics.checkpoints.labels(mon, "ok").inc()
                self.metrics.last_checkpoint.labels(mon).set(now)
            self.set_metrics(out, alerts, now, time.perf_counter() - t0)

    def collect(self, rows: list[dict[str, Any]]) -> BatchOutput:
        """Group the window state's rows: closed windows (all segments of a window together), counts."""
        windows: dict[tuple[int, int], list[tuple[Seg, np.ndarray]]] = {}
        concept: list[dict[str, Any]] = []
        late: dict[tuple[int, int], int] = {}
        counts: dict[str, int] = {}
        lag: dict[int, int] = {}
        watermark = None
        for r in rows:
            kind = r["kind"]
            if kind == "watermark":
                watermark = r["n"] if watermark is None else max(watermark, r["n"])
            elif kind == "lag":
                lag[int(r["seg"])] = r["n"]
            elif kind == "w":
                seg = None if r["seg"] is None else tuple(json.loads(r["seg"]))
                windows.setdefault((r["start"], r["end"]), []).append((seg, np.asarray(r["counts"], dtype=np.int64)))
            elif kind == "concept":
                concept.append(json.loads(r["record"]))
            elif kind == "late":
                late[(r["start"], r["end"])] = late.get((r["start"], r["end"]), 0) + r["n"]
                counts["late"] = counts.get("late", 0) + r["n"]
            else:
                name = f"invalid:{r['seg']}" if kind == "invalid" else kind
                counts[name] = counts.get(name, 0) + r["n"]
        records: list[dict[str, Any]] = []
        for (start, end), segments in sorted(windows.items()):
            records.extend(self.evaluate_window(start, end, segments))
        records.sort(key=record_sort_key)
        return BatchOutput(records, concept, late, counts, watermark, lag)

    def evaluate_window(self, start: int, end: int, segments: list[tuple[Seg, np.ndarray]]) -> list[dict[str, Any]]:
        """The records of one closed window: every segment of the window together, one family with
        ``statistics.family: window`` (:func:`detectors.evaluate.evaluate_window`)."""
        m = self.monitor
        out: list[dict[str, Any]] = []
        verdicts = evaluate_window(m.layout, [(counts, None) for _seg, counts in segments], m.config.statistics)
        for (seg, _counts), results in zip(segments, verdicts, strict=True):
            out.extend(
                window_records(
                    results,
                    monitor=m.config.monitor,
                    segment={} if seg is None else segment_dict(m, seg),
                    window_start_ms=start,
                    window_end_ms=end,
                    window_index=int(m.spec.pane_of(start)),  # (the window's first pane)
                    fingerprint=m.reference.fingerprint,
                )
            )
        return out

    def set_metrics(self, out: BatchOutput, alerts: list[dict[str, Any]], now: float, seconds: float) -> None:
        mt = self.metrics
        mon = self.monitor.config.monitor
        c = out.counts
        if out.records:
            closed = {(r["window_start"], r["window_end"], segment_label(r["segment"])) for r in out.records}
            mt.windows_closed.labels(mon).inc(len(closed))
            mt.last_window_end.labels(mon).set(max(self._end_s(r) for r in out.records))
            mt.last_window_closed.labels(mon).set(now)
            mt.window_records(out.records)
        if out.watermark is not None:
            self._forget_silent_segments(out)
        for a in alerts:
            mt.alerts.labels(mon, a["severity"]).inc()
        if out.concept:
            cc = self.monitor.config.concept
            mt.concept.labels(mon, cc.detector, cc.stream).inc(len(out.concept))
        if c.get("overflow"):
            mt.segments_overflow.labels(mon).inc(c["overflow"])
        for part, lag in out.lag.items():
            mt.set_lag(self.topic, part, lag)
        if out.lag:
            self.partitions.update(out.lag)
            mt.assigned.labels(mon).set(len(self.partitions))
        if "messages" in c:  # the events' outcomes are counted together with the batch time
            mt.events.labels(mon, "valid").inc(c.get("valid", 0))
            invalid = sum(n for k, n in c.items() if k.startswith("invalid:"))
            if invalid:
                mt.events.labels(mon, "invalid").inc(invalid)
            for k, n in c.items():
                if k.startswith("invalid:"):
                    mt.dead_letters.labels(mon, k[len("invalid:") :]).inc(n)
            if c.get("late"):
                mt.events.labels(mon, "late").inc(c["late"])
            mt.last_batch.labels(mon).set(now)
            mt.batch_seconds.labels(mon).observe(seconds)

    def _forget_silent_segments(self, out: BatchOutput) -> None:
        """Remove the verdict series of segments without events in the newest ``segment_ttl_windows``
        windows (their last verdicts would go on firing); they come back with their next window."""
        spec = self.monitor.spec
        for r in out.records:
            w = int(spec.pane_of(parse_iso_ms(r["window_end"])))
            label = segment_label(r["segment"])
            if w > self._segment_window.get(label, w - 1):
                self._segment_window[label] = w
        assert out.watermark is not None
        clock = int(spec.pane_of(out.watermark))
        silent = [s for s, w in self._segment_window.items() if clock - w >= self.segment_ttl_windows]
        for s in silent:
            del self._segment_window[s]
        if silent:
            self.metrics.remove_segments(silent)
            log.info("segments without events for %d windows lose their verdict series: %s",
                     self.segment_ttl_windows, silent)  # fmt: skip

    @staticmethod
    def _end_s(record: Mapping[str, Any]) -> float:
        return parse_iso_ms(record["window_end"]) / 1000.0


# -- the query ----------------------------------------------------------------------------------------
def source_options(monitor: Monitor, settings: Any, starting_offsets: str) -> dict[str, str]:
    """Options of the Kafka data sources from the config's kafka section (as ``serve`` renders it)."""
    k = settings.kafka
    conf = k.consumer_conf()
    for own in ("group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset"):
        conf.pop(own, None)  # (the source assigns partitions itself and keeps offsets in Spark's checkpoint)
    opts = {f"kafka.{key}": str(v) for key, v in conf.items()}
    opts.update({"subscribe": k.topic, "startingOffsets": starting_offsets, "maxEventBytes": str(k.max_event_bytes)})
    return opts


def binned_frame(
    spark: Any,
    monitor: Monitor,
    settings: Any,
    *,
    starting_offsets: str = "earliest",
    kafka_format: str = "streamdrift-binned",
    max_offsets_per_trigger: int | None = None,
) -> Any:
    """The executors' pre-aggregated rows (:data:`jobs.binned.SCHEMA`) as a streaming DataFrame."""
    from jobs import binned
    from jobs.kafka_source import read_kafka

    if kafka_format not in FORMATS:
        raise JobError(f"--kafka-format {kafka_format!r}: use one of {', '.join(FORMATS)}")
    if monitor.config.window.kind == "count":
        raise JobError("window.kind: count windows are not supported by the Spark streaming job")
    if monitor.config.window.keep_raw:
        raise JobError("window.keep_raw: the Spark streaming job keeps no raw values (exact KS); use serve")
    opts = source_options(monitor, settings, starting_offsets)
    if max_offsets_per_trigger:
        opts["maxOffsetsPerTrigger"] = str(max_offsets_per_trigger)
    dlq_topic = settings.outputs.dead_letter_topic
    producer = settings.kafka.producer_conf() if dlq_topic else {}
    if kafka_format == "streamdrift-binned":
        if monitor.path is None:
            raise JobError("the streamdrift-binned source loads the monitor from its file: use Monitor.load")
        opts["config"] = str(monitor.path)
        if dlq_topic:
            opts["deadLetterTopic"] = dlq_topic
            opts.update({f"{binned.DLQ_PREFIX}{key}": str(v) for key, v in producer.items()})
        binned.register(spark)
        return spark.readStream.format(binned.NAME).options(**opts).load()
    from pyspark.sql import functions as F

    max_bytes = settings.kafka.max_event_bytes
    opts.pop("maxEventBytes")
    raw = read_kafka(spark, opts, streaming=True, fmt=kafka_format)
    raw = raw.select("key", "value", "topic", "partition", "offset", F.unix_millis("timestamp").alias("ts"))
    bc = spark.sparkContext.broadcast(monitor)
    summarize = binned.summarize_arrow
    return raw.mapInArrow(lambda it: summarize(bc.value, it, max_bytes, dlq_topic, producer), binned.SCHEMA)


@dataclass
class StreamingJob:
    """A started query and what the driver keeps beside it (stop it with :meth:`stop`)."""

    spark: Any
    query: Any
    writer: BatchWriter
    server: Any
    metrics_port: int | None
    registry: Any
    labels_query: Any = None  # with labels.topic: the late labels' query (jobs.labels_stream)

    def processAllAvailable(self) -> None:
        self.query.processAllAvailable()
        if self.labels_query is not None:
            self.labels_query.processAllAvailable()

    def awaitTermination(self, timeout: float | None = None) -> Any:
        if self.labels_query is not None:  # either query ending (or failing) ends the job
            streams = self.spark.streams
            return streams.awaitAnyTermination(timeout) if timeout is not None else streams.awaitAnyTermination()
        return self.query.awaitTermination(timeout) if timeout is not None else self.query.awaitTermination()

    def exception(self) -> Any:
        exc = self.query.exception()
        if exc is None and self.labels_query is not None:
            exc = self.labels_query.exception()
        return exc

    def stop(self) -> None:
        try:
            if self.labels_query is not None:
                self.labels_query.stop()
            self.query.stop()
        finally:
            if self.writer.publisher is not None:
                self.writer.publisher.close()
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()


def start(
    spark: Any,
    monitor: Monitor,
    checkpoint: str,
    *,
    starting_offsets: str = "earliest",
    trigger_ms: int = 5000,
    kafka_format: str = "streamdrift-binned",
    max_offsets_per_trigger: int | None = None,
    serve_metrics: bool | None = None,
    registry: Any = None,
) -> StreamingJob:
    """Start the query (and the metrics endpoint: the config's ``metrics`` section, unless
    ``serve_metrics`` says otherwise); returns the :class:`StreamingJob`."""
    from prometheus_client import CollectorRegistry
    from pyspark.sql.streaming.state import GroupStateTimeout

    from stream.metrics import Metrics, serve_http
    from stream.publish import Publisher

    settings = monitor.settings()
    require_calibration(monitor.layout)  # (a reference without calibration gives no verdict: fail now)
    outputs = settings.outputs
    if not (outputs.statistics_topic or outputs.alerts_topic or outputs.statistics_file):
        raise JobError("outputs: set statistics_topic, alerts_topic or statistics_file (nothing would be written)")
    frame = binned_frame(
        spark,
        monitor,
        settings,
        starting_offsets=starting_offsets,
        kafka_format=kafka_format,
        max_offsets_per_trigger=max_offsets_per_trigger,
    )
    from pyspark.sql import functions as F

    lateness = monitor.config.window.allowed_lateness_ms
    windows = (
        frame.withWatermark("event_time", f"{lateness} milliseconds")
        .withColumn("monitor", F.lit(monitor.config.monitor))
        .groupBy("monitor")
        .applyInPandasWithState(
            WindowStep(monitor), OUT_SCHEMA, STATE_SCHEMA, "append", GroupStateTimeout.EventTimeTimeout
        )
    )
    enabled = settings.metrics.enabled if serve_metrics is None else serve_metrics
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry, monitor.config.monitor, _version())
    metrics.set_config(monitor.config.window.size_ms / 1000.0)  # (months: the longest)
    publisher = None
    if outputs.statistics_topic or outputs.alerts_topic or outputs.statistics_file:
        needs_kafka = outputs.statistics_topic or outputs.alerts_topic
        publisher = Publisher(
            settings.kafka.producer_conf() if needs_kafka else None,
            outputs.statistics_topic,
            outputs.alerts_topic,
            None,
            outputs.statistics_file,
        )
    writer = BatchWriter(monitor, publisher, metrics, settings.metrics.segment_ttl_windows, settings.kafka.topic)
    labels = monitor.config.labels
    if labels is not None and not labels.topic:
        log.warning("labels: no labels.topic; the streaming job computes no performance (set labels.topic)")
    server = port = None
    labels_query = None
    try:
        if enabled:
            mc = settings.metrics
            server, port = serve_http(registry, mc.address, mc.port, mc.certfile, mc.keyfile)
        query = start_query(spark, windows, checkpoint, trigger_ms, f"streamdrift-{monitor.config.monitor}", writer)
        if labels is not None and labels.topic:
            from jobs.labels_stream import start_labels

            try:
                labels_query, _lw = start_labels(
                    spark,
                    monitor,
                    f"{checkpoint.rstrip('/')}/labels",
                    publisher,
                    metrics,
                    starting_offsets=starting_offsets,
                    trigger_ms=trigger_ms,
                    lock=writer.lock,
                )
            except BaseException:
                query.stop()
                raise
    except BaseException:
        if server is not None:
            server.shutdown()
            server.server_close()
        raise
    return StreamingJob(spark, query, writer, server, port, registry, labels_query)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamdrift")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streaming.py", description="streamdrift Structured Streaming job (spark-submit)")
    p.add_argument("--config", required=True, help="monitor YAML with kafka, outputs and metrics sections")
    p.add_argument("--checkpoint", required=True, help="Spark checkpointLocation (keep it to resume after a kill)")
    p.add_argument("--starting-offsets", default="earliest", help="first start only: earliest, latest or JSON")
    p.add_argument("--trigger", default="5s", help="micro-batch interval, e.g. 5s, 500ms")
    p.add_argument("--max-offsets-per-trigger", type=int, help="at most this many messages per micro-batch")
    p.add_argument("--kafka-format", default="streamdrift-binned", choices=FORMATS, help="how Kafka is read")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detectors.config import parse_duration_ms

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        monitor = Monitor.load(args.config)
        monitor.settings()
        require_calibration(monitor.layout)
        trigger_ms = parse_duration_ms(args.trigger, "--trigger")
        if trigger_ms <= 0:
            raise JobError("--trigger must be positive")
        if args.max_offsets_per_trigger is not None and args.max_offsets_per_trigger <= 0:
            raise JobError("--max-offsets-per-trigger must be positive")
    except (StreamdriftError, JobError, ValueError) as exc:
        print(f"streaming: error: {exc}", file=sys.stderr)
        return 2
    from pyspark.errors import StreamingQueryException
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"streamdrift-streaming-{monitor.config.monitor}").getOrCreate()
    job = None
    try:
        job = start(
            spark,
            monitor,
            args.checkpoint,
            starting_offsets=args.starting_offsets,
            trigger_ms=trigger_ms,
            kafka_format=args.kafka_format,
            max_offsets_per_trigger=args.max_offsets_per_trigger,
        )
        if job.metrics_port is not None:
            log.info("metrics on port %d", job.metrics_port)
        job.awaitTermination()
    except (StreamdriftError, JobError, KafkaSourceError) as exc:
        print(f"streaming: error: {exc}", file=sys.stderr)
        return 2
    except StreamingQueryException as exc:  # the query stopped on an error (Spark logged its trace)
        print(f"streaming: the query failed: {exc.getMessage()}", file=sys.stderr)
        return 1
    finally:
        if job is not None:
            job.stop()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
