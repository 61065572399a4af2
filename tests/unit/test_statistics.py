"""PSI, binned KS, chi-square and the multiple-testing corrections against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detectors.histogram import coarse_counts
from detectors.reference import numeric_profile
from detectors.statistics import (
    adjust,
    benjamini_hochberg,
    bonferroni,
    chi_square,
    ks_binned,
    ks_exact,
    ks_p_value,
    psi,
)

pytestmark = pytest.mark.unit


# -- PSI ---------------------------------------------------------------------------------
def test_psi_hand_worked_example() -> None:
    # reference r = [50, 30, 20] (m = 100) -> p_r = [0.5, 0.3, 0.2]
    # window    w = [30, 30, 40] (n = 100) -> p_w = [0.3, 0.3, 0.4]
    # terms (p_w - p_r) * ln(p_w / p_r):
    #   bin 0: (-0.2) * ln(0.6) = (-0.2) * (-0.5108256238) = 0.1021651248
    #   bin 1: 0
    #   bin 2: ( 0.2) * ln(2.0) = ( 0.2) * ( 0.6931471806) = 0.1386294361
    # PSI = 0.2407945609
    # p-value: PSI / (1/100 + 1/100) = 12.039728045, chi-square with 3 - 1 = 2 dof,
    #          whose survival function is exp(-x / 2); PSI = 0.2 ln(2 / 0.6), so
    #          x / 2 = PSI / 0.04 = 5 ln(2 / 0.6) and p = (0.6 / 2) ** 5 = 0.00243 exactly
    value, p = psi([50, 30, 20], [30, 30, 40])
    assert value == pytest.approx(0.2407945609, abs=1e-10)
    assert p == pytest.approx(math.exp(-0.2407945609 / 0.02 / 2), rel=1e-8)
    assert p == pytest.approx(0.00243, rel=1e-12)


def test_psi_epsilon_floor_hand_worked() -> None:
    # reference [100, 0] -> p_r = [1, 0 -> floored to 1e-4]; window [50, 50] -> p_w = [0.5, 0.5]
    #   bin 0: (0.5 - 1) * ln(0.5 / 1)        = 0.5 * ln 2          = 0.3465735903
    #   bin 1: (0.5 - 1e-4) * ln(0.5 / 1e-4)  = 0.4999 * ln 5000    = 4.2577448...
    value, _ = psi([100, 0], [50, 50])
    expected = 0.5 * math.log(2) + 0.4999 * math.log(5000)
    assert value == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(value)
    # the floor is a parameter: a smaller floor gives a larger value
    assert psi([100, 0], [50, 50], epsilon=1e-6)[0] > value


def _psi_numpy(r: np.ndarray, w: np.ndarray, eps: float) -> float:
    """Independent re-statement of the documented formula, term by term."""
    total = 0.0
    for ri, wi in zip(r / r.sum(), w / w.sum(), strict=True):
        a, b = max(wi, eps), max(ri, eps)
        total += (a - b) * math.log(a / b)
    return total


@pytest.mark.parametrize("seed", range(20))
def test_psi_matches_independent_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 15))
    r = rng.integers(0, 200, size=k)
    w = rng.integers(0, 200, size=k)
    r[0] += 1
    w[-1] += 1
    value, p = psi(r, w, 1e-4)
    assert value == pytest.approx(_psi_numpy(r, w, 1e-4), rel=1e-12, abs=1e-15)
    dof = int(np.count_nonzero(r + w)) - 1
    scaled = value / (1 / w.sum() + 1 / r.sum())
    assert p == pytest.approx(stats.chi2.sf(scaled, max(dof, 1)), rel=1e-9, abs=1e-300)


def test_psi_bins_empty_in_both_are_no_degree_of_freedom() -> None:
    a = psi([40, 60], [55, 45])
    b = psi([40, 60, 0, 0], [55, 45, 0, 0])
    assert a == b


def test_psi_empty_input_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        psi([0, 0], [1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        psi([1, 2], [0, 0])


def test_psi_p_value_false_alarm_rate_at_alpha() -> None:
    """Under no drift PSI / (1/n + 1/m) ~ chi2(bins - 1): p < alpha in about alpha of the trials."""
    rng = np.random.default_rng(2024)
    alpha, trials, m, n = 0.05, 400, 2000, 500
    p_values = []
    for _ in range(trials):
        prof = numeric_profile("x", rng.normal(size=m), fine_bins=100, coarse_bins=10)
        window = rng.normal(size=n)
        fine = np.bincount(prof.bin_index(window), minlength=prof.slot_size)[: prof.n_bins]
        ref = np.asarray(prof.counts)
        p_values.append(psi(coarse_counts(prof, ref), coarse_counts(prof, fine))[1])
    rate = float(np.mean(np.asarray(p_values) < alpha))
    sd = math.sqrt(alpha * (1 - alpha) / trials)
    assert abs(rate - alpha) < 3.5 * sd, rate
    # and the p-values are roughly uniform (not all near 1, as they would be with a wrong scale)
    assert stats.kstest(p_values, "uniform").pvalue > 0.001


# -- KS ------------------------------------------------------------------------------------
def _samples(kind: str, rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    if kind == "normal":
        return rng.normal(shift, 1.0, size)
    if kind == "poisson":
        return rng.poisson(3.0 + 2 * shift, size).astype(float)
    if kind == "binary":
        return (rng.random(size) < 0.3 + 0.2 * shift).astype(float)
    if kind == "mixed":  # a point mass at 0 and a continuous tail
        x = rng.exponential(1.0 + shift, size)
        x[rng.random(size) < 0.4] = 0.0
        return x
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal", "poisson", "binary", "mixed"])
def test_binned_ks_within_documented_bound_of_exact(kind: str) -> None:
    rng = np.random.default_rng({"normal": 1, "poisson": 2, "binary": 3, "mixed": 4}[kind])
    for trial in range(60):
        m = int(rng.integers(200, 3000))
        n = int(rng.integers(20, 800))
        fine = int(rng.choice([10, 20, 100]))
        ref = _samples(kind, rng, m, 0.0)
        win = _samples(kind, rng, n, float(rng.choice([0.0, 0.2, 0.7])))
        prof = numeric_profile("x", ref, fine_bins=fine, coarse_bins=min(10, fine))
        r = np.asarray(prof.counts)
        w = np.bincount(prof.bin_index(win), minlength=prof.slot_size)[: prof.n_bins]
        kb = ks_binned(r, w)
        exact = stats.ks_2samp(ref, win)
        assert kb.statistic <= exact.statistic + 1e-12, (trial, kb, exact.statistic)
        assert exact.statistic <= kb.statistic + kb.max_error + 1e-12, (trial, kb, exact.statistic)
        assert kb.max_error == pytest.approx(max(r.max() / m, w.max() / n))
        # the p-value is the asymptotic two-sample one; binned D <= exact D makes it conservative
        asymp = stats.ks_2samp(ref, win, method="asymp").pvalue
        assert ks_p_value(exact.statistic, n, m) == pytest.approx(asymp, rel=1e-9, abs=1e-300)
        assert kb.p_value >= asymp - 1e-12


@pytest.mark.parametrize("en", [10_000, 40_000, 150_000])
def test_ks_p_value_of_large_samples_is_close_to_kstwo(en: int) -> None:
    """From KS_ASYMPTOTIC_FROM on: Stephens-corrected Kolmogorov, within the documented error of kstwo."""
    from detectors.statistics import KS_ASYMPTOTIC_FROM

    assert en >= KS_ASYMPTOTIC_FROM
    n = m = 2 * en  # en = n*m/(n+m)
    for x in np.linspace(0.4, 2.6, 12):
        d = float(x / math.sqrt(en))
        exact = float(stats.kstwo.sf(d, en))
        got = ks_p_value(d, n, m)
        rel = 0.0035 if exact >= 1e-3 else 0.014
        assert got == pytest.approx(exact, rel=rel), (en, x, got, exact)
    below = KS_ASYMPTOTIC_FROM - 2  # en just below the switch: exactly kstwo
    assert ks_p_value(0.02, below, below) == float(stats.kstwo.sf(0.02, round(below / 2)))


def test_ks_binned_hand_example() -> None:
    # reference CDF at the bin boundaries: 0.25, 0.75, 1; window: 0.5, 1.0, 1 -> D = max(.25, .25, 0)
    kb = ks_binned([1, 2, 1], [2, 2, 0])
    assert kb.statistic == pytest.approx(0.25)
    assert kb.max_error == pytest.approx(0.5)
    assert kb.p_value == pytest.approx(stats.kstwo.sf(0.25, round(4 * 4 / 8)))


def test_ks_exact_is_scipy() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=300), rng.normal(0.3, 1, size=200)
    res = stats.ks_2samp(a, b)
    assert ks_exact(a, b) == (float(res.statistic), float(res.pvalue))


def test_half_sigma_shift_is_flagged_by_binned_ks() -> None:
    rng = np.random.default_rng(11)
    prof = numeric_profile("x", rng.normal(size=5000))
    r = np.asarray(prof.counts)
    for _ in range(20):
        win = rng.normal(0.5, 1.0, size=300)
        w = np.bincount(prof.bin_index(win), minlength=prof.slot_size)[: prof.n_bins]
        assert ks_binned(r, w).p_value < 0.001


# -- chi-square ------------------------------------------------------------------------------
@pytest.mark.parametrize("empty_bucket", [True, False])
@pytest.mark.parametrize("seed", range(25))
def test_chi_square_matches_scipy_contingency(seed: int, empty_bucket: bool) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    r = rng.integers(0, 300, size=k)
    w = rng.integers(0, 100, size=k)
    if empty_bucket:  # a bucket empty in both rows (like __unseen__ of the reference), which scipy cannot take
        r[-1] = 0
        w[-1] = 0
    else:  # none empty (the statistic's path without the zero guard)
        r += 1
    r[0] += 5
    w[1] += 5
    got = chi_square(r, w)
    keep = (r + w) > 0
    stat, p, dof, _ = stats.chi2_contingency(np.vstack([r[keep], w[keep]]), correction=False)
    assert got.statistic == pytest.approx(stat, rel=1e-10)
    assert got.p_value == pytest.approx(p, rel=1e-8, abs=1e-300)
    assert got.dof == dof
    assert got.cramers_v == pytest.approx(math.sqrt(stat / (r.sum() + w.sum())), rel=1e-10)


def test_chi_square_single_bucket_is_defined() -> None:
    c = chi_square([10, 0], [4, 0])
    assert (c.statistic, c.p_value, c.dof) == (0.0, 1.0, 0)


def test_chi_square_unseen_category_is_flagged() -> None:
    # reference never had the third bucket; 20 % of the window sits there
    c = chi_square([500, 500, 0], [40, 40, 20])
    assert c.p_value < 1e-10


# -- corrections -----------------------------------------------------------------------------
def test_bonferroni_hand_example() -> None:
    # k = 3: 0.01 * 3 = 0.03, 0.02 * 3 = 0.06, 0.5 * 3 = 1.5 -> capped at 1
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert bonferroni([]) == []


def test_benjamini_hochberg_hand_example() -> None:
    # p = [0.01, 0.04, 0.03, 0.5], k = 4; sorted 0.01 (i=1), 0.03 (2), 0.04 (3), 0.5 (4)
    # p_(i) * k / i = 0.04, 0.06, 0.05333, 0.5; running minimum from the top:
    #   q_(4) = 0.5, q_(3) = 0.05333, q_(2) = min(0.06, 0.05333) = 0.05333, q_(1) = 0.04
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])


def _bh_reference(p: list[float]) -> list[float]:
    """q_i = min over j with p_j >= p_i of p_j * k / rank_j (rank by sorted order), capped at 1."""
    k = len(p)
    order = sorted(range(k), key=lambda i: (p[i], i))
    rank = {idx: r + 1 for r, idx in enumerate(order)}
    return [min(1.0, min(p[j] * k / rank[j] for j in range(k) if rank[j] >= rank[i])) for i in range(k)]


@pytest.mark.parametrize("seed", range(30))
def test_benjamini_hochberg_matches_definition_and_step_up_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 25))
    p = [float(v) for v in rng.random(k) ** 3]
    if k > 3:
        p[1] = p[2]  # ties
    q = benjamini_hochberg(p)
    assert q == pytest.approx(_bh_reference(p), rel=1e-12)
    # the classic decision rule: reject the i smallest where i is the largest with p_(i) <= i alpha / k
    alpha = 0.1
    srt = sorted(p)
    passing = [i for i in range(1, k + 1) if srt[i - 1] <= i * alpha / k]
    n_reject = max(passing) if passing else 0
    assert sum(v <= alpha for v in q) == n_reject


def test_adjust_dispatch_and_unknown_method() -> None:
    p = [0.01, 0.2]
    assert adjust(p, "bonferroni") == bonferroni(p)
    assert adjust(p, "bh") == benjamini_hochberg(p)
    assert adjust(p, "none") == p
    with pytest.raises(ValueError, match="holm"):
        adjust(p, "holm")
