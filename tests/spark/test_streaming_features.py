"""The streaming job has the consumer's features, on a real broker and a real Spark:

* invalid messages go to the dead-letter topic with the consumer's reasons and headers, and are counted;
* events behind Spark's watermark are counted per window, not added and not silently dropped;
* the concept detector runs per Kafka partition in offset order;
* the driver exports the consumer's metrics;

and the window records of a two-partition topic equal the local engine's over the events that were
not late. Expected values are computed independently: the reference decoder
(:func:`stream.decode.reference_decode`), :func:`detectors.engine.run_local`, a detector run by hand.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from detectors.engine import ConceptTracker, run_local
from detectors.evaluate import alert_id, iso_ms, segment_label
from detectors.events import concept_values, decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from detectors.sequential import make_detector
from jobs.common import Monitor
from jobs.streaming import start
from stream.decode import reference_decode
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce, read_all

pytestmark = [pytest.mark.spark, pytest.mark.integration]

MINUTE = 60_000
BAD = {  # position in the stream -> the message (each partition gets some), and its reason code
    101: (b"not json at all", "not_json"),
    502: (b'{"timestamp": 1767225700000, "features": {"x": "oops", "y": 1.0, "c": "a"}}', "bad_type"),
    703: (b'{"features": {"x": 0.5, "y": 1.0, "c": "a"}, "region": "r1"}', "missing_field"),
}
N_LATE = 11  # events of the first minute, produced after its window closed


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, {"monitor": "spark-test", **labels})
    assert v is not None, (name, labels)
    return v


def test_dead_letters_late_events_concept_and_metrics(spark: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    topic, stats, dlq = f"feat-{run}", f"feat-stats-{run}", f"feat-dlq-{run}"
    create_topics(kafka_bootstrap, topic, partitions=2)
    create_topics(kafka_bootstrap, stats, dlq)
    config_path = write_monitor(
        tmp_path,
        window={"kind": "tumbling", "size": "1m", "allowed_lateness": "0s"},
        events={"time_field": "timestamp", "prediction_field": "score", "label_field": "label",
                "segment_fields": ["region"]},
        segments={"overall": True, "max_segments": 2},
        concept={"detector": "adwin", "params": {"delta": 0.002}},
    )  # fmt: skip
    cfg = yaml.safe_load(config_path.read_text())
    cfg["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": topic}
    cfg["outputs"] = {"statistics_topic": stats, "dead_letter_topic": dlq}
    config_path.write_text(yaml.safe_dump(cfg))
    monitor = Monitor.load(config_path)

    events = make_events(2400, seed=41, drift_from=1200)  # 10 minutes, two events every 500 ms
    late = [{**e, "timestamp": T0 + 30_000 + i} for i, e in enumerate(make_events(N_LATE, seed=5))]
    flush = {**events[0], "timestamp": T0 + 10 * MINUTE}  # moves the watermark to the end of the last window
    messages: list[tuple[int, bytes]] = []  # (partition, value) in production order
    for i, e in enumerate(events):
        messages.append((i % 2, BAD[i][0] if i in BAD else json.dumps(e).encode()))
    first, rest = messages[:1600], messages[1600:]
    rest = [(i % 2, json.dumps(e).encode()) for i, e in enumerate(late)] + rest + [(0, json.dumps(flush).encode())]

    registry = CollectorRegistry()
    ckpt = str(tmp_path / "ckpt")
    produce(kafka_bootstrap, topic, [(None, v, p, T0) for p, v in first])
    before = spark.conf.get("spark.sql.shuffle.partitions")
    job = start(spark, monitor, ckpt, trigger_ms=300, serve_metrics=False, registry=registry)
    try:
        job.processAllAvailable()  # the first 1600 messages, and the windows their watermark closed
        # the query runs its one state key in one partition; the session keeps its own setting
        meta = json.loads((Path(ckpt) / "offsets" / "0").read_text().splitlines()[1])
        assert meta["conf"]["spark.sql.shuffle.partitions"] == "1"
        assert spark.conf.get("spark.sql.shuffle.partitions") == before != "1"
        produce(kafka_bootstrap, topic, [(None, v, p, T0) for p, v in rest])
        job.processAllAvailable()
        deadline = time.monotonic() + 60
        while _value(registry, "streamdrift_last_window_end_timestamp_seconds") < (T0 + 10 * MINUTE) / 1000:
            assert job.exception() is None and time.monotonic() < deadline, "the last windows did not close"
            time.sleep(0.3)
        assert job.exception() is None
        late_by_window = dict(job.writer.late_by_window)
    finally:
        job.stop()

    # -- late events: counted for their window, not added -------------------------------------------------
    assert late_by_window == {(T0, T0 + MINUTE): N_LATE}
    assert _value(registry, "streamdrift_events_total", outcome="late") == N_LATE

    # -- records: the local engine over the valid events that were not late ------------------------------
    good = [e for i, e in enumerate(events) if i not in BAD]
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, errors = decode_events(good, config, reference, layout.features)
    assert not errors
    want = [r for r in run_local(cols, config, reference, layout) if r["statistic"] != "adwin"]
    msgs = read_all(kafka_bootstrap, stats)
    got = [json.loads(m.value()) for m in msgs]
    assert [m.key().decode() for m in msgs] == [alert_id(r) for r in got]
    windows = [r for r in got if r["statistic"] != "adwin"]
    key = lambda r: (r["window_end"], segment_label(r["segment"]), r["feature"], r["statistic"])  # noqa: E731
    windows.sort(key=key)
    want.sort(key=key)
    assert len(windows) == len(want) == 10 * 4 * 7  # 10 windows x (overall, r0, r1, __other__) x 7 statistics
    for g, w in zip(windows, want, strict=True):
        for k, v in w.items():
            assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-9) if isinstance(v, float) else g[k] == v, (k, g, w)

    # -- concept: one detector per partition over its valid events in offset order ------------------------
    by_partition: dict[int, list[Any]] = {0: [], 1: []}
    for p, v in first + rest:
        if v not in {b for b, _ in BAD.values()}:
            by_partition[p].append(json.loads(v))
    want_concept = []
    for p in (0, 1):
        pc, perr = decode_events(by_partition[p], config, reference, layout.features)
        assert not perr
        det = make_detector("adwin", {"delta": 0.002})
        tracker = ConceptTracker(config, reference.fingerprint)
        for x, t in zip(concept_values(pc, config).tolist(), pc.time_ms.tolist(), strict=True):
            rec = tracker.update(det, x, t)
            if rec is not None:
                want_concept.append((rec, p))
    got_concept = [r for r in got if r["statistic"] == "adwin"]
    assert want_concept, "the label flip must be detected"
    assert sorted(r["window_end"] for r in got_concept) == sorted(r["window_end"] for r, _p in want_concept)
    assert {(r["segment"]["kafka_partition"], r["window_end"]) for r in got_concept} == {
        (str(p), r["window_end"]) for r, p in want_concept
    }
    assert _value(
        registry, "streamdrift_concept_drift_detections_total", detector="adwin", stream="model_error"
    ) == len(want_concept)

    # -- dead letters: the consumer's reasons and headers, counted -----------------------------------------
    dead = read_all(kafka_bootstrap, dlq)
    offsets = {}  # position -> (partition, offset): messages of a partition get offsets in production order
    seen = {0: 0, 1: 0}
    for i, (p, _v) in enumerate(messages[:1600]):
        offsets[i] = (p, seen[p])
        seen[p] += 1
    assert len(dead) == len(BAD)
    got_dead = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        got_dead[(int(h["streamdrift.partition"]), int(h["streamdrift.offset"]))] = (m.value(), h)
    for i, (value, code) in BAD.items():
        _cols, rej = reference_decode([value], config, reference, layout.features, [T0])
        (_, reason), = rej  # fmt: skip
        body, h = got_dead[offsets[i]]
        assert body == value
        assert h["streamdrift.reason"] == reason and h["streamdrift.reason_code"] == code
        assert h["streamdrift.topic"] == topic
        assert _value(registry, "streamdrift_dead_letters_total", reason=code) == 1

    # -- the other metrics ---------------------------------------------------------------------------------
    n_messages = len(first) + len(rest)
    assert _value(registry, "streamdrift_events_total", outcome="invalid") == len(BAD)
    assert _value(registry, "streamdrift_events_total", outcome="valid") == n_messages - len(BAD) - N_LATE
    assert _value(registry, "streamdrift_windows_closed_total") == 10 * 4
    assert _value(registry, "streamdrift_last_window_end_timestamp_seconds") == (T0 + 10 * MINUTE) / 1000
    assert _value(registry, "streamdrift_assigned_partitions") == 2
    for p in ("0", "1"):
        assert _value(registry, "streamdrift_consumer_lag_messages", topic=topic, partition=p) == 0
    assert _value(registry, "streamdrift_checkpoints_total", outcome="ok") >= 3
    # the gauges hold the last closed window's verdicts
    last = [r for r in want if r["window_end"] == iso_ms(T0 + 10 * MINUTE)]
    for r in last:
        labels = {"segment": segment_label(r["segment"]), "feature": r["feature"], "statistic": r["statistic"]}
        assert math.isclose(_value(registry, "streamdrift_statistic_value", **labels), r["value"], rel_tol=1e-9)


def test_raw_kafka_rows_summarize_like_the_binned_source(spark: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    """``--kafka-format streamdrift-kafka`` / ``kafka`` summarize the raw rows in ``mapInArrow``
    (:func:`jobs.binned.summarize_arrow`): the same rows as the reader of ``streamdrift-binned``."""
    from pyspark.sql import functions as F

    from jobs import binned
    from jobs.kafka_source import read_kafka

    topic = f"raw-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, topic, partitions=2)
    config_path = write_monitor(tmp_path, events={"segment_fields": ["region"]})
    cfg = yaml.safe_load(config_path.read_text())
    cfg["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": topic}
    config_path.write_text(yaml.safe_dump(cfg))
    events = make_events(900, seed=8)
    values = [json.dumps(e).encode() for e in events]
    values[10], values[11] = b"{", b'{"timestamp": "yesterday", "features": {}}'
    produce(kafka_bootstrap, topic, [(None, v, i % 2, T0 + i) for i, v in enumerate(values)])
    opts = {"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic, "startingOffsets": "earliest"}

    binned.register(spark)
    got = spark.read.format(binned.NAME).options(config=str(config_path), **opts).load()
    raw = read_kafka(spark, opts).select(
        "key", "value", "topic", "partition", "offset", F.unix_millis("timestamp").alias("ts")
    )
    monitor = Monitor.load(config_path)
    summed = raw.mapInArrow(lambda it: binned.summarize_arrow(monitor, it, 1 << 20, None, {}), binned.SCHEMA)

    def rows(df: Any) -> list[tuple[Any, ...]]:
        return sorted(
            (r.kind, r.partition, r.offset, r.end_offset, r.event_time, r.seg, r.pane, r.first_ms, r.n,
             tuple(r.counts or ()), tuple(sorted((r.reasons or {}).items())), tuple(r.times or ()),
             tuple(r.values or ()))
            for r in df.collect()
        )  # fmt: skip

    want = rows(got)
    assert rows(summed) == want
    tallies = [r for r in want if r[0] == "t"]
    assert sorted((r[1], r[8], dict(r[10])) for r in tallies) == [
        (0, 449, {"not_json": 1}),
        (1, 449, {"bad_time": 1}),
    ]
    assert sum(r[8] for r in want if r[0] == "c") == 898
