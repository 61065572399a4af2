"""``streamdrift serve`` as a real subprocess against a real broker over TCP.

* end to end: a seeded stream with a known drift on one feature over two partitions; the
  statistics topic equals :func:`detectors.engine.run_local` on the same events, the
  drifted feature is flagged in the drifted windows only, alerts carry idempotent keys,
  /metrics agrees, and SIGTERM ends with a final checkpoint and committed offsets;
* malformed messages land in the dead-letter topic with reasons, the valid ones give the
  statistics of a stream without the bad ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from detectors.config import MonitorConfig
from detectors.engine import PARTITION_SEGMENT, run_local
from detectors.evaluate import WINDOW_STATISTICS, alert_id, parse_iso_ms
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.demo.broker import free_port
from stream.publish import DEAD_LETTER_MAX_BYTES
from stream.service.checkpoint import StateLock
from tests.conftest import create_topics
from tests.reliability.harness import kill, stop

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
STEP_MS = 20
WINDOW_MS = 10_000


def build_reference(path: Path) -> ReferenceProfile:
    rng = np.random.default_rng(101)
    ref = ReferenceProfile.build(
        {
            "x": rng.normal(0, 1, 6000),
            "y": rng.normal(5, 2, 6000),
            "c": rng.choice(["a", "b", "c"], 6000, p=[0.5, 0.3, 0.2]).tolist(),
        },
        features=["x", "y", "c"],
        categorical=["c"],
        fine_bins=40,
        coarse_bins=8,
    )
    ref.save(path)
    return ref


def make_events(n: int, drift_at: int, seed: int) -> list[dict[str, Any]]:
    """In time order; from ``drift_at`` on, x shifts by +1 sd and the model error grows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    x[drift_at:] += 1.0
    y = rng.normal(5, 2, n)
    y[rng.random(n) < 0.03] = np.nan  # missing, not zero
    c = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    country = rng.choice(["de", "fr"], n)
    label = (rng.random(n) < 0.5).astype(int)
    noise = np.where(np.arange(n) < drift_at, 0.1, 0.6)
    score = np.clip(label + rng.normal(0, 1, n) * noise, 0, 1)
    out = []
    for i in range(n):
        feats: dict[str, Any] = {"x": float(x[i]), "c": str(c[i])}
        if not np.isnan(y[i]):
            feats["y"] = float(y[i])
        out.append(
            {
                "timestamp": T0 + i * STEP_MS,
                "features": feats,
                "country": str(country[i]),
                "score": float(score[i]),
                "label": int(label[i]),
            }
        )
    return out


def monitor_section(reference: str, **window: Any) -> dict[str, Any]:
    return {
        "monitor": "it",
        "reference": reference,
        "events": {"segment_fields": ["country"], "prediction_field": "score", "label_field": "label"},
        "window": {"kind": "tumbling", "size": f"{WINDOW_MS}ms", "idle_timeout": "60s", **window},
        "statistics": {"min_events": 50},
        "concept": {"detector": "adwin", "params": {"delta": 0.001}},
    }


def write_config(tmp: Path, bootstrap: str, topics: dict[str, str], **overrides: Any) -> tuple[Path, dict[str, Any]]:
    data = monitor_section(str(tmp / "ref.json"))
    data.update(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic": topics["events"],
                "group_id": f"g-{uuid.uuid4().hex[:8]}",
                "batch_size": 500,
                "poll_timeout": "200ms",
                "extra": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            },
            "outputs": {
                "statistics_topic": topics["stats"],
                "alerts_topic": topics["alerts"],
                "dead_letter_topic": topics["dlq"],
                "statistics_file": str(tmp / "stats.jsonl"),
            },
            "metrics": {"address": "127.0.0.1", "port": free_port()},
            "state": {"dir": str(tmp / "state"), "checkpoint_interval": "500ms"},
        }
    )
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def start_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "--log-level", "INFO", "serve", "--config", str(config)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def topics_for(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("events", "stats", "alerts", "dlq")}


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 4_000_000})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions)
    assert p.flush(30) == 0


