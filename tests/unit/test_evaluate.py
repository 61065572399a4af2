"""Evaluating a window: verdicts, no verdict on too little data, corrections, records and alerts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detectors.calibration import Calibration
from detectors.config import StatisticsConfig
from detectors.evaluate import (
    CRITICAL,
    INSUFFICIENT,
    OK,
    RECORD_FIELDS,
    WARNING,
    StatisticResult,
    _Plan,
    evaluate_counts,
    iso_ms,
    make_alert,
    parse_iso_ms,
    segment_label,
    window_records,
)
from detectors.histogram import Layout, coarse_counts
from detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from detectors.statistics import chi_square, ks_binned, psi

pytestmark = pytest.mark.unit


def _ref(seed: int = 0, m: int = 5000, keep_values: int = 0, replicates: int = 2000) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return ReferenceProfile.build(
        {
            "x": rng.normal(size=m),
            "y": rng.exponential(size=m),
            "c": rng.choice(["a", "b", "c"], size=m, p=[0.5, 0.3, 0.2]).tolist(),
        },
        categorical=["c"],
        keep_values=keep_values,
        calibration_replicates=replicates,
    )


def _cfg(**kw: object) -> StatisticsConfig:
    return StatisticsConfig.model_validate(kw)


def _window(layout: Layout, rng: np.random.Generator, n: int, shift: float = 0.0, cats: list[str] | None = None):
    cols = {
        "x": rng.normal(shift, 1.0, n),
        "y": rng.exponential(size=n),
        "c": rng.choice(cats or ["a", "b", "c"], size=n, p=None if cats else [0.5, 0.3, 0.2]).tolist(),
    }
    return cols, layout.histogram(cols).counts


def _by(results: list[StatisticResult]) -> dict[tuple[str, str], StatisticResult]:
    return {(r.feature, r.statistic): r for r in results}


def test_empty_window_gives_no_verdict_never_zero() -> None:
    ref = _ref()
    layout = Layout(ref)
    results = evaluate_counts(layout, layout.empty().counts, _cfg())
    assert {(r.feature, r.statistic) for r in results} == {
        ("x", "psi"),
        ("x", "ks"),
        ("y", "psi"),
        ("y", "ks"),
        ("c", "psi"),
        ("c", "chi2"),
        ("c", "unseen"),
    }
    for r in results:
        assert r.severity == INSUFFICIENT
        assert r.value is None and r.effect is None and r.p_value is None and r.p_value_adjusted is None
        assert r.drift is None and r.threshold is None
        assert r.n_window == 0 and r.n_reference == 5000


def test_min_events_boundary_and_missing_values_do_not_count() -> None:
    ref = _ref()
    layout = Layout(ref, ["x"])
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=99), [np.nan] * 30, [np.inf, -np.inf]])
    r = _by(evaluate_counts(layout, layout.histogram({"x": x}).counts, _cfg(min_events=100)))
    assert r["x", "ks"].severity == INSUFFICIENT and r["x", "ks"].value is None
    assert r["x", "ks"].n_window == 99 and r["x", "ks"].n_missing == 32
    x = np.concatenate([x, [0.0]])
    r = _by(evaluate_counts(layout, layout.histogram({"x": x}).counts, _cfg(min_events=100)))
    assert r["x", "ks"].severity in (OK, WARNING, CRITICAL) and r["x", "ks"].value is not None


def test_too_small_reference_gives_no_verdict() -> None:
    ref = ReferenceProfile.build({"x": np.arange(50.0)}, calibration_replicates=500)
    layout = Layout(ref)
    counts = layout.histogram({"x": np.arange(500.0) % 50}).counts
    assert all(r.severity == INSUFFICIENT for r in evaluate_counts(layout, counts, _cfg(min_events=100)))


def test_values_match_the_statistic_functions_and_bonferroni_family() -> None:
    ref = _ref()
    layout = Layout(ref)
    rng = np.random.default_rng(2)
    _, counts = _window(layout, rng, 400, shift=0.15)
    cfg = _cfg(min_events=50)
    res = _by(evaluate_counts(layout, counts, cfg))
    px = ref.features["x"]
    assert isinstance(px, NumericProfile)
    wx = layout.slot(counts, "x")[: px.n_bins]
    rx = np.asarray(px.counts)
    assert res["x", "psi"].value == psi(coarse_counts(px, rx), coarse_counts(px, wx))[0]
    assert res["x", "ks"].value == ks_binned(rx, wx).statistic
    pc = ref.features["c"]
    wc = layout.slot(counts, "c")[: pc.n_bins]
    c = chi_square(np.asarray(pc.counts), wc)
    assert res["c", "chi2"].value == pytest.approx(c.statistic, rel=1e-12)
    # the family is one test per hypothesis: x bins (PSI's), x KS, y bins, y KS, c bins (read by
    # both the psi and the chi2 verdict), c unseen
    assert res["c", "psi"].p_value == res["c", "chi2"].p_value
    family = [res[k] for k in [("x", "psi"), ("x", "ks"), ("y", "psi"), ("y", "ks"), ("c", "chi2"), ("c", "unseen")]]
    floors = {"psi": cfg.psi.warning, "ks": cfg.ks.min_statistic, "chi2": cfg.chi2.min_cramers_v}
    for r in family:
        assert r.p_value is not None and r.effect is not None
        assert r.p_value_adjusted == pytest.approx(min(1.0, 6 * r.p_value))
        floor = floors.get(r.statistic, cfg.unseen.min_share)
        assert r.drift == (r.p_value_adjusted <= cfg.false_alarm_rate and r.effect >= floor)


def test_chi_square_effect_is_size_balanced_cramers_v() -> None:
    # reference [500, 300, 200] (m = 1000) against a window [30, 30, 40] (n = 100)
    ref = ReferenceProfile.build(
        {"c": ["a"] * 500 + ["b"] * 300 + ["c"] * 200}, categorical=["c"], calibration_replicates=500
    )
    layout = Layout(ref)
    counts = layout.histogram({"c": ["a"] * 30 + ["b"] * 30 + ["c"] * 40}).counts
    r = _by(evaluate_counts(layout, counts, _cfg(min_events=50)))["c", "chi2"]
    x2 = stats.chi2_contingency(np.array([[500, 300, 200], [30, 30, 40]]), correction=False)[0]
    assert r.value == pytest.approx(x2, rel=1e-10)
    n_e = 100 * 1000 / 1100
    assert r.effect == pytest.approx(math.sqrt(x2 / (4 * n_e)), rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_numeric_features_evaluated_together_equal_each_one_alone(seed: int) -> None:
    """PSI and binned KS of all numeric features at once (different bin counts, one feature
    empty in the window) are exactly the per-feature functions' values."""
    rng = np.random.default_rng(seed)
    ref = ReferenceProfile.build(
        {
            "a": rng.normal(size=3000),
            "b": rng.integers(0, 4, size=3000).astype(float),  # few distinct values: few bins
            "c": rng.choice(["p", "q"], size=3000).tolist(),
            "d": rng.exponential(size=3000),
            "e": rng.uniform(size=3000),
        },
        categorical=["c"],
        calibration_replicates=500,
    )
    layout = Layout(ref)
    n = 500
    window = {
        "a": rng.normal(0.3, 1.0, n),
        "b": rng.integers(0, 5, size=n).astype(float),
        "c": rng.choice(["p", "q", "r"], size=n).tolist(),
        "d": np.full(n, np.nan),  # no valid value: no verdict
        "e": rng.uniform(size=n) ** 2,
    }
    counts = layout.histogram(window).counts
    res = _by(evaluate_counts(layout, counts, _cfg(min_events=50)))
    assert len({ref.features[f].n_bins for f in "abde"}) > 1
    for f in "abe":
        p = ref.features[f]
        assert isinstance(p, NumericProfile)
        r, w = np.asarray(p.counts), layout.slot(counts, f)[: p.n_bins]
        assert res[f, "psi"].value == psi(coarse_counts(p, r), coarse_counts(p, w))[0]
        assert res[f, "ks"].value == ks_binned(r, w).statistic
    assert res["d", "psi"].value is None and res["d", "ks"].severity == INSUFFICIENT


