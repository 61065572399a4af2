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
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from detectors.config import MonitorConfig
from detectors.events import MS_THRESHOLD, EventColumns, decode_events, parse_time_ms
from detectors.exceptions import InputError
from detectors.reference import MISSING, NumericProfile, ReferenceProfile

REASON_CODES = ("not_json", "not_object", "bad_time", "bad_type", "missing_field", "too_large")

#: deeper nesting of arrays/objects is rejected (``too_large``) before any parser sees it
MAX_EVENT_DEPTH = 64
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
    if reason.startswith(("missing event time field", "missing or non-object features field")):
        return "missing_field"
    if reason.startswith(("event time", "no Kafka timestamp")):
        return "bad_time"
    return "bad_type"


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
    ) -> None:
        self.config = config
        self.reference = reference
        self.features = tuple(features)
        self.max_event_bytes = max_event_bytes
        ev = config.events
        self.numeric = [f for f in self.features if isinstance(reference.features[f], NumericProfile)]
        self.categorical = [f for f in self.features if f not in self.numeric]
        self._decoder = self._build()
        self._unit = ev.time_unit
        self._kafka_ok = ev.time_missing == "kafka_timestamp"

    # -- building the typed struct ------------------------------------------------------
    def _build(self) -> msgspec.json.Decoder[Any] | None:
        """The typed decoder, or None when every message must take the reference path."""
        ev = self.config.events
        self._feat_attr: str | None = None
        self._fget: Callable[[Any], tuple[Any, ...]] = _tuple_getter([])
        self._tget: Callable[[Any], tuple[Any, ...]] = _tuple_getter([])
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
        feats: dict[str, Any] = {f: num_t for f in self.numeric}
        feats.update({f: cat_t for f in self.categorical})
        if ev.features_field is None:
            for k, t in feats.items():
                if k in top and top[k] != t:
                    return None  # one key read two ways: leave it all to the reference path
                top[k] = t
        elif ev.features_field in top:
            return None

        def struct(name: str, fields: dict[str, Any], required: dict[str, Any]) -> tuple[Any, dict[str, str]]:
            attrs = {key: f"f{i}" for i, key in enumerate([*required, *fields])}
            spec: list[Any] = [(attrs[k], t) for k, t in required.items()]
            spec += [(attrs[k], t, None) for k, t in fields.items()]
            cls = msgspec.defstruct(name, spec, rename={a: k for k, a in attrs.items()}, gc=False)
            return cls, attrs

        required: dict[str, Any] = {}
        if ev.features_field is not None:
            feat_cls, feat_attrs = struct("Features", feats, {})
            required[ev.features_field] = feat_cls
        top_cls, top_attrs = struct("Event", top, required)

        # two flat getters: the top-level fields, and the features (from the nested struct or the top)
        nested = ev.features_field is not None
        src = feat_attrs if nested else top_attrs
        self._feat_attr = top_attrs[ev.features_field] if ev.features_field is not None else None
        self._fget = _tuple_getter([src[f] for f in (*self.numeric, *self.categorical)])
        top_names = [top_attrs[ev.time_field]] if ev.time_field is not None else []
        top_names += [top_attrs[s] for s in ev.segment_fields]
        top_names += [top_attrs[n] for n in (ev.prediction_field, ev.label_field) if n is not None]
        self._tget = _tuple_getter(top_names)
        return msgspec.json.Decoder(top_cls)

    # -- decoding -----------------------------------------------------------------------
    def decode(
        self, values: Sequence[bytes | None], kafka_timestamps_ms: Sequence[int | None] | None = None
    ) -> tuple[EventColumns, list[Rejection]]:
        """Columns of the valid messages (``rows`` = their positions) and the rejections."""
        ev = self.config.events
        n_num, n_cat, n_seg = len(self.numeric), len(self.categorical), len(ev.segment_fields)
        has_time = ev.time_field is not None
        has_pred, has_label = ev.prediction_field is not None, ev.label_field is not None
        times: list[int] = []
        numflat: list[Any] = []  # numeric values row after row (floats are not GC-tracked: cheap to keep)
        cats: list[tuple[Any, ...]] = []
        tops: list[tuple[Any, ...]] = []  # segments, prediction, label (after the time)
        kept: list[int] = []
        rejected: list[Rejection] = []
        dec, tget, fget, fattr = self._decoder, self._tget, self._fget, self._feat_attr
        limit = self.max_event_bytes
        unit_ms, unit_s = self._unit == "ms", self._unit == "s"
        kafka_ok = self._kafka_ok
        floor, isfinite = math.floor, math.isfinite
        for i, value in enumerate(values):
            kts = kafka_timestamps_ms[i] if kafka_timestamps_ms is not None else None
            try:
                if value is None:
                    raise _Reject("not_json", "empty message (no value)")
                if len(value) > limit:
                    raise _Reject("too_large", f"message of {len(value)} bytes exceeds max_event_bytes={limit}")
                if too_deep(value):
                    raise _Reject("too_large", f"message nests arrays/objects deeper than {MAX_EVENT_DEPTH} levels")
                row = None
                if dec is not None:
                    try:
                        obj = dec.decode(value)
                    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                        obj = None
                    if obj is not None:
                        top = tget(obj)
                        t: int | None
                        if has_time:
                            raw = top[0]
                            top = top[1:]
                            tr = type(raw)
                            if tr is int or tr is float:
                                v = float(raw)
                                if unit_ms or (not unit_s and (v >= MS_THRESHOLD or v <= -MS_THRESHOLD)):
                                    ms = v
                                else:
                                    ms = v * 1000.0
                                t = floor(ms + 0.5) if isfinite(ms) and -(2**62) <= ms <= 2**62 else None
                                if self._unit == "iso":
                                    t = None
                            elif raw is None:
                                t = int(kts) if kafka_ok and kts is not None else None
                            else:
                                try:
                                    t = parse_time_ms(raw, self._unit)
                                except InputError:
                                    t = None
                        else:
                            t = int(kts) if kts is not None else None
                        if t is not None:
                            f = fget(getattr(obj, fattr) if fattr is not None else obj)
                            row = (t, f, top)
                if row is None:
                    row = self._slow_row(value, kts)
            except _Reject as r:
                rejected.append(Rejection(i, r.code, r.reason))
                continue
            times.append(row[0])
            if n_cat:
                numflat.extend(row[1][:n_num])
                cats.append(row[1][n_num:])
            else:
                numflat.extend(row[1])
            tops.append(row[2])
            kept.append(i)
        n = len(kept)
        columns: dict[str, Any] = {}
        if n_num:
            num_arr = np.array(numflat, dtype=np.float64).reshape(n, n_num)
            for j, name in enumerate(self.numeric):
                columns[name] = np.ascontiguousarray(num_arr[:, j])
        for j, name in enumerate(self.categorical):
            columns[name] = [_cat_value(c[j]) for c in cats]
        segs: list[tuple[str, ...]] = [tuple(_seg_value(x) for x in top[:n_seg]) for top in tops] if n_seg else [()] * n
        nan = math.nan
        k = n_seg
        preds = [top[k] for top in tops] if has_pred else [nan] * n
        k += 1 if has_pred else 0
        labels = [top[k] for top in tops] if has_label else [nan] * n
        cols = EventColumns(
            time_ms=np.asarray(times, dtype=np.int64),
            features={f: columns[f] for f in self.features},
            segments=segs,
            prediction=np.array(preds, dtype=np.float64),
            label=np.array(labels, dtype=np.float64),
            rows=kept,
        )
        return cols, rejected

    def _slow_row(self, value: bytes, kts: int | None) -> tuple[int, tuple[Any, ...], tuple[Any, ...]]:
        """The reference path for one message; raises :class:`_Reject` with its reason."""
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Reject("not_json", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise _Reject("too_large", "message nests arrays/objects too deeply to parse") from None
        cols, errors = decode_events([obj], self.config, self.reference, self.features, [kts])
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
        return int(cols.time_ms[0]), feats, top


def _tuple_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda _obj: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def _cat_value(c: Any) -> str | None:
    """A decoded categorical value as decode_events has it (already final for the reference path)."""
    if type(c) is str:
        return c or None
    if c is None:
        return None
    if type(c) is bool:
        return "true" if c else "false"
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
    cols, errors = decode_events(objs, config, reference, features, kts)
    cols.rows = [idx[r] for r in cols.rows]
    errs = sorted(pre + [(idx[r], reason) for r, reason in errors])
    return cols, errs
