"""Confluent-framed Avro message values to event columns (``events.format: avro``; the ``avro`` extra).

A message value is the Confluent wire format: the magic byte 0, the writer schema's id in the
schema registry (4 bytes, big-endian), then the Avro binary encoding of one record. The writer
schema comes from the registry (``confluent_kafka.schema_registry.SchemaRegistryClient``, which
caches it), so the fields are read by *name* from whatever schema wrote the message: a writer
schema that adds fields (they are skipped) or removes some (a removed feature is missing, as an
absent JSON key is) needs no configuration and no reader schema.

Two paths, as for JSON (:mod:`stream.decode`), with one meaning:

* the reference path: confluent-kafka's ``AvroDeserializer`` turns a message into a dict, and
  :func:`detectors.events.decode_events` validates it exactly as it validates a JSON object;
* the fast path: messages of one schema id are decoded together, column by column, with numpy
  (one cursor per message walks the schema: varints, union branches, doubles gathered 8 bytes at
  a time); strings are sliced out per message. It takes the common shapes: records of null,
  boolean, int, long, float, double, string, enum, bytes and fixed, unions and nested records of
  these (arrays and maps, recursive or referenced schemas send every message of that schema to the
  reference path), and hands any message whose values it would not take as they are (a type the
  monitor's field does not accept, a time that is not an integer epoch, a malformed payload) to
  the reference path, which gives the reason. A unit test checks that both paths give the same
  columns and rejections on seeded random schemas and messages.

Dead letters: ``not_avro`` (no Confluent framing, or a payload its schema cannot decode) and
``unknown_schema`` (the registry does not know the id: HTTP 404). Any other registry failure
(unreachable, 401, 5xx) is not the message's fault: it raises :class:`stream.exceptions.RegistryError`
and serve stops before it commits anything, so nothing is lost.

Avro ``timestamp-millis`` / ``timestamp-micros`` (and the ``local-`` ones) are event times as the
deserializer gives them (a ``datetime``), which need ``events.time_unit`` ``auto`` or ``iso``. Data
contract rules of the registry (encryption, migrations) are not applied.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.config import MonitorConfig
from detectors.events import EventColumns, decode_events
from detectors.histogram import FeatureColumns
from detectors.reference import MISSING, CategoricalProfile, NumericProfile, ReferenceProfile
from stream.decode import OneFieldSegments, Rejection, epoch_ms, reason_code
from stream.exceptions import ConfigError, RegistryError
from stream.settings import SchemaRegistryConfig

log = logging.getLogger("streamdrift.avro")

MAGIC = 0
HEADER = 5
PAD = 64  # zero bytes after the joined values: a read at a clamped cursor stays inside them
#: how long an id the registry did not know stays unknown before it is asked again (seconds)
UNKNOWN_RETRY_S = 60.0
INSTALL_HINT = "install the avro extra: pip install 'streamdrift[avro]'"

# what a field held in one message (the fast path's view; OTHER: a value the reference path must judge)
ABSENT, INT, FLOAT, BOOL, STRING, OTHER, STAMP = range(7)
_TIMESTAMPS = {
    "timestamp-millis": 1,
    "local-timestamp-millis": 1,
    "timestamp-micros": 1000,
    "local-timestamp-micros": 1000,
}
#: datetime's range (years 1..9999) in epoch ms: a timestamp outside it takes the reference path
_STAMP_MIN_MS, _STAMP_MAX_MS = -62_135_596_800_000, 253_402_300_799_999
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


def registry_client(cfg: SchemaRegistryConfig) -> Any:
    """A schema registry client from the settings (``mock://...`` gives confluent-kafka's in-memory one)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer  # noqa: F401  (needs fastavro)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"events.format avro: {exc.name} is missing ({INSTALL_HINT})") from None
    try:
        return SchemaRegistryClient.new_client(cfg.client_conf())
    except ValueError as exc:
        raise ConfigError(f"schema_registry: {exc}") from None


def _registry_errors() -> tuple[type[BaseException], ...]:
    """What a registry request raises when the registry (not the message) is the problem."""
    try:  # (the HTTP library confluent-kafka's client uses: httpx2 or httpx)
        from confluent_kafka.schema_registry.common._httpx_compat import httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]

    return (httpx.HTTPError, OSError)


