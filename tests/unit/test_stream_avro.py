"""The Avro decoder: Confluent-framed messages of a schema registry (confluent-kafka's in-memory
registry client; the bytes from its real ``AvroSerializer``) to the same columns and rejections as
its reference path (the ``AvroDeserializer`` dict through ``decode_events``), with schema evolution,
unknown schema ids and undecodable payloads."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from detectors.config import MonitorConfig
from detectors.histogram import FeatureColumns, Layout
from detectors.reference import ReferenceProfile
from stream.avro import AvroDecoder
from stream.decode import AVRO_REASON_CODES, REASON_CODES
from stream.exceptions import RegistryError

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def _reference() -> ReferenceProfile:
    rng = np.random.default_rng(11)
    return ReferenceProfile.build(
        {
            "x": rng.normal(0, 1, 2000),
            "y": rng.exponential(2.0, 2000),
            "c": rng.choice(["a", "b", "c", "1", "true"], 2000).tolist(),
        },
        features=["x", "y", "c"],
        categorical=["c"],
        fine_bins=20,
        coarse_bins=5,
    )


REF = _reference()
FEATURES = ["x", "y", "c"]
LAYOUT = Layout(REF, FEATURES)


def _config(**events: Any) -> MonitorConfig:
    ev: dict[str, Any] = {
        "format": "avro",
        "segment_fields": ["country"],
        "prediction_field": "score",
        "label_field": "label",
    }
    ev.update(events)
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "unused.json", "events": ev})


def _features_schema(**types: Any) -> dict[str, Any]:
    fields = {"x": ["null", "double"], "y": "double", "c": ["null", "string"]}
    fields.update(types)
    return {
        "type": "record",
        "name": "Features",
        "fields": [{"name": k, "type": v} for k, v in fields.items() if v is not None],
    }


def event_schema(features: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "timestamp": "long",
        "country": "string",
        "score": ["null", "double"],
        "label": ["null", "int"],
        "features": features or _features_schema(),
    }
    fields.update(top)
    return {
        "type": "record",
        "name": "Prediction",
        "namespace": "test.streamdrift",
        "fields": [{"name": k, "type": v} for k, v in fields.items() if v is not None],
    }


class Registry:
    """confluent-kafka's in-memory registry, and a serializer per writer schema."""

    def __init__(self) -> None:
        self.client = SchemaRegistryClient.new_client({"url": "mock://streamdrift-tests"})

    def serializer(self, schema: dict[str, Any], subject: str) -> Any:
        ser = AvroSerializer(self.client, json.dumps(schema), conf={"auto.register.schemas": True})
        ctx = SerializationContext(subject, MessageField.VALUE)
        return lambda obj: ser(obj, ctx)


def decoder(reg: Registry, config: MonitorConfig | None = None) -> AvroDecoder:
    return AvroDecoder(config or _config(), REF, FEATURES, reg.client, max_event_bytes=1 << 20)


def assert_same(dec: AvroDecoder, values: list[bytes | None], kts: list[int | None] | None = None) -> None:
    """The fast path equals the reference path, column by column, rejection by rejection."""
    fast, rejected = dec.decode(values, kts)
    slow, slow_rejected = dec.reference_decode(values, kts)
    assert [(r.index, r.code, r.reason) for r in rejected] == [(r.index, r.code, r.reason) for r in slow_rejected]
    assert all(r.code in REASON_CODES for r in rejected)
    assert fast.rows == slow.rows
    np.testing.assert_array_equal(fast.time_ms, slow.time_ms)
    assert fast.time_ms.dtype == np.int64
    for f in FEATURES:
        a, b = fast.features[f], slow.features[f]
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b)  # (NaN == NaN here)
            assert a.dtype == np.float64
        else:
            assert list(a) == list(b)
    assert list(fast.segments) == list(slow.segments)
    np.testing.assert_array_equal(fast.prediction, slow.prediction)
    np.testing.assert_array_equal(fast.label, slow.label)
    assert isinstance(fast.features, FeatureColumns)
    plain = {f: (b if isinstance(b, np.ndarray) else list(b)) for f, b in slow.features.items()}
    np.testing.assert_array_equal(LAYOUT.flat_indices(fast.features, len(fast)), LAYOUT.flat_indices(plain, len(slow)))


