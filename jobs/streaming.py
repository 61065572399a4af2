"""The Structured Streaming job: window statistics from a Kafka topic, results back to Kafka.

Run it with spark-submit (Spark settings are spark-submit's, none is set here)::

    spark-submit --master local[2] \\
        --conf spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods \\
        jobs/streaming.py --config monitor.yaml --checkpoint /var/lib/streamdrift/spark-ckpt

It reads ``kafka.topic`` with the Python data source (``--kafka-format kafka`` selects
Spark's JVM connector where it is installed), decodes and bins every event on the
executors exactly as the backfill does (:func:`detectors.events.decode_events`, the
reference's edges), and aggregates counts per (event-time window, segment, histogram slot)
with a watermark of ``window.allowed_lateness``. In append mode a window is emitted once
the watermark passes its end; ``foreachBatch`` assembles each closed window's count vector,
evaluates it with :func:`detectors.evaluate.evaluate_counts`, and writes

* every window statistic record to ``outputs.statistics_topic`` (key: the record's
  idempotent id, :func:`detectors.evaluate.alert_id`), and
* every drifted record as an alert (:func:`detectors.evaluate.make_alert`) to
  ``outputs.alerts_topic`` (key: ``alert_id``).

Exactly-once by batch id: after a batch's messages are flushed, the job writes
``<checkpoint>/streamdrift/state.json`` holding the batch id and the segment router. A batch
whose id is not above that is skipped (Spark replays the last batch after a crash); a batch
that crashed half-way is re-run from the same offsets (Spark's checkpoint) and re-sends the
same keys and values, so a compacted topic or a consumer deduplicating by key sees each
record once. Kill the job at any point and start it again with the same ``--checkpoint``.

Differences from the consumer, by design of Structured Streaming
    * the watermark is global (max event time seen minus ``allowed_lateness``), not per
      partition; events behind it are dropped by Spark (not counted as late);
    * segments beyond ``segments.max_segments`` share ``__other__``; "first seen" is by
      closed window, then segment key (the consumer: by event);
    * rejected events are not dead-lettered, and the sequential (concept) detectors do not
      run here: they need one event-ordered stream (use the consumer or the backfill);
    * count windows are not supported (they need a global per-segment event order).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from detectors.engine import OTHER_SEGMENT, record_sort_key
from detectors.evaluate import alert_id, evaluate_counts, make_alert, window_records
from detectors.exceptions import StreamdriftError
from jobs.common import JobError, Monitor, decode_chunk, parse_json_value, record_line, segment_dict
from jobs.kafka_source import KafkaSourceError

BINNED_SCHEMA = "seg string, event_time timestamp, slots array<int>"
_ARROW_SCHEMA = pa.schema(
    [("seg", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")), ("slots", pa.list_(pa.int32()))]
)
OVERALL = ""  # the seg column of segment {}


# -- executors -------------------------------------------------------------------------------------
def bin_batches(monitor: Monitor, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Kafka rows (value, partition, offset, ts ms) -> one row per (event, segment) with its slots."""
    segmented = bool(monitor.segment_fields)
    for b in batches:
        if b.num_rows == 0:
            continue
        values = b.column("value").to_pylist()
        ts = b.column("ts").to_pylist()
        seqs = list(range(b.num_rows))
        d = decode_chunk(monitor, [parse_json_value(v) for v in values], seqs, ts)
        n = len(d.cols)
        if n == 0:
            continue
        segs: list[str] = []
        rows: list[int] = []
        if monitor.overall:
            segs.extend([OVERALL] * n)
            rows.extend(range(n))
        if segmented:
            segs.extend(json.dumps(list(k)) for k in d.cols.segments)
            rows.extend(range(n))
        idx = np.asarray(rows, dtype=np.int64)
        slots = d.slots[idx].astype(np.int32)
        width = slots.shape[1]
        offsets = pa.array(np.arange(0, (len(idx) + 1) * width, width, dtype=np.int32))
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(segs, pa.string()),
                pa.array(d.cols.time_ms[idx] * 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                pa.ListArray.from_arrays(offsets, pa.array(slots.reshape(-1))),
            ],
            schema=_ARROW_SCHEMA,
        )


