"""Three-way parity on the same in-order events: the local engine, the Spark backfill reading a
Kafka offset range through the Python data source, and the consumer (``streamdrift serve``'s
loop, in process)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.engine import record_sort_key, run_local
from detectors.evaluate import iso_ms
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from jobs.backfill import run_backfill
from jobs.common import Monitor
from stream.service.consumer import DriftConsumer, WindowOutput
from stream.settings import ServeConfig, load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce
from tests.spark.test_backfill_parity import assert_same_records

pytestmark = [pytest.mark.spark, pytest.mark.integration]


def test_local_spark_and_consumer_give_the_same_records(spark: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"parity-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, topic)
    config_path = write_monitor(
        tmp_path, events={"segment_fields": ["region"]}, segments={"overall": True, "max_segments": 2}
    )
    events = make_events(4000, seed=29, drift_from=2400, n_segments=3)
    flush = {**events[0], "timestamp": T0 + 3_600_000}  # closes every window of `events` in the consumer
    produce(kafka_bootstrap, topic, [(None, json.dumps(e).encode(), 0, T0) for e in [*events, flush]])

    # local engine
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, errors = decode_events(events, config, reference, layout.features)
    assert not errors
    want = run_local(cols, config, reference, layout)
    assert any(r["statistic"] == "adwin" for r in want) and any(r["drift"] for r in want)

    # Spark backfill over the offset range [0, len(events)) of the topic
    data = yaml.safe_load(config_path.read_text())
    data["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": topic}
    config_path.write_text(yaml.safe_dump(data))
    ending = json.dumps({topic: {"0": len(events)}})
    got_spark, summary = run_backfill(
        spark, Monitor.load(config_path), "kafka", kafka={"startingOffsets": "earliest", "endingOffsets": ending}
    )
    assert summary["valid"] == len(events) and summary["rejected"] == 0
    assert_same_records(got_spark, want)

    # the consumer, in process, until every window of `events` has closed
    data["kafka"].update(
        {
            "group_id": f"g-{uuid.uuid4().hex[:8]}",
            "poll_timeout": "200ms",
            "extra": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        }
    )
    data["state"] = {"dir": str(tmp_path / "state"), "checkpoint_interval": "1h"}
    serve = ServeConfig.from_mapping(data, base_dir=tmp_path, env={})
    outputs: list[WindowOutput] = []
    consumer = DriftConsumer(serve, on_output=outputs.append, serve_metrics=False)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    n_windows = sum(1 for r in want if r["statistic"] != "adwin")
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while sum(len(o.records) for o in outputs) < n_windows and time.monotonic() < deadline:
            assert thread.is_alive(), "the consumer stopped"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
    last = iso_ms(int(events[-1]["timestamp"]) + 1)
    records = sorted((r for o in outputs for r in o.records), key=record_sort_key)
    concept = [r for o in outputs for r in o.concept if r["window_end"] <= last]
    # (the consumer's detector is per partition: on this one-partition topic in time order, run_local's
    # detections, in records of the partition)
    assert concept and all(r["segment"] == {"kafka_partition": "0"} for r in concept)
    assert_same_records(records + [{**r, "segment": {}} for r in concept], want)