def events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = None if rng.random() < 0.1 else float(rng.normal())
        c = [None, "a", "b", "c", "zz", "", "1"][int(rng.integers(0, 7))]
        out.append(
            {
                "timestamp": T0 + 250 * i,
                "country": ["de", "fr", "us"][int(rng.integers(0, 3))],
                "score": None if rng.random() < 0.2 else float(rng.random()),
                "label": None if rng.random() < 0.3 else int(rng.integers(0, 2)),
                "features": {"x": x, "y": float(rng.exponential(2.0)), "c": c},
            }
        )
    return out


# -- the common shape --------------------------------------------------------------------------
def test_typical_stream_decodes_fast_and_equals_the_deserializer() -> None:
    reg = Registry()
    ser = reg.serializer(event_schema(), "preds")
    evs = events(500, seed=1)
    values = [ser(e) for e in evs]
    dec = decoder(reg)
    cols, rejected = dec.decode(values)
    assert rejected == []
    assert cols.rows == list(range(500))
    # the values are the events' own (not only equal to the other path)
    np.testing.assert_array_equal(cols.time_ms, [e["timestamp"] for e in evs])
    x = np.array([np.nan if e["features"]["x"] is None else e["features"]["x"] for e in evs])
    np.testing.assert_array_equal(cols.features["x"], x)
    assert list(cols.features["c"]) == [e["features"]["c"] or None for e in evs]
    assert [s[0] for s in cols.segments] == [e["country"] for e in evs]
    np.testing.assert_array_equal(cols.label, [np.nan if e["label"] is None else e["label"] for e in evs])
    assert_same(dec, values)
    # every message took the fast path: the reference path was never asked
    calls = []
    dec.deserializer = lambda v, ctx: calls.append(v)  # type: ignore[assignment,misc,return-value]
    dec.decode(values)
    assert calls == []


def test_event_time_rules_are_the_json_decoders() -> None:
    """Units per value, events.min_time and events.max_future_skew against the Kafka timestamp: the
    fast path sends such events to the reference path, which rejects them with the JSON decoder's codes."""
    reg = Registry()
    ser = reg.serializer(event_schema(), "preds")
    evs = events(60, seed=4)
    evs[5]["timestamp"] = (T0 + 5000) * 1000  # microseconds: fine in auto
    evs[10]["timestamp"] = 2024  # a year
    evs[20]["timestamp"] = (T0 + 2 * 3_600_000) * 1000  # µs, two hours after its Kafka timestamp
    values = [ser(e) for e in evs]
    kts = [T0 + 1000 * i for i in range(60)]
    dec = decoder(reg)
    cols, rejected = dec.decode(values, kts)
    assert [(r.index, r.code) for r in rejected] == [(10, "implausible_time"), (20, "future_time")]
    assert cols.time_ms[cols.rows.index(5)] == T0 + 5000
    assert_same(dec, values, kts)


