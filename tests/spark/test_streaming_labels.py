"""The Structured Streaming job's late labels (jobs/labels_stream.py) on the real broker: Spark's
stream-stream join with watermarks pairs predictions and labels that come later, in later
micro-batches and across a restart on the same checkpoint; the performance and concept records
equal what the local ``backfill --labels`` computes on the same data."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.engine import run_local_labels
from detectors.events import decode_events, decode_labels
from detectors.histogram import Layout
from detectors.performance import FEATURE, PerformanceProfile
from detectors.reference import ReferenceProfile
from jobs.common import Monitor
from jobs.streaming import start
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce, read_all

pytestmark = [pytest.mark.spark, pytest.mark.integration]

MINUTE = 60_000
NOW = T0 + 30 * 86_400_000


def data(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """12.5 minutes of predictions (accuracy drops at the middle); labels 5 s to 5.5 min later in
    time order (max_delay 5 min: some too late), duplicate labels, labels of unknown ids, rejected
    labels, duplicate predictions and predictions without an id."""
    rng = np.random.default_rng(seed)
    preds: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i, ev in enumerate(make_events(3000, seed=seed)):
        ev = {k: v for k, v in ev.items() if k != "label"}
        y = int(rng.random() < 0.4)
        right = rng.random() < (0.9 if i < 1500 else 0.65)
        ev["score"] = float(np.clip(0.5 + ((y if right else 1 - y) - 0.5) * rng.uniform(0.05, 1.0), 0.0, 1.0))
        if i % 101 != 7:
            ev["id"] = f"p{i}"
        preds.append(ev)
        if i % 97 == 5:
            preds.append({**ev, "score": 0.5})  # a duplicate prediction
        if "id" not in ev:
            continue
        tl = int(ev["timestamp"]) + int(rng.integers(5_000, 330_000))
        labels.append({"timestamp": tl, "id": ev["id"], "label": y})
        if i % 29 == 4:
            labels.append({"timestamp": tl + 1_000, "id": ev["id"], "label": 1 - y})  # a second label: ignored
        if i % 31 == 6:
            labels.append({"timestamp": tl, "id": f"unknown{i}", "label": y})
        if i % 211 == 9:
            labels.append({"timestamp": tl, "id": ev["id"], "label": 7})  # rejected: not 0/1
    labels.sort(key=lambda r: r["timestamp"])
    return preds, labels


def key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["feature"], r["statistic"], r["window_start"], r["window_end"], sorted(r["segment"].items()))


def test_stream_stream_join_equals_the_local_backfill(spark: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    suffix = tmp_path.name[-8:].replace("_", "-")
    ptopic, ltopic, stats = f"pr-{suffix}", f"lb-{suffix}", f"st-{suffix}"
    create_topics(kafka_bootstrap, ptopic, ltopic, stats)
    config_path = write_monitor(
        tmp_path,
        events={"label_field": None},
        window={"kind": "tumbling", "size": "1m", "allowed_lateness": "0s"},
        labels={"topic": ltopic, "max_delay": "5m", "clock_skew": "10s", "min_coverage": 1.0, "min_labels": 50},
        concept={"detector": "adwin", "error": "misclassification", "params": {"delta": 0.002}},
    )
    rng = np.random.default_rng(99)
    y = (rng.random(20_000) < 0.4).astype(int)
    decided = np.where(rng.random(20_000) < 0.9, y, 1 - y)
    score = np.clip(0.5 + (decided - 0.5) * rng.uniform(0.05, 1.0, 20_000), 0.0, 1.0)
    ref = ReferenceProfile.load(tmp_path / "reference.json")
    perf = PerformanceProfile.build(score, y, task="classification", replicates=500)
    dataclasses.replace(ref, performance=perf).save(tmp_path / "reference.json")
    cfg = yaml.safe_load(config_path.read_text())
    cfg["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": ptopic}
    cfg["outputs"] = {"statistics_topic": stats}
    config_path.write_text(yaml.safe_dump(cfg))
    monitor = Monitor.load(config_path)

    preds, labels = data(seed=31)
    preds.append({**preds[0], "id": "flush", "timestamp": T0 + 60 * MINUTE})  # move both watermarks past all
    labels.append({"timestamp": T0 + 60 * MINUTE, "id": "flush-label", "label": 0})

    def send(p: list[dict[str, Any]], lab: list[dict[str, Any]]) -> None:
        produce(kafka_bootstrap, ptopic, [(None, json.dumps(e).encode(), 0, int(e["timestamp"])) for e in p])
        produce(kafka_bootstrap, ltopic, [(None, json.dumps(e).encode(), 0, int(e["timestamp"])) for e in lab])

    def run(slices: list[tuple[int, int]]) -> Any:
        job = start(spark, monitor, str(tmp_path / "ckpt"), trigger_ms=300, serve_metrics=False)
        assert job.labels_query is not None  # labels.topic starts the labels query beside the windows'
        try:
            for lo, hi in slices:  # predictions and the labels of the same stretch of time, then a micro-batch
                send(
                    [e for e in preds if lo <= e["timestamp"] < hi],
                    [e for e in labels if lo <= e["timestamp"] < hi],
                )
                job.processAllAvailable()
            assert job.exception() is None
        finally:
            job.stop()
        return job.registry

    cut = [T0 + k * 4 * MINUTE for k in range(5)] + [T0 + 61 * MINUTE]
    run([(cut[0], cut[1]), (cut[1], cut[2])])  # then a stop: the checkpoint is all that survives
    registry = run([(cut[2], cut[3]), (cut[3], cut[4]), (cut[4], cut[5])])

    published = [json.loads(m.value()) for m in read_all(kafka_bootstrap, stats)]
    got = [r for r in published if r["feature"] == FEATURE or r["statistic"] == "adwin"]
    assert len(published) > len(got)  # the window statistics, from the other query, on the same topic
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, _ = decode_events(preds, config, reference, layout.features, now_ms=NOW)
    labs, errors = decode_labels(labels, config, now_ms=NOW)
    assert len(errors) == len([i for i in range(3000) if i % 211 == 9 and i % 101 != 7])
    want, tracker = run_local_labels(cols, labs, config, reference)
    assert len(got) == len({(r["alert_id"] if "alert_id" in r else json.dumps(key(r))) for r in got})  # none twice
    got.sort(key=key)
    want.sort(key=key)
    assert [key(r) for r in got] == [key(r) for r in want]
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            if isinstance(v, float):
                assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-12), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)
    # not vacuous: 13 windows, the drop flagged, ADWIN on the joined labels, every kind of orphan
    perf = [r for r in want if r["feature"] == FEATURE]
    assert len({r["window_start"] for r in perf}) == 13
    assert any(r["drift"] for r in perf if r["statistic"] == "accuracy")
    assert any(r["statistic"] == "adwin" for r in want)
    counts = tracker.counts
    assert counts["label_orphan"] > 0 and counts["label_timeout"] > 0 and counts["duplicate_prediction"] > 0
    # the metrics of the second run: its joins, the last window's performance
    joined = registry.get_sample_value("streamdrift_label_joins_total", {"monitor": "spark-test", "outcome": "joined"})
    assert joined is not None and 0 < joined < counts["joined"]
    last = max((r for r in got if r["statistic"] == "accuracy"), key=lambda r: r["window_end"])
    acc = registry.get_sample_value(
        "streamdrift_performance", {"monitor": "spark-test", "segment": "__all__", "metric": "accuracy"}
    )
    assert acc == last["value"]


def test_performance_step_emits_after_max_delay_once_and_counts_duplicates(tmp_path: Path) -> None:
    """The stateful operator's logic alone (no Spark): a window's performance waits for end + max_delay
    behind the watermark, a second pair of an id is a duplicate, the state survives its bytes, and a
    prediction of an emitted window is late."""
    import pandas as pd

    from jobs.labels_stream import PerformanceStep, PerfState

    config = write_monitor(
        tmp_path,
        events={"label_field": None},
        labels={"topic": "labels", "max_delay": "5m", "min_labels": 1},
        concept={"detector": "none"},
    )
    monitor = Monitor.load(config)
    step = PerformanceStep(monitor)
    cols = ["kind", "h", "tp", "score", "seg", "y", "tl", "loff", "poff", "reason"]

    def row(kind: str, h: int, tp: int, score: float | None = None, y: float | None = None, loff: int = 0) -> list[Any]:
        return [kind, h, tp, score, "", y, None if y is None else tp + 10_000, loff, h, None]

    rows = pd.DataFrame(
        [
            row("n", 1, T0 + 1_000),
            row("n", 2, T0 + 2_000),
            row("n", 3, T0 + 3_000),
            row("j", 1, T0 + 1_000, 0.9, 1.0, loff=10),
            row("j", 1, T0 + 1_000, 0.9, 0.0, loff=11),  # a second label of id 1: not counted
            row("j", 2, T0 + 2_000, 0.8, 0.0, loff=12),
        ],
        columns=cols,
    )
    st = PerfState(monitor.reference.fingerprint)
    out = step.step(st, rows, T0 + 6 * MINUTE - 1)  # the window [T0, T0+1m) needs the watermark at T0+6m
    assert [o for o in out if o[0] == "perf"] == []
    assert ("joined", 2, None) in out and ("duplicate", 1, None) in out
    assert step.next_emit(st) == T0 + 6 * MINUTE
    st = PerfState.from_bytes(st.to_bytes(), monitor.reference.fingerprint)
    out = step.step(st, None, T0 + 6 * MINUTE)
    recs = {json.loads(o[2])["statistic"]: json.loads(o[2]) for o in out if o[0] == "perf"}
    assert recs["label_coverage"]["value"] == pytest.approx(2 / 3)
    assert recs["accuracy"]["value"] == 0.5  # id 1: 0.9 -> 1 right; id 2: 0.8 -> 0 wrong
    assert recs["accuracy"]["n_window"] == 2 and recs["accuracy"]["n_missing"] == 1
    assert step.step(st, None, T0 + 7 * MINUTE) == [("watermark", T0 + 7 * MINUTE, None)]  # not re-sent
    late = step.step(st, pd.DataFrame([row("n", 4, T0 + 4_000)], columns=cols), T0 + 7 * MINUTE)
    assert ("late_prediction", 1, None) in late


@pytest.mark.slow
@pytest.mark.reliability
def test_spark_submit_with_labels_killed_and_restarted(kafka_bootstrap: str, tmp_path: Path) -> None:
    """jobs/streaming.py under spark-submit with labels.topic, SIGKILLed once its labels query has
    published the first windows, started again on the checkpoint with the rest of the data: every
    performance record is the local backfill's, a record sent twice is sent identical (same key),
    none is missing."""
    import os
    import signal
    import subprocess
    import time

    import jobs.streaming
    from tests.spark.test_spark_submit import BIN, _env

    suffix = tmp_path.name[-8:].replace("_", "-")
    ptopic, ltopic, stats = f"pk-{suffix}", f"lk-{suffix}", f"sk-{suffix}"
    create_topics(kafka_bootstrap, ptopic, ltopic, stats)
    config_path = write_monitor(
        tmp_path,
        events={"label_field": None},
        window={"kind": "tumbling", "size": "1m", "allowed_lateness": "0s"},
        labels={"topic": ltopic, "max_delay": "2m", "clock_skew": "10s", "min_coverage": 1.0, "min_labels": 50},
        concept={"detector": "none"},
    )
    cfg = yaml.safe_load(config_path.read_text())
    cfg["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": ptopic}
    cfg["outputs"] = {"statistics_topic": stats}
    cfg["metrics"] = {"enabled": False}
    config_path.write_text(yaml.safe_dump(cfg))
    preds, labels = data(seed=41)
    preds.append({**preds[0], "id": "flush", "timestamp": T0 + 60 * MINUTE})
    labels.append({"timestamp": T0 + 60 * MINUTE, "id": "flush-label", "label": 0})

    def send(lo: int, hi: int) -> None:
        for topic, rows in ((ptopic, preds), (ltopic, labels)):
            part = [e for e in rows if lo <= e["timestamp"] < hi]
            produce(kafka_bootstrap, topic, [(None, json.dumps(e).encode(), 0, int(e["timestamp"])) for e in part])

    def submit() -> subprocess.Popen[bytes]:
        cmd = [str(BIN / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
        cmd += [jobs.streaming.__file__, "--config", str(config_path), "--checkpoint", str(tmp_path / "ckpt")]
        cmd += ["--trigger", "500ms"]
        with (tmp_path / "job.log").open("ab") as fh:
            return subprocess.Popen(cmd, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def perf_records(n_windows: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            msgs = [m for m in read_all(kafka_bootstrap, stats) if json.loads(m.value())["feature"] == FEATURE]
            if len({json.loads(m.value())["window_start"] for m in msgs}) >= n_windows or time.monotonic() > deadline:
                return msgs
            time.sleep(2.0)

    def kill(proc: subprocess.Popen[bytes], sig: int) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)  # the spark-submit started here, its JVM and Python workers
        proc.wait(timeout=60)

    # the first 8 minutes: the first windows can be emitted (the watermark after the join is held
    # back by its range), later ones wait for the rest
    send(T0, T0 + 8 * MINUTE)
    proc = submit()
    try:
        first = perf_records(1, 240)
    finally:
        kill(proc, signal.SIGKILL)
    assert first, (tmp_path / "job.log").read_text()[-3000:]
    assert len({json.loads(m.value())["window_start"] for m in first}) < 13  # the rest after the restart
    assert (tmp_path / "ckpt" / "labels" / "commits").is_dir()  # the labels query's own checkpoint
    # the rest, after the kill: predictions waiting in Spark's join state (the checkpoint) get their labels
    send(T0 + 8 * MINUTE, T0 + 61 * MINUTE)
    proc = submit()
    try:
        msgs = perf_records(13, 240)
    finally:
        kill(proc, signal.SIGTERM)
    by_key: dict[str, Any] = {}
    for m in msgs:
        rec = json.loads(m.value())
        assert by_key.setdefault(m.key().decode(), rec) == rec  # a re-sent record is identical
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, _ = decode_events(preds, config, reference, layout.features, now_ms=NOW)
    labs, _ = decode_labels(labels, config, now_ms=NOW)
    want, _tracker = run_local_labels(cols, labs, config, reference)
    got = sorted(by_key.values(), key=key)
    want.sort(key=key)
    assert [key(r) for r in got] == [key(r) for r in want] and len({r["window_start"] for r in want}) == 13

    def counts(recs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        return [(r["window_start"], r["n_window"], r["n_missing"]) for r in recs if r["statistic"] == "accuracy"]

    assert counts(got) == counts(want)
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            if isinstance(v, float):
                assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-12), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)
