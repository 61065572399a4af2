"""kill -9 ``streamdrift serve`` part-way, several times, and restart: the window statistics
(and concept-drift records) are exactly those of a run that never crashed.

Kill points (seeded): at random times, right after a new checkpoint manifest appears (between the
checkpoint and the offset commit), and right after the statistics file grows (after outputs,
before their checkpoint). A checkpoint every batch keeps the window between the points short.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import create_topics
from tests.integration.test_serve import (
    TopicReader,
    assert_same_records,
    build_reference,
    expected_records,
    make_events,
    produce,
    start_serve,
    topics_for,
    wait_for,
    window_key,
    write_config,
)
from tests.reliability.harness import kill, newest_checkpoint, stop

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def checkpoints(state: Path) -> set[str]:
    """The checkpoint manifests in the state dir."""
    return {p.name for p in state.glob("manifest-*")} if state.exists() else set()


def latest_offset(state: Path) -> int | None:
    """Partition 0's next offset in the newest readable checkpoint (the topic has one partition)."""
    offsets = offsets_of(state)
    return None if offsets is None else offsets.get(0, 0)


def offsets_of(state: Path) -> dict[int, int] | None:
    doc = newest_checkpoint(state)
    return None if doc is None else {int(p): int(o) for p, o in doc["state"]["offsets"]}


def test_kill_9_at_many_points_gives_identical_statistics(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"crash-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    n = 8000
    events = make_events(n, drift_at=4000, seed=21)
    payloads = [json.dumps(e).encode() for e in events]
    config, data = write_config(
        tmp_path,
        kafka_bootstrap,
        topics,
        kafka={
            "batch_size": 25,
            "poll_timeout": "100ms",
            "extra": {"session.timeout.ms": 1500, "heartbeat.interval.ms": 250},
        },
        state={"checkpoint_interval": "1ms"},
    )
    want = expected_records(events, data, ref, events[-1]["timestamp"])
    assert any(r["statistic"] == "adwin" for r in want)
    state = tmp_path / "state"
    stats_file = tmp_path / "stats.jsonl"
    log = tmp_path / "serve.log"
    rng = random.Random(1234)

    def first_checkpoint(proc: object) -> None:
        before = checkpoints(state)
        wait_for(lambda: bool(checkpoints(state) - before), proc, log)  # type: ignore[arg-type]

    killed_at: list[int | None] = []
    plan = ["random", "after_checkpoint", "random", "after_output", "after_checkpoint"]
    # the stream arrives in parts, one before each (re)start, so every kill lands part-way
    # through the stream however fast the consumer is
    cuts = [round(n * i / (len(plan) + 1)) for i in range(len(plan) + 2)]
    parts = [payloads[a:b] for a, b in itertools.pairwise(cuts)]
    for how, part in zip(plan, parts, strict=False):
        produce(kafka_bootstrap, topics["events"], part)
        proc = start_serve(config, log)
        try:
            first_checkpoint(proc)  # it resumed and made progress
            if how == "random":
                time.sleep(rng.uniform(0.0, 0.4))
            elif how == "after_checkpoint":
                seen = checkpoints(state)
                deadline = time.monotonic() + 10
                while checkpoints(state) == seen and time.monotonic() < deadline:
                    pass
            else:
                size = stats_file.stat().st_size if stats_file.exists() else 0
                deadline = time.monotonic() + 10
                while (stats_file.stat().st_size if stats_file.exists() else 0) == size and time.monotonic() < deadline:
                    pass
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            kill(proc)
        killed_at.append(latest_offset(state))
    # every kill hit the consumer part-way through the stream
    assert all(o is not None and 0 < o < n for o in killed_at), killed_at

    produce(kafka_bootstrap, topics["events"], parts[-1])
    proc = start_serve(config, log)
    reader = TopicReader(kafka_bootstrap, topics["stats"])
    try:
        n_want = len({window_key(r) for r in want})

        def done() -> bool:  # every record out, and every event read (the last window stays open)
            reader.poll(0.2)
            return len({window_key(r) for r in reader.records()}) >= n_want and latest_offset(state) == n

        wait_for(done, proc, log, timeout=120)
        assert stop(proc) == 0
        reader.poll(0.5)
        # the topic may hold re-sent records of re-closed windows, but only identical ones
        assert_same_records(reader.records(), want)
        lines = [json.loads(x) for x in stats_file.read_text().splitlines()]
        assert_same_records(lines, want)
        assert latest_offset(state) == n
        text = log.read_text()
        assert text.count("resuming from checkpoint") >= len(plan)
        assert "Traceback" not in text
    finally:
        reader.close()
        kill(proc)