def test_features_at_the_top_level_enums_booleans_floats_and_timestamps() -> None:
    reg = Registry()
    schema = {
        "type": "record",
        "name": "Flat",
        "fields": [
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "x", "type": "float"},
            {"name": "y", "type": ["null", "long"]},
            {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["a", "b", "zz"]}},
            {"name": "country", "type": ["null", "boolean"]},
            {"name": "extra", "type": {"type": "fixed", "name": "F4", "size": 4}},
        ],
    }
    ser = reg.serializer(schema, "flat")
    rng = np.random.default_rng(3)
    evs = [
        {
            "ts": datetime.fromtimestamp((T0 + 1000 * i) / 1000, tz=UTC),
            "x": float(np.float32(rng.normal())),
            "y": None if i % 5 == 0 else int(rng.integers(-1000, 1000)),
            "c": ["a", "b", "zz"][i % 3],
            "country": None if i % 4 == 0 else bool(i % 2),
            "extra": b"abcd",
        }
        for i in range(120)
    ]
    values = [ser(e) for e in evs]
    cfg = _config(time_field="ts", features_field=None, prediction_field=None, label_field=None)
    dec = decoder(reg, cfg)
    cols, rejected = dec.decode(values)
    assert rejected == []
    np.testing.assert_array_equal(cols.time_ms, [T0 + 1000 * i for i in range(120)])
    assert list(cols.features["c"]) == [e["c"] for e in evs]
    assert [s[0] for s in cols.segments] == [
        "__missing__" if e["country"] is None else ("true" if e["country"] else "false") for e in evs
    ]
    assert_same(dec, values)
    # a timestamp logical type carries its own unit: accepted whatever time_unit says (as typed columns of files)
    dec_ms = decoder(reg, _config(time_field="ts", time_unit="ms", features_field=None))
    cols_ms, rejected = dec_ms.decode(values)
    assert rejected == [] and cols_ms.time_ms.tolist() == cols.time_ms.tolist()
    assert_same(dec_ms, values)


# -- schema evolution ----------------------------------------------------------------------------
def test_writer_schemas_that_add_and_remove_fields() -> None:
    reg = Registry()
    v1 = reg.serializer(event_schema(), "evolving")
    # v2 adds a field to the features and a nested record at the top level (both skipped)
    added = event_schema(
        _features_schema(z=["null", "string"], w={"type": "array", "items": "int"}),
        model={"type": "record", "name": "Model", "fields": [{"name": "name", "type": "string"}]},
    )
    v2 = reg.serializer(added, "evolving")
    # v3 drops feature y and the label: y is missing (NaN, never 0), the label NaN
    v3 = reg.serializer(event_schema(_features_schema(y=None), label=None), "evolving")
    evs = events(90, seed=5)
    values: list[bytes | None] = []
    for i, e in enumerate(evs):
        if i % 3 == 0:
            values.append(v1(e))
        elif i % 3 == 1:
            e2 = dict(e, features=dict(e["features"], z="new", w=[1, 2]), model={"name": "m"})
            values.append(v2(e2))
        else:
            e3 = {k: v for k, v in e.items() if k != "label"}
            e3["features"] = {k: v for k, v in e["features"].items() if k != "y"}
            values.append(v3(e3))
    ids = {struct.unpack(">I", v[1:5])[0] for v in values if v is not None}
    assert len(ids) == 3
    dec = decoder(reg)
    cols, rejected = dec.decode(values)
    assert rejected == [] and cols.rows == list(range(90))
    y = cols.features["y"]
    assert np.isnan(y[2::3]).all() and not np.isnan(y[0::3]).any() and not np.isnan(y[1::3]).any()
    np.testing.assert_array_equal(y[0::3], [e["features"]["y"] for e in evs[0::3]])
    assert np.isnan(cols.label[2::3]).all()
    assert_same(dec, values)
    # the schema with an array went to the reference path for its messages, the others did not
    assert dec._plans[min(ids)].node is not None
    assert [p.node is None for _sid, p in sorted(dec._plans.items())] == [False, True, False]


