"""``streamdrift serve`` with a labels topic, against the real broker: the performance records equal
``backfill --labels`` (:func:`detectors.engine.run_local_labels`, what the backfill runs) on the same
data; malformed label messages go to the dead-letter topic with a reason code and are counted; an
empty labels topic does not stop drift windows from closing, and when labels stop the performance
windows are emitted by the ``max_delay`` rule."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig
from detectors.engine import run_local_labels
from detectors.events import decode_events, decode_labels
from detectors.performance import FEATURE, PerformanceProfile
from detectors.reference import ReferenceProfile
from stream.records import read_records
from stream.service.consumer import DriftConsumer, RunStats, WindowOutput
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.reliability.harness import read_topic

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 60 * MIN


def scored(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(int)
    decided = np.where(rng.random(n) < accuracy, y, 1 - y)
    return np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0), y


def build_reference(path: Path, seed: int = 5) -> ReferenceProfile:
    """A profile of feature x with the baseline's performance (accuracy 0.9)."""
    rng = np.random.default_rng(seed)
    ref = ReferenceProfile.build({"x": rng.normal(size=20_000)}, features=["x"], fine_bins=30, coarse_bins=6)
    score, y = scored(rng, 20_000, 0.9)
    perf = PerformanceProfile.build(score, y, task="classification", threshold=0.5, replicates=500)
    ref = dataclasses.replace(ref, performance=perf)
    ref.save(path)
    return ref


