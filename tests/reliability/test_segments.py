"""One million distinct segment values through a real ``serve``: bounded series, bounded memory.

Every event carries its own ``country`` value. With ``segments.max_segments: 50`` the
consumer tracks the first 50 values, routes the rest to ``__other__`` (counted in
``streamdrift_segments_overflow_total``), and /metrics never shows more than 50 + 2
(``__all__``, ``__other__``) segment label values. Memory is sampled (VmRSS) after the first
100k events and at the end: the growth over the remaining 900k events stays small.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

N = 1_000_000
CAP = 50


def consumed(state: Path) -> int:
    return h.consumed(state)


def test_a_million_distinct_segments(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = h.topics_for(f"seg-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, *topics.values())
    h.build_reference(tmp_path / "ref.json")
    cfg = h.write_config(
        tmp_path,
        kafka_bootstrap,
        topics,
        overrides={"kafka": {"batch_size": 10_000}, "state": {"checkpoint_interval": "1s"}},
    )
    data = yaml.safe_load(cfg.read_text())
    data["segments"] = {"max_segments": CAP}
    data["window"]["size"] = "100s"
    data["outputs"].pop("statistics_file")
    cfg.write_text(yaml.safe_dump(data))
    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 500_000})
    t0 = time.monotonic()
    for i in range(N):
        v = b'{"timestamp":%d,"features":{"x":%.3f,"y":5.0,"c":"a"},"country":"s%d"}' % (
            h.T0 + i,
            ((i * 7919) % 1000) / 250 - 2,
            i,
        )
        while True:
            try:
                p.produce(topics["events"], value=v)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    produced_s = time.monotonic() - t0
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(lambda: consumed(state) >= 100_000, "100k events", 120, proc, log)
        rss_early = h.rss_kib(proc.pid, "VmRSS")
        t1 = time.monotonic()
        h.wait_for(lambda: consumed(state) == N, "1M events", 300, proc, log)
        took = time.monotonic() - t1
        rss_end, hwm = h.rss_kib(proc.pid, "VmRSS"), h.rss_kib(proc.pid, "VmHWM")
        port = h.metrics_port(log)
        assert port is not None
        page = h.scrape(port)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    segments: set[str] = set()
    series = 0
    overflow = None
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            if "segment" in s.labels:
                segments.add(s.labels["segment"])
                series += 1
            if s.name == "streamdrift_segments_overflow_total":
                overflow = s.value
    print(
        f"\n{N:,} distinct segment values (cap {CAP}): {len(segments)} segment label values, {series} series with a "
        f"segment label, overflow counter {overflow:,.0f}; RSS {rss_early // 1024} MiB after 100k -> "
        f"{rss_end // 1024} MiB after 1M (VmHWM {hwm // 1024} MiB); 900k events in {took:.1f} s; "
        f"produced in {produced_s:.1f} s"
    )
    assert len(segments) <= CAP + 2
    assert "__other__" in "".join(segments) and "__all__" in segments
    assert overflow == N - CAP
    assert rss_end - rss_early < 64 * 1024, "memory grew with the number of distinct segment values"
    assert re.search(r"stopped: 1000000 messages, 1000000 valid", log.read_text())
