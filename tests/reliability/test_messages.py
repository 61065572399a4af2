"""Hostile messages: fuzzed bytes and JSON, size and depth limits, through the decoder and a real serve.

* hypothesis (derandomized): random bytes, random JSON of wrong types, NaN/inf, missing and
  extra fields, unseen categories, far past/future times, deep nesting: the decoder never
  raises, every message is either kept or rejected once with a known reason code, and the
  kept ones are exactly the reference path's valid ones;
* a 10 000-level nested message and a 5 MB message: dead-lettered, no crash, no RecursionError;
* a real ``serve`` over a seeded stream with ~25 % hostile messages: zero crashes, dead
  letters on the topic == invalid events counted == the invalid messages, and the window
  statistics equal :func:`run_local` over the valid, on-time subset.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.config import MonitorConfig
from detectors.evaluate import parse_iso_ms
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.decode import MAX_EVENT_DEPTH, REASON_CODES, EventDecoder, reference_decode
from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability

MAX_BYTES = 1 << 20


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[EventDecoder, MonitorConfig, ReferenceProfile]:
    tmp = tmp_path_factory.mktemp("dec")
    ref = h.build_reference(tmp / "ref.json")
    mon = MonitorConfig.from_mapping(h.monitor_section(str(tmp / "ref.json")))
    layout = Layout(ref, mon.features.include)
    return EventDecoder(mon, ref, layout.features, MAX_BYTES), mon, ref


def nesting_depth(value: bytes) -> int:
    """Depth of [ / { nesting outside strings (an independent, obviously-right scan)."""
    depth = best = 0
    for tok in re.findall(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', value):
        if tok in (b"[", b"{"):
            depth += 1
            best = max(best, depth)
        elif tok in (b"]", b"}"):
            depth -= 1
    return best


def expected_valid(
    values: list[bytes | None], mon: MonitorConfig, ref: ReferenceProfile, kafka_ts: list[int | None]
) -> set[int]:
    """Indices the consumer must accept: within the size/depth limits and valid for the reference path
    (with the same Kafka timestamps: times too far ahead of them are rejected)."""
    ok = [i for i, v in enumerate(values) if v is None or (len(v) <= MAX_BYTES and nesting_depth(v) <= MAX_EVENT_DEPTH)]
    kts = [kafka_ts[i] for i in ok]
    cols, _errors = reference_decode([values[i] for i in ok], mon, ref, ["x", "y", "c"], kts)
    return {ok[r] for r in cols.rows}


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_any = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=20,
)
sane_time = st.integers(min_value=h.T0 - 10**7, max_value=h.T0 + 10**7)
sane_number = st.floats(min_value=-10, max_value=10)
times = st.one_of(
    sane_time,
    sane_time,
    sane_time,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "2023-11-14T22:13:20Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "not a time",
            "",
        ]
    ),
    json_any,
)
feature_value = st.one_of(
    sane_number, sane_number, sane_number, st.floats(allow_nan=True, allow_infinity=True), json_any
)
category = st.one_of(st.sampled_from(["a", "b", "c", "never-seen", "", "A"]), json_any)


@st.composite
def event_like(draw: st.DrawFn) -> bytes:
    feats: dict[str, Any] = {}
    for name, strat in (("x", feature_value), ("y", feature_value), ("c", category)):
        if draw(st.booleans()):
            feats[name] = draw(strat)
    feats.update(draw(st.dictionaries(st.text(max_size=5), json_any, max_size=2)))  # extra fields
    ev: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:
        ev["timestamp"] = draw(times)
    if draw(st.integers(0, 9)) > 0:
        ev["features"] = feats if draw(st.integers(0, 9)) > 0 else draw(json_any)
    for k in ("country", "score", "label"):
        if draw(st.booleans()):
            ev[k] = draw(json_any)
    text = json.dumps(ev, allow_nan=True)  # NaN/Infinity tokens: not strict JSON
    depth = draw(st.sampled_from([0, 0, 0, 3, MAX_EVENT_DEPTH - 2, MAX_EVENT_DEPTH + 5, 2000]))
    if depth:
        text = text[:-1] + (", " if ev else "") + '"deep": ' + "[" * depth + "]" * depth + "}"
    return text.encode()


message = st.one_of(
    st.binary(max_size=64), event_like(), event_like(), event_like(), json_any.map(lambda v: json.dumps(v).encode())
)


def test_fuzzed_messages_never_crash_the_decoder(decoder: tuple[EventDecoder, MonitorConfig, ReferenceProfile]) -> None:
    dec, mon, ref = decoder
    seen: Counter[str] = Counter()

    @settings(derandomize=True, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(batch=st.lists(message, min_size=1, max_size=12))
    def check(batch: list[bytes]) -> None:
        values: list[bytes | None] = [*batch, None]
        kts: list[int | None] = [h.T0] * len(values)
        cols, rejected = dec.decode(values, kts)
        kept = set(cols.rows)
        rej = {r.index for r in rejected}
        assert kept.isdisjoint(rej) and kept | rej == set(range(len(values)))
        assert len(rejected) == len(rej)
        assert all(r.code in REASON_CODES and r.reason for r in rejected)
        assert kept == expected_valid(values, mon, ref, kts)
        seen["batches"] += 1
        seen["messages"] += len(values)
        seen["valid"] += len(kept)
        seen.update(r.code for r in rejected)

    check()
    codes = {c: n for c, n in sorted(seen.items()) if c in REASON_CODES}
    print(
        f"\nfuzz (hypothesis, derandomized): {seen['batches']} batches, {seen['messages']} messages, "
        f"{seen['valid']} valid, rejected by code {codes}, 0 crashes, kept == reference path's valid set"
    )
    assert seen["valid"] > 0 and len(codes) >= 4


def test_deep_nesting_and_oversized_messages_are_dead_lettered(
    decoder: tuple[EventDecoder, MonitorConfig, ReferenceProfile],
) -> None:
    dec, _mon, _ref = decoder
    good = json.dumps({"timestamp": h.T0, "features": {"x": 0.5, "y": 4.0, "c": "a"}}).encode()
    deep_extra = b'{"timestamp": 1700000000000, "features": {"x": 1}, "z": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    deep_features = b'{"timestamp": 1700000000000, "features": ' + b"{" * 10_000 + b"}" * 10_000 + b"}"
    deep_bare = b"[" * 100_000 + b"]" * 100_000
    big = json.dumps({"timestamp": h.T0, "features": {"x": 1.0}, "pad": "p" * (5 << 20)}).encode()
    values: list[bytes | None] = [good, deep_extra, deep_features, deep_bare, big, good]
    t0 = time.perf_counter()
    cols, rejected = dec.decode(values)
    took = time.perf_counter() - t0
    codes = {r.index: r.code for r in rejected}
    print(
        f"\n10k-level nesting x2, 100k-level bare, {len(big) >> 20} MB message: rejected {sorted(codes.items())} "
        f"in {took * 1000:.1f} ms, kept rows {cols.rows}"
    )
    assert cols.rows == [0, 5]
    assert codes == {1: "too_large", 2: "too_large", 3: "too_large", 4: "too_large"}
    assert "nest" in next(r.reason for r in rejected if r.index == 1)


def hostile_stream(n_good: int, seed: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    """A seeded stream: good events in time order, with hostile messages mixed in."""
    rng = random.Random(seed)
    events = h.make_events(n_good, seed=seed, drift_at=n_good // 2)
    out: list[bytes] = []
    for e in events:
        out.append(json.dumps(e).encode())
        if rng.random() < 0.25:
            t = e["timestamp"]
            kind = rng.randrange(12)
            bad: bytes
            if kind == 0:
                bad = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            elif kind == 1:
                bad = json.dumps({"timestamp": t, "features": {"x": "oops", "y": [1], "c": {"k": 1}}}).encode()
            elif kind == 2:
                bad = json.dumps(
                    {"timestamp": t, "features": {"x": float("nan"), "y": float("inf"), "c": "a"}}
                ).encode()
            elif kind == 3:
                bad = json.dumps({"features": {"x": 1.0}}).encode()  # no time
            elif kind == 4:
                bad = json.dumps(
                    {"timestamp": t, "features": {"x": 0.1, "y": 5.0, "c": "zzz"}, "extra": [1, 2, {"a": None}]}
                ).encode()
            elif kind == 5:
                bad = json.dumps({"timestamp": t - 86_400_000 * 365, "features": {"x": 0.0}}).encode()  # far past: late
            elif kind == 6:
                bad = json.dumps({"timestamp": 10**40, "features": {"x": 0.0}}).encode()
            elif kind == 7:
                bad = b'{"timestamp": %d, "features": {"x": 1}, "z": ' % t + b"[" * 5000 + b"]" * 5000 + b"}"
            elif kind == 8:
                bad = json.dumps({"timestamp": t, "features": {"x": 1.0}, "pad": "p" * (MAX_BYTES + 10)}).encode()
            elif kind == 9:
                bad = json.dumps([t, 1, 2]).encode()
            elif kind == 10:
                bad = json.dumps({"timestamp": True, "features": {"x": 1.0}}).encode()
            else:
                bad = json.dumps({"timestamp": str(t), "features": "x=1"}).encode()
            out.append(bad)
    # a day later, at the very end: it closes every window of the stream (a time years ahead of its Kafka
    # timestamp would be dead-lettered as future_time)
    out.append(json.dumps({"timestamp": h.T0 + 86_400_000, "features": {"x": 0.0}}).encode())
    out.append(json.dumps({"timestamp": (h.T0 + 10 * 365 * 86_400_000) * 1000, "features": {"x": 0.0}}).encode())
    return events, out


def test_serve_survives_hostile_stream(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = h.topics_for(f"fz-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, *topics.values())
    ref = h.build_reference(tmp_path / "ref.json")
    _events, values = hostile_stream(3000, seed=5)
    h.produce(kafka_bootstrap, topics["events"], values)
    cfg = h.write_config(tmp_path, kafka_bootstrap, topics)
    log = tmp_path / "serve.log"
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(
            lambda: h.offsets(tmp_path / "serve-state") == {0: len(values)},
            "serve to read everything",
            90,
            proc,
            log,
        )
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    mon = MonitorConfig.from_mapping(h.monitor_section(str(tmp_path / "ref.json")))
    # (the Kafka timestamps are the produce times, hours at most before now: the clock stands in for them)
    valid = sorted(expected_valid(list(values), mon, ref, [None] * len(values)))
    # on time: not older than the running max event time of the partition (allowed_lateness 0)
    decoded = [json.loads(values[i]) for i in valid]
    cols, _ = reference_decode([values[i] for i in valid], mon, ref, ["x", "y", "c"])
    on_time, late, top = [], 0, -(2**62)
    for obj, t in zip(decoded, cols.time_ms.tolist(), strict=True):
        if t < top:
            late += 1
        else:
            on_time.append(obj)
        top = max(top, t)
    invalid = len(values) - len(valid)
    dlq = h.read_topic(kafka_bootstrap, topics["dlq"])
    summary = re.findall(r"stopped: (\d+) messages, (\d+) valid, (\d+) invalid, (\d+) late", log.read_text())
    assert summary, log.read_text()[-2000:]
    msgs, n_valid, n_invalid, n_late = map(int, summary[-1])
    got = h.read_records(tmp_path / "serve-stats.jsonl")
    last_end = max(r["window_end"] for r in got if parse_iso_ms(r["window_end"]) < h.T0 + 86_400_000)
    want = h.expected_records(on_time, cfg, last_end)
    equal = h.digest([r for r in got if r["window_end"] <= last_end]) == h.digest(want)
    print(
        f"\nhostile stream: {len(values)} messages, {invalid} invalid, {late} late; serve: {n_invalid} invalid, "
        f"{n_late} late, {len(dlq)} dead letters, exit 0, statistics of the valid subset equal run_local: {equal}"
    )
    assert msgs == len(values)
    assert n_invalid == invalid == len(dlq)
    assert n_late == late and n_valid == len(valid) - late
    assert equal