# -- the writer schema, compiled -----------------------------------------------------------
class _Unsupported(Exception):
    """A schema the fast path does not walk (its messages take the reference path)."""


@dataclass
class _Node:
    kind: str  # an Avro primitive, or record | enum | fixed | union
    logical: str | None = None
    fields: list[tuple[str, _Node]] = field(default_factory=list)
    branches: list[_Node] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    size: int = 0


def compile_schema(schema: Any) -> _Node:
    """The node tree of a parsed Avro schema (JSON); raises ``_Unsupported`` for what the fast path
    does not walk (arrays, maps, named types used before or within their own definition)."""
    names: dict[str, _Node] = {}
    building: set[str] = set()

    def fullname(name: str, namespace: str | None) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def walk(s: Any, ns: str | None) -> _Node:
        if isinstance(s, list):
            return _Node("union", branches=[walk(b, ns) for b in s])
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return _Node(s)
            key = s if s in names else fullname(s, ns)
            if key in building or key not in names:
                raise _Unsupported(f"named type {s!r} used recursively or before its definition")
            return names[key]
        if not isinstance(s, dict):
            raise _Unsupported(f"schema {s!r}")
        t = s.get("type")
        logical = s.get("logicalType")
        if isinstance(t, (list, dict)):
            return walk(t, ns)
        if t in _PRIMITIVES:
            return _Node(t, logical=logical if isinstance(logical, str) else None)
        if t in ("record", "error", "enum", "fixed"):
            name = s.get("name")
            if not isinstance(name, str):
                raise _Unsupported("a named type without a name")
            inner_ns = s.get("namespace") if isinstance(s.get("namespace"), str) else ns
            full = fullname(name, inner_ns)
            if "." in name:
                inner_ns = name.rsplit(".", 1)[0]
            if t == "enum":
                node = _Node("enum", symbols=[str(x) for x in s.get("symbols", [])])
            elif t == "fixed":
                node = _Node("fixed", logical=logical if isinstance(logical, str) else None, size=int(s["size"]))
            else:
                building.add(full)
                node = _Node("record", fields=[(str(f["name"]), walk(f["type"], inner_ns)) for f in s["fields"]])
                building.discard(full)
            names[full] = node
            names.setdefault(name, node)
            return node
        raise _Unsupported(f"type {t!r}")

    return walk(schema, None)


# -- what the monitor reads, and the columns it fills ------------------------------------------
class _Sink:
    """One field the monitor reads: what each message of the group held there."""

    def __init__(self, n: int) -> None:
        self.kind = np.zeros(n, dtype=np.uint8)  # ABSENT unless the field is there and not null
        self.num = np.full(n, np.nan)
        self.ival = np.zeros(n, dtype=np.int64)
        self.spos = np.zeros(n, dtype=np.int64)  # strings: where they are in the buffer
        self.slen = np.zeros(n, dtype=np.int64)
        self.enum: list[tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.int64]]] = []  # (rows, symbols, index)


class _RecordSink:
    """A record the monitor reads fields of (the event; the features object): whether each message has
    it, and the sinks of those fields."""

    def __init__(self, n: int, fields: dict[str, _Sink | _RecordSink]) -> None:
        self.present = np.zeros(n, dtype=bool)
        self.fields = fields


