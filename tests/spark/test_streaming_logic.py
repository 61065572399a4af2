"""The streaming job's logic without Spark: the executors' summary of a Kafka partition
(:class:`jobs.binned.PartitionSummary`) and the window state's step (:class:`jobs.streaming.WindowStep`),
checked against independent computations (the reference decoder, ``Layout.histogram`` per group,
hand-worked windows, a detector run by hand)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detectors.engine import ConceptTracker
from detectors.events import concept_values, decode_events
from detectors.sequential import make_detector
from jobs.binned import ARROW_SCHEMA, PartitionSummary, make_decoder
from jobs.common import JobError, Monitor
from jobs.kafka_source import share_budget
from jobs.streaming import BatchWriter, StreamState, WindowStep
from tests.spark.conftest import T0, make_events, write_monitor

pytestmark = pytest.mark.unit

MINUTE = 60_000


def _monitor(tmp: Path, **overrides: Any) -> Monitor:
    return Monitor.load(write_monitor(tmp, **overrides))


def _summary_rows(monitor: Monitor, values: list[bytes | None], partition: int = 0, first_offset: int = 0) -> Any:
    """Rows of one task that read ``values`` (offsets from ``first_offset``), in two lists, as pandas."""
    summary = PartitionSummary(monitor, make_decoder(monitor, 1 << 20), partition)
    dead: list[tuple[int, str]] = []
    half = len(values) // 2
    for lo, hi in ((0, half), (half, len(values))):
        chunk = values[lo:hi]

        def dl(i: int, reason: str, code: str, lo: int = lo) -> None:
            dead.append((first_offset + lo + i, code))

        summary.add(chunk, lambda i, lo=lo: first_offset + lo + i, None, dl)
    return summary.record_batch().to_pandas(), dead


def _rows(*frames: Any) -> Any:
    return pd.concat(frames, ignore_index=True)


def test_partition_summary_is_the_histogram_of_each_segment_and_pane(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, events={"segment_fields": ["region"]}, segments={"overall": True})
    events = make_events(600, seed=3, step_ms=400)  # 2 minutes: 2 panes of 1 minute
    values: list[bytes | None] = [json.dumps(e).encode() for e in events]
    values[5] = b"not json"
    values[77] = json.dumps({**events[77], "features": {**events[77]["features"], "x": "a string"}}).encode()
    values[300] = None
    rows, dead = _summary_rows(monitor, values, partition=3, first_offset=1000)

    # each rejected message's offset and the consumer's reason code (an empty message is not JSON)
    assert dead == [(1005, "not_json"), (1077, "bad_type"), (1300, "not_json")]
    t = rows[rows["kind"] == "t"].iloc[0]
    assert t["n"] == 597 and sum(n for _, n in t["reasons"]) == 3
    assert t["offset"] == 1000 and t["end_offset"] == 1600 and t["partition"] == 3
    clock = rows[rows["kind"] == "clock"].iloc[0]
    good = [e for i, e in enumerate(events) if i not in (5, 77, 300)]
    assert clock["event_time"].value // 1_000_000 == max(e["timestamp"] for e in good)
    assert rows[rows["kind"] != "clock"]["event_time"].isna().all()  # never behind Spark's watermark

    # independently: the reference decoder, then one histogram per (segment, pane)
    cols, errors = decode_events(good, monitor.config, monitor.reference, monitor.layout.features)
    assert not errors
    c = rows[rows["kind"] == "c"]
    got = {(json.loads(s)[0], int(p)): np.asarray(v) for s, p, v in zip(c["seg"], c["pane"], c["counts"], strict=True)}
    want = {}
    panes = cols.time_ms // MINUTE
    for region in sorted({e["region"] for e in good}):
        for pane in sorted(set(panes.tolist())):
            idx = [i for i in range(len(cols)) if cols.segments[i] == (region,) and panes[i] == pane]
            if idx:
                sub = {f: [cols.features[f][i] for i in idx] for f in monitor.layout.features}
                want[(region, pane)] = monitor.layout.histogram(sub).counts
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert sum(c["n"]) == len(good)
    # first appearance of each segment: its first event (time, offset)
    for s, first_ms, off in zip(c["seg"], c["first_ms"], c["offset"], strict=True):
        region = json.loads(s)[0]
        i = next(i for i, e in enumerate(events) if i not in (5, 77, 300) and e["region"] == region)
        assert (first_ms, off) == (events[i]["timestamp"], 1000 + i)


def test_concept_stream_is_in_offset_order(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path)
    events = make_events(200, seed=4)
    rows, _ = _summary_rows(monitor, [json.dumps(e).encode() for e in events])
    v = rows[rows["kind"] == "v"].iloc[0]
    cols, _ = decode_events(events, monitor.config, monitor.reference, monitor.layout.features)
    want = concept_values(cols, monitor.config)
    np.testing.assert_array_equal(v["values"], want[~np.isnan(want)])
    np.testing.assert_array_equal(v["times"], cols.time_ms[~np.isnan(want)])


def _count_row(monitor: Monitor, pane: int, n: int, seg: str | None = None, first_ms: int = 0, **kw: Any) -> dict:
    counts = np.zeros(monitor.layout.size, dtype=np.int64)
    counts[0] = n
    return {"kind": "c", "partition": 0, "offset": 0, "seg": seg, "pane": pane, "first_ms": first_ms, "n": n,
            "counts": counts, **kw}  # fmt: skip


COLUMNS = [f.name for f in ARROW_SCHEMA]


def _frame(rows: list[dict]) -> Any:
    """Rows as the window state receives them: every column of the executors' schema."""
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def test_windows_close_at_the_watermark_and_late_events_are_counted_per_window(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, window={"kind": "tumbling", "size": "1m"}, concept={"detector": "none"})
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    p0 = T0 // MINUTE
    out = step.step(st, _frame([_count_row(monitor, p0, 5), _count_row(monitor, p0 + 1, 7)]), watermark=0)
    assert [r for r in out if r["kind"] == "w"] == [] and next(r for r in out if r["kind"] == "valid")["n"] == 12
    assert step.next_close(st) == (p0 + 1) * MINUTE
    # the watermark reaches the first window's end: it closes (a timeout call, no rows)
    out = step.step(st, None, watermark=(p0 + 1) * MINUTE)
    closed = [r for r in out if r["kind"] == "w"]
    assert [(r["start"], r["end"], r["seg"], int(r["counts"][0])) for r in closed] == [
        (p0 * MINUTE, (p0 + 1) * MINUTE, None, 5)
    ]
    assert st.frontier == (p0 + 1) * MINUTE and step.next_close(st) == (p0 + 2) * MINUTE
    # events of the closed window are late (counted for it), those of the open one are added
    out = step.step(st, _frame([_count_row(monitor, p0, 3), _count_row(monitor, p0 + 1, 2)]), watermark=st.frontier)
    late = [(r["start"], r["end"], r["n"]) for r in out if r["kind"] == "late"]
    assert late == [(p0 * MINUTE, (p0 + 1) * MINUTE, 3)]
    assert next(r for r in out if r["kind"] == "valid")["n"] == 2
    out = step.step(st, None, watermark=(p0 + 5) * MINUTE)
    assert [(r["start"], int(r["counts"][0])) for r in out if r["kind"] == "w"] == [((p0 + 1) * MINUTE, 9)]
    assert st.panes == {} and step.next_close(st) is None


