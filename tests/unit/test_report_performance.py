"""The report's performance section: rendered through `streamdrift report` from the records of a
backfill with labels; every expectation is recomputed from those records."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.config import MonitorConfig
from detectors.engine import run_local, run_local_labels
from detectors.events import LabelColumns, decode_events
from detectors.histogram import Layout
from detectors.performance import CLASSIFICATION, PerformanceProfile
from detectors.reference import ReferenceProfile
from stream.records import write_records
from stream.report.performance import performance_html, split_performance
from tests.unit.test_report import Page, _render

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000
HOUR = 3_600_000


def scored(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(np.float64)
    decided = np.where(rng.random(n) < accuracy, y, 1.0 - y)
    return np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0), y


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    d = tmp_path_factory.mktemp("report-perf")
    rng = np.random.default_rng(4)
    score, y = scored(rng, 20_000, 0.9)
    ref = ReferenceProfile.build({"x": rng.normal(size=5_000)}, calibration_replicates=500)
    ref = dataclasses.replace(
        ref, performance=PerformanceProfile.build(score, y, task=CLASSIFICATION, replicates=1_000)
    )
    ref.save(d / "reference.json")
    doc = {
        "monitor": "perf",
        "reference": "reference.json",
        "events": {"prediction_field": "score"},
        "window": {"size": "30m"},
        "labels": {"max_delay": "2h"},
        "concept": {"detector": "none"},
    }
    (d / "monitor.yaml").write_text(yaml.safe_dump(doc))
    config = MonitorConfig.from_mapping(doc, base_dir=d)
    n = 12_000
    t = T0 + np.sort(rng.integers(0, 6 * HOUR, n))
    score, y = scored(rng, n, 0.9)
    after = t >= T0 + 3 * HOUR
    s2, y2 = scored(rng, int(after.sum()), 0.78)
    score[after], y[after] = s2, y2
    rows = [{"timestamp": int(t[i]), "id": f"p{i}", "score": float(score[i]), "features": {"x": 0.1}} for i in range(n)]
    cols, _ = decode_events(rows, config, ref, ["x"], now_ms=T0 + 100 * HOUR)
    keep = rng.random(n) < 0.97
    lt = t + rng.integers(60_000, HOUR, n)
    order = [i for i in np.argsort(lt, kind="stable") if keep[i]]
    labels = LabelColumns([f"p{i}" for i in order], lt[order], y[order], list(range(len(order))))
    recs = run_local(cols, config, ref, Layout(ref))
    perf, _ = run_local_labels(cols, labels, config, ref)
    write_records(d / "records.jsonl", recs + perf)
    return d, recs + perf


def test_split_keeps_drift_and_performance_apart(records: tuple[Path, list[dict[str, Any]]]) -> None:
    _d, recs = records
    other, perf = split_performance(recs)
    assert perf and other and len(other) + len(perf) == len(recs)
    assert {r["feature"] for r in perf} == {"performance"} and "performance" not in {r["feature"] for r in other}


def test_the_report_shows_flagged_windows_and_the_metrics_over_time(records: tuple[Path, list[dict[str, Any]]]) -> None:
    d, recs = records
    code, page, _text = _render(d, "--records", str(d / "records.jsonl"), "--config", str(d / "monitor.yaml"))
    assert code == 0
    perf = [r for r in recs if r["feature"] == "performance" and r["segment"] == {}]
    flagged = sorted((r for r in perf if r["drift"]), key=lambda r: (r["window_start"], r["statistic"]))
    assert flagged and min(r["window_start"] for r in flagged) >= "2026-01-01T03:00"  # only after the drop
    rows = page.rows["performance-flagged"]
    assert [(r["attrs"]["data-window-start"], r["attrs"]["data-metric"]) for r in rows] == [
        (r["window_start"], r["statistic"]) for r in flagged
    ]
    for row, rec in zip(rows, flagged, strict=True):
        cells = row["cells"]
        assert float(cells[2]) == pytest.approx(rec["value"], rel=1e-3)
        assert float(cells[3]) == pytest.approx(rec["effect"], rel=1e-3)
        assert float(cells[4]) == pytest.approx(rec["threshold"], rel=1e-3)
        assert cells[5] == rec["severity"] and cells[6] == str(rec["n_window"])
    fig = page.figures()["performance-figure"]
    values = [tr for tr in fig["data"] if tr["name"] == "accuracy"]
    assert len(values) == 1
    expected = [r["value"] for r in sorted(perf, key=lambda r: r["window_start"]) if r["statistic"] == "accuracy"]
    assert values[0]["y"] == pytest.approx(expected)
    # the performance records are not concept-drift detections
    assert "concept" not in page.rows


def test_without_reference_performance_the_section_says_so() -> None:
    rng = np.random.default_rng(2)
    score, y = scored(rng, 300, 0.9)
    from detectors.performance import METRICS, Floors, PerformanceLayout, Rules, evaluate_window

    layout = PerformanceLayout(CLASSIFICATION)
    rules = Rules(
        METRICS[CLASSIFICATION], 30, Floors(0.02, 0.1, 0.1), Floors(0.05, 0.25, 0.25), 0.01, "bonferroni", "segment"
    )
    recs = evaluate_window(
        layout, [({}, layout.state_of(score, y))], None, rules, monitor="m", window_start_ms=T0, window_end_ms=T0 + 1,
        window_index=0,
        fingerprint="f",
    )  # fmt: skip
    page = Page("\n".join(performance_html(recs)))
    ids = {a.get("id") for _t, a in page.tags}
    assert {"performance", "performance-note", "performance-flagged"} <= ids
    assert performance_html([]) == []
