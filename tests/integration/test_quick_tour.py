"""The README's quick tour, run as written, and the shipped example configuration on every file shape.

The tour's first ``sh`` block is taken from README.md and run by bash in an empty directory that
holds only what it reads from a clone (``deploy/examples/monitor.yaml``), with the installed
``streamdrift`` command on PATH, as a new user would run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from detectors.evaluate import WINDOW_STATISTICS, iso_ms, parse_iso_ms
from detectors.reference import ReferenceProfile
from stream.demo import synthetic
from stream.records import read_records

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "monitor.yaml"
BIN = Path(sys.executable).parent


def quick_tour() -> str:
    """The first ``sh`` block of the README's "Quick tour" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick tour\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "the quick tour has no sh block"
    return m.group(1)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "error"}


def _clone(tmp: Path) -> Path:
    """What the tour reads from a clone."""
    (tmp / "deploy" / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, tmp / "deploy" / "examples" / "monitor.yaml")
    return tmp


def _overall(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["segment"] == {} and r["statistic"] in WINDOW_STATISTICS]


def _check_found_where_injected(records: list[dict[str, Any]], n_events: int) -> None:
    """Every window after the drift start flags the drifted features; no window before it and no
    stable feature is flagged (overall segment)."""
    spec = synthetic.StreamSpec(n_events=n_events)
    drift = spec.drift_start_ms
    overall = _overall(records)
    assert overall
    starts = sorted({r["window_start"] for r in overall})
    for start in starts:
        flagged = {r["feature"] for r in overall if r["window_start"] == start and r["drift"]}
        end = next(r["window_end"] for r in overall if r["window_start"] == start)
        if parse_iso_ms(end) <= drift:
            assert not flagged, (start, flagged)
        elif parse_iso_ms(start) >= drift:
            assert flagged == set(synthetic.DRIFTED_FEATURES), (start, flagged)
        else:  # the window the drift starts in: only drifted features, if any
            assert flagged <= set(synthetic.DRIFTED_FEATURES), (start, flagged)
    assert any(parse_iso_ms(s) >= drift for s in starts), "no window after the drift start"


def test_the_readme_quick_tour_runs_as_written_on_a_flat_csv(tmp_path: Path) -> None:
    assert (BIN / "streamdrift").exists(), "the streamdrift command is not installed next to this Python"
    block = quick_tour()
    assert "events.csv" in block and "cp deploy/examples/monitor.yaml" in block
    cwd = _clone(tmp_path)
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    # the example config is nested (features_field: features); the CSV is flat: said, and used
    assert "the rows have no 'features' object, so they are flat" in res.stderr
    assert "rejected" not in res.stderr
    first_line = (cwd / "events.csv").read_text().splitlines()[0]
    assert "income" in first_line and "features" not in first_line  # a flat file
    ref = ReferenceProfile.load(cwd / "reference.json")
    # event fields (time, segment, prediction, label) are not features
    assert sorted(ref.features) == sorted([*synthetic.NUMERIC, *synthetic.CATEGORICAL])
    assert sorted(ref.categorical_features()) == sorted(synthetic.CATEGORICAL)
    records = read_records(cwd / "stats.jsonl")
    _check_found_where_injected(records, 20_000)
    page = (cwd / "report.html").read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") >= 1 + 2 * len(ref.features)  # drift map, statistics, histograms
    assert 'id="drift-runs"' in page


def _tour(cwd: Path, fmt: str, n: int) -> tuple[ReferenceProfile, list[dict[str, Any]], str]:
    def sd(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(BIN / "streamdrift"), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    sd("example-data", "--out", ".", "--format", fmt, "--events", str(n))
    built = sd("reference", "build", "--input", f"baseline.{fmt}", "--config", str(EXAMPLE), "--out", f"ref-{fmt}.json")
    ref = ReferenceProfile.load(cwd / f"ref-{fmt}.json")
    config = cwd / f"monitor-{fmt}.yaml"
    config.write_text(EXAMPLE.read_text().replace("reference: reference.json", f"reference: ref-{fmt}.json"))
    res = sd("backfill", "--config", str(config), "--input", f"events.{fmt}", "--output", f"stats-{fmt}.jsonl")
    return ref, read_records(cwd / f"stats-{fmt}.jsonl"), built.stderr + res.stderr


def test_the_shipped_config_reads_flat_and_nested_files_alike(tmp_path: Path) -> None:
    """The same events as a flat CSV, a flat Parquet file and nested JSON lines, with the shipped
    example configuration unchanged (features_field: features): the same profile and the same records."""
    n = 9000
    out = {fmt: _tour(tmp_path, fmt, n) for fmt in synthetic.EXAMPLE_FORMATS}
    ref_csv, records_csv, _said = out["csv"]
    for fmt, (ref, records, said) in out.items():
        assert ref.fingerprint == ref_csv.fingerprint, fmt
        assert records == records_csv, fmt
        assert ("they are flat" in said) == (fmt != "jsonl"), (fmt, said)
        assert "rejected" not in said
    _check_found_where_injected(records_csv, n)
    assert json.loads(json.dumps(records_csv[0]))["window_start"] == iso_ms(synthetic.StreamSpec().start_ms)
