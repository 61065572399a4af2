"""Reference profiles: bins from reference quantiles, categorical buckets, JSON round-trip, fingerprints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.exceptions import ConfigError, InputError, ReferenceFormatError
from detectors.histogram import coarse_counts
from detectors.reference import (
    MAX_OTHER_VALUES,
    OTHER,
    SCHEMA_VERSION,
    UNSEEN,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    categorical_profile,
    numeric_profile,
)
from detectors.statistics import psi

pytestmark = pytest.mark.unit


def _num(ref: ReferenceProfile, name: str) -> NumericProfile:
    p = ref.features[name]
    assert isinstance(p, NumericProfile)
    return p


def _cat(ref: ReferenceProfile, name: str) -> CategoricalProfile:
    p = ref.features[name]
    assert isinstance(p, CategoricalProfile)
    return p


# -- numeric bins ------------------------------------------------------------------------
def test_fine_edges_are_reference_quantiles_and_counts_match() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000)
    p = numeric_profile("x", x, fine_bins=100, coarse_bins=10)
    expected = np.quantile(x, np.arange(1, 100) / 100)
    assert np.array_equal(np.asarray(p.edges), expected)
    assert p.n_bins == 100
    # counts recomputed with bisect-like logic: bin i is [edge[i-1], edge[i])
    e = np.asarray(p.edges)
    manual = [int(np.sum(x < e[0]))]
    manual += [int(np.sum((x >= e[i - 1]) & (x < e[i]))) for i in range(1, len(e))]
    manual.append(int(np.sum(x >= e[-1])))
    assert list(p.counts) == manual
    assert p.n == 5000


def test_coarse_bins_are_unions_of_fine_bins_near_equal_mass() -> None:
    rng = np.random.default_rng(2)
    x = rng.exponential(size=4000)
    p = numeric_profile("x", x, fine_bins=100, coarse_bins=10)
    assert p.n_coarse == 10
    assert p.coarse_starts[0] == 0
    assert list(p.coarse_starts) == sorted(set(p.coarse_starts))
    r = np.asarray(p.counts)
    coarse = coarse_counts(p, r)
    assert coarse.sum() == r.sum()
    max_fine = r.max() / r.sum()
    assert np.all(np.abs(coarse / r.sum() - 0.1) <= max_fine + 1e-9)


def test_discrete_data_merges_duplicate_edges_and_closes_the_top_atom() -> None:
    # (quantile bins: the one-bin-per-value rule is switched off with discrete_values=0)
    x = np.array([0.0] * 60 + [1.0] * 30 + [2.0] * 10)
    p = numeric_profile("x", x, fine_bins=100, coarse_bins=10, discrete_values=0)
    quantiles = np.unique(np.quantile(x, np.arange(1, 100) / 100))
    assert len(quantiles) < 99 and quantiles[0] == 0.0 and quantiles[-1] == 2.0
    # the maximum 2 is an edge, so one more edge, nextafter(2), closes the atom's bin
    assert p.edges == (*(float(q) for q in quantiles), float(np.nextafter(2.0, np.inf)))
    assert p.n_bins == len(quantiles) + 2
    idx = p.bin_index(np.array([-1.0, 0.0, 1.0, 2.0, 3.0]))
    # below the minimum: bin 0 (empty in the reference); above the maximum: the last bin (empty)
    assert idx[0] == 0 and idx[-1] == p.n_bins - 1
    assert len(set(idx.tolist())) == 5
    counts = np.asarray(p.counts)
    assert counts[0] == 0 and counts[-1] == 0
    assert (counts[idx[1]], counts[idx[2]], counts[idx[3]]) == (60, 30, 10)
    # coarse bins: the empty outer bins stand alone, so PSI also sees out-of-range values
    coarse = coarse_counts(p, counts)
    assert coarse[0] == 0 and coarse[-1] == 0 and coarse.sum() == 100
    starts = list(p.coarse_starts)
    assert starts[1] == 1 and starts[-1] == p.n_bins - 1


def test_few_distinct_values_get_one_fine_and_one_psi_bin_per_value() -> None:
    # a 0-9 rating with unequal shares: quantile bins would merge neighbours into coarse bins
    x = np.repeat(np.arange(10.0), [30, 5, 5, 10, 20, 10, 5, 5, 5, 5])
    p = numeric_profile("x", x, fine_bins=100, coarse_bins=10)
    assert p.edges == (*[float(v) for v in range(10)], float(np.nextafter(9.0, np.inf)))
    assert p.counts == (0, 30, 5, 5, 10, 20, 10, 5, 5, 5, 5, 0)
    assert p.coarse_starts == tuple(range(12))  # every value its own PSI bin, the empty outer ones too
    # so PSI is the textbook PSI over the values: swapping the shares of 1 and 6 (5 and 10) moves it
    w = np.repeat(np.arange(10.0), [30, 10, 5, 10, 20, 5, 5, 5, 5, 5])
    fine = np.bincount(p.bin_index(w), minlength=p.slot_size)[: p.n_bins]
    got = psi(coarse_counts(p, np.asarray(p.counts)), coarse_counts(p, fine))[0]
    textbook = 2 * (0.1 - 0.05) * math.log(0.1 / 0.05)  # two values: (0.10-0.05) ln 2 + (0.05-0.10) ln 0.5
    assert got == pytest.approx(textbook, rel=1e-12)
    # more distinct values than discrete_values: quantile bins
    assert numeric_profile("x", x, discrete_values=9).coarse_starts != tuple(range(12))


def test_constant_reference_feature_has_a_defined_usable_profile() -> None:
    p = numeric_profile("x", np.full(500, 7.0), fine_bins=100, coarse_bins=10)
    assert p.edges == (7.0, float(np.nextafter(7.0, np.inf)))
    assert p.counts == (0, 500, 0)
    assert p.coarse_starts == (0, 1, 2)  # values below and above 7 are told apart from 7


def test_missing_and_non_finite_values_are_counted_apart() -> None:
    x = [1.0, None, float("nan"), float("inf"), -float("inf"), 2.0, 3.0]
    p = numeric_profile("x", x, fine_bins=4, coarse_bins=2)
    assert (p.n_missing, p.n_invalid, p.n) == (2, 2, 3)


def test_all_missing_numeric_feature_is_empty_not_zero() -> None:
    p = numeric_profile("x", [None, None], fine_bins=10, coarse_bins=2)
    assert p.n == 0 and p.n_missing == 2 and p.edges == ()


@pytest.mark.parametrize(
    "values",
    [[1.0, True, 2.0], np.array([True, False, True]), [1.0, "3", 2.0], [1.0, {"a": 1}]],
    ids=["bool-in-list", "bool-array", "string", "object"],
)
def test_non_numbers_in_numeric_feature_raise_naming_it(values: object) -> None:
    with pytest.raises(InputError, match=r"feature 'x'.*declare it categorical"):
        ReferenceProfile.build({"x": values})


# -- categorical -------------------------------------------------------------------------
def test_categorical_buckets_top_n_other_unseen_missing() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] + [None, "", float("nan")] + [7, True]
    p = categorical_profile("c", values, top_n=2)
    # ties broken by name: b before c
    assert p.categories == ("a", "b")
    assert p.buckets == ("a", "b", OTHER, UNSEEN)
    assert p.counts == (5, 3, 3 + 1 + 1 + 1, 0)  # c, d, "7", "true" go to __other__
    assert p.other_values == ("7", "c", "d", "true")
    assert p.n_missing == 3
    idx = p.bin_index(["a", "c", "zzz", None, "", 7, True, 1.5])
    assert idx.tolist() == [0, 2, 3, 4, 4, 2, 2, 5]  # 4 = missing slot, 5 = invalid slot


def test_categorical_bin_index_of_strings_equals_bucket_of_each_value() -> None:
    """The lookup path (strings and None only) and the general path give each value's bucket_of."""
    rng = np.random.default_rng(5)
    p = categorical_profile("c", rng.choice(["a", "b", "c", "d", "e"], 500, p=[0.4, 0.3, 0.2, 0.07, 0.03]), top_n=3)
    pool = np.array(["a", "b", "c", "d", "e", "zzz", "", "__other__", "__missing__", None], dtype=object)
    strings = pool[rng.integers(0, len(pool), 2000)].tolist()
    assert p.bin_index(strings).tolist() == [p.bucket_of(v) for v in strings]
    mixed = [*strings[:50], 7, True, 1.5, float("nan")]  # not only strings: the general path
    assert p.bin_index(mixed).tolist() == [p.bucket_of(v) for v in mixed]
    assert p.bin_index([]).tolist() == []


