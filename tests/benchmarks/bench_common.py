"""Shared pieces of the benchmark: the data, producing it to the broker, timing helpers, the machine.

The data: JSON events ``{"timestamp": <epoch ms>, "features": {"f00": 0.1234, ... "f19": ...}}``
with 20 numeric features (normal, rounded to 4 decimals, ~310 bytes), and a variant that adds
5 categorical features ``c0``..``c4`` to ``features`` and a top-level ``segment`` field with 5
values. Every repeat draws fresh data from its own seed, so no repeat re-bins arrays the CPU
has already seen.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 1  # event-time spacing: 1M events span 1000 s of event time
N_NUMERIC = 20
N_CATEGORICAL = 5
NUMERIC = tuple(f"f{j:02d}" for j in range(N_NUMERIC))
CATEGORICAL = tuple(f"c{j}" for j in range(N_CATEGORICAL))
CATEGORIES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
SEGMENTS = ("de", "fr", "us", "uk", "jp")
REFERENCE_SEED = 1_000_003


@dataclass(frozen=True)
class Variant:
    name: str
    categorical: bool

    @property
    def features(self) -> tuple[str, ...]:
        return NUMERIC + (CATEGORICAL if self.categorical else ())


NUMERIC_ONLY = Variant("numeric20", False)
MIXED = Variant("numeric20+cat5+segment", True)


def columns(n: int, seed: int, variant: Variant) -> dict[str, np.ndarray]:
    """Seeded feature columns: numeric ~ N(mu_j, 1) with a small per-feature offset, categoricals skewed."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    x = rng.normal(size=(n, N_NUMERIC)) + np.linspace(-1.0, 1.0, N_NUMERIC)
    x = x.round(4)
    for j, name in enumerate(NUMERIC):
        out[name] = np.ascontiguousarray(x[:, j])
    if variant.categorical:
        p = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
        for name in CATEGORICAL:
            out[name] = np.asarray(CATEGORIES, dtype=object)[rng.choice(len(CATEGORIES), size=n, p=p)]
        out["segment"] = np.asarray(SEGMENTS, dtype=object)[rng.integers(0, len(SEGMENTS), size=n)]
    return out


def encode_events(cols: dict[str, np.ndarray], variant: Variant, start_ms: int = START_MS) -> list[bytes]:
    """Compact JSON, byte-identical to ``orjson.dumps`` of the event dict (checked in ``self_check``)."""
    n = len(cols[NUMERIC[0]])
    num = ",".join(f'"{f}":%r' for f in NUMERIC)
    times = (start_ms + np.arange(n, dtype=np.int64) * STEP_MS).tolist()
    numeric_rows = np.column_stack([cols[f] for f in NUMERIC]).tolist()
    if not variant.categorical:
        tmpl = '{"timestamp":%d,"features":{' + num + "}}"
        return [(tmpl % (t, *r)).encode() for t, r in zip(times, numeric_rows, strict=True)]
    cat = ",".join(f'"{c}":"%s"' for c in CATEGORICAL)
    tmpl = '{"timestamp":%d,"segment":"%s","features":{' + num + "," + cat + "}}"
    cat_rows = list(zip(*(cols[c].tolist() for c in CATEGORICAL), strict=True))
    segs = cols["segment"].tolist()
    return [(tmpl % (t, s, *r, *c)).encode() for t, s, r, c in zip(times, segs, numeric_rows, cat_rows, strict=True)]


def event_dict(cols: dict[str, np.ndarray], variant: Variant, i: int, start_ms: int = START_MS) -> dict[str, Any]:
    feats: dict[str, Any] = {f: float(cols[f][i]) for f in NUMERIC}
    ev: dict[str, Any] = {"timestamp": start_ms + i * STEP_MS}
    if variant.categorical:
        feats.update({c: str(cols[c][i]) for c in CATEGORICAL})
        ev["segment"] = str(cols["segment"][i])
    ev["features"] = feats
    return ev


