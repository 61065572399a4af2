"""Checkpoint cost of ``streamdrift serve`` on a large window state, against the full-JSON format of before.

The case of issue 17: sliding windows of 1 h sliding by 1 min, 100 segments (plus the overall one),
25 numeric features of 100 fine bins, 100k events/s, a checkpoint every 10 s (the default
``state.checkpoint_interval``). In steady state that is 60 panes x 101 segments = 6,060 panes of
2,550 counts: 15.5M counts.

How it is measured (in this process, on the disk of ``--workdir``):

1. warm-up: the window manager's panes are filled for one hour of event time with dense counts
   (Poisson, about what 10k events per segment and pane give), and a first checkpoint is written
   (a new pane log with every live pane);
2. then ``--minutes`` of event time in 10 s intervals: each interval adds events through
   :meth:`stream.service.windows.WindowManager.add` (``EVENTS_PER_INTERVAL``, spread over every segment:
   every segment's newest pane changes, as at 100k events/s), closes the windows the watermark
   passed (a new pane per segment every minute, the oldest dropped) and writes a checkpoint with
   the consumer's own code (:meth:`stream.service.consumer.DriftConsumer`'s order: windows' changes, then
   :meth:`stream.service.checkpoint.StateStore.save`), timed (wall and CPU) with its bytes;
3. the full-JSON format of earlier versions (one document with every pane's sparse counts, its
   sha256 over the canonical JSON, written atomically; a copy of that serialisation is kept below
   for the comparison) is written ``OLD_REPEATS`` times on the same state;
4. a restart: loading the newest checkpoint (replaying the pane log) against ``json.loads`` plus the
   checksum of the old document.

The share is the mean checkpoint time (new logs included) per 10 s interval: the part of each
interval serve spends checkpointing, whatever else it does (target: under 5%).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detectors.config import MonitorConfig
from detectors.events import EventColumns
from detectors.histogram import Layout, WindowState
from detectors.reference import ReferenceProfile
from stream.service.checkpoint import StateStore
from stream.service.windows import WindowManager

FEATURES = 25
SEGMENTS = 100
SIZE_MS, SLIDE_MS = 3_600_000, 60_000
INTERVAL_S = 10
RATE = 100_000  # events/s the state stands for
EVENTS_PER_INTERVAL = 20_000  # events actually added per interval (enough to touch every segment's pane)
OLD_REPEATS = 3
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _config() -> MonitorConfig:
    return MonitorConfig.from_mapping(
        {
            "monitor": "bench",
            "reference": "unused.json",
            "events": {"segment_fields": ["segment"]},
            "window": {"kind": "sliding", "size": "1h", "slide": "1m", "idle_timeout": "1h"},
            "segments": {"max_segments": SEGMENTS, "overall": True},
            "concept": {"detector": "none"},
        }
    )


def _reference() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    data = {f"f{j:02d}": rng.normal(0, 1, 20_000) for j in range(FEATURES)}
    return ReferenceProfile.build(data, features=list(data), fine_bins=100, coarse_bins=10)


def _events(rng: np.random.Generator, start_ms: int, n: int) -> EventColumns:
    t = np.sort(rng.integers(start_ms, start_ms + INTERVAL_S * 1000, n)).astype(np.int64)
    seg = [(f"s{i:03d}",) for i in rng.integers(0, SEGMENTS, n).tolist()]
    return EventColumns(
        time_ms=t,
        features={f"f{j:02d}": rng.normal(0, 1, n) for j in range(FEATURES)},
        segments=seg,
        prediction=np.full(n, np.nan),
        label=np.full(n, np.nan),
        rows=list(range(n)),
    )


# -- the full-JSON format of earlier versions (a copy of its serialisation, for the comparison) -------
def _old_sparse(counts: Any) -> list[list[int]]:
    nz = np.flatnonzero(counts)
    return [[int(i), int(counts[i])] for i in nz]


def old_save(directory: Path, wm: WindowManager, seq: int) -> tuple[float, float, int]:
    """Write the state as one checksummed JSON document (serialised twice: once for the sha256, once to
    write), as earlier versions did per partition; (seconds, CPU seconds, bytes)."""
    t0, c0 = time.perf_counter(), time.process_time()
    state = {
        "offset": 123,
        "max_time": max(wm.max_time.values()),
        "panes": [
            [list(wm.router.keys[s]), p, {"version": 1, "fingerprint": st.fingerprint, "n_events": st.n_events,
                                          "counts": _old_sparse(st.counts)}]
            for (s, p), st in sorted(wm.panes.items())
        ],
        "pruned_to": wm.frontier,
    }  # fmt: skip
    doc: dict[str, Any] = {"format": "streamdrift-checkpoint", "version": 2, "seq": seq, "state": state}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True)
    doc["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    data = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    path = directory / f"checkpoint-{seq:012d}.json"
    tmp = directory / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in sorted(directory.glob("checkpoint-*.json"))[:-2]:
        old.unlink()
    return time.perf_counter() - t0, time.process_time() - c0, len(data)


def old_load(directory: Path) -> float:
    t0 = time.perf_counter()
    path = max(directory.glob("checkpoint-*.json"))
    doc = json.loads(path.read_bytes())
    body = json.dumps({k: v for k, v in doc.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(body.encode()).hexdigest() == doc["sha256"]
    return time.perf_counter() - t0


# -- the run --------------------------------------------------------------------------------------------
def run(workdir: Path, minutes: int, log: Callable[[str], None]) -> dict[str, Any]:
    config, ref = _config(), _reference()
    layout = Layout(ref)
    rng = np.random.default_rng(2)
    wm = WindowManager(config, layout, clock=lambda: 0.0)
    wm.assign([0])
    wm.router.route([(f"s{i:03d}",) for i in range(SEGMENTS)])  # (every segment known, in order)
    # one hour of panes, dense: ~10k events per segment and pane at 100k events/s (x 25 features)
    per_pane = RATE * SLIDE_MS // 1000 // SEGMENTS
    lam = per_pane * FEATURES / layout.size
    first = T0 // SLIDE_MS
    log(f"  checkpoint: filling {60 * (SEGMENTS + 1):,} panes of {layout.size:,} counts")
    for p in range(first, first + SIZE_MS // SLIDE_MS):
        for s in range(SEGMENTS + 1):
            counts = rng.poisson(lam * (SEGMENTS if s == 0 else 1), layout.size).astype(np.int64)
            wm.panes[(s, p)] = WindowState(counts, per_pane * (SEGMENTS if s == 0 else 1), layout.fingerprint)
    now = T0 + SIZE_MS
    wm.max_time[0] = now - 1
    wm.frontier = now - SLIDE_MS  # (every window ending by then has closed)
    live = len(wm.panes)
    counts_total = live * layout.size
    new_dir, old_dir = workdir / "checkpoint-new", workdir / "checkpoint-old"
    new_dir.mkdir()
    old_dir.mkdir()
    store = StateStore(new_dir, "bench", ref.fingerprint)

    def save() -> tuple[float, float, int, bool]:
        t0, c0 = time.perf_counter(), time.process_time()
        changed, dropped = wm.changes()
        path = store.save(
            {"topic": "t", "offsets": [[0, 1]], "windows": wm.snapshot()},
            wm.panes,
            changed,
            dropped,
            layout.size,
            layout.fingerprint,
        )
        wm.saved()
        return (
            time.perf_counter() - t0,
            time.process_time() - c0,
            store.last_bytes + path.stat().st_size,
            store.last_compacted,
        )

    first_s, _cpu, first_bytes, _ = save()
    log(f"  checkpoint: first checkpoint (a new log of every pane) {first_bytes / 2**20:.0f} MiB in {first_s:.2f} s")
    runs: list[dict[str, Any]] = []
    for i in range(minutes * 60 // INTERVAL_S):
        cols = _events(rng, now, EVENTS_PER_INTERVAL)
        res = wm.add(cols, np.zeros(len(cols), dtype=np.int64))
        assert res.n_late == 0
        wm.advance()
        now += INTERVAL_S * 1000
        secs, cpu, size, fresh = save()
        runs.append({"s": secs, "cpu_s": cpu, "bytes": size, "new_log": fresh, "panes": len(wm.panes)})
        if i % 30 == 29:
            log(f"  checkpoint: {i + 1} intervals, last {secs * 1000:.0f} ms, {size / 2**20:.1f} MiB")
    load_t0 = time.perf_counter()
    loaded = StateStore(new_dir, "bench", ref.fingerprint).load()
    load_s = time.perf_counter() - load_t0
    assert loaded is not None and len(loaded.panes) == len(wm.panes)
    old = [old_save(old_dir, wm, k + 1) for k in range(OLD_REPEATS)]
    old_load_s = old_load(old_dir)
    secs = [r["s"] for r in runs]
    incremental = [r for r in runs if not r["new_log"]]
    fresh_runs = [r for r in runs if r["new_log"]]
    out: dict[str, Any] = {
        "segments": SEGMENTS + 1,
        "features": FEATURES,
        "slots_per_pane": layout.size,
        "live_panes": live,
        "live_counts": counts_total,
        "live_mib": live * (20 + 8 * layout.size) / 2**20,
        "intervals": len(runs),
        "interval_s": INTERVAL_S,
        "first_checkpoint_s": first_s,
        "first_checkpoint_bytes": first_bytes,
        "new": {
            "mean_s": float(np.mean(secs)),
            "median_s": float(np.median(secs)),
            "max_s": float(np.max(secs)),
            "mean_cpu_s": float(np.mean([r["cpu_s"] for r in runs])),
            "median_incremental_s": float(np.median([r["s"] for r in incremental])) if incremental else None,
            "median_incremental_bytes": float(np.median([r["bytes"] for r in incremental])) if incremental else None,
            "mean_bytes": float(np.mean([r["bytes"] for r in runs])),
            "new_logs": len(fresh_runs),
            "median_new_log_s": float(np.median([r["s"] for r in fresh_runs])) if fresh_runs else None,
            "load_s": load_s,
        },
        "old": {
            "mean_s": float(np.mean([o[0] for o in old])),
            "mean_cpu_s": float(np.mean([o[1] for o in old])),
            "bytes": float(np.mean([o[2] for o in old])),
            "load_s": old_load_s,
        },
    }
    out["new"]["share"] = out["new"]["mean_s"] / INTERVAL_S
    out["old"]["share"] = out["old"]["mean_s"] / INTERVAL_S
    return out


def report(c: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    n, o = c["new"], c["old"]
    mib = 2**20
    lines = [
        "",
        f"| checkpoint: 1 h / 1 min sliding, {c['segments']} segments, {c['features']} features, 100k events/s, "
        f"every {c['interval_s']} s ({c['live_panes']:,} panes, {c['live_counts'] / 1e6:.1f}M counts, "
        f"{c['live_mib']:.0f} MiB; {c['intervals']} checkpoints) | manifest + pane log | full JSON (before) |",
        "|---|---:|---:|",
        f"| time per checkpoint, mean (new logs included) | {n['mean_s'] * 1000:.0f} ms "
        f"| {o['mean_s'] * 1000:,.0f} ms |",
        f"| time per checkpoint, median / max | {n['median_s'] * 1000:.0f} / {n['max_s'] * 1000:.0f} ms | - |",
        f"| CPU per checkpoint, mean | {n['mean_cpu_s'] * 1000:.0f} ms | {o['mean_cpu_s'] * 1000:,.0f} ms |",
        f"| bytes per checkpoint, mean (median without a new log) | {n['mean_bytes'] / mib:.1f} MiB "
        f"({(n['median_incremental_bytes'] or 0) / mib:.1f} MiB) | {o['bytes'] / mib:.0f} MiB |",
        f"| new logs (every live pane) | {n['new_logs']}, median {(n['median_new_log_s'] or 0) * 1000:.0f} ms | "
        "every checkpoint |",
        f"| the first checkpoint (a new log of every pane) | {c['first_checkpoint_s'] * 1000:.0f} ms, "
        f"{c['first_checkpoint_bytes'] / mib:.0f} MiB | - |",
        f"| **share of each {c['interval_s']} s interval** | **{n['share']:.1%}** | {o['share']:.0%} |",
        f"| restart: load the checkpoint | {n['load_s']:.2f} s | {o['load_s']:.2f} s |",
    ]
    targets = {
        "checkpointing < 5% of serve's time (1 h / 1 min, 100 segments, 25 features, 100k events/s)": (
            f"{n['share']:.1%} (full JSON: {o['share']:.0%})",
            n["share"] < 0.05,
        )
    }
    return lines, targets
