"""Producing to and reading from the test broker (helpers of the Spark tests)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes, int, int]], **conf: Any
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Produce ``(key, value, partition, timestamp_ms)``; return ``(partition, offset, key, value)`` as delivered."""
    delivered: list[tuple[int, int, bytes | None, bytes]] = []
    errors: list[str] = []

    def cb(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    for key, value, partition, ts in items:
        p.produce(topic, key=key, value=value, partition=partition, timestamp=ts, on_delivery=cb)
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors
    return delivered


def read_all(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 20.0) -> list[Any]:
    """Every message of a topic (until end of every partition)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < partitions and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                    continue
                raise AssertionError(str(m.error()))
            out.append(m)
    finally:
        c.close()
    assert len(eof) == partitions, f"did not reach the end of {topic}"
    return out
