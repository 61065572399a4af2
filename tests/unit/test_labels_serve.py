"""The pure parts of serve's late labels: the label decoder against the backfill's ``decode_labels``,
the label partitions' merge (the order does not depend on how the partitions' batches interleave),
and the checkpoint's blob (round trip; a corrupt one is never loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.events import LabelColumns, decode_labels
from detectors.histogram import WindowState
from stream.decode import reason_code
from stream.service.checkpoint import StateStore
from stream.service.labels import LabelDecoder, LabelMerge

pytestmark = pytest.mark.unit

NOW = 1_767_225_600_000


def config(**labels: Any) -> MonitorConfig:
    return MonitorConfig.from_mapping(
        {
            "monitor": "m",
            "reference": "ref.json",
            "events": {"prediction_field": "score"},
            "labels": {"max_delay": "1h", "topic": "labels", **labels},
        }
    )


MESSAGES: list[bytes | None] = [
    b'{"id": "a", "label": 1, "timestamp": 1767225600000}',
    b'{"id": 42, "label": 0, "timestamp": 1767225600}',  # integer id, seconds
    b'{"id": "b", "label": true, "timestamp": 1767225600000, "other": {"x": [1, 2]}}',
    b'{"id": "c", "label": 7, "timestamp": 1767225600000}',  # not 0/1
    b'{"id": "", "label": 1, "timestamp": 1767225600000}',  # empty id
    b'{"id": true, "label": 1, "timestamp": 1767225600000}',  # boolean id
    b'{"id": 1.5, "label": 1, "timestamp": 1767225600000}',  # float id
    b'{"id": "d", "label": "1", "timestamp": 1767225600000}',  # label as text
    b'{"id": "e", "label": null, "timestamp": 1767225600000}',
    b'{"id": "f", "label": 1}',  # no time
    b'{"id": "g", "label": 1, "timestamp": 2024}',  # implausible
    b'{"id": "h", "label": 1, "timestamp": 1967225600000}',  # years ahead of the clock
    b'{"id": "i", "label": 1, "timestamp": "2026-01-01T00:00:00Z"}',  # ISO text (auto unit)
    b'{"id": "j", "label": 1.0, "timestamp": 1767225600000.0}',
    b'{"id": {"k": 1}, "label": 1, "timestamp": 1767225600000}',
    b"[1, 2]",
    b"not json",
    None,
    b'{"id": "k", "label": 0, "timestamp": 1767225600001}',
]


def reference_path(values: list[bytes | None], cfg: MonitorConfig) -> list[tuple[str, Any]]:
    """What the backfill makes of each message: ("ok", (id, time, label)) or ("rejected", code)."""
    out: list[tuple[str, Any]] = []
    for v in values:
        try:
            obj = json.loads(v) if v is not None else None
        except ValueError:
            out.append(("rejected", "not_json"))
            continue
        if v is None:
            out.append(("rejected", "not_json"))
            continue
        cols, errors = decode_labels([obj], cfg, now_ms=NOW)
        if errors:
            out.append(("rejected", reason_code(errors[0][1])))
        else:
            out.append(("ok", (cols.ids[0], int(cols.time_ms[0]), float(cols.label[0]))))
    return out


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_label_decoder_agrees_with_decode_labels(task: str) -> None:
    cfg = config(task=task)
    dec = LabelDecoder(cfg, wall_clock=lambda: NOW / 1000)
    for batch in (MESSAGES, MESSAGES[:3], MESSAGES[-1:], [MESSAGES[0]] * 5):
        cols, rejected = dec.decode(batch)
        got: list[tuple[str, Any]] = [("", None)] * len(batch)
        for j, i in enumerate(cols.rows):
            got[i] = ("ok", (cols.ids[j], int(cols.time_ms[j]), float(cols.label[j])))
        for r in rejected:
            got[r.index] = ("rejected", r.code)
        assert got == reference_path(batch, cfg)
    # (the fast path took the common messages: every one of a clean batch, none rejected)
    cols, rejected = dec.decode([MESSAGES[0], MESSAGES[18]])
    assert cols.ids == ["a", "k"] and not rejected


def test_label_decoder_with_kafka_timestamps() -> None:
    cfg = config(time_field=None)
    dec = LabelDecoder(cfg, wall_clock=lambda: NOW / 1000)
    cols, rejected = dec.decode([b'{"id": "a", "label": 1}', b'{"id": "b", "label": 0}'], [NOW, None])
    assert cols.ids == ["a"] and cols.time_ms.tolist() == [NOW]
    assert [r.code for r in rejected] == ["bad_time"]


def label_batches(rng: np.random.Generator, n: int, p: int) -> list[tuple[int, LabelColumns, np.ndarray]]:
    t = np.sort(rng.integers(0, 10_000, n)) + 1_767_225_600_000
    t = t + rng.integers(0, 50, n) * (rng.random(n) < 0.2)  # a little out of order within the partition
    cols = LabelColumns([f"p{p}-{i}" for i in range(n)], t.astype(np.int64), (rng.random(n) < 0.5) * 1.0, [])
    cuts = np.sort(rng.choice(np.arange(1, n), size=8, replace=False)).tolist()
    out = []
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        out.append(
            (p, LabelColumns(cols.ids[a:b], cols.time_ms[a:b], cols.label[a:b], []), np.arange(a, b, dtype=np.int64))
        )
    return out


def test_label_merge_order_does_not_depend_on_the_interleaving() -> None:
    rng = np.random.default_rng(4)
    per_part = {p: label_batches(rng, 400, p) for p in range(3)}
    released_orders = []
    for seed in range(5):
        order_rng = np.random.default_rng(100 + seed)
        merge = LabelMerge(idle_s=60.0, clock=lambda: 0.0)
        merge.assign([0, 1, 2])
        queues = {p: list(b) for p, b in per_part.items()}
        out: list[str] = []
        while any(queues.values()):
            p = int(order_rng.choice([q for q, b in queues.items() if b]))
            part, cols, offs = queues[p].pop(0)
            merge.add(part, cols, offs, int(offs[-1]) + 1)
            out.extend(merge.release().ids)
        released_orders.append(out)
    assert all(o == released_orders[0] for o in released_orders[1:])
    # what is released is a prefix of the order by (running maximum, partition, offset)
    keys = []
    for p, batches in per_part.items():
        t = np.concatenate([c.time_ms for _p, c, _o in batches])
        run = np.maximum.accumulate(t)
        keys += [(int(run[i]), p, i, f"p{p}-{i}") for i in range(len(t))]
    want = [k[3] for k in sorted(keys)]
    assert released_orders[0] == want[: len(released_orders[0])]
    assert len(released_orders[0]) >= len(want) - 400  # (only the partition ahead of the others waits)


def test_label_merge_idle_partitions_do_not_hold_labels_back() -> None:
    now = [0.0]
    merge = LabelMerge(idle_s=5.0, clock=lambda: now[0])
    merge.assign([0, 1])
    cols = LabelColumns(["a", "b"], np.array([10, 20], dtype=np.int64), np.array([1.0, 0.0]), [])
    merge.add(0, cols, np.array([0, 1]), 2)
    assert len(merge.release()) == 0  # partition 1 has no watermark yet: it may bring earlier labels
    now[0] = 6.0  # partition 1 idle (and 0 too)
    assert merge.idle()
    assert merge.release().ids == ["a", "b"]
    assert merge.offsets() == [[0, 2, 20]]
    fresh = LabelMerge(idle_s=5.0, clock=lambda: now[0])
    assert fresh.restore(merge.offsets()) == {0: 2}


def test_checkpoint_blob_round_trip_and_corruption(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "m", "fp")
    panes = {(0, 1): WindowState(np.arange(4, dtype=np.int64), 6, "fp")}
    store.save({"a": 1}, panes, {(0, 1)}, set(), 4, "fp", blob=b"first" * 100)
    store.save({"a": 2}, panes, set(), set(), 4, "fp", blob=b"second" * 100)
    assert sorted(p.name for p in tmp_path.glob("blob-*")) == ["blob-000000000001.bin", "blob-000000000002.bin"]
    cp = StateStore(tmp_path, "m", "fp").load()
    assert cp is not None and cp.state == {"a": 2} and cp.blob == b"second" * 100
    (tmp_path / "blob-000000000002.bin").write_bytes(b"second" * 99 + b"xecond")
    cp = StateStore(tmp_path, "m", "fp").load()
    assert cp is not None and cp.state == {"a": 1} and cp.blob == b"first" * 100  # the previous, whole one
    again = StateStore(tmp_path, "m", "fp")
    again.load()
    again.save({"a": 3}, panes, set(), set(), 4, "fp", blob=b"third")
    assert sorted(p.name for p in tmp_path.glob("blob-*")) == ["blob-000000000001.bin", "blob-000000000003.bin"]


def test_event_decoder_reads_prediction_ids_as_decode_events() -> None:
    from detectors.events import decode_events
    from detectors.reference import ReferenceProfile
    from stream.decode import EventDecoder

    rng = np.random.default_rng(1)
    ref = ReferenceProfile.build({"x": rng.normal(size=500)}, features=["x"], fine_bins=10, coarse_bins=4)
    cfg = config()
    ids: list[Any] = ["a", 7, True, 1.5, "", None, {"k": 1}, "b" * 300, 2**70]
    events = [{"timestamp": NOW + i, "score": 0.5, "features": {"x": 0.1}} for i in range(len(ids))]
    for e, i in zip(events, ids, strict=True):
        if i is not None:
            e["id"] = i
    values = [json.dumps(e).encode() for e in events]
    dec = EventDecoder(cfg, ref, ["x"], wall_clock=lambda: NOW / 1000)
    want, errors = decode_events(events, cfg, ref, ["x"], now_ms=NOW)
    assert not errors and want.ids == ["a", "7", None, None, None, None, None, "b" * 300, str(2**70)]
    for batch in (values, values[:2], values[:1]):
        cols, rejected = dec.decode(batch)
        assert not rejected
        assert cols.ids == want.ids[: len(batch)]


def test_labels_stopped_moves_the_label_watermark_to_the_predictions() -> None:
    """Hand-worked: 10-minute windows, max_delay 30m, clock_skew 1m; predictions at 1, 11, 21 and 31 min,
    one label (for the first, at 2 min); then the labels stop. At a prediction watermark of 62 min the label
    watermark becomes 62 - 1 min - 1 ms = 61 min - 1 ms; its tick is 60 min, which passes end + max_delay of
    the windows 0-10, 10-20 and 20-30 (30 + 30 <= 60), not 30-40 (70). Timed out: the predictions with
    t + 30 min <= 61 min - 1 ms, i.e. those at 11 and 21 min (31 + 30 > 61 - 1 ms: it still waits)."""
    from detectors.events import EventColumns
    from detectors.labelled import PerformanceTracker
    from detectors.reference import ReferenceProfile

    cfg = MonitorConfig.from_mapping(
        {
            "monitor": "m",
            "reference": "r.json",
            "events": {"prediction_field": "score"},
            "window": {"size": "10m"},
            "concept": {"detector": "none"},
            "labels": {"max_delay": "30m", "clock_skew": "1m"},
        }
    )
    ref = ReferenceProfile.build({"x": np.arange(100.0)}, calibrate=False)
    from detectors.engine import SegmentRouter

    tracker = PerformanceTracker(cfg, ref, SegmentRouter((), 10, True))
    m = 60_000
    t = np.array([1 * m, 11 * m, 21 * m, 31 * m], dtype=np.int64)
    cols = EventColumns(t, {}, [()] * 4, np.array([0.9, 0.1, 0.8, 0.7]), np.full(4, np.nan), ids=["a", "b", "c", "d"])
    tracker.add_predictions(cols, np.full(4, -1, dtype=np.int64))
    tracker.add_labels(LabelColumns(["a"], np.array([2 * m], dtype=np.int64), np.array([1.0]), []))
    assert tracker.advance(5 * m) == []  # the label is processed, no tick reaches a window's end + max_delay
    assert tracker.labels_stopped(5 * m) == []  # (5 - 1 min - 1 ms: no window can go yet)
    recs = tracker.labels_stopped(62 * m)
    starts = sorted({r["window_start"] for r in recs})
    assert starts == ["1970-01-01T00:00:00.000Z", "1970-01-01T00:10:00.000Z", "1970-01-01T00:20:00.000Z"]
    assert tracker.join.label_watermark == 61 * m - 1
    assert tracker.counts["label_timeout"] == 2 and tracker.counts["pending"] == 1
    assert tracker.counts["joined"] == 1 and tracker.counts["windows_waiting"] == 1  # (the 30-40 window)
    assert tracker.labels_stopped(62 * m) == []  # (no further tick)
