"""A new user's first hour, as subprocesses: ordinary mistakes fail loudly with a fix, flat and
nested files both work, a bad cell costs its row (with its true row number) and not the file,
event fields are not features, and output files are readable by the user's group.

Expected records are computed in process from the Python rows the files were written from
(``run_local`` on ``decode_events``), never typed in.
"""

from __future__ import annotations

import csv
import json
import os
import stat
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
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.records import read_records

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).with_name("streamdrift")
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
REPLICATES = "500"  # calibration replicates of the test references (the minimum: speed)


def run(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "stream.cli"]

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env, preexec_fn=set_umask
    )


def _baseline(seed: int, n: int = 3000) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=n).round(6),
        "k": rng.poisson(3.0, size=n).astype(float),
        "c": rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2]).astype(object),
    }


def _events(seed: int, n: int = 2400) -> list[dict[str, Any]]:
    """Flat rows, one every 3 s from T0 (two hours): x shifts by 0.8 sigma in the second hour."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        late = i >= n // 2
        out.append(
            {
                "timestamp": T0 + i * 3000,
                "country": str(rng.choice(["fr", "de"])),
                "x": round(float(rng.normal(0.8 if late else 0.0, 1.0)), 6),
                "k": float(rng.poisson(3.0)),
                "c": str(rng.choice(["red", "green", "blue"], p=[0.5, 0.3, 0.2])),
            }
        )
    return out


def _nested(row: dict[str, Any]) -> dict[str, Any]:
    return {"timestamp": row["timestamp"], "country": row["country"], "features": {f: row[f] for f in "xkc"}}


def _csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _jsonl(path: Path, rows: list[Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config(tmp: Path, **events: Any) -> Path:
    """The shipped example's event settings (nested ``features``), with the test's fields."""
    doc = {
        "monitor": "first-hour",
        "reference": "reference.json",
        "events": {"time_field": "timestamp", "features_field": "features", "segment_fields": ["country"], **events},
        "features": {"categorical": ["c"]},
        "window": {"kind": "tumbling", "size": "20m"},
        "statistics": {"min_events": 50},
        "concept": {"detector": "none"},
    }
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    ReferenceProfile.build(_baseline(1), categorical=["c"], calibration_replicates=500).save(
        tmp_path / "reference.json"
    )
    return tmp_path


def _expected(work: Path, rows: list[dict[str, Any]], **events: Any) -> list[dict[str, Any]]:
    """run_local on ``rows`` (flat) with the monitor's settings and features_field null."""
    doc = yaml.safe_load((work / "monitor.yaml").read_text())
    doc["events"].update({"features_field": None, **events})
    cfg = MonitorConfig.from_mapping(doc, base_dir=work)
    ref = ReferenceProfile.load(work / "reference.json")
    cols, errors = decode_events(rows, cfg, ref, list(ref.features))
    assert not errors
    return json.loads(json.dumps(run_local(cols, cfg, ref, Layout(ref))))


def _backfill(work: Path, src: str, *extra: str, out: str = "out.jsonl") -> subprocess.CompletedProcess[str]:
    return run("backfill", "--config", "monitor.yaml", "--input", src, "--output", out, *extra, cwd=work)


# -- shapes -----------------------------------------------------------------------------------
def test_a_flat_csv_and_nested_json_lines_with_the_same_config(work: Path) -> None:
    """With ``features_field: features`` (the shipped example) a flat CSV was rejected row by row
    ("2400 of 2400 events rejected") and the run exited 0 with no record."""
    rows = _events(2)
    _config(work)
    _csv(work / "flat.csv", rows)
    res = _backfill(work, "flat.csv", out="flat.jsonl")
    assert res.returncode == 0, res.stderr
    assert "the rows have no 'features' object, so they are flat" in res.stderr
    want = _expected(work, rows)
    assert want and read_records(work / "flat.jsonl") == want
    # nested rows under a config that says flat: the object is found
    _config(work, features_field=None)
    _jsonl(work / "nested.jsonl", [_nested(r) for r in rows])
    res = _backfill(work, "nested.jsonl", out="nested.jsonl.out.jsonl")
    assert res.returncode == 0, res.stderr
    assert "hold their features in the object 'features'" in res.stderr
    assert read_records(work / "nested.jsonl.out.jsonl") == want


