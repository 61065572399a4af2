"""Late labels: the join's memory per waiting prediction, its throughput, and detection from late labels.

Run it alone with ``tests/benchmarks/run.py --sections labels`` (``--quick``: 1M only for memory,
smaller streams). Every figure is one run.

Memory (:func:`memory`, each size in a fresh process)
    ``N`` predictions (ids ``p<i>``, hashed and added in batches of 100,000, so the id strings never pile up) wait in
    a :class:`detectors.join.LabelJoin`; bytes per waiting prediction are the join's own arrays
    (``LabelJoin.nbytes``), the memory tracemalloc traces as still allocated after the inserts (numpy
    reports its buffers to it), the growth of the process's RSS, and tracemalloc's peak during the
    inserts (the table doubles: old and new arrays at once). What is stored per prediction: its id's
    64-bit hash, its time (int64), its score (float64) and its segment (int32), in an open-addressing
    table at most 70 % full.

Throughput (:func:`throughput`)
    ``N`` predictions and their ``N`` labels (1 to 60 minutes later, arriving in label-time order),
    in batches of 10,000 as ``serve`` consumes them: ids hashed, predictions added, labels added, the
    join processed. First the join alone, then the whole :class:`detectors.labelled.PerformanceTracker`
    (pane states, emission, records) without and with the ADWIN concept detector.

Serve with a labels topic (:func:`serve_rate`, two ``streamdrift serve`` subprocesses on the embedded broker)
    ``N`` prediction events (20 numeric features as in the ``kafka`` section's data, an ``id`` and a ``score``;
    1 ms of event time apart) on one topic, and their ``N`` labels (1 to 60 seconds later in event time, in
    label-time order, ~60 bytes) on a labels topic, both produced beforehand. ``serve`` without a labels section
    reads the predictions; ``serve`` with one (``labels.max_delay: 5m``, 60 s windows) reads both topics on the
    same consumer. Each rate is predictions per second from serve's own batch clock, as in the ``kafka``
    section's serve figure (:mod:`tests.benchmarks.bench_serve`); the labelled run is timed until every label
    has been read too (joined, orphaned or waiting), so labels come in at the predictions' rate. Target: the
    labelled run at least 0.7x the other.

Detection (:func:`detection`, through the backfill path :func:`detectors.engine.run_local_labels`)
    A reference of 50,000 labelled predictions of a classifier right 90 % of the time; 12 hours of
    predictions at 10 a second whose accuracy drops to 85 % at 6:00 exactly; each label 1 minute to
    1 hour after its prediction (uniform), arriving in label-time order. Windows of 15 minutes,
    ``labels.max_delay: 2h``, defaults otherwise (``min_coverage`` 0.95, ``min_drop.rate`` 0.02,
    false-alarm rate 1 %). Reported: the first window flagged (and any before the change), when its
    record was emitted (label time), and ADWIN's delay in labels: how many labels of post-change
    predictions (in arrival order) it needed before its first detection after the change.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 3_600_000
BATCH = 10_000


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_one(n: int) -> dict[str, Any]:
    """In this process: N predictions waiting in a fresh join."""
    from detectors.join import LabelJoin, id_hashes

    join = LabelJoin(max_delay_ms=HOUR, clock_skew_ms=MIN, budget=n, tick_ms=MIN)
    rng = np.random.default_rng(n)
    gc.collect()
    rss0 = _rss_kb()
    tracemalloc.start()
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        h = id_hashes([f"p{i}" for i in range(start, stop)])
        k = stop - start
        join.add_predictions(h, T0 + np.arange(start, stop), rng.random(k), rng.integers(0, 5, k).astype(np.int32))
        del h
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = _rss_kb() - rss0
    assert join.pending == n, (join.pending, n)
    return {
        "n": n,
        "join_nbytes_per_pending": join.nbytes / n,
        "traced_bytes_per_pending": current / n,
        "traced_peak_bytes_per_pending": peak / n,
        "rss_growth_bytes_per_pending": rss * 1024 / n,
        "table_capacity": join._table.capacity,
        "load": n / join._table.capacity,
    }


def memory(sizes: list[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        r = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.bench_labels", "memory", str(n)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if r.returncode != 0:
            raise RuntimeError(f"memory run at {n:,} failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        log(
            f"  {n:,} waiting: {res['join_nbytes_per_pending']:.1f} B each (arrays), traced "
            f"{res['traced_bytes_per_pending']:.1f}, RSS {res['rss_growth_bytes_per_pending']:.1f}, "
            f"peak {res['traced_peak_bytes_per_pending']:.1f}"
        )
        out.append(res)
    return out


# -- throughput -----------------------------------------------------------------------------------------
def _stream(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, max(1, n // 100) * 1_000, n))  # about 100 predictions a second
    y = (rng.random(n) < 0.3).astype(np.float64)
    score = np.clip(np.where(rng.random(n) < 0.9, y, 1 - y) * 0.8 + rng.uniform(0, 0.2, n), 0, 1)
    lt = t + rng.integers(MIN, HOUR, n)
    order = np.argsort(lt, kind="stable")
    return {"t": t, "score": score, "y": y, "ids": [f"p{i}" for i in range(n)], "lt": lt, "order": order}


def _batches(s: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What ``serve`` has after decoding each batch: the predictions' ids, times and scores, the labels'
    ids (in arrival order), times and values, and the prediction watermark after the batch."""
    n = len(s["t"])
    ids, order = s["ids"], s["order"]
    out = []
    for i in range(0, n, BATCH):
        sl = slice(i, i + BATCH)
        o = order[i : i + BATCH]
        wp = int(s["t"][min(n, i + BATCH) - 1]) + 1
        out.append((ids[sl], s["t"][sl], s["score"][sl], [ids[k] for k in o], s["lt"][o], s["y"][o], wp))
    return out


