"""Calibrated thresholds: checked against fresh draws from the true distributions (never against the
calibration's own bootstrap), the design effect, the unseen rate, and how the profile stores them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from detectors.calibration import SIZES, z_of_p
from detectors.config import StatisticsConfig
from detectors.evaluate import evaluate_counts
from detectors.exceptions import ReferenceFormatError
from detectors.histogram import Layout
from detectors.reference import CategoricalProfile, ReferenceProfile, categorical_profile

pytestmark = pytest.mark.unit

Draw = Callable[[np.random.Generator, int], object]

LONG_TAIL = [f"v{i}" for i in range(300)]
_ZIPF = 1.0 / np.arange(1, 301) ** 1.1
ZIPF = _ZIPF / _ZIPF.sum()
RATING = [0.3, 0.05, 0.05, 0.1, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05]  # a 0-9 rating
KINDS: dict[str, tuple[Draw, bool]] = {
    "normal": (lambda rng, n: rng.normal(size=n), False),
    "lognormal": (lambda rng, n: rng.lognormal(0.0, 1.0, n), False),
    "poisson": (lambda rng, n: rng.poisson(3.0, n).astype(float), False),
    "rating": (lambda rng, n: rng.choice(10, size=n, p=RATING).astype(float), False),
    "long_tail": (lambda rng, n: rng.choice(LONG_TAIL, size=n, p=ZIPF).tolist(), True),
}


def _rate_bounds(windows: int, alpha: float) -> tuple[float, float]:
    """What the share of null windows with p <= alpha may be: the calibration is held to within
    30 % of alpha (its stated precision at these levels), plus binomial noise at 99.9 %."""
    lo = stats.binom.ppf(0.0005, windows, 0.7 * alpha) / windows
    hi = stats.binom.ppf(0.9995, windows, 1.3 * alpha) / windows
    return lo, hi


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n", [150, 1000])
def test_calibrated_p_values_hold_their_level_on_fresh_null_windows(kind: str, n: int) -> None:
    draw, categorical = KINDS[kind]
    rng = np.random.default_rng([7, n, len(kind)])
    ref = ReferenceProfile.build(
        {"f": draw(rng, 20_000)}, categorical=["f"] if categorical else [], calibration_replicates=10_000
    )
    layout = Layout(ref)
    cfg = StatisticsConfig(correction="none", unseen={"enabled": False})
    windows = 2500
    p: dict[str, list[float]] = {}
    for _ in range(windows):
        counts = layout.histogram({"f": draw(rng, n)}).counts
        for r in evaluate_counts(layout, counts, cfg):
            if r.statistic in ("psi", "ks"):  # (a categorical's chi2 verdict reads the same test as psi)
                assert r.p_value is not None
                p.setdefault(r.statistic, []).append(r.p_value)
    for stat, values in p.items():
        for alpha in (0.05, 0.01):
            lo, hi = _rate_bounds(windows, alpha)
            rate = float(np.mean(np.asarray(values) <= alpha))
            assert lo <= rate <= hi, (stat, alpha, rate)


def test_discrete_ks_gains_power_over_the_textbook_at_the_same_level() -> None:
    """The binned KS of a ten-valued feature is very discrete: the Kolmogorov p-value is far too
    large, so at a fixed level it misses shifts the calibrated one catches."""
    draw, _ = KINDS["rating"]
    rng = np.random.default_rng(5)
    ref = ReferenceProfile.build({"f": draw(rng, 50_000)}, calibration_replicates=10_000)
    layout = Layout(ref)
    cfg = StatisticsConfig(correction="none")
    shifted = [0.24, 0.05, 0.05, 0.1, 0.2, 0.1, 0.05, 0.05, 0.08, 0.08]  # 6 points moved from 0 to 8 and 9
    only_calibrated = only_textbook = 0
    for _ in range(400):
        x = rng.choice(10, size=300, p=shifted).astype(float)
        r = next(r for r in evaluate_counts(layout, layout.histogram({"f": x}).counts, cfg) if r.statistic == "ks")
        assert r.value is not None and r.p_value is not None
        en = 300 * 50_000 / 50_300
        calibrated = r.p_value <= 0.001
        textbook = stats.kstwo.sf(r.value, round(en)) <= 0.001
        only_calibrated += calibrated and not textbook
        only_textbook += textbook and not calibrated
    # McNemar's exact test on the discordant windows: the calibrated test detects more, clearly
    discordant = only_calibrated + only_textbook
    assert stats.binomtest(only_calibrated, discordant, 0.5, alternative="greater").pvalue < 1e-3, (
        only_calibrated,
        only_textbook,
    )


def _regional(rng: np.random.Generator, regions: int, per_region: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by region (a data set ordered by geography): each region shifts the feature's mean."""
    offsets = rng.normal(0.0, 0.4, regions)
    x = np.concatenate([rng.normal(o, 1.0, per_region) for o in offsets])
    region = np.repeat(np.arange(regions), per_region)
    return x, region


