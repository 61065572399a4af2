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
from stream.metrics import METRIC_NAMES, Metrics

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
        fingerprint=ref.fingerprint,
    )
    recs += window_records(
        evaluate_counts(layout, many, cfg),
        monitor="mon",
        segment={},
        window_start_ms=0,
        window_end_ms=60_000,
        fingerprint=ref.fingerprint,
    )
    m.window_records(recs)
    m.lag.labels("mon", "t", "0").set(5)
    m.batch_seconds.labels("mon").observe(0.01)
    m.concept.labels("mon", "adwin", "model_error").inc()
    m.alerts.labels("mon", "critical").inc()
    m.set_reference(ref.fingerprint)
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
