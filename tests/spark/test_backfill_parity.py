"""Parity: on the same in-order events the Spark backfill writes the records of the local engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from jobs.backfill import run_backfill
from jobs.common import Monitor
from stream.files import read_rows
from stream.settings import load_monitor
from tests.spark.conftest import make_events, write_jsonl, write_monitor

pytestmark = pytest.mark.spark

FLOATS = ("value", "p_value", "p_value_adjusted", "threshold")


def local_records(config_path: Path, events_path: Path) -> list[dict[str, Any]]:
    config = load_monitor(config_path)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    cols, _errors = decode_events(read_rows(events_path), config, reference, layout.features)
    return run_local(cols, config, reference, layout)


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for k in w:
            if k in FLOATS and w[k] is not None:
                assert g[k] is not None and math.isclose(g[k], w[k], rel_tol=1e-9, abs_tol=1e-9), (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


def _events_file(tmp_path: Path, kind: str, rows: list[Any]) -> Path:
    if kind == "jsonl":
        return write_jsonl(tmp_path / "events.jsonl", rows)
    if kind == "csv":  # flat rows (features at the top level); None -> an empty cell
        path = tmp_path / "events.csv"
        flat = [{k: v for k, v in r.items() if k != "features"} | r["features"] for r in rows]
        pa_csv.write_csv(pa.Table.from_pylist(flat), path)
        return path
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist([r for r in rows if isinstance(r, dict)]), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_tumbling_parity_with_rejections_and_concept(spark: Any, tmp_path: Path, kind: str) -> None:
    rows = make_events(6000, seed=3, drift_from=3600, bad_every=97, bad_kind="type" if kind == "jsonl" else "time")
    if kind == "jsonl":
        rows.insert(1234, "{not json")
    events = _events_file(tmp_path, kind, rows)
    config = write_monitor(tmp_path)
    want = local_records(config, events)
    got, summary = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    # the comparison is not vacuous: windows with verdicts, drift after the shift, concept detections
    assert summary["rejected"] == sum(1 for i in range(6000) if i % 97 == 96) + (kind == "jsonl")
    assert any(r["drift"] for r in want if r["statistic"] == "ks")
    assert any(r["statistic"] == "adwin" for r in want)
    assert len({r["window_start"] for r in want}) >= 20
    reader = spark.read.text if kind == "jsonl" else spark.read.parquet
    assert reader(str(events)).rdd.getNumPartitions() > 1  # the input really was split


def test_csv_parity_with_top_level_features(spark: Any, tmp_path: Path) -> None:
    rows = make_events(4000, seed=13, drift_from=2000)
    events = _events_file(tmp_path, "csv", rows)
    config = write_monitor(tmp_path, events={"features_field": None}, concept={"detector": "page_hinkley"})
    want = local_records(config, events)
    got, summary = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    assert summary["rejected"] == 0 and any(r["drift"] for r in want)
    assert any(r["n_missing"] > 0 for r in want if r["feature"] == "y")  # empty cells are missing, not 0


def test_segmented_parity_with_overflow(spark: Any, tmp_path: Path) -> None:
    rows = make_events(6000, seed=5, drift_from=4000, n_segments=5)
    events = _events_file(tmp_path, "jsonl", rows)
    config = write_monitor(
        tmp_path, events={"segment_fields": ["region"]}, segments={"overall": True, "max_segments": 3}
    )
    want = local_records(config, events)
    got, summary = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    segments = {tuple(sorted(r["segment"].items())) for r in want}
    assert (("region", "__other__"),) in segments and () in segments
    assert len(segments) == 5  # overall, three kept regions, __other__
    assert summary["segments"] == 5 and summary["overflowed_segments"] == 2


def test_sliding_window_parity(spark: Any, tmp_path: Path) -> None:
    rows = make_events(5000, seed=9, drift_from=2500)
    events = _events_file(tmp_path, "jsonl", rows)
    config = write_monitor(
        tmp_path, window={"kind": "sliding", "size": "2m", "slide": "30s"}, concept={"detector": "none"}
    )
    want = local_records(config, events)
    got, _ = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    starts = sorted({r["window_start"] for r in want})
    assert len(starts) > 20  # overlapping windows: one every 30 s


def test_count_window_parity(spark: Any, tmp_path: Path) -> None:
    rows = make_events(5000, seed=19, drift_from=3000, n_segments=3, bad_every=89)
    events = _events_file(tmp_path, "jsonl", rows)
    config = write_monitor(
        tmp_path,
        events={"segment_fields": ["region"]},
        window={"kind": "count", "size": 300},
        concept={"detector": "none"},
    )
    want = local_records(config, events)
    got, _ = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    overall = {(r["window_start"], r["window_end"]) for r in want if not r["segment"]}
    assert len(overall) == (5000 - 5000 // 89) // 300  # only full windows
    assert len({tuple(r["segment"].items()) for r in want}) == 4


def test_calendar_month_and_tied_count_window_parity(spark: Any, tmp_path: Path) -> None:
    """Calendar months with an offset (2026-01 .. 2026-05) and count windows whose times all tie: the
    Spark backfill writes the local engine's records, window_index included."""
    rows = make_events(2000, seed=23, drift_from=1200, step_ms=3_600_000)  # pairs an hour apart: 83 days
    events = _events_file(tmp_path, "jsonl", rows)
    config = write_monitor(
        tmp_path, window={"kind": "tumbling", "size": "1mo", "offset": "6h"}, concept={"detector": "none"}
    )
    want = local_records(config, events)
    got, _ = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    windows = sorted({(r["window_start"], r["window_index"]) for r in want})
    assert windows == [
        ("2025-12-01T06:00:00.000Z", 671),  # 2026-01-01 00:00 .. 06:00 belongs to December
        ("2026-01-01T06:00:00.000Z", 672),
        ("2026-02-01T06:00:00.000Z", 673),
        ("2026-03-01T06:00:00.000Z", 674),
    ]

    tied = make_events(1000, seed=29, step_ms=0)  # every event at T0
    events = _events_file(tmp_path, "jsonl", tied)
    config = write_monitor(tmp_path, window={"kind": "count", "size": 100}, concept={"detector": "none"})
    want = local_records(config, events)
    got, _ = run_backfill(spark, Monitor.load(config), str(events))
    assert_same_records(got, want)
    assert sorted({r["window_index"] for r in want}) == list(range(10))
    assert len({(r["window_start"], r["window_end"]) for r in want}) == 1
