"""Performance state and metrics against independent computations (numpy on the raw arrays, scipy's
Mann–Whitney U, hand-worked examples); undefined is never 0; merge = add; the reference's
performance profile; calibrated verdicts held to their false-alarm rate on fresh null windows."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from detectors.exceptions import InputError, ReferenceFormatError
from detectors.performance import (
    CLASSIFICATION,
    INFO,
    LOG_LOSS_EPS,
    METRICS,
    REGRESSION,
    Floors,
    PerformanceLayout,
    PerformanceProfile,
    Rules,
    auc_tie_bound,
    evaluate_window,
)
from detectors.reference import ReferenceProfile

pytestmark = pytest.mark.unit

CLS = PerformanceLayout(CLASSIFICATION, 0.5)
REG = PerformanceLayout(REGRESSION)


def scored(rng: np.random.Generator, n: int, accuracy: float, positives: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probability scores whose decision at 0.5 is right with probability ``accuracy``."""
    y = (rng.random(n) < positives).astype(np.float64)
    right = rng.random(n) < accuracy
    decided = np.where(right, y, 1.0 - y)
    score = np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0)
    return score, y


# -- classification metrics ---------------------------------------------------------------------------
def test_hand_worked_confusion_example() -> None:
    # scores vs threshold 0.5: predicted 1 1 1 0 0 0 ; labels 1 0 1 1 0 0 -> TP 2, FP 1, FN 1, TN 2
    score = np.array([0.9, 0.6, 0.5, 0.4, 0.2, 0.1])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    m = CLS.metrics(CLS.state_of(score, y))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["positive_rate"] == pytest.approx(0.5)
    # AUC: positives 0.9, 0.5, 0.4 against negatives 0.6, 0.2, 0.1: of the 9 pairs, (0.5, 0.6) and
    # (0.4, 0.6) are misordered: 7/9
    assert m["roc_auc"] == pytest.approx(7 / 9)
    brier = ((score - y) ** 2).mean()
    assert m["brier"] == pytest.approx(brier, abs=1e-7)


