"""Atomic, checksummed checkpoints of the consumer's state, two generations kept.

A checkpoint is one JSON file ``checkpoint-<seq>.json``::

    {"format": "streamdrift-checkpoint", "version": 1, "seq": 7, "monitor": ..,
     "fingerprint": <reference fingerprint>, "written_at_ms": .., "state": {..},
     "sha256": <sha256 of the canonical JSON of everything else>}

It is written to a temporary file, fsync'ed, renamed into place and the directory fsync'ed,
so a crash leaves either the old or the new file, never half of one. The previous
generation is kept; older ones are deleted. :meth:`CheckpointStore.load` returns the newest
file whose checksum, format and reference fingerprint are right; a corrupt one is logged
and skipped (never loaded). A checkpoint of another reference is refused with an error.

A running consumer holds an exclusive lock on the directory (:meth:`CheckpointStore.lock`):
one process per state dir.
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
VERSION = 1
KEEP = 2
LOCK_NAME = ".lock"
_NAME = re.compile(r"^checkpoint-(\d{12})\.json$")


def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


class CheckpointStore:
    """Checkpoints of one monitor in one directory."""

    def __init__(self, directory: str | Path, monitor: str, fingerprint: str) -> None:
        self.dir = Path(directory)
        self.monitor = monitor
        self.fingerprint = fingerprint
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"state.dir {self.dir}: cannot create it: {exc.strerror}") from exc
        self.seq = max((s for s, _ in self._files()), default=0)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the directory for this process: an exclusive ``flock`` on ``.lock`` (released by
        :meth:`unlock` or when the process dies, kill -9 included).

        Two consumers writing one state dir would overwrite each other's checkpoints; the
        second one is refused with an error naming the holder's pid.
        """
        path = self.dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"state.dir {self.dir}: cannot create {LOCK_NAME}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"state.dir {self.dir} is in use by another streamdrift serve (pid {holder}): run one consumer "
                "per monitor, group and state dir (a standby may take over once it has stopped)"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # the pid is only informational; the lock is held
            log.warning("state.dir %s: cannot record the pid in %s: %s", self.dir, LOCK_NAME, exc.strerror)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.iterdir():
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
        for _seq, path in self._files():
            try:
                doc = self.read(path)
            except CheckpointError as exc:
                log.error("skipping corrupt checkpoint %s: %s (trying the previous generation)", path, exc)
                continue
            log.info("resuming from checkpoint %s", path)
            state: dict[str, Any] = doc["state"]
            return state
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
        if doc.get("fingerprint") != self.fingerprint:
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
