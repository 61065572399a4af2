"""Checkpoint faults: corrupt and truncated manifests, a corrupt pane log, and a full disk under the state
directory.

* a truncated newest manifest, or a corrupt chunk of the pane log that only the newest manifest
  covers, is never loaded: the consumer logs it, falls back to the previous checkpoint and ends
  with the statistics of an undisturbed run;
* every checkpoint corrupt (a manifest whose checksum no longer matches, a pane log chunk whose
  checksum no longer matches): none is loaded, the consumer says so and starts from the committed
  offsets;
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


@pytest.mark.parametrize("how", ["truncated manifest", "corrupt log chunk"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(kafka_bootstrap: str, tmp_path: Path, how: str) -> None:
    topics, values, cfg = setup(kafka_bootstrap, tmp_path, "cp")
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    h.produce(kafka_bootstrap, topics["events"], values[: N // 2])
    run_until(cfg, log, state, N // 2)
    if how == "corrupt log chunk":
        # a few more events, then kill -9 right after their checkpoint: the newest checkpoint appended a chunk
        h.produce(kafka_bootstrap, topics["events"], values[N // 2 : N // 2 + 100])
        proc = h.start_serve(cfg, log)
        try:
            h.wait_for(lambda: read_all(state, N // 2 + 100), "100 more messages", 60, proc, log)
        finally:
            h.kill(proc)
    files = h.manifest_files(state)
    assert len(files) == 2, files
    newest, previous = files[-1], files[0]
    if how == "truncated manifest":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    else:  # a byte of the chunk only the newest checkpoint covers flipped
        doc, prev = h.read_manifest(newest), h.read_manifest(previous)
        log_file = state / doc["panes"]["log"]
        assert doc["panes"]["log"] == prev["panes"]["log"] and doc["panes"]["length"] > prev["panes"]["length"]
        data = bytearray(log_file.read_bytes())
        data[doc["panes"]["length"] - 1] ^= 0x01
        log_file.write_bytes(bytes(data))
    h.produce(kafka_bootstrap, topics["events"], values[N // 2 + (100 if how == "corrupt log chunk" else 0) :])
    run_until(cfg, log, state, N)
    text = log.read_text()
    skipped = re.findall(r"skipping corrupt checkpoint (\S+): (.*) \(trying the previous one\)", text)
    resumed = re.findall(r"resuming from checkpoint (\S+)", text)
    equal = final_equals_local(tmp_path, cfg, values)
    print(
        f"\n{how}: skipped {[(Path(s).name, why) for s, why in skipped]}, resumed from "
        f"{[Path(r).name for r in resumed]}, final statistics equal run_local: {equal}"
    )
    assert [Path(s).name for s, _why in skipped] == [newest.name]
    assert "checksum mismatch" in skipped[0][1]
    assert Path(resumed[-1]).name == previous.name
    assert equal


def test_all_checkpoints_corrupt_starts_from_committed_offsets(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics, values, cfg = setup(kafka_bootstrap, tmp_path, "cp2", group_id="g-corrupt")
    state, log = tmp_path / "serve-state", tmp_path / "serve.log"
    h.produce(kafka_bootstrap, topics["events"], values[: N // 2])
    run_until(cfg, log, state, N // 2)
    newest, previous = h.manifest_files(state)[-1], h.manifest_files(state)[0]
    # the newest manifest: valid JSON whose checksum no longer matches (one digit of an offset changed)
    data = newest.read_bytes()
    assert b'"offsets":[[0,' in data
    newest.write_bytes(data.replace(b'"offsets":[[0,', b'"offsets":[[0,1', 1))
    # the previous one is intact, but the first chunk of its pane log is not
    log_file = state / h.read_manifest(previous)["panes"]["log"]
    raw = bytearray(log_file.read_bytes())
    raw[12 + 20] ^= 0x01  # (the first byte of the first chunk's sha256)
    log_file.write_bytes(bytes(raw))
    before = committed(kafka_bootstrap, "g-corrupt", topics["events"])
    log = tmp_path / "restart.log"
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(
            lambda: "starting from the committed offsets" in log.read_text(), "the fallback log line", 30, proc, log
        )
        h.wait_for(lambda: "consuming " in log.read_text(), "assignment", 30, proc, log)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    text = log.read_text()
    skipped = re.findall(r"skipping corrupt checkpoint \S+: (.*) \(trying the previous one\)", text)
    assigned = re.findall(r"consuming \S+ partitions (.*)", text)
    print(f"\nall checkpoints corrupt: reasons {skipped}; resumed at committed offset {before} ({assigned[-1]})")
    assert len(skipped) == 2 and skipped[0] == "checksum mismatch"
    assert "chunk at byte 12 is corrupt (checksum mismatch)" in skipped[1]
    assert assigned[-1] == f"0@{N // 2} (committed)"  # no checkpoint: the committed offset, not a bad one's
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