# -- what is dead-lettered, and why ---------------------------------------------------------------
def test_unknown_schema_ids_and_undecodable_payloads_have_their_own_codes() -> None:
    reg = Registry()
    ser = reg.serializer(event_schema(), "bad")
    evs = events(6, seed=9)
    good = [ser(e) for e in evs]
    not_utf8 = ser(dict(evs[3], country="zz")).replace(b"\x04zz", b"\x04\xff\xfe", 1)
    sid = struct.unpack(">I", good[0][1:5])[0]
    unknown = b"\x00" + struct.pack(">I", sid + 41) + good[0][5:]
    values: list[bytes | None] = [
        good[0],
        unknown,  # 1: an id the registry does not know
        good[1][:-3],  # 2: truncated
        b"\x07" + good[2][1:],  # 3: not the magic byte
        json.dumps({"timestamp": T0}).encode(),  # 4: JSON on an Avro topic
        None,  # 5: no value
        b"\x00\x00",  # 6: shorter than the framing
        not_utf8,  # 7: a string that is not UTF-8
        good[4],
        good[5] + b"trailing",  # 9: bytes after the record are ignored (as the deserializer does)
    ]
    dec = decoder(reg)
    cols, rejected = dec.decode(values)
    codes = {r.index: r.code for r in rejected}
    assert codes[1] == "unknown_schema" and f"schema id {sid + 41}" in next(r.reason for r in rejected if r.index == 1)
    assert {codes[i] for i in (2, 3, 4, 5, 6, 7)} == {"not_avro"}
    assert cols.rows == [0, 8, 9]
    assert set(AVRO_REASON_CODES) <= set(codes.values())
    assert_same(dec, values)
    # the registry is not asked again for the unknown id in the next batch
    asked = []
    real = reg.client.get_schema
    reg.client.get_schema = lambda i, *a, **k: asked.append(i) or real(i, *a, **k)  # type: ignore[method-assign]
    dec.decode([unknown, good[0]])
    assert asked == []


def test_a_registry_that_fails_is_an_error_not_a_dead_letter() -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    reg = Registry()
    ser = reg.serializer(event_schema(), "down")
    value = ser(events(1, seed=2)[0])

    def down(*_a: Any, **_k: Any) -> Any:
        raise SchemaRegistryError(503, 50301, "Service Unavailable")

    reg.client.get_schema = down  # type: ignore[method-assign]
    with pytest.raises(RegistryError, match="Service Unavailable"):
        decoder(reg).decode([value])


