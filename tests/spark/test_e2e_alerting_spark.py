"""End to end with real binaries, the Spark way: broker -> Structured Streaming job -> Prometheus
-> Alertmanager -> webhook.

The same stream, rules and routes as ``tests/deploy/test_e2e_alerting.py`` (its helpers and those of
``tests/deploy/conftest.py`` are reused): the drifting synthetic stream (with malformed messages)
goes through ``jobs.streaming`` on Spark; its driver exports the ``streamdrift_*`` metrics that the
shipped rules query; Prometheus (Debian's binary) scrapes the driver and evaluates the shipped rules
with ``for:`` shortened; Alertmanager (Debian's binary) routes to a webhook served by the test.
Expected alerts are computed independently with :func:`detectors.engine.run_local` for the window
the job reports as its last closed one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from jobs.common import Monitor
from jobs.streaming import start
from stream.demo import synthetic
from tests.conftest import create_topics
from tests.deploy.conftest import Service, free_port, http_json, render_alertmanager, require_binary, start_service
from tests.deploy.conftest import wait_until as _wait_until
from tests.deploy.test_e2e_alerting import (
    DRIFT_ALERTS,
    MALFORMED,
    TOKEN,
    Webhook,
    expected_drift,
    monitor_mapping,
    render_prometheus,
    render_rules,
    scrape,
    total,
    value,
)

pytestmark = [pytest.mark.spark, pytest.mark.e2e]

N_EVENTS = 24_000  # 100 ms apart: 40 minutes of event time, 20 two-minute windows


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    return _wait_until(predicate, timeout, what)


@pytest.fixture
def hook() -> Iterator[Webhook]:
    h = Webhook()
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture
def started() -> Iterator[list[Service]]:
    services: list[Service] = []
    yield services
    for svc in reversed(services):
        svc.stop()


def test_spark_job_metrics_page_through_prometheus_and_alertmanager(
    spark: Any, kafka_bootstrap: str, hook: Webhook, started: list[Service], tmp_path: Path
) -> None:
    prom_bin = require_binary("prometheus")
    am_bin = require_binary("prometheus-alertmanager")
    run_id = uuid.uuid4().hex[:10]
    ref = ReferenceProfile.build(
        synthetic.reference_columns(20_000, seed=3),
        features=[*synthetic.NUMERIC, *synthetic.CATEGORICAL],
        categorical=synthetic.CATEGORICAL,
    )
    ref_path = tmp_path / "reference.json"
    ref.save(ref_path)
    events = list(synthetic.events(synthetic.StreamSpec(n_events=N_EVENTS, drift_at=0.5, seed=11)))
    topic = f"e2e-spark-{run_id}"
    create_topics(kafka_bootstrap, topic, f"{topic}.statistics", f"{topic}.alerts", f"{topic}.dlq")
    port = free_port()
    cfg = monitor_mapping("drifting", ref_path, kafka_bootstrap, topic, port, tmp_path / "state")
    config_path = tmp_path / "drifting.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for raw in MALFORMED:
        producer.produce(topic, raw)
    for ev in events:
        producer.produce(topic, json.dumps(ev, separators=(",", ":")).encode())
        if len(producer) > 50_000:
            producer.poll(0.1)
    assert producer.flush(30) == 0
    del producer

    job = start(spark, Monitor.load(config_path), str(tmp_path / "ckpt"), trigger_ms=500, registry=CollectorRegistry())
    try:
        assert job.metrics_port == port
        n = len(events) + len(MALFORMED)
        wait_until(
            lambda: (
                total(scrape(port), "streamdrift_events_total") == n
                and total(scrape(port), "streamdrift_windows_closed_total") >= 15
            ),
            120,
            f"the Spark job to consume {n} events and close the windows",
        )
        assert job.exception() is None

        # -- what must alert, computed independently ---------------------------------------------------
        config = MonitorConfig.from_mapping(cfg)
        layout = Layout(ref, config.features.include)
        cols, errors = decode_events(events, config, ref, layout.features)
        assert not errors
        records = run_local(cols, config, ref, layout)
        samples = scrape(port)
        expected = expected_drift(records, value(samples, "streamdrift_last_window_end_timestamp_seconds"))
        assert expected["warning"] and expected["critical"], "the drift must show both levels"
        gauged = {
            sev: {
                (dict(lbl)["segment"], dict(lbl)["feature"], dict(lbl)["statistic"])
                for (name, lbl), v in samples.items()
                if name == "streamdrift_drift_severity" and v == level
            }
            for sev, level in (("warning", 1.0), ("critical", 2.0))
        }
        assert gauged == expected
        invalid = samples[("streamdrift_events_total", frozenset({("monitor", "drifting"), ("outcome", "invalid")}))]
        assert invalid == len(MALFORMED)
        concept = total(samples, "streamdrift_concept_drift_detections_total")

        # -- Alertmanager and Prometheus, on the job's metrics ----------------------------------------------
        token = tmp_path / "webhook-token"
        token.write_text(TOKEN + "\n")
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(render_alertmanager(hook.url, token)))
        am_port = free_port()
        started.append(
            start_service(
                "alertmanager",
                [
                    am_bin,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{am_port}",
                "/-/ready",
                tmp_path / "alertmanager.log",
            )
        )
        render_rules(tmp_path / "rules.yml")
        prom_cfg = render_prometheus(tmp_path / "prometheus.yml", tmp_path / "rules.yml", am_port, {"drifting": port})
        prom_port = free_port()
        prom = start_service(
            "prometheus",
            [
                prom_bin,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            f"http://127.0.0.1:{prom_port}",
            "/-/ready",
            tmp_path / "prometheus.log",
        )
        started.append(prom)
        external = prom_cfg["global"].get("external_labels", {})

        def drift_alerts() -> dict[str, set[tuple[str, str]]]:
            out: dict[str, set[tuple[str, str]]] = {}
            for path, auth, alert in hook.alerts():
                assert auth == f"Bearer {TOKEN}"
                if alert["labels"]["alertname"] in DRIFT_ALERTS:
                    out.setdefault(alert["labels"]["alertname"], set()).add(
                        (path, json.dumps(alert["labels"], sort_keys=True))
                    )
            return out

        def want(alertname: str, severity: str) -> set[tuple[str, str]]:
            path = "/streamdrift/critical" if severity == "critical" else "/streamdrift"
            return {
                (
                    path,
                    json.dumps(
                        {"alertname": alertname, "severity": severity, "monitor": "drifting", "segment": seg,
                         "feature": feat, "statistic": stat, **external},
                        sort_keys=True,
                    ),
                )
                for seg, feat, stat in expected[severity]
            }  # fmt: skip

        want_critical = want("StreamdriftFeatureDriftCritical", "critical")
        want_warning = want("StreamdriftFeatureDriftWarning", "warning")
        wait_until(
            lambda: (
                drift_alerts().get("StreamdriftFeatureDriftCritical") == want_critical
                and drift_alerts().get("StreamdriftFeatureDriftWarning") == want_warning
            ),
            60,
            "the drift alerts at the webhook",
        )
        if concept > 0:
            wait_until(
                lambda: any(a["labels"]["alertname"] == "StreamdriftConceptDrift" for _, _, a in hook.alerts()),
                30,
                "the concept drift alert at the webhook",
            )
        firing = http_json(f"{prom.url}/api/v1/alerts")["data"]["alerts"]
        assert any(a["labels"]["alertname"] == "Watchdog" and a["state"] == "firing" for a in firing)
        names = {a["labels"]["alertname"] for a in firing}
        assert not names & {"StreamdriftTargetDown", "StreamdriftWindowsStale", "StreamdriftConsumerLagHigh"}, names
        time.sleep(3)
        final = drift_alerts()
        assert final.get("StreamdriftFeatureDriftCritical") == want_critical
        assert final.get("StreamdriftFeatureDriftWarning") == want_warning
    finally:
        job.stop()
