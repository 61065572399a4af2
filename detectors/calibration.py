"""Calibrated verdicts: what a window of ``n`` events looks like when nothing has drifted.

Textbook p-values (Pearson's chi-square, the Kolmogorov distribution for KS) are asymptotic.
In a window of 100 events, or for a feature with a few integer values, or a long-tail
categorical with expected counts far below one per bucket, they are off, in different
directions for different features: the binned KS of a feature with ten values is very
discrete and its textbook p-values far too large (no power); sparse buckets make Pearson's
X² heavy-tailed. And the rows of a reference are often not independent (sorted by time, by
region, by customer), so windows of real data vary more than independent draws would. The
calibration measures both, once, from the reference itself, and stores the result in the
profile (it is part of the fingerprint). Effect sizes (PSI, D, Cramér's V) are not
calibrated: they are the floors of :mod:`detectors.evaluate`.

Null samples (the bootstrap)
    For every feature and every size ``n`` of :data:`SIZES`, :data:`REPLICATES` windows are drawn
    from the reference's own bin shares (``Multinomial(n, p)``), and each test statistic is
    computed against the reference exactly as for a real window. Sizes are *effective* sizes: a
    window of ``n`` events against a reference of ``m`` varies like a window of
    ``n_e = n m / (n + m)`` against the reference's exact shares (the textbook families scale
    with ``1/n + 1/m``), so the lookup at run time is at ``n_e`` and the reference's own noise
    is accounted for.

The correction
    Each null statistic goes through its textbook family to a z-score, ``z = Φ⁻¹(1 - p)``. Were
    the textbook exact at this size, ``z`` would be standard normal. A straight line
    ``z ≈ μ + σ Z`` is fitted to the upper tail of the null z-scores, the quantiles :data:`TAIL`
    (0.90 to 0.998; generalised least squares with the sample quantiles' covariance), and
    stored; at run time a window's calibrated p-value is ``Φ̄((z - μ) / σ)``, with the line of
    the neighbouring size that is higher at the tail (the fewer alarms; the nearest size outside
    the grid, where the textbook is good). The line extends the bootstrap's tail beyond its
    resolution (a family of 32 tests at a 1 % page rate tests each near 3e-4,
    :data:`EXTRAPOLATE_AT`). Where the line's value there is within two of its standard errors
    of the textbook's, the textbook is kept (the bootstrap cannot tell them apart, and its noise
    would only add error); otherwise the line is raised by one standard error, so that the
    fit's own noise errs towards fewer alarms. The benchmark measures the resulting page rate
    on null streams. (PSI itself is not a test statistic here: its floored logarithms jump when
    a bin of a small window is empty, a tail no smooth line extends; PSI's verdict reads the
    chi-square test on the same bins, see :mod:`detectors.evaluate`.)

Chunks of the reference, in its order
    The bootstrap assumes independent events. Consecutive rows of the reference are cut into
    chunks of ``n`` rows (sizes with at least :data:`MIN_CHUNKS` chunks), each chunk's test
    statistics are computed as a window's would be, and a line is fitted to the chunks' z-scores
    as to the bootstrap's (on the quantiles of :data:`CHUNK_TAIL` that at least three chunks
    exceed). If the rows are independent the two lines agree; if they are not (a data set
    sorted by region, by customer, by time of day), normal windows of the reference vary more
    than independent draws, and the chunks' line lies above. Per size the line that is higher
    at the tail (at :data:`EXTRAPOLATE_AT`, each raised by one standard error) is kept, provided
    the chunks' z-scores are clearly larger
    than the bootstrap's (a one-sided Mann–Whitney test at 1e-3: independent rows should not
    switch to the noisier line by chance). This is the idea of chunk-based thresholds (a
    statistic is judged against how it varies between normal windows of the reference, as
    NannyML's are), kept beside the bootstrap, which gets the small-sample shape more
    precisely than a few dozen chunks could. Sizes beyond the reference's twentieth keep the
    line of the largest size that had enough chunks, when that line came from the chunks (an
    extrapolation: ``streamdrift backfill --reference-check`` shows how the reference's own
    windows fare).

>>> import numpy as np
>>> from detectors.reference import ReferenceProfile
>>> rng = np.random.default_rng(3)
>>> ref = ReferenceProfile.build(
...     {"x": rng.normal(size=20_000), "k": rng.poisson(3, 20_000)}, calibration_replicates=2_000)
>>> cal = ref.calibration
>>> mu, sigma = cal.tail("k", "ks", 1_000)   # ten-odd integer values: textbook KS is far too timid
>>> mu < -0.4
True
>>> mu, sigma = cal.tail("x", "bins", 1_000)  # ten PSI bins of a continuous feature: close to textbook
>>> abs(mu) < 0.3 and abs(sigma - 1) < 0.2
True
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special as _sp
from scipy import stats as _st

from detectors.exceptions import ReferenceFormatError

#: effective window sizes calibrated (``n m / (n + m)``); outside them the nearest is used
SIZES: tuple[int, ...] = (30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
#: null windows drawn per feature and size
REPLICATES = 10_000
#: upper quantiles of the null z-scores the line is fitted to
TAIL: tuple[float, ...] = (0.90, 0.95, 0.98, 0.99, 0.995, 0.998)
#: a size is checked against chunks of the reference only when it has at least this many
MIN_CHUNKS = 20
#: quantiles of the chunks' z-scores their line may be fitted to (those at least 3 chunks exceed)
CHUNK_TAIL: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
#: lines are compared, and their standard errors taken, at this tail probability (a family of
#: about 32 tests at a 1 % page rate tests each at 3e-4)
EXTRAPOLATE_AT = 3e-4
#: the chunks' line replaces the bootstrap's only when their z-scores are larger at this level
CHUNKS_SIGNIFICANCE = 1e-3
#: the fitted slope is kept within these bounds (a degenerate, very discrete null gives 0)
SIGMA_RANGE = (0.25, 4.0)
#: a reference treated as exact (its shares times this) when drawing null windows
_EXACT = 1e12

FloatArray = npt.NDArray[np.float64]


# -- textbook families --------------------------------------------------------------------------
def z_of_p(p: float | FloatArray) -> Any:
    """``Φ⁻¹(1 - p)``: +inf for p = 0, -inf for p = 1."""
    if isinstance(p, float):  # a window's verdicts make thousands of scalar calls: no array round trip
        return -float(_sp.ndtri(min(max(p, 0.0), 1.0) if p == p else p))
    return -_sp.ndtri(np.clip(p, 0.0, 1.0))


#: ``z_of_p(EXTRAPOLATE_AT)``, where tail lines are compared
_Z_AT = float(z_of_p(EXTRAPOLATE_AT))


def ks_scale(en: Any) -> Any:
    """Stephens' small-sample factor: ``sqrt(n_e) D (1 + ...)`` follows the Kolmogorov distribution
    (of a number or, element by element, of an array)."""
    root = np.sqrt(en) if isinstance(en, np.ndarray) else math.sqrt(en)
    return root + 0.12 + 0.11 / root


def ks_textbook_p(d: Any, en: float) -> Any:
    """The two-sample KS p-value from the Kolmogorov distribution with Stephens' correction."""
    return _sp.kolmogorov(ks_scale(en) * np.asarray(d, dtype=np.float64))


