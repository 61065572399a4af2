"""Event times that cannot poison the watermark, and partitions of garbage that cannot stop windows
from closing, through the real consumer (on the real broker, or fed messages in process).

One event with a time in the wrong unit used to move its partition's watermark to the year
55,840: every later event was late, no window closed again, and the checkpoint kept the
poisoned watermark, so a restart did not help. Now such a time is dead-lettered
(``future_time`` / ``implausible_time``) before it reaches the windows: windows keep closing,
and no checkpoint holds a watermark built from a rejected event.
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
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from stream.service.consumer import DriftConsumer, WindowOutput
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve import (
    STEP_MS,
    T0,
    TopicReader,
    assert_same_records,
    build_reference,
    make_events,
    produce,
    topics_for,
    write_config,
)
from tests.reliability.harness import newest_checkpoint

pytestmark = pytest.mark.integration

WINDOW_STATS = ("psi", "ks", "chi2")
YEAR_2100_MS = 4_102_444_800_000


def _bad_times(unit: str) -> dict[int, tuple[Any, str | None]]:
    """Position -> (event time to send, the reason code it gets; None: accepted)."""
    return {
        1000: ((T0 + 1000 * STEP_MS) * 1000, "future_time" if unit == "ms" else None),  # its time in µs
        1600: (2024, "implausible_time"),  # a year
        2000: (YEAR_2100_MS, "future_time"),  # a producer's clock far ahead
        2500: ((T0 + 2500 * STEP_MS) * 1_000_000, "future_time" if unit == "ms" else None),  # in ns
    }


def _run(config: ServeConfig, until: Any, timeout: float = 90) -> tuple[list[WindowOutput], CollectorRegistry]:
    """Run an in-process consumer until ``until(outputs)`` holds; then stop it (final checkpoint)."""
    outputs: list[WindowOutput] = []
    registry = CollectorRegistry()
    consumer = DriftConsumer(config, registry=registry, on_output=outputs.append, serve_metrics=False)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not until(outputs):
            assert thread.is_alive(), "the consumer stopped"
            assert time.monotonic() < deadline, "windows stopped closing"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    return outputs, registry


def _window_records(outputs: list[WindowOutput]) -> list[dict[str, Any]]:
    return [r for o in outputs for r in o.records if r["statistic"] in WINDOW_STATS]


@pytest.mark.parametrize("unit", ["ms", "auto"])
def test_a_bad_unit_event_mid_stream_is_dead_lettered_and_windows_keep_closing(
    kafka_bootstrap: str, tmp_path: Path, unit: str
) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"time-{unit}-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    events = make_events(4000, drift_at=3000, seed=71)
    bad = _bad_times(unit)
    sent = [{**e, "timestamp": bad[i][0]} if i in bad else e for i, e in enumerate(events)]
    path, data = write_config(tmp_path, kafka_bootstrap, topics, events={"time_unit": unit})
    mc = MonitorConfig.from_mapping(data)
    layout = Layout(ref, mc.features.include)
    # what the reference semantics make of the stream (the Kafka timestamps are now: the same verdicts)
    cols, errors = decode_events(sent, mc, ref, layout.features)
    rejected = {i: code for i, (_t, code) in bad.items() if code is not None}
    assert [i for i, _reason in errors] == sorted(rejected)
    all_records = [r for r in run_local(cols, mc, ref, layout) if r["statistic"] in WINDOW_STATS]
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})

    # part 1 (the bad times at 1000 and 1600 among them); the consumer stops with a final checkpoint
    first = 2200
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in sent[:first]])
    last_valid_ms = events[first - 1]["timestamp"]
    want_1 = [r for r in all_records if _end_ms(r) <= last_valid_ms]
    assert any(_end_ms(r) > events[1600]["timestamp"] for r in want_1)  # windows after the bad events close
    outputs, registry = _run(config, lambda out: len(_window_records(out)) >= len(want_1))
    assert_same_records(_window_records(outputs), want_1)
    lab = {"monitor": "it"}
    codes = sorted(c for i, c in rejected.items() if i < first)
    for code in ("future_time", "implausible_time", "bad_time"):
        got = registry.get_sample_value("streamdrift_dead_letters_total", {**lab, "reason": code})
        assert got == codes.count(code), code
    # the checkpoint holds the watermark of the valid events only
    doc = newest_checkpoint(tmp_path / "state")
    assert doc is not None
    assert doc["state"]["offsets"] == [[0, first]]
    assert doc["state"]["windows"]["max_time"] == [[0, last_valid_ms]]

    # part 2, read by a restarted consumer from that checkpoint: windows go on closing
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in sent[first:]])
    last_ms = events[-1]["timestamp"]
    want_2 = [r for r in all_records if last_valid_ms < _end_ms(r) <= last_ms]
    assert want_2
    outputs, registry = _run(config, lambda out: len(_window_records(out)) >= len(want_2))
    assert_same_records(_window_records(outputs), want_2)
    doc = newest_checkpoint(tmp_path / "state")
    assert doc is not None and doc["state"]["windows"]["max_time"] == [[0, last_ms]]

    # the dead-letter topic has each rejected event with its reason code
    dlq = TopicReader(kafka_bootstrap, topics["dlq"])
    try:
        dlq.poll(1.5)
        got_codes = {
            int(h["streamdrift.offset"]): h["streamdrift.reason_code"]
            for h in ({k: v.decode() for k, v in m.headers()} for m in dlq.messages)
        }
    finally:
        dlq.close()
    assert got_codes == rejected


def _end_ms(record: dict[str, Any]) -> int:
    from detectors.evaluate import parse_iso_ms

    return parse_iso_ms(record["window_end"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("garbage", ["not_json", "future_time"])
def test_a_partition_of_garbage_goes_idle_and_windows_close(tmp_path: Path, garbage: str) -> None:
    """Partition 1 carries only messages that are dead-lettered; partition 0 valid events. After
    ``idle_timeout`` partition 1 is idle (it never had a watermark) and windows close on partition
    0's watermark; they keep closing as partition 0's events go on."""
    from confluent_kafka import Message

    build_reference(tmp_path / "ref.json")
    topics = topics_for("unused")
    path, _data = write_config(
        tmp_path, "127.0.0.1:1", topics, window={"idle_timeout": "5s"}, events={"time_unit": "ms"}
    )
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    clock = FakeClock()
    consumer = DriftConsumer(config, registry=CollectorRegistry(), clock=clock, serve_metrics=False)
    consumer.windows.assign([0, 1])  # (what the rebalance callback does)
    events = make_events(6000, drift_at=5000, seed=72)
    bad = b"not json" if garbage == "not_json" else json.dumps({**events[0], "timestamp": T0 * 1000}).encode()
    now_ms = int(time.time() * 1000)
    closed_at: list[float] = []
    offset = 0
    for step in range(30):  # one batch a second: 200 valid events on partition 0, 50 bad ones on partition 1
        msgs = [
            Message(
                topic=topics["events"],
                partition=0,
                offset=offset + i,
                value=json.dumps(e).encode(),
                timestamp=(1, now_ms),
            )
            for i, e in enumerate(events[step * 200 : (step + 1) * 200])
        ]
        msgs += [
            Message(topic=topics["events"], partition=1, offset=step * 50 + i, value=bad, timestamp=(1, now_ms))
            for i in range(50)
        ]
        offset += 200
        out = consumer.process(msgs)
        if out.records:
            closed_at.append(clock.now)
        clock.now += 1.0
    assert consumer.stats.invalid == 30 * 50
    assert consumer.windows.is_idle(1) and not consumer.windows.is_idle(0)
    # windows close once partition 1 has been idle for 5 s, and then with every window of partition 0
    assert closed_at and closed_at[0] <= 1000.0 + 6
    last_ms = events[30 * 200 - 1]["timestamp"]
    assert consumer.stats.windows_closed == 3 * ((last_ms - T0) // 10_000)  # every window, segments de, fr, all
