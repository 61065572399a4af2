"""Pre-aggregation on the executors: Kafka messages in, count vectors per (pane, segment) out.

One Spark task reads one Kafka partition's offset range of a micro-batch and decodes it with
the consumer's decoder (:class:`stream.decode.EventDecoder`: the same validation, reasons
and event-time rules as ``streamdrift serve``, Kafka timestamps passed in), bins every valid
event with the reference's edges (:meth:`detectors.histogram.Layout.flat_indices`) and adds
it to one count vector per (raw segment key, pane). What leaves the task is small and does
not grow with the number of events, except the concept stream (one value per event, only
when a concept detector is configured):

* one ``t`` row: valid events, invalid events per reason code, the end of the range read and
  the partition's high watermark then (the lag);
* one ``c`` row per (raw segment, pane): the count vector, its number of events, and the
  segment's first appearance in the task (event time, offset) for the segment cap;
* one ``v`` row: the concept stream (event times and values) in offset order.

plus one ``clock`` row whose ``event_time`` is the latest valid event time of the task: the
column Spark's watermark is computed from (its maximum is the latest event time seen), so
the watermark is the one of the events, whatever the grouping. The other rows have a null
``event_time``: Spark drops rows whose event time is behind its watermark before a stateful
operator with an event-time timeout sees them, and a null time is never behind it, so the
window state sees every row and counts late events itself.

Rejected messages go to the dead-letter topic from the task, with the consumer's headers
(:meth:`stream.publish.Publisher.dead_letter`), and are flushed before the task ends, so
before Spark commits the micro-batch. A micro-batch that runs again (a retried task, a
restart after a crash before the commit) sends its dead letters again: see the README.

Two ways in, one summary:

* ``streamdrift-binned``, a Python data source whose reader does all of the above while it
  reads, so raw messages never cross into the JVM (the fast path, :class:`BinnedSource`);
* :func:`summarize_arrow`, the same over the Arrow batches of a raw Kafka DataFrame
  (``streamdrift-kafka`` or Spark's ``kafka`` connector) in ``mapInArrow``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql.datasource import DataSource, InputPartition

from detectors.events import concept_values
from jobs.common import JobError, Monitor
from jobs.kafka_source import (
    KafkaBatchReader,
    KafkaRange,
    KafkaSourceError,
    KafkaStreamReader,
    _lower,
    consume_range,
)

NAME = "streamdrift-binned"
SCHEMA = (
    "kind string, partition int, offset bigint, end_offset bigint, high bigint, event_time timestamp, seg string, "
    "pane bigint, first_ms bigint, n bigint, counts array<bigint>, reasons map<string,bigint>, times array<bigint>, "
    "values array<double>"
)
ARROW_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("end_offset", pa.int64()),
        ("high", pa.int64()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("seg", pa.string()),
        ("pane", pa.int64()),
        ("first_ms", pa.int64()),
        ("n", pa.int64()),
        ("counts", pa.list_(pa.int64())),
        ("reasons", pa.map_(pa.string(), pa.int64())),
        ("times", pa.list_(pa.int64())),
        ("values", pa.list_(pa.float64())),
    ]
)
#: data source options of the dead-letter producer: ``deadLetter.<librdkafka key>``
DLQ_PREFIX = "deadletter."


class PartitionSummary:
    """What one task learns from the messages of one Kafka partition (see the module docstring).

    :meth:`add` takes the messages in offset order, a list at a time; :meth:`record_batch` gives
    the rows. ``dead_letter(i, reason, code)`` is called for every rejected message ``i`` of the
    list being added.
    """

    def __init__(self, monitor: Monitor, decoder: Any, partition: int) -> None:
        self.monitor = monitor
        self.decoder = decoder
        self.partition = partition
        self.size = monitor.layout.size
        self.spec = monitor.spec
        self.seg_fields = monitor.segment_fields
        self.concept = monitor.config.concept_active and not monitor.config.concept_on_labels
        self.first_offset: int | None = None
        self.end_offset: int | None = None
        self.messages = 0  # (valid + rejected)
        self.valid = 0
        self.reasons: dict[str, int] = {}
        self.max_time: int | None = None
        self.high: int | None = None  # the partition's high watermark after the read (None: not known)
        self._seg_ids: dict[Any, int] = {}  # raw key (tuple, or the plain value of one field) -> id
        self._seg_json: list[str | None] = []
        self._first: list[tuple[int, int]] = []  # per segment id: (event time, offset) of its first event
        self._counts: dict[tuple[int, int], np.ndarray] = {}  # (segment id, pane) -> counts
        self._sizes: dict[tuple[int, int], int] = {}
        self._times: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add(
        self,
        values: Sequence[bytes | None],
        offset_of: Callable[[int], int],
        kafka_ts: Sequence[int | None] | None,
        dead_letter: Callable[[int, str, str], None],
    ) -> None:
        n_msgs = len(values)
        if n_msgs == 0:
            return
        if self.first_offset is None:
            self.first_offset = offset_of(0)
        self.end_offset = offset_of(n_msgs - 1) + 1
        self.messages += n_msgs
        cols, rejected = self.decoder.decode(values, kafka_ts)
        for r in rejected:
            self.reasons[r.code] = self.reasons.get(r.code, 0) + 1
            dead_letter(r.index, r.reason, r.code)
        n = len(cols)
        if n == 0:
            return
        self.valid += n
        t = cols.time_ms
        t_max = int(t.max())
        self.max_time = t_max if self.max_time is None else max(self.max_time, t_max)
        panes = self.spec.pane_of(t)
        sid = self._segment_ids(cols, t, offset_of)
        p0 = int(panes.min())
        n_panes = int(panes.max()) - p0 + 1
        key = panes - p0 if n_panes > 1 else None
        if sid is not None:
            key = sid * n_panes + (panes - p0) if key is not None else sid * n_panes
        idx = self.monitor.layout.flat_indices(cols.features, n).reshape(n, -1)
        if key is None or int(key.min()) == int(key.max()):  # one group: the usual chunk
            k0 = 0 if key is None else int(key[0])
            groups = [(k0, np.bincount(idx.reshape(-1), minlength=self.size), n)]
        else:
            uniq, inv = np.unique(key, return_inverse=True)
            inv = inv.reshape(-1)
            flat = (idx + (inv * self.size)[:, None]).reshape(-1)
            hist = np.bincount(flat, minlength=len(uniq) * self.size).reshape(len(uniq), self.size)
            sizes = np.bincount(inv, minlength=len(uniq))
            groups = [(int(k), hist[g], int(sizes[g])) for g, k in enumerate(uniq.tolist())]
        for k, counts, size in groups:
            gk = (k // n_panes, p0 + k % n_panes)
            have = self._counts.get(gk)
            if have is None:
                self._counts[gk] = counts.astype(np.int64)
                self._sizes[gk] = size
            else:
                have += counts
                self._sizes[gk] += size
        if self.concept:
            cv = concept_values(cols, self.monitor.config)
            keep = ~np.isnan(cv)
            self._times.append(t[keep])
            self._values.append(cv[keep])

    def _segment_ids(self, cols: Any, t: np.ndarray, offset_of: Callable[[int], int]) -> np.ndarray | None:
        """Segment id of each valid event (None without segment fields); new segments' first events noted."""
        if not self.seg_fields:
            return None
        # one segment field: keyed by its plain value (the decoder gives them as such when it can)
        one = len(self.seg_fields) == 1
        keys: Sequence[Any] = cols.segments
        if one:
            keys = cols.segment_values if cols.segment_values is not None else [k[0] for k in cols.segments]
        ids = self._seg_ids
        known = len(ids)
        sid = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))
        for k in list(ids)[known:]:
            self._seg_json.append(json.dumps([k] if one else list(k)))
            self._first.append((2**62, 2**62))
        # first appearance of every segment of this list: its earliest (event time, offset)
        order = np.argsort(t, kind="stable")  # (rows are in offset order: ties stay in it)
        _, pos = np.unique(sid[order], return_index=True)
        for j in pos.tolist():
            i = int(order[j])
            s = int(sid[i])
            cand = (int(t[i]), offset_of(cols.rows[i]))
            if cand < self._first[s]:
                self._first[s] = cand
        return sid

    def record_batch(self) -> pa.RecordBatch:
        """The task's rows (:data:`SCHEMA`); none if it read no message."""
        rows: dict[str, list[Any]] = {f.name: [] for f in ARROW_SCHEMA}
        if self.messages == 0:
            return pa.RecordBatch.from_pydict(rows, schema=ARROW_SCHEMA)

        def row(kind: str, **values: Any) -> None:
            for name, col in rows.items():
                col.append(values.get(name))
            rows["kind"][-1] = kind
            rows["partition"][-1] = self.partition
            if values.get("offset") is None:
                rows["offset"][-1] = self.first_offset

        if self.max_time is not None:
            row("clock", event_time=self.max_time * 1000)

        # (messages = valid + rejected)
        row("t", end_offset=self.end_offset, high=self.high, n=self.valid, reasons=sorted(self.reasons.items()))
        for (s, pane), counts in sorted(self._counts.items()):
            seg = self._seg_json[s] if self.seg_fields else None
            first_ms, first_off = self._first[s] if self.seg_fields else (0, self.first_offset)
            row("c", offset=first_off, seg=seg, pane=pane, first_ms=first_ms, n=self._sizes[(s, pane)], counts=counts)
        if self._times:
            times = np.concatenate(self._times)
            if len(times):
                row("v", times=times, values=np.concatenate(self._values), n=len(times))
        return pa.RecordBatch.from_pydict(rows, schema=ARROW_SCHEMA)


