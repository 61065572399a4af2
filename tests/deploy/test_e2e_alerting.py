"""End to end with real binaries: broker -> ``streamdrift serve`` -> Prometheus -> Alertmanager -> webhook.

Two monitors run side by side on the embedded broker: ``drifting`` (the synthetic stream with
its injected drift) and ``steady`` (the same stream without it). Prometheus (Debian binary)
scrapes both consumers and loads the shipped rules with ``for:`` shortened to 2 s;
Alertmanager (Debian binary) runs the shipped routes and inhibitions with short timers and
delivers to a webhook served by this test, which checks the bearer token read from a file.

Expected alerts are computed independently: :func:`detectors.engine.run_local` over the same
events gives each window's verdicts; the window the consumer reports as its last closed one
(``streamdrift_last_window_end_timestamp_seconds``) decides which alerts must arrive.
Prometheus starts once both consumers have caught up, so it only ever sees the final
verdicts, and the result does not depend on scheduling.

Then every query of the Grafana dashboard runs against the live Prometheus and returns data.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.evaluate import WINDOW_STATISTICS, segment_label
from detectors.events import decode_events, parse_time_ms
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.demo import synthetic
from stream.metrics import LABEL_METRIC_NAMES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
N_EVENTS = 24_000  # 100 ms apart: 40 minutes of event time, 20 two-minute windows
TOKEN = "e2e-webhook-token"
MALFORMED = [b"not json at all", b"[1, 2, 3]", b'{"features": {"income": 1.0}}']
DRIFT_ALERTS = ("StreamdriftFeatureDriftWarning", "StreamdriftFeatureDriftCritical")


class Webhook:
    """A tiny Alertmanager webhook receiver: remembers (path, authorization, payload)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, dict[str, Any]]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(path, authorization, alert) of every alert received so far."""
        with self.lock:
            return [(p, auth, a) for p, auth, payload in self.received for a in payload["alerts"]]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape of a consumer's /metrics as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def value(samples: dict, name: str) -> float:
    (v,) = [v for (n, _), v in samples.items() if n == name]
    return v


def render_rules(dst: Path) -> None:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" / "streamdrift.rules.yml").read_text())
    for g in doc["groups"]:
        g["interval"] = "1s"
        for r in g["rules"]:
            if "for" in r:
                r["for"] = "2s"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))


def render_prometheus(dst: Path, rules: Path, am_port: int, targets: dict[str, int]) -> dict[str, Any]:
    """The shipped prometheus.yml with 1 s intervals, the test's targets and Alertmanager."""
    cfg = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(rules)]
    cfg["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "streamdrift")
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"monitor": monitor}} for monitor, port in targets.items()
    ]
    cfg["scrape_configs"] = [job]
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def monitor_mapping(name: str, reference: Path, bootstrap: str, topic: str, port: int, state: Path) -> dict:
    return {
        "monitor": name,
        "reference": str(reference),
        "events": {
            "time_field": "timestamp",
            "features_field": "features",
            "prediction_field": "score",
            "label_field": "label",
        },
        "features": {"categorical": list(synthetic.CATEGORICAL)},
        "window": {"kind": "tumbling", "size": "2m", "idle_timeout": "60s"},
        "statistics": {"min_events": 200},
        "concept": {"detector": "adwin", "stream": "model_error"},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "group_id": f"group-{topic}",
            # a short session: the group join of the embedded broker waits on it
            "extra": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        },
        "outputs": {
            "statistics_topic": f"{topic}.statistics",
            "alerts_topic": f"{topic}.alerts",
            "dead_letter_topic": f"{topic}.dlq",
        },
        "metrics": {"address": "127.0.0.1", "port": port},
        "state": {"dir": str(state), "checkpoint_interval": "1s"},
    }