class TopicReader:
    """Reads a whole topic from the beginning, incrementally."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 1) -> None:
        self.c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.messages: list[Any] = []

    def poll(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in self.c.consume(1000, 0.1):
                if m.error() is None:
                    self.messages.append(m)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(m.value()) for m in self.messages]

    def close(self) -> None:
        self.c.close()


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out; serve log:\n{log.read_text()[-3000:]}")


def window_key(r: dict[str, Any]) -> tuple[Any, ...]:
    seg = json.dumps(r["segment"], sort_keys=True)
    index = r.get("window_index")
    return (r["window_start"], r["window_end"], -1 if index is None else index, seg, r["feature"], r["statistic"])


def expected_records(
    events: list[dict[str, Any]], config: dict[str, Any], ref: ReferenceProfile, closed_until_ms: int
) -> list[dict[str, Any]]:
    """run_local on the same events: the windows the watermark closed, plus concept records as serve makes
    them on a one-partition topic (its detector of partition 0 sees the events in offset order, here time
    order: run_local's detections, in records of segment kafka_partition 0)."""
    mc = MonitorConfig.from_mapping(config)
    layout = Layout(ref, mc.features.include)
    cols, errors = decode_events(events, mc, ref, layout.features)
    assert not errors
    recs = run_local(cols, mc, ref, layout)
    out = []
    for r in recs:
        if r["statistic"] in WINDOW_STATISTICS:
            if parse_iso_ms(r["window_end"]) <= closed_until_ms:
                out.append(r)
        else:
            assert r["segment"] == {}
            out.append({**r, "segment": {PARTITION_SEGMENT: "0"}})
    return out


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in got:
        k = window_key(r)
        if k in by_key:
            assert by_key[k] == r, f"a re-sent record differs: {k}"
        by_key[k] = r
    expected = {window_key(r): r for r in want}
    assert sorted(by_key) == sorted(expected)
    for k, r in expected.items():
        g = by_key[k]
        assert g.keys() == r.keys()
        for f, v in r.items():
            if isinstance(v, float):
                assert g[f] == pytest.approx(v, rel=1e-9, abs=1e-12), (k, f)
            else:
                assert g[f] == v, (k, f)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_end_to_end_drift_statistics_alerts_metrics_and_sigterm(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"e2e-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    n, drift_at = 6000, 3000
    events = make_events(n, drift_at, seed=5)
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events], partitions=2)
    config, data = write_config(tmp_path, kafka_bootstrap, topics)
    # each partition is in order; the watermark is the smaller of the two partitions' last times
    closed_until = min(events[-1]["timestamp"], events[-2]["timestamp"])
    want = expected_records(events, data, ref, closed_until)
    n_windows = len({(r["window_start"], json.dumps(r["segment"])) for r in want if r["statistic"] == "psi"})
    want_windows = [r for r in want if r["statistic"] in WINDOW_STATISTICS]

    log = tmp_path / "serve.log"
    proc = start_serve(config, log)
    stats = TopicReader(kafka_bootstrap, topics["stats"])
    try:

        def done() -> bool:
            stats.poll(0.2)
            return len({window_key(r) for r in stats.records()}) >= len(want_windows)

        wait_for(done, proc, log)
        time.sleep(1.0)  # let a checkpoint pass, then check nothing more arrives than expected
        stats.poll(0.5)
        got = [r for r in stats.records() if r["statistic"] in WINDOW_STATISTICS]
        assert_same_records(got, want_windows)
        # keys of the statistics topic are the stable window ids
        assert all(m.key().decode() == alert_id(json.loads(m.value())) for m in stats.messages)

        # the drifted feature is flagged in the drifted windows only; the others are not
        drift_ms = T0 + drift_at * STEP_MS
        for r in got:
            if r["feature"] == "x" and r["statistic"] == "ks":
                assert r["drift"] is (parse_iso_ms(r["window_start"]) >= drift_ms), r["window_start"]
            if r["feature"] in ("y", "c"):
                assert r["drift"] is False, r

        # the model error grows at drift_at: each partition's ADWIN (one per partition, over its events in
        # offset order) fires soon after, in a record of its partition
        concept = [r for r in stats.records() if r["statistic"] == "adwin"]
        for p in ("0", "1"):
            mine = [r for r in concept if r["segment"] == {"kafka_partition": p}]
            assert any(drift_ms < parse_iso_ms(r["window_end"]) <= drift_ms + 500 * STEP_MS for r in mine), concept
        assert all(set(r["segment"]) == {"kafka_partition"} for r in concept)

        # alerts: one per drifted record, keyed by its idempotent id
        alerts = TopicReader(kafka_bootstrap, topics["alerts"])
        alerts.poll(1.5)
        alert_ids = {m.key().decode() for m in alerts.messages}
        want_ids = {alert_id(r) for r in want_windows if r["drift"]}
        assert want_ids and want_ids <= alert_ids
        assert alert_ids - want_ids == {alert_id(r) for r in concept}
        alerts.close()

        # /metrics agrees with the records
        m = scrape(data["metrics"]["port"])
        lab = (("monitor", "it"),)
        assert m[("streamdrift_events_total", (*lab, ("outcome", "valid")))] == n
        assert m[("streamdrift_events_total", (*lab, ("outcome", "invalid")))] == 0
        assert m[("streamdrift_windows_closed_total", lab)] == n_windows
        assert m[("streamdrift_last_window_end_timestamp_seconds", lab)] == closed_until // WINDOW_MS * WINDOW_MS / 1000
        assert m[("streamdrift_window_size_seconds", lab)] == WINDOW_MS / 1000
        assert m[("streamdrift_assigned_partitions", lab)] == 2
        assert m[("streamdrift_active", lab)] == 1
        for p in ("0", "1"):
            assert m[("streamdrift_consumer_lag_messages", (*lab, ("partition", p), ("topic", topics["events"])))] == 0
        last = max(want_windows, key=lambda r: r["window_end"])["window_end"]
        for r in want_windows:
            if r["window_end"] != last:
                continue
            labels = tuple(
                sorted(
                    {
                        "monitor": "it",
                        "segment": ",".join(f"{k}={v}" for k, v in sorted(r["segment"].items())) or "__all__",
                        "feature": r["feature"],
                        "statistic": r["statistic"],
                    }.items()
                )
            )
            assert m[("streamdrift_statistic_value", labels)] == pytest.approx(r["value"], rel=1e-9)
            assert m[("streamdrift_drift_detected", labels)] == float(r["drift"])
        alerts_total = sum(v for (name, _), v in m.items() if name == "streamdrift_alerts_total")
        assert alerts_total == len(want_ids) + len(concept)
        assert m[("streamdrift_checkpoints_total", (*lab, ("outcome", "ok")))] >= 1
        assert ("streamdrift_build_info", (("version", "0.1.0"),)) in m

        # SIGTERM: clean exit, a final checkpoint, committed offsets at the end of each partition
        before = set((tmp_path / "state").glob("manifest-*"))
        assert stop(proc) == 0
        after = set((tmp_path / "state").glob("manifest-*"))
        assert after - before, "no final checkpoint on SIGTERM"
        final = json.loads(max(after).read_bytes().partition(b"\n")[2])
        assert final["state"]["offsets"] == [[0, n // 2], [1, n // 2]]
        lock = StateLock(tmp_path / "state")
        assert lock.try_acquire(), "serve exited without letting go of the state lock"
        lock.release()
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": data["kafka"]["group_id"]})
        committed = c.committed([TopicPartition(topics["events"], p) for p in (0, 1)], timeout=10)
        c.close()
        assert [tp.offset for tp in committed] == [n // 2, n // 2]
        assert "Traceback" not in log.read_text()
    finally:
        stats.close()
        kill(proc)


def test_malformed_messages_go_to_the_dead_letter_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"dlq-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    events = make_events(2000, drift_at=1000, seed=9)
    bad: dict[int, tuple[bytes, str]] = {
        10: (b"{not json", "not_json"),
        50: (b"[1, 2]", "not_object"),
        90: (json.dumps({"features": {"x": 1.0}, "country": "de"}).encode(), "missing_field"),
        130: (json.dumps({"timestamp": "noon", "features": {"x": 1.0}}).encode(), "bad_time"),
        170: (json.dumps({"timestamp": T0, "features": {"x": "1.5"}}).encode(), "bad_type"),
        210: (json.dumps({"timestamp": T0, "features": {"x": 1.0, "pad": "p" * 5000}}).encode(), "too_large"),
        250: (json.dumps({"timestamp": T0, "features": "x=1"}).encode(), "missing_field"),
        290: (json.dumps({"timestamp": T0, "features": {"x": 1.0}, "pad": "p" * (2 << 20)}).encode(), "too_large"),
    }
    values: list[bytes] = []
    positions: dict[int, str] = {}
    for i, e in enumerate(events):
        if i in bad:
            positions[len(values)] = bad[i][1]
            values.append(bad[i][0])
        values.append(json.dumps(e).encode())
    produce(kafka_bootstrap, topics["events"], values)
    config, data = write_config(tmp_path, kafka_bootstrap, topics, kafka={"max_event_bytes": 4096})
    want = [
        r for r in expected_records(events, data, ref, events[-1]["timestamp"]) if r["statistic"] in WINDOW_STATISTICS
    ]
    log = tmp_path / "serve.log"
    proc = start_serve(config, log)
    dlq = TopicReader(kafka_bootstrap, topics["dlq"])
    try:
        stats_file = tmp_path / "stats.jsonl"

        def done() -> bool:
            dlq.poll(0.1)
            if not stats_file.exists():
                return False
            lines = [json.loads(x) for x in stats_file.read_text().splitlines()]
            return len({window_key(r) for r in lines if r["statistic"] in WINDOW_STATISTICS}) >= len(want)

        wait_for(done, proc, log)
        assert stop(proc) == 0
        dlq.poll(1.0)
        got = [json.loads(x) for x in stats_file.read_text().splitlines()]
        assert_same_records([r for r in got if r["statistic"] in WINDOW_STATISTICS], want)
        assert len(dlq.messages) == len(bad)
        for m in dlq.messages:
            headers = {k: v.decode() for k, v in m.headers()}
            offset = int(headers["streamdrift.offset"])
            assert headers["streamdrift.reason_code"] == positions[offset]
            assert headers["streamdrift.reason"]
            assert headers["streamdrift.topic"] == topics["events"] and headers["streamdrift.partition"] == "0"
            if len(values[offset]) <= DEAD_LETTER_MAX_BYTES:
                assert m.value() == values[offset]  # the original bytes
            else:  # too big for a Kafka message: its beginning, and how long it was
                assert m.value() == values[offset][:DEAD_LETTER_MAX_BYTES]
                assert headers["streamdrift.truncated_from"] == str(len(values[offset]))
        text = log.read_text()
        assert "Traceback" not in text
        assert Counter(positions.values())["missing_field"] == 2
    finally:
        dlq.close()
        kill(proc)
