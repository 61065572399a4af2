"""Evaluate windows against the reference: tests, calibrated p-values, corrections, verdicts, records.

The tests of a window (one per hypothesis; :mod:`detectors.calibration` gives their calibrated
p-values at the window's size)
    * ``bins`` (every feature): the chi-square homogeneity test of the window against the
      reference on the feature's PSI bins (coarse bins; a categorical's seen buckets), sparse
      bins pooled (:func:`detectors.statistics.pool_cells`). It decides PSI's verdict (PSI ≈
      X² (1/n + 1/m) for small differences, without PSI's jump when a bin of a small window is
      empty) and the chi-square verdict of a categorical.
    * ``ks`` (numeric): the binned KS statistic (exact ``ks_2samp`` when a count window keeps
      raw values and the reference keeps its values).
    * ``unseen`` (categorical): the number of events of categories the reference never had,
      against ``Binomial(n, unseen_rate)`` at the effective size ``n m / (n + m)`` (the
      reference's Good–Turing estimate of how often a
      new category appears when nothing changed). Never-seen categories are not a cell of the
      chi-square test (a zero reference cell would make one odd value decisive).

Multiple testing
    Every test of a window and segment is one *family* (``statistics.family: segment``), or
    every test of every segment of a time window (``family: window``); the correction
    (``bonferroni`` by default, ``bh``, ``none``) keeps the chance that a window (family) with no
    drift has any verdict at ``statistics.false_alarm_rate`` (1 %) or below: Bonferroni tests
    each p-value at ``rate / K`` for ``K`` tests, Benjamini–Hochberg at ``rate R / K`` for its
    ``R`` rejections.

Verdicts (records; several verdicts may read one test)
    ====== ============================ ======================= ====================================
    record value (``effect``)            test                    effect floor / critical
    ====== ============================ ======================= ====================================
    psi    PSI on the PSI bins           ``bins``                ``psi.warning`` / ``psi.critical``
    ks     KS D                          ``ks``                  ``ks.min_statistic`` / ``ks.critical_statistic``
    chi2   X² (effect: Cramér's V)       ``bins``                ``chi2.min_cramers_v`` / ``chi2.critical_cramers_v``
    unseen share of never-seen values    ``unseen``              ``unseen.min_share`` / ``unseen.critical_share``
    ====== ============================ ======================= ====================================

    A verdict is *drift* when its test's p-value passes the correction **and** its effect is at
    least the floor (so a huge window does not page on a negligible difference, and a tiny one
    does not page on noise); ``critical`` when the effect also reaches the critical level, else
    ``warning``. ``threshold`` is the effect from which this window would have been flagged: the
    larger of the floor and the statistic's calibrated critical value at the window's size and
    the family's level (for PSI through ``PSI ≈ X² (1/n + 1/m)``, approximate). Cramér's V is
    size-balanced (:func:`detectors.statistics.cramers_v`).

    Fewer than ``min_events`` valid values in the window (or the reference) give no verdict:
    ``value``, ``effect``, ``p_value``, ``threshold`` and ``drift`` are ``None`` and ``severity``
    is ``insufficient_data``. Undefined is never reported as 0.

Records follow the one schema of docs/architecture.md ("Record schema"), plus ``effect``, ``p_value_adjusted``
and ``method``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special as _sp

from detectors.calibration import Calibration, chi2_textbook_p, ks_scale
from detectors.config import StatisticsConfig
from detectors.exceptions import ConfigError
from detectors.histogram import Layout, coarse_counts
from detectors.reference import CategoricalProfile, IntArray, NumericProfile
from detectors.statistics import (
    MIN_EXPECTED,
    adjust,
    chi_square_statistic,
    cramers_v,
    ks_exact,
    ks_statistic_many,
    pool_cells,
    psi_many,
    unseen_p_value,
)

OK, WARNING, CRITICAL, INSUFFICIENT = "ok", "warning", "critical", "insufficient_data"
SEVERITY_LEVEL = {INSUFFICIENT: -1, OK: 0, WARNING: 1, CRITICAL: 2}

#: the fields of a window statistic record, in order, with their column types (Arrow type
#: aliases; "map" is a string -> string map): the one record schema, which the consumer's
#: files and the Spark jobs both build their Parquet schema from
RECORD_TYPES = (
    ("monitor", "string"),
    ("segment", "map"),
    ("feature", "string"),
    ("statistic", "string"),
    ("method", "string"),
    ("value", "float64"),
    ("effect", "float64"),
    ("p_value", "float64"),
    ("p_value_adjusted", "float64"),
    ("threshold", "float64"),
    ("drift", "bool"),
    ("severity", "string"),
    ("window_start", "string"),
    ("window_end", "string"),
    ("window_index", "int64"),
    ("n_reference", "int64"),
    ("n_window", "int64"),
    ("n_missing", "int64"),
    ("reference_fingerprint", "string"),
    ("model_name", "string"),
    ("model_version", "string"),
)
RECORD_FIELDS = tuple(name for name, _type in RECORD_TYPES)
#: the window statistics (concept-drift records carry their detector's name instead)
WINDOW_STATISTICS = ("psi", "ks", "chi2", "unseen")


@dataclass(frozen=True)
class StatisticResult:
    """One verdict on one feature in one window, and how it was produced."""

    feature: str
    statistic: str  # psi | ks | chi2 | unseen
    method: str  # psi_coarse | ks_binned | ks_exact | chi2_pooled | unseen_binomial
    value: float | None
    p_value: float | None
    p_value_adjusted: float | None
    threshold: float | None
    n_reference: int
    n_window: int
    n_missing: int
    drift: bool | None
    severity: str
    effect: float | None = None


@dataclass
class _Test:
    """One hypothesis test of a window: its calibrated p-value and what inverting it needs."""

    feature: str
    kind: str  # bins | ks | ks_exact | unseen
    p: float
    n: int  # events the test counted
    m: int  # reference values
    dof: int = 1  # bins: cells - 1
    unseen_rate: float = 0.0


@dataclass
class _Verdict:
    """A verdict to be decided once the family's correction is known (``test`` None: no data)."""

    feature: str
    statistic: str
    method: str
    value: float | None
    effect: float | None
    test: int | None  # index into the family's tests
    m: int
    n: int
    n_missing: int


