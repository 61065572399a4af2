"""kill -9 of ``streamdrift serve`` at seeded random points during a live stream.

A paced producer writes a fixed seeded stream (two partitions, a drift half way) while one
``serve`` process is killed with SIGKILL after a random delay and restarted, again and again
(20 kills by default, 60 in the ``slow`` variant): 80 % of the kills land 0-1.2 s after the
process became active and assigned itself the partitions (while consuming and checkpointing every
200 ms), 20 % during start-up (printed as negative delays). The kernel releases the state lock of
a killed process, so a restart takes over at once. An uninterrupted ``serve`` (own group, own
state, own output topics) reads the same topic at the same time. After the last restart has
caught up:

* the digest of the window statistic records (latest per window key) equals the
  uninterrupted run's, and both equal :func:`run_local` on the closed windows;
* no offset is applied twice or skipped: every closed window's ``n_window`` is the
  uninterrupted one, and in the final checkpoint events in closed windows + events in open
  panes of the overall segment == produced messages == sum of the checkpoint's offsets;
* the alerts (window records with a verdict of drift) have the same set of alert ids.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from detectors.evaluate import alert_id
from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability


def caught_up(state: Path, ends: dict[int, int]) -> bool:
    return h.offsets(state) == ends


def kill_replay(bootstrap: str, tmp: Path, kills: int, seed: int, n_events: int) -> None:
    rng = random.Random(seed)
    topics = h.topics_for(f"k9-{seed}-{kills}-{time.monotonic_ns() % 10**8}")
    create_topics(bootstrap, topics["events"], partitions=2)
    clean_topics = {**h.topics_for(topics["events"] + "-clean"), "events": topics["events"]}
    create_topics(bootstrap, *(topics[k] for k in ("stats", "alerts", "dlq")))
    create_topics(bootstrap, *(clean_topics[k] for k in ("stats", "alerts", "dlq")))
    h.build_reference(tmp / "ref.json")
    events = h.make_events(n_events, seed=seed, drift_at=n_events // 2)
    values = h.encode_events(events)
    victim_cfg = h.write_config(tmp, bootstrap, topics, name="victim")
    clean_cfg = h.write_config(tmp, bootstrap, clean_topics, name="clean")
    victim_log, clean_log = tmp / "victim.log", tmp / "clean.log"

    # the stream should last about as long as the kills take (~1.5 s to start + the delay)
    producer = h.PacedProducer(bootstrap, topics["events"], values, 2, rate=n_events / (kills * 2.2))
    clean = h.start_serve(clean_cfg, clean_log)
    producer.start()
    kill_points: list[float] = []
    try:
        kill_points += h.kill_repeatedly(victim_cfg, victim_log, kills, rng)
        producer.check()
        ends = h.end_offsets(bootstrap, topics["events"], 2)
        assert sum(ends.values()) == n_events
        joined = victim_log.read_text().count("active: consuming")
        final = h.start_serve(victim_cfg, victim_log)
        h.wait_for(
            lambda: victim_log.read_text().count("active: consuming") > joined, "take-over", 30, final, victim_log
        )
        h.wait_for(
            lambda: caught_up(tmp / "victim-state", ends), "the restarted serve to catch up", 120, final, victim_log
        )
        h.wait_for(lambda: caught_up(tmp / "clean-state", ends), "the clean serve to catch up", 60, clean, clean_log)
        assert h.stop(final) == 0
        assert h.stop(clean) == 0
    finally:
        for p in (clean,):
            if p.poll() is None:
                p.kill()
                p.wait()

    got = h.read_records(tmp / "victim-stats.jsonl")
    want = h.read_records(tmp / "clean-stats.jsonl")
    assert want, "the uninterrupted run closed no window"
    last_end = max(r["window_end"] for r in h.latest_per_key(want))
    local = h.expected_records(events, victim_cfg, last_end)
    assert h.digest(want) == h.digest(local), "the uninterrupted serve differs from run_local"
    equal = h.digest(got) == h.digest(want)

    # no offset applied twice or skipped: window by window, and in the final checkpoint
    got_n, want_n = h.window_counts(got), h.window_counts(want)
    differing = sorted(k for k in want_n.keys() | got_n.keys() if got_n.get(k) != want_n.get(k))
    closed_all = sum(n for (_end, seg), n in got_n.items() if seg == "{}")
    held = h.open_overall_events(tmp / "victim-state")
    offsets_sum = h.consumed(tmp / "victim-state")
    skipped = max(0, n_events - (closed_all + held))
    twice = max(0, closed_all + held - n_events)

    alerts_got = {alert_id(r) for r in h.latest_per_key(got) if r["drift"]}
    alerts_want = {alert_id(r) for r in h.latest_per_key(want) if r["drift"]}
    resent = len(got) - len(h.latest_per_key(got))
    print(
        f"\nkill -9 x {kills} (seed {seed}; delays {kill_points[:6]}...): digests equal={equal}, "
        f"{len(differing)} windows with other n_window, {skipped} offsets skipped, {twice} applied twice, "
        f"{closed_all}+{held} events = {n_events} produced, checkpoint offsets sum {offsets_sum}, "
        f"alert ids equal={alerts_got == alerts_want} ({len(alerts_want)} alerts), {resent} records re-sent on replay"
    )
    assert differing == []
    assert equal
    assert (skipped, twice) == (0, 0)
    assert offsets_sum == n_events
    assert alerts_want, "the injected drift raised no alert"
    assert alerts_got == alerts_want
    # the alerts topic carries the same ids (re-sent with the same key after a replay)
    topic_alerts = {json.loads(v)["alert_id"] for v in h.read_topic(bootstrap, topics["alerts"])}
    assert alerts_want <= topic_alerts


def test_kill9_20_times_same_statistics(kafka_bootstrap: str, tmp_path: Path) -> None:
    kill_replay(kafka_bootstrap, tmp_path, kills=20, seed=7, n_events=12_000)


@pytest.mark.slow
def test_kill9_60_times_same_statistics(kafka_bootstrap: str, tmp_path: Path) -> None:
    kill_replay(kafka_bootstrap, tmp_path, kills=60, seed=8, n_events=30_000)