def test_categorical_plain_means_every_value_was_a_kept_string_or_a_missing_marker() -> None:
    p = categorical_profile("c", ["a"] * 5 + ["b"] * 3 + ["c"], top_n=2)  # keeps a, b; c in other_values
    for values in (["a", "b", "c"], ["a", None, ""], []):
        slots, plain = p.bin_index_plain(values)
        assert plain and slots.tolist() == [p.bucket_of(v) for v in values]
    # a value that needs converting (True -> "true", 7 -> "7") or was never seen is not plain
    for values in (["a", True], ["a", 7], ["a", "never-seen"], [["a"]]):
        slots, plain = p.bin_index_plain(values)
        assert not plain and slots.tolist() == [p.bucket_of(v) for v in values], values


def test_categorical_other_list_truncated_means_unknown_values_go_to_other() -> None:
    values = [f"v{i}" for i in range(MAX_OTHER_VALUES + 5)]
    p = categorical_profile("c", values, top_n=1)
    assert p.other_truncated
    assert p.bin_index(["never-seen"]).tolist() == [len(p.categories)]  # __other__, not __unseen__


def test_categorical_all_missing_is_defined() -> None:
    p = categorical_profile("c", [None, ""], top_n=3)
    assert p.categories == () and p.n == 0 and p.n_missing == 2
    assert p.bin_index(["x"]).tolist() == [1]  # __unseen__


