"""A real Spark cluster, not local mode: a standalone master and two workers started from the
pyspark wheel (``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``, on
loopback), the backfill and the streaming job submitted with ``spark-submit --master spark://...``
as a user would, and their records checked against the local engine's.

The executors run in the workers' JVMs, with their own Python workers (``PYSPARK_PYTHON``); the
master's status JSON shows both applications ran there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import jobs.backfill
import jobs.streaming
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.demo.broker import free_port
from stream.records import read_records
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_jsonl, write_monitor
from tests.spark.kafka_util import produce, read_all
from tests.spark.test_spark_submit import BIN, _env

pytestmark = [pytest.mark.spark, pytest.mark.integration]


def _local(config: Path, events: list[Any]) -> list[dict[str, Any]]:
    cfg = load_monitor(config)
    ref = ReferenceProfile.load(cfg.reference)
    layout = Layout(ref, cfg.features.include)
    cols, _ = decode_events(events, cfg, ref, layout.features)
    return run_local(cols, cfg, ref, layout)


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    key = lambda r: (r["window_end"], sorted(r["segment"].items()), r["feature"], r["statistic"])  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-9) if isinstance(v, float) else g[k] == v, (k, g, w)


class Cluster:
    """A standalone master and its workers, each in its own process group (stopped by group id)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port, self.ui = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> None:
        env = _env()
        env["SPARK_WORKER_DIR"] = str(self.tmp / "work")
        env["SPARK_LOG_DIR"] = str(self.tmp / "logs")
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [str(BIN / "spark-class"), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/json/", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def start(self, workers: int = 2, timeout: float = 90.0) -> None:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port)]
        self._start("master", [*master, "--webui-port", str(self.ui)])
        for i in range(workers):
            worker = ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1", "--cores", "1"]
            self._start(f"worker{i}", [*worker, "--memory", "1g", "--webui-port", str(free_port())])
        deadline = time.monotonic() + timeout
        while True:
            for p in self.procs:
                assert p.poll() is None, (self.tmp / "master.log").read_text(errors="replace")[-2000:]
            try:
                alive = [w for w in self.status()["workers"] if w["state"] == "ALIVE"]
                if len(alive) == workers:
                    return
            except (OSError, ValueError):
                # The master's UI answers before its JSON page is ready: connection refused,
                # or an empty body (ValueError from json). Both mean "not yet".
                pass
            assert time.monotonic() < deadline, f"{workers} workers did not register within {timeout}s"
            time.sleep(0.5)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _submit(cluster: Cluster, job: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [str(BIN / "spark-submit"), "--master", cluster.url, "--executor-memory", "512m"]
    cmd += ["--total-executor-cores", "2", "--conf", "spark.ui.enabled=false", job, *args]
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def test_backfill_and_streaming_job_on_a_standalone_cluster(
    cluster: Cluster, kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, stats = f"cl-{run}", f"cl-stats-{run}"
    create_topics(kafka_bootstrap, topic, partitions=2)
    create_topics(kafka_bootstrap, stats)
    config = write_monitor(
        tmp_path,
        events={"segment_fields": ["region"]},
        segments={"overall": True, "max_segments": 2},
        concept={"detector": "none"},
    )
    data = yaml.safe_load(config.read_text())
    data["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": topic}
    data["outputs"] = {"statistics_topic": stats}
    data["metrics"] = {"enabled": False}
    config.write_text(yaml.safe_dump(data))
    events = make_events(3000, seed=51, drift_from=1800)  # 12.5 minutes: 13 windows
    flush = {**events[0], "timestamp": T0 + 3_600_000}
    want = _local(config, events)

    # the backfill of a file, on the cluster's executors
    log = tmp_path / "spark.log"
    out = tmp_path / "backfill.jsonl"
    args = ["--config", str(config), "--input", str(write_jsonl(tmp_path / "events.jsonl", events))]
    proc = _submit(cluster, jobs.backfill.__file__, [*args, "--output", str(out)], log)
    assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
    _same(read_records(out), want)

    # the streaming job on the topic (two partitions), until every window of `events` is published
    produce(kafka_bootstrap, topic, [(None, json.dumps(e).encode(), i % 2, T0) for i, e in enumerate(events)])
    produce(kafka_bootstrap, topic, [(None, json.dumps(flush).encode(), p, T0) for p in (0, 1)])
    args = ["--config", str(config), "--checkpoint", str(tmp_path / "ckpt"), "--trigger", "500ms"]
    proc = _submit(cluster, jobs.streaming.__file__, args, log)
    try:
        deadline = time.monotonic() + 240
        while True:
            got = [json.loads(m.value()) for m in read_all(kafka_bootstrap, stats)]
            if len(got) >= len(want):
                break
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"{len(got)} of {len(want)} records within 240 s"
            time.sleep(1.0)
        apps = [a["name"] for a in cluster.status()["activeapps"]]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    _same(got, want)
    status = cluster.status()
    done = [a["name"] for a in status["completedapps"]]
    assert any(n.startswith("streamdrift-backfill-") for n in done), done
    assert any(n.startswith("streamdrift-streaming-") for n in apps + done), (apps, done)
    assert all(w["state"] == "ALIVE" for w in status["workers"])
