"""A Kafka source for pyspark 4 written in Python (confluent-kafka), so no JVM connector is needed.

Register it and read like Spark's own Kafka source::

    from jobs.kafka_source import register, read_kafka
    register(spark)
    df = (spark.read.format("streamdrift-kafka")
          .option("kafka.bootstrap.servers", "127.0.0.1:9092")
          .option("subscribe", "events")
          .option("startingOffsets", "earliest")            # or "latest", or JSON
          .option("endingOffsets", '{"events": {"0": 100}}')  # batch only
          .load())

Columns: ``key binary, value binary, topic string, partition int, offset long, timestamp
timestamp`` (the same names and types as Spark's ``kafka`` source, without ``headers``).

Offsets follow Spark's Kafka source: ``"earliest"``, ``"latest"`` or JSON
``{"topic": {"partition": offset}}`` where ``-2`` means earliest and ``-1`` latest. A batch
read covers ``[startingOffsets, endingOffsets)`` per partition (default earliest..latest).
A streaming read keeps ``{"topic": {"partition": next_offset}}`` as its offset, so Spark's
checkpoint holds the offsets and a restarted query resumes exactly where it stopped.

End offsets ("latest") come from the high watermark of a fetch response, not from
ListOffsets: both agree on Apache Kafka, and the fetch response is also right on brokers
whose ListOffsets(latest) answers the base offset of the last batch + 1 (the embedded
tansu broker). Options starting with ``kafka.`` are passed to librdkafka without the
prefix (``kafka.security.protocol``, ``kafka.sasl.mechanism``...). Option ``pollTimeoutMs``
(default 10000) bounds how long a task waits for a record it knows exists.

:func:`read_kafka` picks this source or Spark's native ``kafka`` format (option
``format="kafka"``, where the JVM connector is on the classpath); both give the same columns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import is_not
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceReader, DataSourceStreamReader, InputPartition

NAME = "streamdrift-kafka"
SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
EARLIEST, LATEST = -2, -1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KafkaSourceError(ValueError):
    """Bad options of the Kafka data source (the message names the option)."""


# -- options ---------------------------------------------------------------------------------------
def client_config(options: Mapping[str, str]) -> dict[str, Any]:
    """librdkafka settings from the ``kafka.*`` options."""
    conf = {k[len("kafka.") :]: v for k, v in options.items() if k.lower().startswith("kafka.")}
    if "bootstrap.servers" not in conf:
        raise KafkaSourceError("option kafka.bootstrap.servers is required (host:port of the Kafka brokers)")
    return conf


def topics_of(options: Mapping[str, str]) -> list[str]:
    if "subscribepattern" in options or "assign" in options:
        raise KafkaSourceError("options subscribePattern and assign are not supported; use subscribe=topic[,topic]")
    raw = options.get("subscribe")
    topics = [t.strip() for t in (raw or "").split(",") if t.strip()]
    if not topics:
        raise KafkaSourceError("option subscribe is required: the topic(s) to read, comma-separated")
    return topics


def parse_offsets(spec: str | None, default: int, name: str) -> dict[str, dict[str, int]] | int:
    """``"earliest"``/``"latest"`` -> -2/-1, JSON -> ``{topic: {partition: offset}}``."""
    if spec is None or spec.strip() == "":
        return default
    s = spec.strip()
    if s.lower() == "earliest":
        return EARLIEST
    if s.lower() == "latest":
        return LATEST
    try:
        doc = json.loads(s)
    except json.JSONDecodeError:
        raise KafkaSourceError(f"option {name}: {spec!r} is not 'earliest', 'latest' or JSON offsets") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise KafkaSourceError(f'option {name}: expected JSON like {{"topic": {{"0": 23}}}}, got {spec!r}')
    out: dict[str, dict[str, int]] = {}
    for topic, parts in doc.items():
        out[topic] = {}
        for p, off in parts.items():
            if isinstance(off, bool) or not isinstance(off, int) or off < -2:
                raise KafkaSourceError(f"option {name}: offset {off!r} of {topic}/{p} is not an offset, -1 or -2")
            out[topic][str(int(p))] = off
    return out


# -- broker queries --------------------------------------------------------------------------------
#: fetch settings that keep librdkafka from pausing a consumer that spends microseconds per message
#: (its default fetch.queue.backoff.ms of 1 s stalls a Python reader); a ``kafka.*`` option overrides them
FETCH_DEFAULTS: dict[str, Any] = {
    "fetch.queue.backoff.ms": 10,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 8 << 20,
}


def _consumer(conf: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Any:
    from confluent_kafka import Consumer

    c = {
        "group.id": "streamdrift-spark-source",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **FETCH_DEFAULTS,
        **conf,
        **(extra or {}),
    }
    return Consumer(c)


def partitions_of(conf: Mapping[str, Any], topics: list[str], timeout: float = 10.0) -> dict[str, list[int]]:
    """Partition ids of every topic (an unknown topic is an error that names it)."""
    c = _consumer(conf)
    try:
        out = {}
        for t in topics:
            md = c.list_topics(t, timeout=timeout)
            tm = md.topics.get(t)
            if tm is None or tm.error is not None or not tm.partitions:
                raise KafkaSourceError(f"option subscribe: topic {t!r} does not exist or has no partitions")
            out[t] = sorted(tm.partitions)
        return out
    finally:
        c.close()


def watermarks(
    conf: Mapping[str, Any], tps: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) per partition; ``high`` is the high watermark of a fetch response.

    ListOffsets gives low and a first high; then each partition is fetched from just before
    that high (the last batch) and the fetch response's high watermark replaces it.
    """
    from confluent_kafka import TopicPartition

    if not tps:
        return {}
    c = _consumer(conf, {"fetch.wait.max.ms": 10})
    try:
        listed = {tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=timeout) for tp in tps}
        todo = {tp for tp, (lo, hi) in listed.items() if hi > lo}
        out = {tp: (int(lo), int(hi)) for tp, (lo, hi) in listed.items()}
        if not todo:
            return out
        c.assign([TopicPartition(t, p, max(listed[(t, p)][1] - 1, listed[(t, p)][0])) for t, p in todo])
        deadline = time.monotonic() + timeout
        pending = set(todo)
        while pending and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if msg.error() is not None and msg.error().code() != _eof_code():
                raise KafkaSourceError(f"fetching {tp}: {msg.error()}")
            if tp in pending:
                _lo, hi = c.get_watermark_offsets(TopicPartition(*tp), cached=True)
                if hi >= 0:
                    out[tp] = (out[tp][0], int(hi))
                    pending.discard(tp)
        if pending:
            raise KafkaSourceError(f"no fetch response for {sorted(pending)} within {timeout}s")
        return out
    finally:
        c.close()


