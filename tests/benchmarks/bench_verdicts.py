"""Verdict quality: how often streamdrift pages on pure noise, and how often it catches real drift.

Not a timing benchmark: every figure here is a rate over many windows, with its binomial 95 %
interval (Clopper–Pearson). Run it alone with ``tests/benchmarks/run.py --sections verdicts``
(``--quick`` for a smoke run of under a minute).

The data (:func:`draw`, seeded, fresh per repeat)
    17 features: four normals, two lognormals, an exponential, Student's t(3) and a Lomax
    (Pareto II, a = 2.5) for heavy tails, two uniforms, a bimodal normal mixture, three
    integer-valued features with few distinct values (Poisson(3), a 0-9 rating, a 0/1 flag),
    a 4-level categorical ``cat4`` and a 500-level long-tail categorical ``longtail``
    (Zipf-like, p_k ~ k^-1.1; the reference keeps the default top-50). A *repeat* draws a
    fresh reference (100k rows by default; the null battery also runs with a 10k reference)
    and fresh windows; the reference and the windows are independent draws of the same
    generator, so with no drift injected every flag is a false alarm.

streamdrift (today's code, or whatever the checkout holds)
    ``ReferenceProfile.build`` on the reference columns (:func:`build_reference`), then
    ``detectors.engine.run_local`` (the backfill's engine) on the window columns with a
    ``MonitorConfig`` that is all defaults except ``window: {kind: count, size: N}``
    (:func:`monitor_config`). A window *pages* when any record of the overall segment has
    ``drift == True``. With 20 segments (a ``segment`` field with 20 equally likely values,
    every segment getting the same number of events) each segment has its own count windows of
    N events; window *family* k is the k-th window of every segment, and it pages when any of
    the 20 segment windows does (the overall segment's windows are reported apart).
    These two functions are the only places the benchmark touches streamdrift's API.

Baseline: textbook KS and chi-square at the same false-alarm rate (:class:`Textbook`)
    Two-sample KS on the raw values, the statistic and p-value of ``scipy.stats.ks_2samp``
    (its asymptotic mode, which it takes for a 100k reference: ``kstwo.sf(D, round(n m /
    (n + m)))``; D is computed from the sorted reference and checked equal to ``ks_2samp``),
    and the chi-square homogeneity test of the 2 x K table of every category seen in the
    reference or the window (``scipy.stats.chi2_contingency``, no continuity correction). A
    window pages when any test's p-value is <= alpha; alpha is tuned on separate null windows
    so that the page rate equals streamdrift's measured null page rate at the same size (and,
    apart, to 1 %), then applied to the held-out null windows and the drifted windows.

Peers, on the same reference and window data (repeat 0), in a worker process
    * Evidently's ``DataDriftPreset`` defaults: for each column, the column type Evidently
      infers from the window (``infer_column_type``), its default test for that type and
      reference size (``get_stattest(..., None)``) and that test's default threshold: the
      per-column computation of ``ValueDrift`` without the report's plots (checked identical
      to a full ``Report([DataDriftPreset()])`` on one window in full runs). A window pages
      when any column drifts. ~1.3 s a window (each call re-reads the 100k reference), so
      it sees only the first windows of each cell (the tables say how many).
    * NannyML's ``UnivariateDriftCalculator`` with its defaults (Jensen-Shannon for every
      column, thresholds mean + 3 std of the statistic over reference chunks of the window's
      size), ``chunk_size`` = the window size, on all windows of repeat 0. NannyML's
      dependency FLAML starts a local Spark session when it is imported where pyspark is
      importable (the project's venv has pyspark), so the worker hides pyspark while it
      imports NannyML.

Detection scenarios (on the same features, windows of 500 and 2,000 events): ``norm_std``
shifted by +0.25 and +0.5 sigma, scaled by 1.5 about its mean; ``cat4`` with 10 points of
probability moved from A to D; a new category at 1 % of events in ``cat4`` and in ``longtail``.
A window detects when the drifted feature is flagged by any of its statistics; the page rate on
the other features of those windows is reported too.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

# -- the data ------------------------------------------------------------------------------------
BASE_SEED = 20_261_130
START_MS = 1_767_225_600_000  # event times: 1 ms apart from 2026-01-01
N_SEGMENTS = 20
BATCH_EVENTS = 200_000  # windows are drawn and evaluated in batches of about this many events

NORMAL = ("norm_std", "norm_loc", "norm_narrow", "norm_wide")
NUMERIC = (
    *NORMAL,
    "lognorm_1",
    "lognorm_2",
    "expon",
    "student_t3",
    "lomax",
    "uniform_01",
    "uniform_wide",
    "bimodal",
    "poisson3",
    "rating",
    "flag",
)
INTEGER = ("poisson3", "rating", "flag")
CATEGORICAL = ("cat4", "longtail")
FEATURES = NUMERIC + CATEGORICAL

CAT4_LEVELS = ("A", "B", "C", "D")
CAT4_P = (0.4, 0.3, 0.2, 0.1)
RATING_P = (0.02, 0.03, 0.05, 0.08, 0.12, 0.15, 0.20, 0.17, 0.10, 0.08)
LONGTAIL_LEVELS = 500
LONGTAIL_EXPONENT = 1.1
NEW_LEVEL = "zz_new"

_CAT4 = np.array((*CAT4_LEVELS, NEW_LEVEL), dtype=object)
_LONGTAIL = np.array([*(f"v{k:03d}" for k in range(LONGTAIL_LEVELS)), NEW_LEVEL], dtype=object)
_ZIPF = np.arange(1, LONGTAIL_LEVELS + 1, dtype=np.float64) ** -LONGTAIL_EXPONENT
_ZIPF /= _ZIPF.sum()
_SEGMENTS = np.array([f"s{k:02d}" for k in range(N_SEGMENTS)], dtype=object)


@dataclass(frozen=True)
class Drift:
    """One injected change: ``shift`` adds ``amount`` standard deviations, ``scale`` multiplies
    the spread about the mean, ``mix`` moves ``amount`` of probability from A to D, ``new``
    gives ``amount`` of the events a category the reference never had."""

    name: str
    feature: str
    kind: str
    amount: float


SCENARIOS = (
    Drift("mean +0.25σ (norm_std)", "norm_std", "shift", 0.25),
    Drift("mean +0.5σ (norm_std)", "norm_std", "shift", 0.5),
    Drift("σ × 1.5 (norm_std)", "norm_std", "scale", 1.5),
    Drift("mix: 10 pts A→D (cat4)", "cat4", "mix", 0.10),
    Drift("new category 1% (cat4)", "cat4", "new", 0.01),
    Drift("new category 1% (longtail)", "longtail", "new", 0.01),
)
DETECT_SIZES = (500, 2000)


def draw(n: int, rng: np.random.Generator, drift: Drift | None = None, segments: bool = False) -> dict[str, np.ndarray]:
    """``n`` events of every feature (and a balanced ``segment`` column if asked), from ``rng``.

    Numeric columns are float64 (integer-valued ones int64), categoricals object arrays of str.
    """
    c: dict[str, np.ndarray] = {}
    c["norm_std"] = rng.normal(0.0, 1.0, n)
    c["norm_loc"] = rng.normal(100.0, 15.0, n)
    c["norm_narrow"] = rng.normal(-5.0, 0.2, n)
    c["norm_wide"] = rng.normal(0.0, 1000.0, n)
    c["lognorm_1"] = rng.lognormal(0.0, 1.0, n)
    c["lognorm_2"] = rng.lognormal(3.0, 0.5, n)
    c["expon"] = rng.exponential(1.0, n)
    c["student_t3"] = rng.standard_t(3, n)
    c["lomax"] = rng.pareto(2.5, n)
    c["uniform_01"] = rng.random(n)
    c["uniform_wide"] = rng.uniform(-100.0, 100.0, n)
    first = rng.random(n) < 0.6
    c["bimodal"] = np.where(first, rng.normal(-2.0, 0.5, n), rng.normal(3.0, 1.0, n))
    c["poisson3"] = rng.poisson(3.0, n).astype(np.int64)
    c["rating"] = rng.choice(len(RATING_P), n, p=RATING_P).astype(np.int64)
    c["flag"] = (rng.random(n) < 0.3).astype(np.int64)
    c["cat4"] = _CAT4[rng.choice(len(CAT4_P), n, p=CAT4_P)]
    c["longtail"] = _LONGTAIL[rng.choice(LONGTAIL_LEVELS, n, p=_ZIPF)]
    if drift is not None:
        _apply(c, drift, n, rng)
    if segments:
        if n % N_SEGMENTS:
            raise ValueError(f"{n} events do not split evenly into {N_SEGMENTS} segments")
        c["segment"] = _SEGMENTS[rng.permutation(np.repeat(np.arange(N_SEGMENTS), n // N_SEGMENTS))]
    return c


def _apply(c: dict[str, np.ndarray], d: Drift, n: int, rng: np.random.Generator) -> None:
    if d.feature != "norm_std" and d.kind in ("shift", "scale"):
        raise ValueError(f"{d.name}: shifts and scale changes are defined for norm_std (N(0, 1)) only")
    if d.kind == "shift":
        c[d.feature] = c[d.feature] + d.amount * 1.0  # sigma = 1
    elif d.kind == "scale":
        c[d.feature] = 0.0 + d.amount * (c[d.feature] - 0.0)  # about the mean 0
    elif d.kind == "mix" and d.feature == "cat4":
        p = np.array((*CAT4_P, 0.0))
        p[0] -= d.amount
        p[3] += d.amount
        c["cat4"] = _CAT4[rng.choice(len(p), n, p=p)]
    elif d.kind == "new" and d.feature == "cat4":
        p = np.append(np.array(CAT4_P) * (1 - d.amount), d.amount)
        c["cat4"] = _CAT4[rng.choice(len(p), n, p=p)]
    elif d.kind == "new" and d.feature == "longtail":
        p = np.append(_ZIPF * (1 - d.amount), d.amount)
        c["longtail"] = _LONGTAIL[rng.choice(len(p), n, p=p)]
    else:
        raise ValueError(f"unknown drift {d}")


_PURPOSES = {"reference": 1, "null": 2, "segments": 3, "detect": 4, "tune": 5, "build": 6, "check": 7}


def rng_for(purpose: str, *keys: int) -> np.random.Generator:
    """An independent, reproducible stream for every (purpose, keys) combination."""
    return np.random.default_rng([BASE_SEED, _PURPOSES[purpose], *(int(k) for k in keys)])


def reference_columns(rows: int, repeat: int) -> dict[str, np.ndarray]:
    return draw(rows, rng_for("reference", rows, repeat))


def batches(
    key: tuple[Any, ...], size: int, n_windows: int, drift: Drift | None = None, segments: bool = False
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(windows in the batch, columns) of ``n_windows`` windows of ``size`` events, batch by batch.

    With ``segments`` a "window" is a family: ``N_SEGMENTS * size`` events, ``size`` per segment.
    Batch ``b`` is drawn from ``rng_for(*key, b)``; the split into batches depends only on
    ``size``, ``segments`` and ``n_windows``, so the worker redraws exactly the main process's windows.
    """
    events = size * (N_SEGMENTS if segments else 1)
    per = max(1, BATCH_EVENTS // events)
    for b, start in enumerate(range(0, n_windows, per)):
        k = min(per, n_windows - start)
        yield k, draw(k * events, rng_for(key[0], *key[1:], b), drift, segments)


def per_repeat(total: int, repeats: int) -> int:
    return max(1, math.ceil(total / repeats))


# -- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    repeats: int
    reference_rows: int
    null_windows: Mapping[int, int]  # window size -> windows (all repeats)
    small_reference_rows: int
    small_reference_windows: Mapping[int, int]
    segment_families: Mapping[int, int]  # events per segment window -> families
    detect_windows: int  # per scenario and size
    tune_windows: int  # per size, for the baseline's threshold
    evidently_null: Mapping[int, int]  # window size -> windows (repeat 0)
    evidently_detect: Mapping[int, int]  # window size -> windows per scenario (repeat 0)
    nannyml_null_sizes: tuple[int, ...]
    build_rows: int
    check_evidently_report: bool
    peers: bool = True


FULL = Settings(
    repeats=4,
    reference_rows=100_000,
    null_windows={100: 2000, 200: 2000, 500: 2000, 2000: 1000, 10_000: 300},
    small_reference_rows=10_000,
    small_reference_windows={100: 1000, 200: 1000, 500: 1000, 2000: 500, 10_000: 200},
    segment_families={100: 100, 500: 100, 2000: 30},
    detect_windows=500,
    tune_windows=2000,
    evidently_null={100: 20, 500: 20, 2000: 20},
    evidently_detect={500: 12, 2000: 12},
    nannyml_null_sizes=(100, 200, 500, 2000, 10_000),
    build_rows=1_000_000,
    check_evidently_report=True,
)
QUICK = Settings(
    repeats=1,
    reference_rows=100_000,
    null_windows={100: 100, 200: 100, 500: 100, 2000: 30, 10_000: 8},
    small_reference_rows=10_000,
    small_reference_windows={100: 100, 500: 50, 10_000: 5},
    segment_families={100: 4, 500: 4},
    detect_windows=30,
    tune_windows=200,
    evidently_null={500: 2},
    evidently_detect={500: 1},
    nannyml_null_sizes=(500, 2000),
    build_rows=1_000_000,
    check_evidently_report=False,
)


# -- streamdrift -----------------------------------------------------------------------------------
def build_reference(cols: Mapping[str, Any]) -> Any:
    """The reference profile every streamdrift verdict of this benchmark is made against."""
    from detectors.reference import ReferenceProfile

    return ReferenceProfile.build(cols, categorical=CATEGORICAL, features=list(FEATURES))


def monitor_config(size: int, segments: bool = False) -> Any:
    """``MonitorConfig`` defaults, except count windows of ``size`` events (and the segment field)."""
    from detectors.config import MonitorConfig

    doc: dict[str, Any] = {
        "monitor": "verdicts",
        "reference": "(in memory)",
        "window": {"kind": "count", "size": size},
    }
    if segments:
        doc["events"] = {"segment_fields": ["segment"]}
    return MonitorConfig.from_mapping(doc)


@dataclass
class Flags:
    """Per-window, per-feature flags: by PSI, by any other statistic (today KS or chi-square; whatever
    statistics the engine reports, e.g. a share of unseen categories), and insufficient data."""

    psi: np.ndarray  # (windows, features) bool
    test: np.ndarray
    insufficient: np.ndarray

    @property
    def any(self) -> np.ndarray:
        return self.psi | self.test

    @classmethod
    def empty(cls, n: int) -> Flags:
        z = np.zeros((n, len(FEATURES)), dtype=bool)
        return cls(z.copy(), z.copy(), z.copy())

    @classmethod
    def concat(cls, parts: Sequence[Flags]) -> Flags:
        return cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("psi", "test", "insufficient")))


