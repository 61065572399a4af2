"""The supported scaling model: one active ``serve`` per monitor, group and state dir; a standby takes over.

A consumer's checkpoint is one snapshot per process (window panes of every partition it
reads, with one watermark per partition and one close frontier), not per partition: window
state cannot be split between two live processes, because a window closes only when the
watermark of *every* partition has passed it. So a second process must not join while the
first one runs. The battery checks the hardening that enforces this and the hand-over:

* a second ``serve`` on the same state dir (the shared volume of a standby) joining
  mid-stream is refused before it joins the group (exit 2, an error naming the holder's
  pid), and the active one sees no rebalance;
* when the active one leaves (SIGTERM: final checkpoint + commit), the standby started on
  the same state dir resumes from that checkpoint with every partition, and the union of
  both processes' records equals a single consumer's (:func:`run_local`), window by window.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

N = 4000


def consumed(state: Path) -> int:
    cps = h.checkpoints(state) if state.exists() else []
    return sum(int(o) for _p, o in cps[0]["state"]["offsets"]) if cps else 0


def test_second_consumer_refused_then_takes_over(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = h.topics_for(f"scale-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, topics["events"], partitions=2)
    create_topics(kafka_bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp_path / "ref.json")
    events = h.make_events(N, seed=29, drift_at=N // 2)
    state = tmp_path / "shared-state"
    cfg_a = h.write_config(tmp_path, kafka_bootstrap, topics, name="a", group_id="g-scale", state_dir=state)
    cfg_b = h.write_config(tmp_path, kafka_bootstrap, topics, name="b", group_id="g-scale", state_dir=state)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    producer = h.PacedProducer(kafka_bootstrap, topics["events"], h.encode_events(events), 2, rate=300)
    a = h.start_serve(cfg_a, log_a)
    producer.start()
    b: subprocess.Popen[bytes] | None = None
    try:
        h.wait_for(lambda: consumed(state) > 0, "A to make progress", 30, a, log_a)
        t0 = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "stream.cli", "serve", "--config", str(cfg_b)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        refused_in = time.monotonic() - t0
        time.sleep(1.0)
        a_assignments = log_a.read_text().count("assigned [")
        at_handover = consumed(state)
        assert h.stop(a) == 0  # A leaves mid-stream
        left_at = consumed(state)
        b = h.start_serve(cfg_b, log_b)
        h.wait_for(lambda: "assigned [" in log_b.read_text(), "B's assignment", 30, b, log_b)
        producer.check()
        h.wait_for(lambda: consumed(state) == N, "B to catch up", 60, b, log_b)
        assert h.stop(b) == 0
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    union = h.read_records(tmp_path / "a-stats.jsonl") + h.read_records(tmp_path / "b-stats.jsonl")
    last_end = max(r["window_end"] for r in union)
    want = h.expected_records(events, cfg_a, last_end)
    equal = h.digest(union) == h.digest(want)
    counts_equal = h.window_counts(union) == h.window_counts(want)
    resumed = re.findall(r"restored state: next offsets (\{.*\})", log_b.read_text())
    print(
        f"\nscaling: second consumer on the same state dir refused in {refused_in:.1f} s (exit {refused.returncode}: "
        f"{refused.stderr.strip().splitlines()[-1][:140]!r}); A saw {a_assignments} assignment(s); A left at "
        f"{left_at}/{N} events, B resumed from {resumed[-1] if resumed else None} with every partition; "
        f"union of records equals a single consumer's: {equal} (n_window equal: {counts_equal})"
    )
    assert refused.returncode == 2
    assert f"pid {a.pid}" in refused.stderr and "in use by another streamdrift serve" in refused.stderr
    assert a_assignments == 1
    assert 0 < at_handover <= left_at < N
    assert resumed and re.search(r"assigned \[\(0, \d+\), \(1, \d+\)\]", log_b.read_text())
    assert equal and counts_equal