def chi2_textbook_p(x2: Any, dof: Any) -> Any:
    return _sp.chdtrc(dof, np.maximum(np.asarray(x2, dtype=np.float64), 0.0))


# -- stored calibration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureCalibration:
    """One feature's calibration: per test and size, the line ``(μ, σ)`` and where it came from."""

    tails: Mapping[str, tuple[tuple[float, float], ...]]  # test -> (mu, sigma) per size
    sources: Mapping[str, tuple[str, ...]]  # test -> "bootstrap" or "chunks" per size

    def to_dict(self) -> dict[str, Any]:
        return {
            "tails": {k: [list(t) for t in v] for k, v in sorted(self.tails.items())},
            "sources": {k: list(v) for k, v in sorted(self.sources.items())},
        }

    @property
    def chunked(self) -> list[str]:
        """The tests whose line comes from the reference's chunks at some size (its rows vary more
        than independent ones)."""
        return sorted(k for k, v in self.sources.items() if "chunks" in v)


@dataclass(frozen=True)
class Calibration:
    """Null-distribution corrections of every feature of a reference (see the module docstring)."""

    sizes: tuple[int, ...]
    replicates: int
    seed: int
    method: str  # "bootstrap" or "bootstrap+chunks"
    features: Mapping[str, FeatureCalibration]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "replicates": self.replicates,
            "seed": self.seed,
            "method": self.method,
            "tail_quantiles": list(TAIL),
            "features": {name: f.to_dict() for name, f in self.features.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        try:
            sizes = tuple(int(v) for v in doc["sizes"])
            features = {}
            for name, f in doc["features"].items():
                tails = {str(k): tuple((float(a), float(b)) for a, b in v) for k, v in f["tails"].items()}
                sources = {str(k): tuple(str(x) for x in v) for k, v in f["sources"].items()}
                if set(sources) != set(tails) or any(
                    len(v) != len(sizes) for v in [*tails.values(), *sources.values()]
                ):
                    raise ReferenceFormatError(f"calibration of feature {name!r}: not one entry per test and size")
                features[str(name)] = FeatureCalibration(tails, sources)
            return cls(sizes, int(doc["replicates"]), int(doc["seed"]), str(doc["method"]), features)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ReferenceFormatError):
                raise
            raise ReferenceFormatError(f"calibration is malformed: {type(exc).__name__}: {exc}") from exc

    def subset(self, names: Sequence[str]) -> Calibration:
        """The calibration of some of the features (for a profile restricted to them)."""
        return Calibration(self.sizes, self.replicates, self.seed, self.method, {n: self.features[n] for n in names})

    def chunk_spread(self, feature: str) -> float:
        """How much more the reference's own windows vary than independent rows, where the chunks'
        lines are in use: the largest ``(z_chunks / z_textbook)²`` at :data:`EXTRAPOLATE_AT` (a
        window of ``n`` consecutive rows varies about like ``n / spread`` independent ones); 1.0
        where the chunks are not in use."""
        f = self.features[feature]
        x = float(z_of_p(EXTRAPOLATE_AT))
        spread = 1.0
        for stat, rows in f.tails.items():
            for (mu, sigma), source in zip(rows, f.sources[stat], strict=True):
                if source == "chunks":
                    spread = max(spread, ((mu + sigma * x) / x) ** 2)
        return spread

    def tail(self, feature: str, statistic: str, n_effective: float) -> tuple[float, float]:
        """``(μ, σ)`` of ``statistic`` for ``feature`` at an effective window size: between two
        calibrated sizes, the line of whichever of the two is higher at the tail (the fewer alarms),
        not a blend: the statistics are discrete at small sizes, and a blend of two lattices' lines
        fits neither; outside the sizes, the nearest size's line."""
        rows = self.features[feature].tails[statistic]
        sizes = self.sizes
        i = bisect.bisect_left(sizes, n_effective)
        if i < len(sizes) and sizes[i] == n_effective:
            return rows[i]
        if i == 0:
            return rows[0]
        if i == len(sizes):
            return rows[-1]
        low, high = rows[i - 1], rows[i]
        return low if low[0] + low[1] * _Z_AT >= high[0] + high[1] * _Z_AT else high

    def p_value(self, feature: str, statistic: str, textbook_p: float, n_effective: float) -> float:
        """The calibrated p-value of a statistic whose textbook p-value is ``textbook_p``."""
        mu, sigma = self.tail(feature, statistic, n_effective)
        return float(_sp.ndtr(-(float(z_of_p(textbook_p)) - mu) / sigma))

    def textbook_level(self, feature: str, statistic: str, level: float, n_effective: float) -> float:
        """The textbook p-value at which the calibrated p-value equals ``level`` (to invert the
        textbook family into a critical value of the statistic)."""
        mu, sigma = self.tail(feature, statistic, n_effective)
        return float(_sp.ndtr(-(mu + sigma * float(z_of_p(level)))))