_FEATURE_INDEX = {f: i for i, f in enumerate(FEATURES)}


def streamdrift_flags(
    reference: Any, layout: Any, cols: Mapping[str, np.ndarray], size: int, n_windows: int, segments: bool = False
) -> tuple[Flags, dict[str, Flags]]:
    """Run the engine over ``n_windows`` windows (families) and return the overall segment's flags
    and, with ``segments``, each segment's (window k of a segment = its k-th count window)."""
    from detectors.engine import run_local
    from detectors.events import EventColumns

    n = len(cols[FEATURES[0]])
    seg_keys: Sequence[tuple[str, ...]] = [(s,) for s in cols["segment"].tolist()] if segments else [()] * n
    ev = EventColumns(
        time_ms=START_MS + np.arange(n, dtype=np.int64),
        features={f: cols[f] for f in FEATURES},
        segments=seg_keys,
        prediction=np.full(n, np.nan),
        label=np.full(n, np.nan),
    )
    records = run_local(ev, monitor_config(size, segments), reference, layout)
    by_segment: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["feature"] not in _FEATURE_INDEX:
            raise RuntimeError(f"a record of no monitored feature (concept detection is off here): {r}")
        by_segment.setdefault(r["segment"].get("segment", ""), []).append(r)
    overall_windows = n // size
    out = {}
    for seg, recs in by_segment.items():
        starts = sorted({r["window_start"] for r in recs})
        expected = overall_windows if seg == "" else n_windows
        if len(starts) != expected:
            raise RuntimeError(f"segment {seg or '(overall)'}: {len(starts)} windows, expected {expected}")
        pos = {s: i for i, s in enumerate(starts)}
        fl = Flags.empty(expected)
        for r in recs:
            i, j = pos[r["window_start"]], _FEATURE_INDEX[r["feature"]]
            if r["drift"] is None:
                fl.insufficient[i, j] = True
            elif r["drift"]:
                (fl.psi if r["statistic"] == "psi" else fl.test)[i, j] = True
        out[seg] = fl
    overall = out.pop("")
    if segments and len(out) != N_SEGMENTS:
        raise RuntimeError(f"{len(out)} segments evaluated, expected {N_SEGMENTS}")
    return overall, out


