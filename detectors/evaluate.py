"""Evaluate one window's histogram against the reference: statistics, correction, verdicts, records.

Verdicts
    * PSI: ``warning`` when PSI >= ``psi.warning``, ``critical`` when PSI >= ``psi.critical``.
      Its chi-square p-value is reported but does not decide the verdict (it is not part
      of the multiple-testing family).
    * KS and chi-square: drift when the *adjusted* p-value (Bonferroni or Benjamini–Hochberg
      across every KS and chi-square test of the window and segment) is below ``alpha``;
      ``critical`` if the effect is also large (KS D >= ``ks.critical_statistic``, Cramér's V
      >= ``chi2.critical_cramers_v``), else ``warning``.
    * fewer than ``min_events`` valid values in the window (or the reference) give no verdict:
      ``value``, ``p_value`` and ``drift`` are ``None`` and ``severity`` is
      ``insufficient_data``. Undefined is never reported as 0.

Records follow the one schema of DESIGN.md ("Records"), plus ``p_value_adjusted`` and ``method``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import StatisticsConfig
from detectors.histogram import Layout, coarse_counts
from detectors.reference import CategoricalProfile, IntArray, NumericProfile
from detectors.statistics import adjust, chi_square, ks_exact, ks_p_value, ks_statistic_many, psi, psi_many

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
    ("p_value", "float64"),
    ("p_value_adjusted", "float64"),
    ("threshold", "float64"),
    ("drift", "bool"),
    ("severity", "string"),
    ("window_start", "string"),
    ("window_end", "string"),
    ("n_reference", "int64"),
    ("n_window", "int64"),
    ("n_missing", "int64"),
    ("reference_fingerprint", "string"),
)
RECORD_FIELDS = tuple(name for name, _type in RECORD_TYPES)


@dataclass(frozen=True)
class StatisticResult:
    """One statistic of one feature in one window, and how it was produced."""

    feature: str
    statistic: str  # psi | ks | chi2
    method: str  # psi_coarse | ks_binned | ks_exact | chi2_homogeneity
    value: float | None
    p_value: float | None
    p_value_adjusted: float | None
    threshold: float
    n_reference: int
    n_window: int
    n_missing: int
    drift: bool | None
    severity: str


def _stat_list(profile: NumericProfile | CategoricalProfile, cfg: StatisticsConfig) -> list[str]:
    out = []
    if cfg.psi.enabled:
        out.append("psi")
    if isinstance(profile, NumericProfile):
        if cfg.ks.enabled:
            out.append("ks")
    elif cfg.chi2.enabled:
        out.append("chi2")
    return out


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
    r: dict[str, IntArray]  # reference bin counts of every feature
    numeric_index: dict[str, int]  # numeric feature -> its position among the numeric features


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
    index: dict[str, int] = {}
    at = n_coarse = 0
    for name in layout.features:
        profile = layout.reference.features[name]
        r = np.asarray(profile.counts, dtype=np.int64)
        r_all[name], m[name] = r, int(r.sum())
        if isinstance(profile, NumericProfile):
            index[name] = len(fine)
            o, nb = layout.offsets[name], profile.n_bins
            fine.append(np.arange(o, o + nb, dtype=np.intp))
            fine_starts.append(at)
            coarse_starts.extend(at + int(c) for c in profile.coarse_starts)
            coarse_feature_starts.append(n_coarse)
            n_coarse += len(profile.coarse_starts)
            r_fine.append(r.astype(np.float64))
            r_coarse.append(coarse_counts(profile, r).astype(np.float64))
            at += nb

    def ints(x: Sequence[int]) -> IntArray:
        return np.asarray(x, dtype=np.intp)

    empty = np.zeros(0)
    return _Plan(
        fine=np.concatenate(fine) if fine else ints([]),
        fine_starts=ints(fine_starts),
        coarse_starts=ints(coarse_starts),
        coarse_feature_starts=ints(coarse_feature_starts),
        r_fine=np.concatenate(r_fine) if r_fine else empty,
        r_coarse=np.concatenate(r_coarse) if r_coarse else empty,
        m=m,
        r=r_all,
        numeric_index=index,
    )


def evaluate_counts(
    layout: Layout,
    counts: IntArray,
    cfg: StatisticsConfig,
    raw: Mapping[str, Sequence[float]] | None = None,
) -> list[StatisticResult]:
    """Every configured statistic of every feature, corrected across the window's tests.

    The numeric features' PSI and binned KS statistics are computed together (see
    :class:`_Plan`); the values are those of :func:`psi` and :func:`ks_binned` on each feature.
    """
    plan = _plan(layout)
    psi_num = ks_num = None
    if len(plan.fine):
        w_fine = counts[plan.fine].astype(np.float64)
        if cfg.psi.enabled:
            w_coarse = np.add.reduceat(w_fine, plan.coarse_starts)
            psi_num = psi_many(plan.r_coarse, w_coarse, plan.coarse_feature_starts, cfg.psi.epsilon)
        if cfg.ks.enabled:
            ks_num = ks_statistic_many(plan.r_fine, w_fine, plan.fine_starts)
    # (feature, statistic, method, value, p, threshold, m, n, n_missing, tested) of every result
    rows: list[tuple[str, str, str, float | None, float | None, float, int, int, int, bool]] = []
    for name in layout.features:
        profile = layout.reference.features[name]
        slot = layout.slot(counts, name)
        nb = profile.n_bins
        w = slot[:nb]
        r = plan.r[name]
        n, m = int(w.sum()), plan.m[name]
        n_missing = int(slot[nb] + slot[nb + 1])
        enough = n >= cfg.min_events and m >= cfg.min_events
        j = plan.numeric_index.get(name)
        for stat in _stat_list(profile, cfg):
            threshold = {"psi": cfg.psi.warning, "ks": cfg.ks.alpha, "chi2": cfg.chi2.alpha}[stat]
            method = {"psi": "psi_coarse", "ks": "ks_binned", "chi2": "chi2_homogeneity"}[stat]
            exact = raw is not None and name in raw and getattr(profile, "values", None) is not None
            if stat == "ks" and exact:
                method = "ks_exact"
            if not enough:
                rows.append((name, stat, method, None, None, threshold, m, n, n_missing, False))
                continue
            value: float
            p: float
            if stat == "psi":
                if j is not None and psi_num is not None:
                    value, p = float(psi_num[0][j]), float(psi_num[1][j])
                else:
                    value, p = psi(r, w, cfg.psi.epsilon)
            elif stat == "ks":
                if method == "ks_exact":
                    assert raw is not None and isinstance(profile, NumericProfile) and profile.values is not None
                    window_values = np.asarray(raw[name], dtype=np.float64)
                    window_values = window_values[np.isfinite(window_values)]
                    value, p = ks_exact(profile.values, window_values)
                else:
                    assert j is not None and ks_num is not None
                    value = float(ks_num[j])
                    p = ks_p_value(value, n, m)
            else:
                c = chi_square(r, w)
                value, p = c.statistic, c.p_value
            rows.append((name, stat, method, value, p, threshold, m, n, n_missing, stat != "psi"))
    # multiple testing across the window's KS and chi-square tests
    tested = [i for i, row in enumerate(rows) if row[9]]
    adjusted = dict(zip(tested, adjust([rows[i][4] or 0.0 for i in tested], cfg.correction), strict=True))
    results: list[StatisticResult] = []
    for i, (name, stat, method, val, pv, threshold, m, n, n_missing, _tested) in enumerate(rows):
        q = adjusted.get(i)
        drift: bool | None
        if val is None:
            drift, sev = None, INSUFFICIENT
        elif stat == "psi":
            sev = CRITICAL if val >= cfg.psi.critical else WARNING if val >= cfg.psi.warning else OK
            drift = sev != OK
        else:
            assert q is not None
            drift, sev = q < threshold, OK
            if drift:
                if stat == "ks":
                    big = val >= cfg.ks.critical_statistic
                else:
                    big = float(np.sqrt(val / (m + n))) >= cfg.chi2.critical_cramers_v
                sev = CRITICAL if big else WARNING
        results.append(StatisticResult(name, stat, method, val, pv, q, threshold, m, n, n_missing, drift, sev))
    return results


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
    fingerprint: str,
) -> list[dict[str, Any]]:
    """Window statistic records (DESIGN.md "Records"), in a stable field order."""
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
            "p_value": r.p_value,
            "p_value_adjusted": r.p_value_adjusted,
            "threshold": r.threshold,
            "drift": r.drift,
            "severity": r.severity,
            "window_start": start,
            "window_end": end,
            "n_reference": r.n_reference,
            "n_window": r.n_window,
            "n_missing": r.n_missing,
            "reference_fingerprint": fingerprint,
        }
        out.append(rec)
    return out


def alert_id(record: Mapping[str, Any]) -> str:
    """Idempotent key: a replay of the same window re-sends the same id."""
    key = json.dumps(
        [
            record["monitor"],
            dict(sorted(dict(record["segment"]).items())),
            record["feature"],
            record["statistic"],
            record["window_start"],
            record["window_end"],
            record["reference_fingerprint"],
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def make_alert(record: Mapping[str, Any], detected_at_ms: int) -> dict[str, Any]:
    """An alert is a drifted record plus its ``alert_id`` and ``detected_at``."""
    alert = dict(record)
    alert["alert_id"] = alert_id(record)
    alert["detected_at"] = iso_ms(detected_at_ms)
    return alert


def segment_label(segment: Mapping[str, str]) -> str:
    """Prometheus label value of a segment: ``k=v,k2=v2`` sorted, or ``__all__``."""
    if not segment:
        return "__all__"
    return ",".join(f"{k}={v}" for k, v in sorted(segment.items()))
