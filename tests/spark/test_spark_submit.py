"""The backfill as a user runs it: spark-submit on the command line, and `streamdrift backfill --engine spark`."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import jobs.backfill
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.files import read_rows
from stream.records import read_records
from stream.settings import load_monitor
from tests.spark.conftest import make_events, write_jsonl, write_monitor

pytestmark = pytest.mark.spark

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the tests talk over loopback only
    if env.get("PYTHONPATH"):  # executors run elsewhere (a worker's directory): no relative entries
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).absolute()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def _local(config: Path, events: Path) -> list[dict[str, Any]]:
    cfg = load_monitor(config)
    ref = ReferenceProfile.load(cfg.reference)
    layout = Layout(ref, cfg.features.include)
    cols, _ = decode_events(read_rows(events), cfg, ref, layout.features)
    return run_local(cols, cfg, ref, layout)


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            if isinstance(v, float):
                assert math.isclose(g[k], v, rel_tol=1e-9, abs_tol=1e-9), (k, g, w)
            else:
                assert g[k] == v, (k, g, w)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("submit")
    events = write_jsonl(tmp / "events.jsonl", make_events(3000, seed=17, drift_from=2000, bad_every=101))
    config = write_monitor(tmp, events={"segment_fields": ["region"]}, segments={"max_segments": 2})
    return config, events


def test_spark_submit_backfill_from_the_command_line(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    config, events = inputs
    out = tmp_path / "stats.parquet"
    cmd = [
        str(BIN / "spark-submit"),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods",
        jobs.backfill.__file__,
        "--config",
        str(config),
        "--input",
        str(events),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"-> {out}" in proc.stdout
    assert "29 of 3000 events rejected" in proc.stdout
    _same(read_records(out), _local(config, events))


def test_streamdrift_backfill_engine_spark(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """As a user without an activated virtualenv runs it: no spark-submit on PATH, no SPARK_HOME or
    PYSPARK_PYTHON; the launcher finds this environment's, and Spark's INFO log stays quiet."""
    config, events = inputs
    out = tmp_path / "stats.jsonl"
    cmd = [sys.executable, "-m", "stream.cli", "backfill", "--engine", "spark", "--config", str(config)]
    cmd += ["--input", str(events), "--output", str(out), "--quiet"]
    env = {k: v for k, v in _env().items() if k not in ("SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN)
    assert shutil.which("spark-submit", path=env["PATH"]) is None
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same(read_records(out), _local(config, events))
    assert " INFO " not in proc.stderr and "log4j profile" not in proc.stderr, proc.stderr[-3000:]


def test_the_launcher_finds_this_environments_spark_submit(monkeypatch: Any) -> None:
    import pyspark

    from stream.cli.batch import find_spark_submit, spark_log_config, spark_submit_command

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    submit, env = find_spark_submit()
    assert submit == str(BIN / "spark-submit")
    assert env["SPARK_HOME"] == str(Path(pyspark.__file__).parent)
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    monkeypatch.setenv("SPARK_HOME", "/opt/spark")  # a user's own stays
    assert find_spark_submit()[1]["SPARK_HOME"] == "/opt/spark"
    log_config = spark_log_config()
    assert log_config is not None and log_config.name == "log4j2.properties"
    assert "rootLogger.level = warn" in log_config.read_text()
    quiet = spark_submit_command(submit, "job.py", "local[2]", ["--x"], verbose=False)
    loud = spark_submit_command(submit, "job.py", "local[2]", ["--x"], verbose=True)
    assert quiet[:3] == [submit, "--master", "local[2]"] and quiet[-2:] == ["job.py", "--x"]
    assert f"-Dlog4j2.configurationFile={log_config.as_uri()}" in quiet[4]
    assert "log4j2" not in " ".join(loud)


def test_bad_arguments_exit_2_naming_the_argument(inputs: tuple[Path, Path], tmp_path: Path, capsys: Any) -> None:
    config, events = inputs
    assert (
        jobs.backfill.main(["--config", str(config), "--input", str(events), "--output", str(tmp_path / "x.csv")]) == 2
    )
    assert "--output" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("kind: tumbling", "kind: hopping"))
    assert (
        jobs.backfill.main(["--config", str(bad), "--input", str(events), "--output", str(tmp_path / "x.jsonl")]) == 2
    )
    assert "window.kind" in capsys.readouterr().err
