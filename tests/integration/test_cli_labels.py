"""`streamdrift reference build` with a labelled baseline and `streamdrift backfill --labels` as
subprocesses on seeded files: the profile gains the baseline's performance, the backfill's
performance records equal the in-process engine's, and a drop in accuracy is flagged where it
happened, not before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from detectors.config import MonitorConfig
from detectors.engine import run_local_labels
from detectors.events import decode_events, decode_labels
from detectors.performance import FEATURE
from detectors.reference import ReferenceProfile
from stream.records import read_records

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).with_name("streamdrift")
T0 = 1_767_225_600_000
HOUR = 3_600_000


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "stream.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def scored(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(int)
    decided = np.where(rng.random(n) < accuracy, y, 1 - y)
    return np.clip(0.5 + (decided - 0.5) * rng.uniform(0.02, 1.0, n), 0.0, 1.0), y


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline with predictions and labels; 6 hours of predictions whose accuracy drops from 0.90
    to 0.80 at 3h; their labels 1 minute to 1 hour later, in arrival order."""
    tmp = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(2026)
    score, y = scored(rng, 20_000, 0.9)
    pq.write_table(
        pa.table({"x": rng.normal(size=20_000), "score": score, "label": y, "id": [f"b{i}" for i in range(20_000)]}),
        tmp / "baseline.parquet",
    )
    n = 30_000
    t = T0 + np.sort(rng.integers(0, 6 * HOUR, n))
    score, y = scored(rng, n, 0.9)
    after = t >= T0 + 3 * HOUR
    s2, y2 = scored(rng, int(after.sum()), 0.8)
    score[after], y[after] = s2, y2
    preds = [
        {"timestamp": int(t[i]), "id": f"p{i}", "score": float(score[i]), "features": {"x": float(rng.normal())}}
        for i in range(n)
    ]
    lt = t + rng.integers(60_000, HOUR, n)
    order = np.argsort(lt, kind="stable")
    labels = [{"timestamp": int(lt[i]), "id": f"p{i}", "label": int(y[i])} for i in order]
    labels.append({"timestamp": int(lt.max()), "id": "p1", "label": 7})  # rejected: not 0/1
    (tmp / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preds))
    (tmp / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    doc = {
        "monitor": "labels-test",
        "reference": "reference.json",
        "events": {"prediction_field": "score"},
        "window": {"size": "30m"},
        "labels": {"max_delay": "2h"},
    }
    (tmp / "monitor.yaml").write_text(yaml.safe_dump(doc))
    res = run(
        "reference", "build", "--input", "baseline.parquet", "--config", "monitor.yaml", "--out", "reference.json",
        "--calibration-replicates", "2000", cwd=tmp,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "performance (classification, 20000 labelled rows of 20000" in res.stdout
    return tmp


def test_reference_build_adds_the_baselines_performance(files: Path) -> None:
    ref = ReferenceProfile.load(files / "reference.json")
    assert list(ref.features) == ["x"]  # score, label and id are event fields, not features
    perf = ref.performance
    assert perf is not None and perf.calibration is not None
    assert perf.n_labelled == 20_000 and abs(perf.metrics["accuracy"] - 0.9) < 0.01  # type: ignore[operator]


def test_backfill_with_labels_flags_the_drop_where_it_happened(files: Path) -> None:
    res = run(
        "backfill", "--config", "monitor.yaml", "--input", "predictions.jsonl", "--labels", "labels.jsonl",
        "--output", "out.jsonl", "--quiet", cwd=files,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "1 of 30001 label events rejected (bad_type 1)" in res.stdout
    assert "labels: 30,000 joined, 0 timed out, 0 orphans" in res.stdout  # (the rejected one never joins)
    records = read_records(files / "out.jsonl")
    perf = [r for r in records if r["feature"] == FEATURE]
    acc = {r["window_start"]: r for r in perf if r["statistic"] == "accuracy"}
    assert len(acc) == 12
    flagged = sorted(w for w, r in acc.items() if r["drift"])
    assert flagged and flagged[0] == "2026-01-01T03:00:00.000Z"  # the first window after the drop
    assert all(r["drift"] is False for w, r in acc.items() if w < "2026-01-01T03:00:00.000Z")
    # the same as the engine in process
    config = MonitorConfig.from_mapping(yaml.safe_load((files / "monitor.yaml").read_text()), base_dir=files)
    reference = ReferenceProfile.load(files / "reference.json")
    rows = [json.loads(line) for line in (files / "predictions.jsonl").read_text().splitlines()]
    label_rows = [json.loads(line) for line in (files / "labels.jsonl").read_text().splitlines()]
    cols, _ = decode_events(rows, config, reference, ["x"], now_ms=T0 + 100 * HOUR)
    labels, _ = decode_labels(label_rows, config, now_ms=T0 + 100 * HOUR)
    expected, _ = run_local_labels(cols, labels, config, reference)
    assert [r for r in records if r["feature"] == FEATURE or r["statistic"] == "adwin"] == expected


def test_backfill_labels_need_a_labels_section(files: Path, tmp_path: Path) -> None:
    doc: dict[str, Any] = yaml.safe_load((files / "monitor.yaml").read_text())
    del doc["labels"]
    doc["reference"] = str(files / "reference.json")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    res = run(
        "backfill", "--config", "m.yaml", "--input", str(files / "predictions.jsonl"), "--labels",
        str(files / "labels.jsonl"), "--output", "o.jsonl", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2 and "--labels: the monitor config has no labels section" in res.stderr
