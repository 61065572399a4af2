"""Shared pieces of the fault battery: a seeded stream, serve configs, real ``streamdrift serve``
subprocesses, the records digest and checkpoint inspection.

The digest of a run is the sha256 over its window statistic records, latest record per window
key (window, segment, feature, statistic), sorted by :func:`detectors.engine.record_sort_key`.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from detectors.config import MonitorConfig
from detectors.engine import record_sort_key, run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile

T0 = 1_700_000_000_000
STEP_MS = 10
WINDOW_MS = 2_000
#: a secret that must never show up anywhere (logs, errors, /metrics, printed config)
SECRET = "s3cr3t-Pa55w0rd-7f1c"


def build_reference(path: Path) -> ReferenceProfile:
    rng = np.random.default_rng(11)
    ref = ReferenceProfile.build(
        {
            "x": rng.normal(0, 1, 5000),
            "y": rng.normal(5, 2, 5000),
            "c": rng.choice(["a", "b", "c"], 5000, p=[0.5, 0.3, 0.2]).tolist(),
        },
        features=["x", "y", "c"],
        categorical=["c"],
        fine_bins=30,
        coarse_bins=6,
    )
    ref.save(path)
    return ref


def make_events(n: int, seed: int, drift_at: int | None = None) -> list[dict[str, Any]]:
    """``n`` events in time order (STEP_MS apart); from ``drift_at`` on x shifts by +1.5 sd."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    if drift_at is not None:
        x[drift_at:] += 1.5
    y = rng.normal(5, 2, n)
    c = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    country = rng.choice(["de", "fr"], n)
    label = (rng.random(n) < 0.5).astype(int)
    noise = np.full(n, 0.1) if drift_at is None else np.where(np.arange(n) < drift_at, 0.1, 0.6)
    score = np.clip(label + rng.normal(0, 1, n) * noise, 0, 1)
    return [
        {
            "timestamp": T0 + i * STEP_MS,
            "features": {"x": float(x[i]), "y": float(y[i]), "c": str(c[i])},
            "country": str(country[i]),
            "score": float(score[i]),
            "label": int(label[i]),
        }
        for i in range(n)
    ]


def monitor_section(reference: str, *, concept: bool = False, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "monitor": "rel",
        "reference": reference,
        "events": {"segment_fields": ["country"], "prediction_field": "score", "label_field": "label"},
        "window": {"kind": "tumbling", "size": f"{WINDOW_MS}ms", "idle_timeout": "600s"},
        "statistics": {"min_events": 30},
    }
    data["concept"] = {"detector": "adwin", "params": {"delta": 0.002}} if concept else {"detector": "none"}
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return data


def topics_for(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("events", "stats", "alerts", "dlq")}


def write_config(
    tmp: Path,
    bootstrap: str,
    topics: dict[str, str],
    *,
    name: str = "serve",
    group_id: str | None = None,
    concept: bool = False,
    state_dir: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Path:
    data = monitor_section(str(tmp / "ref.json"), concept=concept)
    data.update(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic": topics["events"],
                "group_id": group_id or f"g-{uuid.uuid4().hex[:8]}",
                "batch_size": 200,
                "poll_timeout": "100ms",
                "extra": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            },
            "outputs": {
                "statistics_topic": topics["stats"],
                "alerts_topic": topics["alerts"],
                "dead_letter_topic": topics["dlq"],
                "statistics_file": str(tmp / f"{name}-stats.jsonl"),
            },
            "metrics": {"address": "127.0.0.1", "port": 0},
            "state": {"dir": str(state_dir or tmp / f"{name}-state"), "checkpoint_interval": "200ms"},
        }
    )
    for section, values in (overrides or {}).items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_serve(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "--log-level", "INFO", "serve", "--config", str(config)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )


