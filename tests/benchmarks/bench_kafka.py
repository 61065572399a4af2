"""The ceiling and the floor: raw confluent-kafka consumption, and consumption + the fastest decode.

Run as a subprocess by run.py (one process per measurement, like ``streamdrift serve``)::

    python -m tests.benchmarks.bench_kafka {ceiling|floor} --bootstrap H:P --topic T --n N [--mixed]

It prints one JSON object: messages, the steady-state rate (timed from the end of the first
non-empty batch, so group/connection set-up is excluded, as for serve), wall time including
set-up, VmHWM, and for the floor the sum of every decoded numeric value (the caller compares
it with the sum of the data it produced, so a decoder that drops or garbles values fails).

The floor's decoder is the fastest found here: msgspec typed Structs with ``gc=False``,
one ``decode`` per message through ``map`` (faster than one decode of the batch joined into
a JSON array: 1.9-2.1 against 2.8-2.9 us per mixed event, 1.30-1.36 against 1.41-1.64 per
numeric one), then the features struct's values of the whole batch flattened into one list;
for the mixed variant each categorical column is an extended slice of it (a list of strings)
and is deleted from it; the numeric values left are packed as C doubles by one ``struct``
call into a float64 (n, 20) array. That conversion beats ``np.fromiter`` (305 against 348 ns a
numeric event) and, for the mixed variant, an object array whose numeric block is cast
(1.46 against 1.60 us an event, decode included). Timestamps go to int64. Missing numeric
values decode as None and become NaN. The process runs with serve's garbage-collector
settings.

The floor knows the events' schema (field names and types), not their values: categorical
values decode to strings. Serve also knows the reference profile, and its strict decoder
turns each categorical string straight into its reference bin (``stream.fastenum.coded_strings``)
instead of making a string, so on the mixed stream its decode does less than the floor's.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import sys
import time
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from stream.cli.serve import GC_THRESHOLD
from stream.decode import doubles
from tests.benchmarks.bench_common import CATEGORICAL, NUMERIC, fast_fetch_config

BATCH = 10_000


def vm_hwm_kb(pid: str | int = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _consumer(bootstrap: str, topic: str) -> Any:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(fast_fetch_config(bootstrap))
    c.assign([TopicPartition(topic, 0, 0)])
    return c


def _loop(c: Any, n: int, handle: Any) -> tuple[float, float, int, float]:
    """Consume until n messages; returns (steady s, wall s, messages in the steady part, steady CPU s).

    CPU seconds are this process's (every thread: librdkafka's too), like serve's from /proc.
    """
    t_wall = time.perf_counter()
    seen = 0
    t_first = 0.0
    cpu_first = 0.0
    n_first = 0
    consume = c.consume
    while seen < n:
        msgs = consume(BATCH, 1.0)
        if not msgs:
            if time.perf_counter() - t_wall > 120:
                raise RuntimeError(f"only {seen} of {n} messages after 120 s")
            continue
        for m in msgs[:1]:
            if m.error():
                raise RuntimeError(str(m.error()))
        handle(msgs)
        seen += len(msgs)
        if not t_first:
            t_first = time.perf_counter()
            cpu_first = time.process_time()
            n_first = seen
    t_end = time.perf_counter()
    cpu = time.process_time() - cpu_first
    if seen != n:
        raise RuntimeError(f"consumed {seen} messages, expected {n}")
    return t_end - t_first, t_end - t_wall, n - n_first, cpu


def ceiling(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    total = 0

    def handle(msgs: list[Any]) -> None:
        nonlocal total
        for m in msgs:  # touch every payload, nothing more
            total += len(m.value())

    c = _consumer(bootstrap, topic)
    try:
        steady, wall, n_steady, cpu = _loop(c, n, handle)
    finally:
        c.close()
    return {
        "messages": n,
        "rate": n_steady / steady,
        "cpu_rate": n_steady / cpu if cpu > 0 else float("nan"),
        "wall_s": wall,
        "bytes": total,
        "vm_hwm_kb": vm_hwm_kb(),
    }


def make_decoder(mixed: bool) -> tuple[Any, Any]:
    """The per-message decoder of one event, and the features struct type."""
    fields: list[Any] = [(f, float | None, None) for f in NUMERIC]
    if mixed:
        fields += [(c, str | None, None) for c in CATEGORICAL]
    feats = msgspec.defstruct("Features", fields, gc=False)
    ev_fields: list[Any] = [("timestamp", int), ("features", feats)]
    if mixed:
        ev_fields.append(("segment", str | None, None))
    event = msgspec.defstruct("Event", ev_fields, gc=False)
    return msgspec.json.Decoder(event), feats


def floor(bootstrap: str, topic: str, n: int, mixed: bool) -> dict[str, Any]:
    from confluent_kafka import Message

    decoder, _ = make_decoder(mixed)
    decode = decoder.decode
    value = Message.value
    astuple = msgspec.structs.astuple
    get_ts, get_features, get_segment = attrgetter("timestamp"), attrgetter("features"), attrgetter("segment")
    k = len(NUMERIC)
    w = k + len(CATEGORICAL)
    sums = np.zeros(k)
    n_cat = 0
    rows = 0
    last_ts = 0

    def handle(msgs: list[Any]) -> None:
        nonlocal rows, last_ts, n_cat
        events = list(map(decode, map(value, msgs)))
        m = len(events)
        ts = np.fromiter(map(get_ts, events), dtype=np.int64, count=m)
        flat = list(chain.from_iterable(map(astuple, map(get_features, events))))
        if mixed:  # each categorical column is an extended slice of the flat values; what remains is numeric
            cats = [flat[j::w] for j in range(k, w)]
            for j in range(w - 1, k - 1, -1):
                del flat[j :: j + 1]
            seg = list(map(get_segment, events))
            n_cat += sum(len(c) for c in cats) + len(seg)
        try:
            x = np.frombuffer(doubles(m * k).pack(*flat), dtype=np.float64).reshape(m, k)
        except struct.error:  # a None (missing value): the conversion that maps it to NaN
            x = np.array(flat, dtype=np.float64).reshape(m, k)
        sums.__iadd__(x.sum(axis=0))
        rows += len(x)
        last_ts = int(ts[-1])

    # the process settings of ``streamdrift serve`` (stream.cli.serve): start-up objects frozen,
    # the young generation collected every GC_THRESHOLD[0] allocations
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    c = _consumer(bootstrap, topic)
    try:
        steady, wall, n_steady, cpu = _loop(c, n, handle)
    finally:
        c.close()
    return {
        "messages": n,
        "rate": n_steady / steady,
        "cpu_rate": n_steady / cpu if cpu > 0 else float("nan"),
        "wall_s": wall,
        "rows": rows,
        "value_sum": float(sums.sum()),
        "categorical_values": n_cat,
        "last_timestamp": last_ts,
        "vm_hwm_kb": vm_hwm_kb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["ceiling", "floor"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--mixed", action="store_true", help="the variant with categoricals and a segment")
    a = p.parse_args(argv)
    out = ceiling(a.bootstrap, a.topic, a.n) if a.mode == "ceiling" else floor(a.bootstrap, a.topic, a.n, a.mixed)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
