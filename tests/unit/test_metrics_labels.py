"""Metrics of late labels: performance gauges from records (undefined is NaN, never 0), the join's
counters advance by what is new, and the performance series go with their segment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors.performance import (
    CLASSIFICATION,
    METRICS,
    Floors,
    PerformanceLayout,
    PerformanceProfile,
    Rules,
    evaluate_window,
)
from stream.metrics import Metrics

pytestmark = pytest.mark.unit

LAYOUT = PerformanceLayout(CLASSIFICATION, 0.5)
RULES = Rules(
    METRICS[CLASSIFICATION], 30, Floors(0.02, 0.1, 0.1), Floors(0.05, 0.25, 0.25), 0.01, "bonferroni", "segment"
)


def performance_records() -> list[dict[str, Any]]:
    """A window's performance records: segment {} with a verdict on a drop, segment de with too few labels."""
    rng = np.random.default_rng(2)
    y = (rng.random(5_000) < 0.5).astype(float)
    score = np.where(rng.random(5_000) < 0.9, y, 1 - y) * 0.8 + 0.1
    profile = PerformanceProfile.build(score, y, task=CLASSIFICATION, replicates=500)
    wy = (rng.random(1_000) < 0.5).astype(float)
    wscore = np.where(rng.random(1_000) < 0.7, wy, 1 - wy) * 0.8 + 0.1
    few = LAYOUT.state_of(wscore[:5], wy[:5], n_predictions=40)
    return evaluate_window(
        LAYOUT,
        [({}, LAYOUT.state_of(wscore, wy)), ({"country": "de"}, few)],
        profile,
        RULES,
        monitor="mon",
        window_start_ms=0,
        window_end_ms=60_000,
        window_index=0,
        fingerprint="f",
    )


def test_performance_gauges_follow_the_records() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "mon")
    recs = performance_records()
    m.performance_records(recs)

    def get(name: str, seg: str, metric: str) -> float | None:
        return reg.get_sample_value(name, {"monitor": "mon", "segment": seg, "metric": metric})

    acc = next(r for r in recs if r["segment"] == {} and r["statistic"] == "accuracy")
    assert acc["drift"] is True
    assert get("streamdrift_performance", "__all__", "accuracy") == acc["value"]
    assert get("streamdrift_performance_drop", "__all__", "accuracy") == acc["effect"]
    assert get("streamdrift_performance_threshold", "__all__", "accuracy") == acc["threshold"]
    assert get("streamdrift_performance_severity", "__all__", "accuracy") == 2.0
    assert get("streamdrift_performance", "__all__", "label_coverage") == 1.0
    for name in ("streamdrift_performance", "streamdrift_performance_drop", "streamdrift_performance_severity"):
        v = get(name, "country=de", "accuracy")
        assert v is not None and math.isnan(v)  # 5 labels < min_labels: no value, no verdict
    assert get("streamdrift_performance", "country=de", "label_coverage") == 5 / 40
    info = get("streamdrift_performance_severity", "__all__", "label_coverage")
    assert info is not None and math.isnan(info)  # no verdict on coverage
    m.remove_segments(["country=de"])
    assert get("streamdrift_performance", "country=de", "label_coverage") is None
    assert get("streamdrift_performance", "__all__", "label_coverage") == 1.0


def test_join_counters_advance_by_what_is_new() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "mon")
    m.set_label_counts({"joined": 10, "label_timeout": 2, "pending": 7, "held": 1})
    m.set_label_counts({"joined": 15, "label_timeout": 2, "label_orphan": 4, "pending": 3, "held": 0})

    def joins(outcome: str) -> float | None:
        return reg.get_sample_value("streamdrift_label_joins_total", {"monitor": "mon", "outcome": outcome})

    assert (joins("joined"), joins("label_timeout"), joins("label_orphan"), joins("unjoinable")) == (15, 2, 4, 0)
    waiting = {
        k: reg.get_sample_value("streamdrift_labels_waiting", {"monitor": "mon", "kind": k})
        for k in ("prediction", "label")
    }
    assert waiting == {"prediction": 3.0, "label": 0.0}
    m.set_label_counts({"joined": 12})  # a restored, older state: the counter never goes back
    m.set_label_counts({"joined": 13})
    assert joins("joined") == 16
