"""``events.format: avro``: the consumer on the real broker, the messages Confluent-framed Avro made by
confluent-kafka's real ``AvroSerializer`` against its in-memory schema registry client (no registry
server can run here; the same client object is handed to the consumer). Writer schemas change
mid-stream; unknown schema ids and undecodable payloads land in the dead-letter topic with their own
reason codes; the statistics equal ``run_local`` on the events as the deserializer gives them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from detectors.evaluate import WINDOW_STATISTICS
from stream.service.consumer import DriftConsumer, WindowOutput
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve import (
    TopicReader,
    assert_same_records,
    build_reference,
    expected_records,
    make_events,
    produce,
    topics_for,
    write_config,
)
from tests.unit.test_stream_avro import Registry, event_schema

pytestmark = pytest.mark.integration


def _schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    feats = {"x": ["null", "double"], "y": ["null", "double"], "c": ["null", "string"]}
    top = {"timestamp": "long", "country": "string", "score": "double", "label": "int"}

    def schema(features: dict[str, Any], extra_top: dict[str, Any] | None = None) -> dict[str, Any]:
        f = {"type": "record", "name": "Features", "fields": [{"name": k, "type": v} for k, v in features.items()]}
        return event_schema(f, **{**top, **(extra_top or {})})

    v1 = schema(feats)
    v2 = schema({**feats, "extra": ["null", "string"]}, {"request_id": "string"})  # adds fields
    v3 = schema({k: v for k, v in feats.items() if k != "y"})  # removes feature y
    return v1, v2, v3


def counted(registry: CollectorRegistry) -> float:
    """Events the consumer has finished with (a step counts them once it is done)."""
    get = registry.get_sample_value
    return sum(get("streamdrift_events_total", {"monitor": "it", "outcome": o}) or 0 for o in ("valid", "invalid"))


def test_avro_stream_with_evolving_schemas_and_dead_letters(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"avro-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    reg = Registry()
    v1, v2, v3 = (reg.serializer(s, topics["events"]) for s in _schemas())
    events = make_events(3000, drift_at=1500, seed=41)
    values: list[bytes] = []
    as_read: list[dict[str, Any]] = []  # each event as the deserializer gives it back
    bad: dict[str, int] = {"unknown_schema": 0, "not_avro": 0}
    for i, e in enumerate(events):
        e = {**e, "features": {"y": None, **e["features"]}}
        era = i * 3 // len(events)  # v1, then v2, then v3 (a writer that dropped y)
        if era == 0:
            values.append(v1(e))
            as_read.append(e)
        elif era == 1:
            values.append(v2({**e, "request_id": f"r{i}", "features": {**e["features"], "extra": "z"}}))
            as_read.append(e)
        else:
            dropped = {**e, "features": {k: v for k, v in e["features"].items() if k != "y"}}
            values.append(v3(dropped))
            as_read.append(dropped)
        if i % 400 == 7:
            values.append(b"\x00" + (999).to_bytes(4, "big") + values[-1][5:])  # an id the registry never had
            bad["unknown_schema"] += 1
        if i % 500 == 11:
            values.append(values[-1][:-4])  # truncated
            values.append(json.dumps(e).encode())  # JSON on an Avro topic
            bad["not_avro"] += 2
    produce(kafka_bootstrap, topics["events"], values)
    path, data = write_config(
        tmp_path, kafka_bootstrap, topics, events={"format": "avro"}, concept={"detector": "none"}
    )
    data["schema_registry"] = {"url": "mock://unused", "username": "u", "password": "s3cret-Value"}
    path.write_text(yaml.safe_dump(data))
    want = [
        r for r in expected_records(as_read, data, ref, events[-1]["timestamp"]) if r["statistic"] in WINDOW_STATISTICS
    ]
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    assert "s3cret-Value" not in repr(config.schema_registry) and "**********" in repr(config.schema_registry)
    outputs: list[WindowOutput] = []
    registry = CollectorRegistry()
    consumer = DriftConsumer(
        config, registry=registry, on_output=outputs.append, serve_metrics=False, schema_registry=reg.client
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while (
            sum(len(o.records) for o in outputs) < len(want) or counted(registry) < len(values)
        ) and time.monotonic() < deadline:
            assert thread.is_alive(), "the consumer stopped"
            time.sleep(0.05)
        assert_same_records([r for o in outputs for r in o.records], want)
        assert consumer.stats.valid == len(events)
        for code, n in bad.items():
            assert registry.get_sample_value("streamdrift_dead_letters_total", {"monitor": "it", "reason": code}) == n
        assert registry.get_sample_value("streamdrift_events_total", {"monitor": "it", "outcome": "invalid"}) == sum(
            bad.values()
        )
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    dlq = TopicReader(kafka_bootstrap, topics["dlq"])
    deadline = time.monotonic() + 30
    while len(dlq.messages) < sum(bad.values()) and time.monotonic() < deadline:
        dlq.poll(0.5)
    codes: dict[str, int] = {}
    for m in dlq.messages:
        h = dict(m.headers())
        codes[h["streamdrift.reason_code"].decode()] = codes.get(h["streamdrift.reason_code"].decode(), 0) + 1
        if h["streamdrift.reason_code"] == b"unknown_schema":
            assert h["streamdrift.reason"] == b"schema id 999 is not in the schema registry"
            assert m.value()[:5] == b"\x00\x00\x00\x03\xe7"  # the message itself, as it came
    dlq.close()
    assert codes == bad