class DeadLetters:
    """Dead letters of one task, with the consumer's reasons and headers; :meth:`close` flushes them."""

    def __init__(self, topic: str | None, producer_conf: Mapping[str, Any]) -> None:
        self.publisher = None
        if topic:
            from stream.publish import Publisher

            self.publisher = Publisher(producer_conf, None, None, topic, None)

    def send(self, value: bytes | None, key: bytes | None, reason: str, code: str, topic: str, p: int, o: int) -> None:
        if self.publisher is not None:
            self.publisher.dead_letter(value, key, reason, code, topic, p, o)

    def close(self) -> None:
        if self.publisher is not None:
            try:
                self.publisher.flush()
            finally:
                self.publisher.close()


def make_decoder(monitor: Monitor, max_event_bytes: int) -> Any:
    from stream.decode import EventDecoder

    return EventDecoder(monitor.config, monitor.reference, monitor.layout.features, max_event_bytes)


def kafka_timestamps(msgs: Sequence[Any]) -> list[int | None]:
    """Each message's Kafka timestamp, None where it has none (as the consumer passes them to the decoder).

    The usual list, where every message has one, is made in C (fromiter + tolist: 0.1 against 0.3 us a
    message for a comprehension); a message without one (type 0, -1) takes the comprehension.
    """
    from confluent_kafka import Message

    raw = np.fromiter(map(_second, map(Message.timestamp, msgs)), dtype=np.int64, count=len(msgs))
    if len(raw) == 0 or int(raw.min()) >= 0:
        return raw.tolist()  # type: ignore[no-any-return]
    return [ts if ts_type != 0 and ts >= 0 else None for ts_type, ts in map(Message.timestamp, msgs)]