def window_family_flags(layout: Any, cols: Mapping[str, np.ndarray], size: int, n_windows: int) -> np.ndarray:
    """With ``statistics.family: window``: whether each family (the k-th count window of every
    segment, corrected together as one family) has any drift verdict."""
    from detectors.config import StatisticsConfig
    from detectors.evaluate import evaluate_window

    cfg = StatisticsConfig(family="window")
    seg = cols["segment"]
    names = sorted(set(seg.tolist()))
    out = np.zeros(n_windows, dtype=bool)
    positions = {name: np.flatnonzero(seg == name) for name in names}
    for k in range(n_windows):
        members = []
        for name in names:
            rows = positions[name][k * size : (k + 1) * size]
            part = {f: (cols[f][rows] if f not in CATEGORICAL else [cols[f][i] for i in rows]) for f in FEATURES}
            members.append((layout.histogram(part).counts, None))
        out[k] = any(r.drift for results in evaluate_window(layout, members, cfg) for r in results)
    return out


# -- the textbook baseline -----------------------------------------------------------------------------
class Textbook:
    """Two-sample KS on raw values and chi-square homogeneity, from scipy, independent of streamdrift."""

    def __init__(self, ref: Mapping[str, np.ndarray]) -> None:
        self.m = len(ref[FEATURES[0]])
        self.sorted = {f: np.sort(np.asarray(ref[f], dtype=np.float64)) for f in NUMERIC}
        self.levels: dict[str, dict[str, int]] = {}
        self.counts: dict[str, np.ndarray] = {}
        for f in CATEGORICAL:
            u, k = np.unique(ref[f], return_counts=True)
            self.levels[f] = {str(v): i for i, v in enumerate(u)}
            self.counts[f] = k.astype(np.int64)

    def ks_d(self, feature: str, x: np.ndarray) -> np.ndarray:
        """KS statistic of each row of ``x`` (windows x n) against the reference, ties handled exactly.

        The sup of |F_w - F_r| is reached at a window value or just below one, so both ECDFs
        are evaluated there, right-continuous and as left limits."""
        ref = self.sorted[feature]
        w, n = x.shape
        xs = np.sort(x.astype(np.float64), axis=1)
        idx = np.broadcast_to(np.arange(n), (w, n))
        starts = np.ones((w, n), dtype=bool)
        starts[:, 1:] = xs[:, 1:] != xs[:, :-1]
        ends = np.ones((w, n), dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)  # first index of each value's run
        last = np.minimum.accumulate(np.where(ends, idx, n)[:, ::-1], axis=1)[:, ::-1]  # its last index
        fr_right = np.searchsorted(ref, xs, side="right") / self.m
        fr_left = np.searchsorted(ref, xs, side="left") / self.m
        right = np.abs((last + 1) / n - fr_right)
        left = np.abs(first / n - fr_left)
        return np.asarray(np.maximum(right, left).max(axis=1))

    def ks_p(self, d: np.ndarray, n: int) -> np.ndarray:
        """``ks_2samp``'s asymptotic two-sided p-value (its mode for a reference over 10,000 values)."""
        from scipy.stats import kstwo

        en = np.round(n * self.m / (n + self.m))
        return np.asarray(np.clip(kstwo.sf(d, en), 0.0, 1.0))

    def chi2_p(self, feature: str, values: np.ndarray) -> float:
        from scipy.stats import chi2_contingency

        u, k = np.unique(values, return_counts=True)
        levels = self.levels[feature]
        ref = self.counts[feature]
        win = np.zeros(len(ref), dtype=np.int64)
        extra = []
        for v, c in zip(u.tolist(), k.tolist(), strict=True):
            i = levels.get(str(v))
            if i is None:
                extra.append(c)  # a category the reference never had: its own column, reference count 0
            else:
                win[i] = c
        table = np.vstack([np.concatenate([ref, np.zeros(len(extra), dtype=np.int64)]), np.concatenate([win, extra])])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            return 1.0
        return float(chi2_contingency(table, correction=False).pvalue)

    def window_tests(self, cols: Mapping[str, np.ndarray], size: int, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
        """(KS D per window and numeric feature, chi-square p per window and categorical feature)."""
        d = np.column_stack([self.ks_d(f, np.asarray(cols[f]).reshape(n_windows, size)) for f in NUMERIC])
        p = np.array(
            [
                [self.chi2_p(f, np.asarray(cols[f])[i * size : (i + 1) * size]) for f in CATEGORICAL]
                for i in range(n_windows)
            ]
        )
        return d, p

    def min_p(self, d: np.ndarray, p: np.ndarray, size: int, features: Sequence[str]) -> np.ndarray:
        """Smallest p-value per window over the tests of ``features``.

        All numeric features of a window have the same n and m (no missing values), and the KS
        p-value decreases in D at fixed n, m: the smallest KS p-value is that of the largest D."""
        num = [NUMERIC.index(f) for f in features if f in NUMERIC]
        cat = [CATEGORICAL.index(f) for f in features if f in CATEGORICAL]
        out = np.ones(len(d))
        if num:
            out = np.minimum(out, self.ks_p(d[:, num].max(axis=1), size))
        if cat:
            out = np.minimum(out, p[:, cat].min(axis=1))
        return out


def check_textbook(log: Callable[[str], None]) -> None:
    """The baseline's KS equals ``scipy.stats.ks_2samp`` (ties included), its chi-square equals
    ``chi2_contingency`` on a table built by hand; raises if not."""
    from scipy.stats import chi2_contingency, ks_2samp

    ref = draw(20_000, rng_for("check", 0))
    tb = Textbook(ref)
    win = draw(3 * 200, rng_for("check", 1))
    for f in ("norm_std", "lognorm_1", "poisson3", "rating", "flag"):
        x = np.asarray(win[f]).reshape(3, 200)
        d = tb.ks_d(f, x)
        p = tb.ks_p(d, 200)
        for i in range(3):
            r = ks_2samp(np.asarray(ref[f], dtype=np.float64), x[i].astype(np.float64), method="asymp")
            if abs(r.statistic - d[i]) > 1e-12 or abs(r.pvalue - p[i]) > 1e-9 * max(r.pvalue, 1e-300):
                raise AssertionError(f"textbook KS of {f} differs from ks_2samp: {d[i]}, {p[i]} vs {r}")
    values = np.array(["A"] * 50 + ["B"] * 30 + ["zz_new"] * 20, dtype=object)
    ref_counts = [int(np.sum(ref["cat4"] == lv)) for lv in CAT4_LEVELS]
    expected = chi2_contingency(np.array([[*ref_counts, 0], [50, 30, 0, 0, 20]]), correction=False).pvalue
    if not math.isclose(tb.chi2_p("cat4", values), expected, rel_tol=1e-12):
        raise AssertionError("textbook chi-square differs from chi2_contingency")
    log("  baseline checked against scipy.stats.ks_2samp and chi2_contingency")


def tune_alpha(min_p: np.ndarray, rate: float) -> float:
    """The per-test threshold alpha (a window pages when one of its p-values is <= alpha) that pages
    ``rate`` of the tuning windows ``min_p``: the largest alpha that pages round(rate * T) of them,
    i.e. just below the next window's smallest p-value (the most generous choice for the baseline)."""
    q = np.sort(min_p)
    k = round(rate * len(q))
    if k >= len(q):
        return 1.0
    return float(np.nextafter(q[k], 0.0))


# -- rates -----------------------------------------------------------------------------------------------
def rate(k: int, n: int) -> dict[str, Any]:
    """k of n with its Clopper–Pearson 95 % interval."""
    from scipy.stats import binomtest

    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": [None, None]}
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": int(k), "n": int(n), "rate": k / n, "ci": [float(ci.low), float(ci.high)]}


def null_summary(fl: Flags) -> dict[str, Any]:
    anyf = fl.any
    return {
        "page": rate(int(anyf.any(axis=1).sum()), len(anyf)),
        "page_by_psi": rate(int(fl.psi.any(axis=1).sum()), len(anyf)),
        "page_by_test": rate(int(fl.test.any(axis=1).sum()), len(anyf)),
        "flagged_features_mean": float(anyf.sum(axis=1).mean()) if len(anyf) else None,
        "insufficient_windows": int(fl.insufficient.any(axis=1).sum()),
        "feature_rates": {
            f: {
                "psi": float(fl.psi[:, j].mean()),
                "test": float(fl.test[:, j].mean()),
                "any": float(anyf[:, j].mean()),
            }
            for j, f in enumerate(FEATURES)
        },
    }


def detect_summary(flags: np.ndarray, drift: Drift) -> dict[str, Any]:
    """``flags``: (windows, features) bool of any statistic."""
    j = _FEATURE_INDEX[drift.feature]
    others = np.delete(flags, j, axis=1)
    n = len(flags)
    return {"detected": rate(int(flags[:, j].sum()), n), "other_page": rate(int(others.any(axis=1).sum()), n)}


def mcnemar_worse(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Is detector ``a`` worse than ``b`` on the same windows? Discordant pairs, normal approximation
    of McNemar's test at 5 % (one-sided in b's favour)."""
    only_b = int(np.sum(b & ~a))
    only_a = int(np.sum(a & ~b))
    z = (only_b - only_a) / math.sqrt(only_b + only_a) if only_a + only_b else 0.0
    return {"only_streamdrift": only_a, "only_baseline": only_b, "z": z, "worse": z > 1.645}


# -- the peers (in a worker process) --------------------------------------------------------------------
def _frame(cols: Mapping[str, np.ndarray], rows: slice | None = None) -> Any:
    import pandas as pd

    return pd.DataFrame({f: (cols[f][rows] if rows is not None else cols[f]) for f in FEATURES})


def import_nannyml() -> Any:
    """NannyML, imported with pyspark hidden: its dependency FLAML starts a local Spark session at
    import time whenever pyspark is importable."""
    hide = "pyspark" not in sys.modules
    if hide:
        sys.modules["pyspark"] = None  # type: ignore[assignment]  # makes `import pyspark` raise ImportError
    try:
        import nannyml
    finally:
        if hide:
            del sys.modules["pyspark"]
    return nannyml


def evidently_window(ref_df: Any, cur_df: Any) -> tuple[np.ndarray, dict[str, str], dict[str, float]]:
    """Per-feature drift flags of Evidently's DataDriftPreset defaults, the test used and the score per feature."""
    from evidently.core.datasets import infer_column_type
    from evidently.legacy.calculations.stattests.registry import get_stattest

    flags = np.zeros(len(FEATURES), dtype=bool)
    tests, scores = {}, {}
    for j, f in enumerate(FEATURES):
        ctype = infer_column_type(cur_df[f]).value  # ValueDrift takes the column type of the current data
        test = get_stattest(ref_df[f], cur_df[f], ctype, None)
        res = test(ref_df[f], cur_df[f], ctype, None)
        flags[j] = bool(res.drifted)
        tests[f] = f"{ctype}:{test.name}@{res.actual_threshold:g}"
        scores[f] = float(res.drift_score)
    return flags, tests, scores


def check_evidently(ref_df: Any, cur_df: Any) -> None:
    """:func:`evidently_window` computes what a full ``Report([DataDriftPreset()])`` reports: the same
    columns, scores and thresholds."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    _, tests, scores = evidently_window(ref_df, cur_df)
    snap = Report([DataDriftPreset()]).run(current_data=cur_df, reference_data=ref_df).dict()
    report = {}
    for m in snap["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift"):
            report[cfg["column"]] = (float(m["value"]), float(cfg["threshold"]))
    mine = {f: (scores[f], float(tests[f].rsplit("@", 1)[1])) for f in FEATURES}
    same = report.keys() == mine.keys() and all(
        math.isclose(report[f][0], mine[f][0], rel_tol=1e-9, abs_tol=1e-12) and report[f][1] == mine[f][1] for f in mine
    )
    if not same:
        raise AssertionError(f"Evidently per-column scores differ from its report: {mine} vs {report}")


def peers_worker(settings: Settings) -> dict[str, Any]:
    """Evidently and NannyML on repeat 0's reference and windows (redrawn from the same seeds)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML's
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    s = settings
    ref = reference_columns(s.reference_rows, 0)
    ref_df = _frame(ref)
    out: dict[str, Any] = {"evidently": {}, "nannyml": {}}

    def null_key(size: int) -> tuple[Any, ...]:
        return ("null", s.reference_rows, 0, size)

    def null_total(size: int) -> int:
        return per_repeat(s.null_windows[size], s.repeats)

    # Evidently: the first windows of each cell
    try:
        import evidently

        ev: dict[str, Any] = {"version": evidently.__version__, "null": {}, "detect": {}, "tests": {}}
        checked = not s.check_evidently_report
        for size, k in s.evidently_null.items():
            n_w, cols = next(batches(null_key(size), size, null_total(size)))
            if k > n_w:
                raise ValueError(f"Evidently: {k} windows of {size} asked, the first batch has {n_w}")
            rows = []
            for i in range(k):
                cur = _frame(cols, slice(i * size, (i + 1) * size))
                if not checked:
                    check_evidently(ref_df, cur)
                    checked = True
                fl, tests, _ = evidently_window(ref_df, cur)
                rows.append(fl)
                for f, t in tests.items():
                    ev["tests"].setdefault(f, {}).setdefault(f"null {size}", set()).add(t)
            ev["null"][size] = np.array(rows)
        for si, d in enumerate(SCENARIOS):
            for size, k in s.evidently_detect.items():
                n_w, cols = next(batches(("detect", 0, si, size), size, per_repeat(s.detect_windows, s.repeats), d))
                if k > n_w:
                    raise ValueError(f"Evidently: {k} windows of {size} asked, the first batch has {n_w}")
                ev["detect"][(si, size)] = np.array(
                    [evidently_window(ref_df, _frame(cols, slice(i * size, (i + 1) * size)))[0] for i in range(k)]
                )
        ev["tests"] = {f: {c: sorted(v) for c, v in cells.items()} for f, cells in ev["tests"].items()}
        ev["report_checked"] = s.check_evidently_report
        out["evidently"] = ev
    except ImportError as exc:
        out["evidently"] = {"error": f"evidently is not importable ({exc}); install the bench extra"}
    out["evidently_seconds"] = time.perf_counter() - t0

    # NannyML: every window of repeat 0
    t1 = time.perf_counter()
    try:
        nml = import_nannyml()
        nm: dict[str, Any] = {"version": nml.__version__, "null": {}, "detect": {}, "thresholds": {}}
        for size in sorted(set(s.nannyml_null_sizes) | set(DETECT_SIZES)):
            calc = nml.UnivariateDriftCalculator(column_names=list(FEATURES), chunk_size=size)
            calc.fit(ref_df)
            sets: list[tuple[Any, tuple[Any, ...], int, Drift | None]] = []
            if size in s.nannyml_null_sizes and size in s.null_windows:
                sets.append((size, null_key(size), null_total(size), None))
            if size in DETECT_SIZES:
                for si, d in enumerate(SCENARIOS):
                    sets.append(((si, size), ("detect", 0, si, size), per_repeat(s.detect_windows, s.repeats), d))
            for label, key, total, d in sets:
                frames = [_frame(cols) for _, cols in batches(key, size, total, d)]
                import pandas as pd

                res = calc.calculate(pd.concat(frames, ignore_index=True)).filter(period="analysis").to_df()
                if len(res) != total:
                    raise RuntimeError(f"NannyML made {len(res)} chunks of {total} windows of {size}")
                alert_cols = {c[0]: c for c in res.columns if c[-1] == "alert"}
                fl = np.column_stack([res[alert_cols[f]].to_numpy(dtype=bool) for f in FEATURES])
                (nm["detect"] if d is not None else nm["null"])[label] = fl
                if d is None or size not in nm["thresholds"]:
                    thr = {c[0]: float(res[c].iloc[0]) for c in res.columns if c[-1] == "upper_threshold"}
                    methods = sorted({c[1] for c in res.columns if c[-1] == "alert"})
                    nm["thresholds"][size] = {"methods": methods, "upper": thr}
        out["nannyml"] = nm
    except ImportError as exc:
        out["nannyml"] = {"error": f"nannyml is not importable ({exc}); install the bench extra"}
    out["nannyml_seconds"] = time.perf_counter() - t1
    return out


# -- the run ---------------------------------------------------------------------------------------------
def time_reference_build(rows: int) -> dict[str, Any]:
    """Seconds of the reference build on ``rows`` reference rows of every feature: without the
    calibration, with the bootstrap only, and with the bootstrap and the chunks (the default)."""
    from detectors.reference import ReferenceProfile

    cols = draw(rows, rng_for("build", rows))
    out: dict[str, Any] = {"rows": rows, "features": len(FEATURES)}
    variants = {"none": {"calibrate": False}, "bootstrap": {"chunks": False}, "default": {}}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        c0 = time.process_time()
        ReferenceProfile.build(cols, categorical=CATEGORICAL, features=list(FEATURES), **kwargs)
        out[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    out["seconds"], out["cpu_seconds"] = out["default"]["seconds"], out["default"]["cpu_seconds"]
    return out


def run(quick: bool = False, log: Callable[[str], None] = print, peers: bool = True) -> dict[str, Any]:
    import multiprocessing

    from detectors.histogram import Layout

    s = replace(QUICK if quick else FULL, peers=peers)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"quick": quick, "settings": _jsonable(asdict(s)), "features": list(FEATURES)}
    res["scenarios"] = [asdict(d) for d in SCENARIOS]
    check_textbook(log)
    log(f"  reference build at {s.build_rows:,} rows")
    res["reference_build"] = time_reference_build(s.build_rows)
    log(f"  ... {res['reference_build']['seconds']:.2f} s")

    pool: ProcessPoolExecutor | None = None
    peers_future: Future[dict[str, Any]] | None = None
    if s.peers:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        peers_future = pool.submit(peers_worker, s)
        log("  peers (Evidently, NannyML) started in a worker process")
    try:
        sd = _streamdrift_part(s, log, Layout)
        peer_res: dict[str, Any] = {}
        if peers_future is not None:
            if not peers_future.done():
                log("  waiting for the peers' worker")
            peer_res = peers_future.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    res.update(sd["summary"])
    res["peers"] = _peer_summary(s, sd["raw"], peer_res) if peer_res else {"skipped": "--no-peers"}
    res["seconds"] = time.perf_counter() - t_start
    return res


def _streamdrift_part(s: Settings, log: Callable[[str], None], layout_cls: Any) -> dict[str, Any]:
    """Everything but the peers: null streams (two reference sizes), segments, baseline tuning, detection.

    Per-window flags are kept per repeat (``[repeat] -> flags``) so the peers' windows (repeat 0)
    can be compared with streamdrift's on exactly the same data."""
    null: dict[int, dict[int, list[Flags]]] = {s.reference_rows: {}, s.small_reference_rows: {}}
    seg_fam: dict[int, list[np.ndarray]] = {}  # (families, 20 segments) any flag
    seg_win: dict[int, list[np.ndarray]] = {}  # (families, 20 segments, features)
    seg_overall: dict[int, list[np.ndarray]] = {}  # overall segment's windows: any flag
    seg_family_window: dict[int, list[np.ndarray]] = {}  # families corrected together (family: window)
    tb_null: dict[int, list[np.ndarray]] = {size: [] for size in DETECT_SIZES}
    tb_tune: dict[int, list[np.ndarray]] = {size: [] for size in DETECT_SIZES}
    det_sd: dict[tuple[int, int], list[np.ndarray]] = {}
    det_tb: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    t0 = time.perf_counter()

    def done(what: str) -> None:
        log(f"  [{time.perf_counter() - t0:5.0f} s] {what}")

    for rep in range(s.repeats):
        for rows, table in ((s.reference_rows, s.null_windows), (s.small_reference_rows, s.small_reference_windows)):
            ref = reference_columns(rows, rep)
            reference = build_reference(ref)
            layout = layout_cls(reference)
            textbook = Textbook(ref) if rows == s.reference_rows else None
            for size, total in table.items():
                parts = []
                for k, cols in batches(("null", rows, rep, size), size, per_repeat(total, s.repeats)):
                    fl, _ = streamdrift_flags(reference, layout, cols, size, k)
                    parts.append(fl)
                    if textbook is not None and size in DETECT_SIZES:
                        d, p = textbook.window_tests(cols, size, k)
                        tb_null[size].append(textbook.min_p(d, p, size, FEATURES))
                null[rows].setdefault(size, []).append(Flags.concat(parts))
                done(f"repeat {rep + 1}/{s.repeats}, {rows:,}-row reference: null windows of {size:,}")
            if textbook is None:
                continue
            for size, fams in s.segment_families.items():
                for k, cols in batches(("segments", rep, size), size, per_repeat(fams, s.repeats), segments=True):
                    overall, segs = streamdrift_flags(reference, layout, cols, size, k, segments=True)
                    win = np.stack([segs[name].any for name in sorted(segs)], axis=1)
                    seg_win.setdefault(size, []).append(win)
                    seg_fam.setdefault(size, []).append(win.any(axis=2))
                    seg_overall.setdefault(size, []).append(overall.any.any(axis=1))
                    seg_family_window.setdefault(size, []).append(window_family_flags(layout, cols, size, k))
                done(f"repeat {rep + 1}/{s.repeats}: {N_SEGMENTS} segments, windows of {size:,}")
            for size in DETECT_SIZES:
                for k, cols in batches(("tune", rep, size), size, per_repeat(s.tune_windows, s.repeats)):
                    d, p = textbook.window_tests(cols, size, k)
                    tb_tune[size].append(textbook.min_p(d, p, size, FEATURES))
            for si, drift in enumerate(SCENARIOS):
                others = [f for f in FEATURES if f != drift.feature]
                for size in DETECT_SIZES:
                    parts_any = []
                    key = ("detect", rep, si, size)
                    for k, cols in batches(key, size, per_repeat(s.detect_windows, s.repeats), drift):
                        fl, _ = streamdrift_flags(reference, layout, cols, size, k)
                        parts_any.append(fl.any)
                        d, p = textbook.window_tests(cols, size, k)
                        det_tb.setdefault((si, size), []).append(
                            (textbook.min_p(d, p, size, [drift.feature]), textbook.min_p(d, p, size, others))
                        )
                    det_sd.setdefault((si, size), []).append(np.concatenate(parts_any))
            done(f"repeat {rep + 1}/{s.repeats}: baseline tuning and detection")
    summary: dict[str, Any] = {"streamdrift_seconds": time.perf_counter() - t0}
    summary["null"] = {
        str(rows): {str(size): null_summary(Flags.concat(reps)) for size, reps in sizes.items()}
        for rows, sizes in null.items()
    }
    segs_out: dict[str, Any] = {}
    for size, parts in seg_fam.items():
        fam = np.concatenate(parts)
        win = np.concatenate(seg_win[size])
        ov = np.concatenate(seg_overall[size])
        segs_out[str(size)] = {
            "segments": N_SEGMENTS,
            "events_per_family": N_SEGMENTS * size,
            "family_page": rate(int(fam.any(axis=1).sum()), len(fam)),
            "segment_window_page": rate(int(fam.sum()), fam.size),
            "overall_window_page": rate(int(ov.sum()), len(ov)),
            "family_window_page": rate(
                int(np.concatenate(seg_family_window[size]).sum()), len(np.concatenate(seg_family_window[size]))
            ),
            "feature_rates": {f: float(win[:, :, j].mean()) for j, f in enumerate(FEATURES)},
        }
    summary["segments"] = segs_out
    # the baseline's thresholds: streamdrift's measured null page rate at the size, and 1 %
    base: dict[str, Any] = {}
    alphas: dict[tuple[int, str], float] = {}
    for size in DETECT_SIZES:
        target = summary["null"][str(s.reference_rows)][str(size)]["page"]["rate"]
        tune = np.concatenate(tb_tune[size])
        held = np.concatenate(tb_null[size])
        entry: dict[str, Any] = {"tuning_windows": len(tune), "held_out_windows": len(held)}
        for label, r in (("matched", target), ("1pct", 0.01)):
            a = tune_alpha(tune, r)
            alphas[(size, label)] = a
            entry[label] = {"target_rate": r, "alpha": a, "held_out_page": rate(int((held <= a).sum()), len(held))}
        base[str(size)] = entry
    summary["baseline"] = base
    det_out: dict[str, Any] = {}
    for (si, size), reps in det_sd.items():
        drift = SCENARIOS[si]
        flags = np.concatenate(reps)
        p_drift = np.concatenate([a for a, _ in det_tb[(si, size)]])
        p_other = np.concatenate([b for _, b in det_tb[(si, size)]])
        sd_det = flags[:, _FEATURE_INDEX[drift.feature]]
        cell: dict[str, Any] = {"streamdrift": detect_summary(flags, drift)}
        for label in ("matched", "1pct"):
            a = alphas[(size, label)]
            bl_det = p_drift <= a
            cell[f"baseline_{label}"] = {
                "alpha": a,
                "detected": rate(int(bl_det.sum()), len(bl_det)),
                "other_page": rate(int((p_other <= a).sum()), len(p_other)),
            }
            if label == "matched":
                cell["vs_baseline"] = mcnemar_worse(sd_det, bl_det)
        det_out.setdefault(drift.name, {})[str(size)] = cell
    summary["detection"] = det_out
    raw = {
        "null_repeat0": {size: reps[0].any for size, reps in null[s.reference_rows].items()},
        "detect_repeat0": {key: reps[0] for key, reps in det_sd.items()},
    }
    return {"summary": summary, "raw": raw}


def _peer_summary(s: Settings, raw: Mapping[str, Any], peer: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("evidently", "nannyml"):
        p = peer.get(name) or {}
        if "error" in p:
            out[name] = {"error": p["error"]}
            continue
        entry: dict[str, Any] = {"version": p.get("version"), "null": {}, "detection": {}}
        for size, fl in p["null"].items():
            k = len(fl)
            sd = raw["null_repeat0"][size][:k]  # the peer saw repeat 0's first k windows
            entry["null"][str(size)] = {
                "page": rate(int(fl.any(axis=1).sum()), k),
                "flagged_features_mean": float(fl.sum(axis=1).mean()),
                "feature_rates": {f: float(fl[:, j].mean()) for j, f in enumerate(FEATURES)},
                "streamdrift_same_windows": rate(int(sd.any(axis=1).sum()), k),
            }
        for (si, size), fl in p["detect"].items():
            drift = SCENARIOS[si]
            cell = detect_summary(fl, drift)
            sd = raw["detect_repeat0"][(si, size)][: len(fl)]
            cell["streamdrift_same_windows"] = detect_summary(sd, drift)
            entry["detection"].setdefault(drift.name, {})[str(size)] = cell
        if name == "evidently":
            entry["tests"] = p.get("tests")
            entry["report_checked"] = p.get("report_checked")
        else:
            entry["thresholds"] = {str(k): v for k, v in p.get("thresholds", {}).items()}
        out[name] = entry
    out["evidently_seconds"] = peer.get("evidently_seconds")
    out["nannyml_seconds"] = peer.get("nannyml_seconds")
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# -- the report ------------------------------------------------------------------------------------------
def pct(r: Mapping[str, Any] | None, ci: bool = True) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci"]
    text = f"{100 * r['rate']:.1f}%"
    return f"{text} [{100 * lo:.1f}–{100 * hi:.1f}]" if ci else text


def frac(r: Mapping[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    return f"{r['k']}/{r['n']}"


def report(v: Mapping[str, Any]) -> tuple[list[str], dict[str, tuple[str, bool | None]]]:
    """Markdown lines and the targets of issue 14 (measured, pass)."""
    s = v["settings"]
    big, small = str(s["reference_rows"]), str(s["small_reference_rows"])
    peers = v.get("peers") or {}
    ev, nm = peers.get("evidently") or {}, peers.get("nannyml") or {}
    lines = [
        "",
        f"Verdicts (`--sections verdicts`{', --quick' if v['quick'] else ''}): {len(v['features'])} features, "
        f"{s['repeats']} repeat(s) (a fresh reference and fresh windows each), MonitorConfig defaults with count "
        f"windows; rates with Clopper–Pearson 95% intervals; {v['seconds']:.0f} s.",
        "",
        f"| null stream: window (events) | windows | streamdrift page rate ({int(big):,}-row reference) "
        "| paged by PSI | paged by KS/χ²/other | features flagged / window "
        f"| streamdrift ({int(small):,}-row reference) | Evidently | NannyML |",
        "|---:|---:|---|---:|---:|---:|---|---|---|",
    ]
    for size, r in v["null"][big].items():
        sm = v["null"].get(small, {}).get(size)
        evn = (ev.get("null") or {}).get(size)
        nmn = (nm.get("null") or {}).get(size)
        small_page = pct(sm["page"]) if sm else "n/a"
        ev_page = frac(evn["page"]) if evn else "n/a"
        nm_page = f"{pct(nmn['page'])} ({nmn['page']['n']})" if nmn else "n/a"
        lines.append(
            f"| {int(size):,} | {r['page']['n']:,} | {pct(r['page'])} | {pct(r['page_by_psi'], False)} "
            f"| {pct(r['page_by_test'], False)} | {r['flagged_features_mean']:.2f} | {small_page} "
            f"| {ev_page} | {nm_page} |"
        )
    for size in ("100", "500"):
        r = v["null"][big].get(size)
        if not r:
            continue
        lines += [
            "",
            f"| flag rate per feature, null windows of {int(size):,} | PSI | KS/χ²/other | either "
            f"| Evidently ({frac((ev.get('null') or {}).get(size, {}).get('page'))} windows) | NannyML |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        evf = ((ev.get("null") or {}).get(size) or {}).get("feature_rates", {})
        nmf = ((nm.get("null") or {}).get(size) or {}).get("feature_rates", {})
        for f, fr in r["feature_rates"].items():
            e = f"{100 * evf[f]:.0f}%" if f in evf else "n/a"
            n_ = f"{100 * nmf[f]:.1f}%" if f in nmf else "n/a"
            lines.append(
                f"| {f} | {100 * fr['psi']:.1f}% | {100 * fr['test']:.1f}% | {100 * fr['any']:.1f}% | {e} | {n_} |"
            )
    if v.get("segments"):
        lines += [
            "",
            "| 20 segments: events per segment window | families | family page rate, `family: segment` "
            "(default) | per segment window | overall segment's windows | family page rate, `family: window` |",
            "|---:|---:|---|---|---|---|",
        ]
        for size, r in v["segments"].items():
            fw = pct(r["family_window_page"]) if "family_window_page" in r else "n/a"
            lines.append(
                f"| {int(size):,} | {r['family_page']['n']} | {pct(r['family_page'])} "
                f"| {pct(r['segment_window_page'])} | {pct(r['overall_window_page'])} | {fw} |"
            )
    lines += [
        "",
        "| baseline threshold: window | streamdrift null page rate (target) | alpha per test | baseline page rate, "
        "held-out null windows | alpha at 1% | held-out page rate |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for size, b in v["baseline"].items():
        m, o = b["matched"], b["1pct"]
        lines.append(
            f"| {int(size):,} | {100 * m['target_rate']:.1f}% | {m['alpha']:.3g} | {pct(m['held_out_page'])} "
            f"| {o['alpha']:.3g} | {pct(o['held_out_page'])} |"
        )
    lines += [
        "",
        "| detection: scenario | window | streamdrift | baseline KS/χ² at streamdrift's false-alarm rate "
        "| baseline at 1% | Evidently | NannyML |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for name, sizes in v["detection"].items():
        for size, c in sizes.items():
            evd = ((ev.get("detection") or {}).get(name) or {}).get(size)
            nmd = ((nm.get("detection") or {}).get(name) or {}).get(size)
            lines.append(
                f"| {name} | {int(size):,} | {pct(c['streamdrift']['detected'])} "
                f"| {pct(c['baseline_matched']['detected'])} "
                f"| {pct(c['baseline_1pct']['detected'])} | {frac(evd['detected']) if evd else 'n/a'} "
                f"| {pct(nmd['detected']) if nmd else 'n/a'} |"
            )
    lines += [
        "",
        "| page rate on the non-drifted features: scenario | window | streamdrift | baseline (matched) "
        "| baseline at 1% | Evidently | NannyML |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for name, sizes in v["detection"].items():
        for size, c in sizes.items():
            evd = ((ev.get("detection") or {}).get(name) or {}).get(size)
            nmd = ((nm.get("detection") or {}).get(name) or {}).get(size)
            lines.append(
                f"| {name} | {int(size):,} | {pct(c['streamdrift']['other_page'])} "
                f"| {pct(c['baseline_matched']['other_page'])} | {pct(c['baseline_1pct']['other_page'])} "
                f"| {frac(evd['other_page']) if evd else 'n/a'} | {pct(nmd['other_page']) if nmd else 'n/a'} |"
            )
    b = v["reference_build"]
    lines.append(f"\nReference build ({b['rows']:,} rows x {b['features']} features, `ReferenceProfile.build`):\n")
    lines.append("| calibration | wall s | CPU s |\n|---|---:|---:|")
    for name, label in (("none", "none"), ("bootstrap", "bootstrap only"), ("default", "bootstrap + chunks (default)")):
        if name in b:
            lines.append(f"| {label} | {b[name]['seconds']:.2f} | {b[name]['cpu_seconds']:.2f} |")
    notes = []
    if ev.get("version"):
        checked = (
            "; per-column verdicts checked equal to a full DataDriftPreset report" if ev.get("report_checked") else ""
        )
        notes.append(f"Evidently {ev['version']}: the first windows of repeat 0 per cell (k/n shown){checked}")
    elif ev.get("error"):
        notes.append(f"Evidently: {ev['error']}")
    if nm.get("version"):
        notes.append(f"NannyML {nm['version']}: every window of repeat 0 (window count in brackets for null streams)")
    elif nm.get("error"):
        notes.append(f"NannyML: {nm['error']}")
    if notes:
        lines.append("Peers: " + "; ".join(notes) + ".")
    return lines, targets(v)


def targets(v: Mapping[str, Any]) -> dict[str, tuple[str, bool | None]]:
    big = str(v["settings"]["reference_rows"])
    out: dict[str, tuple[str, bool | None]] = {}
    pages = {size: r["page"]["rate"] for size, r in v["null"][big].items()}
    out["null page rate <= 1% at every window size"] = (
        ", ".join(f"{int(k):,}: {100 * x:.1f}%" for k, x in pages.items()),
        all(x <= 0.01 for x in pages.values()),
    )
    if v.get("segments"):
        fam = {size: r["family_window_page"]["rate"] for size, r in v["segments"].items()}
        out["20 segments, statistics.family: window: family page rate <= 1%"] = (
            ", ".join(f"{int(k):,}/segment: {100 * x:.1f}%" for k, x in fam.items()),
            all(x <= 0.01 for x in fam.values()),
        )
    det = v["detection"]
    half = det[SCENARIOS[1].name]["500"]["streamdrift"]["detected"]["rate"]
    out["+0.5σ at 500 events detected in >= 95% of windows"] = (f"{100 * half:.1f}%", half >= 0.95)
    news = {d.name: det[d.name]["2000"]["streamdrift"]["detected"]["rate"] for d in SCENARIOS if d.kind == "new"}
    out["new category at 1% detected at 2,000 events (>= 95% of windows)"] = (
        ", ".join(f"{k}: {100 * x:.1f}%" for k, x in news.items()),
        all(x >= 0.95 for x in news.values()),
    )
    worse = [
        f"{name} @ {int(size):,}"
        for name, sizes in det.items()
        for size, c in sizes.items()
        if c["vs_baseline"]["worse"]
    ]
    out["no detection rate worse than textbook KS/χ² at the same false-alarm rate (McNemar, 5%)"] = (
        "worse: " + ", ".join(worse) if worse else "none worse",
        not worse,
    )
    return out


def main() -> int:
    """``python -m tests.benchmarks.bench_verdicts [--quick]``: this section alone, Markdown to stdout."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    v = run(a.quick, lambda m: print(m, file=sys.stderr, flush=True), peers=not a.no_peers)
    lines, tg = report(v)
    print("\n".join(lines))
    for name, (val, ok) in tg.items():
        print(f"- {name}: {val} -> {'PASS' if ok else 'FAIL'}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(v, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