@dataclass(frozen=True)
class _Plan:
    """What every window of a layout needs from the reference, computed once per layout.

    The numeric features' fine bins are gathered end to end (``fine``: their positions in a
    count vector) so PSI (on coarse bins) and the binned KS of all of them take a few array
    operations per window (:func:`psi_many`, :func:`ks_statistic_many`).
    """

    fine: IntArray  # positions of the numeric features' fine bins in a count vector, end to end
    fine_starts: IntArray  # where each numeric feature starts in that gather
    coarse_starts: IntArray  # where each coarse bin starts in that gather
    coarse_feature_starts: IntArray  # where each numeric feature's coarse bins start among all coarse bins
    r_fine: npt.NDArray[np.float64]
    r_coarse: npt.NDArray[np.float64]
    m: dict[str, int]  # reference size of every feature
    r: dict[str, IntArray]  # reference bin counts of every feature (a categorical's without __unseen__)
    r_psi: dict[str, IntArray]  # reference counts on the PSI bins
    numeric_index: dict[str, int]  # numeric feature -> its position among the numeric features
    m_numeric: npt.NDArray[np.float64]  # reference size of each numeric feature, in that order
    coarse_lengths: IntArray  # PSI bins of each numeric feature
    seen: IntArray  # positions of the categorical features' seen buckets in a count vector, end to end
    seen_starts: IntArray  # where each categorical feature starts in that gather
    r_seen: npt.NDArray[np.float64]  # their reference counts, end to end
    categorical_index: dict[str, int]  # categorical feature -> its position among the categorical features
    m_categorical: npt.NDArray[np.float64]  # reference size of each categorical feature, in that order
    r_seen_totals: npt.NDArray[np.float64]  # reference count in each categorical feature's seen buckets
    seen_lengths: IntArray  # seen buckets of each categorical feature