def _join_only(s: dict[str, Any]) -> float:
    from detectors.join import LabelJoin, id_hashes

    n = len(s["t"])
    join = LabelJoin(max_delay_ms=2 * HOUR, clock_skew_ms=MIN, budget=10 * n, tick_ms=5 * MIN)
    seg = np.zeros(BATCH, np.int32)
    batches = _batches(s)
    t0 = time.perf_counter()
    for p_ids, pt, ps, l_ids, lt, ly, wp in batches:
        join.add_predictions(id_hashes(p_ids), pt, ps, seg[: len(pt)])
        join.add_labels(id_hashes(l_ids), lt, ly)
        join.process(wp)
    join.process(2**62)
    took = time.perf_counter() - t0
    assert join.counts["joined"] == n, join.counts
    return n / took


def _tracker(s: dict[str, Any], concept: str) -> float:
    from detectors.config import MonitorConfig
    from detectors.engine import SegmentRouter
    from detectors.events import EventColumns, LabelColumns
    from detectors.labelled import PerformanceTracker
    from detectors.reference import ReferenceProfile

    cfg = MonitorConfig.model_validate(
        {
            "monitor": "bench",
            "reference": "r.json",
            "events": {"prediction_field": "score"},
            "window": {"size": "5m"},
            "labels": {"max_delay": "2h"},
            "concept": {"detector": concept, "error": "misclassification"},
        }
    )
    ref = ReferenceProfile.build({"x": np.arange(100.0)}, calibrate=False)
    router = SegmentRouter((), 100, True)
    tracker = PerformanceTracker(cfg, ref, router)
    n = len(s["t"])
    empty = np.full(BATCH, np.nan)
    minus = np.full(BATCH, -1, dtype=np.int64)
    batches = _batches(s)
    t0 = time.perf_counter()
    records = 0
    for p_ids, pt, ps, l_ids, lt, ly, wp in batches:
        k = len(pt)
        tracker.add_predictions(EventColumns(pt, {}, [()] * k, ps, empty[:k], ids=p_ids), minus[:k])
        tracker.add_labels(LabelColumns(l_ids, lt, ly))
        records += len(tracker.advance(wp))
    records += len(tracker.advance(2**62))
    took = time.perf_counter() - t0
    assert tracker.counts["joined"] == n and records > 0, tracker.counts
    return n / took