_second = itemgetter(1)


def summarize_range(
    monitor: Monitor,
    conf: Mapping[str, Any],
    r: KafkaRange,
    poll_timeout_ms: int,
    max_event_bytes: int,
    dead_letters: DeadLetters,
) -> PartitionSummary:
    """Read ``[r.start, r.end)`` of one partition and summarize it (the ``streamdrift-binned`` reader)."""
    from confluent_kafka import Message

    decoder = make_decoder(monitor, max_event_bytes)
    summary = PartitionSummary(monitor, decoder, r.partition)
    marks: dict[str, int] = {}
    for msgs in consume_range(conf, r, poll_timeout_ms, marks=marks):
        values = list(map(Message.value, msgs))
        kts = kafka_timestamps(msgs)  # (the event-time rules read them: fallback time, future skew)

        def dead_letter(i: int, reason: str, code: str, msgs: list[Any] = msgs) -> None:
            m = msgs[i]
            dead_letters.send(m.value(), m.key(), reason, code, r.topic, r.partition, m.offset())

        summary.add(values, lambda i, msgs=msgs: msgs[i].offset(), kts, dead_letter)
    summary.high = marks.get("high")
    return summary


def summarize_arrow(
    monitor: Monitor,
    batches: Iterator[pa.RecordBatch],
    max_event_bytes: int,
    dlq_topic: str | None,
    producer_conf: Mapping[str, Any],
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` over a raw Kafka DataFrame (key, value, topic, partition, offset, ts in ms):
    one summary per Kafka partition found in the Spark partition."""
    decoder = make_decoder(monitor, max_event_bytes)
    summaries: dict[int, PartitionSummary] = {}
    dead_letters = DeadLetters(dlq_topic, producer_conf)
    try:
        for b in batches:
            if b.num_rows == 0:
                continue
            parts = b.column("partition").to_numpy(zero_copy_only=False)
            for p in np.unique(parts).tolist():
                sel = b if len(np.unique(parts)) == 1 else b.filter(pa.array(parts == p))
                summary = summaries.get(p)
                if summary is None:
                    summary = summaries[p] = PartitionSummary(monitor, decoder, int(p))
                values = sel.column("value").to_pylist()
                offsets = sel.column("offset").to_numpy(zero_copy_only=False)
                kts = sel.column("ts").to_pylist()

                def dead_letter(i: int, reason: str, code: str, sel: pa.RecordBatch = sel) -> None:
                    dead_letters.send(
                        sel.column("value")[i].as_py(),
                        sel.column("key")[i].as_py(),
                        reason,
                        code,
                        sel.column("topic")[i].as_py() or "",
                        int(sel.column("partition")[i].as_py()),
                        int(sel.column("offset")[i].as_py()),
                    )

                summary.add(values, lambda i, offsets=offsets: int(offsets[i]), kts, dead_letter)
    finally:
        dead_letters.close()
    for p in sorted(summaries):
        yield summaries[p].record_batch()


# -- the data source -------------------------------------------------------------------------------
class _Binned:
    """What the binned readers add to the raw ones: the monitor, the decoder limit and the dead letters."""

    def _init_binned(self, options: Mapping[str, str]) -> None:
        path = options.get("config")
        if not path:
            raise KafkaSourceError("option config is required: the monitor YAML (read on the driver)")
        try:
            self.monitor = Monitor.load(path)
        except JobError as exc:
            raise KafkaSourceError(f"option config: {exc}") from None
        if self.monitor.config.window.kind == "count":
            raise KafkaSourceError("option config: count windows are not supported by the streamdrift-binned source")
        raw = options.get("maxeventbytes", str(1 << 20))
        try:
            self.max_event_bytes = int(raw)
        except ValueError:
            raise KafkaSourceError(f"option maxEventBytes: {raw!r} is not a number of bytes") from None
        self.dlq_topic = options.get("deadlettertopic") or None
        self.dlq_conf = {k[len(DLQ_PREFIX) :]: v for k, v in options.items() if k.startswith(DLQ_PREFIX)}
        if self.dlq_topic and "bootstrap.servers" not in self.dlq_conf:
            self.dlq_conf["bootstrap.servers"] = self.conf["bootstrap.servers"]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, KafkaRange)
        conf, poll_ms = self.conf, self.poll_timeout_ms  # type: ignore[attr-defined]
        dead_letters = DeadLetters(self.dlq_topic, self.dlq_conf)
        with quiet_gc():
            try:
                summary = summarize_range(self.monitor, conf, partition, poll_ms, self.max_event_bytes, dead_letters)
            finally:
                dead_letters.close()
        yield summary.record_batch()


#: the garbage collector's thresholds while a task reads (as ``streamdrift serve``'s, stream.cli.serve)
GC_THRESHOLD = (50_000, 20, 100)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect rarely while a task decodes: a Python worker holds pyspark, pandas, scipy... and every
    full collection walks them all (measured: 4.4 -> 3.1 us per event). The objects that exist when the
    first task starts (the imports) are frozen out of the collector's generations, once per worker."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)


_frozen = False


class BinnedStreamReader(_Binned, KafkaStreamReader):
    def __init__(self, options: Mapping[str, str]) -> None:
        KafkaStreamReader.__init__(self, options)
        self._init_binned(options)


class BinnedBatchReader(_Binned, KafkaBatchReader):
    def __init__(self, options: Mapping[str, str]) -> None:
        KafkaBatchReader.__init__(self, options)
        self._init_binned(options)


class BinnedSource(DataSource):
    """``spark.readStream.format("streamdrift-binned")``: the Kafka source's options plus ``config``
    (the monitor YAML), ``maxEventBytes``, ``deadLetterTopic`` and ``deadLetter.<librdkafka key>``."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def reader(self, schema: Any) -> BinnedBatchReader:
        return BinnedBatchReader(_lower(self.options))

    def streamReader(self, schema: Any) -> BinnedStreamReader:
        return BinnedStreamReader(_lower(self.options))


def register(spark: Any) -> None:
    spark.dataSource.register(BinnedSource)
