"""The Spark backfill's throughput at ``local[1]`` and ``local[2]``; the Structured Streaming job against serve.

``spark-submit --master local[K] jobs/backfill.py --config monitor.yaml --input events.jsonl
--output records.jsonl`` on the same 1M events (JSON lines, a fresh file per repeat), with
``-XX:-DontCompileHugeMethods`` in the driver's Java options and
``spark.sql.files.maxPartitionBytes=16m`` (a ~300 MB file would otherwise be three 128 MB
partitions, which two cores cannot share evenly). ``PYSPARK_PYTHON`` is this interpreter.

Rows/s are given two ways: over the whole spark-submit (JVM start-up included), and net of
start-up, ``(N - n0) / (t_N - t_0)`` where ``t_0`` is the median of runs of the same command
on ``n0`` = 1,000 events (one before each large run). The scaling target
(local[2] >= 1.6x local[1]) is judged on the net rate.

The streaming part (``spark_streaming``): on one two-partition topic of N events (20 numeric
features, event i on partition i % 2), ``streamdrift serve`` (one process) and ``spark-submit
jobs/streaming.py`` at ``local[2]`` and ``local[1]`` each consume the whole topic from the start.
Every contender is timed the same way, by its own /metrics: from the first scrape that shows
events to the end of the batch that counted the last one (``streamdrift_last_batch_timestamp_
seconds``), so start-up (JVM, Python workers, group join) is excluded; for Spark the first
micro-batch (``--max-offsets-per-trigger``) is excluded with it. The Spark job runs with the
driver JVM options the README recommends for it (``-XX:TieredStopAtLevel=1``), the shipped
log4j2 config and ``--trigger 500ms``; its config is serve's (fetch settings, outputs, metrics).
CPU rates count every process of the contender (Spark: the JVM and its Python workers).
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


# -- the Structured Streaming job against `streamdrift serve` on the same topic ------------------------
STREAMING_MASTERS = ("local[2]", "local[1]")
#: the driver's JVM options recommended for the streaming job (README "Spark"): C1 only, since the
#: JVM does little computing there and C2 compiling Spark's code took CPU from the Python workers
STREAMING_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def produce_partitions(bootstrap: str, topic: str, values: list[bytes], partitions: int = 2) -> float:
    """Produce value i to partition i % partitions; returns msgs/s."""
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "acks": "1",
        }
    )
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        while True:
            try:
                p.produce(topic, v, partition=i % partitions)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120):
        raise RuntimeError(f"messages not delivered to {topic}")
    return len(values) / (time.perf_counter() - t0)


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants still running (/proc)."""
    from tests.benchmarks.bench_serve import CLK_TCK

    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def streaming_command(config: Path, checkpoint: Path, master: str, max_offsets: int) -> list[str]:
    submit = spark_submit()
    assert submit is not None
    from stream.cli.batch import spark_log_config

    log_config = spark_log_config()
    java = STREAMING_JAVA_OPTIONS + (f" -Dlog4j2.configurationFile={log_config.as_uri()}" if log_config else "")
    return [
        submit,
        "--master",
        master,
        "--driver-memory",
        "2g",
        "--conf",
        f"spark.driver.extraJavaOptions={java}",
        "--conf",
        "spark.ui.enabled=false",
        str(REPO / "jobs" / "streaming.py"),
        "--config",
        str(config),
        "--checkpoint",
        str(checkpoint),
        "--trigger",
        "500ms",
        "--max-offsets-per-trigger",
        str(max_offsets),
    ]