# -- building it ------------------------------------------------------------------------------------
def fit_line(z: FloatArray, quantiles: Sequence[float]) -> tuple[float, float, float] | None:
    """The line ``z_q = μ + σ Φ⁻¹(q)`` through the ``quantiles`` of ``z``, and the standard error of
    its value at :data:`EXTRAPOLATE_AT`; None without two finite quantiles.

    Generalised least squares with the sample quantiles' covariance (``q_i (1 - q_j) / (N f_i
    f_j)`` for ``q_i <= q_j``, ``f`` the line's density at each quantile), so the scarce far-tail
    quantiles weigh as much as they are worth. The ``higher`` quantile of discrete data errs
    towards fewer alarms. The slope is kept within :data:`SIGMA_RANGE`.
    """
    qs = np.asarray(quantiles, dtype=np.float64)
    zq = np.quantile(z, qs, method="higher")
    finite = np.isfinite(zq)
    if finite.sum() < 2:
        return None
    qs, y = qs[finite], zq[finite]
    x = _sp.ndtri(qs)
    slope0 = float(np.clip(np.polyfit(x, y, 1)[0], *SIGMA_RANGE)) if len(x) > 1 else 1.0
    f = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) / slope0
    lo, hi = np.minimum.outer(qs, qs), np.maximum.outer(qs, qs)
    cov = lo * (1.0 - hi) / (len(z) * np.outer(f, f))
    design = np.stack([np.ones_like(x), x], axis=1)
    inv = np.linalg.inv(cov)
    info = design.T @ inv @ design
    beta_cov = np.linalg.inv(info)
    mu, sigma = beta_cov @ design.T @ inv @ y
    sigma = float(np.clip(sigma, *SIGMA_RANGE))
    mu = float(np.average(y - sigma * x, weights=inv.sum(axis=1)))  # refit the level with the kept slope
    at = np.array([1.0, float(z_of_p(EXTRAPOLATE_AT))])
    se = float(math.sqrt(max(float(at @ beta_cov @ at), 0.0)))
    return mu, sigma, se


