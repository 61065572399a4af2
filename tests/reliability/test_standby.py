"""One active ``serve`` per monitor, standbys that take over: real processes on the real broker.

Two processes of one monitor share its ``state.dir``. The one holding the state lock is active and
consumes every partition; the other is a standby: it exports ``streamdrift_active 0`` and no
verdict, lag, staleness or reference series, and waits for the lock as long as it takes.

* kill -9 of the active process mid-stream (two partitions, a paced stream, concept detection on):
  the standby takes over within a few seconds of the lock being released (the kernel releases it
  when the process dies), and the union of both processes' records equals an uninterrupted serve's
  (own state, group and output topics, reading the same topic at the same time) window by window,
  statistic by statistic: no window is published with other values, every window's ``n_window``
  is the uninterrupted one, and no offset is skipped or applied twice (events in closed windows +
  events in open panes of the final checkpoint == produced == the checkpoint's offsets). The
  uninterrupted serve equals :func:`run_local` on the window statistics.
* SIGSTOP of the active process: the standby keeps waiting (it does not exit, and nothing in the
  state dir changes while the owner is frozen); SIGTERM + SIGCONT: the owner finishes its batch,
  checkpoints and exits, and the standby takes over and reads the rest; the final statistics equal
  :func:`run_local`. A standby stopped with SIGTERM while waiting exits 0 at once.
* ``state.lock_timeout`` (the setting of the earlier design) stops serve at start, naming what
  replaces it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.evaluate import WINDOW_STATISTICS
from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

#: a standby may export these and nothing else
STANDBY_SERIES = {"streamdrift_active", "streamdrift_build_info"}


def series(port: int) -> dict[str, dict[str, float]]:
    """name -> {labels text: value} of a scrape (comments and *_created samples left out)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for line in h.scrape(port).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        assert m, line
        if not m.group(1).endswith("_created"):
            out[m.group(1)][m.group(2) or ""] = float(m.group(3))
    return dict(out)


def active(port: int) -> float:
    return series(port)["streamdrift_active"]['{monitor="rel"}']


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    h.wait_for(lambda: text in (log.read_text() if log.exists() else ""), repr(text), timeout, proc, log)


def port_of(log: Path, proc: subprocess.Popen[bytes]) -> int:
    h.wait_for(lambda: h.metrics_port(log) is not None, "the metrics port", 60, proc, log)
    port = h.metrics_port(log)
    assert port is not None
    return port


def assert_standby(port: int) -> None:
    got = series(port)
    assert set(got) == STANDBY_SERIES, sorted(set(got) - STANDBY_SERIES)
    assert got["streamdrift_active"] == {'{monitor="rel"}': 0.0}


def setup(bootstrap: str, tmp: Path, prefix: str) -> dict[str, str]:
    topics = h.topics_for(f"{prefix}-{time.monotonic_ns() % 10**9}")
    create_topics(bootstrap, topics["events"], partitions=2)
    create_topics(bootstrap, topics["stats"], topics["alerts"], topics["dlq"])
    h.build_reference(tmp / "ref.json")
    return topics


