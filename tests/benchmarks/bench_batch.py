"""The batch statistics path: one 100k-row x 20-column window against a 100k-row reference.

Three ways to answer "which columns drifted", timed per window on the same data (wall time,
and CPU time of this process, which a busy machine disturbs less):

* streamdrift: ``ReferenceProfile.build`` once (timed apart), then per window
  ``Layout.histogram`` (bin the window) + ``evaluate_counts`` (PSI, binned KS, Bonferroni);
* Evidently's data drift report, ``Report([DataDriftPreset()]).run(current, reference)``
  with its defaults (for numeric columns of > 1000 rows: normed Wasserstein distance, 0.1);
* naive numpy/scipy recomputation per window: reference deciles (``np.quantile``) and
  ``np.histogram`` PSI per column, and ``scipy.stats.ks_2samp`` per column (Bonferroni).

Every repeat draws a fresh window (its own seed); column ``f00`` of the window is shifted by
0.5 standard deviations, so each method must report exactly ``{"f00"}`` (the benchmark says
so when one does not).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tests.benchmarks.bench_common import NUMERIC, NUMERIC_ONLY, REFERENCE_SEED, columns, median

ROWS = 100_000
SHIFT = 0.5
DRIFTED = {"f00"}


def window(seed: int, rows: int = ROWS) -> dict[str, np.ndarray]:
    cols = columns(rows, seed, NUMERIC_ONLY)
    cols["f00"] = cols["f00"] + SHIFT
    return cols


def streamdrift_setup(ref_cols: dict[str, np.ndarray]) -> tuple[Any, Any, float]:
    from detectors.config import StatisticsConfig
    from detectors.histogram import Layout
    from detectors.reference import ReferenceProfile

    t0 = time.perf_counter()
    ref = ReferenceProfile.build(ref_cols, features=list(NUMERIC))
    build_s = time.perf_counter() - t0
    return Layout(ref, list(NUMERIC)), StatisticsConfig(), build_s


def streamdrift_window(layout: Any, cfg: Any, cols: dict[str, np.ndarray]) -> set[str]:
    from detectors.evaluate import evaluate_counts

    state = layout.histogram(cols)
    results = evaluate_counts(layout, state.counts, cfg)
    return {r.feature for r in results if r.drift}


def evidently_window(ref_df: Any, cur_df: Any) -> set[str]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snap = Report([DataDriftPreset()]).run(current_data=cur_df, reference_data=ref_df)
    drifted = set()
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift") and m["value"] >= cfg["threshold"]:
            drifted.add(cfg["column"])
    return drifted


def naive_window(ref_cols: dict[str, np.ndarray], cols: dict[str, np.ndarray], alpha: float = 0.01) -> set[str]:
    from scipy.stats import ks_2samp

    drifted = set()
    k = len(NUMERIC)
    for name in NUMERIC:
        r, w = ref_cols[name], cols[name]
        inner = np.quantile(r, np.linspace(0, 1, 11)[1:-1])
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
        pr = np.maximum(np.histogram(r, edges)[0] / len(r), 1e-4)
        pw = np.maximum(np.histogram(w, edges)[0] / len(w), 1e-4)
        psi = float(np.sum((pw - pr) * np.log(pw / pr)))
        p = ks_2samp(r, w).pvalue
        if min(1.0, k * p) < alpha or psi >= 0.25:
            drifted.add(name)
    return drifted


def run(repeats: int, log: Any = print, quiet: Any = None) -> dict[str, Any]:
    import pandas as pd

    ref_cols = columns(ROWS, REFERENCE_SEED, NUMERIC_ONLY)
    ref_df = pd.DataFrame(ref_cols)
    layout, cfg, build_s = streamdrift_setup(ref_cols)
    evidently_error = None
    try:
        import evidently

        evidently_version = evidently.__version__
    except ImportError as exc:
        evidently_version = None
        evidently_error = f"evidently is not importable ({exc}); install the bench extra: pip install -e '.[bench]'"
        log(evidently_error)
    times: dict[str, list[float]] = {"streamdrift": [], "evidently": [], "naive": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    verdicts: dict[str, list[list[str]]] = {k: [] for k in times}
    idle: list[float] = []
    for rep in range(repeats):
        cols = window(seed=10_000 + rep)
        cur_df = pd.DataFrame(cols)
        idle.append(quiet() if quiet else float("nan"))
        contenders: list[tuple[str, Any, tuple[Any, ...]]] = [
            ("streamdrift", streamdrift_window, (layout, cfg, cols)),
            ("naive", naive_window, (ref_cols, cols)),
        ]
        if evidently_version:
            contenders.append(("evidently", evidently_window, (ref_df, cur_df)))
        for name, fn, fn_args in contenders:
            c0, t0 = time.process_time(), time.perf_counter()
            got = fn(*fn_args)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            verdicts[name].append(sorted(got))
        log(
            f"  batch repeat {rep + 1}/{repeats}: "
            + ", ".join(f"{k} {v[-1] * 1000:.1f} ms" for k, v in times.items() if len(v) == rep + 1)
        )
    med = {k: median(v) for k, v in times.items()}
    cmed = {k: median(v) for k, v in cpu.items()}
    correct = {k: all(set(v) == DRIFTED for v in vs) for k, vs in verdicts.items() if vs}
    return {
        "rows": ROWS,
        "columns": len(NUMERIC),
        "reference_build_s": build_s,
        "seconds": times,
        "median_s": med,
        "cpu_seconds": cpu,
        "median_cpu_s": cmed,
        "speedup_vs_evidently_cpu": cmed["evidently"] / cmed["streamdrift"] if evidently_version else None,
        "speedup_vs_evidently": med["evidently"] / med["streamdrift"] if evidently_version else None,
        "speedup_vs_naive": med["naive"] / med["streamdrift"],
        "evidently_version": evidently_version,
        "evidently_error": evidently_error,
        "drifted_columns": verdicts,
        "verdicts_correct": correct,
        "cpu_idle_before_repeat": idle,
    }
