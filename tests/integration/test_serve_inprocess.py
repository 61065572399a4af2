"""The in-process API (what ``streamdrift demo`` builds on): outputs, the final checkpoint and the commit of the
offsets under the group when it stops (with manual assignment: no group membership), a silent partition."""

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
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from detectors.evaluate import WINDOW_STATISTICS, alert_id
from stream.service.consumer import DriftConsumer, WindowOutput
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve import (
    assert_same_records,
    build_reference,
    expected_records,
    make_events,
    produce,
    topics_for,
    write_config,
)
from tests.reliability.harness import newest_checkpoint

pytestmark = pytest.mark.integration


def test_in_process_consumer_outputs_and_a_final_checkpoint_and_commit(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"inproc-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    events = make_events(3000, drift_at=1500, seed=33)
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events])
    path, data = write_config(tmp_path, kafka_bootstrap, topics, state={"checkpoint_interval": "1h"})
    want = [
        r for r in expected_records(events, data, ref, events[-1]["timestamp"]) if r["statistic"] in WINDOW_STATISTICS
    ]
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    outputs: list[WindowOutput] = []
    registry = CollectorRegistry()
    consumer = DriftConsumer(config, registry=registry, on_output=outputs.append, serve_metrics=False)
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", consumer.run(stop)))
    caplog.set_level(logging.INFO, logger="streamdrift")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(len(o.records) for o in outputs) < len(want) and time.monotonic() < deadline:
            assert thread.is_alive(), "the consumer stopped"
            time.sleep(0.05)
        got = [r for o in outputs for r in o.records]
        assert_same_records(got, want)
        alerts = [a for o in outputs for a in o.alerts if a["statistic"] != "adwin"]
        assert {a["alert_id"] for a in alerts} == {alert_id(r) for r in want if r["drift"]}
        assert {a["feature"] for a in alerts} == {"x"}
        ok = {"monitor": "it", "outcome": "ok"}
        assert registry.get_sample_value("streamdrift_checkpoints_total", ok) == 0  # interval is 1h
        assert registry.get_sample_value("streamdrift_active", {"monitor": "it"}) == 1
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert result["stats"].valid == len(events)
    assert result["stats"].checkpoints == 1  # the final one
    assert registry.get_sample_value("streamdrift_checkpoints_total", {"monitor": "it", "outcome": "ok"}) == 1
    doc = newest_checkpoint(tmp_path / "state")
    assert doc is not None and doc["state"]["offsets"] == [[0, len(events)]]
    # the offsets are committed under the group (manual assignment, no membership: what Kafka's tools read)
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": data["kafka"]["group_id"]})
    try:
        committed = c.committed([TopicPartition(topics["events"], 0)], timeout=10)
    finally:
        c.close()
    assert committed[0].offset == len(events)
    assert "consuming " + topics["events"] + " partitions 0@earliest (earliest)" in caplog.text


def test_a_silent_partition_stops_holding_windows_back(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"idle-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    events = make_events(2000, drift_at=1000, seed=44)
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events], partitions=1)  # p0 only
    path, data = write_config(tmp_path, kafka_bootstrap, topics, window={"idle_timeout": "1500ms"})
    want = [
        r for r in expected_records(events, data, ref, events[-1]["timestamp"]) if r["statistic"] in WINDOW_STATISTICS
    ]
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    outputs: list[WindowOutput] = []
    consumer = DriftConsumer(config, registry=CollectorRegistry(), on_output=outputs.append, serve_metrics=False)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(len(o.records) for o in outputs) < len(want) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.partitions == {0, 1}
        assert_same_records([r for o in outputs for r in o.records], want)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
