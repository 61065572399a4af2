"""`streamdrift demo` as a user runs it: one command, exit 0, drift found where it was injected, and
what it leaves behind (records, an HTML report, a monitor.yaml) usable by the commands it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.evaluate import WINDOW_STATISTICS
from stream.demo import synthetic
from stream.records import read_records

pytestmark = pytest.mark.integration


def test_demo_finds_the_injected_drift_and_nothing_else(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--events", "24000", "--window", "5m", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    spec = synthetic.StreamSpec(n_events=24000)
    drift_window = synthetic.iso_ms_window_start(spec.drift_start_ms, 300_000)
    for feature in [*synthetic.NUMERIC, *synthetic.CATEGORICAL]:
        line = re.search(rf"^\s+{feature}\s+(drifted|stable)\s+(.*)$", out, re.M)
        assert line, f"no summary line for {feature}:\n{out}"
        if feature in synthetic.DRIFTED_FEATURES:
            assert f"first flagged in window {drift_window}" in line.group(2), out
        else:
            assert line.group(2) == "never flagged", out
    counted = re.search(r"consumer counted\s+invalid ([\d,]+), late ([\d,]+), valid ([\d,]+)", out)
    assert counted, out
    assert [int(g.replace(",", "")) for g in counted.groups()] == [3, 0, 24000]
    assert "ADWIN first detection" in out
    # the accuracy drop, caught from the late labels (joined from their own topic) where it was injected
    assert re.search(rf"performance .* accuracy drop first flagged in window {drift_window}", out), out
    assert "performance of window" in out and "DROP (critical)" in out
    assert (tmp_path / "state").is_dir()

    # what it leaves, and says where it is
    workdir = tmp_path.resolve()
    records = read_records(workdir / "records.jsonl")
    assert {r["feature"] for r in records} >= {*synthetic.NUMERIC, *synthetic.CATEGORICAL}
    page = (workdir / "report.html").read_text(encoding="utf-8")
    assert 'id="drift-map"' in page and 'id="hist-0"' in page
    for name in ("report.html", "records.jsonl", "events.jsonl", "labels.jsonl", "reference.json", "monitor.yaml"):
        assert re.search(rf"^  {re.escape(name)}\s+\S", out, re.M), name
    assert f"files in {workdir}" in out
    # the alerts column is explained before the table
    legend = out.index("alerts: the alert messages of the window")
    assert legend < out.index("window start") and "one per drifted statistic" in out
    assert (workdir / "monitor.yaml").read_text().startswith("# A monitor written by `streamdrift demo`")
    # the next commands it prints run as printed
    commands = [
        line.strip() for line in out.splitlines() if line.startswith("    streamdrift ") and str(workdir) in line
    ]
    assert [c.split()[1] for c in commands] == ["report", "backfill"], commands
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in commands:
        res = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (cmd, res.stderr)
    assert 'id="drift-map"' in (workdir / "report-de.html").read_text(encoding="utf-8")
    # the backfill of the events file gives every window statistic serve gave (and the window serve left open)
    backfill = read_records(workdir / "backfill.jsonl")
    served = [r for r in records if r["statistic"] in WINDOW_STATISTICS]
    assert served and all(r in backfill for r in served)
    # and, with --labels, every performance record serve gave (from the labels topic)
    served_perf = [r for r in records if r["feature"] == "performance"]
    assert served_perf and all(r in backfill for r in served_perf)
