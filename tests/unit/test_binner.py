"""The lookup-table binner equals searchsorted(edges, x, "right") exactly, on every kind of reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.histogram import FeatureColumns, Layout, NumericBinner
from detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile, quantile_edges

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(20261124)


def _profile(name: str, edges: np.ndarray) -> NumericProfile:
    edges_t = tuple(float(e) for e in edges)
    return NumericProfile(name, edges_t, (1,) * (len(edges_t) + 1), (0,), 0, 0)


def _expected(profiles: list[NumericProfile], offsets: list[int], x: np.ndarray) -> np.ndarray:
    """Independent: one searchsorted per feature, then missing / invalid slots."""
    out = np.empty(x.shape, dtype=np.int64)
    for j, (p, off) in enumerate(zip(profiles, offsets, strict=True)):
        col = x[:, j]
        idx = np.searchsorted(np.asarray(p.edges), col, side="right") + off
        idx[np.isnan(col)] = off + p.n_bins
        idx[np.isinf(col)] = off + p.n_bins + 1
        out[:, j] = idx
    return out


EDGE_SETS = {
    "normal": quantile_edges(RNG.normal(size=20_000), 100),
    "lognormal": quantile_edges(RNG.lognormal(0, 2.5, size=20_000), 100),
    "cauchy": quantile_edges(RNG.standard_cauchy(size=20_000), 100),
    "poisson": quantile_edges(RNG.poisson(3.0, size=20_000).astype(float), 100),
    "constant": quantile_edges(np.full(100, 3.0), 100),
    "two_points": quantile_edges(np.array([0.0] * 50 + [1.0] * 50), 100),
    "tiny_span": tuple(1e-300 * (1 + np.arange(50) / 1e3)),
    "huge_span": (-1e308, -1e300, 0.0, 1e300, 1e308),
    "crowded": (0.0, *np.nextafter(0.0, 1.0) * np.arange(1, 12), 1.0),  # 12 subnormal edges in one cell
    "empty": (),
    "one_edge": (2.5,),
    "negative_zero": (-1.0, -0.0, 1.0),
}


def _probe_values(edges: tuple[float, ...], n: int) -> np.ndarray:
    """Values on, just below and just above every edge, random values around them, and extremes."""
    e = np.asarray(edges, dtype=np.float64)
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, np.inf, -np.inf, np.nan, 1.0, -1.0])
    with np.errstate(over="ignore"):
        parts = [e, np.nextafter(e, np.inf), np.nextafter(e, -np.inf), special]
    if len(e):
        lo, hi = float(e.min()), float(e.max())
        span = hi - lo if hi > lo else 1.0
        if math.isfinite(2 * span + lo) and math.isfinite(hi + span):
            parts.append(RNG.uniform(lo - span, hi + span, size=n))
        else:  # a span near the float range: random edges mixed at random scales instead
            parts.append(RNG.choice(e, size=n) * RNG.uniform(-1, 1, size=n))
    parts.append(RNG.normal(size=n) * 10)
    return RNG.permutation(np.concatenate(parts))


@pytest.mark.parametrize("name", sorted(EDGE_SETS))
def test_binner_equals_searchsorted(name: str) -> None:
    edges = np.asarray(EDGE_SETS[name], dtype=np.float64)
    profiles = [_profile(name, edges), _profile("normal", np.asarray(EDGE_SETS["normal"]))]
    offsets = [7, 7 + profiles[0].slot_size]
    binner = NumericBinner(profiles, offsets)
    values = _probe_values(tuple(edges), 5000)
    other = RNG.normal(size=len(values))
    x = np.column_stack([values, other])
    assert np.array_equal(binner.indices(x), _expected(profiles, offsets, x))
    wide = np.full((len(x), 5), -1, dtype=np.int64)  # into columns of a wider matrix (as the layout does)
    binner.indices(x, wide[:, 1:3])
    assert np.array_equal(wide[:, 1:3], _expected(profiles, offsets, x)) and (wide[:, [0, 3, 4]] == -1).all()


def test_crowded_edges_keep_searchsorted_and_regular_ones_use_the_table() -> None:
    crowded = _profile("c", np.asarray(EDGE_SETS["crowded"]))
    normal = _profile("n", np.asarray(EDGE_SETS["normal"]))
    binner = NumericBinner([normal, crowded, normal], [0, 200, 400])
    assert [j for j, _e, _o in binner.slow] == [1]
    assert binner.fast_cols.tolist() == [0, 2]
    assert binner.depth == 1  # a normal reference's 99 edges: one per cell on the coarsest grid
    x = np.column_stack(
        [RNG.normal(size=3000), _probe_values(EDGE_SETS["crowded"], 2900)[:3000], RNG.normal(size=3000)]
    )
    assert np.array_equal(binner.indices(x), _expected([normal, crowded, normal], [0, 200, 400], x))


@settings(max_examples=300, deadline=None)
@given(
    edges=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=0, max_size=40, unique=True),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=60),
)
def test_binner_equals_searchsorted_on_arbitrary_edges(edges: list[float], values: list[float]) -> None:
    e = np.unique(np.asarray(edges, dtype=np.float64))  # sorted, as a profile's edges are
    if len(e) != len({float(v) for v in e}):  # 0.0 and -0.0 collapse in a profile too
        e = np.asarray(sorted({float(v) for v in e}))
    p = _profile("x", e)
    with np.errstate(over="ignore"):  # nextafter(max float, inf) is inf: a fine probe
        near = [np.nextafter(e, np.inf), np.nextafter(e, -np.inf)]
    probe = np.concatenate([np.asarray(values, dtype=np.float64), e, *near])
    x = probe.reshape(-1, 1)
    assert np.array_equal(NumericBinner([p], [3]).indices(x), _expected([p], [3], x))


def test_layout_uses_the_decoder_matrix_and_the_columns_alike() -> None:
    cols = {"a": RNG.normal(size=500), "b": RNG.lognormal(size=500)}
    ref = ReferenceProfile.build({"a": RNG.normal(size=2000), "b": RNG.lognormal(size=2000)})
    layout = Layout(ref, ["b", "a"])  # feature order differs from the matrix order
    plain = layout.flat_indices(cols, 500)
    matrix = np.column_stack([cols["b"], cols["a"]])
    carried = FeatureColumns({"a": matrix[:, 1], "b": matrix[:, 0]}, matrix, ("b", "a"))
    assert np.array_equal(layout.flat_indices(carried, 500), plain)
    stale = FeatureColumns(cols, np.zeros((500, 2)), ("a", "b"))  # not the layout's numeric order: columns win
    assert np.array_equal(layout.flat_indices(stale, 500), plain)
    for j, name in enumerate(layout.features):
        p = ref.features[name]
        assert isinstance(p, NumericProfile)
        want = np.searchsorted(np.asarray(p.edges), cols[name], side="right") + layout.offsets[name]
        assert np.array_equal(plain.reshape(500, -1)[:, j], want)


def test_coded_columns_are_their_slots_after_the_numeric_ones() -> None:
    """Columns of slots (a categorical's, carried by the decoder) come out as offset + slot, in the
    same passes as the numeric columns, however many slots they have against the numeric grid."""
    normal = _profile("n", np.asarray(EDGE_SETS["normal"]))
    crowded = _profile("c", np.asarray(EDGE_SETS["crowded"]))  # a searchsorted column among them
    many = 5000  # more slots than the numeric grid has cells
    binner = NumericBinner([normal, crowded], [0, 200], [(4, 300), (many, 400)])
    assert binner.k == 4 and [j for j, _e, _o in binner.slow] == [1]
    n = 3000
    num = np.column_stack([_probe_values(EDGE_SETS["normal"], n)[:n], _probe_values(EDGE_SETS["crowded"], n)[:n]])
    slots = np.column_stack([RNG.integers(0, 4, size=n), RNG.integers(0, many, size=n)])
    slots[:2] = [[0, 0], [3, many - 1]]  # the first and last slot of each
    x = np.column_stack([num, slots.astype(np.float64)])
    want = np.column_stack([_expected([normal, crowded], [0, 200], num), slots + np.array([300, 400])])
    assert np.array_equal(binner.indices(x), want)
    only = NumericBinner([], [], [(4, 10)])  # slots alone
    assert only.indices(np.array([[0.0], [3.0], [1.0]])).ravel().tolist() == [10, 13, 11]
    x[5, 2] = np.nan  # a slot column is never missing: refused, not binned somewhere
    with pytest.raises(ValueError, match="coded column"):
        binner.indices(x)


def test_layout_bins_a_whole_matrix_of_values_and_slots_like_the_columns() -> None:
    n = 2000
    train = {"a": RNG.normal(size=4000), "b": RNG.lognormal(size=4000), "c": RNG.choice(list("pqrs"), size=4000)}
    ref = ReferenceProfile.build(train, categorical=["c"])
    cols: dict[str, object] = {
        "a": RNG.normal(size=n),
        "b": RNG.lognormal(size=n),
        "c": [str(v) for v in RNG.choice(list("pqrst"), size=n)],  # "t": unseen
    }
    cols["a"][:3] = [np.nan, np.inf, -np.inf]  # type: ignore[index]
    cols["c"][3:5] = [None, ""]  # type: ignore[index]
    p = ref.features["c"]
    assert isinstance(p, CategoricalProfile)
    slots = p.bin_index(cols["c"])
    whole = np.column_stack([cols["a"], cols["b"], slots.astype(np.float64)])
    for order in (["a", "b", "c"], ["c", "b", "a"], ["b", "c", "a"]):
        layout = Layout(ref, order)
        plain = layout.flat_indices(cols, n)
        carried = FeatureColumns(cols, whole, ("a", "b", "c"), None, ref, coded=("c",))
        assert np.array_equal(layout.flat_indices(carried, n), plain), order
        assert (layout._whole is not None) == (order == ["a", "b", "c"])  # binned whole only in its order
    other = ReferenceProfile.build({**train, "c": RNG.choice(list("xyz"), size=4000)}, categorical=["c"])
    layout = Layout(other, ["a", "b", "c"])  # slots of another reference's buckets: looked up again
    stale = FeatureColumns(cols, whole, ("a", "b", "c"), None, ref, coded=("c",))
    assert np.array_equal(layout.flat_indices(stale, n), layout.flat_indices(cols, n))
    with pytest.raises(ValueError, match="not the last"):
        FeatureColumns(cols, whole, ("c", "a", "b"), None, ref, coded=("c",))


def test_a_categorical_wider_than_the_finest_grid_is_not_binned_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A categorical with more slots than the finest numeric grid has cells would widen the whole
    binner's table for every feature: that layout keeps per-feature categorical binning. (The grids
    are made small here so that a categorical of a hundred slots is that wide.)"""
    monkeypatch.setattr(NumericBinner, "GRIDS", (16, 64))
    train = {"a": RNG.normal(size=4000), "c": [f"v{i % 120}" for i in range(4000)]}
    narrow = ReferenceProfile.build(train, categorical=["c"], top_n=40)  # 44 slots: binned whole
    wide = ReferenceProfile.build(train, categorical=["c"], top_n=100)  # 104 slots > 64 + 2
    cols: dict[str, object] = {"a": RNG.normal(size=300), "c": [f"v{i}" for i in RNG.integers(0, 130, 300)]}
    for ref, binned_whole in ((narrow, True), (wide, False)):
        p = ref.features["c"]
        assert isinstance(p, CategoricalProfile)
        layout = Layout(ref, ["a", "c"])
        whole = np.column_stack([cols["a"], p.bin_index(cols["c"]).astype(np.float64)])
        carried = FeatureColumns(cols, whole, ("a", "c"), None, ref, coded=("c",))
        assert np.array_equal(layout.flat_indices(carried, 300), layout.flat_indices(cols, 300))
        assert (layout._whole is not None) == binned_whole, p.slot_size
