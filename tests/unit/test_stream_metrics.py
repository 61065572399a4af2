"""Metrics: every name in METRIC_NAMES is exported; undefined verdicts are NaN, never 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors.config import StatisticsConfig
from detectors.evaluate import evaluate_counts, window_records
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.decode import REASON_CODES
from stream.metrics import METRIC_NAMES, Metrics
from tests.unit.test_metrics_labels import performance_records

pytestmark = pytest.mark.unit


def test_every_metric_name_is_exported_and_no_verdict_is_nan() -> None:
    rng = np.random.default_rng(3)
    ref = ReferenceProfile.build({"x": rng.normal(size=500)}, fine_bins=10, coarse_bins=5, calibration_replicates=500)
    layout = Layout(ref)
    cfg = StatisticsConfig(min_events=100)
    reg = CollectorRegistry()
    m = Metrics(reg, "mon", "9.9")
    m.set_config(60.0)
    few = layout.histogram({"x": rng.normal(size=10)}).counts  # too few events: no verdict
    many = layout.histogram({"x": rng.normal(2, 1, 500)}).counts
    recs = window_records(
        evaluate_counts(layout, few, cfg),
        monitor="mon",
        segment={"country": "de"},
        window_start_ms=0,
        window_end_ms=60_000,
        window_index=0,
        fingerprint=ref.fingerprint,
    )
    recs += window_records(
        evaluate_counts(layout, many, cfg),
        monitor="mon",
        segment={},
        window_start_ms=0,
        window_end_ms=60_000,
        window_index=0,
        fingerprint=ref.fingerprint,
    )
    m.window_records(recs)
    m.lag.labels("mon", "t", "0").set(5)
    m.batch_seconds.labels("mon").observe(0.01)
    m.concept.labels("mon", "adwin", "model_error").inc()
    m.alerts.labels("mon", "critical").inc()
    m.set_reference(ref.fingerprint)
    m.performance_records(performance_records())  # (late labels: tests/unit/test_metrics_labels.py)
    m.set_label_counts({"joined": 3, "pending": 2})
    exported = {s.name for fam in reg.collect() for s in fam.samples}
    for name in METRIC_NAMES:
        assert any(e == name or e.startswith(name + "_") for e in exported), name
    # nothing else, apart from prometheus_client's *_created series of counters and histograms
    bases = {n.removesuffix("_total") for n in METRIC_NAMES}
    assert {e for e in exported if not e.startswith(METRIC_NAMES)} <= {f"{b}_created" for b in bases}

    def get(name: str, seg: str) -> float | None:
        return reg.get_sample_value(name, {"monitor": "mon", "segment": seg, "feature": "x", "statistic": "psi"})

    for name in (
        "streamdrift_statistic_value",
        "streamdrift_effect_size",
        "streamdrift_threshold",
        "streamdrift_drift_detected",
        "streamdrift_drift_severity",
    ):
        v = get(name, "country=de")
        assert v is not None and math.isnan(v)
    assert get("streamdrift_drift_detected", "__all__") == 1.0
    assert get("streamdrift_drift_severity", "__all__") == 2.0
    psi = next(r for r in recs if r["segment"] == {} and r["statistic"] == "psi")
    assert get("streamdrift_statistic_value", "__all__") == psi["value"]
    assert get("streamdrift_effect_size", "__all__") == psi["effect"]
    # the threshold of the window: the effect from which it is flagged, at least the PSI floor
    assert get("streamdrift_threshold", "__all__") == psi["threshold"] >= cfg.psi.warning
    assert reg.get_sample_value("streamdrift_window_size_seconds", {"monitor": "mon"}) == 60.0
    assert reg.get_sample_value("streamdrift_build_info", {"version": "9.9"}) == 1.0


def test_every_dead_letter_reason_is_exported_from_the_start() -> None:
    """The reasons include the time checks (future_time, implausible_time): a rule or a dashboard sees
    0, not nothing, before the first such event."""
    reg = CollectorRegistry()
    Metrics(reg, "mon")
    assert {"bad_time", "future_time", "implausible_time"} <= set(REASON_CODES)
    for code in REASON_CODES:
        assert reg.get_sample_value("streamdrift_dead_letters_total", {"monitor": "mon", "reason": code}) == 0.0


def _records(layout: Layout, cfg: StatisticsConfig, segment: dict[str, str], seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    counts = layout.histogram({"x": rng.normal(1, 1, 500)}).counts
    return window_records(
        evaluate_counts(layout, counts, cfg),
        monitor="mon",
        segment=segment,
        window_start_ms=0,
        window_end_ms=60_000,
        window_index=0,
        fingerprint=layout.fingerprint,
    )


VERDICT_NAMES = (
    "streamdrift_statistic_value",
    "streamdrift_statistic_p_value",
    "streamdrift_drift_detected",
    "streamdrift_drift_severity",
)


def _verdict_series(reg: CollectorRegistry) -> set[tuple[str, str, str, str]]:
    """(metric, segment, feature, statistic) of every verdict series in a scrape of the registry."""
    return {
        (s.name, s.labels["segment"], s.labels["feature"], s.labels["statistic"])
        for fam in reg.collect()
        for s in fam.samples
        if s.name in VERDICT_NAMES
    }


def test_verdict_series_are_removed_by_segment() -> None:
    """Metric ownership: a silent segment's verdict series go, the others stay; a later window exports them
    again."""
    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build({"x": rng.normal(size=500)}, fine_bins=10, coarse_bins=5)
    layout, cfg = Layout(ref), StatisticsConfig(min_events=100)
    reg = CollectorRegistry()
    m = Metrics(reg, "mon")
    for seg, seed in (({}, 1), ({"country": "de"}, 2), ({"country": "fr"}, 3)):
        m.window_records(_records(layout, cfg, seg, seed))
    assert {(seg,) for _n, seg, _f, _s in _verdict_series(reg)} == {("__all__",), ("country=de",), ("country=fr",)}
    assert len(_verdict_series(reg)) == 4 * 3 * 2  # 4 gauges, 3 segments, psi and ks of x
    assert m.verdict_segments == {"__all__", "country=de", "country=fr"}

    m.remove_segments(["country=fr"])
    assert {seg for _n, seg, _f, _s in _verdict_series(reg)} == {"__all__", "country=de"}
    labels = {"monitor": "mon", "segment": "country=fr", "feature": "x", "statistic": "psi"}
    for name in VERDICT_NAMES:
        assert reg.get_sample_value(name, labels) is None
    assert reg.get_sample_value("streamdrift_statistic_value", {**labels, "segment": "country=de"}) is not None

    m.window_records(_records(layout, cfg, {"country": "fr"}, 5))  # fr is back: its series too
    assert reg.get_sample_value("streamdrift_drift_severity", labels) is not None


def test_a_standby_exports_only_that_it_is_one_until_it_takes_over() -> None:
    """No staleness clock, reference, window size or event counters of the monitor in a standby (an alert or
    a join on them would see two processes); all of them once it is active."""
    reg = CollectorRegistry()
    m = Metrics(reg, "mon", "9.9", active=False)
    m.set_config(60.0)
    m.set_reference("sha256:abc")
    assert {s.name for fam in reg.collect() for s in fam.samples} == {"streamdrift_active", "streamdrift_build_info"}
    assert reg.get_sample_value("streamdrift_active", {"monitor": "mon"}) == 0
    m.activate()
    assert reg.get_sample_value("streamdrift_active", {"monitor": "mon"}) == 1
    assert reg.get_sample_value("streamdrift_window_size_seconds", {"monitor": "mon"}) == 60.0
    ref = {"monitor": "mon", "reference_fingerprint": "sha256:abc", "model_name": "", "model_version": ""}
    assert reg.get_sample_value("streamdrift_reference_info", ref) == 1
    assert reg.get_sample_value("streamdrift_events_total", {"monitor": "mon", "outcome": "valid"}) == 0
    assert reg.get_sample_value("streamdrift_last_window_closed_timestamp_seconds", {"monitor": "mon"}) is not None


def test_lag_series_of_revoked_partitions_are_removed() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "mon")
    for p in (0, 1, 2):
        m.set_lag("events", p, 10 * p)
    m.remove_lag("events", [1, 2, 7])  # (7 never had a series: nothing to do)

    def lag(p: int) -> float | None:
        return reg.get_sample_value(
            "streamdrift_consumer_lag_messages", {"monitor": "mon", "topic": "events", "partition": str(p)}
        )

    assert (lag(0), lag(1), lag(2)) == (0.0, None, None)
    m.set_lag("events", 1, 3)  # assigned again
    assert lag(1) == 3.0