def throughput(n: int, log: Callable[[str], None]) -> dict[str, Any]:
    out = {"pairs": n}
    out["join_pairs_per_s"] = _join_only(_stream(n, 1))
    log(f"  join alone: {out['join_pairs_per_s'] / 1000:.0f}k prediction+label pairs/s")
    out["tracker_pairs_per_s"] = _tracker(_stream(n, 2), "none")
    log(f"  tracker (panes, emission, records): {out['tracker_pairs_per_s'] / 1000:.0f}k pairs/s")
    out["tracker_adwin_pairs_per_s"] = _tracker(_stream(n, 3), "adwin")
    log(f"  tracker + ADWIN on the joined errors: {out['tracker_adwin_pairs_per_s'] / 1000:.0f}k pairs/s")
    return out


# -- serve with a labels topic -------------------------------------------------------------------------
def _serve_config(workdir: Path, ref: Path, bootstrap: str, topic: str, labels: str | None, port: int) -> Path:
    import yaml

    from tests.benchmarks.bench_common import serve_kafka

    tag = "labels" if labels else "plain"
    cfg: dict[str, Any] = {
        "monitor": "bench",
        "reference": str(ref),
        "events": {
            "time_field": "timestamp",
            "time_unit": "ms",
            "features_field": "features",
            "prediction_field": "score",
        },
        "window": {"kind": "tumbling", "size": "60s", "allowed_lateness": "0s", "idle_timeout": "60s"},
        "concept": {"detector": "none"},
        "kafka": serve_kafka(bootstrap, topic, f"bench-labels-{tag}"),
        "outputs": {"statistics_topic": f"{topic}-{tag}-stats", "alerts_topic": f"{topic}-{tag}-alerts"},
        "metrics": {"address": "127.0.0.1", "port": port},
        "state": {"dir": str(workdir / f"state-{tag}"), "checkpoint_interval": "10s"},
    }
    if labels:
        cfg["labels"] = {"topic": labels, "max_delay": "5m", "clock_skew": "0s"}
    path = workdir / f"serve-{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _progress(port: int) -> dict[str, float] | None:
    from tests.benchmarks.bench_common import metric_samples

    names = ("streamdrift_events_total", "streamdrift_last_batch_timestamp_seconds", "streamdrift_label_joins_total")
    samples = metric_samples(port, (*names, "streamdrift_labels_waiting"))
    if samples is None:
        return None
    out: dict[str, float] = {}
    for name, name_labels, value in samples:
        if name == "streamdrift_label_joins_total":
            outcome = name_labels.split('outcome="', 1)[1].split('"', 1)[0]
            if outcome in ("joined", "label_orphan"):  # (labels read: paired, orphaned, or waiting below)
                out["labels_read"] = out.get("labels_read", 0.0) + value
        elif name == "streamdrift_labels_waiting":
            if 'kind="label"' in name_labels:
                out["labels_read"] = out.get("labels_read", 0.0) + value
        elif name in names:
            out[name] = out.get(name, 0.0) + value
    return out


def _serve_once(config: Path, n: int, port: int, with_labels: bool, timeout: float = 600.0) -> dict[str, Any]:
    import signal

    from tests.benchmarks.bench_serve import cpu_seconds

    log_path = config.with_suffix(".log")
    cmd = [sys.executable, "-m", "stream.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
    with log_path.open("wb") as logf:
        t_start = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT)
        try:
            first: tuple[float, float, float] | None = None
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                if time.time() - t_start > timeout:
                    raise RuntimeError(f"serve did not finish in {timeout} s")
                m = _progress(port)
                if m is not None:
                    seen = m.get("streamdrift_events_total", 0.0)
                    if seen > 0 and first is None:
                        first = (m["streamdrift_last_batch_timestamp_seconds"], seen, cpu_seconds(proc.pid))
                    if seen >= n and (not with_labels or m.get("labels_read", 0.0) >= n):
                        cpu_done = cpu_seconds(proc.pid)
                        time.sleep(0.05)
                        again = _progress(port) or m
                        t_done = again["streamdrift_last_batch_timestamp_seconds"]
                        break
                time.sleep(0.01 if first is None else 0.1)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first is not None and rc == 0, rc
    steady = n - first[1]
    return {
        "rate": steady / (t_done - first[0]),
        "cpu_rate": steady / (cpu_done - first[2]),
        "wall_s": t_done - t_start,
        "labels_read": again.get("labels_read"),
    }