def test_sliding_windows_are_sums_of_panes(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, window={"kind": "sliding", "size": "3m", "slide": "1m"}, concept={"detector": "none"})
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    p0 = T0 // MINUTE
    step.step(st, _frame([_count_row(monitor, p0 + k, k + 1) for k in range(4)]), watermark=0)
    out = step.step(st, None, watermark=(p0 + 4) * MINUTE)
    got = {(r["start"] // MINUTE - p0, r["end"] // MINUTE - p0): int(r["counts"][0]) for r in out if r["kind"] == "w"}
    # hand-worked: window [s, s+3) holds the panes s..s+2 that have data (1, 2, 3, 4 events in panes 0..3)
    assert got == {(-2, 1): 1, (-1, 2): 1 + 2, (0, 3): 1 + 2 + 3, (1, 4): 2 + 3 + 4}
    # pane 3 is still needed by the windows starting at panes 2 and 3
    assert sorted(p - p0 for _s, p in st.panes) == [2, 3]
    # a late event: every window of its pane has closed
    out = step.step(st, _frame([_count_row(monitor, p0 + 1, 1)]), watermark=(p0 + 4) * MINUTE)
    assert [(r["start"] // MINUTE - p0, r["n"]) for r in out if r["kind"] == "late"] == [(1, 1)]


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_calendar_months_in_the_partition_summary_and_the_window_step(tmp_path: Path) -> None:
    """``size: 1mo, offset: 6h``: the executors number panes by month (from the 1st 06:00 UTC), the
    window state closes a month at the next one's start, and its events afterwards are late."""
    monitor = _monitor(
        tmp_path, window={"kind": "tumbling", "size": "1mo", "offset": "6h"}, concept={"detector": "none"}
    )
    times = ["2026-01-15T00:00:00", "2026-02-01T05:59:59.999", "2026-02-01T06:00:00", "2026-02-28T23:00:00"]
    events = [{**e, "timestamp": _iso_ms(t)} for e, t in zip(make_events(4, seed=5), times, strict=True)]
    rows, dead = _summary_rows(monitor, [json.dumps(e).encode() for e in events])
    assert dead == []
    c = rows[rows["kind"] == "c"]
    # months since 1970-01: January 2026 is 56 * 12 = 672; 2026-02-01 05:59 is still January's
    assert {int(p): int(n) for p, n in zip(c["pane"], c["n"], strict=True)} == {672: 2, 673: 2}
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    step.step(st, _frame([_count_row(monitor, 672, 2), _count_row(monitor, 673, 2)]), watermark=0)
    assert step.next_close(st) == _iso_ms("2026-02-01T06:00:00")
    out = step.step(st, None, watermark=_iso_ms("2026-03-01T06:00:00"))
    closed = [(r["start"], r["end"], int(r["counts"][0])) for r in out if r["kind"] == "w"]
    assert closed == [
        (_iso_ms("2026-01-01T06:00:00"), _iso_ms("2026-02-01T06:00:00"), 2),
        (_iso_ms("2026-02-01T06:00:00"), _iso_ms("2026-03-01T06:00:00"), 2),  # February: 28 days
    ]
    out = step.step(st, _frame([_count_row(monitor, 673, 1)]), watermark=st.frontier)
    late = [(r["start"], r["end"], r["n"]) for r in out if r["kind"] == "late"]
    assert late == [(_iso_ms("2026-02-01T06:00:00"), _iso_ms("2026-03-01T06:00:00"), 1)]
    records = BatchWriter(monitor, None, None).evaluate_window(
        *closed[0][:2], [(None, np.asarray(c["counts"].iloc[0]))]
    )
    assert {r["window_index"] for r in records} == {672}


def test_segments_beyond_the_cap_share_other_by_first_appearance(tmp_path: Path) -> None:
    monitor = _monitor(
        tmp_path,
        events={"segment_fields": ["region"]},
        segments={"overall": True, "max_segments": 2},
        concept={"detector": "none"},
    )
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    p = T0 // MINUTE
    rows = [
        _count_row(monitor, p, 1, seg='["c"]', first_ms=T0 + 30, partition=1),
        _count_row(monitor, p, 2, seg='["a"]', first_ms=T0 + 10),
        _count_row(monitor, p, 4, seg='["b"]', first_ms=T0 + 30, partition=0),
    ]
    out = step.step(st, _frame(rows), watermark=0)
    assert st.kept == [("a",), ("b",)]  # by (time, partition, offset): a, b (partition 0), c
    assert next(r for r in out if r["kind"] == "overflow")["n"] == 1
    out = step.step(st, None, watermark=(p + 1) * MINUTE)
    got = {r["seg"]: int(r["counts"][0]) for r in out if r["kind"] == "w"}
    assert got == {None: 7, '["a"]': 2, '["b"]': 4, '["__other__"]': 1}


def test_concept_detector_runs_per_partition_in_offset_order(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, concept={"detector": "adwin", "params": {"delta": 0.002}})
    rng = np.random.default_rng(9)
    streams = {p: np.concatenate([rng.normal(0.2, 0.05, 1500), rng.normal(0.7, 0.05, 1500)]) for p in (0, 1)}
    times = {p: T0 + np.arange(3000) * 10 + p for p in (0, 1)}
    rows = []
    for p in (1, 0):  # (out of order: the step sorts by partition, then offset)
        for k in (1, 0):
            sl = slice(k * 1500, (k + 1) * 1500)
            rows.append(
                {"kind": "v", "partition": p, "offset": k * 1500, "times": times[p][sl], "values": streams[p][sl]}
            )
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    out = step.step(st, _frame(rows[:2]), watermark=0)  # partition 1 in one micro-batch, partition 0 in the next
    out += step.step(st, _frame(rows[2:]), watermark=0)
    got = sorted(json.loads(r["record"])["window_end"] for r in out if r["kind"] == "concept")
    parts = {json.loads(r["record"])["segment"]["kafka_partition"] for r in out if r["kind"] == "concept"}
    assert parts == {"0", "1"}
    want = []
    for p in (0, 1):  # by hand: one detector per partition over its values in order
        det = make_detector("adwin", {"delta": 0.002})
        tracker = ConceptTracker(monitor.config, monitor.reference.fingerprint)
        for t, x in zip(times[p].tolist(), streams[p].tolist(), strict=True):
            rec = tracker.update(det, x, t)
            if rec is not None:
                want.append(rec["window_end"])
    assert want and got == sorted(want)
    assert set(st.concept) == {0, 1}


def test_state_round_trips_and_refuses_another_reference(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path, events={"segment_fields": ["region"]}, concept={"detector": "adwin"})
    step = WindowStep(monitor)
    st = StreamState(monitor.reference.fingerprint)
    p = T0 // MINUTE
    step.step(st, _frame([_count_row(monitor, p, 3, seg='["a"]'), _count_row(monitor, p + 1, 4, seg='["b"]')]), 0)
    step.step(st, _frame([{"kind": "v", "partition": 2, "offset": 0, "times": [T0], "values": [0.5]}]), 0)
    back = StreamState.from_bytes(st.to_bytes(), monitor.reference.fingerprint)
    assert back.kept == st.kept and back.frontier == st.frontier and back.concept == st.concept
    assert set(back.panes) == set(st.panes)
    for k in st.panes:
        np.testing.assert_array_equal(back.panes[k], st.panes[k])
    with pytest.raises(JobError, match="use a new --checkpoint"):
        StreamState.from_bytes(st.to_bytes(), "another-fingerprint")


def test_share_budget_is_proportional_and_exact() -> None:
    assert share_budget({"a": 300, "b": 100}, 200) == {"a": 150, "b": 50}
    assert share_budget({"a": 5, "b": 0}, 200) == {"a": 5, "b": 0}
    got = share_budget({"a": 1, "b": 1, "c": 1}, 2)
    assert sum(got.values()) == 2 and max(got.values()) == 1
    got = share_budget({("t", "0"): 1_000_000, ("t", "1"): 999_999}, 250_000)
    assert sum(got.values()) == 250_000 and abs(got[("t", "0")] - got[("t", "1")]) <= 1


def test_segments_silent_for_the_ttl_lose_their_verdict_series(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from jobs.streaming import BatchWriter
    from stream.metrics import Metrics

    monitor = _monitor(tmp_path, events={"segment_fields": ["region"]}, concept={"detector": "none"})
    registry = CollectorRegistry()
    writer = BatchWriter(monitor, None, Metrics(registry, "spark-test"), segment_ttl_windows=3)
    counts = [5] * monitor.layout.size

    def batch(minute: int, segments: list[str], watermark_minute: int) -> None:
        rows = [
            {"kind": "w", "start": T0 + minute * MINUTE, "end": T0 + (minute + 1) * MINUTE, "seg": json.dumps([s]),
             "counts": counts, "n": None, "record": None}
            for s in segments
        ] + [{"kind": "watermark", "n": T0 + watermark_minute * MINUTE}]  # fmt: skip
        out = writer.collect(rows)
        writer.set_metrics(out, [], 0.0, 0.0)

    def series(region: str) -> float | None:
        return registry.get_sample_value(
            "streamdrift_statistic_value",
            {"monitor": "spark-test", "segment": f"region={region}", "feature": "x", "statistic": "psi"},
        )

    batch(0, ["a", "b"], 1)
    assert series("a") is not None and series("b") is not None
    batch(2, ["a"], 3)  # b: no events in windows 1 and 2 (silent for 2 windows < 3)
    assert series("b") is not None
    batch(3, ["a"], 4)  # b: silent in windows 1, 2 and 3
    assert series("a") is not None and series("b") is None
    batch(4, ["a", "b"], 5)  # b comes back with its next window
    assert series("b") is not None


def test_bad_configs_and_arguments_exit_2_naming_them(tmp_path: Path, capsys: Any) -> None:
    import yaml

    from jobs.streaming import main

    config = write_monitor(tmp_path)  # no kafka section
    assert main(["--config", str(config), "--checkpoint", str(tmp_path / "c")]) == 2
    assert "kafka" in capsys.readouterr().err
    data = yaml.safe_load(config.read_text())
    data["kafka"] = {"bootstrap_servers": "127.0.0.1:1", "topic": "t", "extra": {"enable.auto.commit": True}}
    config.write_text(yaml.safe_dump(data))
    assert main(["--config", str(config), "--checkpoint", str(tmp_path / "c")]) == 2
    assert "enable.auto.commit" in capsys.readouterr().err
    data["kafka"].pop("extra")
    config.write_text(yaml.safe_dump(data))
    assert main(["--config", str(config), "--checkpoint", str(tmp_path / "c"), "--trigger", "soon"]) == 2
    assert "--trigger" in capsys.readouterr().err
    assert main(["--config", str(config), "--checkpoint", "c", "--max-offsets-per-trigger", "0"]) == 2
    assert "--max-offsets-per-trigger" in capsys.readouterr().err
