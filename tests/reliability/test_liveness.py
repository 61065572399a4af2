"""Liveness: the monitor never goes blind while valid traffic flows.

Real ``streamdrift serve`` processes on the real broker, fed live by a paced producer (event
time advances 2 s per wall-clock second; 2 s windows; ``window.idle_timeout: 2s``). A sampler
scrapes /metrics four times a second. In every case, while valid events flow, windows keep
closing *and* ``streamdrift_last_window_closed_timestamp_seconds`` keeps moving: the longest
stretch without a window closing stays below a bound derived from the settings (the idle
timeout, plus a window of event time, plus polling), not fitted to a run.

(a) an event time in the wrong unit (µs under ``time_unit: ms``) mid-stream: dead-lettered as
    ``future_time``; it used to move its partition's watermark to the year 55,840, so every
    later event of it was late and, with one partition, no window closed again;
(b) one partition carrying only garbage while the others carry valid events: it goes idle (it
    used to count as active without ever having a watermark: no window closed at all);
(c) a partition that goes silent: it goes idle and stops holding windows back;
(d) a partition that returns after being idle: its events count again (windows hold its
    segment), and windows keep closing.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

STEP_MS = 10  # event-time spacing
RATE = 200.0  # messages per second: event time runs 2 s per second
WINDOW_MS = 2_000
IDLE_S = 2.0
SAMPLE_S = 0.25
#: the longest a window close may take while valid events flow: a partition that stops carrying
#: valid events holds windows back until idle (IDLE_S), then the next window must fill (one
#: window of event time at 2 s per second: 1 s), plus the consumer's poll and batch (0.5 s) and
#: the sampling interval (a close is seen at the next scrape)
MAX_GAP_S = IDLE_S + WINDOW_MS / 1000 / (RATE * STEP_MS / 1000) + 0.5 + SAMPLE_S


def _event(i: int, country: str) -> dict[str, Any]:
    x = ((i * 7919) % 1000) / 250.0 - 2.0  # spread over the reference's range, deterministic
    return {
        "timestamp": h.T0 + i * STEP_MS,
        "features": {"x": x, "y": 5.0 + x, "c": "abc"[i % 3]},
        "country": country,
        "score": 0.5,
        "label": i % 2,
    }


@dataclass
class Sample:
    at: float  # wall clock (s)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, tuple(sorted({"monitor": "rel", **labels}.items()))))


class Sampler(threading.Thread):
    """Scrapes a serve's /metrics every SAMPLE_S until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                text = h.scrape(self.port)
            except OSError:
                text = None
            if text is not None:
                values = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in text_string_to_metric_families(text)
                    for s in fam.samples
                }
                self.samples.append(Sample(time.time(), values))
            self.stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


