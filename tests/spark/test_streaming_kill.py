"""The streaming job under spark-submit, killed with SIGKILL mid-stream and started again on its
checkpoint: every window is published with the same values as the local engine (what an
uninterrupted run publishes, see the parity tests), a key is never published with two different
values, the per-partition concept records are those of an uninterrupted detector, and dead letters
are duplicated only for the micro-batch that was in flight at the kill (the README's promise)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

import jobs.streaming
from detectors.engine import ConceptTracker, run_local
from detectors.evaluate import alert_id
from detectors.events import concept_values, decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from detectors.sequential import make_detector
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce, read_all
from tests.spark.test_spark_submit import BIN, _env

# two spark-submit JVMs: 1.5-3 minutes on 2 busy cores, so `make test-slow`; the in-process
# stop/restart of tests/spark/test_streaming_job.py covers the checkpoint in the default suite
pytestmark = [pytest.mark.spark, pytest.mark.reliability, pytest.mark.slow]

BAD_EVERY = 97  # a malformed message every 97: every micro-batch has dead letters


def _submit(config: Path, ckpt: Path, log: Path, starting: str = "earliest") -> subprocess.Popen[bytes]:
    cmd = [
        str(BIN / "spark-submit"),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        jobs.streaming.__file__,
        "--config",
        str(config),
        "--checkpoint",
        str(ckpt),
        "--trigger",
        "500ms",
        "--max-offsets-per-trigger",
        "400",
        "--starting-offsets",
        starting,
    ]
    with log.open("ab") as fh:
        return subprocess.Popen(
            cmd, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
        )


def _kill(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)  # the spark-submit we started, its JVM and Python workers
    proc.wait(timeout=60)


def _records(bootstrap: str, topic: str) -> list[Any]:
    return [json.loads(m.value()) | {"_key": m.key().decode()} for m in read_all(bootstrap, topic)]


def _batches(ckpt: Path, sub: str) -> list[int]:
    d = ckpt / sub
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _end_offsets(ckpt: Path, batch: int, topic: str) -> dict[int, int]:
    """The end offsets of a micro-batch from Spark's offset log (its last line is the source's offset)."""
    last = (ckpt / "offsets" / str(batch)).read_text().strip().splitlines()[-1]
    return {int(p): int(o) for p, o in json.loads(last)[topic].items()}


def test_streaming_job_killed_with_sigkill_resumes_from_its_checkpoint(kafka_bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    events_topic, stats_topic, dlq_topic = f"kev-{suffix}", f"kstats-{suffix}", f"kdlq-{suffix}"
    create_topics(kafka_bootstrap, events_topic, partitions=2)
    create_topics(kafka_bootstrap, stats_topic, dlq_topic)
    config = write_monitor(
        tmp_path,
        window={"kind": "tumbling", "size": "1m"},
        concept={"detector": "adwin", "params": {"delta": 0.002}},
    )
    data = yaml.safe_load(config.read_text())
    data["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": events_topic}
    data["outputs"] = {"statistics_topic": stats_topic, "dead_letter_topic": dlq_topic}
    data["metrics"] = {"enabled": False}
    config.write_text(yaml.safe_dump(data))
    events = make_events(3000, seed=31, drift_from=1500)  # 12.5 minutes of events -> 13 windows
    flush = {**events[0], "timestamp": T0 + 3_600_000}
    messages = [  # (partition, value): event i on partition i % 2, a malformed one every BAD_EVERY
        (i % 2, b"{malformed" if i % BAD_EVERY == BAD_EVERY - 1 else json.dumps(e).encode())
        for i, e in enumerate(events)
    ] + [(0, json.dumps(flush).encode()), (1, json.dumps(flush).encode())]

    def send(items: list[tuple[int, bytes]]) -> None:
        produce(kafka_bootstrap, events_topic, [(None, v, p, T0) for p, v in items])

    ckpt, log = tmp_path / "ckpt", tmp_path / "spark.log"
    send(messages[:2000])
    proc = _submit(config, ckpt, log)
    try:  # SIGKILL while a later micro-batch runs: a few are committed, the next is planned (offset log)
        deadline = time.monotonic() + 180
        while len(_batches(ckpt, "commits")) < 3 or _batches(ckpt, "offsets")[-1] <= _batches(ckpt, "commits")[-1]:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no micro-batch in flight after three commits within 180 s"
            time.sleep(0.05)
    finally:
        _kill(proc, signal.SIGKILL)
    planned, committed = _batches(ckpt, "offsets")[-1], _batches(ckpt, "commits")[-1]
    assert planned == committed + 1
    replayed_from = _end_offsets(ckpt, committed, events_topic)  # the batch in flight reads from here...
    replayed_to = _end_offsets(ckpt, planned, events_topic)  # ...to here, again after the restart
    send(messages[2000:])
    # "latest" applies to a new query only: a job that ignored its checkpoint would skip the rest
    proc = _submit(config, ckpt, log, starting="latest")
    try:
        deadline = time.monotonic() + 240
        while not any(r["window_end"] == "2026-01-01T00:13:00.000Z" for r in _records(kafka_bootstrap, stats_topic)):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the last window was not published within 240 s"
            time.sleep(1.0)
        time.sleep(2.0)  # (the records of one batch are flushed together; the last one has arrived)
    finally:
        _kill(proc, signal.SIGTERM)

    # -- window records: those of the local engine, never a key with two values ---------------------------
    got = _records(kafka_bootstrap, stats_topic)
    by_key: dict[str, dict[str, Any]] = {}
    for r in got:
        key = r.pop("_key")
        assert key == alert_id(r)
        assert by_key.setdefault(key, r) == r, "one key published with two different values"
    cfg = load_monitor(config)
    ref = ReferenceProfile.load(cfg.reference)
    layout = Layout(ref, cfg.features.include)
    valid = [e for i, e in enumerate(events) if i % BAD_EVERY != BAD_EVERY - 1]
    cols, _ = decode_events(valid, cfg, ref, layout.features)
    want = {alert_id(r): r for r in run_local(cols, cfg, ref, layout) if r["statistic"] != "adwin"}
    windows = {k: r for k, r in by_key.items() if r["statistic"] != "adwin"}
    assert set(windows) == set(want)
    for k, w in want.items():
        for field, v in w.items():
            g = windows[k][field]
            assert math.isclose(g, v, rel_tol=1e-9) if isinstance(v, float) else g == v, (field, g, v)

    # -- concept records: one uninterrupted detector per partition, in offset order -------------------------
    want_concept = set()
    for p in (0, 1):
        evs = [json.loads(v) for q, v in messages if q == p and v != b"{malformed"]
        pc, _ = decode_events(evs, cfg, ref, layout.features)
        det, tracker = make_detector("adwin", {"delta": 0.002}), ConceptTracker(cfg, ref.fingerprint)
        for x, t in zip(concept_values(pc, cfg).tolist(), pc.time_ms.tolist(), strict=True):
            rec = tracker.update(det, x, t)
            if rec is not None:
                want_concept.add(alert_id({**rec, "segment": {"kafka_partition": str(p)}}))
    assert want_concept and {k for k, r in by_key.items() if r["statistic"] == "adwin"} == want_concept

    # -- dead letters: each malformed message at least once; twice only within the replayed batch ----------
    offsets: dict[int, int] = {0: 0, 1: 0}
    bad = set()
    for p, v in messages:
        if v == b"{malformed":
            bad.add((p, offsets[p]))
        offsets[p] += 1
    seen: dict[tuple[int, int], list[Any]] = {}
    for m in read_all(kafka_bootstrap, dlq_topic):
        h = {k: v.decode() for k, v in m.headers()}
        seen.setdefault((int(h["streamdrift.partition"]), int(h["streamdrift.offset"])), []).append((m.value(), h))
    assert set(seen) == bad
    twice = {k for k, copies in seen.items() if len(copies) > 1}
    for k in twice:
        assert len(seen[k]) == 2 and seen[k][0] == seen[k][1]
        assert replayed_from[k[0]] <= k[1] < replayed_to[k[0]], (k, replayed_from, replayed_to)