def test_bh_correction_is_applied_across_the_window() -> None:
    ref = _ref()
    layout = Layout(ref)
    _, counts = _window(layout, np.random.default_rng(3), 400, shift=0.2)
    res = evaluate_counts(layout, counts, _cfg(min_events=50, correction="bh"))
    fam = [r for r in res if not (r.feature == "c" and r.statistic == "psi")]  # (c's psi reads c's bins test)
    ps = [r.p_value for r in fam]
    k = len(ps)
    ranks = np.argsort(np.argsort(ps, kind="stable"), kind="stable") + 1
    for r, rank in zip(fam, ranks, strict=True):
        bigger = [p * k / (rr) for p, rr in zip(ps, ranks, strict=True) if rr >= rank]
        assert r.p_value_adjusted == pytest.approx(min(1.0, min(bigger)))


def test_psi_severity_needs_the_test_and_the_floor() -> None:
    ref = _ref()
    layout = Layout(ref, ["x"])
    rng = np.random.default_rng(4)
    cfg = _cfg(min_events=50, psi={"warning": 0.1, "critical": 0.25})
    for shift in (0.0, 0.45, 1.5):
        counts = layout.histogram({"x": rng.normal(shift, 1, 2000)}).counts
        r = _by(evaluate_counts(layout, counts, cfg))["x", "psi"]
        assert r.value is not None and r.p_value_adjusted is not None
        passed = r.p_value_adjusted <= cfg.false_alarm_rate
        expected = (CRITICAL if r.value >= 0.25 else WARNING if r.value >= 0.1 else OK) if passed else OK
        assert r.severity == expected and r.drift == (expected != OK)
        assert r.threshold is not None and r.threshold >= 0.1
    # the 1.5 sigma shift is critical (independent expectation)
    assert r.severity == CRITICAL