class Schedule(threading.Thread):
    """Produces ``items`` (partition, value or None for a pause of one slot) at RATE per second;
    records the wall-clock time at which each named mark was reached."""

    def __init__(
        self, bootstrap: str, topic: str, items: list[tuple[int, bytes | None]], marks: dict[int, str]
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.items, self.marks = bootstrap, topic, items, marks
        self.reached: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
            t0 = time.monotonic()
            for i, (partition, value) in enumerate(self.items):
                if i in self.marks:
                    p.flush(5)
                    self.reached[self.marks[i]] = time.time()
                due = t0 + i / RATE
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                if value is not None:
                    p.produce(self.topic, value=value, partition=partition)
                    p.poll(0)
            assert p.flush(30) == 0
            self.reached["end"] = time.time()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread by check()
            self.error = exc

    def check(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


@dataclass
class Run:
    samples: list[Sample]
    reached: dict[str, float]
    records: list[dict[str, Any]]
    log: str

    def closes_between(self, start: float, end: float) -> list[float]:
        """Wall-clock times of window closes seen in (start, end]: each change of the gauge."""
        out = []
        prev = None
        for s in self.samples:
            v = s.get("streamdrift_last_window_closed_timestamp_seconds")
            if v is not None and prev is not None and v != prev and start < v <= end:
                out.append(v)
            prev = v
        return out

    def assert_live(self, start: float, end: float, what: str) -> None:
        """Windows close all along (start, end]: the gauge moves, with no gap above MAX_GAP_S."""
        closes = self.closes_between(start, end)
        assert len(closes) >= 2, f"{what}: windows closed {len(closes)} times in {end - start:.1f} s"
        points = [start, *closes, end]
        gaps = [b - a for a, b in itertools.pairwise(points)]
        print(f"\n{what}: {len(closes)} closes seen in {end - start:.1f} s, longest gap {max(gaps):.2f} s")
        assert max(gaps) <= MAX_GAP_S, f"{what}: {max(gaps):.2f} s without a window closing (bound {MAX_GAP_S} s)"
        first, last = self.sample_at(start), self.sample_at(end)
        n0 = first.get("streamdrift_windows_closed_total") or 0.0
        n1 = last.get("streamdrift_windows_closed_total") or 0.0
        assert n1 > n0, f"{what}: windows_closed_total did not grow"

    def sample_at(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.at - t))

    def last(self, name: str, **labels: str) -> float:
        v = self.samples[-1].get(name, **labels)
        assert v is not None, name
        return v


def run_serve(
    bootstrap: str,
    tmp: Path,
    partitions: int,
    items: list[tuple[int, bytes | None]],
    marks: dict[int, str],
    events: dict[str, Any] | None = None,
) -> Run:
    topics = h.topics_for(f"live-{uuid.uuid4().hex[:8]}")
    create_topics(bootstrap, topics["events"], partitions=partitions)
    create_topics(bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp / "ref.json")
    config = h.write_config(
        tmp,
        bootstrap,
        topics,
        overrides={
            "window": {"idle_timeout": f"{IDLE_S}s"},
            "events": {"time_unit": "ms", **(events or {})},
            "statistics": {"min_events": 5},
        },
    )
    log = tmp / "serve.log"
    proc = h.start_serve(config, log)
    sampler: Sampler | None = None
    try:
        h.wait_for(lambda: h.metrics_port(log) is not None, "/metrics", 30, proc, log)
        port = h.metrics_port(log)
        assert port is not None
        h.wait_for(lambda: "active: consuming" in log.read_text(), "the partitions to be assigned", 30, proc, log)
        sampler = Sampler(port)
        sampler.start()
        schedule = Schedule(bootstrap, topics["events"], items, marks)
        schedule.start()
        schedule.check()
        time.sleep(1.0)  # the last batch and its windows
        sampler.stop()
        assert h.stop(proc) == 0
    finally:
        if sampler is not None:
            sampler.stop()
        h.kill(proc)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    return Run(sampler.samples, schedule.reached, h.read_records(tmp / "serve-stats.jsonl"), text)


def _valid(i: int, partition: int) -> tuple[int, bytes]:
    return partition, json.dumps(_event(i, f"p{partition}")).encode()


@pytest.mark.parametrize("partitions", [1, 2])
def test_a_bad_unit_event_mid_stream_does_not_stop_windows(
    kafka_bootstrap: str, tmp_path: Path, partitions: int
) -> None:
    """One partition: the poisoned watermark stopped every window. Two: the other partition's
    watermark still closed windows, but every later event of the poisoned one was counted late."""
    n = 2400  # 12 s; the µs event at 6 s, on partition 0
    items = [_valid(i, i % partitions) for i in range(n)]
    bad = {**_event(n // 2, "p0"), "timestamp": (h.T0 + (n // 2) * STEP_MS) * 1000}  # its time in µs
    items[n // 2] = (0, json.dumps(bad).encode())
    run = run_serve(kafka_bootstrap, tmp_path, partitions, items, {n // 2: "bad", 200: "warm"})
    run.assert_live(run.reached["warm"], run.reached["bad"], "before the µs event")
    run.assert_live(run.reached["bad"], run.reached["end"], "after the µs event")
    assert run.last("streamdrift_dead_letters_total", reason="future_time") == 1
    assert run.last("streamdrift_events_total", outcome="late") == 0
    # the windows after the bad event hold the events of every partition
    psi = [r for r in h.latest_per_key(run.records) if r["feature"] == "x" and r["statistic"] == "psi"]
    after = [r for r in psi if r["window_start"] > _iso(h.T0 + (n // 2) * STEP_MS)]
    assert {json.dumps(r["segment"]) for r in after} >= {f'{{"country": "p{p}"}}' for p in range(partitions)}


def test_a_partition_of_garbage_does_not_stop_windows(kafka_bootstrap: str, tmp_path: Path) -> None:
    n = 2400
    items: list[tuple[int, bytes | None]] = []
    for i in range(n):  # partitions 0 and 1 valid; partition 2 only garbage (every third message)
        items.append((2, b"\x00 not an event") if i % 3 == 2 else _valid(i, i % 3))
    run = run_serve(kafka_bootstrap, tmp_path, 3, items, {200: "warm"})
    assert run.last("streamdrift_dead_letters_total", reason="not_json") == n // 3
    assert run.last("streamdrift_events_total", outcome="invalid") == n // 3
    run.assert_live(run.reached["warm"], run.reached["end"], "with a garbage partition")


def test_a_partition_that_goes_silent_then_returns(kafka_bootstrap: str, tmp_path: Path) -> None:
    """(c) partition 1 goes silent for 5 s (> idle_timeout) while partition 0 goes on; (d) it returns:
    its events count again and windows keep closing throughout."""
    items: list[tuple[int, bytes | None]] = []
    i = 0
    marks: dict[int, str] = {200: "warm"}
    for phase, seconds in (("both", 4), ("silent", 5), ("back", 4)):
        marks[len(items)] = phase
        for _ in range(int(seconds * RATE)):
            p = i % 2
            items.append(_valid(i, 0) if phase == "silent" and p == 1 else _valid(i, p))
            i += 1
    run = run_serve(kafka_bootstrap, tmp_path, 2, items, marks)
    run.assert_live(run.reached["warm"], run.reached["silent"], "both partitions")
    run.assert_live(run.reached["silent"], run.reached["back"], "partition 1 silent")
    run.assert_live(run.reached["back"], run.reached["end"], "partition 1 back")
    # partition 1's events of the last phase are in windows, not dropped as late
    back_ms = h.T0 + next(k for k, v in marks.items() if v == "back") * STEP_MS
    p1 = [
        r
        for r in h.latest_per_key(run.records)
        if r["segment"] == {"country": "p1"} and r["feature"] == "x" and r["statistic"] == "psi"
    ]
    assert any(r["window_start"] >= _iso(back_ms + WINDOW_MS) and r["n_window"] > 0 for r in p1)
    # (late: at most partition 1's events of the window in flight when it woke up, one window of its events)
    late = run.last("streamdrift_events_total", outcome="late")
    print(f"\npartition 1 back: {late:.0f} of its events late")
    assert late <= (RATE / 2) * (WINDOW_MS / 1000) / (RATE * STEP_MS / 1000)


def _iso(ms: int) -> str:
    from detectors.evaluate import iso_ms

    return iso_ms(ms)
