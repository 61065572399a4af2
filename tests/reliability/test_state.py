"""Checkpoint faults: corrupt and truncated snapshots, and a full disk under the state directory.

* a truncated newest checkpoint is never loaded: the consumer logs it, falls back to the
  previous generation and ends with the statistics of an undisturbed run;
* every generation corrupt (checksum mismatch, garbage under a checkpoint's name): none is
  loaded, the consumer says so and starts from the committed offsets;
* a full disk (a 256 KiB tmpfs mounted on the state dir, filled up while serve runs):
  checkpoints fail with a clear error and ``streamdrift_checkpoints_total{outcome="failed"}``,
  the committed offsets do not move past the last good checkpoint, the consumer keeps
  running, leaves no temporary files behind, and recovers when space is freed; nothing is
  lost in the end.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

N = 4000


def read_all(state: Path, total: int) -> bool:
    return h.consumed(state) == total


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return max(0, c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        c.close()


def setup(bootstrap: str, tmp: Path, prefix: str, **kw: object) -> tuple[dict[str, str], list[bytes], Path]:
    topics = h.topics_for(f"{prefix}-{time.monotonic_ns() % 10**9}")
    create_topics(bootstrap, *topics.values())
    h.build_reference(tmp / "ref.json")
    values = h.encode_events(h.make_events(N, seed=3, drift_at=N // 2))
    cfg = h.write_config(tmp, bootstrap, topics, **kw)  # type: ignore[arg-type]
    return topics, values, cfg


def run_until(cfg: Path, log: Path, state: Path, total: int) -> None:
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(lambda: read_all(state, total), f"serve to read {total} messages", 90, proc, log)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)


def final_equals_local(tmp: Path, cfg: Path, values: list[bytes]) -> bool:
    got = h.read_records(tmp / "serve-stats.jsonl")
    last_end = max(r["window_end"] for r in got)
    want = h.expected_records([json.loads(v) for v in values], cfg, last_end)
    return h.digest(got) == h.digest(want)


def test_truncated_newest_checkpoint_falls_back_to_the_previous(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics, values, cfg = setup(kafka_bootstrap, tmp_path, "cp")
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    h.produce(kafka_bootstrap, topics["events"], values[: N // 2])
    run_until(cfg, log, state, N // 2)
    files = h.checkpoint_files(state)
    assert len(files) == 2, files
    newest, previous = files[-1], files[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    h.produce(kafka_bootstrap, topics["events"], values[N // 2 :])
    run_until(cfg, log, state, N)
    text = log.read_text()
    skipped = re.findall(r"skipping corrupt checkpoint (\S+):", text)
    resumed = re.findall(r"resuming from checkpoint (\S+)", text)
    equal = final_equals_local(tmp_path, cfg, values)
    print(
        f"\ntruncated newest checkpoint: skipped {[Path(s).name for s in skipped]}, resumed from "
        f"{[Path(r).name for r in resumed]}, final statistics equal run_local: {equal}"
    )
    assert [Path(s).name for s in skipped] == [newest.name]
    assert Path(resumed[-1]).name == previous.name
    assert equal


def test_all_checkpoints_corrupt_starts_from_committed_offsets(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics, values, cfg = setup(kafka_bootstrap, tmp_path, "cp2", group_id="g-corrupt")
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    h.produce(kafka_bootstrap, topics["events"], values[: N // 2])
    run_until(cfg, log, state, N // 2)
    files = h.checkpoint_files(state)
    data = files[-1].read_bytes()
    # a valid JSON document whose checksum no longer matches: one digit of the offset changed
    assert b'"offset":' in data
    files[-1].write_bytes(data.replace(b'"offset":', b'"offset":1', 1))
    files[0].write_bytes(b"\x00garbage")
    before = committed(kafka_bootstrap, "g-corrupt", topics["events"])
    log = tmp_path / "restart.log"
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(
            lambda: "starting from the committed offsets" in log.read_text(), "the fallback log line", 30, proc, log
        )
        h.wait_for(lambda: "assigned [" in log.read_text(), "assignment", 30, proc, log)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    text = log.read_text()
    skipped = re.findall(r"skipping corrupt checkpoint \S+: (.*?) \(", text)
    reassigned = re.findall(r"assigned \[\(0, (-?\d+)\)\]", text)
    print(
        f"\nall checkpoints corrupt: reasons {skipped}; resumed at committed offset {before} "
        f"(assignment offset {reassigned[-1]} = committed, not a bad snapshot's)"
    )
    assert len(skipped) == 2 and "checksum mismatch" in skipped
    assert any(s.startswith("unreadable") for s in skipped)
    assert reassigned[-1] == "-1001"  # no snapshot offset: librdkafka resumes at the committed offset
    assert before == N // 2


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` until ENOSPC; return the filler file."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_fails_checkpoints_loudly_and_commits_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    state = tmp_path / "serve-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state)], check=True)
    try:
        topics, values, cfg = setup(kafka_bootstrap, tmp_path, "disk", group_id="g-disk")
        log = tmp_path / "serve.log"
        h.produce(kafka_bootstrap, topics["events"], values[: N // 2])
        proc = h.start_serve(cfg, log)
        try:
            h.wait_for(lambda: read_all(state, N // 2), "the first half", 60, proc, log)
            time.sleep(0.5)
            good = committed(kafka_bootstrap, "g-disk", topics["events"])
            filler = fill(state)
            h.produce(kafka_bootstrap, topics["events"], values[N // 2 :])
            h.wait_for(
                lambda: log.read_text().count("failed, offsets not committed") >= 3, "failed checkpoints", 30, proc, log
            )
            port = h.metrics_port(log)
            assert port is not None
            page = h.scrape(port)
            failed = re.search(r'streamdrift_checkpoints_total\{monitor="rel",outcome="failed"\} (\S+)', page)
            assert failed is not None and float(failed.group(1)) >= 1
            during = committed(kafka_bootstrap, "g-disk", topics["events"])
            leftovers = [p.name for p in state.rglob("*") if p.name.endswith(".tmp")]
            alive = proc.poll() is None
            os.unlink(filler)
            h.wait_for(lambda: read_all(state, N), "recovery after space is freed", 60, proc, log)
            time.sleep(0.5)
            after = committed(kafka_bootstrap, "g-disk", topics["events"])
            assert h.stop(proc) == 0
        finally:
            h.kill(proc)
        err = re.search(r"checkpoint \(\w+\) failed, offsets not committed; will retry: (.*)", log.read_text())
        equal = final_equals_local(tmp_path, cfg, values)
        print(
            f"\nfull disk (256 KiB tmpfs): {float(failed.group(1)):.0f} failed checkpoints "
            f"(error: {err.group(1) if err else None!r}); committed offset {good} -> {during} while full -> "
            f"{after} after; alive {alive}; temp files left {leftovers}; final statistics equal run_local: {equal}"
        )
        assert during == good == N // 2
        assert alive
        assert leftovers == []
        assert after == N
        assert err is not None and "No space left" in err.group(1)
        assert equal
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_unusable_state_dir_is_one_clear_error(tmp_path: Path) -> None:
    h.build_reference(tmp_path / "ref.json")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    cfg = h.write_config(tmp_path, "127.0.0.1:1", h.topics_for("x"), state_dir=blocker / "state")
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    print(f"\nunusable state dir: exit {run.returncode}, {run.stderr.strip().splitlines()[-1]!r}")
    assert run.returncode == 2
    assert "state.dir" in run.stderr and "Traceback" not in run.stderr