def make_stream(
    n: int, seed: int, hours: float = 3.0, labelled_hours: float = 2.0, drop_at: float = 1.0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions over ``hours`` (accuracy 0.9, 0.8 from ``drop_at`` hours on) and, in arrival order, the
    labels of those of the first ``labelled_hours``, 1 to 20 minutes late; then one label of an unknown id
    20 minutes after the last (an orphan that moves the labels' time past the last windows' ticks)."""
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, int(hours * HOUR), n))
    score, y = scored(rng, n, 0.9)
    after = t >= T0 + drop_at * HOUR
    s2, y2 = scored(rng, int(after.sum()), 0.8)
    score[after], y[after] = s2, y2
    x = rng.normal(size=n)
    preds = [
        {"timestamp": int(t[i]), "id": f"p{i}", "score": float(score[i]), "features": {"x": float(x[i])}}
        for i in range(n)
    ]
    lab = np.flatnonzero(t < T0 + labelled_hours * HOUR)
    lt = t[lab] + rng.integers(MIN, 20 * MIN, len(lab))
    order = np.argsort(lt, kind="stable")
    labels = [{"timestamp": int(lt[j]), "id": f"p{int(lab[j])}", "label": int(y[lab[j]])} for j in order]
    labels.append({"timestamp": int(lt.max()) + 20 * MIN, "id": "nobody", "label": 0})
    return preds, labels


def monitor_doc(reference: Path, **labels: Any) -> dict[str, Any]:
    return {
        "monitor": "lab",
        "reference": str(reference),
        "events": {"prediction_field": "score"},
        "window": {"size": "10m", "idle_timeout": "600s"},
        "statistics": {"min_events": 30},
        "labels": {"max_delay": "30m", **labels},
    }


def serve_config(
    tmp: Path, bootstrap: str, topics: dict[str, str], name: str = "serve", **over: dict[str, Any]
) -> dict[str, Any]:
    data = monitor_doc(tmp / "ref.json", topic=topics["labels"])
    data.update(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic": topics["events"],
                "group_id": f"g-{uuid.uuid4().hex[:8]}",
                "batch_size": 500,
                "poll_timeout": "100ms",
            },
            "outputs": {
                "statistics_topic": topics["stats"],
                "alerts_topic": topics["alerts"],
                "dead_letter_topic": topics["dlq"],
                "statistics_file": str(tmp / f"{name}-stats.jsonl"),
            },
            "metrics": {"address": "127.0.0.1", "port": 0},
            "state": {"dir": str(tmp / f"{name}-state"), "checkpoint_interval": "200ms"},
        }
    )
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def topics_for(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("events", "labels", "stats", "alerts", "dlq")}


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions)
        if i % 1000 == 999:
            p.poll(0)
    assert p.flush(30) == 0


def expected(
    config: dict[str, Any], base: Path, preds: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """What ``backfill --labels`` computes on these files (its engine, in process)."""
    mon = MonitorConfig.from_mapping(config, base_dir=base)
    ref = ReferenceProfile.load(mon.reference)
    cols, errors = decode_events(preds, mon, ref, ["x"], now_ms=T0 + 100 * HOUR)
    assert not errors
    lab, lerr = decode_labels(labels, mon, now_ms=T0 + 100 * HOUR)
    assert not lerr
    records, tracker = run_local_labels(cols, lab, mon, ref)
    return records, tracker.counts


def norm(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


class InProcess:
    """A DriftConsumer in a thread, collecting its outputs."""

    def __init__(self, data: dict[str, Any], base: Path, **kw: Any) -> None:
        config = ServeConfig.from_mapping(data, base_dir=base, env={})
        self.registry = CollectorRegistry()
        self.outputs: list[WindowOutput] = []
        self.consumer = DriftConsumer(
            config, registry=self.registry, on_output=self.outputs.append, serve_metrics=False, **kw
        )
        self.stop = threading.Event()
        self.result: dict[str, RunStats] = {}
        self.thread = threading.Thread(target=lambda: self.result.setdefault("stats", self.consumer.run(self.stop)))
        self.thread.start()

    def records(self, kind: str = FEATURE) -> list[dict[str, Any]]:
        return [r for o in list(self.outputs) for r in o.records if (r["feature"] == FEATURE) == (kind == FEATURE)]

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.thread.is_alive(), "the consumer stopped"
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> RunStats:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.result["stats"]


def test_serve_joins_a_labels_topic_like_the_backfill(kafka_bootstrap: str, tmp_path: Path) -> None:
    build_reference(tmp_path / "ref.json")
    topics = topics_for(f"lab-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *(topics[k] for k in ("events", "stats", "alerts", "dlq")))
    create_topics(kafka_bootstrap, topics["labels"], partitions=1)
    preds, labels = make_stream(12_000, seed=3)
    bad = [b"not json", b'{"id": "p1", "label": 7, "timestamp": 1767225600000}', b'{"label": 1}']
    label_values = [json.dumps(r).encode() for r in labels]
    label_values[100:100] = bad  # (in the middle of the topic)
    data = serve_config(tmp_path, kafka_bootstrap, topics)
    want, counts = expected(data, tmp_path, preds, labels)
    want_perf = [r for r in want if r["feature"] == FEATURE]
    # `streamdrift backfill --labels` on the same data, as a user runs it, gives these records
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (tmp_path / "monitor.yaml").write_text(json.dumps(data))
    res = subprocess.run(
        [sys.executable, "-m", "stream.cli", "backfill", "--config", str(tmp_path / "monitor.yaml"), "--input",
         str(tmp_path / "preds.jsonl"), "--labels", str(tmp_path / "labels.jsonl"), "--output",
         str(tmp_path / "backfill.jsonl"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cli = [r for r in read_records(tmp_path / "backfill.jsonl") if r["feature"] == FEATURE]
    assert norm(cli) == norm(want_perf)
    assert len({r["window_start"] for r in want_perf}) >= 10
    assert any(r["drift"] for r in want_perf), "the drop in accuracy is flagged"
    # labels first (they wait for the predictions), then the predictions: serve must hold them
    produce(kafka_bootstrap, topics["labels"], label_values)
    produce(kafka_bootstrap, topics["events"], [json.dumps(p).encode() for p in preds])
    run = InProcess(data, tmp_path)
    try:
        run.wait(lambda: len(run.records()) >= len(want_perf), "the performance records")
        time.sleep(0.5)  # (nothing more may come)
        got = run.records()
        assert norm(got) == norm(want_perf)
        reg = run.registry
        dl = {
            code: reg.get_sample_value("streamdrift_dead_letters_total", {"monitor": "lab", "reason": code})
            for code in ("not_json", "bad_type", "missing_field")
        }
        assert dl == {"not_json": 1.0, "bad_type": 1.0, "missing_field": 1.0}
        c = run.consumer.labels
        assert c is not None
        now = c.counts
        for k in ("joined", "label_orphan", "duplicate_prediction", "unjoinable", "windows_emitted"):
            assert now[k] == counts[k], k
        # timeouts are counted when swept out (they may lag); what waited or timed out is the same
        assert now["label_timeout"] + now["pending"] == counts["label_timeout"] + counts["pending"]
        joined = reg.get_sample_value("streamdrift_label_joins_total", {"monitor": "lab", "outcome": "joined"})
        assert joined == counts["joined"] == len(labels) - 1
        acc = {r["window_start"]: r for r in got if r["statistic"] == "accuracy" and r["segment"] == {}}
        last = max(acc)
        g = reg.get_sample_value(
            "streamdrift_performance", {"monitor": "lab", "segment": "__all__", "metric": "accuracy"}
        )
        assert g == acc[last]["value"]
    finally:
        stats = run.close()
    assert stats.label_messages == len(label_values)
    assert stats.label_invalid == 3
    dlq = [json.loads(v) if v.startswith(b"{") else v for v in read_topic(kafka_bootstrap, topics["dlq"])]
    assert len(dlq) == 3