def test_categorical_float_is_rejected() -> None:
    with pytest.raises(InputError, match="'c'"):
        categorical_profile("c", ["a", 1.5])


# -- build from several sources ------------------------------------------------------------
def test_build_from_dataframe_equals_build_from_arrays() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    x[::17] = np.nan
    c = rng.choice(["u", "v", "w"], size=300).astype(object)
    c[::13] = None
    a = ReferenceProfile.build({"x": x, "c": c}, categorical=["c"])
    b = ReferenceProfile.build(pd.DataFrame({"x": x, "c": c}), categorical=["c"])
    assert a.fingerprint == b.fingerprint
    assert _num(a, "x").n_missing == len(x[::17])
    assert _cat(a, "c").n_missing == len(c[::13])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fine_bins": 1}, "fine_bins"),
        ({"coarse_bins": 200}, "coarse_bins"),
        ({"coarse_bins": 1}, "coarse_bins"),
        ({"top_n": 0}, "top_n"),
        ({"features": []}, "features"),
    ],
)
def test_build_settings_are_checked(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ReferenceProfile.build({"x": [1.0, 2.0]}, **kwargs)  # type: ignore[arg-type]


def test_build_names_missing_columns() -> None:
    with pytest.raises(InputError, match=r"\['y'\]"):
        ReferenceProfile.build({"x": [1.0]}, features=["x", "y"])


# -- JSON round-trip and fingerprint ---------------------------------------------------------
finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)
numeric_values = st.lists(st.one_of(finite, st.none(), st.just(math.nan), st.just(math.inf)), min_size=1, max_size=80)
cat_values = st.lists(
    st.one_of(st.sampled_from(["a", "b", "c", "d", "é", ""]), st.none(), st.integers(0, 3)), min_size=1
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    x=numeric_values,
    fine=st.integers(2, 30),
    data=st.data(),
)
def test_json_round_trip_keeps_profile_and_fingerprint(x: list[float | None], fine: int, data: st.DataObject) -> None:
    n = len(x)
    c = data.draw(st.lists(st.sampled_from(["a", "b", "c", None, "", 3]), min_size=n, max_size=n))
    coarse = data.draw(st.integers(2, fine))
    top_n = data.draw(st.integers(1, 4))
    ref = ReferenceProfile.build(
        {"x": x, "c": c},
        categorical=["c"],
        fine_bins=fine,
        coarse_bins=coarse,
        top_n=top_n,
        keep_values=50,
        calibrate=False,  # (the calibration's own round trip: tests/unit/test_calibration.py)
    )
    text = ref.to_json()
    back = ReferenceProfile.from_json(text)
    assert back == ref
    assert back.fingerprint == ref.fingerprint
    assert back.to_json() == text
    # the fingerprint is a hash of the canonical content, independently recomputed
    import hashlib

    doc = json.loads(text)
    content = {k: doc[k] for k in ("kind", "schema_version", "settings", "n_rows", "features", "calibration")}
    canon = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert ref.fingerprint == "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def test_fingerprint_ignores_metadata_but_not_counts() -> None:
    a = ReferenceProfile.build({"x": [1.0, 2.0, 3.0]}, metadata={"source": "a"})
    b = ReferenceProfile.build({"x": [1.0, 2.0, 3.0]}, metadata={"source": "b"})
    c = ReferenceProfile.build({"x": [1.0, 2.0, 4.0]})
    assert a.fingerprint == b.fingerprint != c.fingerprint