def self_check() -> None:
    """The fast encoder writes exactly what a JSON library writes for the same event."""
    import orjson

    for variant in (NUMERIC_ONLY, MIXED):
        cols = columns(50, 5, variant)
        fast = encode_events(cols, variant)
        for i in (0, 17, 49):
            expected = orjson.dumps(event_dict(cols, variant, i))
            if fast[i] != expected:
                raise AssertionError(f"encoder mismatch for {variant.name} row {i}: {fast[i]!r} != {expected!r}")


# -- the broker ---------------------------------------------------------------------------
def fresh_topic(bootstrap: str, prefix: str, partitions: int = 1) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    for f in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        f.result(timeout=10)
    return name


def delete_topic(bootstrap: str, topic: str) -> str | None:
    """Free the broker's memory; returns the error text if the broker refuses (reported, not hidden)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        for f in admin.delete_topics([topic]).values():
            f.result(timeout=10)
    except KafkaException as exc:
        return str(exc)
    return None


def produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> float:
    """Produce every value to partition 0; returns msgs/s."""
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
            "acks": "1",
            "log.connection.close": False,
        }
    )
    t0 = time.perf_counter()
    produce_fn = p.produce
    for v in values:
        while True:
            try:
                produce_fn(topic, v, partition=0)
                break
            except BufferError:
                p.poll(0.05)
    remaining = p.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered to {topic}")
    return len(values) / (time.perf_counter() - t0)


def fast_fetch_config(bootstrap: str) -> dict[str, Any]:
    """Consumer settings that keep librdkafka from throttling a slow Python loop (ENVIRONMENT.md)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "fetch.wait.max.ms": 10,
    }


# -- measuring ----------------------------------------------------------------------------
def median(xs: Iterable[float]) -> float:
    vals = [x for x in xs if x == x]
    return statistics.median(vals) if vals else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    import confluent_kafka

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "java": java[0] if java else "not found",
        "broker": "tansu 0.6.0 (stream.demo.broker.EmbeddedBroker, in-memory storage, loopback TCP)",
    }


