"""Graceful SIGTERM mid-window, and a broker frozen (SIGSTOP) for longer than a session timeout.

* SIGTERM while a live stream flows (mid-window): serve finishes the batch, writes a final
  checkpoint, commits and exits 0; the committed offset equals the checkpoint's; a restart
  continues, and the final statistics equal :func:`run_local` over the whole stream;
* the embedded broker is SIGSTOPped for 1.5x librdkafka's session timeout while serve runs (serve uses
  manual assignment, no group membership, but commits to the group and reads metadata),
  then SIGCONTed: serve neither exits nor loses anything; the rest of the stream is produced
  after the pause and the final statistics equal :func:`run_local`.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.demo.broker import EmbeddedBroker
from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

N = 4000


def offsets_of(state: Path) -> dict[int, int]:
    return h.offsets(state)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def equals_local(tmp: Path, cfg: Path, events: list[dict[str, object]]) -> tuple[bool, int]:
    got = h.read_records(tmp / "serve-stats.jsonl")
    last_end = max(r["window_end"] for r in got)
    want = h.expected_records(events, cfg, last_end)
    return h.digest(got) == h.digest(want), len(h.latest_per_key(want))


def test_sigterm_mid_window_then_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(17)
    topics = h.topics_for(f"term-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp_path / "ref.json")
    events = h.make_events(N, seed=17, drift_at=N // 2)
    cfg = h.write_config(tmp_path, kafka_bootstrap, topics, group_id="g-term")
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    producer = h.PacedProducer(kafka_bootstrap, topics["events"], h.encode_events(events), 2, rate=300)
    proc = h.start_serve(cfg, log)
    producer.start()
    try:
        h.wait_for(lambda: "active: consuming" in log.read_text(), "assignment", 30, proc, log)
        time.sleep(rng.uniform(0.5, 2.0))
        t0 = time.monotonic()
        code = h.stop(proc)
        took = time.monotonic() - t0
        at_stop = offsets_of(state)
        done = committed(kafka_bootstrap, "g-term", topics["events"], 2)
        producer.check()
        proc = h.start_serve(cfg, log)
        h.wait_for(lambda: log.read_text().count("active: consuming") == 2, "the restart's assignment", 30, proc, log)
        h.wait_for(lambda: sum(offsets_of(state).values()) == N, "the restart to catch up", 60, proc, log)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    equal, n_records = equals_local(tmp_path, cfg, events)
    text = log.read_text()
    mid_window = sum(at_stop.values()) % (h.WINDOW_MS // h.STEP_MS) != 0
    print(
        f"\nSIGTERM mid-stream after {sum(at_stop.values())} of {N} events (mid-window: {mid_window}): exit {code} "
        f"in {took:.2f} s, final checkpoint offsets {at_stop} == committed {done}; after restart "
        f"{n_records} records equal run_local: {equal}"
    )
    assert code == 0
    assert "received SIGTERM" in text
    assert 0 < sum(at_stop.values()) < N
    assert done == at_stop
    assert equal


def test_broker_paused_longer_than_the_session_timeout(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        topics = h.topics_for("pause")
        create_topics(bootstrap, *topics.values())
        h.build_reference(tmp_path / "ref.json")
        events = h.make_events(N, seed=23, drift_at=N // 2)
        values = h.encode_events(events)
        cfg = h.write_config(tmp_path, bootstrap, topics, group_id="g-pause")
        session_s = 6.0
        state, log = tmp_path / "serve-state", tmp_path / "serve.log"
        h.produce(bootstrap, topics["events"], values[: N // 2])
        proc = h.start_serve(cfg, log)
        try:
            h.wait_for(lambda: sum(offsets_of(state).values()) == N // 2, "the first half", 60, proc, log)
            broker.pause()
            time.sleep(session_s * 1.5)
            alive_during = proc.poll() is None
            broker.resume()
            h.produce(bootstrap, topics["events"], values[N // 2 :])
            t0 = time.monotonic()
            h.wait_for(lambda: sum(offsets_of(state).values()) == N, "the second half", 90, proc, log)
            resumed_in = time.monotonic() - t0
            assert h.stop(proc) == 0
        finally:
            h.kill(proc)
    text = log.read_text()
    equal, n_records = equals_local(tmp_path, cfg, events)
    assignments = len(re.findall(r"consuming \S+ partitions", text))
    warnings = len(re.findall(r" WARNING ", text))
    print(
        f"\nbroker SIGSTOP {session_s * 1.5:.0f} s (session timeout {session_s:.0f} s): serve alive {alive_during}, "
        f"{assignments} assignments, {warnings} warnings logged, caught up {resumed_in:.1f} s after SIGCONT, "
        f"{n_records} records equal run_local: {equal}, nothing lost (offsets {N})"
    )
    assert alive_during
    assert assignments == 1  # (manual assignment: nothing to rebalance)
    assert equal