def fit_tail(z: FloatArray) -> tuple[float, float, float]:
    """The bootstrap's line ``(μ, σ, se)`` through the upper quantiles :data:`TAIL` of null
    z-scores (:func:`fit_line`); a null with no finite tail is the textbook's ``(0, 1, 0)``.

    >>> rng = np.random.default_rng(0)
    >>> mu, sigma, se = fit_tail(2.0 + 1.5 * rng.standard_normal(200_000))
    >>> round(mu, 1), round(sigma, 1), se < 0.05
    (2.0, 1.5, True)
    """
    got = fit_line(z, TAIL)
    return (0.0, 1.0, 0.0) if got is None else got


def _round(x: float) -> float:
    """Six significant digits: stable, compact JSON (far below the fit's own noise)."""
    return float(f"{x:.6g}")


def _rng(seed: int, name: str) -> np.random.Generator:
    """A feature's own stream, so adding or removing a feature leaves the others unchanged."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class FeatureNull:
    """What the calibration of one feature needs: its reference bins and how its statistics are
    computed from a matrix of window counts (one window per row)."""

    name: str
    shares: FloatArray  # reference share of each bin the statistics read (sums to 1)
    statistics: Mapping[str, Any]  # name -> f(counts matrix, n) -> textbook p-values (one per row)


def calibrate(
    nulls: Sequence[FeatureNull],
    *,
    chunk_bins: Mapping[str, npt.NDArray[np.int64]] | None = None,
    sizes: Sequence[int] = SIZES,
    replicates: int = REPLICATES,
    seed: int = 0,
) -> Calibration:
    """The calibration of a reference's features.

    ``chunk_bins`` (optional): per feature, the bin (index into its ``shares``) of every
    reference row in the reference's order, missing values left out: the chunks come from it.
    Without it the bootstrap alone calibrates.
    """
    if replicates < 500:
        raise ValueError(
            f"calibration replicates must be at least 500 (got {replicates}): the fit reads the 99.8% point"
        )
    out: dict[str, FeatureCalibration] = {}
    for null in nulls:
        rng = _rng(seed, null.name)
        rows = None if chunk_bins is None else chunk_bins.get(null.name)
        tails: dict[str, list[tuple[float, float]]] = {s: [] for s in null.statistics}
        sources: dict[str, list[str]] = {s: [] for s in null.statistics}
        for n in sizes:
            counts = rng.multinomial(n, null.shares, size=replicates).astype(np.float64)
            chunks = _chunk_counts(rows, n, len(null.shares)) if rows is not None else None
            for stat, textbook in null.statistics.items():
                z_boot = z_of_p(textbook(counts, n))
                line, source = _bootstrap_line(fit_tail(z_boot))
                if chunks is not None:
                    z_chunks = z_of_p(textbook(chunks, n))
                    chunked = fit_chunks(z_chunks)
                    if chunked is not None:
                        shifted = (chunked[0] + chunked[2], chunked[1])
                        if _at_tail(shifted) > _at_tail(line) and _larger(z_chunks, z_boot):
                            line, source = shifted, "chunks"
                elif sources[stat] and sources[stat][-1] == "chunks":
                    line, source = tails[stat][-1], "chunks"  # too few chunks: keep the largest size's
                line = (_round(line[0]), _round(line[1]))
                tails[stat].append(line)
                sources[stat].append(source)
        out[null.name] = FeatureCalibration(
            {k: tuple(v) for k, v in tails.items()}, {k: tuple(v) for k, v in sources.items()}
        )
    method = "bootstrap+chunks" if chunk_bins is not None else "bootstrap"
    return Calibration(tuple(int(s) for s in sizes), int(replicates), int(seed), method, out)


def _at_tail(line: tuple[float, float]) -> float:
    return line[0] + line[1] * float(z_of_p(EXTRAPOLATE_AT))


def _bootstrap_line(fit: tuple[float, float, float]) -> tuple[tuple[float, float], str]:
    """The textbook's line where the bootstrap cannot tell it from the textbook at the tail (within
    two standard errors of the fit); else the fit, raised by one standard error (erring towards
    fewer alarms, by about a fifth of the tail probability)."""
    mu, sigma, se = fit
    if abs(_at_tail((mu, sigma)) - float(z_of_p(EXTRAPOLATE_AT))) <= 2.0 * se:
        return (0.0, 1.0), "textbook"
    return (mu + se, sigma), "bootstrap"


def _larger(z_chunks: FloatArray, z_boot: FloatArray) -> bool:
    """Whether the chunks' z-scores are clearly larger than the bootstrap's (one-sided Mann–Whitney
    test at :data:`CHUNKS_SIGNIFICANCE`): the reference's own windows vary more than independent
    draws, not by the chance of a few dozen chunks."""
    big = 1e6  # ranks only: infinities as large finite values
    a = np.nan_to_num(z_chunks, posinf=big, neginf=-big)
    b = np.nan_to_num(z_boot, posinf=big, neginf=-big)
    return bool(_st.mannwhitneyu(a, b, alternative="greater").pvalue < CHUNKS_SIGNIFICANCE)


def _chunk_counts(rows: npt.NDArray[np.int64], n: int, bins: int) -> FloatArray | None:
    """Bin counts of the consecutive chunks of ``n`` rows (None: fewer than MIN_CHUNKS of them)."""
    chunks = len(rows) // n
    if chunks < MIN_CHUNKS:
        return None
    ids = np.repeat(np.arange(chunks), n) * bins + rows[: chunks * n]
    return np.bincount(ids, minlength=chunks * bins).reshape(chunks, bins).astype(np.float64)


def fit_chunks(z: FloatArray) -> tuple[float, float, float] | None:
    """The chunks' line ``(μ, σ, se)`` (:func:`fit_line` on the :data:`CHUNK_TAIL` quantiles that at
    least three chunks exceed); None with fewer than two such quantiles.

    >>> rng = np.random.default_rng(0)
    >>> mu, sigma, _se = fit_chunks(1.0 + 2.0 * rng.standard_normal(40_000))
    >>> round(mu, 1), round(sigma, 1)
    (1.0, 2.0)
    """
    qs = [q for q in CHUNK_TAIL if (1.0 - q) * len(z) >= 3]
    if len(qs) < 2:
        return None
    return fit_line(z, qs)


# -- the statistics of one feature, as the evaluation computes them ----------------------------------
def bins_test(reference_bins: Any, window: Any, n: int) -> Any:
    """The textbook p-value of the chi-square homogeneity test on a feature's PSI bins (one window
    per row of ``window``), its bins pooled for a window of ``n`` (:func:`pool_cells`); 1 where
    pooling leaves one cell (no test at this size). It is PSI's test: for small differences
    ``PSI ≈ X² (1/n + 1/m)``, and unlike PSI's floored logarithms X² has no jump when a bin of a
    small window is empty."""
    from detectors.statistics import chi_square_statistic, pool_cells

    r = np.asarray(reference_bins, dtype=np.float64)
    cells = pool_cells(r, n)
    k = int(cells.max()) + 1
    w = np.asarray(window, dtype=np.float64)
    if k < 2:
        return np.ones(w.shape[:-1]) if w.ndim > 1 else 1.0
    onehot = np.zeros((len(cells), k))
    onehot[np.arange(len(cells)), cells] = 1.0
    return chi2_textbook_p(chi_square_statistic(r @ onehot, w @ onehot), k - 1)


def numeric_null(name: str, fine_counts: Sequence[int], coarse_starts: Sequence[int]) -> FeatureNull:
    """A numeric feature's null: the chi-square test on its coarse (PSI) bins and KS on its fine
    bins, as :func:`detectors.evaluate.evaluate_counts` computes them."""
    from detectors.statistics import ks_statistic_many

    fine = np.asarray(fine_counts, dtype=np.float64)
    shares = fine / fine.sum()
    starts = np.asarray(coarse_starts, dtype=np.intp)
    ref_fine = shares * _EXACT
    ref_coarse = np.add.reduceat(ref_fine, starts)
    one = np.zeros(1, dtype=np.intp)

    def bins_p(w: FloatArray, n: int) -> Any:
        return bins_test(ref_coarse, np.add.reduceat(w, starts, axis=1), n)

    def ks_p(w: FloatArray, n: int) -> Any:
        return ks_textbook_p(ks_statistic_many(ref_fine, w, one)[:, 0], float(n))

    return FeatureNull(name, shares, {"bins": bins_p, "ks": ks_p})


def categorical_null(name: str, seen_counts: Sequence[int]) -> FeatureNull:
    """A categorical feature's null over its seen buckets (categories and ``__other__``; the unseen
    share is a test of its own): the chi-square test on the buckets, pooled."""
    counts = np.asarray(seen_counts, dtype=np.float64)
    shares = counts / counts.sum()
    ref = shares * _EXACT

    def bins_p(w: FloatArray, n: int) -> Any:
        return bins_test(ref, w, n)

    return FeatureNull(name, shares, {"bins": bins_p})
