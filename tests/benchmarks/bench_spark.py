"""The Spark backfill's throughput at ``local[1]`` and ``local[2]``.

``spark-submit --master local[K] jobs/backfill.py --config monitor.yaml --input events.jsonl
--output records.jsonl`` on the same 1M events (JSON lines, a fresh file per repeat), with
``-XX:-DontCompileHugeMethods`` in the driver's Java options and
``spark.sql.files.maxPartitionBytes=16m`` (a ~300 MB file would otherwise be three 128 MB
partitions, which two cores cannot share evenly). ``PYSPARK_PYTHON`` is this interpreter.

Rows/s are given two ways: over the whole spark-submit (JVM start-up included), and net of
start-up, ``(N - n0) / (t_N - t_0)`` where ``t_0`` is the median of runs of the same command
on ``n0`` = 1,000 events (one before each large run). The scaling target
(local[2] >= 1.6x local[1]) is judged on the net rate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.benchmarks.bench_common import NUMERIC_ONLY, REFERENCE_SEED, Variant, columns, encode_events, median

REPO = Path(__file__).resolve().parents[2]
SMALL = 1_000


def available() -> str | None:
    """None if the backfill can run, else why not."""
    if not (REPO / "jobs" / "backfill.py").is_file():
        return "jobs/backfill.py does not exist"
    if spark_submit() is None:
        return "spark-submit not found (install the spark extra)"
    return None


def spark_submit() -> str | None:
    local = Path(sys.executable).parent / "spark-submit"
    return str(local) if local.exists() else shutil.which("spark-submit")


def write_monitor(workdir: Path, reference: Path, variant: Variant) -> Path:
    cfg = {
        "monitor": "bench",
        "reference": str(reference),
        "events": {"time_field": "timestamp", "time_unit": "ms", "features_field": "features", "segment_fields": []},
        "features": {"include": list(variant.features)},
        "window": {"kind": "tumbling", "size": "60s"},
        "concept": {"detector": "none"},
    }
    path = workdir / "backfill-monitor.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def write_events(path: Path, n: int, seed: int, variant: Variant = NUMERIC_ONLY) -> None:
    values = encode_events(columns(n, seed, variant), variant)
    with path.open("wb") as f:
        f.write(b"\n".join(values))
        f.write(b"\n")


def submit(workdir: Path, monitor: Path, events: Path, master: str, tag: str) -> float:
    out = workdir / f"records-{tag}.jsonl"
    submit_bin = spark_submit()
    assert submit_bin is not None
    cmd = [
        submit_bin,
        "--master",
        master,
        "--driver-memory",
        "4g",
        "--conf",
        "spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods",
        "--conf",
        "spark.sql.files.maxPartitionBytes=16m",
        "--conf",
        "spark.ui.enabled=false",
        str(REPO / "jobs" / "backfill.py"),
        "--config",
        str(monitor),
        "--input",
        str(events),
        "--output",
        str(out),
    ]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = workdir / f"spark-{tag}.log"
    t0 = time.perf_counter()
    with log.open("wb") as lf:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"spark-submit --master {master} failed with {rc}:\n{tail}")
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"spark-submit --master {master} wrote no records to {out}")
    return dt


def run(workdir: Path, reference: Path, n: int, repeats: int, log: Any = print, quiet: Any = None) -> dict[str, Any]:
    monitor = write_monitor(workdir, reference, NUMERIC_ONLY)
    small = workdir / "spark-small.jsonl"
    write_events(small, SMALL, REFERENCE_SEED + 7)
    masters = ("local[1]", "local[2]")
    startup: dict[str, list[float]] = {m: [] for m in masters}
    seconds: dict[str, list[float]] = {m: [] for m in masters}
    idle: list[float] = []
    for rep in range(repeats):
        events = workdir / f"spark-events-{rep}.jsonl"
        write_events(events, n, 20_000 + rep)
        order = masters if rep % 2 == 0 else masters[::-1]
        for m in order:
            idle.append(quiet() if quiet else float("nan"))
            startup[m].append(submit(workdir, monitor, small, m, f"small-{rep}-{m[-2]}"))
            seconds[m].append(submit(workdir, monitor, events, m, f"{rep}-{m[-2]}"))
        events.unlink()
        log(
            f"  spark repeat {rep + 1}/{repeats}: "
            + ", ".join(f"{m} {seconds[m][-1]:.1f} s (start-up run {startup[m][-1]:.1f} s)" for m in masters)
        )
    return {
        "events": n,
        "startup_s": {m: median(v) for m, v in startup.items()},
        "startup_runs_s": startup,
        "seconds": seconds,
        "small_events": SMALL,
        "cpu_idle_before_run": idle,
    }
