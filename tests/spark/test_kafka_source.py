"""The Python Kafka data source against a real broker: exact batch ranges, resumable streaming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.kafka_source import KafkaSourceError, register
from tests.conftest import create_topics
from tests.spark.kafka_util import produce

pytestmark = [pytest.mark.spark, pytest.mark.integration]

T0 = 1_767_225_600_000


def _produce_numbered(bootstrap: str, topic: str, n: int, start: int = 0) -> list[tuple[int, int, bytes | None, bytes]]:
    items = [(f"k{i}".encode(), f"v{i}".encode(), i % 2, T0 + i) for i in range(start, start + n)]
    # batched production: on the embedded broker ListOffsets(latest) is then wrong, the fetch high watermark is not
    return produce(bootstrap, topic, items, **{"linger.ms": 20, "batch.num.messages": 50})


def test_batch_read_of_an_offset_range_is_exact(spark: Any, kafka_bootstrap: str, topic_name: str) -> None:
    create_topics(kafka_bootstrap, topic_name, partitions=2)
    delivered = _produce_numbered(kafka_bootstrap, topic_name, 600)
    register(spark)
    base = spark.read.format("streamdrift-kafka").option("kafka.bootstrap.servers", kafka_bootstrap)
    base = base.option("subscribe", topic_name)

    everything = base.load()
    assert everything.schema.simpleString() == (
        "struct<key:binary,value:binary,topic:string,partition:int,offset:bigint,timestamp:timestamp>"
    )
    got_all = sorted((r.partition, r.offset, bytes(r.key), bytes(r.value)) for r in everything.collect())
    assert got_all == sorted(delivered)

    start = {"0": 17, "1": 250}
    end = {"0": 123, "1": -1}
    ranged = (
        base.option("startingOffsets", json.dumps({topic_name: start}))
        .option("endingOffsets", json.dumps({topic_name: end}))
        .load()
    )
    rows = ranged.collect()
    got = sorted((r.partition, r.offset, bytes(r.key), bytes(r.value)) for r in rows)
    want = sorted(d for d in delivered if (d[0] == 0 and 17 <= d[1] < 123) or (d[0] == 1 and d[1] >= 250))
    assert got == want and len(got) == (123 - 17) + (300 - 250)
    # the Kafka timestamp survives as a timestamp column
    r0 = min(rows, key=lambda r: (r.partition, r.offset))
    assert int(r0.timestamp.timestamp() * 1000) == T0 + int(bytes(r0.value)[1:])


def test_bad_options_name_the_option(spark: Any, kafka_bootstrap: str, topic_name: str) -> None:
    create_topics(kafka_bootstrap, topic_name, partitions=1)
    register(spark)

    def reader() -> Any:
        return spark.read.format("streamdrift-kafka").option("kafka.bootstrap.servers", kafka_bootstrap)

    with pytest.raises(Exception, match="option startingOffsets: 'yesterday'"):
        reader().option("subscribe", topic_name).option("startingOffsets", "yesterday").load().collect()
    with pytest.raises(Exception, match="option subscribe is required"):
        reader().load().collect()
    with pytest.raises(KafkaSourceError, match="endingOffsets"):
        from jobs.kafka_source import parse_offsets

        parse_offsets('{"t": {"0": "x"}}', -1, "endingOffsets")


def test_streaming_stop_and_restart_neither_loses_nor_repeats(
    spark: Any, kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_name, partitions=2)
    first = _produce_numbered(kafka_bootstrap, topic_name, 400)
    register(spark)
    ckpt, sink = tmp_path / "ckpt", tmp_path / "sink"
    sink.mkdir()

    def write_batch(df: Any, batch_id: int) -> None:
        # one file per batch id: a replayed batch overwrites its own file, so duplicates can
        # only come from overlapping offset ranges of different batches
        rows = [(r.partition, r.offset, bytes(r.value).decode()) for r in df.collect()]
        (sink / f"{batch_id:06d}.json").write_text(json.dumps(rows))

    def start() -> Any:
        df = (
            spark.readStream.format("streamdrift-kafka")
            .option("kafka.bootstrap.servers", kafka_bootstrap)
            .option("subscribe", topic_name)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", "90")
            .load()
        )
        return df.writeStream.foreachBatch(write_batch).option("checkpointLocation", str(ckpt)).start()

    q = start()
    q.processAllAvailable()
    q.stop()
    batches_before = len(list(sink.iterdir()))
    assert batches_before >= 5  # maxOffsetsPerTrigger really split the work
    second = _produce_numbered(kafka_bootstrap, topic_name, 300, start=400)
    q = start()
    q.processAllAvailable()
    q.stop()
    assert len(list(sink.iterdir())) > batches_before

    seen = [tuple(r) for f in sorted(sink.iterdir()) for r in json.loads(f.read_text())]
    want = sorted((p, o, v.decode()) for p, o, _k, v in first + second)
    assert len(seen) == len(want)  # no record twice
    assert sorted(seen) == want  # no record lost


def test_native_kafka_format_is_selectable(spark: Any, kafka_bootstrap: str, topic_name: str) -> None:
    from jobs.kafka_source import read_kafka

    opts = {"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name}
    # this machine has no JVM Kafka connector: selecting it reaches Spark's own lookup of "kafka"
    with pytest.raises(Exception, match="KAFKA_DATA_SOURCE_NOT_ENABLED"):
        read_kafka(spark, opts, fmt="kafka").collect()
    with pytest.raises(KafkaSourceError, match="format 'kafkaa'"):
        read_kafka(spark, opts, fmt="kafkaa")