def window_counts(spark: Any, monitor: Monitor, source: Any) -> Any:
    """The streaming aggregation: count per (window, seg, slot), watermarked by allowed lateness."""
    from pyspark.sql import functions as F

    cfg = monitor.config
    spec = monitor.spec
    if cfg.window.kind == "count":
        raise JobError("window.kind: count windows are not supported by the Spark streaming job")
    bc = spark.sparkContext.broadcast(monitor)
    raw = source.select("value", F.unix_millis("timestamp").alias("ts"))
    binned = raw.mapInArrow(lambda it: bin_batches(bc.value, it), BINNED_SCHEMA)
    size = f"{spec.size_ms} milliseconds"
    slide = f"{spec.slide_ms} milliseconds"
    w = F.window("event_time", size, slide) if spec.kind == "sliding" else F.window("event_time", size)
    return (
        binned.withWatermark("event_time", f"{cfg.window.allowed_lateness_ms} milliseconds")
        .select(w.alias("w"), "seg", F.explode("slots").alias("slot"))
        .groupBy("w", "seg", "slot")
        .count()
        .select(
            F.unix_millis(F.col("w.start")).alias("start"),
            F.unix_millis(F.col("w.end")).alias("end"),
            "seg",
            "slot",
            "count",
        )
    )


# -- driver: evaluation and output -----------------------------------------------------------------
class BatchWriter:
    """``foreachBatch`` handler: evaluate closed windows, publish records and alerts once per batch id."""

    def __init__(self, monitor: Monitor, checkpoint: str, producer_conf: Mapping[str, Any] | None) -> None:
        self.monitor = monitor
        self.state_path = Path(checkpoint) / "streamdrift" / "state.json"
        outputs = monitor.section("outputs")
        self.statistics_topic = outputs.get("statistics_topic")
        self.alerts_topic = outputs.get("alerts_topic")
        self.statistics_file = outputs.get("statistics_file")
        self.producer_conf = dict(producer_conf or {})
        if (self.statistics_topic or self.alerts_topic) and not self.producer_conf:
            raise JobError("outputs.statistics_topic/alerts_topic need kafka.bootstrap_servers in the config")
        if not (self.statistics_topic or self.alerts_topic or self.statistics_file):
            raise JobError("outputs: set statistics_topic, alerts_topic or statistics_file (nothing would be written)")

    # state: the last delivered batch id and the segment keys in order of first appearance
    def load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"batch_id": -1, "segments": []}
        doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        if doc.get("fingerprint") != self.monitor.reference.fingerprint:
            raise JobError(
                f"{self.state_path}: written against reference {doc.get('fingerprint')}, not the configured "
                f"{self.monitor.reference.fingerprint}; use a new --checkpoint for a new reference"
            )
        return doc

    def save_state(self, batch_id: int, segments: list[list[str]]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        doc = {"batch_id": batch_id, "segments": segments, "fingerprint": self.monitor.reference.fingerprint}
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def __call__(self, df: Any, batch_id: int) -> None:
        state = self.load_state()
        if batch_id <= state["batch_id"]:
            return  # delivered before a restart: Spark replays the last batch
        rows = df.collect()
        records, segments = self.evaluate(rows, [tuple(s) for s in state["segments"]])
        self.publish(records)
        self.save_state(batch_id, [list(s) for s in segments])

    def evaluate(
        self, rows: list[Any], known: list[tuple[str, ...]]
    ) -> tuple[list[dict[str, Any]], list[tuple[str, ...]]]:
        m = self.monitor
        size = m.layout.size
        vectors: dict[tuple[int, int, str], np.ndarray] = {}
        for r in rows:
            key = (int(r["start"]), int(r["end"]), r["seg"])
            v = vectors.get(key)
            if v is None:
                v = vectors[key] = np.zeros(size, dtype=np.int64)
            v[int(r["slot"])] += int(r["count"])
        # segment cap: first appearance by (window, key), carried across batches in the state
        cap = m.config.segments.max_segments
        order = list(known)
        seen = set(order)
        for _start, _end, seg in sorted(vectors, key=lambda k: (k[0], k[2])):
            if seg != OVERALL:
                key = tuple(json.loads(seg))
                if key not in seen:
                    seen.add(key)
                    order.append(key)
        kept = set(order[:cap])
        other = tuple(OTHER_SEGMENT for _ in m.segment_fields)
        merged: dict[tuple[int, int, tuple[str, ...] | None], np.ndarray] = {}
        for (start, end, seg), v in vectors.items():
            if seg == OVERALL:
                target: tuple[str, ...] | None = None
            else:
                key = tuple(json.loads(seg))
                target = key if key in kept else other
            k = (start, end, target)
            merged[k] = merged[k] + v if k in merged else v
        records: list[dict[str, Any]] = []
        for (start, end, seg), v in merged.items():
            results = evaluate_counts(m.layout, v, m.config.statistics)
            records.extend(
                window_records(
                    results,
                    monitor=m.config.monitor,
                    segment={} if seg is None else segment_dict(m, seg),
                    window_start_ms=start,
                    window_end_ms=end,
                    fingerprint=m.reference.fingerprint,
                )
            )
        records.sort(key=record_sort_key)
        return records, order

    def publish(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.statistics_file:
            p = Path(self.statistics_file)
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("a", encoding="utf-8") as fh:
                fh.writelines(record_line(r) + "\n" for r in records)
        if not (self.statistics_topic or self.alerts_topic):
            return
        from confluent_kafka import Producer

        # one producer per batch: flushed and dropped here, so none outlives the query
        producer = Producer({"acks": "all", "linger.ms": 5, **self.producer_conf})
        now_ms = int(time.time() * 1000)
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for r in records:
            if self.statistics_topic:
                producer.produce(self.statistics_topic, key=alert_id(r), value=record_line(r), on_delivery=delivered)
            if self.alerts_topic and r["drift"]:
                a = make_alert(r, now_ms)
                producer.produce(self.alerts_topic, key=a["alert_id"], value=record_line(a), on_delivery=delivered)
            producer.poll(0)
        remaining = producer.flush(30)
        if remaining or failures:
            raise JobError(f"publishing window records failed ({remaining} undelivered): {failures[:3]}")


def producer_config(monitor: Monitor) -> dict[str, Any]:
    k = monitor.section("kafka")
    if not k.get("bootstrap_servers"):
        return {}
    conf: dict[str, Any] = {"bootstrap.servers": str(k["bootstrap_servers"])}
    for ours in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "ssl_ca_location"):
        if k.get(ours):
            conf[ours.replace("_", ".")] = str(k[ours])
    for ours in ("ssl_certificate_location", "ssl_key_location"):
        if k.get(ours):
            conf["ssl." + ours[4:].replace("_", ".")] = str(k[ours])
    for key, value in (k.get("extra") or {}).items():
        conf[key] = value
    return conf


def start(
    spark: Any,
    monitor: Monitor,
    checkpoint: str,
    *,
    starting_offsets: str = "earliest",
    trigger_ms: int = 5000,
    kafka_format: str = "streamdrift-kafka",
    source_options: Mapping[str, str] | None = None,
) -> Any:
    """Start the query; returns the :class:`pyspark.sql.streaming.StreamingQuery`."""
    from jobs.backfill import kafka_options
    from jobs.kafka_source import read_kafka

    opts = kafka_options(monitor, {"startingOffsets": starting_offsets})
    opts.pop("endingOffsets", None)
    opts.update(source_options or {})
    source = read_kafka(spark, opts, streaming=True, fmt=kafka_format)
    counts = window_counts(spark, monitor, source)
    writer = BatchWriter(monitor, checkpoint, producer_config(monitor))
    return (
        counts.writeStream.outputMode("append")
        .option("checkpointLocation", checkpoint)
        .trigger(processingTime=f"{trigger_ms} milliseconds")
        .queryName(f"streamdrift-{monitor.config.monitor}")
        .foreachBatch(writer)
        .start()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streaming.py", description="streamdrift Structured Streaming job (spark-submit)")
    p.add_argument("--config", required=True, help="monitor YAML with kafka and outputs sections")
    p.add_argument("--checkpoint", required=True, help="Spark checkpointLocation (keep it to resume after a kill)")
    p.add_argument("--starting-offsets", default="earliest", help="first start only: earliest, latest or JSON")
    p.add_argument("--trigger", default="5s", help="micro-batch interval, e.g. 5s, 500ms")
    p.add_argument("--kafka-format", default="streamdrift-kafka", help="streamdrift-kafka (default) or kafka")
    args = p.parse_args(argv)
    from detectors.config import parse_duration_ms

    try:
        monitor = Monitor.load(args.config)
        trigger_ms = parse_duration_ms(args.trigger, "--trigger")
    except (StreamdriftError, JobError, ValueError) as exc:
        print(f"streaming: error: {exc}", file=sys.stderr)
        return 2
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"streamdrift-streaming-{monitor.config.monitor}").getOrCreate()
    try:
        query = start(
            spark,
            monitor,
            args.checkpoint,
            starting_offsets=args.starting_offsets,
            trigger_ms=trigger_ms,
            kafka_format=args.kafka_format,
        )
        query.awaitTermination()
    except (StreamdriftError, JobError, KafkaSourceError) as exc:
        print(f"streaming: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
