"""Calendar windows and window indexes through the command line (subprocesses).

* ``backfill`` with ``size: 1mo`` (and an ``offset``) over events that span several months: one
  window per calendar month, holding exactly the events python's datetime puts in that month;
* count windows whose times tie: each is its own line in the summary and its own window_index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.reference import ReferenceProfile
from stream.records import read_records

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).with_name("streamdrift")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "stream.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    ReferenceProfile.build({"x": rng.normal(size=3000).round(6)}, calibration_replicates=500).save(
        tmp_path / "reference.json"
    )
    return tmp_path


def _config(work: Path, window: dict[str, Any]) -> None:
    doc = {
        "monitor": "calendar",
        "reference": "reference.json",
        "events": {"time_field": "timestamp", "features_field": None},
        "window": window,
        "statistics": {"min_events": 20},
        "concept": {"detector": "none"},
    }
    (work / "monitor.yaml").write_text(yaml.safe_dump(doc))


def _month_of(t_ms: int, offset_ms: int) -> tuple[int, int]:
    dt = EPOCH + timedelta(milliseconds=t_ms - offset_ms)
    return dt.year, dt.month


@pytest.mark.parametrize("offset", ["0s", "6h"])
def test_backfill_gives_one_window_per_calendar_month(work: Path, offset: str) -> None:
    offset_ms = {"0s": 0, "6h": 6 * 3_600_000}[offset]
    _config(work, {"kind": "tumbling", "size": "1mo", "offset": offset})
    rng = np.random.default_rng(18)
    # 2023-12-20 .. 2024-04-10 (February 2024 has 29 days; future times are rejected), plus events on the boundaries
    lo, hi = _ms(datetime(2023, 12, 20, tzinfo=UTC)), _ms(datetime(2024, 4, 10, tzinfo=UTC))
    t = np.sort(rng.integers(lo, hi, size=1500, dtype=np.int64))
    edges = [datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3)] + [datetime(2024, 2, 29, 23, tzinfo=UTC)]
    extra = [_ms(e) + offset_ms + d for e in edges for d in (-1, 0)]
    t = np.sort(np.concatenate([t, np.array(extra, dtype=np.int64)]))
    rows = [{"timestamp": int(ti), "x": round(float(v), 6)} for ti, v in zip(t, rng.normal(size=len(t)), strict=True)]
    (work / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("backfill", "--config", "monitor.yaml", "--input", "events.jsonl", "--output", "out.jsonl", cwd=work)
    assert res.returncode == 0, res.stderr
    records = [r for r in read_records(work / "out.jsonl") if r["statistic"] == "psi"]
    # the independent computation: python's datetime puts each event in its month
    want = Counter(_month_of(int(ti), offset_ms) for ti in t)
    got = {}
    for r in records:
        start = datetime.fromisoformat(r["window_start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(r["window_end"].replace("Z", "+00:00"))
        first = datetime(start.year, start.month, 1, tzinfo=UTC) + timedelta(milliseconds=offset_ms)
        assert start == first  # the 1st of the month (+ the offset)
        nxt = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        assert end == nxt + timedelta(milliseconds=offset_ms)
        assert r["window_index"] == (start.year - 1970) * 12 + start.month - 1
        got[(start.year, start.month)] = r["n_window"] + r["n_missing"]
    assert got == dict(want)
    assert len(got) == 5 and len(records) == 5  # Dec 2023 .. Apr 2024, one record each


def test_tied_count_windows_are_a_line_each_in_the_summary(work: Path) -> None:
    """20 count windows of 50 events that all carry the same time: the summary printed 1 line."""
    _config(work, {"kind": "count", "size": "50"})
    rng = np.random.default_rng(4)
    t0 = _ms(datetime(2026, 1, 1, tzinfo=UTC))
    rows = [{"timestamp": t0, "x": round(float(v), 6)} for v in rng.normal(size=1000)]
    (work / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("backfill", "--config", "monitor.yaml", "--input", "events.jsonl", "--output", "out.jsonl", cwd=work)
    assert res.returncode == 0, res.stderr
    records = read_records(work / "out.jsonl")
    assert sorted({r["window_index"] for r in records}) == list(range(20))
    lines = res.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("window start"))
    body = [line for line in lines[head + 1 :] if line.startswith("2026-01-01T00:00:00")]
    assert len(body) == 20
    assert [int(line.split()[1]) for line in body] == list(range(20))  # the "#" column