def serve_rate(n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Predictions/s of ``serve`` with and without a labels topic on the same data (module docstring)."""
    import tempfile

    from detectors.reference import ReferenceProfile
    from stream.demo.broker import EmbeddedBroker, free_port
    from tests.benchmarks.bench_common import NUMERIC_ONLY, REFERENCE_SEED, columns, fresh_topic, produce

    rng = np.random.default_rng(7)
    cols = columns(n, 11, NUMERIC_ONLY)
    t = T0 + np.arange(n, dtype=np.int64)
    y = (rng.random(n) < 0.3).astype(int)
    score = np.round(np.clip(np.where(rng.random(n) < 0.9, y, 1 - y) * 0.8 + rng.uniform(0, 0.2, n), 0, 1), 4)
    feats = [f"f{j:02d}" for j in range(20)]
    preds = []
    for i in range(n):
        f = ",".join(f'"{k}":{cols[k][i]}' for k in feats)
        preds.append(f'{{"timestamp":{t[i]},"id":"p{i}","score":{score[i]},"features":{{{f}}}}}'.encode())
    lt = t + rng.integers(1_000, 60_000, n)
    order = np.argsort(lt, kind="stable")
    labels = [f'{{"id":"p{i}","label":{y[i]},"timestamp":{lt[i]}}}'.encode() for i in order.tolist()]
    out: dict[str, Any] = {"predictions": n, "labels": n}
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        ref_cols = columns(100_000, REFERENCE_SEED, NUMERIC_ONLY)
        ref = work / "ref.json"
        ReferenceProfile.build(ref_cols, features=feats).save(ref)
        topic = fresh_topic(broker.bootstrap, "bench-pred")
        label_topic = fresh_topic(broker.bootstrap, "bench-labels")
        produce(broker.bootstrap, topic, preds)
        produce(broker.bootstrap, label_topic, labels)
        del preds, labels
        for name, lab in (("without_labels", None), ("with_labels", label_topic)):
            port = free_port()
            cfg = _serve_config(work, ref, broker.bootstrap, topic, lab, port)
            out[name] = _serve_once(cfg, n, port, lab is not None)
            log(
                f"  serve {name.replace('_', ' ')}: {out[name]['rate'] / 1000:.0f}k predictions/s "
                f"({out[name]['cpu_rate'] / 1000:.0f}k per CPU second)"
            )
    out["ratio"] = out["with_labels"]["rate"] / out["without_labels"]["rate"]
    out["cpu_ratio"] = out["with_labels"]["cpu_rate"] / out["without_labels"]["cpu_rate"]
    log(f"  ratio {out['ratio']:.2f}x (per CPU second {out['cpu_ratio']:.2f}x)")
    return out


# -- detection ----------------------------------------------------------------------------------------
def _classifier(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.3).astype(np.float64)
    decided = np.where(rng.random(n) < accuracy, y, 1.0 - y)
    return np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0), y


def detection(hours: int = 12, rate: int = 10, seed: int = 20_261_130) -> dict[str, Any]:
    from detectors.config import MonitorConfig
    from detectors.engine import run_local_labels
    from detectors.evaluate import iso_ms, parse_iso_ms
    from detectors.events import EventColumns, LabelColumns
    from detectors.performance import CLASSIFICATION, PerformanceProfile
    from detectors.reference import ReferenceProfile

    rng = np.random.default_rng(seed)
    score, y = _classifier(rng, 50_000, 0.90)
    ref = ReferenceProfile.build({"x": rng.normal(size=1_000)}, calibration_replicates=500)
    ref = dataclasses.replace(ref, performance=PerformanceProfile.build(score, y, task=CLASSIFICATION))
    cfg = MonitorConfig.model_validate(
        {
            "monitor": "bench",
            "reference": "r.json",
            "events": {"prediction_field": "score"},
            "window": {"size": "15m"},
            "labels": {"max_delay": "2h"},
            "concept": {"detector": "adwin", "error": "misclassification"},
        }
    )
    n = hours * 3600 * rate
    change = T0 + hours // 2 * HOUR
    t = T0 + np.sort(rng.integers(0, hours * HOUR, n))
    score, y = _classifier(rng, n, 0.90)
    after = t >= change
    s2, y2 = _classifier(rng, int(after.sum()), 0.85)
    score[after], y[after] = s2, y2
    ids = [f"p{i}" for i in range(n)]
    cols = EventColumns(t, {}, [()] * n, score, np.full(n, np.nan), ids=list(ids))
    lt = t + rng.integers(MIN, HOUR + 1, n)
    order = np.argsort(lt, kind="stable")
    labels = LabelColumns([ids[i] for i in order], lt[order], y[order])
    t0 = time.perf_counter()
    records, tracker = run_local_labels(cols, labels, cfg, ref)
    took = time.perf_counter() - t0
    acc = [r for r in records if r["statistic"] == "accuracy"]
    flagged = [r for r in acc if r["drift"]]
    before = [r for r in flagged if parse_iso_ms(r["window_start"]) < change]
    after_flags = [r for r in flagged if parse_iso_ms(r["window_start"]) >= change]
    first = min(after_flags, key=lambda r: r["window_start"]) if after_flags else None
    # when that window's record came out: the tick at which it was emitted is the first multiple of the
    # pane length at or after the arrival of the label that completed its coverage (replayed here)
    emitted_at = None if first is None else _emission_time(first, labels, cols, cfg)
    # ADWIN: detections in label order; the labels of post-change predictions before the first one after
    pos = {ident: i for i, ident in enumerate(ids)}
    post_labels = np.cumsum([t[pos[i]] >= change for i in labels.ids])
    adwin = [r for r in records if r["statistic"] == "adwin"]
    # each detection's n_window counts joined labels since the previous one: turn them into positions
    at = np.cumsum([r["n_window"] for r in adwin]) if adwin else np.zeros(0)
    before_change = [k for k in at if post_labels[int(k) - 1] == 0]
    after_change = [k for k in at if post_labels[int(k) - 1] > 0]
    return {
        "predictions": n,
        "windows": len({r["window_start"] for r in acc}),
        "seconds": took,
        "change": iso_ms(change),
        "first_flagged_window": None if first is None else first["window_start"],
        "first_flagged_drop": None if first is None else first["effect"],
        "first_flagged_threshold": None if first is None else first["threshold"],
        "first_flagged_coverage": None
        if first is None
        else first["n_window"] / (first["n_window"] + first["n_missing"]),
        "first_flagged_emitted_at": emitted_at,
        "flagged_windows_after": len(after_flags),
        "windows_after": len([r for r in acc if parse_iso_ms(r["window_start"]) >= change]),
        "false_flags_before": len(before),
        "windows_before": len([r for r in acc if parse_iso_ms(r["window_start"]) < change]),
        "adwin_detections_before_change": len(before_change),
        "adwin_delay_labels": int(post_labels[int(after_change[0]) - 1]) if after_change else None,
        "counts": tracker.counts,
    }


def _emission_time(rec: dict[str, Any], labels: Any, cols: Any, cfg: Any) -> str:
    """The label time at which a window's coverage first reached labels.min_coverage (rounded up to the
    pane tick), or its end + max_delay: when its record was emitted."""
    from detectors.evaluate import iso_ms, parse_iso_ms

    start, end = parse_iso_ms(rec["window_start"]), parse_iso_ms(rec["window_end"])
    pos = {ident: i for i, ident in enumerate(cols.ids)}
    inside = (cols.time_ms >= start) & (cols.time_ms < end)
    need = cfg.labels.min_coverage * int(inside.sum())
    got = 0
    tick = cfg.window.slide_ms
    for ident, lt in zip(labels.ids, labels.time_ms.tolist(), strict=True):
        if inside[pos[ident]]:
            got += 1
        if got >= need and lt >= end:
            return iso_ms(-(-lt // tick) * tick)
    return iso_ms(-(-(end + cfg.labels.max_delay_ms) // tick) * tick)


def run(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    sizes = [1_000_000] if quick else [1_000_000, 10_000_000]
    log("labels: memory per waiting prediction")
    res["memory"] = memory(sizes, log)
    log("labels: throughput")
    res["throughput"] = throughput(200_000 if quick else 1_000_000, log)
    log("labels: serve with a labels topic against serve without")
    res["serve"] = serve_rate(200_000 if quick else 1_000_000, log)
    log("labels: detection from late labels (accuracy 0.90 -> 0.85)")
    res["detection"] = detection(hours=4 if quick else 12)
    d = res["detection"]
    log(
        f"  first window flagged {d['first_flagged_window']} (emitted {d['first_flagged_emitted_at']}); "
        f"{d['false_flags_before']} of {d['windows_before']} before the change; ADWIN after "
        f"{d['adwin_delay_labels']} post-change labels"
    )
    return res


def report(res: dict[str, Any]) -> tuple[list[str], dict[str, tuple[str, bool | None]]]:
    lines = [
        "",
        "| waiting predictions | bytes each (arrays) | traced by tracemalloc | RSS growth | peak while growing "
        "| table load |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for m in res["memory"]:
        lines.append(
            f"| {m['n']:,} | {m['join_nbytes_per_pending']:.1f} | {m['traced_bytes_per_pending']:.1f} | "
            f"{m['rss_growth_bytes_per_pending']:.1f} | {m['traced_peak_bytes_per_pending']:.1f} | {m['load']:.2f} |"
        )
    tp = res["throughput"]
    lines += [
        "",
        f"Join throughput ({tp['pairs']:,} predictions and their labels, batches of {BATCH:,}): join alone "
        f"{tp['join_pairs_per_s'] / 1000:,.0f}k pairs/s; with pane states, emission and records "
        f"{tp['tracker_pairs_per_s'] / 1000:,.0f}k pairs/s; plus ADWIN on the joined errors "
        f"{tp['tracker_adwin_pairs_per_s'] / 1000:,.0f}k pairs/s.",
    ]
    sv = res.get("serve")
    if sv is not None:
        lines += [
            "",
            f"Serve with a labels topic ({sv['predictions']:,} predictions and {sv['labels']:,} labels on two "
            f"topics, one consumer): {sv['with_labels']['rate'] / 1000:,.0f}k predictions/s against "
            f"{sv['without_labels']['rate'] / 1000:,.0f}k without labels on the same predictions: "
            f"{sv['ratio']:.2f}x ({sv['cpu_ratio']:.2f}x per CPU second).",
        ]
    d = res["detection"]
    lines += [
        "",
        f"Detection from late labels ({d['predictions']:,} predictions, accuracy 0.90 -> 0.85 at {d['change']}, "
        f"labels 1 min to 1 h late, 15-minute windows): first window flagged {d['first_flagged_window']} "
        f"(drop {d['first_flagged_drop']:.4f} against a threshold of {d['first_flagged_threshold']:.4f}, label "
        f"coverage {d['first_flagged_coverage']:.1%}), emitted at {d['first_flagged_emitted_at']}; "
        f"{d['flagged_windows_after']} of {d['windows_after']} windows after the change flagged, "
        f"{d['false_flags_before']} of {d['windows_before']} before it. ADWIN (misclassification error, label "
        f"order): {d['adwin_detections_before_change']} detections before the change, first after it "
        f"{d['adwin_delay_labels']} post-change labels in.",
    ]
    worst = max(m["join_nbytes_per_pending"] for m in res["memory"] if m["n"] == max(x["n"] for x in res["memory"]))
    traced = max(m["traced_bytes_per_pending"] for m in res["memory"] if m["n"] == max(x["n"] for x in res["memory"]))
    n_max = max(m["n"] for m in res["memory"])
    targets: dict[str, tuple[str, bool | None]] = {
        "<= 100 bytes per waiting prediction at 10,000,000": (
            f"{worst:.1f} (arrays), {traced:.1f} (traced) at {n_max:,}",
            # (--quick stops at 1M: the 10M target is then not measured, not failed)
            max(worst, traced) <= 100 if n_max >= 10_000_000 else None,
        )
    }
    if sv is not None:
        targets[">= 0.7x: serve with a labels topic at the predictions' rate vs without"] = (
            f"{sv['ratio']:.2f}x",
            sv["ratio"] >= 0.7,
        )
    return lines, targets


def main(argv: list[str]) -> int:
    if argv[:1] == ["memory"]:
        print(json.dumps(memory_one(int(argv[1]))))
        return 0
    if argv[:1] == ["serve"]:
        print(json.dumps(serve_rate(int(argv[1]), lambda m: print(m, file=sys.stderr)), indent=1))
        return 0
    print(json.dumps(run("--quick" in argv, lambda m: print(m, file=sys.stderr)), indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main(sys.argv[1:]))
