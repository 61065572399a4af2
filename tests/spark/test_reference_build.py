"""The Spark reference build against the in-memory build on the same seeded data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile, discrete_edges
from jobs.reference_build import build_reference, read_table

pytestmark = pytest.mark.spark

N = 100_000


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    rng = np.random.default_rng(42)
    x = rng.normal(size=N)
    y = rng.exponential(size=N)
    x[::1000] = np.nan
    y[5::2000] = np.inf
    cols = {
        "x": x,
        "y": y,
        "k": rng.integers(0, 4, size=N).astype(float),  # discrete: a bin per value
        "c": np.where(rng.uniform(size=N) < 0.01, None, rng.choice(["a", "b", "c", "d"], size=N)).astype(object),
    }
    path = tmp_path_factory.mktemp("ref") / "baseline.parquet"
    pq.write_table(pa.table({k: pa.array(list(v) if k == "c" else v) for k, v in cols.items()}), path)
    return path, cols


def _cdf_error(profile: NumericProfile, values: np.ndarray, fine_bins: int) -> float:
    """Largest |share of finite values below edge i - i / fine_bins| (continuous data: no merged edges)."""
    v = np.sort(values[np.isfinite(values)])
    assert len(profile.edges) == fine_bins - 1
    shares = np.searchsorted(v, np.asarray(profile.edges), side="left") / v.size
    return float(np.max(np.abs(shares - np.arange(1, fine_bins) / fine_bins)))


@pytest.mark.parametrize("relative_error", [1e-4])
def test_spark_build_matches_in_memory_within_the_relative_error(
    spark: Any, baseline: tuple[Path, dict[str, Any]], relative_error: float
) -> None:
    path, cols = baseline
    df = read_table(spark, str(path))
    got = build_reference(df, ["x", "y", "k", "c"], categorical=["c"], relative_error=relative_error)
    want = ReferenceProfile.build(cols, features=["x", "y", "k", "c"], categorical=["c"])
    assert ReferenceProfile.from_json(got.to_json()).fingerprint == got.fingerprint
    assert got.n_rows == want.n_rows == N
    for f in ("x", "y"):
        g, w = got.features[f], want.features[f]
        assert isinstance(g, NumericProfile) and isinstance(w, NumericProfile)
        assert (g.n_missing, g.n_invalid) == (w.n_missing, w.n_invalid)
        assert g.n == w.n
        assert g.n_bins == w.n_bins == 100
        # counts are exact for the chosen edges
        finite = cols[f][np.isfinite(cols[f])]
        assert list(g.counts) == np.bincount(np.searchsorted(g.edges, finite, side="right"), minlength=100).tolist()
        # edges: within the relative error of the exact quantiles (in CDF terms), the in-memory ones within 1/N
        err = _cdf_error(g, cols[f], 100)
        assert err <= relative_error + 2 / finite.size, (f, err)
        assert _cdf_error(w, cols[f], 100) <= 2 / finite.size
    # discrete data (few distinct values): one bin per value, the same as the in-memory build
    k = cols["k"]
    gk, wk = got.features["k"], want.features["k"]
    assert isinstance(gk, NumericProfile) and isinstance(wk, NumericProfile)
    assert gk.edges == wk.edges == discrete_edges(np.unique(k))
    assert list(gk.counts) == list(wk.counts) == [0, *np.unique(k, return_counts=True)[1].tolist(), 0]
    gc, wc = got.features["c"], want.features["c"]
    assert isinstance(gc, CategoricalProfile) and isinstance(wc, CategoricalProfile)
    assert (gc.categories, gc.counts, gc.n_missing) == (wc.categories, wc.counts, wc.n_missing)
