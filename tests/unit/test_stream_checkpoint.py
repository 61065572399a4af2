"""The state store: manifests and the pane log (what a checkpoint writes, what loading gives back, what is
never loaded), and the state lock that makes one process the active one."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import stream.service.checkpoint as cp
from detectors.exceptions import ConfigError, ReferenceMismatchError
from detectors.histogram import WindowState
from stream.exceptions import CheckpointError
from stream.service.checkpoint import StateLock, StateStore, prepare_state_dir

pytestmark = pytest.mark.unit

SLOTS = 37
FP = "sha256:layout"


class Panes:
    """A pane store that changes like the window manager's: panes added to, new ones, old ones dropped."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.panes: dict[tuple[int, int], WindowState] = {}
        self.changed: set[tuple[int, int]] = set()
        self.dropped: set[tuple[int, int]] = set()
        self.next_pane = 0

    def step(self) -> None:
        for s in range(4):  # the newest pane of every segment gets events; sometimes a new pane starts
            key = (s, self.next_pane)
            counts = self.rng.integers(0, 5, SLOTS).astype(np.int64)
            st = self.panes.get(key)
            if st is None:
                self.panes[key] = WindowState(counts, int(counts.sum()), FP)
            else:
                st.add_(counts, int(counts.sum()))
            self.changed.add(key)
        if self.rng.random() < 0.4:
            self.next_pane += 1
        for key in [k for k in self.panes if k[1] < self.next_pane - 3]:  # the oldest windows closed
            del self.panes[key]
            self.changed.discard(key)
            self.dropped.add(key)

    def save(self, store: StateStore, state: dict[str, Any] | None = None) -> Path:
        path = store.save(state or {"n": self.next_pane}, self.panes, self.changed, self.dropped, SLOTS, FP)
        self.changed, self.dropped = set(), set()
        return path

    def plain(self) -> dict[tuple[int, int], tuple[int, list[int]]]:
        return {k: (st.n_events, st.counts.tolist()) for k, st in self.panes.items()}


def saved(directory: Path, seed: int, steps: int) -> tuple[StateStore, Panes]:
    """A store with ``steps`` checkpoints of a changing pane store."""
    store = StateStore(directory, "m", "fp1")
    p = Panes(seed)
    for _ in range(steps):
        p.step()
        p.save(store)
    return store, p


def plain(panes: dict[tuple[int, int], tuple[int, Any]]) -> dict[tuple[int, int], tuple[int, list[int]]]:
    return {k: (int(n), np.asarray(c).tolist()) for k, (n, c) in panes.items()}


def names(d: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(prefix))


def test_a_checkpoint_loads_back_exactly_the_live_panes_and_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "m", "fp1")
    assert store.load() is None
    p = Panes(1)
    sizes = []
    for i in range(30):
        p.step()
        p.save(store, {"i": i, "nan": float("nan")})
        sizes.append(store.last_bytes)
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and got.state["i"] == 29 and np.isnan(got.state["nan"])
    assert plain(got.panes) == p.plain()
    # two manifests kept; each checkpoint appended what changed only (4 panes and a few deletions), not the state
    assert len(names(tmp_path, "manifest-")) == 2
    record = cp.updated_dtype(SLOTS).itemsize
    appended = [b for b in sizes[1:] if b]
    assert max(appended) <= cp._CHUNK_HEADER_SIZE + 4 * record + 8 * cp._DELETED.itemsize
    assert len(p.panes) > 8  # (more live panes than one checkpoint writes)


def test_the_log_starts_afresh_when_it_outgrows_the_live_panes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(cp, "COMPACT_MIN_BYTES", 0)
    store = StateStore(tmp_path, "m", "fp1")
    p = Panes(2)
    logs_seen = set()
    fresh = 0
    for _ in range(60):
        p.step()
        p.save(store)
        fresh += store.last_compacted
        logs_seen |= set(names(tmp_path, "panes-"))
        # never more than the logs the two kept manifests name
        assert len(names(tmp_path, "panes-")) <= 2
        live = len(p.panes) * cp.updated_dtype(SLOTS).itemsize
        assert (
            os.path.getsize(tmp_path / names(tmp_path, "panes-")[-1])
            <= cp.COMPACT_FACTOR * live
            + 2 * (cp._CHUNK_HEADER_SIZE + 4 * cp.updated_dtype(SLOTS).itemsize + 8 * 12)
            + cp._FILE_HEADER.size
        )
    assert fresh >= 4 and len(logs_seen) == fresh
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and plain(got.panes) == p.plain()


def test_another_layout_starts_a_new_log(tmp_path: Path) -> None:
    store, p = saved(tmp_path, 3, 1)
    p.step()
    p.save(store)
    assert not store.last_compacted
    state = WindowState(np.arange(5, dtype=np.int64), 5, "other")
    store.save({}, {(0, 1): state}, {(0, 1)}, set(), 5, "other")
    assert store.last_compacted
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and got.slots == 5 and plain(got.panes) == {(0, 1): (5, [0, 1, 2, 3, 4])}


