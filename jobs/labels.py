"""The Spark backfill's late labels: prediction and label files joined by id, performance per window.

``spark-submit jobs/backfill.py --config monitor.yaml --input predictions.jsonl --labels labels.jsonl
--output records.jsonl`` writes, after the window statistics, the performance records (and, with
``concept.stream: model_error``, the concept detector's records on the joined labels) that
``streamdrift backfill --labels`` (:func:`detectors.engine.run_local_labels`) writes for the same
files. How the local join decides is in :mod:`detectors.join`; this job computes the same
decisions with Spark operations instead of replaying the streams:

Arrival order of the labels
    A label's *input position*: its file partition's index, then its row (for one file, the file
    order, which is the order the local backfill hands the labels over in). The local join's label
    watermark ``W_L`` at a label is the largest label time up to it in this order: executors keep
    the running maximum within their partition, the driver adds the maximum of the partitions
    before (a prefix over a handful of numbers).

Which label pairs (the join rule of :mod:`detectors.join`)
    Predictions: events with an id and a valid score (the others are ``unjoinable``). Of several
    predictions with one id, the first by (event time, input position) waits; the others are
    ``duplicate_prediction``. A label pairs with the waiting prediction of its id when
    ``t_p - clock_skew <= t_l`` and ``W_L < t_p + max_delay``, and it is the first such label in
    arrival order; every other label is an orphan. This is a Spark equi-join on the id's 64-bit hash
    (:func:`detectors.join.id_hashes`, as the local table keys), a filter and a window function.

When a window's performance is emitted (:class:`detectors.labelled.PerformanceTracker`)
    The local tracker decides at the *ticks* of ``W_L`` (its crossings of a multiple of the pane
    length), seeing the pairs of the labels up to the one that crossed. So every pair gets the tick
    from which it is visible: its own label's tick if that label crossed it, else the next tick
    reached (or only the end of the input). Spark sums the performance state (integer counts per
    score bin for a classification, sums for a regression; :class:`detectors.performance.PerformanceLayout`)
    per (segment, pane, visible-from tick) (``mapInPandas``, one vector per partition and key); the
    driver collects these vectors (never pairs), sums them and replays the emission rule over the
    ticks: a window is emitted at the first tick at or after its
    end where its label coverage reaches ``labels.min_coverage`` or ``max_delay`` has passed, with
    the pairs visible then, and once more at the end of the input at the last label's time.

The concept detector
    runs on the driver over the joined pairs' errors in label-arrival order (input position), the
    order of the local backfill and ``serve``; Spark sorts the pairs and the driver reads them a
    partition at a time (``toLocalIterator``).

Differences from the local backfill (documented, not accidental)
    * no ``labels.budget``: Spark keeps every waiting prediction (a backfill has an end); the
      records are equal to the local ones while the local budget holds;
    * an id is used once: a later prediction with an id already seen is a duplicate even when the
      first one has paired or expired meanwhile (locally it may wait again then, depending on how
      far the labels had got: reusing ids makes the local result depend on its batching too);
    * the counts: ``label_timeout`` is every waiting prediction that never paired (locally those
      still waiting at the end are ``pending``, not timed out).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from detectors.engine import ConceptTracker, SegmentRouter
from detectors.events import decode_labels
from detectors.join import id_hashes
from detectors.labelled import PerformanceTracker, pair_errors
from detectors.sequential import make_detector
from jobs.common import JobError, Monitor, Tally, chunks, decoded_chunks, route_segments, segment_dict

SEQ_SHIFT = 40  # (as jobs.backfill) input position = (partition << 40) + row
NEVER = -(2**62)
FINAL = 2**62  # "visible only at the end of the input"
OVERALL = ""  # the overall segment's key in the Spark columns (a raw segment key is JSON text)
PRED_SCHEMA = "h long, tp long, score double, seg string, seq long"
LABEL_SCHEMA = "h long, tl long, y double, lseq long, lrun long"


def _key_text(key: tuple[str, ...]) -> str:
    import json

    return json.dumps(list(key))


def _key_of(text: str) -> tuple[str, ...]:
    import json

    return tuple(json.loads(text))


# -- executors -------------------------------------------------------------------------------------
def prediction_summary(monitor: Monitor, items: Iterator[tuple[Any, int, Any]]) -> Iterator[tuple[Any, ...]]:
    """Tagged partial results of one partition of predictions: ``("p", hash, time, score, raw segment,
    position)`` per joinable prediction, ``("s", key, (time, position))`` first appearances of the
    segments, ``("e", valid, rejected, first error, unjoinable)``."""
    lab = monitor.config.labels
    assert lab is not None
    from detectors.performance import PerformanceLayout

    layout = PerformanceLayout(lab.task, lab.threshold)
    segmented = bool(monitor.segment_fields)
    first: dict[tuple[str, ...], tuple[int, int]] = {}
    n_unjoinable = 0
    tally = Tally()
    for d in decoded_chunks(monitor, items, tally):
        n = len(d.cols)
        t = d.cols.time_ms
        if segmented:
            for i in np.lexsort((d.seq, t)).tolist():
                k = d.cols.segments[i]
                cand = (int(t[i]), int(d.seq[i]))
                if k not in first or cand < first[k]:
                    first[k] = cand
        ids = d.cols.ids
        assert ids is not None
        has_id = np.fromiter((i is not None for i in ids), dtype=bool, count=n)
        ok = has_id & layout.valid_scores(d.cols.prediction)
        n_unjoinable += int(n - ok.sum())
        idx = np.flatnonzero(ok)
        if not len(idx):
            continue
        h = id_hashes([ids[i] for i in idx.tolist()]).view(np.int64)  # type: ignore[misc]
        for j, i in enumerate(idx.tolist()):
            seg = _key_text(d.cols.segments[i]) if segmented else OVERALL
            yield ("p", int(h[j]), int(t[i]), float(d.cols.prediction[i]), seg, int(d.seq[i]))
    for k, fs in first.items():
        yield ("s", k, fs)
    yield ("e", tally.valid, tally.rejected, tally.first_error, n_unjoinable)


def label_summary(monitor: Monitor, items: Iterator[tuple[Any, int, Any]], *, now_ms: int) -> Iterator[tuple[Any, ...]]:
    """Tagged partial results of one partition of label events: ``("l", hash, time, label, position,
    running maximum of the times in this partition)``, ``("m", partition, its maximum time)``,
    ``("e", valid, rejected, first error)``."""
    run = NEVER
    part: int | None = None
    n_valid = n_rejected = 0
    first_error: tuple[int, str] | None = None
    for chunk in chunks(items):
        rows = [c[0] for c in chunk]
        seqs = np.asarray([c[1] for c in chunk], dtype=np.int64)
        kts = [c[2] for c in chunk] if any(c[2] is not None for c in chunk) else None
        labels, errors = decode_labels(rows, monitor.config, kts, now_ms=now_ms)
        if errors:
            n_rejected += len(errors)
            e = min((int(seqs[i]), msg) for i, msg in errors)
            first_error = e if first_error is None else min(first_error, e)
        n = len(labels)
        if n == 0:
            continue
        n_valid += n
        seq = seqs[np.asarray(labels.rows, dtype=np.int64)]
        part = int(seq[0]) >> SEQ_SHIFT
        wl = np.maximum.accumulate(np.maximum(labels.time_ms, run))
        run = int(wl[-1])
        h = id_hashes(labels.ids).view(np.int64)
        for j in range(n):
            yield ("l", int(h[j]), int(labels.time_ms[j]), float(labels.label[j]), int(seq[j]), int(wl[j]))
    if part is not None:
        yield ("m", part, run)
    yield ("e", n_valid, n_rejected, first_error)


def _pane_states(monitor: Monitor, batches: Iterator[Any]) -> Iterator[Any]:
    """The performance state of a partition's pairs per (raw segment, pane, visible-from tick), and the
    overall one's: rows of (segment, pane, tick, state bytes); the driver sums a key's rows. (One pass
    per Arrow batch, grouped with numpy as :class:`detectors.labelled.PerformanceTracker` groups.)"""
    import pandas as pd

    from detectors.performance import CLASSIFICATION, PerformanceLayout

    lab = monitor.config.labels
    assert lab is not None
    layout = PerformanceLayout(lab.task, lab.threshold)
    size = layout.size
    acc: dict[tuple[str, int, int], Any] = {}
    for pdf in batches:
        if not len(pdf):
            continue
        score = pdf["score"].to_numpy(dtype=np.float64)
        label = pdf["y"].to_numpy(dtype=np.float64)
        pane = pdf["pane"].to_numpy(dtype=np.int64)
        vt = pdf["vt"].to_numpy(dtype=np.int64)
        cell, head = layout.contributions(score, label)
        groups: list[tuple[str, Any]] = []
        if monitor.overall:
            groups.append((OVERALL, np.ones(len(pdf), dtype=bool)))
        if monitor.segment_fields:
            segs = pdf["seg"].to_numpy()
            groups.extend((s, segs == s) for s in sorted(set(segs.tolist())))
        for seg, mask in groups:
            uniq, inv = np.unique(np.stack([pane[mask], vt[mask]], axis=1), axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            g = len(uniq)
            h = head[mask]
            sums = np.stack([np.bincount(inv, weights=h[:, c], minlength=g) for c in range(h.shape[1])], axis=1)
            cells = None
            if layout.task == CLASSIFICATION:
                sums = np.rint(sums).astype(np.int64)
                cells = np.bincount(inv * size + cell[mask], minlength=g * size).reshape(g, size)
            for k, (p, v) in enumerate(uniq.tolist()):
                state = acc.get((seg, p, v))
                if state is None:
                    state = acc[(seg, p, v)] = layout.empty()
                state[: sums.shape[1]] += sums[k]
                if cells is not None:
                    state += cells[k]
    yield pd.DataFrame(
        [(seg, p, v, state.tobytes()) for (seg, p, v), state in acc.items()], columns=["seg", "pane", "vt", "state"]
    )


# -- driver ----------------------------------------------------------------------------------------
@dataclass
class _Cumulative:
    """Values keyed by the tick from which they are visible; the sum of those visible at a tick."""

    ticks: list[int] = field(default_factory=list)
    sums: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, items: list[tuple[int, Any]]) -> _Cumulative:
        c = cls()
        total: Any = None
        for vt, v in sorted(items, key=lambda x: x[0]):
            total = v if total is None else total + v
            c.ticks.append(vt)
            c.sums.append(total)
        return c

    def at(self, tick: int, zero: Any) -> Any:
        i = bisect.bisect_right(self.ticks, tick)
        return self.sums[i - 1] if i else zero


def run_labels(
    spark: Any,
    monitor: Monitor,
    source: str,
    labels_path: str,
    *,
    fmt: str | None = None,
    labels_format: str | None = None,
    kafka: dict[str, str] | None = None,
    now_ms: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The performance and concept records of ``labels_path`` joined to the predictions of ``source``
    (in the local backfill's order), and the join's counts."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.backfill import partials

    config = monitor.config
    lab = config.labels
    if lab is None:
        raise JobError("--labels: the monitor config has no labels section (labels.max_delay, labels.id_field, ...)")
    spec = monitor.spec  # (time windows: the config refuses count windows with a labels section)
    # (the tracker on the driver lends its settings, layout, profile and rules; segments are named here)
    tracker = PerformanceTracker(config, monitor.reference, SegmentRouter((), 1, True))
    layout = tracker.layout
    if spec.months:
        raise JobError(
            "--labels: calendar-month windows (window.size: Nmo) are not supported by the Spark backfill with"
            " labels; use `streamdrift backfill --labels` (local) or serve"
        )
    tick = spec.tick_ms  # (the pane; the local join's ticks are its multiples from the epoch)
    origin = spec.origin_ms  # (panes start at window.offset)
    pane_sql = f"(tp - {origin} - pmod(tp - {origin}, {tick})) div {tick}"  # (floor, exact in integers)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    sc = spark.sparkContext
    bc = sc.broadcast(monitor)
    preds = partials(spark, monitor, bc, source, fmt, kafka, summarize=prediction_summary).persist()
    labs = partials(spark, monitor, bc, labels_path, labels_format, None, summarize=partial(label_summary, now_ms=now))
    labs = labs.persist()
    try:
        small_p = preds.filter(lambda x: x[0] != "p").collect()
        small_l = labs.filter(lambda x: x[0] != "l").collect()
        first: dict[tuple[str, ...], tuple[int, int]] = {}
        for x in small_p:
            if x[0] == "s":
                first[x[1]] = min(first.get(x[1], x[2]), x[2])
        p_stats = [x[1:] for x in small_p if x[0] == "e"]
        l_stats = [x[1:] for x in small_l if x[0] == "e"]
        maxima = sorted((x[1], x[2]) for x in small_l if x[0] == "m")
        before: dict[int, int] = {}
        top = NEVER
        for part, m in maxima:
            before[part] = top
            top = max(top, m)
        final_wl = top  # the label watermark at the end of the input
        bc_before = sc.broadcast(before)

        def with_wl(x: tuple[Any, ...]) -> tuple[Any, ...]:
            return (x[1], x[2], x[3], x[4], max(x[5], bc_before.value[x[4] >> SEQ_SHIFT]))

        # (cached: the Python rows are converted to Spark rows once, not once per job that reads them)
        P = spark.createDataFrame(preds.filter(lambda x: x[0] == "p").map(lambda x: x[1:]), PRED_SCHEMA).persist()
        L = spark.createDataFrame(labs.filter(lambda x: x[0] == "l").map(with_wl), LABEL_SCHEMA.replace("lrun", "wl"))
        L = L.withColumn("tk", F.expr(f"wl - pmod(wl, {tick})")).persist()  # (integer arithmetic: exact)
        # the ticks: each distinct tick value, the first label (in arrival order) that reached it
        got = L.groupBy("tk").agg(F.min("lseq").alias("first")).collect()
        firsts = sorted((int(r["tk"]), int(r["first"])) for r in got)
        ticks = [t for t, _ in firsts]
        crossing = dict(firsts)
        nxt = {t: (ticks[i + 1] if i + 1 < len(ticks) else FINAL) for i, t in enumerate(ticks)}
        tick_df = spark.createDataFrame([(t, crossing[t], nxt[t]) for t in ticks], "tk long, first long, next_tk long")

        by_id = Window.partitionBy("h").orderBy("tp", "seq")
        ranked = P.withColumn("rn", F.row_number().over(by_id))
        waiting = ranked.filter("rn = 1").select("h", "tp", "score", "seg")
        cand = L.join(waiting, "h").where(
            (F.col("tp") - lab.clock_skew_ms <= F.col("tl")) & (F.col("wl") < F.col("tp") + lab.max_delay_ms)
        )
        pairs = (
            cand.withColumn("rk", F.row_number().over(Window.partitionBy("h").orderBy("lseq")))
            .filter("rk = 1")
            .join(F.broadcast(tick_df), "tk")
            .withColumn("vt", F.when(F.col("lseq") == F.col("first"), F.col("tk")).otherwise(F.col("next_tk")))
            .withColumn("pane", F.expr(pane_sql))
            .select("h", "tp", "score", "seg", "tl", "y", "lseq", "pane", "vt")
            .persist()
        )
        try:
            m = monitor
            states = (
                pairs.select("seg", "pane", "vt", "score", "y")
                .mapInPandas(lambda it: _pane_states(m, it), "seg string, pane long, vt long, state binary")
                .collect()
            )
            n_pred = P.groupBy("seg", F.expr(pane_sql).alias("pane")).count().collect()
            n_dup = ranked.filter("rn > 1").count()
            n_joined = pairs.count()
            concept: list[tuple[int, dict[str, Any]]] = []
            if config.concept_on_labels:
                concept = _concept(monitor, pairs.select("lseq", "tl", "score", "y").orderBy("lseq").toLocalIterator())
        finally:
            pairs.unpersist()
            P.unpersist()
            L.unpersist()
    finally:
        preds.unpersist()
        labs.unpersist()

    route = route_segments(monitor, first) if monitor.segment_fields else {}
    rank = _member_order(monitor, first, route)

    def reported(seg: str) -> tuple[str, ...] | None:
        return None if seg == OVERALL else route[_key_of(seg)]

    dtype = layout.dtype
    pred_count: dict[tuple[Any, int], int] = {}
    pane_pred: dict[int, int] = {}
    for r in n_pred:
        pane, c = int(r["pane"]), int(r["count"])
        pane_pred[pane] = pane_pred.get(pane, 0) + c
        if monitor.segment_fields:
            k = (reported(r["seg"]), pane)
            pred_count[k] = pred_count.get(k, 0) + c
        if monitor.overall:
            pred_count[(None, pane)] = pred_count.get((None, pane), 0) + c
    lab_items: dict[tuple[Any, int], list[tuple[int, Any]]] = {}
    pane_items: dict[int, list[tuple[int, int]]] = {}
    for r in states:  # (one row per partition and key: _Cumulative sums rows of one tick)
        state = np.frombuffer(r["state"], dtype=dtype).copy()
        seg, pane, vt = r["seg"], int(r["pane"]), int(r["vt"])
        lab_items.setdefault((reported(seg), pane), []).append((vt, state))
        if (seg == OVERALL) == (not monitor.segment_fields):  # each pair once: its segment, or the overall
            pane_items.setdefault(pane, []).append((vt, int(state[1])))
    labelled = {k: _Cumulative.of(v) for k, v in lab_items.items()}
    pane_labelled = {k: _Cumulative.of(v) for k, v in pane_items.items()}

    k = spec.panes_per_window
    awaiting = set(spec.windows_of_panes(sorted(p for p, c in pane_pred.items() if c)))
    keyed: list[tuple[tuple[int, int, int], dict[str, Any]]] = [((s, 0, 0), rec) for s, rec in concept]
    n_emitted = 0
    points = [(t, crossing[t]) for t in ticks] + ([(final_wl, FINAL)] if ticks else [])
    for tk_value, at in points:
        seen = FINAL if at == FINAL else tk_value  # the pairs visible: those of ticks <= this one
        for first_pane in sorted(awaiting):
            start, end = spec.window_bounds(first_pane)
            if end > tk_value:
                break
            panes = range(first_pane, first_pane + k)
            npred = sum(pane_pred.get(p, 0) for p in panes)
            nlab = sum(pane_labelled[p].at(seen, 0) for p in panes if p in pane_labelled)
            if npred and nlab / npred < lab.min_coverage and tk_value < end + lab.max_delay_ms:
                continue
            awaiting.discard(first_pane)
            if not npred:
                continue
            members = _window_members(layout, panes, pred_count, labelled, rank, seen)
            recs = tracker_records(tracker, monitor, members, start, end, first_pane)
            keyed.extend(((at, 1, n_emitted), rec) for rec in recs)
            n_emitted += 1
    keyed.sort(key=lambda x: x[0])
    summary = {
        "predictions": sum(s[0] for s in p_stats),
        "rejected_predictions": sum(s[1] for s in p_stats),
        "unjoinable": sum(s[3] for s in p_stats),
        "labels": sum(s[0] for s in l_stats),
        "rejected_labels": sum(s[1] for s in l_stats),
        "first_label_error": min((s[2] for s in l_stats if s[2] is not None), default=None),
        "joined": n_joined,
        "label_orphan": sum(s[0] for s in l_stats) - n_joined,
        "duplicate_prediction": n_dup,
        "label_timeout": sum(pane_pred.values()) - n_dup - n_joined,
        "windows_emitted": n_emitted,
        "windows_waiting": len(awaiting),
    }
    return [rec for _k, rec in keyed], summary


def _member_order(
    monitor: Monitor, first: dict[tuple[str, ...], tuple[int, int]], route: dict[tuple[str, ...], tuple[str, ...]]
) -> dict[Any, int]:
    """The order of a window's segments in the local records: the overall one, then the reported keys
    by first appearance (``__other__`` where its first member appeared after the kept ones)."""
    order: dict[Any, int] = {None: -1}
    for raw in sorted(first, key=lambda kk: first[kk]):
        rep = route[raw]
        if rep not in order:
            order[rep] = len(order)
    return order


def _window_members(
    layout: Any,
    panes: range,
    pred_count: dict[tuple[Any, int], int],
    labelled: dict[tuple[Any, int], _Cumulative],
    rank: dict[Any, int],
    seen: int,
) -> list[tuple[Any, Any]]:
    by_segment: dict[Any, Any] = {}
    for (seg, pane), c in pred_count.items():
        if pane not in panes:
            continue
        state = by_segment.setdefault(seg, layout.empty())
        state[0] += c
        cum = labelled.get((seg, pane))
        if cum is not None:
            state += cum.at(seen, layout.empty())
    return [(seg, by_segment[seg]) for seg in sorted(by_segment, key=lambda s: rank[s]) if by_segment[seg][0]]


def tracker_records(
    tracker: PerformanceTracker, monitor: Monitor, members: list[tuple[Any, Any]], start: int, end: int, first: int
) -> list[dict[str, Any]]:
    named = [({} if seg is None else segment_dict(monitor, seg), state) for seg, state in members]
    return tracker.window_records(named, first, start, end)


def _concept(monitor: Monitor, rows: Iterator[Any]) -> list[tuple[int, dict[str, Any]]]:
    """The concept detector over the pairs' errors in label-arrival order: (position, record)."""
    config = monitor.config
    det = make_detector(config.concept.detector, config.concept.params)
    tracker = ConceptTracker(config, monitor.reference.fingerprint)
    out: list[tuple[int, dict[str, Any]]] = []
    buf: list[Any] = []

    def flush() -> None:
        if not buf:
            return
        score = np.asarray([r[2] for r in buf], dtype=np.float64)
        label = np.asarray([r[3] for r in buf], dtype=np.float64)
        for r, x in zip(buf, pair_errors(config, score, label).tolist(), strict=True):
            rec = tracker.update(det, x, int(r[1]))
            if rec is not None:
                out.append((int(r[0]), rec))
        buf.clear()

    for r in rows:
        buf.append(r)
        if len(buf) >= 10_000:
            flush()
    flush()
    return out


def join_line(s: dict[str, Any]) -> str:
    """One line for people: what the join did (as the local backfill's)."""
    rejected = (
        f" ({s['rejected_labels']} label events rejected; first: {s['first_label_error'][1]})"
        if s["rejected_labels"]
        else ""
    )
    return (
        f"labels: {s['joined']:,} joined, {s['label_timeout']:,} predictions never paired, {s['label_orphan']:,} "
        f"orphans, {s['duplicate_prediction']:,} duplicate predictions, {s['unjoinable']:,} predictions without id "
        f"or valid score; {s['windows_emitted']:,} windows emitted, {s['windows_waiting']:,} still waiting for "
        f"labels (not emitted){rejected}"
    )
