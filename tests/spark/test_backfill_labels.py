"""The Spark backfill with late labels (jobs/labels.py) writes the performance and concept records of
the local ``backfill --labels`` (:func:`detectors.engine.run_local_labels`) on the same files.

The data exercise every rule of the join: labels 5 s to 5.5 min after their prediction with
``max_delay`` 5 min (some too late), some stamped too early (beyond ``clock_skew``), duplicate
labels, labels of unknown ids, rejected labels, duplicate predictions, predictions without an id
or with an invalid score; the labels' arrival order is not their time order (the label watermark
runs ahead of a label's own time); ``min_coverage`` 0.8 emits windows before every label came."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from detectors.engine import run_local_labels
from detectors.events import decode_events, decode_labels
from detectors.histogram import Layout
from detectors.performance import FEATURE, PerformanceProfile
from detectors.reference import ReferenceProfile
from jobs.common import Monitor
from jobs.labels import run_labels
from stream.files import read_rows
from stream.settings import load_monitor
from tests.spark.conftest import SPARK_CONF, T0, make_events, write_jsonl, write_monitor

pytestmark = pytest.mark.spark

NOW = T0 + 30 * 86_400_000  # "now" for the future-time checks of both paths
LABELS = {"max_delay": "5m", "clock_skew": "10s", "min_coverage": 0.8, "min_labels": 50}


def predictions_and_labels(n: int, seed: int, n_segments: int = 3) -> tuple[list[Any], list[Any]]:
    """Predictions in time order (accuracy drops at the middle) and their label events in arrival order."""
    rng = np.random.default_rng(seed)
    events = make_events(n, seed=seed, n_segments=n_segments)
    preds: list[Any] = []
    truth: list[tuple[str, int, int]] = []
    for i, ev in enumerate(events):
        ev = dict(ev)
        y = int(rng.random() < 0.4)
        right = rng.random() < (0.9 if i < n // 2 else 0.7)
        decided = y if right else 1 - y
        ev["score"] = float(np.clip(0.5 + (decided - 0.5) * rng.uniform(0.05, 1.0), 0.0, 1.0))
        ev.pop("label")
        ev["id"] = f"p{i}"
        if i % 101 == 7:
            del ev["id"]  # unjoinable: no id
        elif i % 103 == 11:
            ev["score"] = 1.5  # unjoinable: not a probability
        preds.append(ev)
        if i % 97 == 5:
            preds.append({**ev, "score": 0.5})  # a duplicate prediction (its id is waiting)
        if "id" in ev:
            truth.append((ev["id"], int(ev["timestamp"]), y))
    labels: list[tuple[float, dict[str, Any]]] = []
    for k, (ident, tp, y) in enumerate(truth):
        # most labels within a minute, a tail up to 5.5 min (max_delay is 5 min)
        delay = int(rng.integers(5_000, 60_000) if rng.random() < 0.75 else rng.integers(60_000, 330_000))
        if k % 37 == 3:
            delay = -30_000  # stamped before its prediction by more than clock_skew: an orphan
        tl = tp + delay
        arrival = tl + float(rng.uniform(0, 40_000))  # arrival order differs from time order
        labels.append((arrival, {"timestamp": tl, "id": ident, "label": y}))
        if k % 29 == 4:  # a second label of the same id, later: an orphan
            labels.append((arrival + 1_000, {"timestamp": tl + 1_000, "id": ident, "label": 1 - y}))
        if k % 31 == 6:  # an id no prediction has
            labels.append((arrival, {"timestamp": tl, "id": f"unknown{k}", "label": y}))
        if k % 211 == 9:
            labels.append((arrival, {"timestamp": tl, "id": ident, "label": 7}))  # rejected: not 0/1
    labels.sort(key=lambda x: x[0])
    return preds, [lab for _a, lab in labels]


def monitor_with_performance(tmp_path: Path, **overrides: Any) -> Path:
    given: dict[str, Any] = {
        "events": {"label_field": None},
        "labels": LABELS,
        "concept": {"detector": "adwin", "error": "misclassification", "params": {"delta": 0.002}},
    }
    config = write_monitor(tmp_path, **{**given, **overrides})
    rng = np.random.default_rng(99)
    y = (rng.random(20_000) < 0.4).astype(int)
    decided = np.where(rng.random(20_000) < 0.9, y, 1 - y)
    score = np.clip(0.5 + (decided - 0.5) * rng.uniform(0.05, 1.0, 20_000), 0.0, 1.0)
    ref = ReferenceProfile.load(tmp_path / "reference.json")
    perf = PerformanceProfile.build(score, y, task="classification", replicates=500)
    dataclasses.replace(ref, performance=perf).save(tmp_path / "reference.json")
    return config


def local_records(config_path: Path, events: Path, labels: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, _ = decode_events(read_rows(events), config, reference, layout.features, now_ms=NOW)
    labs, _ = decode_labels(read_rows(labels), config, now_ms=NOW)
    records, tracker = run_local_labels(cols, labs, config, reference)
    return records, tracker.counts


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Field by field; floats within rel_tol 1e-9 (sums in another order), everything else equal."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for k, v in w.items():
            if isinstance(v, float) and not isinstance(g[k], bool):
                assert isinstance(g[k], float) and math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-12), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)


def write_labels(tmp_path: Path, kind: str, labels: list[Any]) -> Path:
    if kind == "jsonl":
        return write_jsonl(tmp_path / "labels.jsonl", labels)
    table = pa.Table.from_pylist(labels)
    if kind == "csv":
        pa_csv.write_csv(table, tmp_path / "labels.csv")
        return tmp_path / "labels.csv"
    pq.write_table(table, tmp_path / "labels.parquet", row_group_size=500)
    return tmp_path / "labels.parquet"


def check(spark: Any, tmp_path: Path, config: Path, events: Path, labels: Path) -> list[dict[str, Any]]:
    want, counts = local_records(config, events, labels)
    got, summary = run_labels(spark, Monitor.load(config), str(events), str(labels), now_ms=NOW)
    same(got, want)
    assert summary["joined"] == counts["joined"]
    assert summary["duplicate_prediction"] == counts["duplicate_prediction"]
    assert summary["unjoinable"] == counts["unjoinable"]
    assert summary["label_orphan"] == counts["label_orphan"]
    assert summary["label_timeout"] == counts["label_timeout"] + counts["pending"]
    assert summary["windows_emitted"] == counts["windows_emitted"]
    assert summary["windows_waiting"] == counts["windows_waiting"]
    # not vacuous: every rule happened
    assert counts["label_orphan"] > 0 and counts["label_timeout"] > 0 and counts["duplicate_prediction"] > 0
    assert counts["unjoinable"] > 0 and counts["windows_emitted"] >= 10
    return want


def test_tumbling_segmented_parity_jsonl(spark: Any, tmp_path: Path) -> None:
    preds, labels = predictions_and_labels(6000, seed=21, n_segments=5)
    events = write_jsonl(tmp_path / "events.jsonl", preds)
    lab_path = write_labels(tmp_path, "jsonl", labels)
    config = monitor_with_performance(
        tmp_path,
        events={"label_field": None, "segment_fields": ["region"]},
        segments={"overall": True, "max_segments": 3},
    )
    want = check(spark, tmp_path, config, events, lab_path)
    perf = [r for r in want if r["feature"] == FEATURE]
    segments = {tuple(sorted(r["segment"].items())) for r in perf}
    assert (("region", "__other__"),) in segments and () in segments and len(segments) == 5
    # some windows were emitted on coverage, before their last labels (which are not re-sent): with
    # min_coverage 1 (emission at max_delay only) their coverage is higher
    cov = {r["window_start"]: r["value"] for r in perf if r["statistic"] == "label_coverage" and not r["segment"]}
    (tmp_path / "complete").mkdir()
    complete = monitor_with_performance(
        tmp_path / "complete",
        events={"label_field": None, "segment_fields": ["region"]},
        segments={"overall": True, "max_segments": 3},
        labels={**LABELS, "min_coverage": 1.0},
    )
    full, _ = local_records(complete, events, lab_path)
    cov_full = {r["window_start"]: r["value"] for r in full if r["statistic"] == "label_coverage" and not r["segment"]}
    assert cov.keys() == cov_full.keys()
    assert sum(cov[w] < cov_full[w] for w in cov) >= 3
    assert any(r["drift"] for r in perf if r["statistic"] == "accuracy")  # the drop is flagged
    assert any(r["statistic"] == "adwin" for r in want)  # the concept detector on the joined labels


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_sliding_parity_parquet_and_csv_labels(spark: Any, tmp_path: Path, kind: str) -> None:
    preds, labels = predictions_and_labels(4000, seed=23)
    events = write_jsonl(tmp_path / "events.jsonl", preds)
    lab_path = write_labels(tmp_path, kind, labels)
    config = monitor_with_performance(tmp_path, window={"kind": "sliding", "size": "2m", "slide": "30s"})
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16384")  # the labels span several partitions
    try:
        reader = spark.read.parquet if kind == "parquet" else spark.read.text
        assert reader(str(lab_path)).rdd.getNumPartitions() > 1  # arrival order across partitions
        want = check(spark, tmp_path, config, events, lab_path)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", SPARK_CONF["spark.sql.files.maxPartitionBytes"])
    starts = sorted({r["window_start"] for r in want if r["feature"] == FEATURE})
    assert len(starts) > 20


def test_labels_need_a_labels_section(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.backfill import main
    from jobs.common import JobError

    events = write_jsonl(tmp_path / "events.jsonl", make_events(10, seed=1))
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"id": "p1", "label": 1, "timestamp": T0}])
    config = write_monitor(tmp_path)
    with pytest.raises(JobError, match="no labels section"):
        run_labels(spark, Monitor.load(config), str(events), str(labels))
    args = ["--config", str(config), "--input", str(events), "--labels", str(labels), "--output", "o.jsonl"]
    assert main(args) == 2  # before any Spark session
    assert "--labels: the monitor config has no labels section" in capsys.readouterr().err


def test_streamdrift_backfill_engine_spark_with_labels_writes_the_local_file(tmp_path: Path) -> None:
    """As a user runs both: ``streamdrift backfill --labels`` with ``--engine spark`` (spark-submit of
    jobs/backfill.py) and with the local engine write the same records: window statistics, then
    performance and concept records."""
    import subprocess
    import sys

    from stream.records import read_records
    from tests.spark.test_spark_submit import _env

    preds, labels = predictions_and_labels(2000, seed=29)
    events = write_jsonl(tmp_path / "events.jsonl", preds)
    lab_path = write_labels(tmp_path, "jsonl", labels)
    config = monitor_with_performance(tmp_path)
    outs = {}
    for engine in ("local", "spark"):
        outs[engine] = tmp_path / f"{engine}.jsonl"
        cmd = [sys.executable, "-m", "stream.cli", "backfill", "--engine", engine, "--config", str(config)]
        cmd += ["--input", str(events), "--labels", str(lab_path), "--output", str(outs[engine]), "--quiet"]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400, check=False, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if engine == "spark":
            assert "labels: " in proc.stdout and " joined, " in proc.stdout, proc.stdout
    want = read_records(outs["local"])
    assert {r["feature"] for r in want} >= {FEATURE, "x"}  # window statistics and performance
    same(read_records(outs["spark"]), want)


def test_no_valid_label_gives_no_performance_record(spark: Any, tmp_path: Path) -> None:
    preds, _labels = predictions_and_labels(600, seed=37)
    events = write_jsonl(tmp_path / "events.jsonl", preds)
    rejected = [{"timestamp": T0 + 1000 * i, "id": f"p{i}", "label": 3} for i in range(50)]
    lab_path = write_labels(tmp_path, "jsonl", rejected)
    config = monitor_with_performance(tmp_path)
    want, _counts = local_records(config, events, lab_path)
    got, summary = run_labels(spark, Monitor.load(config), str(events), str(lab_path), now_ms=NOW)
    assert got == want == []
    assert summary["rejected_labels"] == 50 and summary["labels"] == summary["joined"] == 0
    assert summary["first_label_error"] is not None and "not 0 or 1" in summary["first_label_error"][1]
    assert summary["windows_waiting"] > 0  # predictions whose windows never got a label: not emitted


def test_offset_windows_parity_and_months_refused(spark: Any, tmp_path: Path) -> None:
    """Panes start at ``window.offset`` in the Spark label job as in the local tracker (window_index
    included); calendar months are refused there with the parameter named."""
    from jobs.common import JobError

    preds, labels = predictions_and_labels(3000, seed=31)
    events = write_jsonl(tmp_path / "events.jsonl", preds)
    lab_path = write_labels(tmp_path, "jsonl", labels)
    config = monitor_with_performance(tmp_path, window={"kind": "tumbling", "size": "1m", "offset": "20s"})
    want = check(spark, tmp_path, config, events, lab_path)
    perf = [r for r in want if r["feature"] == FEATURE]
    assert perf and all(r["window_start"].endswith(":20.000Z") for r in perf)
    assert all(isinstance(r["window_index"], int) for r in perf)
    (tmp_path / "months").mkdir()
    months = monitor_with_performance(tmp_path / "months", window={"kind": "tumbling", "size": "1mo"})
    with pytest.raises(JobError, match=r"window\.size: Nmo"):
        run_labels(spark, Monitor.load(months), str(events), str(lab_path), now_ms=NOW)