def _corrupt_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["checksum", "truncated", "garbage", "log_chunk", "log_gone"])
def test_a_corrupt_checkpoint_is_never_loaded_the_previous_one_is(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, p = saved(tmp_path, 4, 5)
    before = p.plain()
    p.step()
    newest = p.save(store, {"n": "newest"})
    log = tmp_path / names(tmp_path, "panes-")[-1]
    if how == "checksum":  # one byte of the JSON changed
        _corrupt_byte(newest, len(newest.read_bytes()) - 5)
    elif how == "truncated":
        newest.write_bytes(newest.read_bytes()[:40])
    elif how == "garbage":
        newest.write_bytes(b"\x00garbage")
    elif how == "log_chunk":  # a byte of the last chunk (the newest checkpoint's) flipped
        _corrupt_byte(log, os.path.getsize(log) - 3)
    else:
        (tmp_path / "panes-000000000099.log").write_bytes(b"")  # (an unrelated file)
        text = newest.read_text().replace(log.name, "panes-000000000099.log")
        body = text.partition("\n")[2]
        import hashlib

        newest.write_text(hashlib.sha256(body.encode()).hexdigest() + "\n" + body)
    with caplog.at_level(logging.ERROR, logger="streamdrift.checkpoint"):
        got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and got.state["n"] != "newest" and plain(got.panes) == before
    assert f"skipping corrupt checkpoint {newest}" in caplog.text
    # the next checkpoint goes on from the loaded one: what it writes loads back
    store2 = StateStore(tmp_path, "m", "fp1")
    assert store2.load() is not None
    p.changed = set(p.panes)  # (the consumer replays from the loaded checkpoint; everything may have changed)
    p.step()
    p.save(store2, {"n": "after"})
    again = StateStore(tmp_path, "m", "fp1").load()
    assert again is not None and again.state["n"] == "after" and plain(again.panes) == p.plain()


def test_every_checkpoint_corrupt_loads_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _store, _p = saved(tmp_path, 5, 3)
    for m in names(tmp_path, "manifest-"):
        _corrupt_byte(tmp_path / m, 70)
    with caplog.at_level(logging.ERROR, logger="streamdrift.checkpoint"):
        assert StateStore(tmp_path, "m", "fp1").load() is None
    assert caplog.text.count("skipping corrupt checkpoint") == 2
    assert "starting from the committed offsets" in caplog.text


def test_a_chunk_written_after_the_last_manifest_is_cut_off(tmp_path: Path) -> None:
    """A crash after the log append, before the manifest: that chunk is not part of any checkpoint; the
    next checkpoint truncates it and appends its own."""
    _store, p = saved(tmp_path, 6, 3)
    log = tmp_path / names(tmp_path, "panes-")[-1]
    valid = os.path.getsize(log)
    with open(log, "ab") as f:
        f.write(b"CHNK" + b"\xff" * 100_000)  # a chunk cut short, longer than the next one
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and plain(got.panes) == p.plain()
    store2 = StateStore(tmp_path, "m", "fp1")
    store2.load()
    p.step()
    p.save(store2)
    assert os.path.getsize(log) == valid + store2.last_bytes
    again = StateStore(tmp_path, "m", "fp1").load()
    assert again is not None and plain(again.panes) == p.plain()


def test_a_failed_write_is_no_checkpoint_and_the_next_one_writes_it(tmp_path: Path, monkeypatch: Any) -> None:
    store, p = saved(tmp_path, 7, 1)
    p.step()
    real = os.fsync
    calls = {"n": 0}

    def full(fd: int) -> None:
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save({"n": "failed"}, p.panes, p.changed, p.dropped, SLOTS, FP)
    monkeypatch.setattr(os, "fsync", real)
    assert calls["n"] == 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and got.state["n"] != "failed"
    p.save(store, {"n": "ok"})  # (the changes were kept: written now)
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and got.state["n"] == "ok" and plain(got.panes) == p.plain()


def test_a_checkpoint_of_another_reference_or_monitor_is_refused(tmp_path: Path) -> None:
    _store, _p = saved(tmp_path, 8, 1)
    with pytest.raises(ReferenceMismatchError, match="refusing to resume"):
        StateStore(tmp_path, "m", "fp2").load()
    with pytest.raises(ConfigError, match="belongs to monitor 'm'"):
        StateStore(tmp_path, "other", "fp1").load()
    got = StateStore(tmp_path, "m", "fp2", any_reference=True).load()  # (models:/: the consumer decides)
    assert got is not None and got.fingerprint == "fp1"


def test_checkpoints_of_an_earlier_layout_are_refused(tmp_path: Path) -> None:
    (tmp_path / "partitions" / "0").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="earlier streamdrift"):
        prepare_state_dir(tmp_path)


def test_one_process_holds_the_state_lock(tmp_path: Path) -> None:
    a, b = StateLock(tmp_path), StateLock(tmp_path)
    assert a.try_acquire() and a.held
    assert not b.try_acquire() and not b.held  # (another open file description: as another process)
    assert b.holder().startswith(f"pid {os.getpid()} host ")
    a.release()
    assert b.try_acquire()
    assert not a.try_acquire()
    b.release()


def test_a_pane_log_removed_by_hand_is_written_anew(tmp_path: Path) -> None:
    store, p = saved(tmp_path, 9, 1)
    for log in names(tmp_path, "panes-"):
        (tmp_path / log).unlink()
    p.step()
    p.save(store)
    assert store.last_compacted
    got = StateStore(tmp_path, "m", "fp1").load()
    assert got is not None and plain(got.panes) == p.plain()


def test_a_new_log_whose_manifest_failed_is_removed(tmp_path: Path, monkeypatch: Any) -> None:
    store, p = saved(tmp_path, 10, 1)
    before = names(tmp_path, "panes-")

    def fail(path: Path, data: bytes) -> None:
        raise CheckpointError(f"cannot write checkpoint {path}: No space left on device")

    monkeypatch.setattr(store, "_write_atomic", fail)
    p.step()
    with pytest.raises(CheckpointError):
        store.save({}, p.panes, p.changed, p.dropped, SLOTS, "another layout")  # (a new log)
    assert names(tmp_path, "panes-") == before
