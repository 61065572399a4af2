"""Joining late labels to their predictions: bounded, deterministic, checkpointable, pure.

A model writes a *prediction* (an id, an event time ``t_p``, a score) when it scores; the ground
truth arrives later as a *label* (the same id, its own event time ``t_l``, the label). This module
pairs them with bounded state. :class:`LabelJoin` is the join alone; the windows, the performance
records and the concept detector on the error stream are :class:`detectors.performance.PerformanceTracker`'s.

Ids
    An id is a string or an integer (its decimal text); what is kept is a 64-bit hash of its UTF-8
    bytes (:func:`id_hashes`): MurmurHash3's 64-bit block mixing and finaliser applied to the id's
    8-byte little-endian words, vectorised with numpy (about 0.15 µs an id, against about 0.8 µs for
    one ``hashlib.blake2b`` call per id), the same on every machine and in every process (unlike
    Python's salted ``hash``). Trailing NUL characters of an id are ignored. Two different ids with
    the same hash are the only way a label can meet a wrong prediction: with ``N`` entries waiting, a
    label's chance is about ``N / 2**64`` (5e-13 at 10M; about one such event in 10**12 labels at
    10M waiting), and two waiting predictions share a hash with probability about ``N**2 / 2**65``
    (3e-6 at 10M), when the second counts as a duplicate.

Time: the two watermarks
    * the *prediction watermark* ``W_P`` is the caller's: predictions with ``t_p < W_P`` have all
      arrived (later ones with such times are late and never enter the join). In ``serve`` it is
      the windows' close watermark; in the backfill it follows the predictions in time order.
    * the *label watermark* ``W_L`` is the largest time of the labels processed so far (in their
      arrival order).

The join rule (what pairs, whatever the order in which the two streams are read)
    A label is *processed* only once ``t_l + clock_skew < W_P``, in arrival order (first in,
    first out: a label waiting for the predictions holds the ones behind it). So every prediction
    it may pair with is already here, and a label that arrives before its prediction is held the
    same way as one that arrives after. A processed label pairs with the waiting prediction of the
    same id when

        ``t_p - clock_skew <= t_l``  and  ``W_L(including this label) < t_p + max_delay``,

    i.e. it came at most ``max_delay`` after the prediction in the label stream's own time (and not
    stamped more than ``clock_skew`` before it). Otherwise the label is a ``label_orphan``. A waiting
    prediction whose ``t_p + max_delay <= W_L`` can never pair any more and counts as a
    ``label_timeout`` (counted when it is swept out, which is rate-limited: the counter can lag, the
    pairs never do). A second prediction with an id already waiting is a ``duplicate_prediction``
    (it does not wait). Under these rules which pairs form depends on each stream's own order only,
    not on how the two streams interleave, provided each stream is in time order up to its lateness
    (with several label partitions, up to how they interleave among themselves).

Ticks
    The label watermark's crossings of multiples of ``tick_ms`` are the points at which the caller
    may decide things (emit a window's performance): :meth:`LabelJoin.process` returns the processed
    labels in chunks that end at those crossings, so what the caller sees at a tick does not depend
    on how the labels were batched.

The budget (``labels.budget``: entries; waiting predictions at most, and held labels at most as many)
    A prediction that finds the budget full (after the expired ones are swept out) does not wait:
    it counts as a ``label_timeout`` at once; a label that finds the held labels' budget full is a
    ``label_orphan`` at once. Both also count as ``overflow``. (Two budgets, not one shared: a table
    full of waiting predictions must never keep out the labels whose progress lets them expire.)
    Nothing is dropped without a count; but which entries overflow depends on how the two streams
    interleave, so replays are exactly equal only while the budget holds.

Memory
    The waiting predictions are an open-addressing hash table (linear probing, tombstones) of
    structure-of-arrays numpy columns: the id hash (8 bytes), ``t_p`` (8), the score (8) and the
    segment (4): 28 bytes a slot, at most 70 % full (doubling when it would be more), so 40-80
    bytes per waiting prediction while predictions only arrive, and while doubling briefly three
    times the table. With pairs joined and deleted (tombstones), a rebuild doubles once the live
    entries take more than half of the 70 %, so that rebuilds come every many batches rather than
    after each one (about 1.4x the join's throughput in ``serve``'s steady state); the table is then
    17.5-70 % full, 40-160 bytes per waiting prediction (measured on the benchmark's stream: mean 74,
    at most 124).
    A held label takes 24 bytes (hash, time, label) in a first-in-first-out queue.

Snapshot
    :meth:`LabelJoin.snapshot` is compact binary (``numpy.savez`` of the live entries, the queue
    and a JSON header; no pickle): restoring it gives a join that behaves exactly as the original.
"""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.exceptions import SnapshotError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
Bool = npt.NDArray[np.bool_]

