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
from collections.abc import Sequence
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
        self._decoder, self._getter = self._build()
        self._unit = ev.time_unit
        self._kafka_ok = ev.time_missing == "kafka_timestamp"

    # -- building the typed struct ------------------------------------------------------
    def _build(self) -> tuple[msgspec.json.Decoder[Any] | None, Any]:
        ev = self.config.events
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
                    return None, None  # one key read two ways: leave it all to the reference path
                top[k] = t
        elif ev.features_field in top:
            return None, None

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

        # attribute paths of every column, in the row layout of `_row`
        def path(key: str, nested: bool) -> str:
            if nested:
                return f"{top_attrs[ev.features_field or '']}.{feat_attrs[key]}"
            return top_attrs[key]

        nested = ev.features_field is not None
        paths = [top_attrs[ev.time_field] if ev.time_field is not None else None]
        paths += [path(f, nested) for f in self.numeric]
        paths += [path(f, nested) for f in self.categorical]
        paths += [top_attrs[s] for s in ev.segment_fields]
        paths += [top_attrs[n] if n is not None else None for n in (ev.prediction_field, ev.label_field)]
        getter = attrgetter(*[p for p in paths if p is not None]) if any(paths) else None
        self._has_time = ev.time_field is not None
        self._has_pred = ev.prediction_field is not None
        self._has_label = ev.label_field is not None
        return msgspec.json.Decoder(top_cls), getter

    # -- decoding -----------------------------------------------------------------------
    def decode(
        self, values: Sequence[bytes | None], kafka_timestamps_ms: Sequence[int | None] | None = None
    ) -> tuple[EventColumns, list[Rejection]]:
        """Columns of the valid messages (``rows`` = their positions) and the rejections."""
        n_num, n_cat = len(self.numeric), len(self.categorical)
        n_seg = len(self.config.events.segment_fields)
        times: list[int] = []
        nums: list[Any] = []
        cats: list[Any] = []
        segs: list[tuple[str, ...]] = []
        preds: list[Any] = []
        labels: list[Any] = []
        kept: list[int] = []
        rejected: list[Rejection] = []
        dec = self._decoder
        get = self._getter
        limit = self.max_event_bytes
        has_pred, has_label = self._has_pred, self._has_label
        nan = math.nan
        for i, value in enumerate(values):
            kts = kafka_timestamps_ms[i] if kafka_timestamps_ms is not None else None
            try:
                if value is None:
                    raise _Reject("not_json", "empty message (no value)")
                if len(value) > limit:
                    raise _Reject("too_large", f"message of {len(value)} bytes exceeds max_event_bytes={limit}")
                row = None
                if dec is not None:
                    try:
                        ev = dec.decode(value)
                    except (msgspec.ValidationError, msgspec.DecodeError):
                        ev = None
                    if ev is not None:
                        row = self._fast_row(get(ev) if get is not None else (), kts)
                if row is None:
                    row = self._slow_row(value, kts)
            except _Reject as r:
                rejected.append(Rejection(i, r.code, r.reason))
                continue
            t, fields = row
            times.append(t)
            p = 0
            nums.append(fields[p : p + n_num])
            p += n_num
            cats.append(fields[p : p + n_cat])
            p += n_cat
            segs.append(tuple(fields[p : p + n_seg]))
            p += n_seg
            preds.append(fields[p] if has_pred else nan)
            p += 1 if has_pred else 0
            labels.append(fields[p] if has_label else nan)
            kept.append(i)
        n = len(kept)
        num_arr = np.array(nums, dtype=np.float64).reshape(n, n_num) if n else np.empty((0, n_num))
        columns: dict[str, Any] = {f: np.ascontiguousarray(num_arr[:, j]) for j, f in enumerate(self.numeric)}
        for j, f in enumerate(self.categorical):
            columns[f] = [c[j] for c in cats]
        cols = EventColumns(
            time_ms=np.asarray(times, dtype=np.int64),
            features={f: columns[f] for f in self.features},
            segments=segs,
            prediction=np.array(preds, dtype=np.float64),
            label=np.array(labels, dtype=np.float64),
            rows=kept,
        )
        return cols, rejected

    def _fast_row(self, got: Any, kts: int | None) -> tuple[int, list[Any]] | None:
        """A decoded struct's values in row layout; None sends the message to the reference path."""
        vals = list(got) if isinstance(got, tuple) else [got]
        ev = self.config.events
        if self._has_time:
            raw = vals.pop(0)
            if raw is None:
                if not (self._kafka_ok and kts is not None):
                    return None
                t = int(kts)
            elif type(raw) is int or type(raw) is float:
                v = float(raw)
                unit = self._unit
                if unit == "iso" or not math.isfinite(v):
                    return None
                ms = v if unit == "ms" or (unit == "auto" and abs(v) >= MS_THRESHOLD) else v * 1000.0
                if abs(ms) > 2**62:
                    return None
                t = math.floor(ms + 0.5)
            else:
                try:
                    t = parse_time_ms(raw, self._unit)
                except InputError:
                    return None
        else:
            if kts is None:
                return None
            t = int(kts)
        n_num, n_cat, n_seg = len(self.numeric), len(self.categorical), len(ev.segment_fields)
        out = vals[:n_num]
        for j in range(n_num, n_num + n_cat):
            c = vals[j]
            if type(c) is not str or not c:
                c = None if c is None or c == "" else ("true" if c else "false") if type(c) is bool else str(c)
            out.append(c)
        for j in range(n_num + n_cat, n_num + n_cat + n_seg):
            c = vals[j]
            if type(c) is not str or not c:
                c = MISSING if c is None or c == "" else ("true" if c else "false") if type(c) is bool else str(c)
            out.append(c)
        out.extend(vals[n_num + n_cat + n_seg :])  # prediction / label: float, bool or None
        return t, out

    def _slow_row(self, value: bytes, kts: int | None) -> tuple[int, list[Any]]:
        """The reference path for one message; raises :class:`_Reject` with its reason."""
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Reject("not_json", f"not valid JSON: {exc}") from None
        cols, errors = decode_events([obj], self.config, self.reference, self.features, [kts])
        if errors:
            reason = errors[0][1]
            raise _Reject(reason_code(reason), reason)
        out: list[Any] = [float(cols.features[f][0]) for f in self.numeric]
        out += [cols.features[f][0] for f in self.categorical]
        out += list(cols.segments[0])
        if self._has_pred:
            out.append(float(cols.prediction[0]))
        if self._has_label:
            out.append(float(cols.label[0]))
        return int(cols.time_ms[0]), out


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
