"""The Structured Streaming job on a real broker: the injected drift is flagged in the right
windows, the records equal the local engine's, and a stop + restart on the same checkpoint
neither loses nor duplicates a window."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.engine import run_local
from detectors.evaluate import alert_id, iso_ms
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from jobs.common import Monitor
from jobs.streaming import start
from stream.settings import load_monitor
from tests.conftest import create_topics
from tests.spark.conftest import T0, make_events, write_monitor
from tests.spark.kafka_util import produce, read_all

pytestmark = [pytest.mark.spark, pytest.mark.integration]

MINUTE = 60_000
DRIFT_FROM = 1920  # event index; pairs of events every 500 ms -> 8 min after T0, a window boundary


def _produce_events(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [(None, json.dumps(e).encode(), 0, int(e["timestamp"])) for e in events])


def _wait_for_windows(bootstrap: str, topic: str, n_windows: int, timeout: float = 90.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        msgs = read_all(bootstrap, topic)
        ends = {json.loads(m.value())["window_end"] for m in msgs}
        if len(ends) >= n_windows or time.monotonic() > deadline:
            return msgs
        time.sleep(1.0)


def test_streaming_job_flags_the_drift_window_and_survives_a_restart(
    spark: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = tmp_path.name[-8:].replace("_", "-")
    events_topic, stats_topic, alerts_topic = f"ev-{suffix}", f"stats-{suffix}", f"alerts-{suffix}"
    create_topics(kafka_bootstrap, events_topic, stats_topic, alerts_topic)
    config_path = write_monitor(
        tmp_path,
        concept={"detector": "none"},
        window={"kind": "tumbling", "size": "1m", "allowed_lateness": "0s"},
    )
    cfg = yaml.safe_load(config_path.read_text())
    cfg["kafka"] = {"bootstrap_servers": kafka_bootstrap, "topic": events_topic}
    cfg["outputs"] = {"statistics_topic": stats_topic, "alerts_topic": alerts_topic}
    cfg["metrics"] = {"port": 0}
    config_path.write_text(yaml.safe_dump(cfg))
    monitor = Monitor.load(config_path)

    events = make_events(3000, seed=21, drift_from=DRIFT_FROM)  # 12.5 minutes of events
    flush = {**make_events(1, seed=1)[0], "timestamp": T0 + 60 * MINUTE}  # moves the watermark past them all
    ckpt = str(tmp_path / "ckpt")

    # first run: the first 1000 events, then a stop (as after a kill: the checkpoint is all that survives)
    _produce_events(kafka_bootstrap, events_topic, events[:1000])
    q = start(spark, monitor, ckpt, trigger_ms=300)
    q.processAllAvailable()
    q.stop()
    assert q.exception() is None
    # second run on the same checkpoint: the rest and the watermark flush
    _produce_events(kafka_bootstrap, events_topic, [*events[1000:], flush])
    q = start(spark, monitor, ckpt, trigger_ms=300)
    try:
        q.processAllAvailable()
        msgs = _wait_for_windows(kafka_bootstrap, stats_topic, 13)
    finally:
        q.stop()
    assert q.exception() is None

    got = [json.loads(m.value()) for m in msgs]
    keys = [m.key().decode() for m in msgs]
    assert len(keys) == len(set(keys)), "a window record was published twice"
    assert keys == [alert_id(r) for r in got]

    # the same records as the local engine over the same events (the flush window never closes)
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, errors = decode_events(events, config, reference, layout.features)
    assert not errors
    want = run_local(cols, config, reference, layout)
    got.sort(key=lambda r: (r["window_end"], r["feature"], r["statistic"]))
    want.sort(key=lambda r: (r["window_end"], r["feature"], r["statistic"]))
    assert len(got) == len(want) == 13 * 7  # 13 windows x (x: psi, ks; y: psi, ks; c: psi, chi2, unseen)
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            if isinstance(v, float):
                assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-9), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)

    # the drift is flagged on x from the 8th minute on, and nowhere before
    drift_start = iso_ms(T0 + 8 * MINUTE)
    alerts = [json.loads(m.value()) for m in read_all(kafka_bootstrap, alerts_topic)]
    x_alert_windows = {a["window_start"] for a in alerts if a["feature"] == "x"}
    drifted_windows = {iso_ms(T0 + k * MINUTE) for k in range(8, 13)}
    assert x_alert_windows == drifted_windows
    assert all(a["window_start"] >= drift_start for a in alerts)
    assert all(a["drift"] and a["alert_id"] == alert_id(a) for a in alerts)
