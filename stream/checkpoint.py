"""Atomic, checksummed checkpoints of the consumer's state, one store per partition, two generations kept.

Layout of ``state.dir``::

    partitions/<p>/checkpoint-<seq>.json     the state of partition p (written only by its owner)
    partitions/<p>/.lock                     flock'ed by the process that owns p

A checkpoint file::

    {"format": "streamdrift-checkpoint", "version": 2, "seq": 7, "monitor": ..,
     "fingerprint": <reference fingerprint>, "written_at_ms": .., "state": {..},
     "sha256": <sha256 of the canonical JSON of everything else>}

where ``state`` holds the topic, the partition's next offset, its watermark, its window panes,
whether it is idle and ``pruned_to`` (the close frontier up to which its panes were dropped);
partition 0's also holds the ``shared`` state of the closer (the close frontier, the segment
router, the concept detector and tracker).

A file is written to a temporary file, fsync'ed, renamed into place and the directory fsync'ed,
so a crash leaves either the old or the new file, never half of one. The previous generation
is kept; older ones are deleted. :meth:`CheckpointStore.load` returns the newest file whose
checksum, format and reference fingerprint are right; a corrupt one is logged and skipped
(never loaded). A checkpoint of another reference is refused with an error, unless the store
was made with ``any_reference`` (a ``models:/`` reference, whose version may change under a
running monitor): then the state's ``reference`` entry (fingerprint, model name and version)
says which version it belongs to, and the consumer closes that version's windows before it
goes on with another (:mod:`stream.consumer`).

One checkpoint of a process = flush the outputs, write partition 0's file (if owned), then its
other partitions' files, then commit the offsets. Why a crash between two files is safe:

* every file is self-consistent: a partition's panes, watermark and next offset are saved
  together, so resuming a partition from any of its generations replays exactly the events
  after that offset into exactly the state before them;
* the only cross-file fact is the close frontier F (windows with end <= F were emitted). It is
  written to partition 0's file only after the outputs were flushed, and a partition's panes
  are pruned (``pruned_to``) only up to a frontier already in partition 0's file. On load the
  frontier is max(partition 0's frontier, every partition's ``pruned_to``): a window is never
  closed again once any file has dropped a pane of it (so a fall-back to an older generation of
  partition 0 cannot re-close a window with panes missing), and a partition resumed from an
  older file replays events of closed windows as late (their windows were already reported,
  with those events). A window whose closing was not yet in partition 0's file is closed again
  from the same panes: identical records with identical keys.
* offsets are committed only after every file is written; the checkpoint's offsets win over
  the committed ones on assignment anyway.

The owner of a partition holds an exclusive ``flock`` on its ``.lock`` (:meth:`CheckpointStore.lock`),
so a previous owner that has not let go yet (frozen, or its session just expired) cannot
overwrite what the new owner resumes from: the new owner waits for it, then reads the newest file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from detectors.exceptions import ConfigError, ReferenceMismatchError
from stream.exceptions import CheckpointError

log = logging.getLogger("streamdrift.checkpoint")

FORMAT = "streamdrift-checkpoint"
VERSION = 2  # 2: one store per partition
KEEP = 2
LOCK_NAME = ".lock"
_NAME = re.compile(r"^checkpoint-(\d{12})\.json$")
PARTITIONS = "partitions"


def partition_dir(root: str | Path, partition: int) -> Path:
    """Where partition ``partition``'s checkpoints live under ``state.dir``."""
    return Path(root) / PARTITIONS / str(int(partition))


def prepare_state_dir(root: str | Path) -> Path:
    """Create ``state.dir`` (and its ``partitions/``); refuse checkpoints of the single-file layout."""
    base = Path(root)
    try:
        (base / PARTITIONS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"state.dir {base}: cannot create it: {exc.strerror}") from exc
    legacy = sorted(p.name for p in base.iterdir() if _NAME.match(p.name))
    if legacy:
        raise CheckpointError(
            f"state.dir {base} holds checkpoints of the single-file layout ({', '.join(legacy)}): this version keeps "
            f"one per partition under {PARTITIONS}/<p>/ and cannot split the old one; move those files away to start "
            "from the committed offsets (open windows start empty)"
        )
    return base


def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