@functools.lru_cache(maxsize=32)
def _plan(layout: Layout) -> _Plan:
    fine: list[IntArray] = []
    fine_starts: list[int] = []
    coarse_starts: list[int] = []
    coarse_feature_starts: list[int] = []
    r_fine: list[npt.NDArray[np.float64]] = []
    r_coarse: list[npt.NDArray[np.float64]] = []
    m: dict[str, int] = {}
    r_all: dict[str, IntArray] = {}
    r_psi: dict[str, IntArray] = {}
    index: dict[str, int] = {}
    seen: list[IntArray] = []
    seen_starts: list[int] = []
    r_seen: list[npt.NDArray[np.float64]] = []
    categorical_index: dict[str, int] = {}
    at = n_coarse = at_seen = 0
    for name in layout.features:
        profile = layout.reference.features[name]
        r = np.asarray(profile.counts, dtype=np.int64)
        m[name] = int(r.sum())
        if isinstance(profile, NumericProfile):
            r_all[name] = r
            r_psi[name] = coarse_counts(profile, r)
            index[name] = len(fine)
            o, nb = layout.offsets[name], profile.n_bins
            fine.append(np.arange(o, o + nb, dtype=np.intp))
            fine_starts.append(at)
            coarse_starts.extend(at + int(c) for c in profile.coarse_starts)
            coarse_feature_starts.append(n_coarse)
            n_coarse += len(profile.coarse_starts)
            r_fine.append(r.astype(np.float64))
            r_coarse.append(r_psi[name].astype(np.float64))
            at += nb
        else:
            r_all[name] = r_psi[name] = r[:-1]  # the seen buckets: __unseen__ is a test of its own
            categorical_index[name] = len(seen)
            o = layout.offsets[name]
            seen.append(np.arange(o, o + len(r) - 1, dtype=np.intp))
            seen_starts.append(at_seen)
            r_seen.append(r[:-1].astype(np.float64))
            at_seen += len(r) - 1

    def ints(x: Sequence[int]) -> IntArray:
        return np.asarray(x, dtype=np.intp)

    empty = np.zeros(0)
    r_seen_all = np.concatenate(r_seen) if r_seen else empty
    return _Plan(
        fine=np.concatenate(fine) if fine else ints([]),
        fine_starts=ints(fine_starts),
        coarse_starts=ints(coarse_starts),
        coarse_feature_starts=ints(coarse_feature_starts),
        r_fine=np.concatenate(r_fine) if r_fine else empty,
        r_coarse=np.concatenate(r_coarse) if r_coarse else empty,
        m=m,
        r=r_all,
        r_psi=r_psi,
        numeric_index=index,
        m_numeric=np.array([m[name] for name in index], dtype=np.float64),
        coarse_lengths=np.diff(ints([*coarse_feature_starts, n_coarse])),
        seen=np.concatenate(seen) if seen else ints([]),
        seen_starts=ints(seen_starts),
        r_seen=r_seen_all,
        categorical_index=categorical_index,
        m_categorical=np.array([m[name] for name in categorical_index], dtype=np.float64),
        seen_lengths=np.diff(ints([*seen_starts, at_seen])),
        r_seen_totals=np.add.reduceat(r_seen_all, seen_starts) if r_seen else empty,
    )


def require_calibration(layout: Layout) -> Calibration:
    """The reference's calibration, checked when a monitor starts (a profile without one cannot
    give verdicts: the error says how to add it)."""
    return _calibration(layout)


def _calibration(layout: Layout) -> Calibration:
    cal = layout.reference.calibration
    if cal is None:
        raise ConfigError(
            "reference: the profile has no calibration, so no verdict can be given; add it with "
            "`streamdrift reference calibrate --reference FILE --out NEW` or rebuild the reference"
        )
    return cal