def run_spark_streaming(
    workdir: Path, reference: Path, bootstrap: str, topic: str, n: int, master: str, max_offsets: int,
    timeout: float = 900.0, broker_pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One run of the streaming job over the whole topic, timed by its /metrics (as serve is).

    ``broker_pid``: the broker's process on this machine; its CPU seconds over the same steady
    part are reported per event (``broker_cpu_per_event``), the share of the machine the job
    cannot have."""
    import signal
    import uuid

    from stream.demo.broker import free_port
    from tests.benchmarks.bench_serve import cpu_seconds, scrape, write_config

    tag = uuid.uuid4().hex[:8]
    port = free_port()
    config = write_config(workdir, reference, NUMERIC_ONLY, bootstrap, topic, port, f"spark-{tag}")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    log = workdir / f"spark-stream-{tag}.log"
    cmd = streaming_command(config, workdir / f"ckpt-{tag}", master, max_offsets)
    t_start = time.time()
    with log.open("wb") as lf:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    first: tuple[float, float, float] | None = None
    broker_first = broker_done = float("nan")
    batches = 0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the streaming job exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.time() - t_start > timeout:
                raise RuntimeError(f"the streaming job did not consume {n} events in {timeout:.0f} s")
            m = scrape(port, full=False)
            seen = (m or {}).get("streamdrift_events_total", 0.0)
            if m is not None and seen > 0 and first is None:
                first = (m["streamdrift_last_batch_timestamp_seconds"], seen, tree_cpu_seconds(proc.pid))
                if broker_pid is not None:
                    broker_first = cpu_seconds(broker_pid)
            if m is not None and seen >= n:
                cpu_done = tree_cpu_seconds(proc.pid)
                if broker_pid is not None:
                    broker_done = cpu_seconds(broker_pid)
                t_done = m["streamdrift_last_batch_timestamp_seconds"]
                batches = int(m.get("streamdrift_checkpoints_total", 0))
                break
            time.sleep(0.01 if first is None else 0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert first is not None
    steady_n, steady_s, cpu = n - first[1], t_done - first[0], cpu_done - first[2]
    return {
        "master": master,
        "messages": n,
        "max_offsets_per_trigger": max_offsets,
        "rate": steady_n / steady_s if steady_s > 0 else float("nan"),
        "cpu_rate": steady_n / cpu if cpu > 0 else float("nan"),
        "first_batch_events": first[1],
        "startup_s": first[0] - t_start,
        "wall_s": t_done - t_start,
        "micro_batches": batches,
        "broker_cpu_per_event": (broker_done - broker_first) / steady_n if steady_n > 0 else float("nan"),
    }


def run_streaming(
    workdir: Path,
    bootstrap: str,
    n: int,
    repeats: int,
    max_offsets: int,
    log: Any = print,
    quiet: Any = None,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """serve and the Structured Streaming job at local[2] and local[1] on the same topics (fresh per repeat).

    With ``broker_pid`` (a broker on this machine) it also reports what the machine allows:
    :func:`scaling_ceiling`."""
    from tests.benchmarks.bench_common import delete_topic, encode_events, fresh_topic
    from tests.benchmarks.bench_serve import build_reference, run_serve

    reference = build_reference(workdir, NUMERIC_ONLY)
    modes = ("serve", *STREAMING_MASTERS)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    idle: list[float] = []
    for rep in range(repeats):
        values = encode_events(columns(n, 30_000 + rep, NUMERIC_ONLY), NUMERIC_ONLY)
        topic = fresh_topic(bootstrap, "bench-stream", partitions=2)
        produce_partitions(bootstrap, topic, values)
        del values
        for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
            idle.append(quiet() if quiet else float("nan"))
            if mode == "serve":
                res = run_serve(workdir, reference, NUMERIC_ONLY, bootstrap, topic, n)
            else:
                res = run_spark_streaming(
                    workdir, reference, bootstrap, topic, n, mode, max_offsets, broker_pid=broker_pid
                )
            runs[mode].append(res)
        for t in (topic, f"{topic}-stats", f"{topic}-alerts"):
            delete_topic(bootstrap, t)
        log(
            f"  spark_streaming repeat {rep + 1}/{repeats}: "
            + ", ".join(
                f"{m} {runs[m][-1]['rate'] / 1000:.0f}k/s ({runs[m][-1]['cpu_rate'] / 1000:.0f}k/CPU-s)" for m in modes
            )
        )
    out: dict[str, Any] = {"events": n, "partitions": 2, "max_offsets_per_trigger": max_offsets, "runs": runs}
    out["cpu_idle_before_run"] = idle
    for m in modes:
        out[f"{m}_rate"] = median(r["rate"] for r in runs[m])
        out[f"{m}_cpu_rate"] = median(r["cpu_rate"] for r in runs[m])
    out["local2_vs_serve"] = out["local[2]_rate"] / out["serve_rate"]
    out["local2_vs_local1"] = out["local[2]_rate"] / out["local[1]_rate"]
    if broker_pid is not None:
        out["cores"] = os.cpu_count() or 1
        out["broker_cpu_per_event"] = median(r["broker_cpu_per_event"] for m in STREAMING_MASTERS for r in runs[m])
        out["local2_ceiling_vs_local1"] = scaling_ceiling(
            out["cores"], out["local[2]_cpu_rate"], out["broker_cpu_per_event"], out["local[1]_rate"]
        )
    return out


def scaling_ceiling(cores: int, cpu_rate: float, broker_cpu_per_event: float, base_rate: float) -> float:
    """The most a job could reach here, as a multiple of ``base_rate``: every core busy, each event
    costing the job ``1 / cpu_rate`` CPU seconds (its whole process tree: driver, executors,
    Python workers) and the broker on the same machine ``broker_cpu_per_event``. An upper bound:
    the OS and the benchmark's own polling are left out."""
    return cores / (1.0 / cpu_rate + broker_cpu_per_event) / base_rate