def test_chunks_keep_an_ordered_reference_quiet_on_windows_like_its_own() -> None:
    rng = np.random.default_rng(9)
    x, _ = _regional(rng, 100, 500)  # 50k rows in 100 regions
    with_effect = ReferenceProfile.build({"x": x}, calibration_replicates=4000)
    without = ReferenceProfile.build({"x": x}, calibration_replicates=4000, chunks=False)
    assert with_effect.calibration is not None and without.calibration is not None
    assert with_effect.calibration.features["x"].chunked == ["bins", "ks"]
    assert without.calibration.features["x"].chunked == []
    # new data ordered the same way (other regions): windows of 250 consecutive rows
    fresh, _ = _regional(rng, 60, 500)
    cfg = StatisticsConfig()
    pages = {}
    for name, ref in (("with", with_effect), ("without", without)):
        layout = Layout(ref)
        flagged = 0
        for i in range(0, len(fresh), 250):
            counts = layout.histogram({"x": fresh[i : i + 250]}).counts
            flagged += any(r.drift for r in evaluate_counts(layout, counts, cfg))
        pages[name] = flagged / (len(fresh) // 250)
    assert pages["without"] > 0.2, pages  # independent-rows thresholds page on the regions
    assert pages["with"] <= 0.05, pages
    # a real shift still pages
    layout = Layout(with_effect)
    counts = layout.histogram({"x": rng.normal(1.5, 1.0, 250)}).counts
    assert any(r.drift for r in evaluate_counts(layout, counts, cfg))


def test_independent_rows_leave_the_bootstrap_in_charge() -> None:
    # chunks of independent rows vary as the bootstrap's windows do: their line is not above it
    # (only the noise of a few hundred chunks could lift it, at a few sizes)
    rng = np.random.default_rng(1)
    ref = ReferenceProfile.build({"x": rng.normal(size=200_000)}, calibration_replicates=4000)
    assert ref.calibration is not None
    sources = ref.calibration.features["x"].sources
    assert sum(s == "chunks" for v in sources.values() for s in v) <= 3, sources


def test_unseen_rate_is_smoothed_good_turing() -> None:
    p = categorical_profile("c", ["a"] * 5 + ["b", "c"] + ["d"] * 3, top_n=2)
    assert isinstance(p, CategoricalProfile)
    assert p.n_singletons == 2  # b and c occurred once
    assert p.unseen_rate == pytest.approx((2 + 1) / (10 + 1))
    # a truncated list of other values cannot tell a new category from __other__: no unseen test
    truncated = CategoricalProfile("c", ("a",), (5, 5, 0), ("b",), True, 0, 3)
    assert truncated.unseen_rate == 0.0


def test_a_long_tail_reference_expects_new_categories_a_short_one_does_not() -> None:
    rng = np.random.default_rng(3)
    levels = [f"t{i}" for i in range(3000)]
    zipf = 1.0 / np.arange(1, 3001)
    tail_values = rng.choice(levels, size=20_000, p=zipf / zipf.sum()).tolist()  # many categories seen once
    ref = ReferenceProfile.build(
        {"tail": tail_values, "four": rng.choice(list("abcd"), 20_000).tolist()},
        categorical=["tail", "four"],
        calibration_replicates=500,
    )
    tail, four = ref.features["tail"], ref.features["four"]
    assert isinstance(tail, CategoricalProfile) and isinstance(four, CategoricalProfile)
    assert tail.unseen_rate > 10 * four.unseen_rate
    layout = Layout(ref)
    cfg = StatisticsConfig()
    # 3 never-seen values in 2,000 events: expected of a long tail, news for four fixed levels
    base = {"tail": rng.choice(levels[:40], size=2000).tolist(), "four": rng.choice(list("abcd"), 2000).tolist()}
    odd = {k: v[:-3] + [f"new{i}" for i in range(3)] for k, v in base.items()}
    got = {(r.feature, r.statistic): r for r in evaluate_counts(layout, layout.histogram(odd).counts, cfg)}
    assert got["tail", "unseen"].p_value > got["four", "unseen"].p_value
    # ... but 3 in 2,000 is below the 0.2 % share floor, so neither pages
    assert got["four", "unseen"].p_value_adjusted < cfg.false_alarm_rate and not got["four", "unseen"].drift
    # a new category at 1 % of 2,000 events pages where new categories are rare; in a tail where
    # several % of the reference's values were of a category seen once, 1 % new is what to expect
    assert tail.unseen_rate > 0.02
    new = {k: v[:-20] + ["brand-new"] * 20 for k, v in base.items()}
    got = {(r.feature, r.statistic): r for r in evaluate_counts(layout, layout.histogram(new).counts, cfg)}
    assert got["four", "unseen"].drift and not got["tail", "unseen"].drift
    # ... and the tail pages when its share of new categories clearly exceeds its usual rate
    many = {"tail": base["tail"][:-400] + [f"fresh{i}" for i in range(400)], "four": base["four"]}
    got = {(r.feature, r.statistic): r for r in evaluate_counts(layout, layout.histogram(many).counts, cfg)}
    assert got["tail", "unseen"].drift


def test_threshold_is_the_effect_where_the_verdict_flips() -> None:
    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build(
        {"x": rng.normal(size=20_000), "c": rng.choice(list("abcd"), 20_000).tolist()},
        categorical=["c"],
        calibration_replicates=2000,
    )
    layout = Layout(ref)
    cfg = StatisticsConfig()
    seen = 0
    for shift in np.linspace(0.0, 0.5, 60):
        n = int(rng.integers(150, 3000))
        p = np.array([0.25 + shift / 2, 0.25, 0.25, 0.25 - shift / 2])
        cols = {"x": rng.normal(shift, 1.0, n), "c": rng.choice(list("abcd"), n, p=p / p.sum()).tolist()}
        for r in evaluate_counts(layout, layout.histogram(cols).counts, cfg):
            if r.statistic in ("ks", "chi2", "unseen"):
                assert r.threshold is not None and r.effect is not None
                assert r.drift == (r.effect >= r.threshold), r
                seen += bool(r.drift)
    assert seen > 10  # both sides of the threshold were visited


def test_calibration_is_deterministic_and_per_feature() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=5000), rng.exponential(size=5000)
    a = ReferenceProfile.build({"x": x, "y": y}, calibration_replicates=500)
    b = ReferenceProfile.build({"y": y, "x": x}, features=["y", "x"], calibration_replicates=500)
    c = ReferenceProfile.build({"x": x}, calibration_replicates=500)
    assert a.calibration is not None and b.calibration is not None and c.calibration is not None
    assert a.calibration.features["x"] == b.calibration.features["x"] == c.calibration.features["x"]