def kill_repeatedly(config: Path, log: Path, kills: int, rng: np.random.Generator) -> list[float]:
    """Start serve and SIGKILL it ``kills`` times: a fifth of the kills during start-up (0.2-3 s after
    the start), the others 0-1.2 s after it took over and began consuming. Returns the kill points
    (negative: seconds after the start, during start-up; positive: seconds after the take-over)."""
    points: list[float] = []
    for _ in range(kills):
        joined = log.read_text().count("active: consuming") if log.exists() else 0
        proc = start_serve(config, log)
        if rng.random() < 0.2:  # during start-up
            delay = rng.uniform(0.2, 3.0)
            points.append(-round(delay, 2))
        else:  # while consuming: after the take-over
            wait_for(lambda n=joined: log.read_text().count("active: consuming") > n, "take-over", 30, proc, log)
            delay = rng.uniform(0.0, 1.2)
            points.append(round(delay, 2))
        time.sleep(delay)
        assert proc.poll() is None, f"serve died by itself:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return points


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process if it still runs, and reap it (a test's clean-up)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_for(
    cond: Callable[[], bool],
    what: str,
    timeout: float = 60,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise AssertionError(f"serve exited with {proc.returncode} while waiting for {what}:\n{tail}")
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def encode_events(events: Iterable[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    partitions: int = 1,
    partition_of: Callable[[int], int] | None = None,
) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 8_000_000})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=partition_of(i) if partition_of else i % partitions)
        if i % 1000 == 999:
            p.poll(0)
    assert p.flush(30) == 0


