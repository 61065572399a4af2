"""Every metric a rule or the dashboard queries is exported by the consumer, with the labels they use.

The exported names and labels come from a real registry built by :mod:`stream.metrics` (what a
scrape of ``streamdrift serve`` can contain), not from a list kept here. "Queries" are the rules'
expressions, the ``query`` calls in their annotation templates, and the dashboard's panel
targets, variables and annotations.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from detectors.evaluate import WINDOW_STATISTICS
from stream.metrics import METRIC_NAMES, Metrics
from tests.unit.test_metrics_labels import performance_records

pytestmark = pytest.mark.unit

#: the metric contract of the consumer (docs/architecture.md, "Metrics")
CONTRACT = {
    "streamdrift_statistic_value": "gauge",
    "streamdrift_statistic_p_value": "gauge",
    "streamdrift_drift_detected": "gauge",
    "streamdrift_drift_severity": "gauge",
    "streamdrift_threshold": "gauge",
    "streamdrift_effect_size": "gauge",
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
    "streamdrift_active": "gauge",
    "streamdrift_build_info": "gauge",
    "streamdrift_reference_info": "gauge",
    "streamdrift_performance": "gauge",
    "streamdrift_performance_drop": "gauge",
    "streamdrift_performance_threshold": "gauge",
    "streamdrift_performance_severity": "gauge",
    "streamdrift_label_joins": "counter",
    "streamdrift_labels_waiting": "gauge",
}


#: the labels of the per-statistic series (one per monitor, segment, feature and statistic)
STATISTIC_LABELS = {"monitor", "segment", "feature", "statistic"}
PER_STATISTIC = (
    "streamdrift_statistic_value",
    "streamdrift_statistic_p_value",
    "streamdrift_drift_detected",
    "streamdrift_drift_severity",
    "streamdrift_effect_size",
    "streamdrift_threshold",
)


@pytest.fixture
def exported(promql) -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, monitor="m")
    return promql.exported_sample_names(registry.collect())


@pytest.fixture
def exported_labels() -> dict[str, set[str]]:
    """Sample name -> its label names, from a registry the consumer's calls have filled."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, monitor="m")
    metrics.set_config(60.0)
    metrics.window_records(
        {
            "segment": {"country": "de"},
            "feature": "f",
            "statistic": stat,
            "value": 1.0,
            "effect": 0.1,
            "threshold": 0.05,
            "p_value": 0.001,
            "drift": True,
            "severity": "warning",
        }
        for stat in WINDOW_STATISTICS
    )
    metrics.lag.labels("m", "t", "0").set(3)
    metrics.concept.labels("m", "adwin", "model_error").inc()
    metrics.alerts.labels("m", "warning").inc()
    metrics.batch_seconds.labels("m").observe(0.01)
    metrics.set_reference("sha256:0")
    metrics.performance_records(performance_records())
    metrics.set_label_counts({"joined": 1, "pending": 1})
    labels: dict[str, set[str]] = {}
    for fam in registry.collect():
        for sample in fam.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    unfilled = {n for n in CONTRACT if not any(k.startswith(n) for k in labels)}
    assert not unfilled, f"fill these families in the fixture so their labels are known: {unfilled}"
    return labels


def all_queries(promql) -> list[tuple[str, str]]:
    """(where, PromQL) of every query of the rules (expressions and annotation templates) and the dashboard."""
    rules = [(f"rule {alert}", expr) for alert, expr in promql.rule_exprs().items()]
    return rules + [(f"rule {w}", q) for w, q in promql.rule_annotation_queries()] + promql.dashboard_queries()


def label_errors(promql, exported_labels: dict[str, set[str]], where: str, expr: str) -> list[str]:
    """Labels ``expr`` matches or groups on that the series it selects do not have."""
    errors = []
    selected: set[str] = set(promql.target_labels)
    for name, matchers in promql.selectors(expr):
        have = exported_labels.get(name)
        if have is None:
            continue  # an unexported name: the name checks report it
        selected |= have
        unknown = set(matchers) - have - promql.target_labels
        if unknown:
            errors.append(f"{where}: {name} has no label(s) {sorted(unknown)}")
    unknown = promql.grouping_labels(expr) - selected
    if unknown:
        errors.append(f"{where}: groups or joins on {sorted(unknown)}, which none of its series has")
    return errors


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
    for where, query in promql.rule_annotation_queries():
        for name in promql.metric_names(query):
            used.setdefault(name, []).append(where)
    assert len(used) >= 8
    assert {"streamdrift_effect_size", "streamdrift_threshold", "streamdrift_drift_severity"} <= set(used)
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


def test_drift_alert_descriptions_read_the_threshold_of_their_own_series(promql):
    """The description's query selects streamdrift_threshold by every label of the alerting series."""
    queries = dict(promql.rule_annotation_queries())
    for alert in ("StreamdriftFeatureDriftWarning", "StreamdriftFeatureDriftCritical"):
        ((name, matchers),) = promql.selectors(queries[f"{alert} description"])
        assert name == "streamdrift_threshold"
        assert {label: op for label, (op, _value) in matchers.items()} == dict.fromkeys(STATISTIC_LABELS, "=")
        assert promql.grouping_labels(promql.rule_exprs()[alert]) == STATISTIC_LABELS


def test_queries_use_only_labels_their_series_have(promql, exported_labels):
    queries = all_queries(promql)
    assert len(queries) >= 30
    errors = [e for where, expr in queries for e in label_errors(promql, exported_labels, where, expr)]
    assert not errors, "\n".join(errors)


def test_the_label_check_can_fail(promql, exported_labels):
    """The configured-levels gauge of earlier versions had a `level` label; the per-window one has none."""
    assert label_errors(promql, exported_labels, "x", 'streamdrift_threshold{statistic="psi", level="warning"}')
    assert label_errors(promql, exported_labels, "x", "max by (statistic, level) (streamdrift_threshold)")
    assert label_errors(promql, exported_labels, "x", "streamdrift_events_total{reason='x'}")
    assert not label_errors(
        promql, exported_labels, "x", 'sum by (le) (streamdrift_batch_processing_seconds_bucket{job="j"})'
    )


def test_per_statistic_series_carry_exactly_the_statistic_labels(exported_labels):
    for name in PER_STATISTIC:
        assert exported_labels[name] == STATISTIC_LABELS, name


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