def test_small_windows_do_not_page_on_psi_noise() -> None:
    """At 100 events PSI over ten bins averages about 9/n = 0.09 with no drift: a fixed 0.1 warning
    fired on a third of all windows. The calibrated test needs an exceedance too."""
    ref = _ref(seed=1, m=20000, replicates=4000)
    layout = Layout(ref, ["x", "y"])
    rng = np.random.default_rng(11)
    cfg = _cfg()
    over_floor = flagged = 0
    for _ in range(300):
        counts = layout.histogram({"x": rng.normal(size=100), "y": rng.exponential(size=100)}).counts
        for r in evaluate_counts(layout, counts, cfg):
            if r.statistic == "psi":
                over_floor += r.value >= cfg.psi.warning
                flagged += bool(r.drift)
    assert over_floor > 100  # what the fixed threshold paged on (independent of the calibration)
    assert flagged <= 2


def test_half_sigma_shift_is_flagged_by_ks_through_evaluate() -> None:
    ref = _ref(m=5000)
    layout = Layout(ref)
    rng = np.random.default_rng(5)
    for _ in range(10):
        _, counts = _window(layout, rng, 300, shift=0.5)
        r = _by(evaluate_counts(layout, counts, _cfg()))
        assert r["x", "ks"].drift is True
        # D of a 0.5 sigma shift is 2 * Phi(0.25) - 1 = 0.197, right at critical_statistic 0.2
        assert r["x", "ks"].severity in (WARNING, CRITICAL)
        assert r["y", "ks"].value is not None


def test_no_change_page_rate_within_the_false_alarm_rate() -> None:
    """The family-wise rate of windows with any verdict stays at or below false_alarm_rate (binomial
    bound), and the calibrated p-values are not degenerate."""
    rate, windows = 0.05, 600
    ref = _ref(seed=6, m=20000, replicates=4000)
    layout = Layout(ref)
    rng = np.random.default_rng(7)
    cfg = _cfg(false_alarm_rate=rate)
    any_drift = 0
    per_test = []
    for _ in range(windows):
        _, counts = _window(layout, rng, 250)
        res = evaluate_counts(layout, counts, cfg)
        any_drift += any(r.drift for r in res)
        per_test.extend(r.p_value for r in res if r.statistic in ("psi", "ks") and r.feature != "c")
    assert any_drift <= stats.binom.ppf(0.999, windows, rate), any_drift
    # per test about `rate` of the calibrated p-values fall below `rate`
    raw_rate = float(np.mean(np.asarray(per_test) < rate))
    sd = math.sqrt(rate * (1 - rate) / len(per_test))
    assert rate - 4 * sd < raw_rate < rate + 4 * sd, raw_rate


