"""Kafka message values to event columns, fast, with exactly the semantics of ``decode_events``.

The fast path decodes each message with msgspec into a typed, GC-free struct built from the
monitor config (only the fields the monitor reads; others are skipped by the parser). A
message the typed decoder cannot take (not JSON, a wrong type, a missing features object,
a number out of range, a time that needs a closer look...) falls back to the reference
path: ``json.loads`` and :func:`detectors.events.decode_events` on that one message. So
every rejection and its reason come from the reference code, and a unit test checks that
the fast path gives the same columns as the reference on the messages it takes.

Rejections carry a reason (human text) and a reason code from :data:`REASON_CODES`.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.events import (
    AUTO_BOUNDS,
    AUTO_MIN,
    FUTURE_PREFIX,
    IMPLAUSIBLE_PREFIX,
    EventColumns,
    check_time,
    decode_events,
    parse_time_ms,
)
from detectors.exceptions import InputError
from detectors.histogram import FeatureColumns
from detectors.join import id_text
from detectors.reference import MISSING, CategoricalProfile, NumericProfile, ReferenceProfile
from stream import fastenum

#: (the last two are the Avro decoder's, :mod:`stream.avro`: AVRO_REASON_CODES)
REASON_CODES = (
    "not_json",
    "not_object",
    "bad_time",
    "future_time",
    "implausible_time",
    "bad_type",
    "missing_field",
    "too_large",
    "not_avro",
    "unknown_schema",
)
AVRO_REASON_CODES = ("not_avro", "unknown_schema")

_INT_ONLY = {int}
_STR_ONLY = {str}

#: after a batch the strict decoder refused, this many batches go straight to the lenient one
STRICT_RETRY = 64

#: deeper nesting of arrays/objects is rejected (``too_large``) before any parser sees it
MAX_EVENT_DEPTH = 64
_BRACE, _BRACKET = ord("{"), ord("[")
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def nesting_depth(value: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (exact for valid JSON)."""
    depth = best = 0
    for tok in _TOKENS.findall(value):
        if tok == b"[" or tok == b"{":
            depth += 1
            if depth > best:
                best = depth
        elif tok == b"]" or tok == b"}":
            depth -= 1
    return best


def too_deep(value: bytes, limit: int = MAX_EVENT_DEPTH) -> bool:
    """Cheap test first: fewer openers than the limit cannot nest deeper than it."""
    if value.count(b"[") + value.count(b"{") <= limit:
        return False
    return nesting_depth(value) > limit


@dataclass(frozen=True)
class Rejection:
    index: int  # position of the message in the batch
    code: str  # one of REASON_CODES
    reason: str  # human text


def reason_code(reason: str) -> str:
    """Map a reason of :func:`decode_events` to its code."""
    if reason.startswith("event is not a JSON object"):
        return "not_object"
    if reason.startswith(IMPLAUSIBLE_PREFIX):
        return "implausible_time"
    if reason.startswith(FUTURE_PREFIX):
        return "future_time"
    if reason.startswith(
        ("missing event time field", "missing or non-object features field", "label event without", "missing label")
    ):
        return "missing_field"
    if reason.startswith(("event time", "no Kafka timestamp")):
        return "bad_time"
    return "bad_type"


