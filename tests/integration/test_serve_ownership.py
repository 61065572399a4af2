"""Metric ownership: a process exports verdict and lag series only for what it currently owns.

A firing alert must not keep firing on a series nobody updates: when a partition moves to another
process its lag series goes; when partition 0 (the closer role) moves, every verdict series goes;
a segment without events for ``metrics.segment_ttl_windows`` windows loses its verdict series.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Message, TopicPartition
from prometheus_client import CollectorRegistry

from stream.consumer import DriftConsumer
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve import build_reference, make_events, produce, topics_for, write_config

pytestmark = pytest.mark.integration

VERDICT_NAMES = (
    "streamdrift_statistic_value",
    "streamdrift_statistic_p_value",
    "streamdrift_drift_detected",
    "streamdrift_drift_severity",
)


def series(registry: CollectorRegistry, names: tuple[str, ...]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items()))) for fam in registry.collect() for s in fam.samples if s.name in names
    }


def verdict_segments(registry: CollectorRegistry) -> set[str]:
    return {dict(labels)["segment"] for _n, labels in series(registry, VERDICT_NAMES)}


def lag_partitions(registry: CollectorRegistry) -> set[int]:
    return {int(dict(labels)["partition"]) for _n, labels in series(registry, ("streamdrift_consumer_lag_messages",))}


def _consumer(tmp_path: Path, bootstrap: str, topics: dict[str, str], **overrides: Any) -> DriftConsumer:
    path, _data = write_config(tmp_path, bootstrap, topics, **overrides)
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    return DriftConsumer(config, registry=CollectorRegistry(), serve_metrics=False)


def _messages(topic: str, partition: int, events: list[dict[str, Any]], first_offset: int) -> list[Message]:
    now_ms = int(time.time() * 1000)
    return [
        Message(
            topic=topic,
            partition=partition,
            offset=first_offset + i,
            value=json.dumps(e).encode(),
            timestamp=(1, now_ms),
        )
        for i, e in enumerate(events)
    ]


def test_a_silent_segment_loses_its_verdict_series_and_gets_them_back(tmp_path: Path) -> None:
    build_reference(tmp_path / "ref.json")
    topics = topics_for("unused")
    consumer = _consumer(tmp_path, "127.0.0.1:1", topics, metrics={"segment_ttl_windows": 2})
    consumer.windows.assign([0])
    events = make_events(3000, drift_at=2500, seed=81)  # 20 ms apart: 500 events per 10 s window
    for e in events[1000:2000]:  # windows 2 and 3: only de
        e["country"] = "de"
    reg = consumer.registry
    seen: list[set[str]] = []
    for k in range(0, 3000, 250):  # half a window per batch
        consumer.process(_messages(topics["events"], 0, events[k : k + 250], k))
        seen.append(verdict_segments(reg))
    both, de = {"__all__", "country=de", "country=fr"}, {"__all__", "country=de"}
    # window j (events 500j..500j+499) closes with batch 2j+2 (its first event of window j+1); fr has no
    # events in windows 2 and 3: one silent window at batch 6, two (the ttl) at batch 8; back with window 4
    assert seen == [set(), set(), both, both, both, both, both, both, de, de, both, both]


def test_losing_partition_0_removes_every_verdict_series_and_revoked_lag(tmp_path: Path) -> None:
    build_reference(tmp_path / "ref.json")
    topics = topics_for("unused")
    consumer = _consumer(tmp_path, "127.0.0.1:1", topics)
    consumer.assigned = {0, 1}
    consumer.windows.assign([0, 1])
    events = make_events(2000, drift_at=1500, seed=82)
    for p in (0, 1):
        consumer.process(_messages(topics["events"], p, events[p::2], 0))
    consumer.process([])
    reg = consumer.registry
    assert verdict_segments(reg) == {"__all__", "country=de", "country=fr"}
    for p in (0, 1):  # (the lag comes from the broker's high watermark; without a broker, set as it would be)
        consumer.metrics.set_lag(topics["events"], p, 0)
    consumer._on_revoke(None, [TopicPartition(topics["events"], 1)])  # type: ignore[arg-type]
    assert lag_partitions(reg) == {0} and verdict_segments(reg) == {"__all__", "country=de", "country=fr"}
    consumer._on_revoke(None, [TopicPartition(topics["events"], 0)])  # type: ignore[arg-type]
    assert lag_partitions(reg) == set() and verdict_segments(reg) == set()
    assert series(reg, ("streamdrift_events_total",))  # (what is not per owned thing stays)


def test_after_a_rebalance_the_former_owner_exports_none_of_the_revoked_series(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two real consumers of one group on the real broker: A alone (closer, lag of both partitions),
    then B joins and the partitions split. Each exports lag series only for its own partition and
    verdict series only if it owns partition 0."""
    build_reference(tmp_path / "ref.json")
    topics = topics_for(f"own-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    events = make_events(4000, drift_at=3000, seed=83)
    state = {"dir": str(tmp_path / "shared-state"), "checkpoint_interval": "200ms"}
    group = {"group_id": f"g-{uuid.uuid4().hex[:8]}"}
    members = []
    for name in ("a", "b"):  # (each its own config file; the same reference, state dir and group)
        (tmp_path / name).mkdir()
        build_reference(tmp_path / name / "ref.json")
        members.append(_consumer(tmp_path / name, kafka_bootstrap, topics, state=state, kafka=group))
    a, b = members
    stops = {"a": threading.Event(), "b": threading.Event()}
    threads = {
        "a": threading.Thread(target=a.run, args=(stops["a"],)),
        "b": threading.Thread(target=b.run, args=(stops["b"],)),
    }

    def wait(cond: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert all(t.is_alive() for t in threads.values() if t.ident is not None), "a consumer stopped"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    try:
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events[:2000]], partitions=2)
        threads["a"].start()
        wait(lambda: a.assigned == {0, 1} and lag_partitions(a.registry) == {0, 1}, "A to own and read both")
        wait(lambda: len(verdict_segments(a.registry)) == 3, "A to close windows")
        threads["b"].start()
        wait(lambda: len(a.assigned) == 1 and len(b.assigned) == 1, "the partitions to split")
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events[2000:]], partitions=2)
        closer, other = (a, b) if 0 in a.assigned else (b, a)
        wait(lambda: len(verdict_segments(closer.registry)) == 3, "the closer to close windows")
        wait(lambda: lag_partitions(other.registry) == {1} and lag_partitions(closer.registry) == {0}, "lag")
        time.sleep(1.0)  # a few more batches and closes: nothing of what moved comes back
        revoked_from_a = {0, 1} - a.assigned
        print(f"\nrebalance: A kept {sorted(a.assigned)}, gave {sorted(revoked_from_a)} to B")
        assert lag_partitions(a.registry) == a.assigned
        assert lag_partitions(b.registry) == b.assigned
        assert verdict_segments(other.registry) == set()  # the non-closer exports no verdict at all
        assert verdict_segments(closer.registry) == {"__all__", "country=de", "country=fr"}
    finally:
        for name in ("b", "a"):
            stops[name].set()
            if threads[name].ident is not None:
                threads[name].join(timeout=60)
    assert not any(t.is_alive() for t in threads.values())
