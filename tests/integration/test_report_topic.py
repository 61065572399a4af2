"""`streamdrift report --topic`: records read from the statistics topic on a real broker.

Records from ``run_local`` (seeded events, injected drift) are produced to a two-partition
topic with the Kafka timestamp of each record's window end, as the consumer publishes
them, plus one message that is not a record. The report over ``[--since, --until)`` must
list exactly the drifted windows whose records carry a timestamp in that range.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.evaluate import iso_ms, parse_iso_ms, segment_label
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.cli import main
from stream.report.html import read_topic
from tests.conftest import create_topics

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000
WINDOW_MS = 60_000
N_WINDOWS = 12


def _records(tmp: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(8)
    ref = ReferenceProfile.build({"x": rng.normal(0.0, 1.0, 5000)})
    ref.save(tmp / "reference.json")
    cfg = {"monitor": "topic-report", "reference": "reference.json", "window": {"kind": "tumbling", "size": "1m"}}
    config = MonitorConfig.from_mapping(cfg, base_dir=tmp)
    events = []
    for w in range(N_WINDOWS):
        shift = 1.0 if w in (4, 5, 9) else 0.0
        for i, x in enumerate(rng.normal(shift, 1.0, 300)):
            events.append({"timestamp": START_MS + w * WINDOW_MS + i * 100, "features": {"x": float(x)}})
    layout = Layout(ref, None)
    cols, errors = decode_events(events, config, ref, layout.features)
    assert not errors
    return run_local(cols, config, ref, layout)


class DriftRows(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.starts: list[str] = []
        self.notes: list[str] = []
        self._note = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-starts"):  # a run of drifted windows: every window's start
            self.starts.extend(str(a["data-starts"]).split())
        self._note = a.get("class") == "note"

    def handle_data(self, data: str) -> None:
        if self._note:
            self.notes.append(data)
            self._note = False


def test_report_from_the_statistics_topic(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    records = _records(tmp_path)
    drifted = sorted({r["window_start"] for r in records if r["drift"]})
    assert drifted, "the injected drift must be detected"
    create_topics(kafka_bootstrap, topic_name, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i, r in enumerate(records):
        producer.produce(
            topic_name,
            json.dumps(r).encode(),
            key=segment_label(r["segment"]).encode(),
            partition=i % 2,
            timestamp=parse_iso_ms(r["window_end"]),
        )
    producer.produce(topic_name, b"not json", partition=0, timestamp=START_MS + 5 * WINDOW_MS + 1)
    assert producer.flush(10) == 0

    # the whole topic: every record back, the junk message skipped and counted
    got = read_topic(kafka_bootstrap, topic_name, timeout_s=30)
    assert got.skipped == 1 and got.messages == len(records) + 1
    key = sorted(json.dumps(r, sort_keys=True) for r in records)
    assert sorted(json.dumps(r, sort_keys=True) for r in got.records) == key

    # a time range [since, until) by Kafka timestamp (= window end)
    since, until = START_MS + 5 * WINDOW_MS, START_MS + 10 * WINDOW_MS
    out = tmp_path / "report.html"
    code = main(
        [
            "report",
            "--topic",
            topic_name,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--since",
            iso_ms(since),
            "--until",
            str(until),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    page = DriftRows(out.read_text(encoding="utf-8"))
    in_range = [r for r in records if since <= parse_iso_ms(r["window_end"]) < until]
    assert page.starts == sorted({r["window_start"] for r in in_range if r["drift"]})
    assert page.starts and page.starts != drifted  # the range cut some drifted windows off
    assert any("1 of" in n and "not window records" in n for n in page.notes)


def test_unknown_topic_is_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "report",
            "--topic",
            "no-such-topic-report",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--timeout",
            "5",
            "--out",
            str(tmp_path / "r.html"),
        ]
    )
    assert code == 2
    assert "--topic" in capsys.readouterr().err