# -- a quiet machine ------------------------------------------------------------------------------
def cpu_idle(interval: float = 1.0) -> float:
    """Fraction of all CPUs' time that was idle over ``interval`` seconds (from /proc/stat)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        return parts[3] + parts[4], sum(parts)  # idle + iowait, total

    i0, t0 = read()
    time.sleep(interval)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(min_idle: float, timeout: float, log: Callable[[str], None]) -> float:
    """Wait until the machine is at least ``min_idle`` idle (other work would skew the timings).

    Returns the last idle fraction seen; after ``timeout`` seconds it gives up and says so,
    and the caller records the figure with the repeat.
    """
    deadline = time.monotonic() + timeout
    idle = cpu_idle()
    warned = False
    while idle < min_idle and time.monotonic() < deadline:
        if not warned:
            log(f"  waiting for a quiet machine (idle {idle:.0%} < {min_idle:.0%})")
            warned = True
        idle = cpu_idle()
    if idle < min_idle:
        log(f"  machine still busy after {timeout:.0f} s (idle {idle:.0%}); measuring anyway")
    return idle


# -- the same events as Avro (Confluent framing, schema id 1) --------------------------------------
#: the id a fresh in-memory registry gives the first schema registered: the producer's and serve's
#: registries are separate processes' (bench_avro_serve registers the same schema and checks the id)
AVRO_SCHEMA_ID = 1


def avro_schema(variant: Variant) -> dict[str, Any]:
    """The events' writer schema: the JSON events' fields, numeric features nullable doubles."""
    feats: list[dict[str, Any]] = [{"name": f, "type": ["null", "double"], "default": None} for f in NUMERIC]
    top: list[dict[str, Any]] = [{"name": "timestamp", "type": "long"}]
    if variant.categorical:
        feats += [{"name": c, "type": ["null", "string"], "default": None} for c in CATEGORICAL]
        top.append({"name": "segment", "type": "string"})
    top.append({"name": "features", "type": {"type": "record", "name": "Features", "fields": feats}})
    return {"type": "record", "name": "Prediction", "namespace": "bench.streamdrift", "fields": top}


def _varint(v: int) -> bytes:
    z = (v << 1) ^ (v >> 63)  # zig-zag (64-bit)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def encode_avro_events(cols: dict[str, np.ndarray], variant: Variant, start_ms: int = START_MS) -> list[bytes]:
    """The events of :func:`encode_events` as Confluent-framed Avro of :func:`avro_schema`, byte-identical
    to confluent-kafka's ``AvroSerializer`` (checked in ``self_check``); fast: the numeric block of every
    event is laid out at once with numpy."""
    n = len(cols[NUMERIC[0]])
    header = b"\x00" + AVRO_SCHEMA_ID.to_bytes(4, "big")
    block = np.empty((n, 9 * N_NUMERIC), dtype=np.uint8)
    x = np.column_stack([cols[f] for f in NUMERIC]).astype("<f8")
    raw = x.view(np.uint8).reshape(n, N_NUMERIC, 8)
    block.reshape(n, N_NUMERIC, 9)[:, :, 0] = 2  # union branch 1 (double)
    block.reshape(n, N_NUMERIC, 9)[:, :, 1:] = raw
    rows = [r.tobytes() for r in block]
    times = (start_ms + np.arange(n, dtype=np.int64) * STEP_MS).tolist()
    if not variant.categorical:
        return [header + _varint(t) + r for t, r in zip(times, rows, strict=True)]

    def s(v: str) -> bytes:
        b = v.encode()
        return _varint(len(b)) + b

    cats = {c: {v: b"\x02" + s(v) for v in CATEGORIES} for c in CATEGORICAL}
    segs = {v: s(v) for v in SEGMENTS}
    cat_cols = [[cats[c][v] for v in cols[c].tolist()] for c in CATEGORICAL]
    return [
        b"".join((header, _varint(t), segs[g], r, *cs))
        for t, g, r, *cs in zip(times, cols["segment"].tolist(), rows, *cat_cols, strict=True)
    ]


def avro_self_check() -> None:
    """The fast Avro encoder writes exactly what confluent-kafka's serializer writes (with schema id 1)."""
    import json

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    for variant in (NUMERIC_ONLY, MIXED):
        client = SchemaRegistryClient.new_client({"url": "mock://bench-self-check"})
        ser = AvroSerializer(client, json.dumps(avro_schema(variant)))
        ctx = SerializationContext("bench", MessageField.VALUE)
        cols = columns(50, 5, variant)
        fast = encode_avro_events(cols, variant)
        for i in (0, 17, 49):
            expected = ser(event_dict(cols, variant, i), ctx)
            if fast[i] != expected:
                raise AssertionError(f"Avro encoder mismatch for {variant.name} row {i}: {fast[i]!r} != {expected!r}")


def serve_kafka(bootstrap: str, topic: str, group_id: str) -> dict[str, Any]:
    """The kafka section of every benchmarked ``serve``: large fetches, short waits."""
    return {
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "group_id": group_id,
        "extra": {
            "session.timeout.ms": 6000,
            "fetch.queue.backoff.ms": 10,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.wait.max.ms": 10,
        },
    }


def metric_samples(port: int, names: tuple[str, ...] | None = None) -> list[tuple[str, str, float]] | None:
    """The streamdrift_* samples of serve's /metrics as (name, name with labels, value); ``names``
    asks for those alone (prometheus-client's ``name[]`` filter). None while it does not answer."""
    import urllib.error
    import urllib.request

    query = "" if names is None else "?" + "&".join(f"name[]={n}" for n in names)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    out = []
    for line in text.splitlines():
        if line.startswith("streamdrift_"):
            name_labels, _, value = line.rpartition(" ")
            out.append((name_labels.split("{", 1)[0], name_labels, float(value)))
    return out