class CheckpointStore:
    """Checkpoints of one monitor in one directory (one partition's)."""

    def __init__(self, directory: str | Path, monitor: str, fingerprint: str, *, any_reference: bool = False) -> None:
        self.dir = Path(directory)
        self.monitor = monitor
        self.fingerprint = fingerprint
        self.any_reference = any_reference
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"state.dir {self.dir}: cannot create it: {exc.strerror}") from exc
        self.seq = max((s for s, _ in self._files()), default=0)
        self._lock_fd: int | None = None

    def lock(self, wait_s: float = 0.0) -> None:
        """Take the directory for this process: an exclusive ``flock`` on ``.lock`` (released by
        :meth:`unlock` or when the process dies, kill -9 included), waiting up to ``wait_s``.

        Two processes writing one partition's checkpoints would overwrite each other's; if the
        lock is still held after ``wait_s`` the error names the holder's pid.
        """
        if self._lock_fd is not None:
            return
        path = self.dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"state.dir {self.dir}: cannot create {LOCK_NAME}: {exc.strerror}") from exc
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CheckpointError(
                    f"{self.dir} is in use by another streamdrift serve (pid {holder}) after {wait_s:.0f} s: only "
                    "the owner of a partition writes its checkpoints (is a previous owner frozen, or does another "
                    "consumer group use this state dir?)"
                ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # the pid is only informational; the lock is held
            log.warning("state.dir %s: cannot record the pid in %s: %s", self.dir, LOCK_NAME, exc.strerror)
        self._lock_fd = fd
        self.seq = max(self.seq, max((s for s, _ in self._files()), default=0))

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _files(self) -> list[tuple[int, Path]]:
        out = []
        try:
            entries = list(self.dir.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out, reverse=True)

    def save(self, state: dict[str, Any]) -> Path:
        """Write a new generation atomically; return its path."""
        self.seq += 1
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "seq": self.seq,
            "monitor": self.monitor,
            "fingerprint": self.fingerprint,
            "written_at_ms": int(time.time() * 1000),
            "state": state,
        }
        doc["sha256"] = _digest(doc)
        path = self.dir / f"checkpoint-{self.seq:012d}.json"
        tmp = self.dir / f".{path.name}.tmp"
        data = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # never leave half a file behind (a full disk, say)
            except OSError as cleanup:
                log.error("cannot remove %s: %s", tmp, cleanup.strerror)
            raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror}") from exc
        for _seq, old in self._files()[KEEP:]:
            old.unlink(missing_ok=True)
        return path

    def load(self) -> dict[str, Any] | None:
        """The state of the newest good checkpoint, or None if there is none."""
        files = self._files()
        self.seq = max(self.seq, max((s for s, _ in files), default=0))
        for _seq, path in files:
            try:
                doc = self.read(path)
            except CheckpointError as exc:
                log.error("skipping corrupt checkpoint %s: %s (trying the previous generation)", path, exc)
                continue
            log.info("resuming from checkpoint %s", path)
            return _with_reference(doc)
        return None

    def newest_seq(self) -> int | None:
        files = self._files()
        return files[0][0] if files else None

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """(seq, state) of the newest good checkpoint, read without the lock (another process's
        partition): a file removed meanwhile is skipped quietly, a corrupt one at debug level."""
        for seq, path in self._files():
            try:
                doc = self.read(path)
            except CheckpointError as exc:
                if path.exists():
                    log.debug("skipping unreadable checkpoint %s: %s", path, exc)
                continue
            return seq, _with_reference(doc)
        return None

    def read(self, path: Path) -> dict[str, Any]:
        """One checkpoint file, verified; raises :class:`CheckpointError` if corrupt."""
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CheckpointError("not a streamdrift checkpoint")
        if doc.get("sha256") != _digest(doc):
            raise CheckpointError("checksum mismatch")
        if doc.get("version") != VERSION:
            raise CheckpointError(f"checkpoint version {doc.get('version')!r} is not {VERSION}")
        if doc.get("fingerprint") != self.fingerprint and not self.any_reference:
            raise ReferenceMismatchError(
                f"checkpoint {path} was written against reference {doc.get('fingerprint')}, not the configured "
                f"{self.fingerprint}; refusing to resume (use a new state.dir for a new reference)"
            )
        if doc.get("monitor") != self.monitor:
            raise ConfigError(
                f"checkpoint {path} belongs to monitor {doc.get('monitor')!r}, not {self.monitor!r}; "
                "use another state.dir"
            )
        return doc


def _with_reference(doc: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state, with the ``reference`` it belongs to (files written before model versions
    were tracked: the file's fingerprint, no model)."""
    state: dict[str, Any] = doc["state"]
    state.setdefault("reference", {"fingerprint": doc.get("fingerprint"), "model_name": None, "model_version": None})
    return state
