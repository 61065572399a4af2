"""`streamdrift demo` as a user runs it: one command, exit 0, drift found where it was injected."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from stream import synthetic

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
    assert (tmp_path / "state").is_dir()
