"""Metric ownership: a process exports verdict and lag series only for what it currently owns.

A firing alert must not keep firing on a series nobody updates: a standby (a serve process waiting for
the state lock) exports none of the monitor's series until it takes over; a segment without events for
``metrics.segment_ttl_windows`` windows loses its verdict series.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from stream.service.consumer import DriftConsumer
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


#: what a standby may export (nothing of the monitor's state)
STANDBY_NAMES = {"streamdrift_active", "streamdrift_build_info"}


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {s.name for fam in registry.collect() for s in fam.samples}


def test_a_standby_exports_nothing_of_the_monitor_until_it_takes_over(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two in-process consumers of one monitor on the real broker, the same state dir: A takes the lock and
    consumes both partitions; B stands by (streamdrift_active 0, no verdict, lag, staleness or reference
    series). A stops: B takes over (active 1, lag of both partitions, verdicts of the windows it closes)."""
    build_reference(tmp_path / "ref.json")
    topics = topics_for(f"own-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    events = make_events(4000, drift_at=3000, seed=83)
    state = {"dir": str(tmp_path / "shared-state"), "checkpoint_interval": "200ms"}
    members = []
    for name in ("a", "b"):  # (each its own config file; the same reference, state dir and group)
        (tmp_path / name).mkdir()
        build_reference(tmp_path / name / "ref.json")
        members.append(_consumer(tmp_path / name, kafka_bootstrap, topics, state=state))
    a, b = members
    stops = {"a": threading.Event(), "b": threading.Event()}
    threads = {
        "a": threading.Thread(target=a.run, args=(stops["a"],)),
        "b": threading.Thread(target=b.run, args=(stops["b"],)),
    }

    def wait(cond: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert threads["b"].ident is None or threads["b"].is_alive(), "the standby stopped"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    caplog.set_level(logging.INFO, logger="streamdrift")
    try:
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events[:2000]], partitions=2)
        threads["a"].start()
        wait(lambda: a.partitions == {0, 1} and lag_partitions(a.registry) == {0, 1}, "A to own and read both")
        wait(lambda: len(verdict_segments(a.registry)) == 3, "A to close windows")
        threads["b"].start()
        wait(lambda: "standby: " in caplog.text, "B to find the lock held")
        time.sleep(2.5)  # (B tries the lock every second: it keeps standing by)
        assert caplog.text.count("standby: ") == 1  # (logged once per holder)
        assert b.registry.get_sample_value("streamdrift_active", {"monitor": "it"}) == 0
        assert sample_names(b.registry) == STANDBY_NAMES and b.partitions == set()
        assert a.registry.get_sample_value("streamdrift_active", {"monitor": "it"}) == 1
        stops["a"].set()
        threads["a"].join(timeout=60)
        t0 = time.monotonic()
        wait(lambda: b.registry.get_sample_value("streamdrift_active", {"monitor": "it"}) == 1, "B to take over")
        took = time.monotonic() - t0
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events[2000:]], partitions=2)
        wait(lambda: lag_partitions(b.registry) == {0, 1}, "B to read both partitions")
        wait(lambda: len(verdict_segments(b.registry)) == 3, "B to close windows")
        names = sample_names(b.registry)
        print(f"\ntake-over in {took:.1f} s; B exports {len(names)} series names")
        assert took < 5
        assert {"streamdrift_last_window_closed_timestamp_seconds", "streamdrift_reference_info"} <= names
    finally:
        for name in ("b", "a"):
            stops[name].set()
            if threads[name].ident is not None:
                threads[name].join(timeout=60)
    assert not any(t.is_alive() for t in threads.values())