class _Walk:
    """One group's messages (one writer schema) decoded column by column.

    ``pos`` holds a cursor per message. A selection ``sel`` of messages is an index array, or
    :attr:`every` itself (all of them, the usual case), which reads and moves the cursors without
    gathering and scattering them."""

    def __init__(self, buf: npt.NDArray[np.uint8], start: npt.NDArray[np.int64], end: npt.NDArray[np.int64]) -> None:
        self.buf = buf  # the joined values, padded with PAD zero bytes
        self.limit = len(buf) - PAD  # a cursor past it is clamped there (reads then stay inside the padding)
        self.rows8 = np.lib.stride_tricks.sliding_window_view(buf, 8)  # rows8[p] = the 8 bytes at p (no copy)
        self.pos = start.copy()
        self.end = end
        self.bad = np.zeros(len(start), dtype=bool)
        self.every = np.arange(len(start), dtype=np.int64)

    def _at(self, sel: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        p = self.pos if sel is self.every else self.pos[sel]
        return np.minimum(p, self.limit)

    def _move(self, sel: npt.NDArray[np.int64], to: npt.NDArray[np.int64]) -> None:
        if sel is self.every:
            self.pos = to
        else:
            self.pos[sel] = to

    def varint(self, sel: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Zig-zag varints (Avro int/long) at the cursors of ``sel``; longer than 9 bytes is malformed here."""
        p = self._at(sel)
        b = self.buf[p].astype(np.int64)
        if not (b & 0x80).any():  # one byte each (small ints, union branches, short lengths)
            self._move(sel, p + 1)
            return (b >> 1) ^ -(b & 1)
        acc = b & 0x7F
        more = (b & 0x80) != 0
        n_bytes = np.ones(len(sel), dtype=np.int64)
        shift = 7
        while more.any():
            if shift > 56:
                self.bad[sel[more]] = True
                break
            b = self.buf[p + n_bytes].astype(np.int64)
            acc = np.where(more, acc | ((b & 0x7F) << shift), acc)
            n_bytes += more
            more &= (b & 0x80) != 0
            shift += 7
        self._move(sel, p + n_bytes)
        return (acc >> 1) ^ -(acc & 1)

    def fixed_bytes(self, sel: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
        """(len(sel), width) bytes at the cursors (width <= 8), cursors moved on."""
        p = self._at(sel)
        self._move(sel, p + width)
        rows: npt.NDArray[np.uint8] = self.rows8[p]  # (one row copy per message: cheaper than a byte gather)
        return rows if width == 8 else np.ascontiguousarray(rows[:, :width])

    def skip_lengths(self, sel: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """A length-prefixed value (string, bytes): where it starts and how long it is; cursors moved past."""
        n = self.varint(sel)
        neg = n < 0
        if neg.any():
            self.bad[sel[neg]] = True
            n = np.maximum(n, 0)
        start = self._at(sel)
        self._move(sel, start + n)
        return start, n

    def read(self, node: _Node, sel: npt.NDArray[np.int64], sink: _Sink | _RecordSink | None) -> None:
        """Read ``node`` for the messages ``sel``; what a monitored field holds goes to ``sink``."""
        if len(sel) == 0:
            return
        k = node.kind
        leaf = sink if isinstance(sink, _Sink) else None
        if k == "null":
            return  # (the sink already says ABSENT)
        if k == "union":
            branch = self.varint(sel)
            first = int(branch[0])
            if 0 <= first < len(node.branches) and (branch == first).all():  # (the usual case: one branch)
                self.read(node.branches[first], sel, sink)
                return
            wrong = (branch < 0) | (branch >= len(node.branches))
            if wrong.any():
                self.bad[sel[wrong]] = True
            for i, b in enumerate(node.branches):
                self.read(b, sel[branch == i], sink)
            return
        if k == "record":
            rec = sink if isinstance(sink, _RecordSink) else None
            if rec is not None:
                rec.present[sel] = True
            elif leaf is not None:
                leaf.kind[sel] = OTHER
            for name, child in node.fields:
                self.read(child, sel, rec.fields.get(name) if rec is not None else None)
            return
        if isinstance(sink, _RecordSink):  # the features field holds no record here: the reference path judges
            sink.present[sel] = False
            self.bad[sel] = True  # (not malformed; "bad" only sends these messages to the reference path)
            self._skip(node, sel)
            return
        if k in ("int", "long"):
            v = self.varint(sel)
            if leaf is not None:
                if node.logical in _TIMESTAMPS and k == "long":
                    leaf.kind[sel] = STAMP
                    leaf.ival[sel] = v // _TIMESTAMPS[node.logical]
                elif node.logical is not None:
                    leaf.kind[sel] = OTHER
                else:
                    leaf.kind[sel] = INT
                    leaf.ival[sel] = v
                    leaf.num[sel] = v.astype(np.float64)
            return
        if k in ("float", "double"):
            width = 4 if k == "float" else 8
            raw = self.fixed_bytes(sel, width)
            if leaf is not None:
                values = np.ascontiguousarray(raw).view("<f4" if width == 4 else "<f8").reshape(-1)
                leaf.kind[sel] = FLOAT if node.logical is None else OTHER
                with np.errstate(invalid="ignore"):  # (a signalling NaN's bits, in a float)
                    leaf.num[sel] = values.astype(np.float64)
            return
        if k == "boolean":
            raw = self.fixed_bytes(sel, 1).reshape(-1)
            if leaf is not None:
                leaf.kind[sel] = BOOL
                leaf.num[sel] = (raw != 0).astype(np.float64)
            return
        if k == "string":
            start, n = self.skip_lengths(sel)
            if leaf is not None:
                leaf.kind[sel] = STRING if node.logical is None else OTHER
                leaf.spos[sel] = start
                leaf.slen[sel] = n
            return
        if k == "enum":
            v = self.varint(sel)
            wrong = (v < 0) | (v >= len(node.symbols))
            if wrong.any():
                self.bad[sel[wrong]] = True
            if leaf is not None:
                leaf.kind[sel] = STRING
                leaf.enum.append((sel, node.symbols, np.clip(v, 0, max(len(node.symbols) - 1, 0))))
            return
        self._skip(node, sel)
        if leaf is not None:
            leaf.kind[sel] = OTHER

    def _skip(self, node: _Node, sel: npt.NDArray[np.int64]) -> None:
        k = node.kind
        if k in ("bytes", "string"):
            self.skip_lengths(sel)
        elif k == "fixed":
            self._move(sel, self._at(sel) + node.size)
        else:
            self.read(node, sel, None)


@dataclass
class _Plan:
    node: _Node | None  # None: every message of this schema takes the reference path
    why: str = ""


# -- the decoder ---------------------------------------------------------------------------------
class AvroDecoder:
    """Decode a batch of Confluent-framed Avro values into :class:`EventColumns` plus rejections
    (the interface of :class:`stream.decode.EventDecoder`)."""

    def __init__(
        self,
        config: MonitorConfig,
        reference: ReferenceProfile,
        features: Sequence[str],
        client: Any,
        max_event_bytes: int = 1 << 20,
        clock: Any = time.monotonic,
        wall_clock: Any = time.time,
    ) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        self.config = config
        self.reference = reference
        self.features = tuple(features)
        self.client = client
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.wall_clock = wall_clock
        self._min_ms = config.events.min_time_ms
        self._skew_ms = config.events.max_future_skew_ms
        self.numeric = [f for f in self.features if isinstance(reference.features[f], NumericProfile)]
        self.categorical = [f for f in self.features if f not in self.numeric]
        self._profiles = [p for f in self.categorical if isinstance(p := reference.features[f], CategoricalProfile)]
        self.deserializer = AvroDeserializer(client)
        self._plans: dict[int, _Plan] = {}
        self._unknown: dict[int, float] = {}  # schema id -> when the registry said it does not know it
        self._registry_errors = _registry_errors()
        ev = config.events
        self._unit = ev.time_unit
        self._kafka_ok = ev.time_missing == "kafka_timestamp"
        self._top = [n for n in (ev.time_field, *ev.segment_fields, ev.prediction_field, ev.label_field) if n]
        if ev.features_field is None:
            self._top += [f for f in self.features if f not in self._top]

    @property
    def needs_kafka_timestamps(self) -> bool:
        return self.config.events.time_field is None or self._kafka_ok

    # -- the registry --------------------------------------------------------------------
    def _plan(self, schema_id: int) -> _Plan | None:
        """The compiled writer schema of ``schema_id``; None if the registry does not know it."""
        got = self._plans.get(schema_id)
        if got is not None:
            return got
        since = self._unknown.get(schema_id)
        if since is not None and self.clock() - since < UNKNOWN_RETRY_S:
            return None
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                self._unknown[schema_id] = self.clock()
                return None
            raise RegistryError(f"schema registry: schema id {schema_id}: {exc}") from None
        except self._registry_errors as exc:
            raise RegistryError(f"schema registry: schema id {schema_id}: {exc}") from None
        self._unknown.pop(schema_id, None)
        if (schema.schema_type or "AVRO") != "AVRO":
            plan = _Plan(None, f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        elif schema.references:
            plan = _Plan(None, "schema references")  # (the deserializer resolves them)
        else:
            try:
                plan = _Plan(compile_schema(json.loads(schema.schema_str)))
                if plan.node is not None and plan.node.kind != "record":
                    plan = _Plan(None, "not a record")
            except (_Unsupported, ValueError, KeyError, TypeError) as exc:
                plan = _Plan(None, str(exc))
        if plan.node is None:
            log.info("schema id %d: reference path for its messages (%s)", schema_id, plan.why)
        self._plans[schema_id] = plan
        return plan

    # -- decoding ------------------------------------------------------------------------
    def decode(
        self, values: Sequence[bytes | None], kafka_timestamps_ms: Sequence[int | None] | None = None
    ) -> tuple[EventColumns, list[Rejection]]:
        """Columns of the valid messages (``rows`` = their positions) and the rejections."""
        n = len(values)
        kts = kafka_timestamps_ms
        rejected: list[Rejection] = []
        slow: list[int] = []
        fast: list[tuple[npt.NDArray[np.int64], dict[str, Any]]] = []
        try:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # (a message without a value)
            lengths = np.fromiter((-1 if v is None else len(v) for v in values), dtype=np.int64, count=n)
        usable = (lengths > HEADER) & (lengths <= self.max_event_bytes)
        for i in np.flatnonzero(~usable).tolist():
            if lengths[i] > self.max_event_bytes:
                msg = f"message of {lengths[i]} bytes exceeds max_event_bytes={self.max_event_bytes}"
                rejected.append(Rejection(i, "too_large", msg))
            else:
                slow.append(i)  # (no value, or too short for the framing: the deserializer says why)
        ok_idx = np.flatnonzero(usable)
        if len(ok_idx):
            chosen = values if len(ok_idx) == n else [values[i] for i in ok_idx.tolist()]
            joined = b"".join(chosen) + bytes(PAD)  # type: ignore[arg-type]
            buf = np.frombuffer(joined, dtype=np.uint8)
            lens = lengths[ok_idx]
            start = np.zeros(len(ok_idx), dtype=np.int64)
            np.cumsum(lens[:-1], out=start[1:])
            head = buf[start[:, None] + np.arange(HEADER)].astype(np.int64)
            framed = head[:, 0] == MAGIC
            slow.extend(ok_idx[~framed].tolist())
            ids = (head[:, 1] << 24) | (head[:, 2] << 16) | (head[:, 3] << 8) | head[:, 4]
            for sid in np.unique(ids[framed]).tolist():
                members = np.flatnonzero(framed & (ids == sid))
                plan = self._plan(int(sid))
                if plan is None:
                    for i in ok_idx[members].tolist():
                        rejected.append(
                            Rejection(i, "unknown_schema", f"schema id {sid} is not in the schema registry")
                        )
                    continue
                if plan.node is None:
                    slow.extend(ok_idx[members].tolist())
                    continue
                rows = ok_idx[members]
                sub_kts = [kts[i] for i in rows.tolist()] if kts is not None else None
                got, back = self._fast(
                    plan.node, buf, joined, start[members] + HEADER, start[members] + lens[members], sub_kts
                )
                slow.extend(rows[back].tolist())
                if got is not None:
                    fast.append((rows[~back], got))
        slow_cols, slow_rows, slow_rej = self._slow(values, kts, sorted(slow))
        rejected.extend(slow_rej)
        rejected.sort(key=lambda r: r.index)
        return self._merge(fast, slow_cols, slow_rows), rejected

    def _fast(
        self,
        node: _Node,
        buf: npt.NDArray[np.uint8],
        joined: bytes,
        start: npt.NDArray[np.int64],
        end: npt.NDArray[np.int64],
        kts: list[int | None] | None,
    ) -> tuple[dict[str, Any] | None, npt.NDArray[np.bool_]]:
        """Decode one schema's messages column by column: the columns of those it takes (None: none), and
        which go back to the reference path (a value it does not take as it is, or a malformed payload)."""
        k = len(start)
        ev = self.config.events
        fields: dict[str, _Sink | _RecordSink] = {f: _Sink(k) for f in self._top}
        feats: _RecordSink | None = None
        if ev.features_field is not None:
            feats = _RecordSink(k, {f: _Sink(k) for f in self.features})
            fields[ev.features_field] = feats
        top = _RecordSink(k, fields)
        w = _Walk(buf, start, end)
        w.read(node, np.arange(k, dtype=np.int64), top)
        back = w.bad | (w.pos > w.end)
        fsinks = feats.fields if feats is not None else fields
        if feats is not None:
            back |= ~feats.present
        # the time
        if ev.time_field is None:
            if kts is None or any(x is None for x in kts):
                ok = np.array([kts is not None and x is not None for x in (kts or [None] * k)], dtype=bool)
                times = np.array([0 if kts is None or x is None else x for x in (kts or [None] * k)], dtype=np.int64)
            else:
                times, ok = np.asarray(kts, dtype=np.int64), np.ones(k, dtype=bool)
            back |= ~ok
        else:
            ts = fields[ev.time_field]
            assert isinstance(ts, _Sink)
            big = (ts.ival > 2**62) | (ts.ival < -(2**62))  # (beyond what epoch_ms takes: the reference path)
            times, ok = epoch_ms(np.where(big, 0, ts.ival), self._unit) if k else (ts.ival, np.ones(0, dtype=bool))
            ok = ok & ~big
            if self._unit == "iso":
                ok = np.zeros(k, dtype=bool)  # an integer is no ISO string (the reference path rejects it)
            ok &= ts.kind == INT
            # a timestamp logical type carries its own unit, whatever time_unit says (as typed columns of files)
            stamp = (ts.kind == STAMP) & (ts.ival >= _STAMP_MIN_MS) & (ts.ival <= _STAMP_MAX_MS)
            times = np.where(stamp, ts.ival, times)
            ok |= stamp
            back |= ~ok
        # the event-time rules of stream.decode: not before events.min_time, not beyond the Kafka
        # timestamp (or the clock) + events.max_future_skew; the reference path gives the reasons
        now_ms = int(self.wall_clock() * 1000)
        limit = np.array([now_ms if x is None else x for x in kts], dtype=np.int64) if kts is not None else now_ms
        back |= (times < self._min_ms) | ((times > limit + self._skew_ms) if ev.time_field is not None else False)
        # which messages hold values the fields take as they are
        for f in self.numeric:
            sk = fsinks[f]
            assert isinstance(sk, _Sink)
            back |= (sk.kind != ABSENT) & (sk.kind != INT) & (sk.kind != FLOAT)
        strings: list[_Sink] = []
        for f in self.categorical:
            sk = fsinks[f]
            assert isinstance(sk, _Sink)
            back |= (sk.kind != ABSENT) & (sk.kind != STRING) & (sk.kind != BOOL)
            strings.append(sk)
        for f in ev.segment_fields:
            sk = fields[f]
            assert isinstance(sk, _Sink)
            back |= (sk.kind != ABSENT) & (sk.kind != STRING) & (sk.kind != BOOL)
            strings.append(sk)
        for pf in (ev.prediction_field, ev.label_field):
            if pf is not None:
                sk = fields[pf]
                assert isinstance(sk, _Sink)
                back |= (sk.kind != ABSENT) & (sk.kind != INT) & (sk.kind != FLOAT) & (sk.kind != BOOL)
        keep = np.flatnonzero(~back)
        texts = [_texts(sk, keep, joined) for sk in strings]
        undecodable = [j for t in texts for j in t[1]]
        if undecodable:  # (invalid UTF-8: the deserializer says so, as not_avro)
            back[keep[sorted(set(undecodable))]] = True
            drop = set(undecodable)
            kept = [j for j in range(len(keep)) if j not in drop]
            keep = keep[kept]
            texts = [([t[0][j] for j in kept], []) for t in texts]
        if len(keep) == 0:
            return None, back
        n_cat = len(self.categorical)
        num = np.empty((len(keep), len(self.numeric)), dtype=np.float64)
        for j, f in enumerate(self.numeric):
            sk = fsinks[f]
            assert isinstance(sk, _Sink)
            num[:, j] = sk.num[keep]
        nan = np.full(len(keep), np.nan)
        pl = []
        for pf in (ev.prediction_field, ev.label_field):
            psk = fields[pf] if pf is not None else None
            pl.append(psk.num[keep] if isinstance(psk, _Sink) else nan)
        cols = {
            "time": times[keep],
            "num": num,
            "cats": [t[0] for t in texts[:n_cat]],
            "segs": [[MISSING if v is None else v for v in t[0]] for t in texts[n_cat:]],
            "prediction": pl[0],
            "label": pl[1],
        }
        return cols, back

    def reference_decode(
        self, values: Sequence[bytes | None], kafka_timestamps_ms: Sequence[int | None] | None = None
    ) -> tuple[EventColumns, list[Rejection]]:
        """Every message through the reference path (the deserializer and ``decode_events``): what
        :meth:`decode` must equal (tests), except that it checks no size limit."""
        cols, rows, rejected = self._slow(values, kafka_timestamps_ms, range(len(values)))
        rejected.sort(key=lambda r: r.index)
        return self._merge([], cols, rows), rejected

    def _slow(
        self, values: Sequence[bytes | None], kts: Sequence[int | None] | None, idx: Sequence[int]
    ) -> tuple[EventColumns | None, list[int], list[Rejection]]:
        """The reference path: the deserializer's dict through ``decode_events``."""
        if not idx:
            return None, [], []
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        from confluent_kafka.serialization import SerializationError

        objs: list[Any] = []
        pos: list[int] = []
        rejected: list[Rejection] = []
        for i in idx:
            value = values[i]
            if value is None:
                rejected.append(Rejection(i, "not_avro", "empty message (no value)"))
                continue
            try:
                obj = self.deserializer(value, None)
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise RegistryError(f"schema registry: {exc}") from None
                rejected.append(Rejection(i, "unknown_schema", _unknown_reason(value)))
                continue
            except self._registry_errors as exc:
                raise RegistryError(f"schema registry: {exc}") from None
            except (SerializationError, EOFError, ValueError, IndexError, OverflowError, KeyError, TypeError) as exc:
                rejected.append(Rejection(i, "not_avro", f"not Confluent-framed Avro of its schema: {_why(exc)}"))
                continue
            objs.append(obj)
            pos.append(i)
        sub_kts = [kts[i] for i in pos] if kts is not None else None
        now_ms = int(self.wall_clock() * 1000)
        cols, errors = decode_events(objs, self.config, self.reference, self.features, sub_kts, now_ms=now_ms)
        for r, reason in errors:
            rejected.append(Rejection(pos[r], reason_code(reason), reason))
        return cols, [pos[r] for r in cols.rows], rejected

    def _merge(
        self,
        fast: list[tuple[npt.NDArray[np.int64], dict[str, Any]]],
        slow: EventColumns | None,
        slow_rows: list[int],
    ) -> EventColumns:
        """One set of columns in message order from the fast groups and the reference path."""
        ev = self.config.events
        n_num, n_cat, n_seg = len(self.numeric), len(self.categorical), len(ev.segment_fields)
        rows = [r for r, _c in fast]
        times = [c["time"] for _r, c in fast]
        nums = [c["num"] for _r, c in fast]
        cats: list[list[Any]] = [[v for _r, c in fast for v in c["cats"][j]] for j in range(n_cat)]
        segs: list[list[str]] = [[v for _r, c in fast for v in c["segs"][j]] for j in range(n_seg)]
        preds = [c["prediction"] for _r, c in fast]
        labels = [c["label"] for _r, c in fast]
        if slow is not None and len(slow):
            rows.append(np.asarray(slow_rows, dtype=np.int64))
            times.append(slow.time_ms)
            nums.append(
                np.column_stack([np.asarray(slow.features[f], dtype=np.float64) for f in self.numeric])
                if n_num
                else np.empty((len(slow), 0))
            )
            for j, f in enumerate(self.categorical):
                cats[j].extend(slow.features[f])
            for j in range(n_seg):
                segs[j].extend(key[j] for key in slow.segments)
            preds.append(slow.prediction)
            labels.append(slow.label)
        if not rows:
            return _empty_columns(self, n_num)
        pos = np.concatenate(rows)
        order = np.argsort(pos, kind="stable")
        single = len(rows) == 1 and bool((order == np.arange(len(order))).all())
        num = np.concatenate(nums)
        t = np.concatenate(times).astype(np.int64)
        pred, label = np.concatenate(preds), np.concatenate(labels)
        if not single:
            num, t, pred, label = num[order], t[order], pred[order], label[order]
            ol = order.tolist()
            cats = [[c[i] for i in ol] for c in cats]
            segs = [[c[i] for i in ol] for c in segs]
        num = np.ascontiguousarray(num)
        columns: dict[str, Any] = {f: num[:, j] for j, f in enumerate(self.numeric)}
        codes: dict[str, npt.NDArray[np.int64]] = {}
        for f, col, prof in zip(self.categorical, cats, self._profiles, strict=True):
            columns[f] = col
            codes[f] = prof.bin_index(col)
        segments: Sequence[tuple[str, ...]]
        seg_values = None
        if n_seg == 1:
            seg_values = segs[0]
            segments = OneFieldSegments(seg_values)
        elif n_seg:
            segments = list(zip(*segs, strict=True))
        else:
            segments = [()] * len(t)
        return EventColumns(
            time_ms=t,
            features=FeatureColumns({f: columns[f] for f in self.features}, num, self.numeric, codes, self.reference),
            segments=segments,
            prediction=pred.astype(np.float64),
            label=label.astype(np.float64),
            rows=pos[order].tolist(),
            segment_values=seg_values,
        )


def _empty_columns(dec: AvroDecoder, n_num: int) -> EventColumns:
    empty = np.empty(0, dtype=np.float64)
    cols: dict[str, Any] = {f: empty for f in dec.numeric}
    cols.update({f: [] for f in dec.categorical})
    return EventColumns(
        time_ms=np.empty(0, dtype=np.int64),
        features=FeatureColumns(
            {f: cols[f] for f in dec.features},
            np.empty((0, n_num)),
            dec.numeric,
            {f: np.empty(0, dtype=np.int64) for f in dec.categorical},
            dec.reference,
        ),
        segments=[],
        prediction=empty,
        label=empty.copy(),
        rows=[],
    )


def _texts(sink: _Sink, keep: npt.NDArray[np.int64], joined: bytes) -> tuple[list[str | None], list[int]]:
    """The string values of ``sink`` at the rows ``keep`` (None: absent, null or ""; booleans as
    "true"/"false", as decode_events has them), and the positions (in ``keep``) of invalid UTF-8."""
    kind = sink.kind[keep]
    out: list[str | None] = [None] * len(keep)
    bad: list[int] = []
    is_str = kind == STRING
    if is_str.any():
        j_str = np.flatnonzero(is_str)
        rows = keep[j_str]
        starts = sink.spos[rows].tolist()
        ends = (sink.spos[rows] + sink.slen[rows]).tolist()
        try:
            vals: list[str] = [joined[a:b].decode() for a, b in zip(starts, ends, strict=True)]
        except UnicodeDecodeError:
            vals = []
            for j, a, b in zip(j_str.tolist(), starts, ends, strict=True):
                try:
                    vals.append(joined[a:b].decode())
                except UnicodeDecodeError:
                    vals.append("")
                    bad.append(j)
        for j, v in zip(j_str.tolist(), vals, strict=True):
            out[j] = v or None
    if sink.enum:
        where = {int(r): j for j, r in enumerate(keep.tolist())}
        for sel, symbols, idx in sink.enum:
            for r, i in zip(sel.tolist(), idx.tolist(), strict=True):
                at = where.get(r)
                if at is not None:
                    out[at] = symbols[i] or None
    is_bool = kind == BOOL
    if is_bool.any():
        for j in np.flatnonzero(is_bool).tolist():
            out[j] = "true" if sink.num[keep[j]] else "false"
    return out, bad


_OBJECT = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _why(exc: BaseException) -> str:
    """An exception's text without object addresses (a dead letter's reason is the same on a replay)."""
    return _OBJECT.sub("the payload", str(exc)) or type(exc).__name__


def _unknown_reason(value: bytes | None) -> str:
    if value is not None and len(value) >= HEADER and value[0] == MAGIC:
        return f"schema id {int.from_bytes(value[1:HEADER], 'big')} is not in the schema registry"
    return "its schema (named by a GUID) is not in the schema registry"