def test_values_a_field_does_not_take_go_to_the_reference_path_and_are_rejected_alike() -> None:
    reg = Registry()
    odd = event_schema(
        _features_schema(x=["null", "double", "string", "boolean"], c=["null", "string", "long", "double"]),
        timestamp=["null", "long", "string", "double"],
        country=["null", "string", "long"],
        score=["null", "double", "boolean", "string"],
    )
    ser = reg.serializer(odd, "odd")
    rng = np.random.default_rng(17)
    options: dict[str, list[Any]] = {
        "timestamp": [T0, T0 // 1000, None, "2023-11-14T22:13:20Z", "garbage", 1.7e12, 2**60, 17],
        "country": ["de", None, 7, ""],
        "score": [0.5, None, True, "high"],
        "x": [1.5, None, "1.5", False, float("nan"), float("inf")],
        "c": ["a", None, 12, 1.5, float("nan"), "", 10**30],
    }
    values: list[bytes | None] = []
    for _ in range(300):
        pick = {k: v[int(rng.integers(0, len(v)))] for k, v in options.items()}
        values.append(
            ser(
                {
                    "timestamp": pick["timestamp"],
                    "country": pick["country"],
                    "score": pick["score"],
                    "label": None,
                    "features": {"x": pick["x"], "y": 1.0, "c": pick["c"]},
                }
            )
        )
    for cfg in (
        _config(),
        _config(time_unit="s"),
        _config(time_unit="iso"),
        _config(time_missing="kafka_timestamp"),
        _config(time_field=None),
    ):
        kts: list[int | None] = [T0 + i if i % 7 else None for i in range(len(values))]
        dec = decoder(reg, cfg)
        assert_same(dec, values, kts)
        _cols, rejected = dec.decode(values, kts)
        assert rejected, "some of these events must be rejected"


# -- seeded random schemas ------------------------------------------------------------------------
_SCALARS = ["null", "boolean", "int", "long", "float", "double", "string", "bytes"]


def _random_type(rng: np.random.Generator, depth: int, names: list[int]) -> Any:
    r = rng.random()
    if depth < 2 and r < 0.08:
        names[0] += 1
        return {
            "type": "record",
            "name": f"R{names[0]}",
            "fields": [{"name": f"a{j}", "type": _random_type(rng, depth + 1, names)} for j in range(2)],
        }
    if r < 0.14:
        names[0] += 1
        return {"type": "enum", "name": f"E{names[0]}", "symbols": ["a", "b", "zz"]}
    if r < 0.18:
        names[0] += 1
        return {"type": "fixed", "name": f"F{names[0]}", "size": 3}
    if r < 0.2:
        return {"type": "map", "values": "int"}
    if r < 0.35:
        # a union of distinct kinds (Avro allows one branch per unnamed type)
        kinds = ["null", "boolean", "long", "double", "string"]
        chosen = sorted({kinds[int(i)] for i in rng.integers(0, len(kinds), 3)}, key=kinds.index)
        return chosen
    return _SCALARS[int(rng.integers(0, len(_SCALARS)))]


def _random_value(rng: np.random.Generator, t: Any) -> Any:
    if isinstance(t, list):
        return _random_value(rng, t[int(rng.integers(0, len(t)))])
    if isinstance(t, dict):
        k = t["type"]
        if k == "record":
            return {f["name"]: _random_value(rng, f["type"]) for f in t["fields"]}
        if k == "enum":
            return t["symbols"][int(rng.integers(0, 3))]
        if k == "fixed":
            return bytes(rng.integers(0, 256, 3).astype(np.uint8))
        if k == "map":
            return {"k": int(rng.integers(0, 9))}
    return {
        "null": lambda: None,
        "boolean": lambda: bool(rng.random() < 0.5),
        "int": lambda: int(rng.integers(-300, 300)),
        "long": lambda: int(rng.choice([T0 + int(rng.integers(0, 10**6)), int(rng.integers(-(2**40), 2**40))])),
        "float": lambda: float(np.float32(rng.normal())),
        "double": lambda: float(rng.choice([rng.normal(), np.nan, np.inf, T0 / 1000])),
        "string": lambda: ["a", "b", "zz", "", "1", "true", "é"][int(rng.integers(0, 7))],
        "bytes": lambda: b"\x00\x01",
    }[t]()


def _feature_type(rng: np.random.Generator, names: list[int], friendly: list[Any]) -> Any:
    """Mostly a type the field takes as it is, sometimes any type (so both paths get work)."""
    if rng.random() < 0.7:
        got = friendly[int(rng.integers(0, len(friendly)))]
        if got == "enum":
            names[0] += 1
            return {"type": "enum", "name": f"Cat{names[0]}", "symbols": ["a", "b", "zz"]}
        return got
    return _random_type(rng, 1, names)


NUMERIC_OK: list[Any] = ["double", "float", "int", "long", ["null", "double"], ["double", "null"], ["null", "long"]]
STRING_OK: list[Any] = ["string", ["null", "string"], "boolean", "enum"]


def test_seeded_random_schemas_and_messages_agree_with_the_deserializer() -> None:
    reg = Registry()
    rng = np.random.default_rng(2024)
    names = [0]
    values: list[bytes | None] = []
    has_map: dict[int, bool] = {}
    for s in range(40):
        feats = {
            "type": "record",
            "name": f"Feats{s}",
            "namespace": f"n{s}",
            "fields": [
                {"name": "x", "type": _feature_type(rng, names, NUMERIC_OK)},
                {"name": "y", "type": _feature_type(rng, names, NUMERIC_OK)},
                {"name": "c", "type": _feature_type(rng, names, STRING_OK)},
                {"name": "extra", "type": _random_type(rng, 1, names)},
            ],
        }
        if rng.random() < 0.2:
            feats["fields"] = [f for f in feats["fields"] if f["name"] != "y"]  # a removed feature
        top = [
            {"name": "timestamp", "type": str(rng.choice(["long", "long", "long", "double", "string"]))},
            {"name": "features", "type": feats},
            {"name": "country", "type": _feature_type(rng, names, STRING_OK)},
            {"name": "score", "type": _feature_type(rng, names, NUMERIC_OK)},
            {"name": "junk", "type": _random_type(rng, 0, names)},
        ]
        order = rng.permutation(len(top))
        schema = {"type": "record", "name": f"Top{s}", "namespace": f"n{s}", "fields": [top[int(i)] for i in order]}
        ser = reg.serializer(schema, f"random-{s}")
        for j in range(12):
            obj = {f["name"]: _random_value(rng, f["type"]) for f in schema["fields"]}
            ts_type = next(f["type"] for f in schema["fields"] if f["name"] == "timestamp")
            obj["timestamp"] = {"long": T0 + int(rng.integers(0, 10**6)), "double": T0 / 1000, "string": "x"}[ts_type]
            v = ser(obj)
            if j == 0:
                has_map[struct.unpack(">I", v[1:5])[0]] = '"map"' in json.dumps(schema)
            if rng.random() < 0.05:
                v = v[: int(rng.integers(1, len(v)))]  # truncated
            values.append(v)
    order = np.random.default_rng(5).permutation(len(values))
    batch = [values[int(i)] for i in order]  # schemas interleaved in one batch
    dec = decoder(reg)
    assert_same(dec, batch)
    real, slow = dec.deserializer, []
    dec.deserializer = lambda v, ctx: slow.append(v) or real(v, ctx)  # type: ignore[assignment,misc]
    cols, rejected = dec.decode(batch)
    assert len(cols) > 150 and len(rejected) > 50  # both outcomes are exercised
    assert 50 < len(slow) < len(batch) - 100, len(slow)  # and both paths
    # a schema with a map is left to the deserializer, every other one is walked column by column
    assert {sid: dec._plans[sid].node is None for sid in has_map} == has_map
    assert 0 < sum(has_map.values()) < len(has_map)


# -- settings ----------------------------------------------------------------------------------------
def test_schema_registry_settings_secrets_and_errors() -> None:
    from stream.exceptions import ConfigError
    from stream.settings import ServeConfig

    base: dict[str, Any] = {
        "monitor": "m",
        "reference": "r.json",
        "events": {"format": "avro"},
        "kafka": {"bootstrap_servers": "b:9092", "topic": "t"},
    }
    with pytest.raises(ConfigError, match=r"schema_registry: events\.format avro needs a schema_registry section"):
        ServeConfig.from_mapping(base, env={})
    data = {**base, "schema_registry": {"url": "https://sr:8081", "username": "svc"}}
    with pytest.raises(ConfigError, match="username and password go together"):
        ServeConfig.from_mapping(data, env={})
    cfg = ServeConfig.from_mapping(data, env={"STREAMDRIFT_SCHEMA_REGISTRY__PASSWORD": "pa:ss-word"})
    assert cfg.schema_registry is not None
    conf = cfg.schema_registry.client_conf()
    assert conf == {"url": "https://sr:8081", "timeout": 10.0, "basic.auth.user.info": "svc:pa:ss-word"}
    assert "pa:ss-word" not in repr(cfg)
    # a real client accepts the settings (a password with a colon included)
    from stream.avro import registry_client

    client = registry_client(cfg.schema_registry)
    assert type(client).__name__ == "SchemaRegistryClient"
    mock = ServeConfig.from_mapping({**base, "schema_registry": {"url": "mock://x"}}, env={})
    assert mock.schema_registry is not None
    assert type(registry_client(mock.schema_registry)).__name__ == "MockSchemaRegistryClient"
