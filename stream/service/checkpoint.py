"""The consumer's state on disk: one store per monitor in ``state.dir``, written only by the active process.

Layout of ``state.dir``::

    .lock                  flock'ed by the active ``serve`` process (:class:`StateLock`)
    manifest-<seq>         a checkpoint: the small state, and how much of the pane log belongs to it
    panes-<gen>.log        the window panes: an append-only binary log
    blob-<seq>.bin         with a labels section: the join's binary snapshot of checkpoint <seq>

A **manifest** is text: its first line is the sha256 (hex) of the rest, the rest is JSON::

    {"format": "streamdrift-checkpoint", "version": 3, "seq": 7, "monitor": .., "fingerprint": ..,
     "written_at_ms": .., "panes": {"log": "panes-000000000002.log", "length": 81920,
     "slots": 412, "fingerprint": ..}, "state": {..}}

``state`` is what is small: the topic and next offset of every partition, the windows' watermarks,
close frontier, segment router and count windows, the concept detectors, the reference (and
model version) it belongs to. ``panes`` names the pane log and its valid length: the log's
bytes up to ``length`` hold exactly the panes of this checkpoint.

The **pane log** starts with a header (magic, number of count slots per pane); then chunks, one
per checkpoint, each holding only what changed since the previous checkpoint::

    chunk header: b"CHNK", n_deleted (u32), n_updated (u32), body length (u64),
                  sha256 of (these four fields + body)
    body:         n_deleted records (segment i4, pane i8): panes dropped (their windows closed)
                  n_updated records (segment i4, pane i8, n_events i8, counts i8[slots]):
                  the whole current state of each pane written since (the last one wins)

A checkpoint of a monitor with a labels section also names a **blob** (``"blob": {"file":
"blob-<seq>.bin", "sha256": .., "bytes": ..}``): the performance tracker's binary snapshot (join
table, held labels, performance panes, :meth:`detectors.labelled.PerformanceTracker.snapshot`),
written whole (fsync) before the manifest that names it, verified by its checksum when loaded
and deleted with the manifest.

Segments are the router's ids of the same checkpoint. The checksum is computed once, while the
chunk is written; records are numpy structured arrays written in one go. Replaying the chunks up
to the manifest's length, in order, gives the panes.

Writing a checkpoint (:meth:`StateStore.save`): truncate the log to the valid length of the last
manifest (a crash or a failed write may have left a chunk after it), append one chunk, fsync; then
write the manifest to a temporary file, fsync, rename into place, fsync the directory. A crash at
any point leaves the previous manifest and the prefix of the log it names intact, so a checkpoint
is whole or absent. When the log grows well beyond the live panes (:data:`COMPACT_FACTOR`), or
the layout of the panes changes (another reference), the checkpoint starts a new log holding every
live pane instead. Two manifests are kept (the new one and the previous good one); logs neither
names are deleted.

Loading (:meth:`StateStore.load`): the newest manifest whose checksum, format and chunks are all
right; a corrupt manifest or log chunk is logged and never loaded: the previous manifest is tried,
and without one the consumer starts from the committed offsets. A manifest of another monitor, or
of another reference, is refused with an error (unless the store takes ``any_reference``: a
``models:/`` reference, whose version may change; then the consumer closes that version's windows
itself, :mod:`stream.service.consumer`).

One process writes the store: the active ``serve`` holds an exclusive ``flock`` on ``.lock``
(released when it exits, ``kill -9`` included); other processes of the monitor are standbys that
wait for it (:class:`StateLock`). The checkpoint's order against Kafka: outputs flushed, then the
checkpoint, then the offsets committed, so a crash anywhere replays the events after the
checkpoint's offsets into exactly the state before them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from detectors.exceptions import ConfigError, ReferenceMismatchError
from detectors.histogram import WindowState
from stream.exceptions import CheckpointError

log = logging.getLogger("streamdrift.checkpoint")

FORMAT = "streamdrift-checkpoint"
VERSION = 3  # 3: one store per monitor, a manifest and a binary pane log
KEEP = 2
LOCK_NAME = ".lock"
_MANIFEST = re.compile(r"^manifest-(\d{12})$")
_LOG = re.compile(r"^panes-(\d{12})\.log$")
_BLOB = re.compile(r"^blob-(\d{12})\.bin$")
#: the layouts of earlier versions, refused with an error naming what to do
_LEGACY = (re.compile(r"^checkpoint-\d{12}\.json$"), re.compile(r"^partitions$"))

_FILE_MAGIC = b"SDPANES1"
_FILE_HEADER = struct.Struct("<8sI")  # magic, slots per pane
_CHUNK_MAGIC = b"CHNK"
_CHUNK_FIELDS = struct.Struct("<4sIIQ")  # magic, n_deleted, n_updated, body length
_CHUNK_HEADER_SIZE = _CHUNK_FIELDS.size + 32  # + sha256
_DELETED = np.dtype([("segment", "<i4"), ("pane", "<i8")])
#: a chunk holds at most this many bytes of pane records (a large checkpoint is several chunks)
CHUNK_BYTES = 8 << 20
#: a new log is started when the log is longer than this many times the live panes' bytes ...
COMPACT_FACTOR = 2.0
#: ... plus this much (so that a small state is not rewritten at every checkpoint)
COMPACT_MIN_BYTES = 64 << 10

#: (segment id, pane) -> (n_events, counts)
Panes = dict[tuple[int, int], tuple[int, npt.NDArray[np.int64]]]


def updated_dtype(slots: int) -> np.dtype[Any]:
    """One pane record of a log whose panes have ``slots`` counts."""
    return np.dtype([("segment", "<i4"), ("pane", "<i8"), ("n_events", "<i8"), ("counts", "<i8", (slots,))])


def prepare_state_dir(root: str | Path) -> Path:
    """Create ``state.dir``; refuse the layouts of earlier versions (they cannot be read by this one)."""
    base = Path(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in base.iterdir())
    except OSError as exc:
        raise CheckpointError(f"state.dir {base}: cannot create it: {exc.strerror}") from exc
    legacy = [n for n in names if any(rx.match(n) for rx in _LEGACY)]
    if legacy:
        raise CheckpointError(
            f"state.dir {base} holds checkpoints of an earlier streamdrift ({', '.join(legacy)}): this version keeps "
            "one store per monitor (manifest-* and panes-*.log) and cannot read them; move them away to start from "
            "the committed offsets (open windows start empty)"
        )
    return base


class StateLock:
    """The exclusive ``flock`` on ``state.dir/.lock`` that makes one process the active one.

    The holder writes ``pid <pid> host <host> since <time>`` into the file (for the logs of the
    standbys). The kernel releases the lock when the holder exits, ``kill -9`` included. On a
    network filesystem the lock needs working ``flock`` (NFSv4, CephFS).
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits); True if this process holds it now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"state.dir {self.path.parent}: cannot open {LOCK_NAME}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise CheckpointError(f"state.dir {self.path.parent}: cannot lock {LOCK_NAME}: {exc.strerror}") from exc
        self._fd = fd
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()} since {since}\n".encode(), 0)
        except OSError as exc:  # (only informational: the lock is held)
            log.warning("state.dir %s: cannot write the holder into %s: %s", self.path.parent, LOCK_NAME, exc.strerror)
        return True

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (``unknown`` if it wrote nothing yet)."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            return "unknown"
        return text or "unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Checkpoint:
    """A loaded checkpoint: its manifest's ``state``, the panes, and where they came from."""

    seq: int
    path: Path
    fingerprint: str
    state: dict[str, Any]
    panes: Panes
    slots: int
    blob: bytes | None = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """The checkpoints of one monitor in ``state.dir`` (written only while holding :class:`StateLock`)."""

    def __init__(self, directory: str | Path, monitor: str, fingerprint: str, *, any_reference: bool = False) -> None:
        self.dir = prepare_state_dir(directory)
        self.monitor = monitor
        self.fingerprint = fingerprint
        self.any_reference = any_reference
        self.seq = max((s for s, _ in self._manifests()), default=0)
        self._good: str | None = None  # the manifest the state goes on from (kept with the next one)
        # the pane log the next checkpoint appends to: its name, valid length, slots and layout fingerprint
        self._log: str | None = None
        self._length = 0
        self._slots = 0
        self._log_fingerprint: str | None = None
        #: what the last checkpoint wrote: bytes of pane log, whether it started a new log, seconds
        self.last_bytes = 0
        self.last_compacted = False
        self.last_seconds = 0.0

    # -- files ------------------------------------------------------------------------------
    def _manifests(self) -> list[tuple[int, Path]]:
        """(seq, path) of every manifest, newest first."""
        try:
            entries = list(self.dir.iterdir())
        except FileNotFoundError:
            return []
        return sorted(((int(m.group(1)), p) for p in entries if (m := _MANIFEST.match(p.name))), reverse=True)

    def _log_gens(self) -> list[int]:
        return [int(m.group(1)) for p in self.dir.iterdir() if (m := _LOG.match(p.name))]

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> Checkpoint | None:
        """The newest good checkpoint, or None (none at all, or every one corrupt: logged)."""
        files = self._manifests()
        self.seq = max(self.seq, max((s for s, _ in files), default=0))
        for seq, path in files:
            try:
                cp = self.read(seq, path)
            except CheckpointError as exc:
                log.error("skipping corrupt checkpoint %s: %s (trying the previous one)", path, exc)
                continue
            log.info("resuming from checkpoint %s", path)
            return cp
        if files:
            log.error("no readable checkpoint in %s: starting from the committed offsets", self.dir)
        return None

    def read(self, seq: int, path: Path) -> Checkpoint:
        """One checkpoint, verified (its manifest and every chunk of the log it names), and made the one the
        next checkpoint goes on from; raises :class:`CheckpointError` if it is corrupt."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"unreadable: {exc.strerror}") from None
        line, sep, body = raw.partition(b"\n")
        if not sep or line.decode(errors="replace") != hashlib.sha256(body).hexdigest():
            raise CheckpointError("checksum mismatch")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise CheckpointError(f"unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CheckpointError("not a streamdrift checkpoint")
        if doc.get("version") != VERSION:
            raise CheckpointError(f"checkpoint version {doc.get('version')!r} is not {VERSION}")
        if doc.get("monitor") != self.monitor:
            raise ConfigError(
                f"checkpoint {path} belongs to monitor {doc.get('monitor')!r}, not {self.monitor!r}; "
                "use another state.dir"
            )
        if doc.get("fingerprint") != self.fingerprint and not self.any_reference:
            raise ReferenceMismatchError(
                f"checkpoint {path} was written against reference {doc.get('fingerprint')}, not the configured "
                f"{self.fingerprint}; refusing to resume (use a new state.dir for a new reference)"
            )
        try:
            info = doc["panes"]
            name, length, slots = str(info["log"]), int(info["length"]), int(info["slots"])
            state = doc["state"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"incomplete manifest: {exc!r}") from None
        if not _LOG.match(name):
            raise CheckpointError(f"names no pane log: {name!r}")
        panes = self._replay(self.dir / name, length, slots)
        blob = self._read_blob(doc.get("blob"))
        self._good, self._log, self._length, self._slots = path.name, name, length, slots
        self._log_fingerprint = info.get("fingerprint")
        return Checkpoint(seq, path, str(doc["fingerprint"]), state, panes, slots, blob)

    def _read_blob(self, info: Any) -> bytes | None:
        if info is None:
            return None
        try:
            name, digest, size = str(info["file"]), str(info["sha256"]), int(info["bytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"incomplete manifest (blob): {exc!r}") from None
        if not _BLOB.match(name):
            raise CheckpointError(f"names no blob: {name!r}")
        try:
            data = (self.dir / name).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{name}: unreadable: {exc.strerror}") from None
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{name}: corrupt (checksum mismatch)")
        return data

    def _replay(self, path: Path, length: int, slots: int) -> Panes:
        """The panes of the first ``length`` bytes of a log, every chunk verified."""
        panes: Panes = {}
        rec = updated_dtype(slots)
        try:
            with open(path, "rb") as f:
                head = f.read(_FILE_HEADER.size)
                if len(head) < _FILE_HEADER.size or head[:8] != _FILE_MAGIC:
                    raise CheckpointError(f"{path.name}: not a pane log")
                if _FILE_HEADER.unpack(head)[1] != slots:
                    raise CheckpointError(f"{path.name}: panes of {_FILE_HEADER.unpack(head)[1]} slots, not {slots}")
                pos = _FILE_HEADER.size
                while pos < length:
                    header = f.read(_CHUNK_HEADER_SIZE)
                    if len(header) < _CHUNK_HEADER_SIZE:
                        raise CheckpointError(f"{path.name}: ends at {pos + len(header)} bytes, before {length}")
                    magic, n_del, n_upd, size = _CHUNK_FIELDS.unpack(header[: _CHUNK_FIELDS.size])
                    if magic != _CHUNK_MAGIC or size != n_del * _DELETED.itemsize + n_upd * rec.itemsize:
                        raise CheckpointError(f"{path.name}: no chunk at byte {pos}")
                    body = f.read(size)
                    digest = hashlib.sha256(header[: _CHUNK_FIELDS.size])
                    digest.update(body)
                    if len(body) < size or digest.digest() != header[_CHUNK_FIELDS.size :]:
                        raise CheckpointError(f"{path.name}: chunk at byte {pos} is corrupt (checksum mismatch)")
                    deleted = np.frombuffer(body, dtype=_DELETED, count=n_del)
                    for s, p in zip(deleted["segment"].tolist(), deleted["pane"].tolist(), strict=True):
                        panes.pop((s, p), None)
                    updated = np.frombuffer(body, dtype=rec, count=n_upd, offset=n_del * _DELETED.itemsize)
                    keys = zip(updated["segment"].tolist(), updated["pane"].tolist(), strict=True)
                    for key, n, counts in zip(keys, updated["n_events"].tolist(), updated["counts"], strict=True):
                        panes[key] = (n, counts.copy())
                    pos += _CHUNK_HEADER_SIZE + size
                if pos != length:
                    raise CheckpointError(f"{path.name}: chunks end at byte {pos}, not {length}")
        except OSError as exc:
            raise CheckpointError(f"{path.name}: unreadable: {exc.strerror}") from None
        return panes

    # -- writing ----------------------------------------------------------------------------
    def save(
        self,
        state: dict[str, Any],
        panes: Mapping[tuple[int, int], WindowState],
        changed: set[tuple[int, int]],
        deleted: set[tuple[int, int]],
        slots: int,
        layout_fingerprint: str,
        blob: bytes | None = None,
    ) -> Path:
        """Write a checkpoint: ``state`` (JSON), and the panes (``panes``: every live one; ``changed``:
        the keys written since the last checkpoint, ``deleted``: those dropped since; ``blob``: the labels'
        binary state, written whole). Returns the
        manifest's path; raises :class:`CheckpointError` if something could not be written (nothing
        of it is then part of any checkpoint)."""
        t0 = time.perf_counter()
        record = updated_dtype(slots).itemsize
        live = len(panes) * record
        fresh = (
            self._log is None
            or slots != self._slots
            or layout_fingerprint != self._log_fingerprint
            or self._length > COMPACT_FACTOR * live + COMPACT_MIN_BYTES
            or not (self.dir / self._log).exists()  # (removed by hand: start a new one rather than fail forever)
        )
        if fresh:
            name, length = self._new_log(panes, slots)
        else:
            assert self._log is not None
            name = self._log
            length = self._append(name, panes, changed, deleted, slots)
        self.seq += 1
        blob_info: dict[str, Any] | None = None
        if blob is not None:
            blob_name = f"blob-{self.seq:012d}.bin"
            try:
                self._write_atomic(self.dir / blob_name, blob)
            except CheckpointError:
                if fresh:
                    (self.dir / name).unlink(missing_ok=True)
                raise
            blob_info = {"file": blob_name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "seq": self.seq,
            "monitor": self.monitor,
            "fingerprint": self.fingerprint,
            "written_at_ms": int(time.time() * 1000),
            "panes": {"log": name, "length": length, "slots": slots, "fingerprint": layout_fingerprint},
            "state": state,
        }
        if blob_info is not None:
            doc["blob"] = blob_info
        body = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
        path = self.dir / f"manifest-{self.seq:012d}"
        try:
            self._write_atomic(path, hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        except CheckpointError:
            if fresh:  # (the new log is part of no checkpoint: do not leave it taking space)
                (self.dir / name).unlink(missing_ok=True)
            if blob_info is not None:
                (self.dir / blob_info["file"]).unlink(missing_ok=True)
            raise
        self.last_bytes = length - (0 if fresh else self._length)
        self.last_compacted = fresh
        previous = self._good
        self._good, self._log, self._length, self._slots = path.name, name, length, slots
        self._log_fingerprint = layout_fingerprint
        self._prune(previous)
        self.last_seconds = time.perf_counter() - t0
        return path

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self.dir / f".{path.name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.dir)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # never leave half a file behind (a full disk, say)
            except OSError as cleanup:
                log.error("cannot remove %s: %s", tmp, cleanup.strerror)
            raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror}") from exc

    def _new_log(self, panes: Mapping[tuple[int, int], WindowState], slots: int) -> tuple[str, int]:
        """A new log holding every live pane; (its name, its length)."""
        gen = max([0, *self._log_gens()]) + 1
        name = f"panes-{gen:012d}.log"
        path = self.dir / name
        try:
            with open(path, "wb") as f:
                f.write(_FILE_HEADER.pack(_FILE_MAGIC, slots))
                length = _FILE_HEADER.size + self._chunks(f, panes, sorted(panes), [], slots)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.dir)
        except OSError as exc:
            try:
                path.unlink(missing_ok=True)
            except OSError as cleanup:
                log.error("cannot remove %s: %s", path, cleanup.strerror)
            raise CheckpointError(f"cannot write the pane log {path}: {exc.strerror}") from exc
        return name, length

    def _append(
        self,
        name: str,
        panes: Mapping[tuple[int, int], WindowState],
        changed: set[tuple[int, int]],
        deleted: set[tuple[int, int]],
        slots: int,
    ) -> int:
        """Append the changes to the current log (cut back to its valid length first); its new length."""
        path = self.dir / name
        try:
            with open(path, "r+b") as f:
                f.truncate(self._length)  # (a chunk a failed or crashed checkpoint left after the valid end)
                f.seek(self._length)
                gone = sorted(deleted - changed)
                length = self._length + self._chunks(f, panes, sorted(k for k in changed if k in panes), gone, slots)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise CheckpointError(f"cannot write the pane log {path}: {exc.strerror}") from exc
        return length

    @staticmethod
    def _chunks(
        f: BinaryIO,
        panes: Mapping[tuple[int, int], WindowState],
        keys: list[tuple[int, int]],
        deleted: list[tuple[int, int]],
        slots: int,
    ) -> int:
        """Write ``deleted`` and the panes of ``keys`` as chunks of at most :data:`CHUNK_BYTES`; bytes written.
        (Nothing to write: no chunk.)"""
        rec = updated_dtype(slots)
        per_chunk = max(1, CHUNK_BYTES // rec.itemsize)
        written = 0
        first = True
        for lo in range(0, max(len(keys), 1 if deleted else 0), per_chunk):
            part = keys[lo : lo + per_chunk]
            upd = np.empty(len(part), dtype=rec)
            for i, key in enumerate(part):
                st = panes[key]
                upd[i] = (key[0], key[1], st.n_events, st.counts)
            dele = np.array(deleted if first else [], dtype=_DELETED)
            first = False
            fields = _CHUNK_FIELDS.pack(_CHUNK_MAGIC, len(dele), len(upd), dele.nbytes + upd.nbytes)
            digest = hashlib.sha256(fields)
            dele_bytes, upd_bytes = dele.view(np.uint8).data, upd.view(np.uint8).data
            digest.update(dele_bytes)
            digest.update(upd_bytes)
            f.write(fields)
            f.write(digest.digest())
            f.write(dele_bytes)
            f.write(upd_bytes)
            written += _CHUNK_HEADER_SIZE + dele.nbytes + upd.nbytes
        return written

    def _prune(self, previous: str | None) -> None:
        """Keep the new manifest and the previous good one; delete other manifests, the logs neither names,
        and temporary files left by a crash."""
        keep = {n for n in (self._good, previous) if n is not None}
        logs: set[str] = set()
        for _seq, path in self._manifests():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                continue
            try:
                doc = json.loads(path.read_bytes().partition(b"\n")[2])
                logs.add(str(doc["panes"]["log"]))
                if doc.get("blob") is not None:
                    logs.add(str(doc["blob"]["file"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for p in self.dir.iterdir():
            if ((_LOG.match(p.name) or _BLOB.match(p.name)) and p.name not in logs) or (
                p.name.startswith(".") and p.name.endswith(".tmp")
            ):
                p.unlink(missing_ok=True)