def _eof_code() -> int:
    from confluent_kafka import KafkaError

    return int(KafkaError._PARTITION_EOF)


def resolve(
    spec: dict[str, dict[str, int]] | int, marks: Mapping[tuple[str, int], tuple[int, int]], name: str
) -> dict[str, dict[str, int]]:
    """Concrete offsets per partition; partitions missing from a JSON spec start at earliest."""
    out: dict[str, dict[str, int]] = {}
    for (t, p), (lo, hi) in sorted(marks.items()):
        if isinstance(spec, int):
            off = spec
        else:
            off = spec.get(t, {}).get(str(p), EARLIEST if name == "startingOffsets" else LATEST)
        off = lo if off == EARLIEST else hi if off == LATEST else off
        if not lo <= off <= hi:
            raise KafkaSourceError(f"option {name}: offset {off} of {t}/{p} is outside the available [{lo}, {hi}]")
        out.setdefault(t, {})[str(p)] = off
    if not isinstance(spec, int):
        unknown = [f"{t}/{p}" for t, ps in spec.items() for p in ps if (t, int(p)) not in marks]
        if unknown:
            raise KafkaSourceError(f"option {name}: unknown partition(s) {unknown}")
    return out


def share_budget(available: Mapping[Any, int], budget: int) -> dict[Any, int]:
    """How many of each partition's ``available`` records a micro-batch of at most ``budget``
    takes: shares proportional to what is available (largest remainders, ties by key), so
    partitions that are behind progress together and no partition runs ahead in event time.

    >>> share_budget({"a": 300, "b": 100}, 200)
    {'a': 150, 'b': 50}
    >>> share_budget({"a": 5, "b": 0}, 200)
    {'a': 5, 'b': 0}
    """
    total = sum(available.values())
    if total <= budget:
        return dict(available)
    exact = {k: v * budget / total for k, v in available.items()}
    out = {k: int(x) for k, x in exact.items()}
    left = budget - sum(out.values())
    for k in sorted(available, key=lambda k: (out[k] - exact[k], k))[:left]:
        out[k] += 1
    return out


# -- reading ---------------------------------------------------------------------------------------
class KafkaRange(InputPartition):
    """``[start, end)`` of one topic partition."""

    def __init__(self, topic: str, partition: int, start: int, end: int) -> None:
        super().__init__((topic, partition, start, end))
        self.topic, self.partition, self.start, self.end = topic, partition, start, end


def ranges(start: Mapping[str, Mapping[str, int]], end: Mapping[str, Mapping[str, int]]) -> list[KafkaRange]:
    out = []
    for t, parts in sorted(end.items()):
        for p, e in sorted(parts.items(), key=lambda kv: int(kv[0])):
            s = start.get(t, {}).get(p, 0)
            if e > s:
                out.append(KafkaRange(t, int(p), s, e))
    return out