def test_kill9_of_the_active_process_the_standby_takes_over_with_the_same_statistics(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = 8000
    topics = setup(kafka_bootstrap, tmp_path, "stby")
    clean_topics = {**h.topics_for(topics["events"] + "-clean"), "events": topics["events"]}
    create_topics(kafka_bootstrap, *(clean_topics[k] for k in ("stats", "alerts", "dlq")))
    events = h.make_events(n, seed=41, drift_at=n // 2)
    state = tmp_path / "shared-state"
    cfg_a = h.write_config(
        tmp_path, kafka_bootstrap, topics, name="a", group_id="g-stby", state_dir=state, concept=True
    )
    cfg_b = h.write_config(
        tmp_path, kafka_bootstrap, topics, name="b", group_id="g-stby", state_dir=state, concept=True
    )
    cfg_clean = h.write_config(tmp_path, kafka_bootstrap, clean_topics, name="clean", concept=True)
    log_a, log_b, log_clean = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "clean.log"
    producer = h.PacedProducer(kafka_bootstrap, topics["events"], h.encode_events(events), 2, rate=800)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        clean = h.start_serve(cfg_clean, log_clean)
        a = h.start_serve(cfg_a, log_a)
        procs += [clean, a]
        wait_log(log_a, "active: consuming", a)
        b = h.start_serve(cfg_b, log_b)
        procs.append(b)
        wait_log(log_b, "standby: ", b)
        port_a, port_b = port_of(log_a, a), port_of(log_b, b)
        assert active(port_a) == 1
        producer.start()
        # A closes windows while B stands by, exporting nothing of the monitor
        h.wait_for(lambda: len(h.read_records(tmp_path / "a-stats.jsonl")) > 200, "A's first records", 60, a, log_a)
        standby_seen = series(port_b)
        assert_standby(port_b)
        assert f"held by pid {a.pid} host " in log_b.read_text()
        a_offsets = h.offsets(state)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        t_kill = time.monotonic()
        h.wait_for(lambda: active(port_b) == 1, "B to take over", 30, b, log_b)
        took = time.monotonic() - t_kill
        producer.check()
        ends = h.end_offsets(kafka_bootstrap, topics["events"], 2)
        assert sum(ends.values()) == n
        h.wait_for(lambda: h.offsets(state) == ends, "B to read everything", 120, b, log_b)
        h.wait_for(lambda: h.offsets(tmp_path / "clean-state") == ends, "the clean run", 60, clean, log_clean)
        b_series = series(port_b)
        assert h.stop(b) == 0
        assert h.stop(clean) == 0
    finally:
        for p in procs:
            h.kill(p)

    rec_a, rec_b = h.read_records(tmp_path / "a-stats.jsonl"), h.read_records(tmp_path / "b-stats.jsonl")
    want = h.read_records(tmp_path / "clean-stats.jsonl")
    union = rec_a + rec_b
    # no window published with other values: every record of a key (A's, B's re-sent ones) is the same
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in union:
        by_key[h.window_key(r)].append(r)
    differing = sorted(k for k, rs in by_key.items() if any(r != rs[0] for r in rs))
    resent = sum(len(rs) - 1 for rs in by_key.values())
    equal = h.digest(union) == h.digest(want)
    last_end = max(r["window_end"] for r in h.latest_per_key(want))
    local = [r for r in h.expected_records(events, cfg_a, last_end) if r["statistic"] in WINDOW_STATISTICS]
    clean_windows = [r for r in want if r.get("statistic") in WINDOW_STATISTICS]
    got_n, want_n = h.window_counts(union), h.window_counts(want)
    closed_all = sum(v for (_end, seg), v in got_n.items() if seg == "{}")
    held = h.open_overall_events(state)
    concept = sorted({r["segment"]["kafka_partition"] for r in union if r.get("statistic") == "adwin"})
    print(
        f"\nstandby: A active (read {sum(a_offsets.values())} by its last checkpoint), B standby exporting "
        f"{sorted(standby_seen)}; kill -9 A: B active after {took:.2f} s; records A {len(rec_a)}, B {len(rec_b)} "
        f"({resent} re-sent, {len(differing)} keys with other values); union equals the uninterrupted serve: "
        f"{equal}; n_window equal: {got_n == want_n}; {closed_all} events in closed windows + {held} in open panes "
        f"= {closed_all + held} of {n}; concept records of partitions {concept}; B exports "
        f"{len(b_series)} series names after take-over"
    )
    assert rec_a and rec_b
    assert took < 5
    assert differing == []
    assert equal
    assert h.digest(clean_windows) == h.digest(local), "the uninterrupted serve differs from run_local"
    assert got_n == want_n
    assert closed_all + held == n
    assert sum(h.offsets(state).values()) == n
    assert concept == ["0", "1"]
    assert b_series["streamdrift_active"] == {'{monitor="rel"}': 1.0}
    assert "streamdrift_consumer_lag_messages" in b_series and "streamdrift_statistic_value" in b_series


def state_files(state: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime in ns) of everything in the state dir."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.iterdir()}


def test_a_frozen_owner_keeps_the_standby_waiting_until_it_exits(kafka_bootstrap: str, tmp_path: Path) -> None:
    n = 4000
    topics = setup(kafka_bootstrap, tmp_path, "frz")
    events = h.make_events(n, seed=43, drift_at=n // 2)
    values = h.encode_events(events)
    state = tmp_path / "shared-state"
    cfgs = {
        name: h.write_config(tmp_path, kafka_bootstrap, topics, name=name, group_id="g-frz", state_dir=state)
        for name in ("a", "b", "c")
    }
    logs = {name: tmp_path / f"{name}.log" for name in cfgs}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        h.produce(kafka_bootstrap, topics["events"], values[: n // 2], partitions=2)
        a = h.start_serve(cfgs["a"], logs["a"])
        procs.append(a)
        h.wait_for(lambda: h.consumed(state) == n // 2, "A to read the first half", 60, a, logs["a"])
        b = h.start_serve(cfgs["b"], logs["b"])
        c = h.start_serve(cfgs["c"], logs["c"])
        procs += [b, c]
        wait_log(logs["b"], "standby: ", b)
        wait_log(logs["c"], "standby: ", c)
        # a standby stopped while it waits exits at once, cleanly
        t0 = time.monotonic()
        assert h.stop(c) == 0
        c_exit = time.monotonic() - t0
        assert "stopped while standing by" in logs["c"].read_text()

        a.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # (a checkpoint in flight ends before the process stops)
        frozen = state_files(state)
        time.sleep(8)  # longer than any lock timeout of the earlier design would wait here
        assert b.poll() is None, logs["b"].read_text()[-3000:]
        assert state_files(state) == frozen  # B did not write (and A could not)
        port_b = port_of(logs["b"], b)
        assert_standby(port_b)
        assert not (tmp_path / "b-stats.jsonl").exists()

        a.send_signal(signal.SIGTERM)  # (pending while A is stopped)
        a.send_signal(signal.SIGCONT)
        assert a.wait(30) == 0
        t_exit = time.monotonic()
        h.wait_for(lambda: active(port_b) == 1, "B to take over", 30, b, logs["b"])
        took = time.monotonic() - t_exit
        h.produce(kafka_bootstrap, topics["events"], values[n // 2 :], partitions=2)
        h.wait_for(lambda: h.consumed(state) == n, "B to read the rest", 60, b, logs["b"])
        assert h.stop(b) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
            h.kill(p)
    records = h.read_records(tmp_path / "a-stats.jsonl") + h.read_records(tmp_path / "b-stats.jsonl")
    last_end = max(r["window_end"] for r in records)
    equal = h.digest(records) == h.digest(h.expected_records(events, cfgs["a"], last_end))
    print(
        f"\nfrozen owner: the standby waited 8 s without exiting or writing; a standby stopped while waiting "
        f"exited in {c_exit:.2f} s; the owner SIGTERM'ed and resumed exited 0 and the standby took over in "
        f"{took:.2f} s; final statistics equal run_local: {equal}"
    )
    assert c_exit < 3
    assert took < 5
    assert equal


def test_the_lock_timeout_of_earlier_versions_is_refused_at_start(tmp_path: Path) -> None:
    h.build_reference(tmp_path / "ref.json")
    cfg = h.write_config(tmp_path, "127.0.0.1:1", h.topics_for("x"))
    data = yaml.safe_load(cfg.read_text())
    data["state"]["lock_timeout"] = "15s"
    cfg.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    print(f"\nstate.lock_timeout: exit {run.returncode}, {run.stderr.strip().splitlines()[-1]!r}")
    assert run.returncode == 2
    assert "lock_timeout is no longer a setting" in run.stderr and "standby" in run.stderr
    assert "Traceback" not in run.stderr