def expected_drift(records: list[dict], window_end_s: float) -> dict[str, set[tuple[str, str, str]]]:
    """(segment, feature, statistic) per severity in the window ending at ``window_end_s``."""
    out: dict[str, set[tuple[str, str, str]]] = {"warning": set(), "critical": set()}
    window = [r for r in records if parse_time_ms(r["window_end"]) == round(window_end_s * 1000)]
    assert window, f"run_local has no window ending at {window_end_s}"
    for r in window:
        if r["severity"] in out and r["statistic"] in WINDOW_STATISTICS:
            out[r["severity"]].add((segment_label(r["segment"]), r["feature"], r["statistic"]))
    return out


def window_effects(records: list[dict], window_end_s: float) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(segment, feature, statistic) -> (effect, threshold) of the window ending at ``window_end_s`` (NaN: none)."""
    out = {}
    for r in records:
        if r["statistic"] in WINDOW_STATISTICS and parse_time_ms(r["window_end"]) == round(window_end_s * 1000):
            out[(segment_label(r["segment"]), r["feature"], r["statistic"])] = tuple(
                math.nan if r[k] is None else float(r[k]) for k in ("effect", "threshold")
            )
    return out


def gauge_pairs(samples: dict) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(segment, feature, statistic) -> (streamdrift_effect_size, streamdrift_threshold) of one scrape."""
    got: dict[tuple[str, str, str], dict[str, float]] = {}
    for (n, lbl), v in samples.items():
        if n in ("streamdrift_effect_size", "streamdrift_threshold"):
            d = dict(lbl)
            got.setdefault((d["segment"], d["feature"], d["statistic"]), {})[n] = v
    return {k: (v["streamdrift_effect_size"], v["streamdrift_threshold"]) for k, v in got.items()}