# -- loud failures ----------------------------------------------------------------------------
def _day_first(work: Path) -> tuple[str, list[str]]:
    rows = _events(3, n=600)
    for r in rows:
        t = np.datetime64(r["timestamp"], "ms").astype(object)
        r["timestamp"] = t.strftime("%d/%m/%Y %H:%M:%S")
    _csv(work / "in.csv", rows)
    return "in.csv", ["600 of 600 events rejected (bad_time 600)", "first row 1: event time '01/01/2026", "day-first"]


def _float_categories(work: Path) -> tuple[str, list[str]]:
    ReferenceProfile.build(
        {"x": _baseline(1)["x"], "c": np.array(["1", "2", "3"] * 1000, dtype=object)},
        categorical=["c"],
        calibration_replicates=500,
    ).save(work / "reference.json")
    rows = _events(4, n=600)
    table = pa.table(
        {
            "timestamp": [r["timestamp"] for r in rows],
            "country": [r["country"] for r in rows],
            "x": [r["x"] for r in rows],
            "c": [float(i % 3 + 1) for i in range(len(rows))],  # categories written as floats
        }
    )
    pq.write_table(table, work / "in.parquet")
    return "in.parquet", [
        "600 of 600 events rejected (bad_type 600)",
        "first row 1: feature 'c': expected a string, got float (1.0)",
        "categories coded as floats",
    ]