def test_calibration_round_trips_and_is_fingerprinted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    ref = ReferenceProfile.build(
        {"x": rng.normal(size=3000), "c": rng.choice(["a", "b"], 3000).tolist()},
        categorical=["c"],
        calibration_replicates=500,
    )
    path = tmp_path / "reference.json"
    ref.save(path)
    back = ReferenceProfile.load(path)
    assert back == ref and back.fingerprint == ref.fingerprint
    other = ReferenceProfile.build(
        {"x": rng.normal(size=3000), "c": rng.choice(["a", "b"], 3000).tolist()},
        categorical=["c"],
        calibration_replicates=500,
        calibration_seed=1,
    )
    assert other.calibration != ref.calibration
    doc = json.loads(path.read_text())
    doc["calibration"]["features"]["x"]["tails"]["ks"][0][0] += 0.5
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceFormatError, match="fingerprint mismatch"):
        ReferenceProfile.load(path)


def test_profile_of_version_1_is_refused_with_the_way_to_upgrade_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    ref = ReferenceProfile.build({"c": rng.choice(["a", "b"], 3000).tolist()}, categorical=["c"], calibrate=False)
    doc = json.loads(ref.to_json())
    doc["schema_version"] = 1
    del doc["calibration"], doc["settings"]["discrete_values"], doc["features"]["c"]["n_singletons"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceFormatError, match="reference calibrate"):
        ReferenceProfile.load(path)
    old = ReferenceProfile.load(path, upgrade=True)
    assert old.calibration is None
    new = old.calibrated(replicates=500)
    assert new.calibration is not None and new.calibration.method == "bootstrap"
    # without a calibration no verdict can be given, and the error says how to add it
    with pytest.raises(Exception, match="reference calibrate"):
        evaluate_counts(Layout(old), Layout(old).empty().counts, StatisticsConfig())


