"""The scaling model: N ``serve`` processes of one monitor in one consumer group share one state dir.

State is checkpointed per partition and follows the partitions through rebalances; the owner
of partition 0 closes the windows (summing the other partitions' panes from their owners'
checkpoints). A 2-partition topic, a fixed seeded stream produced in three parts:

1. A starts alone and reads part 1 (it owns both partitions);
2. B joins the group on the same state dir: the rebalance splits the partitions (A checkpoints
   on revoke, each loads its new partition's checkpoint); part 2 is produced and read by both;
3. A leaves (SIGTERM: final checkpoint, commit, leave); B takes every partition from the
   checkpoints; part 3 is produced and read by B.

The union of both processes' records equals :func:`run_local` (the single-consumer result),
window by window and statistic by statistic; every window is reported exactly once, with the
single consumer's ``n_window``; and no offset is skipped or applied twice (events in closed
windows + events in the open panes of the final checkpoints == produced == sum of offsets).

A ``serve`` of *another* group on the same state dir is refused (it would write partitions
another process owns): it waits ``state.lock_timeout`` for the partition's lock, then exits 2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

N = 6000
PARTS = (2000, 4000, 6000)  # produced before A, after B joined, after A left


def assignments(log: Path) -> list[list[int]]:
    text = log.read_text() if log.exists() else ""
    return [[int(p) for p in re.findall(r"\((\d+), -?\d+\)", m)] for m in re.findall(r"assigned \[(.*)\]", text)]


def test_two_consumers_one_joins_one_leaves_equal_a_single_consumer(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = h.topics_for(f"scale-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp_path / "ref.json")
    events = h.make_events(N, seed=29, drift_at=N // 2)
    values = h.encode_events(events)
    state = tmp_path / "shared-state"
    cfg_a = h.write_config(tmp_path, kafka_bootstrap, topics, name="a", group_id="g-scale", state_dir=state)
    cfg_b = h.write_config(tmp_path, kafka_bootstrap, topics, name="b", group_id="g-scale", state_dir=state)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a: subprocess.Popen[bytes] | None = None
    b: subprocess.Popen[bytes] | None = None
    try:
        h.produce(kafka_bootstrap, topics["events"], values[: PARTS[0]], partitions=2)
        a = h.start_serve(cfg_a, log_a)
        h.wait_for(lambda: h.consumed(state) == PARTS[0], "A to read part 1", 60, a, log_a)

        t0 = time.monotonic()
        b = h.start_serve(cfg_b, log_b)
        h.wait_for(
            lambda: len(assignments(log_a)) >= 2 and any(assignments(log_b)), "the partitions to split", 60, b, log_b
        )
        split_in = time.monotonic() - t0
        a_split, b_split = assignments(log_a)[-1], assignments(log_b)[-1]
        h.produce(kafka_bootstrap, topics["events"], values[PARTS[0] : PARTS[1]], partitions=2)
        h.wait_for(lambda: h.consumed(state) == PARTS[1], "A and B to read part 2", 60, b, log_b)
        assert a.poll() is None, log_a.read_text()[-3000:]
        time.sleep(1.0)  # let the closer see the other partition's last checkpoint and close what it can
        a_records_before_leaving = len(h.read_records(tmp_path / "a-stats.jsonl"))
        b_records_while_split = len(h.read_records(tmp_path / "b-stats.jsonl"))

        t1 = time.monotonic()
        assert h.stop(a) == 0  # A leaves
        h.wait_for(lambda: assignments(log_b)[-1] == [0, 1], "B to take every partition", 60, b, log_b)
        takeover_in = time.monotonic() - t1
        h.produce(kafka_bootstrap, topics["events"], values[PARTS[1] :], partitions=2)
        h.wait_for(lambda: h.consumed(state) == N, "B to read part 3", 60, b, log_b)
        time.sleep(1.0)
        assert h.stop(b) == 0
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    rec_a = h.read_records(tmp_path / "a-stats.jsonl")
    rec_b = h.read_records(tmp_path / "b-stats.jsonl")
    union = [r for r in rec_a + rec_b if "window_start" in r and r.get("statistic")]
    last_end = max(r["window_end"] for r in union)
    want = h.expected_records(events, cfg_a, last_end)
    equal = h.digest(union) == h.digest(want)
    got_n, want_n = h.window_counts(union), h.window_counts(want)
    reported = Counter(h.window_key(r) for r in union)
    twice = sorted(k for k, c in reported.items() if c > 1)
    closed_all = sum(n for (_end, seg), n in got_n.items() if seg == "{}")
    held = h.open_overall_events(state)
    offsets = h.offsets(state)
    windows = len({(r["window_start"], json.dumps(r["segment"], sort_keys=True)) for r in union})
    closer = "A" if 0 in a_split else "B"
    print(
        f"\nscaling: {N} events, 2 partitions; A alone read {PARTS[0]}; B joined and the partitions split in "
        f"{split_in:.1f} s (A {a_split}, B {b_split}; closer {closer}); both read {PARTS[1] - PARTS[0]} more; "
        f"A left and B took every partition in {takeover_in:.1f} s and read the last {N - PARTS[1]}; records: "
        f"A {len(rec_a)} (of which {a_records_before_leaving} before leaving), B {len(rec_b)} ({b_records_while_split} "
        f"while split); {windows} (window, segment) pairs, {len(reported)} window records, {len(twice)} reported "
        f"twice; union equals run_local: {equal}; n_window equal: {got_n == want_n}; {closed_all} events in closed "
        f"windows + {held} in open panes = {closed_all + held} of {N}; offsets {offsets}"
    )
    assert sorted([a_split, b_split]) == [[0], [1]]
    assert equal
    assert got_n == want_n
    assert twice == []
    assert len(reported) == len(h.latest_per_key(want))
    assert closed_all + held == N
    assert offsets == {0: N // 2, 1: N // 2}
    assert rec_a and rec_b, "each process should have been the closer for a while"


def test_another_group_on_the_same_state_dir_is_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Only a partition's owner writes its checkpoints: a ``serve`` of another consumer group (a
    misconfiguration: it would read every partition again) on a state dir in use waits
    ``state.lock_timeout`` for the partition's lock, then exits 2 naming the holder; the owner goes on."""
    topics = h.topics_for(f"scale2-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp_path / "ref.json")
    values = h.encode_events(h.make_events(1000, seed=31))
    h.produce(kafka_bootstrap, topics["events"], values, partitions=2)
    state = tmp_path / "shared-state"
    cfg_a = h.write_config(tmp_path, kafka_bootstrap, topics, name="a", group_id="g-one", state_dir=state)
    cfg_c = h.write_config(
        tmp_path,
        kafka_bootstrap,
        topics,
        name="c",
        group_id="g-other",
        state_dir=state,
        overrides={"state": {"lock_timeout": "1s"}},
    )
    log_a = tmp_path / "a.log"
    a = h.start_serve(cfg_a, log_a)
    try:
        h.wait_for(lambda: h.consumed(state) == len(values), "A to read everything", 60, a, log_a)
        t0 = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "stream.cli", "serve", "--config", str(cfg_c)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - t0
        alive = a.poll() is None
        assert h.stop(a) == 0
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    last = refused.stderr.strip().splitlines()[-1] if refused.stderr.strip() else ""
    print(f"\nanother group on the same state dir: exit {refused.returncode} after {took:.1f} s: {last[:200]!r}")
    assert refused.returncode == 2
    assert f"pid {a.pid}" in last and "in use by another streamdrift serve" in last
    assert "Traceback" not in refused.stderr
    assert alive
