"""Calendar windows and window indexes in the consumer, on the real broker: ``serve`` closes the
same calendar windows (days with an offset, months) and the same count windows with tied times
(window_index 0, 1, ...) as the backfill (``run_local``) of the same events."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.evaluate import parse_iso_ms
from detectors.events import decode_events
from detectors.histogram import Layout
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve import assert_same_records, build_reference, produce, topics_for, write_config
from tests.integration.test_serve_time import WINDOW_STATS, _run, _window_records

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _events(n: int, step_ms: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    x[n // 2 :] += 0.7
    return [
        {
            "timestamp": T0 + i * step_ms,
            "features": {"x": float(x[i]), "y": float(rng.normal(5, 2)), "c": str(rng.choice(["a", "b", "c"]))},
            "country": str(rng.choice(["de", "fr"])),
        }
        for i in range(n)
    ]


def _serve_equals_backfill(kafka_bootstrap: str, tmp_path: Path, events: list[dict[str, Any]], window: Any) -> Any:
    ref = build_reference(tmp_path / "ref.json")
    topics = topics_for(f"cal-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    path, data = write_config(
        tmp_path, kafka_bootstrap, topics, window=window, concept={"detector": "none"}, statistics={"min_events": 20}
    )
    mc = MonitorConfig.from_mapping(data)
    layout = Layout(ref, mc.features.include)
    cols, errors = decode_events(events, mc, ref, layout.features)
    assert not errors
    last = events[-1]["timestamp"]
    # the backfill's windows that the consumer's watermark (the last event's time) has closed
    want = [
        r
        for r in run_local(cols, mc, ref, layout)
        if r["statistic"] in WINDOW_STATS and (mc.window.kind == "count" or _end(r) <= last)
    ]
    assert want
    produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in events])
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    outputs, _registry = _run(config, lambda out: len(_window_records(out)) >= len(want))
    got = _window_records(outputs)
    assert_same_records(got, want)
    return got


def _end(r: dict[str, Any]) -> int:
    return parse_iso_ms(r["window_end"])


def test_serve_closes_the_backfills_calendar_days_with_an_offset(kafka_bootstrap: str, tmp_path: Path) -> None:
    # 1200 events 5 minutes apart: 4+ days, cut at 06:00 UTC
    got = _serve_equals_backfill(
        kafka_bootstrap, tmp_path, _events(1200, 300_000, 5), {"size": "1d", "offset": "6h", "idle_timeout": "60s"}
    )
    starts = {r["window_start"] for r in got}
    assert len(starts) >= 3 and all(s.endswith("T06:00:00.000Z") for s in starts)


def test_serve_closes_the_backfills_calendar_months(kafka_bootstrap: str, tmp_path: Path) -> None:
    # 1200 events 2 hours apart: 2023-11-14 .. 2024-02-22, so November, December and January close
    got = _serve_equals_backfill(kafka_bootstrap, tmp_path, _events(1200, 7_200_000, 6), {"size": "1mo"})
    months = sorted({(r["window_start"], r["window_end"], r["window_index"]) for r in got})
    assert months == [
        ("2023-11-01T00:00:00.000Z", "2023-12-01T00:00:00.000Z", 646),
        ("2023-12-01T00:00:00.000Z", "2024-01-01T00:00:00.000Z", 647),
        ("2024-01-01T00:00:00.000Z", "2024-02-01T00:00:00.000Z", 648),
    ]


def test_serve_numbers_tied_count_windows_as_the_backfill(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = [{**e, "timestamp": T0} for e in _events(1000, 1, 7)]  # every event at one time
    got = _serve_equals_backfill(kafka_bootstrap, tmp_path, events, {"kind": "count", "size": "50"})
    per_segment: dict[str, set[int]] = {}
    for r in got:
        per_segment.setdefault(json.dumps(r["segment"], sort_keys=True), set()).add(r["window_index"])
    # the overall segment: 20 windows; each country its own ordinals from 0
    assert per_segment.pop("{}") == set(range(20))
    assert per_segment and all(s == set(range(len(s))) for s in per_segment.values())