def test_score_at_the_threshold_predicts_positive() -> None:
    layout = PerformanceLayout(CLASSIFICATION, 0.37)
    m = layout.metrics(layout.state_of(np.array([0.37, np.nextafter(0.37, 0.0)]), np.array([1.0, 1.0])))
    assert m["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_classification_metrics_match_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    score, y = scored(rng, 5_000, 0.8)
    score[:10] = [0.0, 1.0, 1e-20, 1 - 1e-17, 0.5, 0.5, 0.25, 0.75, 1e-6, 0.999999]
    m = CLS.metrics(CLS.state_of(score, y))
    pred = score >= 0.5
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y), rel=1e-12)
    assert m["precision"] == pytest.approx(tp / (tp + fp), rel=1e-12)
    assert m["recall"] == pytest.approx(tp / (tp + fn), rel=1e-12)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    p = np.clip(score, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    log_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert abs(m["log_loss"] - log_loss) <= 2**-25  # fixed point: each event rounded to 2**-24
    assert abs(m["brier"] - np.mean((score - y) ** 2)) <= 2**-25


@pytest.mark.parametrize("seed", [4, 5])
def test_binned_auc_is_exact_mann_whitney_of_the_bins_and_within_its_bound_of_the_raw_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    score, y = scored(rng, 4_000, 0.75)
    state = CLS.state_of(score, y)
    auc = CLS.metrics(state)["roc_auc"]
    bins = np.searchsorted(CLS.edges, score, side="right")
    u_bins = stats.mannwhitneyu(bins[y == 1], bins[y == 0]).statistic  # ties count 1/2
    pairs = (y == 1).sum() * (y == 0).sum()
    assert auc == pytest.approx(u_bins / pairs, rel=1e-12)
    u_raw = stats.mannwhitneyu(score[y == 1], score[y == 0]).statistic / pairs
    bound = auc_tie_bound(CLS, state)
    assert bound is not None and bound < 0.01
    assert abs(auc - u_raw) <= bound


def test_undefined_metrics_are_none_never_zero() -> None:
    empty = CLS.metrics(CLS.empty())
    assert all(v is None for v in empty.values())  # no predictions, no labels: nothing is 0
    negatives_only = CLS.metrics(CLS.state_of(np.array([0.1, 0.7]), np.array([0.0, 0.0])))
    assert negatives_only["recall"] is None and negatives_only["roc_auc"] is None
    assert negatives_only["accuracy"] == 0.5 and negatives_only["precision"] == 0.0
    nothing_positive = CLS.metrics(CLS.state_of(np.array([0.1, 0.2]), np.array([0.0, 0.0])))
    assert nothing_positive["precision"] is None and nothing_positive["f1"] is None
    unlabelled = CLS.empty()
    unlabelled[0] = 10  # ten predictions, no label yet
    m = CLS.metrics(unlabelled)
    assert m["label_coverage"] == 0.0 and m["accuracy"] is None


def test_merge_is_add() -> None:
    rng = np.random.default_rng(9)
    score, y = scored(rng, 3_000, 0.85)
    whole = CLS.state_of(score, y)
    parts = CLS.state_of(score[:1234], y[:1234]) + CLS.state_of(score[1234:], y[1234:])
    assert np.array_equal(whole, parts)
    r_score, r_y = rng.normal(size=3_000), rng.normal(size=3_000)
    assert np.allclose(
        REG.state_of(r_score, r_y), REG.state_of(r_score[:7], r_y[:7]) + REG.state_of(r_score[7:], r_y[7:])
    )


# -- regression metrics ---------------------------------------------------------------------------------
def test_regression_metrics_match_numpy_and_mape_leaves_zero_labels_out() -> None:
    rng = np.random.default_rng(11)
    y = rng.normal(10.0, 3.0, 2_000)
    y[:50] = 0.0
    score = y + rng.normal(0.5, 1.0, 2_000)
    m = REG.metrics(REG.state_of(score, y))
    e = score - y
    assert m["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt((e**2).mean()), rel=1e-12)
    assert m["bias"] == pytest.approx(e.mean(), rel=1e-12)
    nz = y != 0
    assert m["mape"] == pytest.approx(np.mean(np.abs(e[nz]) / np.abs(y[nz])), rel=1e-12)
    all_zero = REG.metrics(REG.state_of(np.array([1.0, 2.0]), np.array([0.0, 0.0])))
    assert all_zero["mape"] is None and all_zero["mae"] == pytest.approx(1.5)


def test_invalid_scores_and_labels() -> None:
    assert CLS.valid_scores(np.array([0.0, 1.0, -0.1, 1.1, np.nan])).tolist() == [True, True, False, False, False]
    assert CLS.valid_labels(np.array([0.0, 1.0, 2.0, 0.5])).tolist() == [True, True, False, False]
    assert REG.valid_scores(np.array([1e9, np.inf])).tolist() == [True, False]
    with pytest.raises(InputError, match=r"label at row 2 is 2.0, not 0 or 1"):
        PerformanceProfile.build([0.1, 0.2], [0, 2], task=CLASSIFICATION, calibrate=False)
    with pytest.raises(InputError, match=r"prediction at row 1 is 1.5"):
        PerformanceProfile.build([1.5, 0.2], [0, 1], task=CLASSIFICATION, calibrate=False)


# -- the reference's performance ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile() -> PerformanceProfile:
    rng = np.random.default_rng(21)
    score, y = scored(rng, 30_000, 0.9, positives=0.5)
    return PerformanceProfile.build(score, y, task=CLASSIFICATION, replicates=4_000)


def test_profile_round_trips_and_leaves_old_fingerprints_alone(profile: PerformanceProfile) -> None:
    rng = np.random.default_rng(1)
    ref = ReferenceProfile.build({"x": rng.normal(size=2_000)}, calibration_replicates=500)
    assert "performance" not in ref.content()  # a profile without labels hashes as before
    with_perf = dataclasses.replace(ref, performance=profile)
    back = ReferenceProfile.from_json(with_perf.to_json())
    assert back.fingerprint == with_perf.fingerprint != ref.fingerprint
    assert back.performance is not None and back.performance.metrics == profile.metrics
    assert back.performance.calibration == profile.calibration
    assert ReferenceProfile.from_json(ref.to_json()).performance is None
    doc = with_perf.content()
    doc["performance"]["score_bins"]["bins"] = 100
    with pytest.raises(ReferenceFormatError, match="score bins"):
        PerformanceProfile.from_dict(doc["performance"])


def test_profile_counts_rows_without_labels(profile: PerformanceProfile) -> None:
    p = PerformanceProfile.build([0.2, None, 0.9, 0.4], [0, 1, None, 1], task=CLASSIFICATION, calibrate=False)
    assert (p.n_rows, p.n_unlabelled, p.n_labelled) == (4, 2, 2)
    assert p.calibration is None


def test_critical_drop_inverts_the_calibrated_p_value(profile: PerformanceProfile) -> None:
    cal = profile.calibration
    assert cal is not None
    for metric in METRICS[CLASSIFICATION]:
        for n_e in (50.0, 700.0, 5_000.0):
            d = cal.critical_drop(metric, 1e-3, n_e)
            assert cal.p_value(metric, d, n_e) == pytest.approx(1e-3, rel=1e-6)


RULES = Rules(
    metrics=METRICS[CLASSIFICATION],
    min_labels=30,
    min_drop=Floors(0.0, 0.0, 0.0),
    critical_drop=Floors(0.05, 0.25, 0.25),
    false_alarm_rate=0.05,
    correction="bonferroni",
    family="segment",
)


def _decide(profile: PerformanceProfile, score: np.ndarray, y: np.ndarray, rules: Rules = RULES) -> list[dict]:
    return evaluate_window(
        CLS,
        [({}, CLS.state_of(score, y))],
        profile,
        rules,
        monitor="m",
        window_start_ms=0,
        window_end_ms=1,
        window_index=0,
        fingerprint="f",
    )


@pytest.mark.parametrize("n", [100, 1_000])
def test_calibrated_verdicts_hold_the_false_alarm_rate_on_fresh_null_windows(
    profile: PerformanceProfile, n: int
) -> None:
    # fresh windows from the same generator as the reference (never from the calibration's own draws)
    rng = np.random.default_rng([33, n])
    windows = 1_500
    paged = 0
    for _ in range(windows):
        score, y = scored(rng, n, 0.9, positives=0.5)
        paged += any(r["drift"] for r in _decide(profile, score, y))
    # the family's rate is 5 %; Bonferroni over 7 correlated metrics keeps it at or below; binomial 99.9 %
    assert paged / windows <= stats.binom.ppf(0.999, windows, 0.05) / windows
    assert paged > 0  # not vacuous: the tests do reject at their level


def test_a_drop_in_accuracy_is_flagged_with_its_effect_and_threshold(profile: PerformanceProfile) -> None:
    rng = np.random.default_rng(5)
    score, y = scored(rng, 2_000, 0.82, positives=0.5)
    rules = dataclasses.replace(RULES, min_drop=Floors(0.02, 0.1, 0.1))
    recs = {r["statistic"]: r for r in _decide(profile, score, y, rules)}
    acc = recs["accuracy"]
    ref_acc = profile.metrics["accuracy"]
    assert acc["drift"] is True and acc["severity"] == "critical"  # a drop of about 0.08 >= critical 0.05
    assert acc["effect"] == pytest.approx(ref_acc - acc["value"])
    assert 0.02 <= acc["threshold"] < acc["effect"]
    assert acc["n_window"] == 2_000 and acc["n_missing"] == 0 and acc["n_reference"] == profile.n_labelled
    assert recs["label_coverage"]["value"] == 1.0 and recs["label_coverage"]["drift"] is None
    assert set(recs) == set(METRICS[CLASSIFICATION]) | set(INFO[CLASSIFICATION])


def test_too_few_labels_give_no_verdict(profile: PerformanceProfile) -> None:
    rng = np.random.default_rng(6)
    score, y = scored(rng, 20, 0.5, positives=0.5)
    recs = {r["statistic"]: r for r in _decide(profile, score, y)}
    assert recs["accuracy"]["value"] is None and recs["accuracy"]["severity"] == "insufficient_data"
    assert recs["accuracy"]["drift"] is None and recs["label_coverage"]["value"] == 1.0


def test_without_reference_performance_values_come_without_verdicts() -> None:
    rng = np.random.default_rng(8)
    score, y = scored(rng, 500, 0.9)
    recs = evaluate_window(
        CLS,
        [({}, CLS.state_of(score, y))],
        None,
        RULES,
        monitor="m",
        window_start_ms=0,
        window_end_ms=1,
        window_index=0,
        fingerprint="f",
    )
    acc = next(r for r in recs if r["statistic"] == "accuracy")
    assert acc["value"] == pytest.approx(np.mean((score >= 0.5) == (y == 1)))
    assert acc["drift"] is None and acc["p_value"] is None and acc["n_reference"] is None


def test_regression_bias_is_two_sided_and_floored_relative_to_mae() -> None:
    rng = np.random.default_rng(12)
    y = rng.normal(10.0, 2.0, 20_000)
    prof = PerformanceProfile.build(y + rng.normal(0.0, 1.0, 20_000), y, task=REGRESSION, replicates=2_000)
    rules = Rules(
        METRICS[REGRESSION], 30, Floors(0.02, 0.1, 0.1), Floors(0.05, 0.25, 0.25), 0.01, "bonferroni", "segment"
    )
    ref_mae = prof.metrics["mae"]
    assert ref_mae is not None
    for shift in (-0.3, 0.3):
        wy = rng.normal(10.0, 2.0, 3_000)
        recs = evaluate_window(
            REG,
            [({}, REG.state_of(wy + shift + rng.normal(0.0, 1.0, 3_000), wy))],
            prof,
            rules,
            monitor="m",
            window_start_ms=0,
            window_end_ms=1,
            window_index=0,
            fingerprint="f",
        )
        bias = next(r for r in recs if r["statistic"] == "bias")
        assert bias["drift"] is True and bias["effect"] == pytest.approx(abs(bias["value"] - prof.metrics["bias"]))
        assert bias["threshold"] >= 0.1 * ref_mae
