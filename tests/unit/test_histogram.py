"""Window histograms: bin placement, merge = add, grouped histograms, snapshots."""

from __future__ import annotations

import bisect
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.exceptions import ConfigError, ReferenceMismatchError, SnapshotError
from detectors.histogram import Layout, WindowState
from detectors.reference import NumericProfile, ReferenceProfile

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(10)
REF = ReferenceProfile.build(
    {
        "x": RNG.normal(size=2000),
        "k": RNG.poisson(2.0, size=2000).astype(float),
        "c": RNG.choice(["a", "b", "c", "d"], size=2000, p=[0.5, 0.3, 0.15, 0.05]).tolist(),
    },
    categorical=["c"],
    fine_bins=20,
    coarse_bins=5,
    top_n=3,
)
LAYOUT = Layout(REF, ["x", "k", "c"])

num = st.one_of(
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 9.0]),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
)
cat = st.one_of(st.sampled_from(["a", "b", "c", "d", "zz", ""]), st.none())
row = st.tuples(num, num, cat)


def _cols(rows: list[tuple[float, float, str | None]]) -> dict[str, object]:
    return {
        "x": np.array([r[0] for r in rows], dtype=np.float64),
        "k": np.array([r[1] for r in rows], dtype=np.float64),
        "c": [r[2] for r in rows],
    }


def _expected_counts(rows: list[tuple[float, float, str | None]]) -> np.ndarray:
    """Independent binning with bisect over the stored edges and the documented slot order."""
    out = np.zeros(LAYOUT.size, dtype=np.int64)
    for r in rows:
        for j, name in enumerate(("x", "k")):
            p = REF.features[name]
            assert isinstance(p, NumericProfile)
            v = r[j]
            if math.isnan(v):
                slot = p.n_bins
            elif math.isinf(v):
                slot = p.n_bins + 1
            else:
                slot = bisect.bisect_right(list(p.edges), v)
            out[LAYOUT.offsets[name] + slot] += 1
        c = r[2]
        p = REF.features["c"]
        cats = list(p.categories)  # type: ignore[union-attr]
        if c is None or c == "":
            slot = len(cats) + 2
        elif c in cats:
            slot = cats.index(c)
        elif c in p.other_values:  # type: ignore[union-attr]
            slot = len(cats)
        else:
            slot = len(cats) + 1
        out[LAYOUT.offsets["c"] + slot] += 1
    return out


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(st.lists(row, max_size=40))
def test_histogram_matches_independent_binning(rows: list[tuple[float, float, str | None]]) -> None:
    h = LAYOUT.histogram(_cols(rows))
    assert h.n_events == len(rows)
    assert np.array_equal(h.counts, _expected_counts(rows))


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(st.lists(row, max_size=30), st.lists(row, max_size=30))
def test_merge_is_add(a: list[tuple[float, float, str | None]], b: list[tuple[float, float, str | None]]) -> None:
    merged = LAYOUT.histogram(_cols(a)) + LAYOUT.histogram(_cols(b))
    union = LAYOUT.histogram(_cols(a + b))
    assert np.array_equal(merged.counts, union.counts)
    assert merged.n_events == union.n_events
    # in-place merge agrees
    s = LAYOUT.empty()
    for part in (a, b):
        h = LAYOUT.histogram(_cols(part))
        s.add_(h.counts, h.n_events)
    assert np.array_equal(s.counts, union.counts)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(row, st.integers(0, 4)), max_size=50))
def test_grouped_histograms_rows_are_group_histograms_and_sum_to_union(
    items: list[tuple[tuple[float, float, str | None], int]],
) -> None:
    rows = [r for r, _ in items]
    group = np.array([g for _, g in items], dtype=np.int64)
    grouped = LAYOUT.grouped_histograms(_cols(rows), group, 5)
    assert grouped.shape == (5, LAYOUT.size)
    assert np.array_equal(grouped.sum(axis=0), LAYOUT.histogram(_cols(rows)).counts)
    for g in range(5):
        sub = [r for r, gg in items if gg == g]
        assert np.array_equal(grouped[g], LAYOUT.histogram(_cols(sub)).counts)


def test_value_on_an_edge_goes_to_the_bin_above() -> None:
    p = REF.features["x"]
    assert isinstance(p, NumericProfile)
    e = p.edges[3]
    assert p.bin_index(np.array([e, np.nextafter(e, -np.inf)])).tolist() == [4, 3]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(row, max_size=30))
def test_snapshot_round_trip_through_json(rows: list[tuple[float, float, str | None]]) -> None:
    h = LAYOUT.histogram(_cols(rows))
    back = WindowState.from_snapshot(json.loads(json.dumps(h.snapshot())), LAYOUT)
    assert np.array_equal(back.counts, h.counts)
    assert back.n_events == h.n_events
    assert back.fingerprint == h.fingerprint


def test_snapshot_against_another_reference_is_refused() -> None:
    other = Layout(ReferenceProfile.build({"x": np.arange(50.0)}), ["x"])
    snap = other.histogram({"x": np.array([1.0])}).snapshot()
    with pytest.raises(ReferenceMismatchError, match="refusing to resume"):
        WindowState.from_snapshot(snap, LAYOUT)
    with pytest.raises(ReferenceMismatchError):
        _ = other.empty() + LAYOUT.empty()


def test_bad_snapshots() -> None:
    snap = LAYOUT.histogram(_cols([(0.1, 1.0, "a")])).snapshot()
    with pytest.raises(SnapshotError, match="version"):
        WindowState.from_snapshot({**snap, "version": 99}, LAYOUT)
    with pytest.raises(SnapshotError, match="outside"):
        WindowState.from_snapshot({**snap, "counts": [[LAYOUT.size, 1]]}, LAYOUT)


def test_layout_unknown_feature_names_it() -> None:
    with pytest.raises(ConfigError, match="'nope'"):
        Layout(REF, ["x", "nope"])


def test_empty_group_input() -> None:
    out = LAYOUT.grouped_histograms(_cols([]), np.zeros(0, dtype=np.int64), 3)
    assert out.shape == (3, LAYOUT.size) and out.sum() == 0
