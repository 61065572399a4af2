"""Fixtures of the Spark tests: one local[2] SparkSession per session, and seeded event data.

The session is configured here as a user would configure spark-submit (the jobs hard-code
no Spark settings): local[2], a small shuffle, no UI, and the JIT option that keeps wide
aggregations compiled. ``PYSPARK_PYTHON`` points at this interpreter, whose environment has
confluent-kafka and the project, or Python workers cannot start.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.reference import ReferenceProfile

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.driver.extraJavaOptions": "-XX:-DontCompileHugeMethods",
    "spark.sql.session.timeZone": "UTC",
    "spark.python.worker.reuse": "true",
    # small file splits, so even test-sized inputs span several partitions
    "spark.sql.files.maxPartitionBytes": "262144",
    "spark.sql.files.openCostInBytes": "65536",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # loopback only
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("streamdrift-tests")
    for k, v in SPARK_CONF.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def make_events(
    n: int,
    *,
    seed: int,
    start_ms: int = T0,
    step_ms: int = 250,
    drift_from: int | None = None,
    n_segments: int = 3,
    bad_every: int = 0,
    bad_kind: str = "type",
) -> list[Any]:
    """In-order events (non-decreasing time, ties included); from ``drift_from`` on ``x`` shifts
    by one standard deviation and ``c`` leans to ``"b"``. Every ``bad_every``-th row is invalid:
    ``x`` a string (``bad_kind="type"``) or no event time (``"time"``, representable in Parquet)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = rng.exponential(size=n)
    c = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    seg = rng.integers(0, n_segments, size=n)
    score = rng.uniform(size=n)
    label = (rng.uniform(size=n) < score).astype(int)
    out: list[Any] = []
    for i in range(n):
        drifted = drift_from is not None and i >= drift_from
        ev: dict[str, Any] = {
            "timestamp": start_ms + (i // 2) * 2 * step_ms,  # pairs share a timestamp
            "region": f"r{int(seg[i])}",
            "score": float(score[i]),
            "label": int(1 - label[i]) if drifted else int(label[i]),
            "features": {
                "x": float(x[i] + (1.0 if drifted else 0.0)),
                "y": None if i % 17 == 0 else float(y[i]),
                "c": "b" if drifted and i % 2 == 0 else str(c[i]),
            },
        }
        if bad_every and i % bad_every == bad_every - 1:
            if bad_kind == "type":
                ev["features"]["x"] = "not a number"
            else:
                ev["timestamp"] = None
        out.append(ev)
    return out


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def write_monitor(tmp: Path, *, seed: int = 11, **overrides: Any) -> Path:
    """A reference (seeded, pre-drift distribution) and a monitor YAML using it."""
    rng = np.random.default_rng(seed)
    n = 20_000
    ref = ReferenceProfile.build(
        {
            "x": rng.normal(size=n),
            "y": rng.exponential(size=n),
            "c": rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]).astype(object),
        },
        categorical=["c"],
        fine_bins=50,
        coarse_bins=10,
    )
    ref.save(tmp / "reference.json")
    cfg: dict[str, Any] = {
        "monitor": "spark-test",
        "reference": "reference.json",
        "events": {"time_field": "timestamp", "prediction_field": "score", "label_field": "label"},
        "window": {"kind": "tumbling", "size": "1m"},
        "statistics": {"min_events": 50},
        "concept": {"detector": "adwin", "params": {"delta": 0.002}},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
