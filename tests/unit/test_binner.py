"""The lookup-table binner equals searchsorted(edges, x, "right") exactly, on every kind of reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.histogram import FeatureColumns, Layout, NumericBinner
from detectors.reference import NumericProfile, ReferenceProfile, quantile_edges

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
