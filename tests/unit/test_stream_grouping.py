"""The window manager's grouping of (segment, pane) pairs equals ``np.unique(..., axis=0)``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.service.windows import unique_pairs

pytestmark = pytest.mark.unit


def _expected(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    return uniq, inv.reshape(-1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-5, 300), st.one_of(st.integers(-3, 3), st.integers(-(2**40), 2**40))),
        max_size=60,
    )
)
def test_unique_pairs_equals_numpy_unique_rows(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    uniq, inv = unique_pairs(a, b)
    if not pairs:
        assert uniq.shape == (0, 2) and inv.shape == (0,)
        return
    e_uniq, e_inv = _expected(a, b)
    np.testing.assert_array_equal(uniq, e_uniq)
    np.testing.assert_array_equal(inv, e_inv)
    assert uniq.dtype == np.int64 and inv.dtype == np.int64


def test_unique_pairs_dense_and_sparse_paths_agree() -> None:
    rng = np.random.default_rng(11)
    seg = rng.integers(0, 101, 20_000)
    pane = rng.integers(28_000_000, 28_000_003, 20_000)  # the dense path: a small key space
    far = pane.copy()
    far[::2] += 10**12  # the sparse path: a key space too large for a bincount
    for b in (pane, far):
        uniq, inv = unique_pairs(seg, b)
        e_uniq, e_inv = _expected(seg, b)
        np.testing.assert_array_equal(uniq, e_uniq)
        np.testing.assert_array_equal(inv, e_inv)