def _year(work: Path, unit: str) -> tuple[str, list[str]]:
    rows = [{**r, "timestamp": 2000 + i // 100} for i, r in enumerate(_events(5, n=600))]
    _config(work, time_unit=unit)
    _csv(work / "in.csv", rows)
    return "in.csv", ["600 of 600 events rejected (implausible_time 600)", "'timestamp' does not hold epoch times"]


MISTAKES = {
    "day-first dates": _day_first,
    "float-coded categories": _float_categories,
    "a year as time (auto)": lambda w: _year(w, "auto"),
    "a year as time (s)": lambda w: _year(w, "s"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_run_that_rejects_its_input_fails_loudly(work: Path, mistake: str) -> None:
    _config(work)
    src, says = MISTAKES[mistake](work)
    res = _backfill(work, src)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for text in says:
        assert text in res.stderr, res.stderr
    assert "fix:" in res.stderr and "more than --max-rejected 1%; nothing written" in res.stderr
    assert not (work / "out.jsonl").exists()
    assert "rejected" not in res.stdout  # (stdout is for the table)
    # the threshold is the user's: everything rejected, still said, and no record
    res = _backfill(work, src, "--max-rejected", "100%")
    assert res.returncode == 0, res.stderr
    assert says[0] in res.stderr
    assert read_records(work / "out.jsonl") == []


def test_a_feature_in_no_row_fails_before_processing(work: Path) -> None:
    _config(work)
    rows = [{k: v for k, v in r.items() if k != "k"} for r in _events(6, n=300)]
    _csv(work / "in.csv", rows)
    res = _backfill(work, "in.csv")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no row has the feature(s) ['k']" in res.stderr and "features.include" in res.stderr
    assert not (work / "out.jsonl").exists()
    # nested under another name: nothing to read the features from
    _jsonl(work / "in.jsonl", [{"timestamp": r["timestamp"], "payload": {"x": r["x"]}} for r in rows])
    res = _backfill(work, "in.jsonl")
    assert res.returncode == 2 and "no row has the feature(s) ['c', 'k', 'x']" in res.stderr
    assert "the features are in the object 'payload'? set events.features_field: payload" in res.stderr


def test_quiet_hides_only_the_table(work: Path) -> None:
    _config(work)
    rows = _events(7, n=1200)
    rows[10] = {**rows[10], "timestamp": "yesterday"}
    _csv(work / "in.csv", rows)
    loud = _backfill(work, "in.csv")
    quiet = _backfill(work, "in.csv", "--quiet")
    assert loud.returncode == quiet.returncode == 0
    assert "window start" in loud.stdout and "window start" not in quiet.stdout
    for res in (loud, quiet):
        assert "\n1 of 1,200 events rejected (bad_time 1)" in res.stderr, res.stderr
        assert "first row 11: event time 'yesterday' is not ISO-8601 or epoch" in res.stderr
        assert "rejected" not in res.stdout


# -- row-level validation of CSV and Parquet --------------------------------------------------
def test_one_text_cell_costs_its_row_not_the_file(work: Path) -> None:
    """Once, one text cell made pyarrow read the column as text: every row was rejected and the message
    named row 1; the reference build named row 0 and failed."""
    _config(work)
    rows = _events(8)
    bad = [dict(r) for r in rows]
    bad[56]["x"] = "abc"
    _csv(work / "in.csv", bad)
    res = _backfill(work, "in.csv")
    assert res.returncode == 0, res.stderr
    assert "1 of 2,400 events rejected (bad_type 1)" in res.stderr
    assert "bad_type x1, first row 57: feature 'x': expected a number, got str ('abc')" in res.stderr
    assert read_records(work / "out.jsonl") == _expected(work, rows[:56] + rows[57:])
    # the reference build: the same row rejected, the rest profiled
    data = _baseline(9)
    base = [{"x": float(x), "k": float(k), "c": c} for x, k, c in zip(data["x"], data["k"], data["c"], strict=True)]
    base[56]["x"] = "n.a."
    _csv(work / "base.csv", base)
    built = run(
        "reference", "build", "--input", "base.csv", "--config", "monitor.yaml", "--out", "r.json",
        "--calibration-replicates", REPLICATES, cwd=work,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "1 of 3,000 rows rejected (bad_type 1)" in built.stderr
    assert "first row 57: feature 'x': expected a number, got str ('n.a.')" in built.stderr
    keep = np.ones(3000, dtype=bool)
    keep[56] = False
    want = ReferenceProfile.build(
        {k: v[keep] for k, v in data.items()}, categorical=["c"], calibration_replicates=int(REPLICATES)
    )
    assert ReferenceProfile.load(work / "r.json").fingerprint == want.fingerprint


def test_a_text_column_fails_the_reference_build_with_the_fix(work: Path) -> None:
    _config(work)
    data = _baseline(10, n=600)
    _csv(work / "base.csv", [{"x": float(x), "city": c} for x, c in zip(data["x"], data["c"], strict=True)])
    built = run("reference", "build", "--input", "base.csv", "--out", "r.json", cwd=work)
    assert built.returncode == 2 and "Traceback" not in built.stderr
    assert "600 of 600 rows rejected (bad_type 600)" in built.stderr
    assert "declare it categorical (features.categorical, or --categorical)" in built.stderr
    assert not (work / "r.json").exists()


def test_parquet_rows_and_dictionary_columns(work: Path) -> None:
    """Nested Parquet whose row 57 has no features object: that row is rejected, the rest used; a
    dictionary column (pandas' category) is categorical without being declared."""
    data = _baseline(11)
    feats = [
        None if i == 56 else {"x": float(x), "k": float(k)}
        for i, (x, k) in enumerate(zip(data["x"], data["k"], strict=True))
    ]
    table = pa.table(
        {
            "timestamp": pa.array([T0 + i for i in range(3000)], pa.timestamp("ms", tz="UTC")),
            "segment": pa.array(list(data["c"])).dictionary_encode(),  # (an event field: not a feature)
            "colour": pa.array(list(data["c"])).dictionary_encode(),
            "features": pa.array(feats),
        }
    )
    pq.write_table(table, work / "base.parquet")
    (work / "m.yaml").write_text(
        yaml.safe_dump({"monitor": "m", "reference": "r.json", "events": {"segment_fields": ["segment"]}})
    )
    built = run(
        "reference", "build", "--input", "base.parquet", "--config", "m.yaml", "--out", "r.json",
        "--calibration-replicates", REPLICATES, cwd=work,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "1 of 3,000 rows rejected (missing_field 1)" in built.stderr and "first row 57" in built.stderr
    ref = ReferenceProfile.load(work / "r.json")
    assert sorted(ref.features) == ["k", "x"]  # nested: the features are the object's
    keep = np.arange(3000) != 56
    want = ReferenceProfile.build({"x": data["x"][keep], "k": data["k"][keep]}, calibration_replicates=int(REPLICATES))
    assert ref.fingerprint == want.fingerprint
    # flat Parquet: the dictionary column is categorical, the segment field is no feature
    flat = table.drop_columns(["features"]).append_column("x", pa.array(data["x"]))
    pq.write_table(flat, work / "flat.parquet")
    built = run(
        "reference", "build", "--input", "flat.parquet", "--config", "m.yaml", "--out", "r2.json",
        "--calibration-replicates", REPLICATES, cwd=work,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ref2 = ReferenceProfile.load(work / "r2.json")
    assert sorted(ref2.features) == ["colour", "x"] and ref2.categorical_features() == ["colour"]
    assert "categorical because Parquet stores them as dictionaries" in built.stderr


def test_event_fields_are_not_features(work: Path) -> None:
    rows = [{"listing_id": i, "sold_at": T0 + i, "price": float(i % 7), "pred": 0.5, "area": float(i % 50)}
            for i in range(800)]  # fmt: skip
    _csv(work / "base.csv", rows)
    cfg = {
        "monitor": "m",
        "reference": "r.json",
        "events": {
            "time_field": "sold_at",
            "label_field": "price",
            "prediction_field": "pred",
            "id_field": "listing_id",
        },
    }
    (work / "m.yaml").write_text(yaml.safe_dump(cfg))
    built = run("reference", "build", "--input", "base.csv", "--config", "m.yaml", "--out", "r.json",
                "--calibration-replicates", REPLICATES, cwd=work)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert list(ReferenceProfile.load(work / "r.json").features) == ["area"]
    res = run("backfill", "--config", "m.yaml", "--input", "base.csv", "--output", "o.jsonl", cwd=work)
    assert res.returncode == 0, res.stderr
    assert {r["feature"] for r in read_records(work / "o.jsonl")} == {"area"}
    # a profile built without the config has them all: monitoring the id or the label is refused, with the fix
    built = run("reference", "build", "--input", "base.csv", "--out", "r.json", "--calibration-replicates", REPLICATES,
                cwd=work)  # fmt: skip
    assert built.returncode == 0 and "listing_id" in ReferenceProfile.load(work / "r.json").features
    res = run("backfill", "--config", "m.yaml", "--input", "base.csv", "--output", "o.jsonl", cwd=work)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "['listing_id', 'pred', 'price', 'sold_at'] are event fields of this monitor" in res.stderr
    assert "features.include" in res.stderr
    (work / "m.yaml").write_text(yaml.safe_dump({**cfg, "features": {"include": ["area", "price"]}}))
    res = run("backfill", "--config", "m.yaml", "--input", "base.csv", "--output", "o.jsonl", cwd=work)
    assert res.returncode == 0, res.stderr
    assert {r["feature"] for r in read_records(work / "o.jsonl")} == {"area", "price"}


# -- output files ------------------------------------------------------------------------------
def test_output_files_honour_the_umask(work: Path) -> None:
    """Records were written with mode 0600 whatever the umask: a team's shared directory could not read them."""
    _config(work)
    _csv(work / "in.csv", _events(12, n=600))
    for out in ("out.jsonl", "out.parquet"):
        res = run("backfill", "--config", "monitor.yaml", "--input", "in.csv", "--output", out, cwd=work, umask=0o027)
        assert res.returncode == 0, res.stderr
        assert stat.S_IMODE((work / out).stat().st_mode) == 0o640, out
    res = run("report", "--records", "out.jsonl", "--out", "r.html", cwd=work, umask=0o022)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((work / "r.html").stat().st_mode) == 0o644
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporary file left