SNAPSHOT_VERSION = 1
#: key values that mark an empty slot and a deleted one (hashes 0 and 1 become 2 and 3)
EMPTY, TOMB = np.uint64(0), np.uint64(1)
#: a table is at most this full (live entries and tombstones); it doubles rather than fill more
MAX_LOAD = 0.7
MIN_CAPACITY = 1 << 10
_NEVER = -(2**62)

# MurmurHash3 x64 constants (block mixing and the 64-bit finaliser)
_C1 = np.uint64(0x87C37B91114253D5)
_C2 = np.uint64(0x4CF5AD432745937F)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_SEED = np.uint64(0x9E3779B97F4A7C15)
_M5 = np.uint64(5)
_N1 = np.uint64(0x52DCE729)


def _rotl(x: U64, r: int) -> U64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(k: U64) -> U64:
    k = k ^ (k >> np.uint64(33))
    k = k * _F1
    k = k ^ (k >> np.uint64(33))
    k = k * _F2
    return k ^ (k >> np.uint64(33))


def id_text(value: Any) -> str | None:
    """The canonical text of an id (a non-empty string, or an integer's decimal text); None if the
    value cannot be an id (missing, empty, a boolean, a float, an object).

    >>> id_text("tx-1"), id_text(42), id_text(True), id_text(1.5), id_text("")
    ('tx-1', '42', None, None, None)
    """
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    return str(int(value))


