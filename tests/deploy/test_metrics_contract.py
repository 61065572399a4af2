"""Every metric a rule or the dashboard queries is exported by the consumer.

The exported names come from a real registry built by :mod:`stream.metrics` (what a scrape
of ``streamdrift serve`` can contain), not from a list kept here.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from stream.metrics import METRIC_NAMES, Metrics

pytestmark = pytest.mark.unit

#: the metric contract of the consumer (shared contracts, DESIGN.md "Metrics")
CONTRACT = {
    "streamdrift_statistic_value": "gauge",
    "streamdrift_statistic_p_value": "gauge",
    "streamdrift_drift_detected": "gauge",
    "streamdrift_drift_severity": "gauge",
    "streamdrift_threshold": "gauge",
    "streamdrift_events": "counter",
    "streamdrift_dead_letters": "counter",
    "streamdrift_windows_closed": "counter",
    "streamdrift_alerts": "counter",
    "streamdrift_concept_drift_detections": "counter",
    "streamdrift_last_window_end_timestamp_seconds": "gauge",
    "streamdrift_last_window_closed_timestamp_seconds": "gauge",
    "streamdrift_window_size_seconds": "gauge",
    "streamdrift_consumer_lag_messages": "gauge",
    "streamdrift_batch_processing_seconds": "histogram",
    "streamdrift_last_batch_timestamp_seconds": "gauge",
    "streamdrift_checkpoints": "counter",
    "streamdrift_last_checkpoint_timestamp_seconds": "gauge",
    "streamdrift_segments_overflow": "counter",
    "streamdrift_assigned_partitions": "gauge",
    "streamdrift_build_info": "gauge",
}


@pytest.fixture
def exported(promql) -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, monitor="m")
    return promql.exported_sample_names(registry.collect())


def test_extractor_finds_names_and_ignores_strings(promql):
    expr = (
        'sum by (le) (rate(streamdrift_batch_processing_seconds_bucket{job="streamdrift_x"}[5m])) '
        "/ ignoring(x) streamdrift_window_size_seconds and on(monitor) up{job='streamdrift'} > 0"
    )
    assert promql.metric_names(expr) == {
        "streamdrift_batch_processing_seconds_bucket",
        "streamdrift_window_size_seconds",
    }


def test_the_check_can_fail(promql, exported):
    assert promql.metric_names("rate(streamdrift_eventz_total[5m])") - exported == {"streamdrift_eventz_total"}


def test_rules_query_only_exported_metrics(promql, exported):
    used = {}
    for alert, expr in promql.rule_exprs().items():
        for name in promql.metric_names(expr):
            used.setdefault(name, []).append(alert)
    assert len(used) >= 6
    missing = {n: alerts for n, alerts in used.items() if n not in exported}
    assert not missing, f"rules query metrics the consumer does not export: {missing}"


def test_dashboard_queries_only_exported_metrics(promql, exported):
    queries = promql.dashboard_queries()
    assert len(queries) >= 20
    missing = {}
    for where, expr in queries:
        for name in promql.metric_names(expr):
            if name not in exported:
                missing.setdefault(name, []).append(where)
    assert not missing, f"dashboard queries metrics the consumer does not export: {missing}"


def test_dashboard_shows_every_exported_metric_family(promql):
    """Nothing the consumer exports is invisible (drift_detected is the 0/1 view of severity)."""
    used = set().union(*(promql.metric_names(e) for _, e in promql.dashboard_queries()))
    bases = {n.removesuffix(s) for n in used for s in ("_total", "_bucket", "_sum", "_count", "") if n.endswith(s)}
    unshown = {m for m in CONTRACT if m not in bases} - {"streamdrift_drift_detected"}
    assert not unshown


def test_consumer_exports_the_contract():
    registry = CollectorRegistry()
    Metrics(registry, monitor="m")
    families = {f.name: f.type for f in registry.collect()}
    assert {n: t for n, t in families.items() if n.startswith("streamdrift_")} == CONTRACT
    scraped = {n + ("_total" if t == "counter" else "") for n, t in CONTRACT.items()}
    assert set(METRIC_NAMES) == scraped