def test_calibration_needs_enough_replicates_for_its_tail() -> None:
    with pytest.raises(ValueError, match="at least 500"):
        ReferenceProfile.build({"x": np.arange(100.0)}, calibration_replicates=100)
    assert math.isfinite(SIZES[-1])


def test_a_window_family_spans_its_segments() -> None:
    """With 20 segments, each its own family, some segment of a null window pages far more often than
    the false-alarm rate; with statistics.family: window the whole window stays within it."""
    from detectors.evaluate import evaluate_window

    rng = np.random.default_rng(21)
    ref = ReferenceProfile.build(
        {"x": rng.normal(size=20_000), "c": rng.choice(list("abcd"), 20_000).tolist()},
        categorical=["c"],
        calibration_replicates=2000,
    )
    layout = Layout(ref)
    rate, windows = 0.05, 300
    pages = {"segment": 0, "window": 0}
    for _ in range(windows):
        segments = [
            (layout.histogram({"x": rng.normal(size=150), "c": rng.choice(list("abcd"), 150).tolist()}).counts, None)
            for _ in range(20)
        ]
        for family in pages:
            cfg = StatisticsConfig(false_alarm_rate=rate, family=family)  # type: ignore[arg-type]
            verdicts = evaluate_window(layout, segments, cfg)
            assert len(verdicts) == 20
            pages[family] += any(r.drift for seg in verdicts for r in seg)
    assert pages["window"] <= stats.binom.ppf(0.999, windows, rate), pages
    # each of 20 families at up to 5 %: about 1 - 0.95^20 = 64 % of windows if the tests were exact
    assert pages["segment"] > 4 * pages["window"] and pages["segment"] >= 0.25 * windows, pages


def test_z_of_p_of_a_number_is_that_of_an_array() -> None:
    # a scalar takes a path of its own (no array round trip); both are -ndtri(clip(p, 0, 1))
    ps = [0.0, 1e-300, 3e-4, 0.05, 0.5, 0.999, 1.0, -0.5, 1.5, float("nan")]
    arr = z_of_p(np.array(ps))
    for p, want in zip(ps, arr.tolist(), strict=True):
        got = z_of_p(p)
        assert isinstance(got, float)
        assert got == want or (math.isnan(got) and math.isnan(want))
    assert z_of_p(0.0) == math.inf and z_of_p(1.0) == -math.inf
    assert z_of_p(0.05) == pytest.approx(stats.norm.isf(0.05), rel=1e-12)


def test_tail_between_sizes_is_the_higher_line_at_the_tail() -> None:
    from detectors.calibration import EXTRAPOLATE_AT, Calibration, FeatureCalibration

    rows = ((0.0, 1.0), (0.5, 0.8), (0.1, 1.3))
    cal = Calibration(
        (100, 1000, 10_000), 10, 0, "bootstrap", {"x": FeatureCalibration({"ks": rows}, {"ks": ("bootstrap",) * 3})}
    )
    x = stats.norm.isf(EXTRAPOLATE_AT)
    assert cal.tail("x", "ks", 50) == rows[0] and cal.tail("x", "ks", 1000) == rows[1]
    assert cal.tail("x", "ks", 20_000) == rows[2]
    for n, (lo, hi) in ((500, (rows[0], rows[1])), (5000, (rows[1], rows[2]))):
        higher = lo if lo[0] + lo[1] * x >= hi[0] + hi[1] * x else hi
        assert cal.tail("x", "ks", n) == higher