def test_unseen_categories_are_their_own_test_not_a_chi_square_cell() -> None:
    ref = _ref()
    layout = Layout(ref, ["c"])
    rng = np.random.default_rng(8)
    values = rng.choice(["a", "b", "c", "brand-new"], size=500, p=[0.4, 0.25, 0.15, 0.2]).tolist()
    new = values.count("brand-new")
    counts = layout.histogram({"c": values}).counts
    pc = ref.features["c"]
    assert isinstance(pc, CategoricalProfile)
    assert layout.slot(counts, "c")[pc.n_bins - 1] == new  # the __unseen__ bucket
    r = _by(evaluate_counts(layout, counts, _cfg()))
    assert r["c", "unseen"].value == new / 500 and r["c", "unseen"].severity == CRITICAL
    # the p-value is the binomial tail at the reference's unseen rate (no singletons: 1 / (m + 1))
    assert pc.n_singletons == 0 and pc.unseen_rate == pytest.approx(1 / 5001)
    assert r["c", "unseen"].p_value == pytest.approx(stats.binom.sf(new - 1, 500, 1 / 5001), rel=1e-9)
    # the chi-square test compares the seen categories only
    assert r["c", "chi2"].n_window == 500 - new
    # one odd value in a window does not page (it did: a zero reference cell of the chi-square)
    one = layout.histogram({"c": ["a"] * 250 + ["b"] * 150 + ["c"] * 99 + ["typo"]}).counts
    assert not any(x.drift for x in evaluate_counts(layout, one, _cfg()))


def test_all_missing_categorical_window_is_insufficient() -> None:
    ref = _ref()
    layout = Layout(ref, ["c"])
    counts = layout.histogram({"c": [None] * 500}).counts
    for r in evaluate_counts(layout, counts, _cfg()):
        assert r.severity == INSUFFICIENT and r.n_missing == 500 and r.value is None


def test_constant_reference_feature_defined_results() -> None:
    ref = ReferenceProfile.build({"x": np.full(1000, 3.0)}, calibration_replicates=500)
    layout = Layout(ref)
    same = _by(evaluate_counts(layout, layout.histogram({"x": np.full(200, 3.0)}).counts, _cfg()))
    assert same["x", "psi"].value == 0.0 and same["x", "ks"].value == 0.0
    assert same["x", "ks"].drift is False and same["x", "psi"].severity == OK
    for moved in (3.5, 2.5):
        r = _by(evaluate_counts(layout, layout.histogram({"x": np.full(200, moved)}).counts, _cfg()))
        assert r["x", "ks"].value == 1.0 and r["x", "ks"].drift is True
        assert r["x", "psi"].severity == CRITICAL


def test_exact_ks_when_raw_values_are_kept() -> None:
    ref = _ref(m=3000, keep_values=5000)
    layout = Layout(ref, ["x"])
    rng = np.random.default_rng(9)
    x = rng.normal(0.1, 1, 300)
    x[:5] = np.nan
    counts = layout.histogram({"x": x}).counts
    r = _by(evaluate_counts(layout, counts, _cfg(), raw={"x": x}))["x", "ks"]
    assert r.method == "ks_exact"
    px = ref.features["x"]
    assert isinstance(px, NumericProfile) and px.values is not None
    exact = stats.ks_2samp(np.asarray(px.values), x[5:])
    assert (r.value, r.p_value) == (float(exact.statistic), float(exact.pvalue))
    # without raw values the same window uses the binned statistic
    assert _by(evaluate_counts(layout, counts, _cfg()))["x", "ks"].method == "ks_binned"


