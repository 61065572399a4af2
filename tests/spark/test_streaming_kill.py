"""The streaming job under spark-submit, killed with SIGKILL and started again on its checkpoint:
every window is published, with the same values as the local engine, and a key is never
published with two different values."""

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
from detectors.engine import run_local
from detectors.evaluate import alert_id
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce, read_all
from tests.spark.test_spark_submit import BIN, _env

# two spark-submit JVMs: 1.5-2.5 minutes on 2 busy cores, so `make test-slow`; the in-process
# stop/restart of tests/spark/test_streaming_job.py covers the checkpoint in the default suite
pytestmark = [pytest.mark.spark, pytest.mark.reliability, pytest.mark.slow]


def _submit(config: Path, ckpt: Path, log: Path, starting: str = "earliest") -> subprocess.Popen[bytes]:
    cmd = [
        str(BIN / "spark-submit"),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        jobs.streaming.__file__,
        "--config",
        str(config),
        "--checkpoint",
        str(ckpt),
        "--trigger",
        "500ms",
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


def _windows(bootstrap: str, topic: str) -> list[Any]:
    return [json.loads(m.value()) | {"_key": m.key().decode()} for m in read_all(bootstrap, topic)]


def _wait(bootstrap: str, topic: str, n_ends: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len({r["window_end"] for r in _windows(bootstrap, topic)}) < n_ends:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"fewer than {n_ends} windows within {timeout}s"
        time.sleep(1.0)


def test_streaming_job_killed_with_sigkill_resumes_from_its_checkpoint(kafka_bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    events_topic, stats_topic = f"kev-{suffix}", f"kstats-{suffix}"
    create_topics(kafka_bootstrap, events_topic, stats_topic)
    config = write_monitor(tmp_path, concept={"detector": "none"}, window={"kind": "tumbling", "size": "1m"})
    data = yaml.safe_load(config.read_text())
    data["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": events_topic}
    data["outputs"] = {"statistics_topic": stats_topic}
    config.write_text(yaml.safe_dump(data))
    events = make_events(3000, seed=31, drift_from=1500)  # 12.5 minutes of events -> 13 windows
    flush = {**events[0], "timestamp": T0 + 3_600_000}

    def send(evs: list[dict[str, Any]]) -> None:
        produce(kafka_bootstrap, events_topic, [(None, json.dumps(e).encode(), 0, T0) for e in evs])

    ckpt, log = tmp_path / "ckpt", tmp_path / "spark.log"
    send(events[:1600])
    proc = _submit(config, ckpt, log)
    try:  # SIGKILL once a first micro-batch is committed (its window state is in the checkpoint)
        deadline = time.monotonic() + 120
        while not (ckpt / "commits" / "0").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no micro-batch committed within 120 s"
            time.sleep(0.2)
    finally:
        _kill(proc, signal.SIGKILL)
    send([*events[1600:], flush])
    # "latest" applies to a new query only: a job that ignored its checkpoint would skip events[1600:]
    proc = _submit(config, ckpt, log, starting="latest")
    try:
        _wait(kafka_bootstrap, stats_topic, 13, proc, log, timeout=120)
    finally:
        _kill(proc, signal.SIGTERM)

    got = _windows(kafka_bootstrap, stats_topic)
    by_key: dict[str, dict[str, Any]] = {}
    for r in got:
        key = r.pop("_key")
        assert key == alert_id(r)
        assert by_key.setdefault(key, r) == r, "one key published with two different values"
    cfg = load_monitor(config)
    ref = ReferenceProfile.load(cfg.reference)
    layout = Layout(ref, cfg.features.include)
    cols, _ = decode_events(events, cfg, ref, layout.features)
    want = {alert_id(r): r for r in run_local(cols, cfg, ref, layout)}
    assert set(by_key) == set(want)
    for k, w in want.items():
        for field, v in w.items():
            g = by_key[k][field]
            assert math.isclose(g, v, rel_tol=1e-9) if isinstance(v, float) else g == v, (field, g, v)