class PacedProducer(threading.Thread):
    """Produces ``values`` (round-robin over partitions) at ``rate`` messages per second."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes], partitions: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.values, self.partitions, self.rate = bootstrap, topic, values, partitions, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
            t0 = time.monotonic()
            for i, v in enumerate(self.values):
                due = t0 + i / self.rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                p.produce(self.topic, value=v, partition=i % self.partitions)
                p.poll(0)
            assert p.flush(30) == 0
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread by check()
            self.error = exc

    def check(self, timeout: float = 300) -> None:
        """Wait until every message is produced; re-raise the producer's error."""
        self.join(timeout)
        assert not self.is_alive(), f"the paced producer did not finish within {timeout} s"
        if self.error is not None:
            raise self.error


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Number of messages per partition, counted by reading (tansu's ListOffsets quirk avoided)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    last: dict[int, int] = {p: 0 for p in range(partitions)}
    eof: set[int] = set()
    deadline = time.monotonic() + 30
    while len(eof) < partitions and time.monotonic() < deadline:
        for m in c.consume(1000, 0.2):
            err = m.error()
            if err is None:
                last[m.partition()] = m.offset() + 1
            elif err.code() == -191:  # _PARTITION_EOF
                eof.add(m.partition())
    c.close()
    return last


def read_topic(bootstrap: str, topic: str, partitions: int = 1, quiet_s: float = 1.5) -> list[bytes]:
    """Every message value of a topic (reads until nothing new arrives for ``quiet_s``)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[bytes] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        for m in c.consume(1000, 0.2):
            if m.error() is None:
                out.append(m.value())
                last = time.monotonic()
    c.close()
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def window_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["window_start"], r["window_end"], json.dumps(r["segment"], sort_keys=True), r["feature"], r["statistic"])


def latest_per_key(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        if "window_start" in r and r.get("statistic") is not None:
            latest[window_key(r)] = r
    return sorted(latest.values(), key=record_sort_key)


def digest(records: Iterable[dict[str, Any]]) -> str:
    text = json.dumps(latest_per_key(records), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def window_counts(records: Iterable[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """n_window per (window_end, segment), read from feature x's PSI records (every event has an x)."""
    return {
        (r["window_end"], json.dumps(r["segment"], sort_keys=True)): int(r["n_window"])
        for r in latest_per_key(records)
        if r["feature"] == "x" and r["statistic"] == "psi"
    }


def open_overall_events(state_dir: Path) -> int:
    """Events held by the still-open panes of the overall segment (id 0, key ``[]``) in the newest checkpoint."""
    doc = newest_checkpoint(state_dir)
    if doc is None:
        return 0
    assert doc["state"]["windows"]["router"]["keys"][0] == []
    return sum(n for (segment, _pane), (n, _counts) in read_panes(state_dir, doc).items() if segment == 0)


def read_panes(state_dir: Path, doc: dict[str, Any]) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
    """The panes of a checkpoint, read from its pane log as stream/service/checkpoint.py documents the format (file
    header: 8-byte magic, u32 slots; chunks: b"CHNK", u32 deleted, u32 updated, u64 body length, sha256,
    then the deleted (i4 segment, i8 pane) and updated (i4 segment, i8 pane, i8 events, i8 counts) records)."""
    info = doc["panes"]
    data = (state_dir / info["log"]).read_bytes()[: info["length"]]
    slots = struct.unpack_from("<I", data, 8)[0]
    assert data[:8] == b"SDPANES1" and slots == info["slots"]
    deleted = np.dtype([("s", "<i4"), ("p", "<i8")])
    updated = np.dtype([("s", "<i4"), ("p", "<i8"), ("n", "<i8"), ("c", "<i8", (slots,))])
    panes: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
    pos = 12
    while pos < len(data):
        magic, n_del, n_upd, size = struct.unpack_from("<4sIIQ", data, pos)
        assert magic == b"CHNK"
        body = data[pos + 52 : pos + 52 + size]
        assert hashlib.sha256(data[pos : pos + 20] + body).digest() == data[pos + 20 : pos + 52]
        for s, p in np.frombuffer(body, dtype=deleted, count=n_del).tolist():
            panes.pop((s, p), None)
        for rec in np.frombuffer(body, dtype=updated, count=n_upd, offset=n_del * deleted.itemsize):
            panes[(int(rec["s"]), int(rec["p"]))] = (int(rec["n"]), rec["c"].copy())
        pos += 52 + size
    assert pos == len(data)
    return panes


def expected_records(events: list[dict[str, Any]], config_path: Path, closed_until_ms: int) -> list[dict[str, Any]]:
    """run_local over the events, restricted to windows that end by ``closed_until_ms``."""
    data = yaml.safe_load(config_path.read_text())
    mon = MonitorConfig.from_mapping(data)
    ref = ReferenceProfile.load(mon.reference)
    layout = Layout(ref, mon.features.include)
    cols, errors = decode_events(events, mon, ref, layout.features)
    assert not errors
    recs = [r for r in run_local(cols, mon, ref, layout) if "window_start" in r and r.get("statistic")]
    return [r for r in recs if r["window_end"] <= closed_until_ms]


def manifest_files(state_dir: Path) -> list[Path]:
    """The checkpoint manifests of a state dir, oldest first."""
    return sorted(state_dir.glob("manifest-*")) if state_dir.exists() else []


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest's JSON (its first line is the sha256 of the rest); raises ValueError if corrupt."""
    head, _sep, body = path.read_bytes().partition(b"\n")
    if head.decode(errors="replace") != hashlib.sha256(body).hexdigest():
        raise ValueError(f"{path.name}: checksum mismatch")
    doc: dict[str, Any] = json.loads(body)
    return doc


def newest_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint manifest of a state dir (None: none yet)."""
    for f in reversed(manifest_files(state_dir)):
        try:
            return read_manifest(f)
        except (OSError, ValueError):
            continue  # corrupt (the consumer skips it too) or deleted meanwhile
    return None


def offsets(state_dir: Path) -> dict[int, int]:
    """Next offset per partition, from the newest checkpoint (partitions never read are left out)."""
    doc = newest_checkpoint(state_dir)
    return {} if doc is None else {int(p): int(o) for p, o in doc["state"]["offsets"]}


def consumed(state_dir: Path) -> int:
    """Messages read and checkpointed, over every partition."""
    return sum(offsets(state_dir).values())


def scrape(port: int, scheme: str = "http", context: Any = None) -> str:
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=5, context=context) as r:
        return str(r.read().decode())


def metrics_port(log: Path) -> int | None:
    found = re.findall(r"metrics on https?://[^:]+:(\d+)/metrics", log.read_text())
    return int(found[-1]) if found else None


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")