def _ts(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def consume_range(
    conf: Mapping[str, Any],
    r: KafkaRange,
    poll_timeout_ms: int,
    batch: int = 10_000,
    marks: dict[str, int] | None = None,
) -> Iterator[list[Any]]:
    """The messages of ``[r.start, r.end)`` in offset order, as lists of up to ``batch`` messages
    (confluent-kafka ``Message`` objects without errors).

    Offsets missing from the log (compaction, transaction markers) are skipped, and a stall
    longer than ``poll_timeout_ms`` is an error. Per message only the error is looked at (one
    ``map``); offsets only of a list's last message, and of the messages past the range end.
    ``marks["high"]`` gets the partition's high watermark from the last fetch response (what the
    consumer's lag is measured against).
    """
    from confluent_kafka import Message, TopicPartition

    c = _consumer(conf, {"fetch.wait.max.ms": 50})
    try:
        c.assign([TopicPartition(r.topic, r.partition, r.start)])
        next_off = r.start
        last_progress = time.monotonic()
        eof = _eof_code()
        while next_off < r.end:
            msgs = c.consume(batch, timeout=0.2)
            errors = list(map(Message.error, msgs))
            at_end = False
            # (not errors.count(None): comparing a KafkaError with None raises inside list.count)
            if any(map(is_not, errors, repeat(None))):
                kept = []
                for m, err in zip(msgs, errors, strict=True):
                    if err is None:
                        kept.append(m)
                    elif err.code() == eof:
                        # nothing beyond this point: the rest of the range is gone (compaction, markers)
                        hi = c.get_watermark_offsets(TopicPartition(r.topic, r.partition), cached=True)[1]
                        at_end = at_end or hi >= r.end
                    else:
                        raise KafkaSourceError(f"reading {r.topic}/{r.partition}: {err}")
                msgs = kept
            if msgs:
                last = msgs[-1].offset()
                if last >= r.end:  # (rare: the range ends inside this list) keep the offsets before the end
                    msgs = [m for m in msgs if m.offset() < r.end]
                    next_off = r.end
                else:
                    next_off = last + 1
            if at_end:
                next_off = r.end
            if msgs:
                last_progress = time.monotonic()
                yield msgs
            elif next_off < r.end and (time.monotonic() - last_progress) * 1000 > poll_timeout_ms:
                raise KafkaSourceError(
                    f"{r.topic}/{r.partition}: no record at offset {next_off} (range ends at {r.end}) "
                    f"within pollTimeoutMs={poll_timeout_ms}"
                )
        if marks is not None:
            marks["high"] = int(c.get_watermark_offsets(TopicPartition(r.topic, r.partition), cached=True)[1])
    finally:
        c.close()


def read_range(conf: Mapping[str, Any], r: KafkaRange, poll_timeout_ms: int) -> Iterator[tuple[Any, ...]]:
    """Every record of ``[r.start, r.end)`` as a row of :data:`SCHEMA` (see :func:`consume_range`)."""
    for msgs in consume_range(conf, r, poll_timeout_ms):
        for m in msgs:
            ts_type, ts = m.timestamp()
            yield (m.key(), m.value(), r.topic, r.partition, m.offset(), _ts(ts) if ts_type != 0 else None)


def _poll_timeout(options: Mapping[str, str]) -> int:
    raw = options.get("polltimeoutms", "10000")
    try:
        v = int(raw)
    except ValueError:
        raise KafkaSourceError(f"option pollTimeoutMs: {raw!r} is not a number of milliseconds") from None
    if v <= 0:
        raise KafkaSourceError("option pollTimeoutMs must be positive")
    return v


class KafkaBatchReader(DataSourceReader):
    def __init__(self, options: Mapping[str, str]) -> None:
        self.conf = client_config(options)
        self.topics = topics_of(options)
        self.poll_timeout_ms = _poll_timeout(options)
        starting = parse_offsets(options.get("startingoffsets"), EARLIEST, "startingOffsets")
        ending = parse_offsets(options.get("endingoffsets"), LATEST, "endingOffsets")
        if ending == EARLIEST:
            raise KafkaSourceError("option endingOffsets: 'earliest' is not allowed (the range would be empty)")
        parts = partitions_of(self.conf, self.topics)
        marks = watermarks(self.conf, [(t, p) for t, ps in parts.items() for p in ps])
        self.start = resolve(starting, marks, "startingOffsets")
        self.end = resolve(ending, marks, "endingOffsets")
        for t, ps in self.start.items():
            for p, s in ps.items():
                if s > self.end[t][p]:
                    raise KafkaSourceError(f"startingOffsets {s} of {t}/{p} is after endingOffsets {self.end[t][p]}")

    def partitions(self) -> list[KafkaRange]:
        return ranges(self.start, self.end)

    def read(self, partition: InputPartition) -> Iterator[tuple[Any, ...]]:
        assert isinstance(partition, KafkaRange)
        yield from read_range(self.conf, partition, self.poll_timeout_ms)


class KafkaStreamReader(DataSourceStreamReader):
    """Offsets are ``{topic: {partition: next offset}}``; Spark checkpoints them."""

    def __init__(self, options: Mapping[str, str]) -> None:
        self.conf = client_config(options)
        self.topics = topics_of(options)
        self.poll_timeout_ms = _poll_timeout(options)
        self.starting = parse_offsets(options.get("startingoffsets"), LATEST, "startingOffsets")
        raw_max = options.get("maxoffsetspertrigger")
        self.max_per_trigger = int(raw_max) if raw_max else None
        if self.max_per_trigger is not None and self.max_per_trigger <= 0:
            raise KafkaSourceError("option maxOffsetsPerTrigger must be positive")

    def _marks(self) -> dict[tuple[str, int], tuple[int, int]]:
        parts = partitions_of(self.conf, self.topics)
        return watermarks(self.conf, [(t, p) for t, ps in parts.items() for p in ps])

    def initialOffset(self) -> dict[str, dict[str, int]]:
        return resolve(self.starting, self._marks(), "startingOffsets")

    def getDefaultReadLimit(self) -> Any:
        from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

        return ReadMaxRows(self.max_per_trigger) if self.max_per_trigger else ReadAllAvailable()

    def latestOffset(self, start: dict[str, Any] | None = None, limit: Any = None) -> dict[str, dict[str, int]]:
        marks = self._marks()
        latest = resolve(LATEST, marks, "latest")
        self._latest = latest
        max_rows = getattr(limit, "max_rows", None)  # ReadMaxRows
        if start is None or max_rows is None:
            return latest
        # a partition added since the start begins at its earliest offset
        begin = {(t, p): start.get(t, {}).get(p, marks[(t, int(p))][0]) for t, ps in latest.items() for p in ps}
        available = {tp: max(latest[tp[0]][tp[1]] - s, 0) for tp, s in begin.items()}
        taken = share_budget(available, int(max_rows))
        out: dict[str, dict[str, int]] = {}
        for (t, p), s in sorted(begin.items()):
            out.setdefault(t, {})[p] = s + taken[(t, p)]
        return out

    def reportLatestOffset(self) -> dict[str, dict[str, int]] | None:
        """The latest offsets seen by the last :meth:`latestOffset` (Spark shows them in the query's
        progress, ``sources[].latestOffset``, next to the batch's ``endOffset``)."""
        return getattr(self, "_latest", None)

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> list[KafkaRange]:
        return ranges(start, end)

    def read(self, partition: InputPartition) -> Iterator[tuple[Any, ...]]:
        assert isinstance(partition, KafkaRange)
        yield from read_range(self.conf, partition, self.poll_timeout_ms)

    def commit(self, end: dict[str, Any]) -> None:
        """Nothing to do: the offsets live in Spark's checkpoint, not in a consumer group."""


class KafkaDataSource(DataSource):
    """``spark.read.format("streamdrift-kafka")`` / ``spark.readStream.format(...)``."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def reader(self, schema: Any) -> KafkaBatchReader:
        return KafkaBatchReader(_lower(self.options))

    def streamReader(self, schema: Any) -> KafkaStreamReader:
        return KafkaStreamReader(_lower(self.options))


def _lower(options: Mapping[str, str]) -> dict[str, str]:
    """Spark's options are case-insensitive: look them up by their lower-case names."""
    return {k.lower(): v for k, v in options.items()}


def register(spark: Any) -> None:
    spark.dataSource.register(KafkaDataSource)


def read_kafka(spark: Any, options: Mapping[str, str], *, streaming: bool = False, fmt: str = NAME) -> Any:
    """A DataFrame of the topic with this source (default) or Spark's native ``kafka`` format."""
    if fmt not in (NAME, "kafka"):
        raise KafkaSourceError(f"format {fmt!r}: use {NAME!r} or 'kafka' (the JVM connector)")
    reader = spark.readStream if streaming else spark.read
    if fmt == NAME:
        register(spark)
        return reader.format(NAME).options(**options).load()
    opts = {k: v for k, v in options.items() if k not in ("pollTimeoutMs",)}
    df = reader.format("kafka").options(**opts).load()
    return df.select("key", "value", "topic", "partition", "offset", "timestamp")
