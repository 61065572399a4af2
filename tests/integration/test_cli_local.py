"""`streamdrift reference build` and `streamdrift backfill` as subprocesses on small seeded files.

The records the CLI writes are compared with an in-process computation that skips the file
layer: the reference is built from the numpy arrays and the events are decoded from the
Python dicts the files were written from.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
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
T0 = 1_700_000_000_000


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "stream.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def _reference_data(seed: int, n: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.02] = np.nan
    return {
        "x": x,
        "k": rng.poisson(3.0, size=n).astype(float),
        "c": rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2]).astype(object),
    }


def _events(seed: int, n: int = 2400) -> list[dict[str, Any]]:
    """Two hours of events; x shifts by 0.8 sigma and a new category appears in the second hour."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        late = i >= n // 2
        x = float(rng.normal(0.8 if late else 0.0, 1.0))
        c = str(
            rng.choice(["red", "green", "blue", "violet"], p=[0.4, 0.2, 0.2, 0.2] if late else [0.5, 0.3, 0.2, 0.0])
        )
        score = float(rng.random())
        out.append(
            {
                "timestamp": T0 + i * 3000,
                "country": str(rng.choice(["fr", "de"])),
                "score": score,
                "label": int(rng.random() < (0.5 if late else score)),
                "features": {"x": None if rng.random() < 0.03 else x, "k": float(rng.poisson(3.0)), "c": c},
            }
        )
    return out


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "features"} | row["features"]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        flat = [_flat(r) for r in rows]
        # ISO-8601 event times in CSV (pyarrow reads them as timestamps)
        for r in flat:
            if isinstance(r.get("timestamp"), int):
                r["timestamp"] = (
                    datetime.fromtimestamp(r["timestamp"] / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
                )
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(flat[0]))
            w.writeheader()
            w.writerows(flat)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def _ref_rows(data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(data["x"])
    return [
        {
            "features": {
                "x": None if np.isnan(data["x"][i]) else float(data["x"][i]),
                "k": float(data["k"][i]),
                "c": data["c"][i],
            }
        }
        for i in range(n)
    ]


def _monitor(tmp: Path, features_field: str | None, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "monitor": "cli-test",
        "reference": "reference.json",
        "events": {
            "time_field": "timestamp",
            "features_field": features_field,
            "segment_fields": ["country"],
            "prediction_field": "score",
            "label_field": "label",
        },
        "features": {"categorical": ["c"]},
        "window": {"kind": "tumbling", "size": "20m"},
        "statistics": {"min_events": 50},
        "concept": {"detector": "adwin", "stream": "model_error"},
        "kafka": {"bootstrap_servers": "ignored:9092"},
    }
    doc.update(extra)
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("suffix", "out_suffix"), [(".jsonl", ".jsonl"), (".csv", ".parquet"), (".parquet", ".jsonl")])
def test_reference_build_and_backfill_match_run_local(tmp_path: Path, suffix: str, out_suffix: str) -> None:
    data = _reference_data(1)
    ref_rows = _ref_rows(data)
    ref_file = tmp_path / f"baseline{suffix}"
    _write(ref_file, ref_rows)
    features_field = None if suffix == ".csv" else "features"
    config = _monitor(tmp_path, features_field)

    built = run(
        "reference", "build", "--input", str(ref_file), "--out", "reference.json", "--config", str(config), cwd=tmp_path
    )
    assert built.returncode == 0, built.stderr
    ref = ReferenceProfile.load(tmp_path / "reference.json")
    expected_ref = ReferenceProfile.build(data, categorical=["c"], features=list(ref.features))
    assert sorted(ref.features) == ["c", "k", "x"]
    assert ref.fingerprint == expected_ref.fingerprint
    assert f"fingerprint: {ref.fingerprint}" in built.stdout
    assert "3 features from 3000 rows" in built.stdout

    events = _events(2)
    # a row without its time (null / an empty CSV cell) is rejected and counted
    events[5] = {**events[5], "timestamp": None}
    events_file = tmp_path / f"events{suffix}"
    _write(events_file, events)
    out = tmp_path / f"records{out_suffix}"
    res = run("backfill", "--config", str(config), "--input", str(events_file), "--output", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = read_records(out)

    cfg = MonitorConfig.from_mapping(yaml.safe_load(config.read_text()), base_dir=tmp_path)
    layout = Layout(ref)
    ok_events = [_flat(e) for e in events] if suffix == ".csv" else events
    cols, errors = decode_events(ok_events, cfg, ref, layout.features)
    assert [e[0] for e in errors] == [5]
    expected = json.loads(json.dumps(run_local(cols, cfg, ref, layout)))
    assert got == expected
    assert any(r["statistic"] == "adwin" for r in got)

    # the summary: one line per window x segment, drift shown where it was injected
    lines = res.stdout.splitlines()
    # the rejected row on stderr, with its reason, row number and a fix
    err = res.stderr.splitlines()
    assert err[0].startswith("1 of 2,400 events rejected (missing_field 1)"), res.stderr
    assert err[1] == "  missing_field x1, first row 6: missing event time field 'timestamp'", res.stderr
    assert err[2].startswith("    fix: set events.time_field")
    header = next(i for i, line in enumerate(lines) if line.startswith("window start"))
    table = lines[header + 1 : lines.index(next(line for line in lines if line.startswith("legend:")))]
    window_segments = {(r["window_start"], json.dumps(r["segment"], sort_keys=True)) for r in got}
    assert len(table) == len(window_segments)
    first_hour = [line for line in table if "T22:" in line and "__all__" in line]
    second_hour = [line for line in table if "T23:" in line and "__all__" in line]
    assert first_hour and second_hour
    assert all(line.split()[-3:] == [".", ".", "."] for line in first_hour[:2]), first_hour
    assert all({"C", "W"} & set(line.split()[-3:]) for line in second_hour[1:]), second_hour
    assert lines[-1] == f"{len(got)} records from 2399 events -> {out}"


def test_backfill_sliding_and_count_windows(tmp_path: Path) -> None:
    data = _reference_data(3)
    ref = ReferenceProfile.build(data, categorical=["c"])
    ref.save(tmp_path / "reference.json")
    events = _events(4, n=1200)
    _write(tmp_path / "events.jsonl", events)
    for window in ({"kind": "sliding", "size": "20m", "slide": "10m"}, {"kind": "count", "size": 200}):
        config = _monitor(tmp_path, "features", window=window)
        res = run(
            "backfill",
            "--config",
            str(config),
            "--input",
            "events.jsonl",
            "--output",
            "out.jsonl",
            "--quiet",
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        assert "window start" not in res.stdout  # --quiet
        cfg = MonitorConfig.from_mapping(yaml.safe_load(config.read_text()), base_dir=tmp_path)
        cols, _ = decode_events(events, cfg, ref, list(ref.features))
        assert read_records(tmp_path / "out.jsonl") == json.loads(json.dumps(run_local(cols, cfg, ref, Layout(ref))))


FUTURE_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: beyond the run's clock + events.max_future_skew


def _time_file(path: Path, events: list[dict[str, Any]], variant: str) -> None:
    """``events`` (flat, ms times) with their times written as ``variant``; row 100 gets a year-like
    time (implausible) and row 200 a time in 2100 (future), each as that variant can hold it."""
    ms = np.array([e["timestamp"] for e in events], dtype=np.int64)
    others = {k: [e[k] for e in events] for k in events[0] if k != "timestamp"}
    kind, unit = variant.split(".")[0].split("_")[:2]
    scale = {"ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    if kind == "iso":  # ISO-8601 text with microseconds (pyarrow reads a timestamp column)
        text = [datetime.fromtimestamp(int(t) / 1000, tz=UTC).isoformat(timespec="microseconds") for t in ms]
        text[100], text[200] = "2024", "2100-01-01T00:00:00+00:00"
        column: Any = text
    else:
        values = ms * scale
        values[100] = 2024  # a year; in a timestamp column: 2024 units after 1970
        values[200] = FUTURE_MS * scale
        if variant.startswith("ts_ms_poisoned"):
            values[200] = ms[200] * 1000  # microseconds written into a millisecond column: the year 55840
        column = (
            pa.array(values, type=pa.timestamp(unit, tz="UTC" if "utc" in variant else None))
            if kind == "ts"
            else values
        )
    table = pa.table({"timestamp": column, **others})
    if path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)


@pytest.mark.parametrize(
    "variant",
    [
        "ts_us.parquet",
        "ts_ns_utc.parquet",
        "ts_ms_poisoned.parquet",
        "int_us.parquet",
        "int_ns.parquet",
        "int_us.csv",
        "int_ns.csv",
        "iso_us.csv",
    ],
)
def test_backfill_and_reference_build_on_micro_and_nanosecond_times(tmp_path: Path, variant: str) -> None:
    """Timestamp columns of any unit and integer µs/ns epochs: the same records as the events in ms,
    the bad times rejected with their reason (implausible_time, future_time), and no traceback."""
    ReferenceProfile.build(_reference_data(7), categorical=["c"]).save(tmp_path / "reference.json")
    events = [_flat(e) for e in _events(8, n=1200)]
    path = tmp_path / f"events-{variant}"
    _time_file(path, events, variant)
    config = _monitor(tmp_path, None)
    out = tmp_path / "records.jsonl"
    res = run("backfill", "--config", str(config), "--input", str(path), "--output", str(out), cwd=tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    err = res.stderr
    assert "2 of 1,200 events rejected (future_time 1, implausible_time 1)" in err, err
    assert "  implausible_time x1, first row 101: implausible event time" in err
    assert "  future_time x1, first row 201: future event time" in err and "events.time_unit" in err
    cfg = MonitorConfig.from_mapping(yaml.safe_load(config.read_text()), base_dir=tmp_path)
    ref = ReferenceProfile.load(tmp_path / "reference.json")
    kept = [e for i, e in enumerate(events) if i not in (100, 200)]
    cols, errors = decode_events(kept, cfg, ref, list(ref.features))
    assert not errors
    assert read_records(out) == json.loads(json.dumps(run_local(cols, cfg, ref, Layout(ref))))
    # a reference build reads the same file (the time column is not a feature) without a traceback
    built = run("reference", "build", "--input", str(path), "--out", "ref2.json", "--config", str(config), cwd=tmp_path)
    assert built.returncode == 0 and "Traceback" not in built.stderr, built.stderr
    assert (
        "from 1200 rows" in built.stdout and "timestamp" not in ReferenceProfile.load(tmp_path / "ref2.json").features
    )


def _assert_clean_error(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in res.stderr, res.stderr


def _main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str):
    """The same entry point in-process (fast), for the many error variants."""
    from stream.cli import main

    monkeypatch.chdir(cwd)
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    data = _reference_data(5, n=500)
    ReferenceProfile.build(data, categorical=["c"]).save(tmp_path / "reference.json")
    _write(tmp_path / "events.jsonl", _events(6, n=100))
    _monitor(tmp_path, "features")
    return tmp_path


def test_bad_config_exits_2_as_a_subprocess(workdir: Path) -> None:
    doc = yaml.safe_load((workdir / "monitor.yaml").read_text())
    (workdir / "bad.yaml").write_text(
        yaml.safe_dump({**doc, "statistcs": {}, "window": {"kind": "sliding", "size": "10m"}})
    )
    res = run("backfill", "--config", "bad.yaml", "--input", "events.jsonl", "--output", "o.jsonl", cwd=workdir)
    _assert_clean_error(
        res, "streamdrift backfill: error: invalid monitor config", "statistcs: unknown setting", "window.slide"
    )
    assert not (workdir / "o.jsonl").exists()


def test_edited_reference_exits_2_as_a_subprocess(workdir: Path) -> None:
    ref_doc = json.loads((workdir / "reference.json").read_text())
    ref_doc["features"]["x"]["counts"][0] += 1
    (workdir / "reference.json").write_text(json.dumps(ref_doc))
    res = run("backfill", "--config", "monitor.yaml", "--input", "events.jsonl", "--output", "o.jsonl", cwd=workdir)
    _assert_clean_error(res, "fingerprint mismatch", "reference.json")
    assert not (workdir / "o.jsonl").exists()


BAD_BACKFILL = [
    ({"statistics": {"psi": {"warning": 0.5, "critical": 0.1}}}, [], "psi.critical"),
    ({"features": {"include": ["x", "nope"]}}, [], "'nope'"),
    ({"reference": "absent.json"}, [], "cannot read reference file"),
    ({}, ["--input", "missing.jsonl"], "missing.jsonl does not exist"),
    ({}, ["--input", "events.txt"], "unknown file type '.txt'"),
    ({}, ["--output", "o.csv"], "not CSV"),
    ({"concept": {"params": {"deltta": 1}}}, [], "['deltta']"),
    ({"window": {"kind": "tumbling", "size": 5}}, [], "window.size: 5 is a number without a unit: write '5s' or '5m'"),
]


@pytest.mark.parametrize(("patch", "argv", "message"), BAD_BACKFILL)
def test_bad_config_and_input_variants(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    patch: dict[str, Any],
    argv: list[str],
    message: str,
) -> None:
    doc = yaml.safe_load((workdir / "monitor.yaml").read_text())
    (workdir / "bad.yaml").write_text(yaml.safe_dump({**doc, **patch}))
    args = {"--config": "bad.yaml", "--input": "events.jsonl", "--output": "o.jsonl"}
    args.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    res = _main(capsys, monkeypatch, workdir, "backfill", *[x for kv in args.items() for x in kv])
    _assert_clean_error(res, message)
    assert not (workdir / "o.jsonl").exists()


def test_unreadable_yaml_and_other_schema_version(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "bad.yaml").write_text("monitor: [unclosed\n")
    res = _main(
        capsys,
        monkeypatch,
        workdir,
        "backfill",
        "--config",
        "bad.yaml",
        "--input",
        "events.jsonl",
        "--output",
        "o.jsonl",
    )
    _assert_clean_error(res, "not valid YAML")
    res = _main(
        capsys,
        monkeypatch,
        workdir,
        "backfill",
        "--config",
        "nope.yaml",
        "--input",
        "events.jsonl",
        "--output",
        "o.jsonl",
    )
    _assert_clean_error(res, "cannot read config file nope.yaml")
    ref_doc = json.loads((workdir / "reference.json").read_text())
    ref_doc["schema_version"] = 99
    (workdir / "reference.json").write_text(json.dumps(ref_doc))
    res = _main(
        capsys,
        monkeypatch,
        workdir,
        "backfill",
        "--config",
        "monitor.yaml",
        "--input",
        "events.jsonl",
        "--output",
        "o.jsonl",
    )
    _assert_clean_error(res, "schema_version 99", "rebuild it")


def test_reference_build_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"x": float(i), "flag": bool(i % 2), "c": "a"} for i in range(50)]
    _write(tmp_path / "base.jsonl", rows)
    res = run("reference", "build", "--input", "base.jsonl", "--out", "r.json", "--categorical", "c", cwd=tmp_path)
    _assert_clean_error(res, "feature 'flag'", "declare it categorical")
    assert not (tmp_path / "r.json").exists()
    res = _main(
        capsys,
        monkeypatch,
        tmp_path,
        "reference",
        "build",
        "--input",
        "base.jsonl",
        "--out",
        "r.json",
        "--features",
        "x,zz",
    )
    _assert_clean_error(res, "'zz'")
    res = _main(
        capsys,
        monkeypatch,
        tmp_path,
        "reference",
        "build",
        "--input",
        "base.jsonl",
        "--out",
        "r.json",
        "--features",
        "x",
        "--fine-bins",
        "1",
    )
    _assert_clean_error(res, "fine_bins")
    ok = _main(
        capsys,
        monkeypatch,
        tmp_path,
        "reference",
        "build",
        "--input",
        "base.jsonl",
        "--out",
        "r.json",
        "--categorical",
        "c,flag",
    )
    assert ok.returncode == 0, ok.stderr
    ref = ReferenceProfile.load(tmp_path / "r.json")
    assert ref.features["flag"].categories == ("false", "true")  # type: ignore[union-attr]


def test_reference_check_says_what_the_monitor_flags_on_its_own_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    n = 12_000
    steady = {"x": rng.normal(size=n), "k": rng.poisson(3.0, n).astype(float)}
    drifting = {"x": np.concatenate([rng.normal(size=n // 2), rng.normal(1.0, 1.0, n // 2)]), "k": steady["k"]}
    config = _monitor(tmp_path, "features", features={"categorical": []}, statistics={"min_events": 100})
    for name, cols in (("steady", steady), ("drifting", drifting)):
        base = tmp_path / f"{name}.jsonl"  # a flat baseline without event times, rows in order
        base.write_text(
            "".join(
                json.dumps({"x": float(a), "k": float(b)}) + "\n" for a, b in zip(cols["x"], cols["k"], strict=True)
            )
        )
        built = run("reference", "build", "--input", str(base), "--out", "reference.json", cwd=tmp_path)
        assert built.returncode == 0, built.stderr
        assert "calibration: bootstrap+chunks, 10,000 null windows" in built.stdout
        out = tmp_path / f"check-{name}.jsonl"
        args = ["backfill", "--config", str(config), "--input", str(base), "--output", str(out), "--reference-check"]
        res = run(*args, cwd=tmp_path)
        assert res.returncode == 2 and "--window-events" in res.stderr  # no event time: say how to cut windows
        res = run(*args, "--window-events", "200", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        line = next(x for x in res.stdout.splitlines() if x.startswith("reference check:"))
        flagged, windows = (int(v) for v in line.split()[2:5:2])
        assert windows == n // 200
        recs = read_records(out)
        assert {r["window_end"] for r in recs if r["segment"] == {}} and len(recs) > 0
        if name == "steady":
            # the calibration expects at most 1 % of windows: a binomial bound on 60 windows
            assert flagged <= 3, res.stdout
            assert "more than expected" not in res.stdout and "warning:" not in built.stderr
        else:
            # the chunks of the baseline take its own shift for normal variation: the check is quiet,
            # and the build warns that such a shift would not page
            assert flagged <= 3, res.stdout
            assert "warning: x: the baseline's own windows vary like" in built.stderr
            # calibrated from independent draws only, the check shows the drifted half
            rebuilt = run(
                "reference", "build", "--input", str(base), "--out", "reference.json", "--no-chunks", cwd=tmp_path
            )
            assert rebuilt.returncode == 0 and "warning:" not in rebuilt.stderr, rebuilt.stderr
            res = run(*args, "--window-events", "200", cwd=tmp_path)
            line = next(x for x in res.stdout.splitlines() if x.startswith("reference check:"))
            assert int(line.split()[2]) >= 20, res.stdout
            assert "more than expected" in res.stdout
    # the report shows the reference check
    page = tmp_path / "report.html"
    rep = run(
        "report",
        "--records",  # (computed against reference.json as it is now: the drifting baseline's)
        str(tmp_path / "check-drifting.jsonl"),
        "--reference-check",
        str(tmp_path / "check-steady.jsonl"),
        "--config",
        str(config),
        "--out",
        str(page),
        cwd=tmp_path,
    )
    assert rep.returncode == 0, rep.stderr
    text = page.read_text()
    assert 'id="reference-check"' in text and f'data-windows="{n // 200}"' in text
    assert "calibrated for at most 1.0%" in text


def test_reference_calibrate_upgrades_a_profile_of_version_1(tmp_path: Path) -> None:
    ref = ReferenceProfile.build(_reference_data(5), categorical=["c"], calibrate=False)
    doc = json.loads(ref.to_json())
    doc["schema_version"] = 1
    del doc["calibration"], doc["settings"]["discrete_values"], doc["features"]["c"]["n_singletons"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    config = _monitor(tmp_path, "features", reference="old.json")
    _write(tmp_path / "events.jsonl", _events(6, n=600))
    res = run("backfill", "--config", str(config), "--input", "events.jsonl", "--output", "r.jsonl", cwd=tmp_path)
    assert res.returncode == 2 and "reference calibrate" in res.stderr, res.stderr
    res = run(
        "reference",
        "calibrate",
        "--reference",
        "old.json",
        "--out",
        "new.json",
        "--calibration-replicates",
        "1000",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    new = ReferenceProfile.load(tmp_path / "new.json")
    assert new.calibration is not None and new.calibration.method == "bootstrap"
    assert f"fingerprint: {new.fingerprint}" in res.stdout
    config = _monitor(tmp_path, "features", reference="new.json")
    res = run("backfill", "--config", str(config), "--input", "events.jsonl", "--output", "r.jsonl", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