def _saved(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build({"x": rng.normal(size=200), "c": ["a", "b"] * 100}, categorical=["c"])
    path = tmp_path / "reference.json"
    ref.save(path)
    assert ReferenceProfile.load(path) == ref
    return path, json.loads(path.read_text())


def test_edited_reference_fails_with_fingerprint_mismatch(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    doc["features"]["x"]["counts"][3] += 1  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceFormatError, match="fingerprint mismatch"):
        ReferenceProfile.load(path)


def test_reference_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    doc["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceFormatError, match=rf"schema_version {SCHEMA_VERSION + 1}.*rebuild"):
        ReferenceProfile.load(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(kind="something"), "not a streamdrift reference"),
        (lambda d: d.pop("settings"), "malformed"),
        (lambda d: d["features"]["x"].update(type="weird"), "unknown type"),
        (lambda d: d["features"]["x"]["counts"].pop(), "edges and counts"),
        (lambda d: d.update(features=[1, 2]), "malformed"),
    ],
)
def test_malformed_reference_errors_are_clear(tmp_path: Path, mutate: object, match: str) -> None:
    path, doc = _saved(tmp_path)
    mutate(doc)  # type: ignore[operator]
    doc.pop("fingerprint", None)
    path.write_text(json.dumps(doc))
    with pytest.raises(ReferenceFormatError, match=match):
        ReferenceProfile.load(path)


def test_unreadable_or_non_json_reference(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFormatError, match="cannot read"):
        ReferenceProfile.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReferenceFormatError, match="not valid JSON"):
        ReferenceProfile.load(bad)


def test_select_restricts_features_and_rejects_unknown() -> None:
    ref = ReferenceProfile.build({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    assert list(ref.select(["y"]).features) == ["y"]
    with pytest.raises(ConfigError, match="'z'"):
        ref.select(["z"])


def test_boolean_dataframe_column_as_categorical() -> None:
    df = pd.DataFrame({"flag": [True, False, True, True], "x": [1.0, 2.0, 3.0, 4.0]})
    ref = ReferenceProfile.build(df, categorical=["flag"])
    p = _cat(ref, "flag")
    assert p.categories == ("true", "false") and p.counts == (3, 1, 0, 0)
    assert p.bin_index([np.bool_(False), True]).tolist() == [1, 0]


def test_huge_integer_categories() -> None:
    with pytest.raises(InputError, match="too long"):
        categorical_profile("c", ["a", 10**5000])  # beyond Python's int-to-str limit
    p = categorical_profile("c", ["a", 12, 10**30])
    i12 = p.categories.index("12")
    assert p.bin_index([10**5000, 12, "12", 10**30]).tolist() == [
        p.n_bins + 1,
        i12,
        i12,
        p.categories.index(str(10**30)),
    ]