def _effective(n: int, m: int) -> float:
    return n * m / (n + m)


def _bins_test(cal: Calibration, name: str, r: IntArray, w: Any, n: int, m: int) -> _Test | None:
    """The chi-square test on a feature's PSI bins (None: one cell after pooling, no test)."""
    n_e = _effective(n, m)
    cells = pool_cells(r, max(1, round(n_e)))
    k = int(cells.max()) + 1
    if k < 2:
        return None
    rc = np.bincount(cells, weights=r, minlength=k)
    wc = np.bincount(cells, weights=np.asarray(w, dtype=np.float64), minlength=k)
    x2 = float(chi_square_statistic(rc, wc))
    p = cal.p_value(name, "bins", float(chi2_textbook_p(x2, k - 1)), n_e)
    return _Test(name, "bins", p, n, m, dof=k - 1)


def _pearson_together(
    r: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    m: npt.NDArray[np.float64],
    n: npt.NDArray[np.float64],
    n_e: npt.NDArray[np.float64],
    starts: IntArray,
    lengths: IntArray,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """For features whose bins stand end to end (each from ``starts``, ``lengths`` long; ``m`` and
    ``n`` their reference and window sizes): whether ``pool_cells(r, max(1, round(n_e)))`` gives
    every bin a cell of its own (no bin expected below MIN_EXPECTED), and ``chi_square_statistic(r,
    w)``. The same float operations in the same order as one feature at a time (each X² a 1-D sum),
    so the same bits."""
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.repeat(np.maximum(1.0, np.round(n_e)), lengths) * r / np.repeat(m, lengths)
        unpooled = ~np.logical_or.reduceat(expected < MIN_EXPECTED, starts)
        col = r + w
        share_r, share_w = np.repeat(m / (m + n), lengths), np.repeat(n / (m + n), lengths)
        terms = (r - col * share_r) ** 2 / (col * share_r) + (w - col * share_w) ** 2 / (col * share_w)
        terms = np.where(col > 0, terms, 0.0)  # (a bin empty in both rows adds nothing)
    bounds = np.append(starts, len(terms)).tolist()
    return unpooled, np.array([terms[a:b].sum() for a, b in itertools.pairwise(bounds)])


class _NumericTests:
    """The textbook p-values of every numeric feature's tests in one window, computed together.

    Per feature these are exactly what :func:`_bins_test` and the binned KS compute one feature at
    a time (the same float operations in the same order, so the same bits while a window's and the
    reference's sizes multiply to less than 2**53; a unit test checks it), as a few array
    operations instead of some thirty calls a feature. ``bins_ok`` marks the
    features whose PSI bins need no pooling (the usual case in a window of some size): the others
    take :func:`_bins_test`.
    """

    def __init__(self, plan: _Plan, w_fine: npt.NDArray[np.float64], w_coarse: npt.NDArray[np.float64] | None):
        m = plan.m_numeric
        n = np.add.reduceat(w_fine, plan.fine_starts)  # each feature's events (integer sums: exact)
        lengths = plan.coarse_lengths
        self.dof = lengths - 1
        self.bins_ok = np.zeros(len(m), dtype=bool)
        self.bins_p = np.full(len(m), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.n_e = n * m / (n + m)  # (as _effective: the same correctly rounded quotient)
            self.ks_scale = ks_scale(self.n_e)
        if w_coarse is None:  # (PSI off: no bins test)
            return
        unpooled, x2 = _pearson_together(plan.r_coarse, w_coarse, m, n, self.n_e, plan.coarse_feature_starts, lengths)
        self.bins_ok = unpooled & (lengths >= 2) & (n > 0)
        self.bins_p = chi2_textbook_p(x2, self.dof)


class _CategoricalTests:
    """The categorical features' X², PSI and (where no bucket needs pooling) bins test in one
    window, computed together.

    As :class:`_NumericTests`: per feature these are exactly what :func:`chi_square_statistic`,
    :func:`psi` and :func:`_bins_test` compute one feature at a time (the same float operations in
    the same order; a unit test checks the bits), for a feature with events in its seen buckets
    (what a verdict needs). ``bins_ok`` marks those whose seen buckets need no pooling either, so
    that every bucket is a cell and the bins test's X² is ``x2``; the others take :func:`_bins_test`.
    """

    def __init__(self, plan: _Plan, counts: IntArray, epsilon: float, psi_on: bool):
        m = plan.m_categorical
        lengths = plan.seen_lengths
        starts = plan.seen_starts
        r = plan.r_seen
        w = counts[plan.seen].astype(np.float64)
        n = np.add.reduceat(w, starts)  # each feature's events in seen buckets (integer sums: exact)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.n_e = n * m / (n + m)  # (as _effective)
        unpooled, self.x2 = _pearson_together(r, w, plan.r_seen_totals, n, self.n_e, starts, lengths)
        self.bins_ok = unpooled & (lengths >= 2) & (n > 0)
        self.dof = lengths - 1
        self.bins_p = chi2_textbook_p(self.x2, self.dof)
        self.psi = psi_many(r, w, starts, epsilon)[0] if psi_on else None


def _measure(
    layout: Layout, counts: IntArray, cfg: StatisticsConfig, raw: Mapping[str, Sequence[float]] | None
) -> tuple[list[_Test], list[_Verdict]]:
    """Every test and verdict-to-be of one window (nothing decided yet)."""
    plan = _plan(layout)
    cal = _calibration(layout)
    psi_num = ks_num = None
    numeric: _NumericTests | None = None
    if len(plan.fine):
        w_fine = counts[plan.fine].astype(np.float64)
        w_coarse = None
        if cfg.psi.enabled:
            w_coarse = np.add.reduceat(w_fine, plan.coarse_starts)
            psi_num = psi_many(plan.r_coarse, w_coarse, plan.coarse_feature_starts, cfg.psi.epsilon)[0]
        if cfg.ks.enabled:
            ks_num = ks_statistic_many(plan.r_fine, w_fine, plan.fine_starts)
        numeric = _NumericTests(plan, w_fine, w_coarse)
    categorical = None
    if len(plan.seen) and (cfg.psi.enabled or cfg.chi2.enabled):
        categorical = _CategoricalTests(plan, counts, cfg.psi.epsilon, cfg.psi.enabled)
    tests: list[_Test] = []
    verdicts: list[_Verdict] = []

    def add(test: _Test | None) -> int | None:
        if test is None:
            return None
        tests.append(test)
        return len(tests) - 1

    for name in layout.features:
        profile = layout.reference.features[name]
        slot = layout.slot(counts, name)
        nb = profile.n_bins
        m = plan.m[name]
        n_missing = int(slot[nb] + slot[nb + 1])
        if isinstance(profile, NumericProfile):
            w = slot[:nb]
            n = int(w.sum())
            enough = n >= cfg.min_events and m >= cfg.min_events
            j = plan.numeric_index[name]
            if cfg.psi.enabled:
                if enough:
                    assert psi_num is not None and numeric is not None
                    if numeric.bins_ok[j]:
                        p = cal.p_value(name, "bins", float(numeric.bins_p[j]), float(numeric.n_e[j]))
                        t = add(_Test(name, "bins", p, n, m, dof=int(numeric.dof[j])))
                    else:
                        t = add(_bins_test(cal, name, plan.r_psi[name], coarse_counts(profile, w), n, m))
                    value = float(psi_num[j])
                    verdicts.append(_Verdict(name, "psi", "psi_coarse", value, value, t, m, n, n_missing))
                else:
                    verdicts.append(_Verdict(name, "psi", "psi_coarse", None, None, None, m, n, n_missing))
            if cfg.ks.enabled:
                exact = raw is not None and name in raw and profile.values is not None
                method = "ks_exact" if exact else "ks_binned"
                if not enough:
                    verdicts.append(_Verdict(name, "ks", method, None, None, None, m, n, n_missing))
                    continue
                n_e = _effective(n, m)
                if exact:
                    assert raw is not None and profile.values is not None
                    values = np.asarray(raw[name], dtype=np.float64)
                    d, p = ks_exact(profile.values, values[np.isfinite(values)])
                    t = add(_Test(name, "ks_exact", p, n, m))
                else:
                    assert ks_num is not None and numeric is not None
                    d = float(ks_num[j])
                    p_text = float(_sp.kolmogorov(numeric.ks_scale[j] * d))  # (ks_textbook_p(d, n_e))
                    t = add(_Test(name, "ks", cal.p_value(name, "ks", p_text, n_e), n, m))
                verdicts.append(_Verdict(name, "ks", method, d, d, t, m, n, n_missing))
            continue
        assert isinstance(profile, CategoricalProfile)
        w_all = slot[:nb]
        w = w_all[:-1]
        unseen = int(w_all[-1])
        n_seen = int(w.sum())
        n = n_seen + unseen
        r = plan.r[name]
        enough = n_seen >= cfg.min_events and m >= cfg.min_events
        if cfg.psi.enabled or cfg.chi2.enabled:
            assert categorical is not None
            j = plan.categorical_index[name]  # (enough: n_seen >= min_events >= 1, events in seen buckets)
            if enough and categorical.bins_ok[j]:
                p = cal.p_value(name, "bins", float(categorical.bins_p[j]), float(categorical.n_e[j]))
                t = add(_Test(name, "bins", p, n_seen, m, dof=int(categorical.dof[j])))
            else:
                t = add(_bins_test(cal, name, r, w, n_seen, m)) if enough else None
            if cfg.psi.enabled:
                assert categorical.psi is not None
                psi_value = float(categorical.psi[j]) if enough else None
                verdicts.append(_Verdict(name, "psi", "psi_coarse", psi_value, psi_value, t, m, n_seen, n_missing))
            if cfg.chi2.enabled:
                if enough:
                    x2 = float(categorical.x2[j])
                    v = float(cramers_v(x2, n_seen, m))
                    verdicts.append(_Verdict(name, "chi2", "chi2_pooled", x2, v, t, m, n_seen, n_missing))
                else:
                    verdicts.append(_Verdict(name, "chi2", "chi2_pooled", None, None, None, m, n_seen, n_missing))
        if cfg.unseen.enabled and profile.unseen_rate > 0:
            if n >= cfg.min_events and m >= cfg.min_events:
                rate = profile.unseen_rate
                p = unseen_p_value(unseen, n, rate, m)
                t = add(_Test(name, "unseen", p, n, m, unseen_rate=rate))
                share = unseen / n
                verdicts.append(_Verdict(name, "unseen", "unseen_binomial", share, share, t, m, n, n_missing))
            else:
                verdicts.append(_Verdict(name, "unseen", "unseen_binomial", None, None, None, m, n, n_missing))
    return tests, verdicts


def _critical(cal: Calibration, test: _Test, level: float) -> float:
    """The test's statistic at which its calibrated p-value equals ``level``, as an effect:
    X² for ``bins`` (the caller converts), D for KS, the share for ``unseen``."""
    n_e = _effective(test.n, test.m)
    if test.kind == "unseen":

        def p(k: int) -> float:
            return unseen_p_value(k, test.n, test.unseen_rate, test.m)

        lo, hi = 1, test.n + 1  # the smallest count whose p-value is at most the level (p falls with k)
        while lo < hi:
            mid = (lo + hi) // 2
            if p(mid) <= level:
                hi = mid
            else:
                lo = mid + 1
        return lo / test.n
    if test.kind == "ks_exact":
        return float(_sp.kolmogi(level)) / float(ks_scale(n_e))
    p_text = cal.textbook_level(test.feature, test.kind, level, n_e)
    if test.kind == "ks":
        return float(_sp.kolmogi(p_text)) / float(ks_scale(n_e))
    return float(_sp.chdtri(test.dof, p_text))  # bins: X²


def _floors(statistic: str, cfg: StatisticsConfig) -> tuple[float, float]:
    if statistic == "psi":
        return cfg.psi.warning, cfg.psi.critical
    if statistic == "ks":
        return cfg.ks.min_statistic, cfg.ks.critical_statistic
    if statistic == "chi2":
        return cfg.chi2.min_cramers_v, cfg.chi2.critical_cramers_v
    return cfg.unseen.min_share, cfg.unseen.critical_share


def _decide(
    layout: Layout, family: Sequence[tuple[list[_Test], list[_Verdict]]], cfg: StatisticsConfig
) -> list[list[StatisticResult]]:
    """Correct the family's p-values together and decide every verdict of every window in it."""
    cal = _calibration(layout)
    tests = [t for ts, _v in family for t in ts]
    adjusted = adjust([t.p for t in tests], cfg.correction) if tests else []
    rate = cfg.false_alarm_rate
    k = len(tests)
    if cfg.correction == "bonferroni":
        level = rate / max(k, 1)
    elif cfg.correction == "bh":
        level = rate * max(sum(q <= rate for q in adjusted), 1) / max(k, 1)
    else:
        level = rate
    out: list[list[StatisticResult]] = []
    base = 0
    for ts, verdicts in family:
        results: list[StatisticResult] = []
        critical: dict[int, float] = {}
        for v in verdicts:
            if v.test is None:
                results.append(
                    StatisticResult(
                        v.feature,
                        v.statistic,
                        v.method,
                        None,
                        None,
                        None,
                        None,
                        v.m,
                        v.n,
                        v.n_missing,
                        None,
                        INSUFFICIENT,
                    )
                )
                continue
            test = ts[v.test]
            q = adjusted[base + v.test]
            if v.test not in critical:
                critical[v.test] = _critical(cal, test, level)
            crit = critical[v.test]
            if v.statistic == "psi":  # PSI ≈ X² (1/n + 1/m)
                crit = crit / _effective(v.n, v.m)
            elif v.statistic == "chi2":
                crit = float(cramers_v(crit, v.n, v.m))
            floor, high = _floors(v.statistic, cfg)
            assert v.effect is not None
            drift = test.p <= level and v.effect >= floor
            severity = (CRITICAL if v.effect >= high else WARNING) if drift else OK
            results.append(
                StatisticResult(
                    v.feature,
                    v.statistic,
                    v.method,
                    v.value,
                    test.p,
                    q,
                    max(floor, crit),
                    v.m,
                    v.n,
                    v.n_missing,
                    drift,
                    severity,
                    v.effect,
                )
            )
        base += len(ts)
        out.append(results)
    return out


def evaluate_counts(
    layout: Layout,
    counts: IntArray,
    cfg: StatisticsConfig,
    raw: Mapping[str, Sequence[float]] | None = None,
) -> list[StatisticResult]:
    """Every configured verdict of every feature of one window (one family)."""
    return _decide(layout, [_measure(layout, counts, cfg, raw)], cfg)[0]


def evaluate_window(
    layout: Layout,
    windows: Sequence[tuple[IntArray, Mapping[str, Sequence[float]] | None]],
    cfg: StatisticsConfig,
) -> list[list[StatisticResult]]:
    """The verdicts of every segment of one window (``windows``: the segments' counts and raw
    values, in order): with ``statistics.family: window`` the correction spans all of them, with
    ``segment`` each is its own family (as :func:`evaluate_counts`)."""
    measured = [_measure(layout, counts, cfg, raw) for counts, raw in windows]
    if cfg.family == "window":
        return _decide(layout, measured, cfg)
    return [_decide(layout, [one], cfg)[0] for one in measured]


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with millisecond precision.

    >>> iso_ms(0)
    '1970-01-01T00:00:00.000Z'
    """
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_ms(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def window_records(
    results: Sequence[StatisticResult],
    *,
    monitor: str,
    segment: Mapping[str, str],
    window_start_ms: int,
    window_end_ms: int,
    window_index: int,
    fingerprint: str,
    model_name: str | None = None,
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """Window statistic records (docs/architecture.md "Record schema"), in a stable field order.

    ``window_index``: a time window's number (its first pane, :class:`detectors.engine.WindowSpec`),
    a count window's ordinal in its segment (0, 1, ...): unique where the times tie.

    ``model_name`` / ``model_version``: the registered model version the reference belongs to
    (a ``models:/`` reference), None for a reference file.
    """
    seg = dict(sorted(segment.items()))
    start, end = iso_ms(window_start_ms), iso_ms(window_end_ms)
    out = []
    for r in results:
        rec = {
            "monitor": monitor,
            "segment": seg,
            "feature": r.feature,
            "statistic": r.statistic,
            "method": r.method,
            "value": r.value,
            "effect": r.effect,
            "p_value": r.p_value,
            "p_value_adjusted": r.p_value_adjusted,
            "threshold": r.threshold,
            "drift": r.drift,
            "severity": r.severity,
            "window_start": start,
            "window_end": end,
            "window_index": window_index,
            "n_reference": r.n_reference,
            "n_window": r.n_window,
            "n_missing": r.n_missing,
            "reference_fingerprint": fingerprint,
            "model_name": model_name,
            "model_version": model_version,
        }
        out.append(rec)
    return out


def alert_id(record: Mapping[str, Any]) -> str:
    """Idempotent key: a replay of the same window re-sends the same id.

    A record of a model version also keys on the model (two versions may share one profile, and a
    window cut by a version switch is reported once for each); without one the key is as before.
    """
    parts = [
        record["monitor"],
        dict(sorted(dict(record["segment"]).items())),
        record["feature"],
        record["statistic"],
        record["window_start"],
        record["window_end"],
        record["reference_fingerprint"],
    ]
    if record.get("model_name") is not None:
        parts += [record["model_name"], record.get("model_version")]
    if record.get("window_index") is not None:  # count windows with tied times differ only here
        parts.append(record["window_index"])
    key = _KEY_JSON.encode(parts)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` made once (a window's records each take a key)
_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def make_alert(record: Mapping[str, Any], detected_at_ms: int) -> dict[str, Any]:
    """An alert is a drifted record plus its ``alert_id`` and ``detected_at``."""
    alert = dict(record)
    alert["alert_id"] = alert_id(record)
    alert["detected_at"] = iso_ms(detected_at_ms)
    return alert


@dataclass(frozen=True)
class FlagRates:
    """How often windows of the overall segment were flagged (the reference check's summary)."""

    windows: int
    flagged: int
    per_feature: dict[str, tuple[int, int]]  # feature -> (verdicts with drift, verdicts)


def flag_rates(records: Sequence[Mapping[str, Any]]) -> FlagRates:
    """Windows of the overall segment with any drift verdict, and each feature's flagged verdicts."""
    windows: dict[tuple[str, str], bool] = {}
    per: dict[str, list[int]] = {}
    for r in records:
        if r["statistic"] not in WINDOW_STATISTICS or dict(r["segment"]):
            continue
        key = (r["window_start"], r["window_end"])
        windows[key] = windows.get(key, False) or bool(r["drift"])
        got = per.setdefault(r["feature"], [0, 0])
        if r["drift"] is not None:
            got[1] += 1
            got[0] += bool(r["drift"])
    return FlagRates(len(windows), sum(windows.values()), {f: (a, b) for f, (a, b) in per.items()})


def segment_label(segment: Mapping[str, str]) -> str:
    """Prometheus label value of a segment: ``k=v,k2=v2`` sorted, or ``__all__``."""
    if not segment:
        return "__all__"
    return ",".join(f"{k}={v}" for k, v in sorted(segment.items()))