def test_disabled_statistics_are_not_computed() -> None:
    ref = _ref()
    layout = Layout(ref)
    res = evaluate_counts(
        layout, layout.empty().counts, _cfg(psi={"enabled": False}, chi2={"enabled": False}, unseen={"enabled": False})
    )
    assert {(r.feature, r.statistic) for r in res} == {("x", "ks"), ("y", "ks")}


# -- records and alerts -------------------------------------------------------------------
def test_window_records_schema_and_alert_ids() -> None:
    ref = _ref()
    layout = Layout(ref)
    _, counts = _window(layout, np.random.default_rng(10), 300, shift=0.6)
    results = evaluate_counts(layout, counts, _cfg())
    recs = window_records(
        results,
        monitor="m",
        segment={"z": "1", "a": "2"},
        window_start_ms=1_700_000_000_000,
        window_end_ms=1_700_000_300_000,
        window_index=1_700_000_000_000 // 300_000,
        fingerprint=ref.fingerprint,
    )
    assert len(recs) == len(results)
    for rec, res in zip(recs, results, strict=True):
        assert tuple(rec) == RECORD_FIELDS
        assert list(rec["segment"]) == ["a", "z"]
        assert rec["window_start"] == "2023-11-14T22:13:20.000Z"
        assert parse_iso_ms(rec["window_end"]) == 1_700_000_300_000
        assert (rec["value"], rec["drift"], rec["severity"]) == (res.value, res.drift, res.severity)
        assert rec["reference_fingerprint"] == ref.fingerprint
    drifted = [r for r in recs if r["drift"]]
    assert drifted
    a1 = make_alert(drifted[0], 1_700_000_400_000)
    a2 = make_alert(dict(drifted[0], value=123.0), 1_700_000_999_000)
    assert a1["alert_id"] == a2["alert_id"]  # idempotent: same window, same key
    assert a1["detected_at"] == iso_ms(1_700_000_400_000)
    other = make_alert(dict(drifted[0], reference_fingerprint="sha256:x"), 0)
    assert other["alert_id"] != a1["alert_id"]
    ids = {make_alert(r, 0)["alert_id"] for r in recs}
    assert len(ids) == len(recs)


def test_segment_label() -> None:
    assert segment_label({}) == "__all__"
    assert segment_label({"b": "2", "a": "1"}) == "a=1,b=2"


def _one_feature_setup(ref: ReferenceProfile) -> tuple[Layout, Calibration, _Plan, StatisticsConfig]:
    """What comparing a window's tests with the one-feature path needs: layout, calibration, plan
    and a configuration that gives a verdict from one event."""
    from detectors.evaluate import _plan

    layout = Layout(ref)
    assert ref.calibration is not None
    return layout, ref.calibration, _plan(layout), _cfg(min_events=1)


