"""`streamdrift reference build --engine spark` as a user runs it, against the in-memory build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detectors.reference import NumericProfile, ReferenceProfile
from stream.files import read_columns
from tests.spark.conftest import make_events, write_jsonl
from tests.spark.test_spark_submit import _env

pytestmark = pytest.mark.spark


def test_reference_build_engine_spark_matches_the_in_memory_build(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "baseline.jsonl", make_events(4000, seed=23))
    cols = read_columns(data)
    numeric = [c for c, v in cols.items() if c not in ("timestamp",) and isinstance(v[0], float)]
    assert numeric, cols.keys()
    out = tmp_path / "ref.json"
    cmd = [sys.executable, "-m", "stream.cli", "reference", "build", "--engine", "spark", "--input", str(data)]
    cmd += ["--out", str(out), "--features", ",".join(numeric)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spark_ref = ReferenceProfile.load(out)
    local_ref = ReferenceProfile.build(cols, features=numeric)
    assert list(spark_ref.features) == numeric
    for name in numeric:
        s, loc = spark_ref.features[name], local_ref.features[name]
        assert isinstance(s, NumericProfile) and isinstance(loc, NumericProfile)
        assert (s.n, s.n_missing) == (loc.n, loc.n_missing)
        x = np.sort(np.asarray([v for v in cols[name] if v is not None], dtype=np.float64))
        # each Spark edge sits at (nearly) the same rank as the in-memory quantile: the documented
        # bound is relative_error (1e-4) of the ranks plus the 1/N granularity of a sample quantile
        tol = 1e-4 + 2.0 / len(x)
        targets = {round(i / 100, 6) for i in range(1, 100)}
        for e in s.edges:
            share = np.searchsorted(x, e, side="left") / len(x)
            assert min(abs(share - t) for t in targets) <= tol, (name, e, share)
        # the counts are exact for the edges Spark chose
        want = np.bincount(np.searchsorted(np.asarray(s.edges), x, side="right"), minlength=s.n_bins)
        assert list(s.counts) == want.tolist()


def test_reference_build_engine_spark_refuses_keep_values(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "baseline.jsonl", make_events(100, seed=1))
    cmd = [sys.executable, "-m", "stream.cli", "reference", "build", "--engine", "spark", "--input", str(data)]
    cmd += ["--out", str(tmp_path / "r.json"), "--keep-values", "10"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--keep-values" in proc.stderr