def same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Equal up to floating-point round-off, NaN equal to NaN."""
    return all(
        (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12) for x, y in zip(a, b, strict=True)
    )


def grafana_to_promql(expr: str, monitors: str) -> str:
    return (
        expr.replace("$monitor", monitors)
        .replace("$feature", ".*")
        .replace("$segment", ".*")
        .replace("$__rate_interval", "1m")
    )


def test_drift_alert_reaches_the_webhook_and_steady_stream_stays_quiet(
    kafka_bootstrap, services, webhook, promql, tmp_path
):
    prom_bin = services.require_binary("prometheus")
    am_bin = services.require_binary("prometheus-alertmanager")
    run_id = uuid.uuid4().hex[:10]  # fresh topics and groups, also on a long-lived external broker

    # -- reference and streams ----------------------------------------------------------
    ref = ReferenceProfile.build(
        synthetic.reference_columns(20_000, seed=3),
        features=[*synthetic.NUMERIC, *synthetic.CATEGORICAL],
        categorical=synthetic.CATEGORICAL,
    )
    ref_path = tmp_path / "reference.json"
    ref.save(ref_path)
    streams = {
        "drifting": list(synthetic.events(synthetic.StreamSpec(n_events=N_EVENTS, drift_at=0.5, seed=11))),
        "steady": list(synthetic.events(synthetic.StreamSpec(n_events=N_EVENTS, drift_at=1.0, seed=11))),
    }
    bad = {"drifting": MALFORMED, "steady": []}
    ports = {m: services.free_port() for m in streams}
    topics = {m: f"e2e-{m}-{run_id}" for m in streams}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = [
        NewTopic(f"{t}{s}", num_partitions=1, replication_factor=1)
        for t in topics.values()
        for s in ("", ".statistics", ".alerts", ".dlq")
    ]
    for f in admin.create_topics(new).values():
        f.result(timeout=10)

    # -- the consumers ------------------------------------------------------------------
    configs: dict[str, dict] = {}
    for m in streams:
        configs[m] = monitor_mapping(m, ref_path, kafka_bootstrap, topics[m], ports[m], tmp_path / f"state-{m}")
        path = tmp_path / f"{m}.yaml"
        path.write_text(yaml.safe_dump(configs[m], sort_keys=False))
        services.start(
            f"streamdrift serve ({m})",
            [sys.executable, "-m", "stream.cli", "--log-level", "INFO", "serve", "--config", str(path)],
            f"http://127.0.0.1:{ports[m]}",
            "/metrics",
            tmp_path / f"serve-{m}.log",
        )
    for m in streams:
        services.wait_until(
            lambda m=m: value(scrape(ports[m]), "streamdrift_assigned_partitions") == 1, 30, f"{m} partition assignment"
        )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for m, events in streams.items():
        for raw in bad[m]:
            producer.produce(topics[m], raw)
        for ev in events:
            producer.produce(topics[m], json.dumps(ev, separators=(",", ":")).encode())
            if len(producer) > 50_000:
                producer.poll(0.1)
    assert producer.flush(30) == 0
    del producer, admin  # release their broker connections before the session broker stops
    for m, events in streams.items():
        n = len(events) + len(bad[m])
        services.wait_until(
            lambda m=m, n=n: (
                total(scrape(ports[m]), "streamdrift_events_total") == n
                and total(scrape(ports[m]), "streamdrift_windows_closed_total") >= 15
            ),
            60,
            f"{m} to consume {n} events",
        )

    # -- what must alert, computed independently ---------------------------------------
    expected: dict[str, dict[str, set]] = {}
    concept: dict[str, float] = {}
    effects: dict[str, dict[tuple[str, str, str], tuple[float, float]]] = {}
    for m, events in streams.items():
        cfg = MonitorConfig.from_mapping(configs[m])
        layout = Layout(ref, cfg.features.include)
        cols, errors = decode_events(events, cfg, ref, layout.features)
        assert not errors
        records = run_local(cols, cfg, ref, layout)
        samples = scrape(ports[m])
        expected[m] = expected_drift(records, value(samples, "streamdrift_last_window_end_timestamp_seconds"))
        concept[m] = total(samples, "streamdrift_concept_drift_detections_total")
        # the consumer's gauges agree with run_local (a drifted series is a drifted series everywhere)
        gauged = {
            sev: {
                (dict(lbl)["segment"], dict(lbl)["feature"], dict(lbl)["statistic"])
                for (n, lbl), v in samples.items()
                if n == "streamdrift_drift_severity" and v == level
            }
            for sev, level in (("warning", 1.0), ("critical", 2.0))
        }
        assert gauged == expected[m], m
        # and so do the effect sizes and the per-window thresholds the alerts and the dashboard show
        effects[m] = window_effects(records, value(samples, "streamdrift_last_window_end_timestamp_seconds"))
        gauges = gauge_pairs(samples)
        assert set(gauges) == set(effects[m]), m
        assert {"unseen"} <= {stat for _seg, _feat, stat in gauges}, "unseen is exported for the categoricals"
        differ = {k: (gauges[k], effects[m][k]) for k in gauges if not same(gauges[k], effects[m][k])}
        assert not differ, (m, differ)
    assert expected["drifting"]["warning"] and expected["drifting"]["critical"], "the drift must show both levels"
    assert expected["steady"] == {"warning": set(), "critical": set()}
    invalid = scrape(ports["drifting"])[
        ("streamdrift_events_total", frozenset({("monitor", "drifting"), ("outcome", "invalid")}))
    ]
    assert invalid == len(MALFORMED)

    # -- Alertmanager, then Prometheus (it only ever sees the final verdicts) -----------
    token = tmp_path / "webhook-token"
    token.write_text(TOKEN + "\n")
    am_cfg = services.render_alertmanager(webhook.url, token)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg, sort_keys=False))
    am_port = services.free_port()
    services.start(
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
    render_rules(tmp_path / "rules.yml")
    prom_cfg = render_prometheus(tmp_path / "prometheus.yml", tmp_path / "rules.yml", am_port, ports)
    prom_port = services.free_port()
    prom = services.start(
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
    external = prom_cfg["global"].get("external_labels", {})

    def drift_alerts() -> dict[str, set[tuple[str, str]]]:
        """alertname -> {(path, labels as json)} of drift alerts received so far."""
        out: dict[str, set] = {}
        for path, auth, alert in webhook.alerts():
            assert auth == f"Bearer {TOKEN}", "the webhook credentials come from the file"
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
                    {
                        "alertname": alertname,
                        "severity": severity,
                        "monitor": "drifting",
                        "segment": seg,
                        "feature": feat,
                        "statistic": stat,
                        **external,
                    },
                    sort_keys=True,
                ),
            )
            for seg, feat, stat in expected["drifting"][severity]
        }

    want_critical = want("StreamdriftFeatureDriftCritical", "critical")
    # a warning under a critical of the same series is inhibited in Alertmanager
    want_warning = want("StreamdriftFeatureDriftWarning", "warning")
    try:
        services.wait_until(
            lambda: (
                drift_alerts().get("StreamdriftFeatureDriftCritical") == want_critical
                and drift_alerts().get("StreamdriftFeatureDriftWarning") == want_warning
            ),
            60,
            "the drift alerts at the webhook",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nwant critical {sorted(want_critical)}\nwant warning {sorted(want_warning)}\ngot {drift_alerts()}"
        ) from None
    if concept["drifting"] > 0:
        services.wait_until(
            lambda: any(a["labels"]["alertname"] == "StreamdriftConceptDrift" for _, _, a in webhook.alerts()),
            30,
            "the concept drift alert at the webhook",
        )

    # Prometheus has evaluated the rules for a while: Watchdog fires, nothing for `steady`
    api = f"{prom.url}/api/v1"
    firing = services.http_json(f"{api}/alerts")["data"]["alerts"]
    assert any(a["labels"]["alertname"] == "Watchdog" and a["state"] == "firing" for a in firing)
    assert not [a for a in firing if a["labels"].get("monitor") == "steady"], "no alert for the steady stream"
    # a few more evaluation and group intervals: still exactly the expected drift alerts
    time.sleep(3)
    final = drift_alerts()
    assert final.get("StreamdriftFeatureDriftCritical") == want_critical
    assert final.get("StreamdriftFeatureDriftWarning") == want_warning
    assert not [a for _, _, a in webhook.alerts() if a["labels"].get("monitor") == "steady"]
    assert not [a for _, _, a in webhook.alerts() if a["labels"]["alertname"] == "Watchdog"], "heartbeat receiver"
    for _, _, a in webhook.alerts():
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["labels"]
        assert ann["runbook_url"].endswith("runbook.md#" + a["labels"]["alertname"].lower())
        if a["labels"]["alertname"] in DRIFT_ALERTS:
            lbl = a["labels"]
            assert lbl["feature"] in ann["summary"] and "{{" not in ann["description"]
            # the value is the effect size, and the description found the same series' threshold
            effect, threshold = effects[lbl["monitor"]][(lbl["segment"], lbl["feature"], lbl["statistic"])]
            assert f"effect size {effect:.4g} (" in ann["description"], (lbl, effect, ann["description"])
            assert f"threshold {threshold:.4g}," in ann["description"], (lbl, threshold, ann["description"])

    # -- the Grafana dashboard's queries against the live Prometheus ---------------------
    monitors = "drifting|steady"
    empty = []
    labelled = {n for name in LABEL_METRIC_NAMES for n in (name, name.removesuffix("_total"))}
    for where, expr in promql.dashboard_queries():
        q = grafana_to_promql(expr, monitors)
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", q)
        if m:
            sel, label = m.groups()
            url = f"{api}/label/{label}/values?" + urllib.parse.urlencode({"match[]": sel})
            values = services.http_json(url)["data"]
            assert values, f"{where}: {q} returned nothing"
            if label == "monitor":
                assert set(values) == {"drifting", "steady"}
            if label == "feature":
                assert set(values) == set(ref.features)
            continue
        res = services.http_json(f"{api}/query?" + urllib.parse.urlencode({"query": q}))
        assert res["status"] == "success", (where, q, res)
        if where.startswith("annotation") and concept["drifting"] == 0:
            continue
        if promql.metric_names(q) <= labelled:
            continue  # the performance panels: these monitors have no labels section
        if not res["data"]["result"]:
            empty.append((where, q))
    assert not empty, f"dashboard queries without data: {empty}"