def id_hashes(ids: Sequence[str]) -> U64:
    """The 64-bit hash of every id text (see the module docstring); never 0 or 1 (reserved).

    The hash of an id does not depend on the other ids of the call (their lengths included):

    >>> a = id_hashes(["tx-1", "a-much-longer-transaction-id"])
    >>> b = id_hashes(["tx-1"])
    >>> bool(a[0] == b[0]), bool(a[0] != a[1])
    (True, True)
    """
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    try:
        raw = np.array(ids, dtype=np.bytes_)  # ASCII: the UTF-8 bytes, without encoding each
    except UnicodeEncodeError:
        raw = np.array([s.encode("utf-8") for s in ids], dtype=np.bytes_)
    width = raw.dtype.itemsize
    words_n = max(1, -(-width // 8))
    buf = np.zeros((n, words_n * 8), dtype=np.uint8)
    buf[:, :width] = raw.view(np.uint8).reshape(n, width)
    words = buf.view("<u8")
    lengths = np.char.str_len(raw).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _SEED ^ (lengths * _C2)
        for j in range(words_n):
            k = _rotl(words[:, j] * _C1, 31) * _C2
            mixed = _rotl(h ^ k, 27) * _M5 + _N1
            live = lengths > np.uint64(8 * j)  # (words past an id's end: not part of it)
            h = np.where(live, mixed, h)
        h = _fmix(h ^ lengths)
    return np.where(h < np.uint64(2), h + np.uint64(2), h)


class HashTable:
    """Open addressing with linear probing over numpy columns: a uint64 key (never 0 or 1) and the
    value columns ``t`` (int64), ``score`` (float64), ``seg`` (int32). Batch operations only."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        cap = MIN_CAPACITY
        while cap < capacity:
            cap <<= 1
        self._alloc(cap)

    def _alloc(self, cap: int) -> None:
        self.capacity = cap
        self.keys: U64 = np.zeros(cap, dtype=np.uint64)
        self.t: I64 = np.zeros(cap, dtype=np.int64)
        self.score: F64 = np.zeros(cap, dtype=np.float64)
        self.seg: I32 = np.zeros(cap, dtype=np.int32)
        self.live = 0
        self.tombs = 0

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.t.nbytes + self.score.nbytes + self.seg.nbytes)

    def lookup(self, q: U64) -> I64:
        """The slot of each key, -1 where absent."""
        n = len(q)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.live == 0:
            return out
        mask = np.uint64(self.capacity - 1)
        pos = (q & mask).astype(np.int64)
        active = np.arange(n)
        keys = self.keys
        while active.size:
            s = pos[active]
            k = keys[s]
            qa = q[active]
            found = k == qa
            out[active[found]] = s[found]
            more = ~(found | (k == EMPTY))
            active = active[more]
            pos[active] = (s[more] + 1) & (self.capacity - 1)
        return out

    def insert(self, q: U64, t: I64, score: F64, seg: I32) -> None:
        """Insert keys known to be absent and distinct; the caller keeps the load below MAX_LOAD."""
        n = len(q)
        if n == 0:
            return
        keys = self.keys
        mask = self.capacity - 1
        pos = (q & np.uint64(mask)).astype(np.int64)
        active = np.arange(n)
        reused = 0
        while active.size:
            k = keys[pos]
            free = np.flatnonzero(k <= TOMB)
            if free.size:
                fpos, fq = pos[free], q[active[free]]
                keys[fpos] = fq  # several keys may aim at one free slot: one of them stays there
                won = keys[fpos] == fq
                win, slots = free[won], fpos[won]
                reused += int(np.count_nonzero(k[win] == TOMB))
                who = active[win]
                self.t[slots] = t[who]
                self.score[slots] = score[who]
                self.seg[slots] = seg[who]
                keep = np.ones(active.size, dtype=bool)
                keep[win] = False
                active, pos = active[keep], pos[keep]
            pos = (pos + 1) & mask
        self.live += n
        self.tombs -= reused

    def delete(self, slots: I64) -> None:
        if len(slots):
            self.keys[slots] = TOMB
            self.live -= len(slots)
            self.tombs += len(slots)

    def live_slots(self) -> I64:
        return np.flatnonzero(self.keys > TOMB)

    def rebuild(self, capacity: int) -> None:
        """Re-insert the live entries into a fresh table of at least ``capacity`` slots (no tombstones)."""
        slots = self.live_slots()
        q, t, score, seg = self.keys[slots], self.t[slots], self.score[slots], self.seg[slots]
        cap = MIN_CAPACITY
        while cap < capacity:
            cap <<= 1
        del slots
        self._alloc(cap)
        self.insert(q, t, score, seg)

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more keys within MAX_LOAD: rebuild without the tombstones, at double
        the size (or more) when the live keys would take more than half of it. (Half: a table whose
        entries come and go, pairs joined and deleted, then rebuilds after at least as many batches
        again as the live keys fill, instead of after every batch when they sit just under MAX_LOAD;
        a table that only grows doubles at MAX_LOAD, as before.)"""
        if self.live + self.tombs + extra <= MAX_LOAD * self.capacity:
            return
        cap = self.capacity
        limit = MAX_LOAD / 2 if self.tombs else MAX_LOAD
        while self.live + extra > limit * cap:
            cap <<= 1
        self.rebuild(cap)


@dataclass
class Joined:
    """The labels processed in one chunk (arrival order): the pairs that formed, and the tick the
    label watermark reached at the chunk's end (None: no tick)."""

    t_pred: I64
    seg: I32
    score: F64
    label: F64
    t_label: I64
    tick: int | None


#: the join's counters (see the module docstring); ``overflow`` is a subset of the two before it
COUNTERS = ("joined", "label_timeout", "label_orphan", "duplicate_prediction", "overflow")


class LabelJoin:
    """Waiting predictions and held labels, paired by the rule of the module docstring."""

    def __init__(self, *, max_delay_ms: int, clock_skew_ms: int, budget: int, tick_ms: int) -> None:
        if max_delay_ms <= 0 or clock_skew_ms < 0 or budget < 1 or tick_ms <= 0:
            raise ValueError("max_delay_ms and tick_ms must be positive, clock_skew_ms >= 0, budget >= 1")
        self.max_delay_ms = max_delay_ms
        self.clock_skew_ms = clock_skew_ms
        self.budget = budget
        self.tick_ms = tick_ms
        self.reset()

    def reset(self) -> None:
        self._table = HashTable()
        self._queue: deque[tuple[U64, I64, F64]] = deque()
        self._queued = 0
        self.label_watermark = _NEVER
        self._swept_at = _NEVER  # label watermark of the last sweep
        self._min_t: int | None = None  # a lower bound of the waiting predictions' times (None: none waiting)
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    # -- state ------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Predictions waiting for their label (those already expired but not yet swept included)."""
        return self._table.live

    @property
    def held(self) -> int:
        """Labels waiting for the prediction watermark."""
        return self._queued

    @property
    def nbytes(self) -> int:
        return self._table.nbytes + 24 * self._queued

    # -- predictions --------------------------------------------------------------------------------
    def add_predictions(self, h: U64, t: I64, score: F64, seg: I32) -> None:
        """Predictions to wait for their labels (their order does not matter)."""
        n = len(h)
        if n == 0:
            return
        _, first = np.unique(h, return_index=True)
        distinct = np.zeros(n, dtype=bool)
        distinct[first] = True
        new = distinct & (self._table.lookup(h) < 0)
        self.counts["duplicate_prediction"] += int(n - new.sum())
        idx = np.flatnonzero(new)
        room = self.budget - self._table.live
        if len(idx) > room:
            self._sweep()
            room = self.budget - self._table.live
        if len(idx) > room:
            over = len(idx) - max(room, 0)
            idx = idx[: max(room, 0)]
            self.counts["label_timeout"] += over
            self.counts["overflow"] += over
        if not len(idx):
            return
        if self._table.live + self._table.tombs + len(idx) > MAX_LOAD * self._table.capacity:
            self._sweep()
        self._table.reserve(len(idx))
        tt = t[idx]
        self._table.insert(h[idx], tt, score[idx], seg[idx])
        low = int(tt.min())
        self._min_t = low if self._min_t is None else min(self._min_t, low)

    # -- labels -------------------------------------------------------------------------------------
    def add_labels(self, h: U64, t: I64, y: F64) -> None:
        """Labels in arrival order; they wait until :meth:`process` may handle them."""
        n = len(h)
        if n == 0:
            return
        keep = max(min(n, self.budget - self._queued), 0)
        if keep < n:
            self.counts["label_orphan"] += n - keep
            self.counts["overflow"] += n - keep
        if keep:
            self._queue.append((h[:keep].copy(), t[:keep].copy(), y[:keep].copy()))
            self._queued += keep

    def _admitted(self, prediction_watermark: int) -> tuple[U64, I64, F64]:
        """Take the queue's longest prefix whose labels the prediction watermark has passed."""
        limit = prediction_watermark - self.clock_skew_ms
        hs: list[U64] = []
        ts: list[I64] = []
        ys: list[F64] = []
        while self._queue:
            h, t, y = self._queue[0]
            blocked = np.flatnonzero(t >= limit)
            k = int(blocked[0]) if len(blocked) else len(t)
            if k:
                hs.append(h[:k])
                ts.append(t[:k])
                ys.append(y[:k])
                self._queued -= k
            if k < len(t):
                self._queue[0] = (h[k:], t[k:], y[k:])
                break
            self._queue.popleft()
        if not hs:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        return np.concatenate(hs), np.concatenate(ts), np.concatenate(ys)

    def process(self, prediction_watermark: int) -> list[Joined]:
        """Process the held labels the prediction watermark allows, in arrival order; the pairs, in
        chunks ending where the label watermark crosses a tick."""
        h, t, y = self._admitted(prediction_watermark)
        if not len(h):
            return []
        wl = np.maximum.accumulate(np.maximum(t, self.label_watermark))  # W_L including each label
        ticks = wl // self.tick_ms
        prev = self.label_watermark // self.tick_ms if self.label_watermark > _NEVER else ticks[0] - 1
        crossed = np.flatnonzero(ticks > np.concatenate([[prev], ticks[:-1]]))  # a new tick reached here
        out: list[Joined] = []
        start = 0
        for i in crossed.tolist():
            out.append(self._join_chunk(h[start : i + 1], t[start : i + 1], y[start : i + 1], wl[start : i + 1]))
            out[-1].tick = int(ticks[i]) * self.tick_ms
            start = i + 1
        if start < len(h):
            out.append(self._join_chunk(h[start:], t[start:], y[start:], wl[start:]))
        self.label_watermark = int(wl[-1])
        if self.label_watermark - self._swept_at >= max(self.max_delay_ms // 4, 1):
            self._sweep()
        return out

    def advance_to(self, t: int) -> int | None:
        """Move the label watermark to ``t`` without a label (the labels have stopped: ``serve`` takes their
        time to have reached ``t``); the last tick it crossed (None: none). Expired predictions are swept."""
        if t <= self.label_watermark:
            return None
        before = self.label_watermark
        self.label_watermark = t
        self._sweep()
        tick = t // self.tick_ms
        return tick * self.tick_ms if before <= _NEVER or tick > before // self.tick_ms else None

    def _join_chunk(self, h: U64, t: I64, y: F64, wl: I64) -> Joined:
        n = len(h)
        todo = np.arange(n)
        joined_mask = np.zeros(n, dtype=bool)
        t_pred = np.zeros(n, np.int64)
        seg = np.zeros(n, np.int32)
        score = np.zeros(n, np.float64)
        table = self._table
        while todo.size:  # first occurrences of each id in order; repeats after their first is settled
            _, first = np.unique(h[todo], return_index=True)
            first.sort()
            now = todo[first]
            rest = np.ones(todo.size, dtype=bool)
            rest[first] = False
            later = todo[rest]
            slots = table.lookup(h[now])
            found = slots >= 0
            cand, cs = now[found], slots[found]
            tp = table.t[cs]
            ok = (tp - self.clock_skew_ms <= t[cand]) & (wl[cand] < tp + self.max_delay_ms)
            win, ws = cand[ok], cs[ok]
            joined_mask[win] = True
            t_pred[win] = table.t[ws]
            seg[win] = table.seg[ws]
            score[win] = table.score[ws]
            table.delete(ws)
            todo = later
        self.counts["joined"] += int(joined_mask.sum())
        self.counts["label_orphan"] += int(n - joined_mask.sum())
        j = np.flatnonzero(joined_mask)
        return Joined(t_pred[j], seg[j], score[j], y[j], t[j], None)

    def _sweep(self) -> None:
        """Count and remove the waiting predictions that can never pair (``t_p + max_delay <= W_L``);
        at most once per label watermark."""
        wl = self.label_watermark
        if wl <= _NEVER or self._swept_at == wl:
            return
        self._swept_at = wl
        cutoff = wl - self.max_delay_ms
        if self._min_t is None or self._min_t > cutoff:
            return
        table = self._table
        live = table.keys > TOMB
        dead = np.flatnonzero(live & (table.t <= cutoff))
        self.counts["label_timeout"] += len(dead)
        table.delete(dead)
        rest = table.t[live & (table.t > cutoff)]
        self._min_t = int(rest.min()) if len(rest) else None
        if table.tombs > 0.25 * table.capacity:
            table.rebuild(table.capacity if table.live > MAX_LOAD * table.capacity / 4 else table.capacity // 2)

    # -- snapshot -----------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Compact binary state (no pickle)."""
        tb = self._table
        slots = tb.live_slots()
        if self._queue:
            qh = np.concatenate([q[0] for q in self._queue])
            qt = np.concatenate([q[1] for q in self._queue])
            qy = np.concatenate([q[2] for q in self._queue])
        else:
            qh, qt, qy = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        header = {
            "version": SNAPSHOT_VERSION,
            "settings": [self.max_delay_ms, self.clock_skew_ms, self.budget, self.tick_ms],
            "label_watermark": self.label_watermark,
            "swept_at": self._swept_at,
            "min_t": self._min_t,
            "counts": self.counts,
        }
        return pack(
            header,
            {
                "keys": tb.keys[slots],
                "t": tb.t[slots],
                "score": tb.score[slots],
                "seg": tb.seg[slots],
                "queue_h": qh,
                "queue_t": qt,
                "queue_y": qy,
            },
        )

    @classmethod
    def restore(cls, data: bytes) -> LabelJoin:
        header, arrays = unpack(data)
        if header.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"label join snapshot version {header.get('version')!r} is not {SNAPSHOT_VERSION}")
        try:
            max_delay, skew, budget, tick = (int(v) for v in header["settings"])
            join = cls(max_delay_ms=max_delay, clock_skew_ms=skew, budget=budget, tick_ms=tick)
            keys = arrays["keys"].astype(np.uint64)
            join._table.reserve(len(keys))
            join._table.insert(keys, arrays["t"].astype(np.int64), arrays["score"].astype(np.float64), arrays["seg"])
            if len(arrays["queue_h"]):
                join._queue.append((arrays["queue_h"], arrays["queue_t"], arrays["queue_y"]))
                join._queued = len(arrays["queue_h"])
            join.label_watermark = int(header["label_watermark"])
            join._swept_at = int(header["swept_at"])
            join._min_t = None if header["min_t"] is None else int(header["min_t"])
            join.counts = {k: int(header["counts"][k]) for k in COUNTERS}
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"label join snapshot is malformed: {type(exc).__name__}: {exc}") from exc
        return join

    def same_settings(self, other: LabelJoin) -> bool:
        return (self.max_delay_ms, self.clock_skew_ms, self.budget, self.tick_ms) == (
            other.max_delay_ms,
            other.clock_skew_ms,
            other.budget,
            other.tick_ms,
        )


def pack(header: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """A JSON header and named numpy arrays as one ``.npz`` blob (uncompressed, no pickle)."""
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, __header__=meta, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (OSError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"not a streamdrift snapshot blob: {type(exc).__name__}: {exc}") from exc
    if not isinstance(header, dict):
        raise SnapshotError("snapshot header is not an object")
    return header, arrays
