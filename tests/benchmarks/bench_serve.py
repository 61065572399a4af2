"""``streamdrift serve`` end to end, as a subprocess, on a topic produced beforehand.

The consumer runs with the same fetch settings as the floor (``kafka.extra``), one
partition, tumbling 60 s event-time windows (1M events = 1000 s of event time = 17 windows),
PSI + KS on every feature (chi-square on categoricals), the statistics and alerts topics,
/metrics, and a checkpoint every 10 s. No concept detector (the data has no predictions).

Completion and timing: the benchmark polls /metrics (every 0.01 s until the first event
shows, then every 0.1 s) and stops when ``streamdrift_events_total`` (all outcomes) reaches
N. The clock is serve's own: ``streamdrift_last_batch_timestamp_seconds`` is set when a
batch is done, together with the event counters, so the steady rate is (N - events at the
first scrape that shows any) / (last-batch time at the end - last-batch time at that
scrape): from the end of a batch to the end of the last one, as the floor times itself,
whatever the polling interval (group join and start-up excluded). (Serve sets the two one
statement apart, so a scrape could in principle fall between them and pair a batch's count
with the previous batch's time, an error of one batch in the 1M; the final reading is taken
again once serve is idle.) The wall time from process start is reported too. A poll asks
only for the counters it reads (``?name[]=``); once a second it scrapes every series, as
Prometheus would (at 15-60x Prometheus' usual rate). ``cpu_rate`` divides the same messages
by the CPU seconds serve used meanwhile (all its threads, /proc/<pid>/stat): on a machine
shared with other work it is the steadier figure. Peak memory is ``VmHWM`` of the serve
process, read from ``/proc/<pid>/status`` before SIGTERM; ``VmRSS`` is sampled along the way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from stream.demo.broker import free_port
from tests.benchmarks.bench_common import (
    CATEGORICAL,
    NUMERIC,
    REFERENCE_SEED,
    Variant,
    avro_schema,
    columns,
    metric_samples,
    serve_kafka,
)

REPO = Path(__file__).resolve().parents[2]


def build_reference(workdir: Path, variant: Variant) -> Path:
    from detectors.reference import ReferenceProfile

    cols = columns(100_000, REFERENCE_SEED, variant)
    ref = ReferenceProfile.build(
        cols, features=list(variant.features), categorical=list(CATEGORICAL) if variant.categorical else []
    )
    path = workdir / f"reference-{variant.name}.json"
    ref.save(path)
    return path


def write_config(
    workdir: Path,
    reference: Path,
    variant: Variant,
    bootstrap: str,
    topic: str,
    port: int,
    tag: str,
    avro: bool = False,
) -> Path:
    cfg: dict[str, Any] = {
        "monitor": "bench",
        "reference": str(reference),
        "events": {
            "time_field": "timestamp",
            "time_unit": "ms",
            "features_field": "features",
            "segment_fields": ["segment"] if variant.categorical else [],
            "format": "avro" if avro else "json",
        },
        "features": {
            "include": list(variant.features),
            "categorical": list(CATEGORICAL) if variant.categorical else [],
        },
        "window": {"kind": "tumbling", "size": "60s", "allowed_lateness": "0s", "idle_timeout": "60s"},
        "segments": {"overall": True, "max_segments": 100},
        "concept": {"detector": "none"},
        "kafka": serve_kafka(bootstrap, topic, f"bench-serve-{tag}"),
        "outputs": {"statistics_topic": f"{topic}-stats", "alerts_topic": f"{topic}-alerts"},
        "metrics": {"address": "127.0.0.1", "port": port},
        "state": {"dir": str(workdir / f"state-{tag}"), "checkpoint_interval": "10s"},
    }
    if avro:
        cfg["schema_registry"] = {"url": f"mock://bench-{tag}"}
    path = workdir / f"serve-{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


#: the counters the benchmark reads; a progress poll asks /metrics for these alone (``name[]``)
PROGRESS = (
    "streamdrift_events_total",
    "streamdrift_windows_closed_total",
    "streamdrift_checkpoints_total",
    "streamdrift_last_batch_timestamp_seconds",
)
#: seconds between full scrapes of /metrics while serve runs (Prometheus' default is 15-60 s)
FULL_SCRAPE_EVERY_S = 1.0


def scrape(port: int, full: bool = True) -> dict[str, float] | None:
    """Samples of the streamdrift_* metrics this benchmark reads, summed over other labels.

    ``full=False`` asks only for :data:`PROGRESS` (prometheus-client's ``name[]`` filter), so
    polling progress often does not make serve render every series each time.
    """
    samples = metric_samples(port, None if full else PROGRESS)
    if samples is None:
        return None
    out: dict[str, float] = {}
    for name, name_labels, value in samples:
        if name in PROGRESS:
            out[name] = out.get(name, 0.0) + value
            if name == "streamdrift_events_total":
                outcome = name_labels.split('outcome="', 1)[1].split('"', 1)[0]
                out[f"events_{outcome}"] = out.get(f"events_{outcome}", 0.0) + value
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(line.split()[1])
    return out


def run_serve(
    workdir: Path,
    reference: Path,
    variant: Variant,
    bootstrap: str,
    topic: str,
    n: int,
    timeout: float = 600.0,
    avro: bool = False,
) -> dict[str, Any]:
    """``avro``: the topic holds the events as Avro (``bench_common.encode_avro_events``); serve runs in
    ``bench_avro_serve`` (the CLI's serve with an in-memory schema registry)."""
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    config = write_config(workdir, reference, variant, bootstrap, topic, port, tag, avro)
    log_path = workdir / f"serve-{tag}.log"
    cmd = [sys.executable, "-m", "stream.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
    if avro:
        schema = workdir / f"schema-{tag}.json"
        schema.write_text(json.dumps(avro_schema(variant)), encoding="utf-8")
        cmd = [sys.executable, "-m", "tests.benchmarks.bench_avro_serve", "--config", str(config)]
        cmd += ["--schema", str(schema)]
    with log_path.open("wb") as log:
        t_start = time.time()  # the epoch clock: serve's last-batch times are on it
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            return _watch(proc, port, n, t_start, timeout, log_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _watch(
    proc: subprocess.Popen[bytes], port: int, n: int, t_start: float, timeout: float, log_path: Path
) -> dict[str, Any]:
    first: tuple[float, float, float] | None = None  # (serve's last-batch time, events, CPU s) at the first sample
    rss: list[tuple[float, int]] = []  # (fraction of the stream consumed, VmRSS kB)
    hwm = 0
    last: dict[str, float] = {}
    last_full = -float("inf")
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"streamdrift serve exited with {proc.returncode} before consuming {n} events:\n{tail}")
        now = time.time()
        if now - t_start > timeout:
            seen = last.get("streamdrift_events_total", 0)
            raise RuntimeError(f"streamdrift serve consumed {seen:.0f} of {n} events in {timeout:.0f} s")
        full = now - last_full >= FULL_SCRAPE_EVERY_S
        m = scrape(port, full)
        if full:
            last_full = now
        if m is not None:
            last = m
            seen = m.get("streamdrift_events_total", 0.0)
            st = proc_status(proc.pid)
            hwm = max(hwm, st["VmHWM"])
            if seen > 0:
                rss.append((seen / n, st["VmRSS"]))
                if first is None:
                    first = (m["streamdrift_last_batch_timestamp_seconds"], seen, cpu_seconds(proc.pid))
            if seen >= n:
                cpu_done = cpu_seconds(proc.pid)
                time.sleep(0.05)  # (as above: read the time again, now that serve is idle)
                again = scrape(port, False)
                t_done = (again or m)["streamdrift_last_batch_timestamp_seconds"]
                break
        time.sleep(0.01 if first is None else 0.1)
    assert first is not None
    hwm = max(hwm, proc_status(proc.pid)["VmHWM"])
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        raise RuntimeError("streamdrift serve did not stop within 60 s of SIGTERM") from None
    if rc != 0:
        raise RuntimeError(f"streamdrift serve exited with {rc} after SIGTERM; see {log_path}")
    steady_s = t_done - first[0]
    steady_n = n - first[1]
    rate = steady_n / steady_s if steady_s > 0 and steady_n > 0 else float("nan")
    cpu = cpu_done - first[2]
    cpu_rate = steady_n / cpu if cpu > 0 and steady_n > 0 else float("nan")
    rss_20 = next((kb for frac, kb in rss if frac >= 0.2), None)
    return {
        "messages": n,
        "rate": rate,
        "cpu_rate": cpu_rate,
        "wall_s": t_done - t_start,
        "startup_s": first[0] - t_start,
        "vm_hwm_kb": hwm,
        "rss_at_20pct_kb": rss_20,
        "rss_at_end_kb": rss[-1][1] if rss else None,
        "events_valid": last.get("events_valid", 0.0),
        "events_invalid": last.get("events_invalid", 0.0),
        "events_late": last.get("events_late", 0.0),
        "windows_closed": last.get("streamdrift_windows_closed_total", 0.0),
        "checkpoints": last.get("streamdrift_checkpoints_total", 0.0),
        "exit_code": rc,
    }


def features_per_event(variant: Variant) -> int:
    return len(NUMERIC) + (len(CATEGORICAL) if variant.categorical else 0)


if __name__ == "__main__":
    print(json.dumps({"features": features_per_event(Variant("x", True))}))