def epoch_ms(t: npt.NDArray[np.int64], unit: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """:func:`detectors.events.parse_time_ms` on integers (``|t| <= 2**62``), vectorised: the times
    in ms, and which ones it accepts (``auto``: not below 1e8; ``s``: no int64 overflow).

    >>> ms, ok = epoch_ms(np.array([1_700_000_000, 1_700_000_000_123_456, 2024]), "auto")
    >>> ms.tolist(), ok.tolist()
    ([1700000000000, 1700000000123, 2024], [True, True, False])
    """
    if unit == "auto":
        a = np.abs(t)
        lo, hi = int(a.min()), int(a.max())
        unit = _auto_band(lo)
        if lo < AUTO_MIN or _auto_band(hi) != unit:  # values of several units (or too small): per value
            ms = t.copy()
            ok = a >= AUTO_MIN
            for band in ("s", "us", "ns"):  # ("ms" is t itself)
                m = ok & (np.searchsorted(_AUTO_EDGES, a, side="right") == _AUTO_UNITS.index(band))
                if m.any():
                    ms[m] = epoch_ms(t[m], band)[0]
            return ms, ok
    if unit == "s":
        ok = np.abs(t) <= _S_MAX
        return (t if ok.all() else np.where(ok, t, 0)) * 1000, ok
    ok = np.ones(len(t), dtype=bool)
    if unit == "ms":
        return t, ok
    half, div = (500, 1000) if unit == "us" else (500_000, 1_000_000)
    return (t + half) // div, ok


#: |t| in seconds whose milliseconds fit in int64 with room to compare (far beyond any plausible time)
_S_MAX = 2**62 // 1000
_AUTO_EDGES = np.array([AUTO_MIN, *(b for b, _u in AUTO_BOUNDS)], dtype=np.int64)
_AUTO_UNITS = ("", "s", "ms", "us", "ns")  # the unit of each interval of _AUTO_EDGES (below the first: none)


def _auto_band(magnitude: int) -> str:
    return _AUTO_UNITS[int(np.searchsorted(_AUTO_EDGES, magnitude, side="right"))]


class _Reject(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class EventDecoder:
    """Decode a batch of message values into :class:`EventColumns` plus rejections."""

    def __init__(
        self,
        config: MonitorConfig,
        reference: ReferenceProfile,
        features: Sequence[str],
        max_event_bytes: int = 1 << 20,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self.reference = reference
        self.features = tuple(features)
        self.max_event_bytes = max_event_bytes
        ev = config.events
        self.numeric = [f for f in self.features if isinstance(reference.features[f], NumericProfile)]
        self.categorical = [f for f in self.features if f not in self.numeric]
        self._cat_profiles = [p for f in self.categorical if isinstance(p := reference.features[f], CategoricalProfile)]
        self._strict_wait = 0  # batches left before the strict decoder is tried again
        #: with a labels section, each prediction's id (:attr:`EventColumns.ids`)
        self._id_field = config.labels.id_field if config.labels is not None else None
        self._decoder = self._build()
        self._unit = ev.time_unit
        self._kafka_ok = ev.time_missing == "kafka_timestamp"
        self._min_ms = ev.min_time_ms
        self._skew_ms = ev.max_future_skew_ms

    # -- building the typed struct ------------------------------------------------------
    def _build(self) -> msgspec.json.Decoder[Any] | None:
        """The typed decoder, or None when every message must take the reference path."""
        ev = self.config.events
        # getters of the typed struct's attributes (identity defaults: no typed decoder, no rows)
        self._time_get: Callable[[Any], Any] = _none
        self._strict: msgspec.json.Decoder[Any] | None = None
        self._fobj_get: Callable[[Any], Any] | None = None
        self._num_get: Callable[[Any], Any] = _empty
        self._num_tuple: Callable[[Any], tuple[Any, ...]] = _empty
        # the features struct is the numeric fields, then the categoricals (nested features with
        # categoricals); the strict decoder then decodes categoricals to their slots (coded_strings)
        self._features_tuple = False
        self._cat_gets: list[Callable[[Any], Any]] = []
        self._coded_gets: list[Callable[[Any], Any]] = []
        self._top_gets: list[Callable[[Any], Any]] = []
        cat_t: Any = bool | int | str | None
        num_t: Any = float | None
        top: dict[str, Any] = {}  # JSON key -> type
        if ev.time_field is not None:
            top[ev.time_field] = int | float | str | None
        for s in ev.segment_fields:
            top[s] = cat_t
        for name in (ev.prediction_field, ev.label_field):
            if name is not None:
                top[name] = bool | float | None
        if self._id_field is not None:
            if self._id_field in top:
                return None  # (the id is also another field: the reference path reads it)
            top[self._id_field] = bool | int | float | str | None
        feats: dict[str, Any] = {f: num_t for f in self.numeric}
        # (stream.fastenum: kept strings decode to shared objects, and in the strict decoder to their slots;
        # where it is not available, plain strings binned by lookup)
        fast = fastenum.available()
        for f, p in zip(self.categorical, self._cat_profiles, strict=True):
            feats[f] = bool | int | (_kept(p) if fast else str) | None
        if ev.features_field is None:
            for k, t in feats.items():
                if k in top and top[k] == cat_t and k in self.categorical:
                    continue  # a categorical that is also a segment: read as plain strings
                if k in top and top[k] != t:
                    return None  # one key read two ways: leave it all to the reference path
                top[k] = t
        elif ev.features_field in top:
            return None
        # the strict decoder takes only the common shapes, so what it gives needs no check: an
        # integer time (unless ISO text), and (nested features) each categorical a string it
        # decodes straight to its slot (coded_strings) or absent
        strict_top = dict(top)
        if ev.time_field is not None and ev.time_unit != "iso":
            strict_top[ev.time_field] = int | None
        strict_feats = dict(feats)
        defaults: dict[str, Any] = {}
        self._features_tuple = fast and ev.features_field is not None and bool(self.categorical)
        if self._features_tuple:
            for f, p in zip(self.categorical, self._cat_profiles, strict=True):
                strict_feats[f], defaults[f] = _coded(p)

        def struct(
            name: str, fields: dict[str, Any], required: dict[str, Any], strict: bool, default: dict[str, Any]
        ) -> tuple[Any, dict[str, str]]:
            attrs = {key: f"f{i}" for i, key in enumerate([*required, *fields])}
            spec: list[Any] = [(attrs[k], t) for k, t in required.items()]
            spec += [(attrs[k], t, default.get(k)) for k, t in fields.items()]
            rename = {a: k for k, a in attrs.items()}
            cls = msgspec.defstruct(name, spec, rename=rename, gc=False, forbid_unknown_fields=strict)
            return cls, attrs

        # two decoders of the same fields: the strict one refuses a field the monitor does not
        # read, so what it decodes nests at most two levels (event, features) and needs no
        # nesting check; the lenient one skips such fields (and the batch gets the check)
        classes = {}
        for strict in (False, True):
            required: dict[str, Any] = {}
            if ev.features_field is not None:
                fields = strict_feats if strict else feats
                feat_cls, feat_attrs = struct("Features", fields, {}, strict, defaults if strict else {})
                required[ev.features_field] = feat_cls
            classes[strict], top_attrs = struct("Event", strict_top if strict else top, required, strict, {})
        self._strict = msgspec.json.Decoder(classes[True])

        # getters: the time, the features object (when nested), numeric values, categoricals, top fields
        nested = ev.features_field is not None
        src = feat_attrs if nested else top_attrs
        if ev.time_field is not None:
            self._time_get = attrgetter(top_attrs[ev.time_field])
        if ev.features_field is not None:
            self._fobj_get = attrgetter(top_attrs[ev.features_field])
        if self.numeric:
            self._num_get = attrgetter(*[src[f] for f in self.numeric])
            self._num_tuple = self._num_get if len(self.numeric) > 1 else _one_tuple(self._num_get)
            if nested and not self.categorical:  # the features struct is exactly the numeric fields, in order
                self._num_tuple = msgspec.structs.astuple
        self._cat_gets = [attrgetter(src[f]) for f in self.categorical]
        # the strict decoder's categoricals (nested features only: _features_tuple) read from the event
        # itself (CodedColumn), with no list of the features structs made per batch
        if ev.features_field is not None:
            via = top_attrs[ev.features_field]
            self._coded_gets = [attrgetter(f"{via}.{src[f]}") for f in self.categorical]
        tops = [*ev.segment_fields, *(n for n in (ev.prediction_field, ev.label_field) if n is not None)]
        if self._id_field is not None:
            tops.append(self._id_field)
        self._top_gets = [attrgetter(top_attrs[f]) for f in tops]
        return msgspec.json.Decoder(classes[False])

    # -- decoding -----------------------------------------------------------------------
    def decode(
        self, values: Sequence[bytes | None], kafka_timestamps_ms: Sequence[int | None] | None = None
    ) -> tuple[EventColumns, list[Rejection]]:
        """Columns of the valid messages (``rows`` = their positions) and the rejections.

        ``kafka_timestamps_ms``: each message's Kafka timestamp (None: it has none); an event
        time more than ``events.max_future_skew`` ahead of it (without one: of ``wall_clock``,
        read once per batch) is rejected, as :func:`decode_events` does.

        The batch path: one typed ``msgspec`` decode per message (``map``: per-message calls
        beat one call on the batch joined into an array, and keep message boundaries), one
        nesting bound for the whole batch, then each column in one numpy conversion. Messages
        the typed decoder refuses, and rows whose time it cannot settle, take the per-message
        reference path (:meth:`_slow_rows`), which rejects with the reference's reasons.
        """
        n = len(values)
        kts = kafka_timestamps_ms
        now_ms = int(self.wall_clock() * 1000)
        good: list[Any] = []
        good_idx: list[int] = []
        strict = False
        if self._decoder is not None:
            good, good_idx, strict = self._typed(values)
            if not strict:
                good, good_idx = self._shallow(values, good, good_idx)
        times, keep = self._times(good, good_idx, kts, now_ms, strict)
        if keep is not None:
            good = [o for o, k in zip(good, keep, strict=True) if k]
            good_idx = [i for i, k in zip(good_idx, keep, strict=True) if k]
        slow_idx = sorted(set(range(n)).difference(good_idx)) if len(good_idx) != n else []
        slow, rejected = self._slow_rows(values, kts, slow_idx, now_ms)
        return self._columns(good, good_idx, times, slow, strict), rejected

    def _typed(self, values: Sequence[bytes | None]) -> tuple[list[Any], list[int], bool]:
        """Typed structs of the messages the typed decoder takes, their positions, and whether
        the strict decoder took them all (so none has a field the monitor does not read)."""
        assert self._decoder is not None
        dec = self._decoder.decode
        n = len(values)
        try:  # the common case: every message decodes
            if n and max(map(len, values)) <= self.max_event_bytes:  # type: ignore[arg-type]  # TypeError on None
                if self._strict_wait == 0 and self._strict is not None:
                    try:
                        return list(map(self._strict.decode, values)), list(range(n)), True  # type: ignore[arg-type]
                    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                        self._strict_wait = STRICT_RETRY  # (events with other fields: do not try every batch)
                else:
                    self._strict_wait -= 1
                return list(map(dec, values)), list(range(n)), False  # type: ignore[arg-type]
        except (TypeError, msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            pass  # some message is not for the typed path: sort them out one by one below
        good: list[Any] = []
        idx: list[int] = []
        limit = self.max_event_bytes
        for i, v in enumerate(values):
            if v is None or len(v) > limit:
                continue
            try:
                obj = dec(v)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                continue
            good.append(obj)
            idx.append(i)
        return good, idx, False

    def _shallow(self, values: Sequence[bytes | None], good: list[Any], idx: list[int]) -> tuple[list[Any], list[int]]:
        """Drop messages nesting deeper than MAX_EVENT_DEPTH (the slow path rejects them).

        Every typed-decoded message opens at least ``min_open`` objects (the event, and the
        features object when nested), so if the whole batch has ``total`` openers no single
        message has more than ``total - min_open * (k - 1)``: one count per batch settles it.
        """
        k = len(good)
        if k == 0:
            return good, idx
        min_open = 2 if self.config.events.features_field is not None else 1
        chosen = values if k == len(values) else [values[i] for i in idx]  # (idx is 0..n-1 when k == n)
        raw = b"".join(chosen)  # type: ignore[arg-type]
        joined = np.frombuffer(raw, dtype=np.uint8)
        opened = np.count_nonzero(joined == _BRACE)  # numpy counts a byte twice as fast as bytes.count
        if opened - min_open * (k - 1) <= MAX_EVENT_DEPTH and b"[" not in raw:  # (memchr: no scan for "[")
            return good, idx
        opened += np.count_nonzero(joined == _BRACKET)
        if opened - min_open * (k - 1) <= MAX_EVENT_DEPTH:
            return good, idx
        deep = [too_deep(v) for v in chosen]  # type: ignore[arg-type]
        kept = [j for j, d in enumerate(deep) if not d]
        return [good[j] for j in kept], [idx[j] for j in kept]

    def _times(
        self,
        good: list[Any],
        idx: list[int],
        kts: Sequence[int | None] | None,
        now_ms: int,
        strict: bool = False,
    ) -> tuple[npt.NDArray[np.int64], list[bool] | None]:
        """Event times (ms) of the typed rows, and which rows have an accepted one (None: all of them);
        rows without one go to the reference path, which gives the reason.

        ``strict``: the rows come from the strict decoder, whose time is an int or None."""
        ev = self.config.events
        if ev.time_field is not None and good:
            arr: npt.NDArray[Any] | None = None
            raw: list[Any] | None = None
            if strict and self._unit != "iso":
                try:  # ints only: straight into int64 (None raises TypeError, beyond int64 OverflowError)
                    arr = np.fromiter(map(self._time_get, good), dtype=np.int64, count=len(good))
                except (TypeError, OverflowError):
                    arr = None
            if arr is None:
                raw = list(map(self._time_get, good))
                if set(map(type, raw)) == _INT_ONLY:  # (checked first: fromiter would truncate a float, parse a str)
                    try:
                        arr = np.fromiter(raw, dtype=np.int64, count=len(raw))
                    except OverflowError:  # beyond int64: the general conversion (an object array)
                        arr = np.array(raw)
                else:
                    arr = np.array(raw)
            if arr.dtype.kind == "i" and self._unit != "iso" and arr.min() >= -(2**62) and arr.max() <= 2**62:
                # integers: the scalar rule (exact integer arithmetic), vectorised
                t, ok = epoch_ms(arr.astype(np.int64), self._unit)
                ok &= t >= self._min_ms
                ok &= t <= self._limits(kts, idx, now_ms)
                if ok.all():
                    return t, None
                return t[ok], ok.tolist()
            if raw is None:
                raw = list(map(self._time_get, good))
            scalar = [
                self._scalar_time(r, kts[i] if kts is not None else None, now_ms) for r, i in zip(raw, idx, strict=True)
            ]
        else:
            scalar = [k if kts is not None and (k := kts[i]) is not None and k >= self._min_ms else None for i in idx]
        keep = [t is not None for t in scalar]
        return np.array([t for t in scalar if t is not None], dtype=np.int64), (None if all(keep) else keep)

    def _limits(self, kts: Sequence[int | None] | None, idx: list[int], now_ms: int) -> Any:
        """The latest accepted time of each row (its Kafka timestamp, or the clock, + max_future_skew)."""
        if kts is None:
            return now_ms + self._skew_ms
        chosen = kts if len(idx) == len(kts) else [kts[i] for i in idx]  # (idx is 0..n-1 when they are as many)
        try:
            k = np.fromiter(chosen, dtype=np.int64, count=len(chosen))
        except TypeError:  # a message without a timestamp: the clock
            k = np.fromiter((now_ms if x is None else x for x in chosen), dtype=np.int64, count=len(chosen))
        return k + self._skew_ms

    def _scalar_time(self, raw: Any, kts: int | None, now_ms: int) -> int | None:
        """The time of one typed row (None: let the reference path decide and give the reason)."""
        try:
            if raw is None:
                if not self._kafka_ok or kts is None:
                    return None
                check_time(int(kts), kts, self._min_ms, None, "")
                return int(kts)
            t = parse_time_ms(raw, self._unit)
            check_time(t, raw, self._min_ms, (now_ms if kts is None else int(kts)) + self._skew_ms, "")
        except InputError:
            return None
        return t

    def _slow_rows(
        self, values: Sequence[bytes | None], kts: Sequence[int | None] | None, idx: Sequence[int], now_ms: int
    ) -> tuple[list[tuple[int, tuple[int, tuple[Any, ...], tuple[Any, ...]]]], list[Rejection]]:
        """The per-message reference path: (position, row) of the valid ones, and the rejections."""
        rows = []
        rejected: list[Rejection] = []
        limit = self.max_event_bytes
        for i in idx:
            value = values[i]
            try:
                if value is None:
                    raise _Reject("not_json", "empty message (no value)")
                if len(value) > limit:
                    raise _Reject("too_large", f"message of {len(value)} bytes exceeds max_event_bytes={limit}")
                if too_deep(value):
                    raise _Reject("too_large", f"message nests arrays/objects deeper than {MAX_EVENT_DEPTH} levels")
                rows.append((i, self._slow_row(value, kts[i] if kts is not None else None, now_ms)))
            except _Reject as r:
                rejected.append(Rejection(i, r.code, r.reason))
        return rows, rejected

    def _numeric(self, fobjs: list[Any]) -> npt.NDArray[np.float64]:
        """(rows, numeric) float64 matrix; a missing value (None) becomes NaN."""
        k, n_num = len(fobjs), len(self.numeric)
        try:  # no None among the values: the flattened rows packed as doubles
            packed = doubles(k * n_num).pack(*list(chain.from_iterable(map(self._num_tuple, fobjs))))
        except struct.error:  # None: take the slower conversion that maps None to NaN
            return np.array(list(map(self._num_get, fobjs)), dtype=np.float64).reshape(k, n_num)
        return np.frombuffer(packed, dtype=np.float64).reshape(k, n_num)

    def _columns(
        self,
        good: list[Any],
        good_idx: list[int],
        times: npt.NDArray[np.int64],
        slow: list[tuple[int, tuple[int, tuple[Any, ...], tuple[Any, ...]]]],
        strict: bool = False,
    ) -> EventColumns:
        """Columns of the typed rows and the reference path's rows, in message order."""
        ev = self.config.events
        n_num, n_seg = len(self.numeric), len(ev.segment_fields)
        k = len(good)
        fobjs: Any = map(self._fobj_get, good) if self._fobj_get is not None else good  # (iterated once)
        n_top = n_seg + (ev.prediction_field is not None) + (ev.label_field is not None) + (self._id_field is not None)
        whole: npt.NDArray[np.float64] | None = None  # (rows, numeric + categorical): values, then slots
        cats: list[Any]  # a list of values per categorical (CodedColumn: the strict decoder's)
        if k and strict and self._features_tuple:
            # numeric values and categorical slots are all floats: the features structs of the
            # batch go into one float64 matrix in one conversion (a None, a missing numeric value,
            # takes numpy's list conversion, which makes it NaN). The slots
            # are float-subclass enum members, which numpy's fromiter converts at 32 ns a value
            # against 13 for a float; struct packs any float as a C double (6 ns)
            w = n_num + len(self.categorical)
            flat_values = list(chain.from_iterable(map(msgspec.structs.astuple, fobjs)))
            try:
                matrix = np.frombuffer(doubles(k * w).pack(*flat_values), dtype=np.float64).reshape(k, w)
            except struct.error:
                matrix = np.array(flat_values, dtype=np.float64).reshape(k, w)
            num = matrix[:, :n_num]
            whole = matrix  # (binned whole by the layout: FeatureColumns.coded)
            cats = [CodedColumn(good, g) for g in self._coded_gets]
        elif k and self._features_tuple:
            # every value of the features struct in one (rows, numeric + categorical) object matrix:
            # the numeric block converts to float64 at once (None -> NaN), each categorical is a column
            w = n_num + len(self.categorical)
            flat = np.fromiter(chain.from_iterable(map(msgspec.structs.astuple, fobjs)), dtype=object, count=k * w)
            table = flat.reshape(k, w)
            num = table[:, :n_num].astype(np.float64)
            cats = [table[:, j].tolist() for j in range(n_num, w)]
        elif k:
            fobjs = list(fobjs)
            num = self._numeric(fobjs)
            cats = [list(map(g, fobjs)) for g in self._cat_gets]
        else:  # (also when there is no typed decoder, and so no getters)
            num = np.empty((0, n_num), dtype=np.float64)
            cats = [[] for _ in self.categorical]
        tops = [list(map(g, good)) for g in self._top_gets] if k else [[] for _ in range(n_top)]
        if slow:
            cats = [list(c) for c in cats]  # (the strict decoder's slots are not merged: binned below)
            whole = None
            pos = np.concatenate([np.asarray(good_idx, dtype=np.int64), [i for i, _r in slow]]).astype(np.int64)
            order = np.argsort(pos, kind="stable")
            times = np.concatenate([times, [r[0] for _i, r in slow]]).astype(np.int64)[order]
            slow_num = np.array([r[1][:n_num] for _i, r in slow], dtype=np.float64).reshape(len(slow), n_num)
            num = np.concatenate([num, slow_num])[order]
            ol = order.tolist()
            cats = [_take(c + [r[1][n_num + j] for _i, r in slow], ol) for j, c in enumerate(cats)]
            tops = [_take(c + [r[2][j] for _i, r in slow], ol) for j, c in enumerate(tops)]
            rows = pos[order].tolist()
        else:
            rows = good_idx
        n = len(rows)
        columns: dict[str, Any] = {name: num[:, j] for j, name in enumerate(self.numeric)}
        codes: dict[str, npt.NDArray[np.int64]] = {}
        for name, col, prof in zip(self.categorical, cats, self._cat_profiles, strict=True):
            if whole is not None:  # slots from the strict decoder, exact for every value, in the matrix
                columns[name] = col
                continue
            # binned here, where the values are checked: a plain column with no missing slot
            # holds only non-empty strings (no check needed); otherwise convert unless clean
            slots, plain = prof.bin_index_plain(col)
            if (not plain or (slots == prof.n_bins).any()) and not _clean(col):
                col = [c if c.__class__ is str and c else _cat_value(c) for c in col]
                slots = prof.bin_index(col)
            columns[name] = col
            codes[name] = slots
        segs: Sequence[tuple[str, ...]]
        seg_values = None
        if n_seg == 1:
            col = tops[0]
            if _clean(col):
                segs, seg_values = OneFieldSegments(col), col
            else:
                segs = [(_seg_value(c),) for c in col]
        elif n_seg:
            segs = list(zip(*([_seg_value(c) for c in col] for col in tops[:n_seg]), strict=True))
        else:
            segs = [()] * n
        nan = np.full(n, np.nan)
        j = n_seg
        pred = np.array(tops[j], dtype=np.float64) if ev.prediction_field is not None else nan
        j += 1 if ev.prediction_field is not None else 0
        label = np.array(tops[j], dtype=np.float64) if ev.label_field is not None else nan.copy()
        ids: list[str | None] | None = None
        if self._id_field is not None:
            ids = tops[-1]
            if set(map(type, ids)) != _STR_ONLY or "" in ids:
                ids = [id_text(x) for x in ids]
        return EventColumns(
            time_ms=times,
            features=FeatureColumns(
                {f: columns[f] for f in self.features},
                num if whole is None else whole,
                self.numeric if whole is None else (*self.numeric, *self.categorical),
                codes,
                self.reference,
                coded=() if whole is None else self.categorical,
            ),
            segments=segs,
            prediction=pred,
            label=label,
            rows=rows,
            segment_values=seg_values,
            ids=ids,
        )

    def _slow_row(self, value: bytes, kts: int | None, now_ms: int) -> tuple[int, tuple[Any, ...], tuple[Any, ...]]:
        """The reference path for one message; raises :class:`_Reject` with its reason."""
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Reject("not_json", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise _Reject("too_large", "message nests arrays/objects too deeply to parse") from None
        cols, errors = decode_events([obj], self.config, self.reference, self.features, [kts], now_ms)
        if errors:
            reason = errors[0][1]
            raise _Reject(reason_code(reason), reason)
        feats: tuple[Any, ...] = tuple(float(cols.features[f][0]) for f in self.numeric)
        feats += tuple(cols.features[f][0] for f in self.categorical)
        top: tuple[Any, ...] = tuple(cols.segments[0])
        if self.config.events.prediction_field is not None:
            top += (float(cols.prediction[0]),)
        if self.config.events.label_field is not None:
            top += (float(cols.label[0]),)
        if self._id_field is not None:
            assert cols.ids is not None
            top += (cols.ids[0],)
        return int(cols.time_ms[0]), feats, top


def _kept(profile: CategoricalProfile) -> Any:
    """The lenient decoder's type of a categorical's strings (:func:`stream.fastenum.kept_strings`)."""
    return fastenum.kept_strings(profile.name, [*profile.categories, *profile.other_values])


def _coded(profile: CategoricalProfile) -> tuple[Any, Any]:
    """The strict decoder's type of a categorical's strings, decoded to their slots, and the absent value
    (:func:`stream.fastenum.coded_strings`)."""
    kept = [*profile.categories, *profile.other_values]
    return fastenum.coded_strings(profile.name, kept, profile.bucket_of, profile.n_bins)


class CodedColumn(Sequence[str | None]):
    """A categorical column the strict decoder gave as slots: its values as ``decode_events`` has
    them (the string, None for missing or ""), made on first use (the consumer bins by slot and
    never reads them)."""

    __slots__ = ("_get", "_rows", "_values")

    def __init__(self, rows: list[Any], get: Callable[[Any], Any]) -> None:
        self._rows = rows
        self._get = get
        self._values: list[str | None] | None = None

    def _list(self) -> list[str | None]:
        if self._values is None:
            self._values = [m.value or None for m in map(self._get, self._rows)]
        return self._values

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: Any) -> Any:
        return self._list()[i]

    def __iter__(self) -> Any:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return self._list() == (list(other) if isinstance(other, CodedColumn) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CodedColumn({self._list()!r})"


class OneFieldSegments(Sequence[tuple[str, ...]]):
    """The segment keys of events with one segment field, as 1-tuples of its plain values,
    made only when read (the router reads the values themselves)."""

    __slots__ = ("_values",)

    def __init__(self, values: list[str]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(zip(self._values[i]))
        return (self._values[i],)

    def __iter__(self) -> Any:
        return zip(self._values)

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, OneFieldSegments) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OneFieldSegments({self._values!r})"


def _none(_obj: Any) -> None:
    return None


def _empty(_obj: Any) -> tuple[()]:
    return ()


def _one_tuple(get: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda obj: (get(obj),)


@lru_cache(maxsize=8)
def doubles(n: int) -> struct.Struct:
    """The packer of ``n`` native doubles: it converts a batch's flattened values (floats, and float
    subclasses such as the slots) to float64 at about 6 ns a value, against 13 for numpy's
    ``fromiter`` on plain floats; a None raises ``struct.error``. Batches are mostly of a few sizes.
    (The benchmark's floor uses it too.)"""
    return struct.Struct(f"{n}d")


def _take(values: list[Any], order: list[int]) -> list[Any]:
    return [values[i] for i in order]


def _clean(col: list[Any]) -> bool:
    """Only non-empty strings: already final as categorical and segment values."""
    try:
        "".join(col)  # a TypeError unless every value is a str (twice as fast as a set of types)
    except TypeError:
        return False
    return "" not in col


def _cat_value(c: Any) -> str | None:
    """A decoded categorical value as decode_events has it (already final for the reference path)."""
    if type(c) is str:
        return c or None
    if c is None:
        return None
    if type(c) is bool:
        return "true" if c else "false"
    if isinstance(c, str):  # a member of kept_strings: its value as a plain string
        return str.__str__(c) or None
    return str(c)


def _seg_value(c: Any) -> str:
    v = _cat_value(c)
    return MISSING if v is None else v


def reference_decode(
    values: Sequence[bytes | None],
    config: MonitorConfig,
    reference: ReferenceProfile,
    features: Sequence[str],
    kafka_timestamps_ms: Sequence[int | None] | None = None,
    now_ms: int | None = None,
) -> tuple[EventColumns, list[tuple[int, str]]]:
    """The slow, obviously-right path the fast decoder must equal (used by tests and for comparison)."""
    objs: list[Any] = []
    idx: list[int] = []
    pre: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if v is None:
            pre.append((i, "empty message (no value)"))
            continue
        try:
            objs.append(json.loads(v))
            idx.append(i)
        except (UnicodeDecodeError, ValueError) as exc:
            pre.append((i, f"not valid JSON: {exc}"))
    kts = [kafka_timestamps_ms[i] for i in idx] if kafka_timestamps_ms is not None else None
    cols, errors = decode_events(objs, config, reference, features, kts, now_ms)
    cols.rows = [idx[r] for r in cols.rows]
    errs = sorted(pre + [(idx[r], reason) for r, reason in errors])
    return cols, errs