@pytest.mark.parametrize("seed", range(4))
def test_numeric_tests_computed_together_equal_the_per_feature_path_to_the_bit(seed: int) -> None:
    # _NumericTests does what _bins_test and the binned KS do one feature at a time; here each
    # test of _measure is recomputed the one-feature way and must be equal (==, not approx):
    # windows from tiny (PSI bins pooled) to large (none pooled), with missing values, shifted
    from detectors.calibration import ks_textbook_p
    from detectors.evaluate import _bins_test, _effective, _measure
    from detectors.statistics import ks_statistic_many

    rng = np.random.default_rng(seed)
    m = 4000
    cols = {f"x{j}": rng.normal(size=m) * (1 + j) for j in range(5)}
    cols["k"] = rng.integers(0, 4, size=m).astype(float)  # few values: few PSI bins
    ref = ReferenceProfile.build(cols, calibration_replicates=500)
    layout, cal, plan, cfg = _one_feature_setup(ref)
    pooled_seen = unpooled_seen = 0
    for n in (3, 12, 40, 150, 900, 6000):
        window = {f"x{j}": rng.normal(0.3 * (j % 2), 1 + j, n) for j in range(5)}
        window["k"] = rng.integers(0, 5, size=n).astype(float)
        window["x1"][: n // 4] = np.nan  # missing values: another n for this feature
        counts = layout.histogram(window).counts
        tests, _verdicts = _measure(layout, counts, cfg, None)
        got = {(t.feature, t.kind): t for t in tests}
        for name in layout.numeric:
            profile = ref.features[name]
            assert isinstance(profile, NumericProfile)
            w = layout.slot(counts, name)[: profile.n_bins]
            k = int(w.sum())
            mm = plan.m[name]
            want = _bins_test(cal, name, plan.r_psi[name], coarse_counts(profile, w), k, mm)
            if want is None:
                assert (name, "bins") not in got
            else:
                assert got[(name, "bins")] == want
                cells = int(want.dof) + 1
                pooled_seen += cells < len(plan.r_psi[name])
                unpooled_seen += cells == len(plan.r_psi[name])
            r_fine = np.asarray(profile.counts, dtype=np.float64)
            d = float(ks_statistic_many(r_fine, w.astype(np.float64), np.zeros(1, dtype=np.intp))[0])
            n_e = _effective(k, mm)
            p = cal.p_value(name, "ks", float(ks_textbook_p(d, n_e)), n_e)
            assert got[(name, "ks")].p == p
    assert pooled_seen and unpooled_seen  # both paths were taken


@pytest.mark.parametrize("seed", range(4))
def test_categorical_tests_computed_together_equal_the_per_feature_path_to_the_bit(seed: int) -> None:
    # _CategoricalTests does what _bins_test, chi_square_statistic and psi do one feature at a time;
    # here each is recomputed the one-feature way and must be equal (==, not approx): windows from
    # tiny (seen buckets pooled, or none seen) to large (none pooled), with categories the
    # reference never had and missing values
    from detectors.evaluate import _bins_test, _measure
    from detectors.statistics import chi_square_statistic

    rng = np.random.default_rng(seed)
    m = 4000
    cats = {
        "few": rng.choice(["a", "b", "c"], size=m, p=[0.6, 0.3, 0.1]).tolist(),
        "many": rng.choice([f"v{i}" for i in range(30)], size=m, p=np.arange(1, 31) / 465).tolist(),
        "rare": rng.choice(["p", "q", "r", "s"], size=m, p=[0.97, 0.01, 0.01, 0.01]).tolist(),
    }
    # (top_n: "many" keeps 20 of its 30 categories, so its __other__ bucket is not empty and a large
    # window needs no pooling; the others' empty __other__ is always pooled)
    ref = ReferenceProfile.build(
        {"x": rng.normal(size=m), **cats}, categorical=list(cats), top_n=20, calibration_replicates=500
    )
    layout, cal, plan, cfg = _one_feature_setup(ref)
    pooled_seen = unpooled_seen = 0
    for n in (1, 4, 12, 40, 150, 900, 6000):
        window: dict[str, object] = {"x": rng.normal(size=n)}
        for name, values in cats.items():
            drawn = rng.choice([*sorted(set(values)), "new"], size=n).tolist()
            drawn[: n // 5] = [None] * (n // 5)  # missing values: another n for this feature
            window[name] = drawn
        counts = layout.histogram(window).counts
        tests, verdicts = _measure(layout, counts, cfg, None)
        got = {(t.feature, t.kind): t for t in tests}
        values = {(v.feature, v.statistic): v.value for v in verdicts}
        for name in cats:
            profile = ref.features[name]
            assert isinstance(profile, CategoricalProfile)
            w = layout.slot(counts, name)[: profile.n_bins - 1]  # the seen buckets
            k = int(w.sum())
            r = plan.r[name]
            if k == 0:  # no verdict: nothing to compare
                assert values[(name, "psi")] is None and values[(name, "chi2")] is None
                continue
            want = _bins_test(cal, name, r, w, k, plan.m[name])
            if want is None:
                assert (name, "bins") not in got
            else:
                assert got[(name, "bins")] == want
                pooled_seen += want.dof + 1 < len(r)
                unpooled_seen += want.dof + 1 == len(r)
            assert values[(name, "psi")] == psi(r, w)[0]
            assert values[(name, "chi2")] == float(chi_square_statistic(r, w))
    assert pooled_seen and unpooled_seen  # both ways of the bins test were taken
