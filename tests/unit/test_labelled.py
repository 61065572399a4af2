"""The performance tracker: its records do not depend on how predictions and labels are batched or
interleaved, equal a direct computation over the joined pairs, are emitted once (coverage or
max_delay), survive snapshot/restore anywhere, and feed the concept detector in label order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.engine import END_OF_PREDICTIONS, SegmentRouter, WindowSpec, record_sort_key, run_local_labels
from detectors.evaluate import parse_iso_ms
from detectors.events import EventColumns, LabelColumns
from detectors.exceptions import ConfigError, ReferenceMismatchError, SnapshotError
from detectors.labelled import PerformanceTracker
from detectors.performance import CLASSIFICATION, PerformanceLayout, PerformanceProfile
from detectors.reference import ReferenceProfile
from detectors.sequential import make_detector

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000
MIN = 60_000


def scored(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(np.float64)
    decided = np.where(rng.random(n) < accuracy, y, 1.0 - y)
    return np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0), y


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    score, y = scored(rng, 20_000, 0.9)
    ref = ReferenceProfile.build({"x": rng.normal(size=2_000)}, calibration_replicates=500)
    return dataclasses.replace(
        ref, performance=PerformanceProfile.build(score, y, task=CLASSIFICATION, replicates=1_000)
    )


def config(**labels: object) -> MonitorConfig:
    return MonitorConfig.model_validate(
        {
            "monitor": "m",
            "reference": "r.json",
            "events": {"prediction_field": "score", "segment_fields": ["country"]},
            "window": {"kind": "sliding", "size": "20m", "slide": "10m"},
            "labels": {"max_delay": "30m", "min_labels": 30, **labels},
        }
    )


@dataclasses.dataclass
class Data:
    preds: EventColumns  # in time order
    labels: LabelColumns  # in arrival order


def data(seed: int, n: int = 6_000, hours: float = 3.0) -> Data:
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, int(hours * 3600_000), n))
    score, y = scored(rng, n, 0.88)
    score[rng.random(n) < 0.01] = np.nan  # unscored: unjoinable
    ids: list[str | None] = [f"p{i}" for i in range(n)]
    for i in rng.choice(n, 20, replace=False):
        ids[i] = None  # no id: unjoinable
    country = rng.choice(["de", "fr", "us"], n)
    preds = EventColumns(
        time_ms=t.astype(np.int64),
        features={},
        segments=[(c,) for c in country],
        prediction=score,
        label=np.full(n, np.nan),
        ids=ids,
    )
    delay = rng.integers(MIN, 45 * MIN, n)  # some beyond max_delay (30m)
    keep = rng.random(n) < 0.9
    lt = t + delay
    order = np.argsort(lt + rng.integers(0, 2 * MIN, n), kind="stable")  # arrival: roughly by label time
    order = order[keep[order]]
    labels = LabelColumns([f"p{i}" for i in order], lt[order].astype(np.int64), y[order], list(range(len(order))))
    return Data(preds, labels)


def drive(cfg: MonitorConfig, ref: ReferenceProfile, d: Data, seed: int, snapshot_at: int | None = None) -> list[dict]:
    """Feed the tracker like a consumer would: prediction batches in order (the watermark follows them),
    label batches at random points, advance at random points; optionally snapshot and restore."""
    rng = np.random.default_rng(seed)
    router = SegmentRouter(cfg.events.segment_fields, cfg.segments.max_segments, cfg.segments.overall)
    tracker = PerformanceTracker(cfg, ref, router)
    out: list[dict] = []
    t = d.preds.time_ms
    i = j = step = 0
    wp = -(2**62)
    while i < len(t) or j < len(d.labels):
        step += 1
        if step == snapshot_at:
            blob, keys = tracker.snapshot(), router.snapshot()
            router = SegmentRouter(cfg.events.segment_fields, cfg.segments.max_segments, cfg.segments.overall)
            router.restore(keys)
            tracker = PerformanceTracker(cfg, ref, router)
            tracker.restore(blob)
        if j >= len(d.labels) or (i < len(t) and rng.random() < 0.5):
            k = min(len(t), i + int(rng.integers(1, 700)))
            while k < len(t) and t[k] == t[k - 1]:
                k += 1
            rows = np.arange(i, k)
            sub = EventColumns(
                t[rows],
                {},
                [d.preds.segments[r] for r in rows],
                d.preds.prediction[rows],
                d.preds.label[rows],
                ids=[d.preds.ids[r] for r in rows],  # type: ignore[index]
            )
            tracker.add_predictions(sub, router.route(sub.segments))
            i = k
            wp = int(t[k - 1]) + 1 if k < len(t) else END_OF_PREDICTIONS
        else:
            k = min(len(d.labels), j + int(rng.integers(1, 700)))
            lab = d.labels
            tracker.add_labels(LabelColumns(lab.ids[j:k], lab.time_ms[j:k], lab.label[j:k], lab.rows[j:k]))
            j = k
        if rng.random() < 0.6:
            out += tracker.advance(wp)
    out += tracker.advance(END_OF_PREDICTIONS)
    return out


def by_key(records: list[dict]) -> dict[tuple, dict]:
    return {(r["window_start"], tuple(sorted(r["segment"].items())), r["statistic"]): r for r in records}


@pytest.mark.parametrize("coverage", [0.9, 1.0])
def test_records_do_not_depend_on_batching_or_interleaving(reference: ReferenceProfile, coverage: float) -> None:
    cfg = config(min_coverage=coverage)
    d = data(3)
    runs = [drive(cfg, reference, d, seed) for seed in (1, 2, 3)]
    assert len(runs[0]) > 100
    assert runs[0] == runs[1] == runs[2]
    backfill, _tracker = run_local_labels(d.preds, d.labels, cfg, reference)
    # the backfill also checks the windows at the last label's time: the rest are equal
    assert [r for r in backfill if r in runs[0]] == runs[0]


def test_each_window_is_emitted_once_and_equals_a_direct_computation(reference: ReferenceProfile) -> None:
    cfg = config(min_coverage=1.0)  # only max_delay (or complete labels) emits: every pair is in
    d = data(4)
    records, tracker = run_local_labels(d.preds, d.labels, cfg, reference)
    keys = [(r["window_start"], tuple(sorted(r["segment"].items())), r["statistic"]) for r in records]
    assert len(keys) == len(set(keys))  # not re-sent
    # direct: pair each label with its prediction by the rule, then group by window
    t, ids = d.preds.time_ms, d.preds.ids
    pos = {ident: i for i, ident in enumerate(ids) if ident is not None}
    wl = -(2**62)
    paired: dict[int, float] = {}
    for ident, lt, y in zip(d.labels.ids, d.labels.time_ms.tolist(), d.labels.label.tolist(), strict=True):
        wl = max(wl, lt)
        i = pos.get(ident)
        if i is None or i in paired or np.isnan(d.preds.prediction[i]):
            continue
        if t[i] - 60_000 <= lt and wl < t[i] + 30 * MIN:
            paired[i] = y
    layout = PerformanceLayout(CLASSIFICATION, 0.5)
    valid = np.array([ident is not None for ident in ids]) & ~np.isnan(d.preds.prediction)
    checked = 0
    for r in records:
        if r["statistic"] != "accuracy" or r["segment"] != {}:
            continue
        start = (np.datetime64(r["window_start"][:-1]) - np.datetime64("1970-01-01")) // np.timedelta64(1, "ms")
        in_window = valid & (t >= start) & (t < start + 20 * MIN)
        rows = [i for i in np.flatnonzero(in_window) if i in paired]
        state = layout.state_of(d.preds.prediction[rows], np.array([paired[i] for i in rows]), int(in_window.sum()))
        assert r["n_window"] == len(rows) and r["n_missing"] == in_window.sum() - len(rows)
        assert r["value"] == layout.metrics(state)["accuracy"]
        checked += 1
    assert checked >= 15 and tracker.counts["windows_waiting"] <= 2


@pytest.mark.parametrize(
    ("window", "hours", "starts_with"),
    [
        ({"kind": "tumbling", "size": "1h", "offset": "20m"}, 5.0, ":20:00.000Z"),
        ({"kind": "tumbling", "size": "1mo", "offset": "6h"}, 24 * 75.0, "-01T06:00:00.000Z"),
    ],
)
def test_performance_windows_follow_offsets_and_calendar_months(
    reference: ReferenceProfile, window: dict[str, str], hours: float, starts_with: str
) -> None:
    base = config(min_coverage=0.9)
    cfg = MonitorConfig.model_validate({**base.model_dump(mode="json", exclude_none=True), "window": window})
    d = data(5, hours=hours)
    runs = [drive(cfg, reference, d, seed) for seed in (1, 2)]
    assert runs[0] == runs[1] and runs[0]
    starts = {r["window_start"] for r in runs[0]}
    assert len(starts) >= 3 and all(s.endswith(starts_with) for s in starts)
    spec = WindowSpec.from_config(cfg)
    for r in runs[0]:
        assert spec.window_bounds(r["window_index"]) == (parse_iso_ms(r["window_start"]), parse_iso_ms(r["window_end"]))
    keys = [(r["window_start"], tuple(sorted(r["segment"].items())), r["statistic"]) for r in runs[0]]
    assert len(keys) == len(set(keys))


def test_coverage_emits_early_and_later_labels_do_not_resend(reference: ReferenceProfile) -> None:
    d = data(5)
    early, _ = run_local_labels(d.preds, d.labels, config(min_coverage=0.5), reference)
    late, _ = run_local_labels(d.preds, d.labels, config(min_coverage=1.0), reference)
    cov_early = [r for r in early if r["statistic"] == "label_coverage" and r["segment"] == {}]
    cov_late = {r["window_start"]: r for r in late if r["statistic"] == "label_coverage" and r["segment"] == {}}
    assert all(r["value"] >= 0.5 for r in cov_early)
    lower = [
        r for r in cov_early if r["window_start"] in cov_late and r["value"] < cov_late[r["window_start"]]["value"]
    ]
    assert len(lower) >= 5  # emitted before every label was in


def test_segments_add_up_to_the_overall_segment(reference: ReferenceProfile) -> None:
    d = data(6)
    records, _ = run_local_labels(d.preds, d.labels, config(), reference)
    windows: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["statistic"] == "accuracy":
            windows.setdefault(r["window_start"], {})[",".join(r["segment"].values()) or "__all__"] = r
    assert len(windows) > 10
    for segs in windows.values():
        assert set(segs) == {"__all__", "de", "fr", "us"}
        assert segs["__all__"]["n_window"] == sum(segs[s]["n_window"] for s in ("de", "fr", "us"))
        assert segs["__all__"]["n_missing"] == sum(segs[s]["n_missing"] for s in ("de", "fr", "us"))


@pytest.mark.parametrize("at", [5, 17, 40])
def test_snapshot_and_restore_anywhere_give_the_clean_records(reference: ReferenceProfile, at: int) -> None:
    cfg = config()
    d = data(7)
    assert drive(cfg, reference, d, 11, snapshot_at=at) == drive(cfg, reference, d, 11)


def test_restore_refuses_another_reference_or_other_settings(reference: ReferenceProfile) -> None:
    cfg = config()
    router = SegmentRouter(("country",), 100, True)
    blob = PerformanceTracker(cfg, reference, router).snapshot()
    other = dataclasses.replace(reference, n_rows=reference.n_rows + 1)
    with pytest.raises(ReferenceMismatchError):
        PerformanceTracker(cfg, other, router).restore(blob)
    with pytest.raises(SnapshotError, match="settings changed"):
        PerformanceTracker(config(max_delay="1h"), reference, router).restore(blob)


def test_concept_detector_runs_on_joined_errors_in_label_order(reference: ReferenceProfile) -> None:
    cfg = MonitorConfig.model_validate(
        {**config().model_dump(), "concept": {"detector": "adwin", "error": "misclassification"}}
    )
    d = data(8, n=20_000, hours=6.0)
    # a drop in accuracy halfway: flip more decisions of the second half
    late = d.preds.time_ms >= T0 + 3 * 3600_000
    pos = {ident: i for i, ident in enumerate(d.preds.ids) if ident is not None}
    flip = late & (np.random.default_rng(1).random(len(late)) < 0.3)
    score = d.preds.prediction.copy()
    score[flip] = 1.0 - score[flip]
    d.preds.prediction[:] = score
    records, _tracker = run_local_labels(d.preds, d.labels, cfg, reference)
    hits = [r for r in records if r["statistic"] == "adwin"]
    assert hits
    # the same detector fed directly with the pairs' errors in label arrival order (the join rule)
    det = make_detector("adwin")
    wl, seen, n, direct = -(2**62), set(), 0, []
    for ident, lt, y in zip(d.labels.ids, d.labels.time_ms.tolist(), d.labels.label.tolist(), strict=True):
        wl = max(wl, lt)
        i = pos.get(ident)
        if i is None:
            continue  # its prediction had no id
        s = score[i]
        if np.isnan(s) or i in seen or not (d.preds.time_ms[i] - 60_000 <= lt and wl < d.preds.time_ms[i] + 30 * MIN):
            continue
        seen.add(i)
        n += 1
        if det.update(float((s >= 0.5) != (y >= 0.5))):
            direct.append(n)
    assert [r["n_window"] for r in hits] == [b - a for a, b in zip([0, *direct], direct, strict=False)]


def test_a_reference_measured_otherwise_is_refused(reference: ReferenceProfile) -> None:
    router = SegmentRouter(("country",), 100, True)
    with pytest.raises(ConfigError, match=r"labels\.threshold: 0\.6 differs"):
        PerformanceTracker(config(threshold=0.6), reference, router)
    with pytest.raises(ConfigError, match=r"labels\.task"):
        PerformanceTracker(config(task="regression"), reference, router)


def test_records_sort_like_window_records(reference: ReferenceProfile) -> None:
    d = data(9, n=2_000)
    records, _ = run_local_labels(d.preds, d.labels, config(), reference)
    assert sorted(records, key=record_sort_key)  # every field the sort key reads is present
