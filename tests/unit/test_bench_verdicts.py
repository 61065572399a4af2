"""The verdicts benchmark's data and baseline (tests/benchmarks/bench_verdicts.py), checked independently.

The benchmark's figures are only as good as its generator (reproducible, the distributions it
claims, drift only where injected) and its textbook baseline (equal to scipy's own tests).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tests.benchmarks import bench_verdicts as bv

pytestmark = pytest.mark.unit


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = bv.draw(500, bv.rng_for("null", 100_000, 0, 500, 0), segments=True)
    b = bv.draw(500, bv.rng_for("null", 100_000, 0, 500, 0), segments=True)
    c = bv.draw(500, bv.rng_for("null", 100_000, 1, 500, 0), segments=True)
    assert a.keys() == b.keys() == {*bv.FEATURES, "segment"}
    for f in a:
        assert np.array_equal(a[f], b[f]), f
    assert not np.array_equal(a["norm_std"], c["norm_std"])
    # the batches of a cell are the same whoever draws them
    first = [cols["norm_std"] for _, cols in bv.batches(("detect", 0, 2, 2000), 2000, 250, bv.SCENARIOS[2])]
    again = [cols["norm_std"] for _, cols in bv.batches(("detect", 0, 2, 2000), 2000, 250, bv.SCENARIOS[2])]
    assert [len(x) for x in first] == [100 * 2000, 100 * 2000, 50 * 2000]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))


def test_the_features_are_what_the_benchmark_says() -> None:
    n = 200_000
    c = bv.draw(n, bv.rng_for("check", 99), segments=True)
    for f in bv.INTEGER:
        assert c[f].dtype == np.int64
    assert set(np.unique(c["flag"]).tolist()) == {0, 1}
    assert set(np.unique(c["rating"]).tolist()) == set(range(10))
    assert np.unique(c["poisson3"]).size < 20
    assert set(c["cat4"].tolist()) == set(bv.CAT4_LEVELS)
    levels, counts = np.unique(c["longtail"], return_counts=True)
    assert 450 <= len(levels) <= bv.LONGTAIL_LEVELS and bv.NEW_LEVEL not in levels
    # the top 50 of a Zipf(1.1) over 500 levels hold sum(k^-1.1, k <= 50) / sum(k^-1.1, k <= 500) of the mass
    k = np.arange(1, 501) ** -1.1
    top50 = np.sort(counts)[::-1][:50].sum() / n
    assert abs(top50 - k[:50].sum() / k.sum()) < 0.01
    # every segment gets exactly its share of the events
    assert set(np.unique(c["segment"], return_counts=True)[1].tolist()) == {n // bv.N_SEGMENTS}
    assert abs(c["norm_std"].std() - 1) < 0.01 and abs(c["norm_loc"].mean() - 100) < 0.2


@pytest.mark.parametrize("drift", bv.SCENARIOS, ids=lambda d: d.name)
def test_drift_changes_only_the_drifted_feature(drift: bv.Drift) -> None:
    n = 100_000
    base = bv.draw(n, bv.rng_for("check", 7))
    moved = bv.draw(n, bv.rng_for("check", 7), drift)
    for f in bv.FEATURES:
        if f != drift.feature:
            assert np.array_equal(base[f], moved[f]), f
    x = moved[drift.feature]
    if drift.kind == "shift":
        assert np.allclose(x - base[drift.feature], drift.amount)
    elif drift.kind == "scale":
        assert abs(x.std() / base[drift.feature].std() - drift.amount) < 1e-9
    elif drift.kind == "mix":
        share = {lv: float(np.mean(x == lv)) for lv in bv.CAT4_LEVELS}
        assert abs(share["A"] - 0.3) < 0.01 and abs(share["D"] - 0.2) < 0.01
    else:
        assert abs(np.mean(x == bv.NEW_LEVEL) - drift.amount) < 0.002


def test_textbook_ks_equals_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    ref = {f: rng.poisson(3.0, 12_000).astype(float) for f in bv.NUMERIC}
    ref.update({f: np.array(["a"] * 12_000, dtype=object) for f in bv.CATEGORICAL})
    tb = bv.Textbook(ref)
    x = rng.poisson(3.4, (4, 150)).astype(float)
    d = tb.ks_d("poisson3", x)
    p = tb.ks_p(d, 150)
    for i in range(4):
        r = stats.ks_2samp(ref["poisson3"], x[i], method="asymp")
        assert d[i] == pytest.approx(r.statistic, abs=1e-12)
        assert p[i] == pytest.approx(r.pvalue, rel=1e-9)


def test_textbook_chi_square_counts_a_new_category_as_its_own_column() -> None:
    ref = {f: np.zeros(100) for f in bv.NUMERIC}
    ref["cat4"] = np.array(["A"] * 60 + ["B"] * 40, dtype=object)
    ref["longtail"] = np.array(["v000"] * 100, dtype=object)
    tb = bv.Textbook(ref)
    window = np.array(["A"] * 20 + ["B"] * 20 + ["new"] * 10, dtype=object)
    expected = stats.chi2_contingency(np.array([[60, 40, 0], [20, 20, 10]]), correction=False).pvalue
    assert tb.chi2_p("cat4", window) == pytest.approx(expected, rel=1e-12)


def test_tune_alpha_reproduces_the_target_rate_on_the_tuning_windows() -> None:
    p = np.array([0.5, 0.001, 0.2, 0.03, 0.9, 0.0004, 0.07, 0.6, 0.4, 0.3])
    assert np.sum(p <= bv.tune_alpha(p, 0.2)) == 2
    assert bv.tune_alpha(p, 0.2) < 0.03
    assert np.sum(p <= bv.tune_alpha(p, 0.0)) == 0
    assert bv.tune_alpha(p, 1.0) == 1.0


def test_rate_interval_is_clopper_pearson() -> None:
    r = bv.rate(10, 1000)
    lo = stats.beta.ppf(0.025, 10, 991)
    hi = stats.beta.ppf(0.975, 11, 990)
    assert r["rate"] == 0.01
    assert r["ci"] == pytest.approx([lo, hi], rel=1e-9)
