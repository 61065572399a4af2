"""Liveness with a labels topic: label partitions never hold the drift windows back, and when the labels
stop the performance windows are still emitted (the ``max_delay`` rule, :mod:`stream.service.labels`).

* an empty labels topic, or one that does not exist: every drift window the predictions close is
  reported, as without a labels section;
* labels that stop (every label partition idle for ``window.idle_timeout``): the label watermark
  follows the predictions' (close frontier − ``labels.clock_skew``), so each window whose end +
  ``max_delay`` it passes is emitted with the labels it has, the windows after it wait, and the
  predictions that can no longer get a label count as ``label_timeout``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from detectors.evaluate import parse_iso_ms
from tests.conftest import create_topics
from tests.integration.test_serve_labels import (
    MIN,
    InProcess,
    build_reference,
    make_stream,
    produce,
    serve_config,
    topics_for,
)

pytestmark = pytest.mark.reliability

WINDOW = 10 * MIN
MAX_DELAY = 30 * MIN
SKEW = MIN


@pytest.mark.parametrize("labels_topic", ["empty", "absent"])
def test_no_labels_never_stop_drift_windows(kafka_bootstrap: str, tmp_path: Path, labels_topic: str) -> None:
    build_reference(tmp_path / "ref.json")
    topics = topics_for(f"live-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *(topics[k] for k in ("events", "stats", "alerts", "dlq")))
    if labels_topic == "empty":
        create_topics(kafka_bootstrap, topics["labels"])
    preds, _labels = make_stream(3000, seed=9, hours=2.0)
    produce(kafka_bootstrap, topics["events"], [json.dumps(p).encode() for p in preds])
    data = serve_config(tmp_path, kafka_bootstrap, topics, window={"idle_timeout": "2s"})
    # windows end at multiples of 10 min; the last prediction's window stays open
    last = max(p["timestamp"] for p in preds)
    n_closed = len({p["timestamp"] // WINDOW for p in preds if (p["timestamp"] // WINDOW + 1) * WINDOW <= last})
    run = InProcess(data, tmp_path)
    try:
        run.wait(
            lambda: len({r["window_end"] for r in run.records("drift") if r["feature"] == "x"}) == n_closed,
            "every drift window the predictions closed",
            60,
        )
        # and with the labels idle, the performance windows whose max_delay has passed are emitted (no labels)
        run.wait(lambda: len(run.records()) > 0, "performance windows by the max_delay rule", 30)
        acc = [r for r in run.records() if r["statistic"] == "accuracy"]
        assert acc and all(r["value"] is None and r["drift"] is None for r in acc)  # no labels: undefined
    finally:
        run.close()


def test_labels_that_stop_emit_windows_by_the_max_delay_rule(kafka_bootstrap: str, tmp_path: Path) -> None:
    build_reference(tmp_path / "ref.json")
    topics = topics_for(f"stop-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    preds, labels = make_stream(6000, seed=21, hours=3.0, labelled_hours=1.0)
    labels.pop()  # (no label after the others)
    produce(kafka_bootstrap, topics["labels"], [json.dumps(r).encode() for r in labels])
    produce(kafka_bootstrap, topics["events"], [json.dumps(p).encode() for p in preds])
    data = serve_config(tmp_path, kafka_bootstrap, topics, window={"idle_timeout": "2s"})
    last_label = max(r["timestamp"] for r in labels)
    run = InProcess(data, tmp_path)
    try:
        frontier = max(p["timestamp"] for p in preds)  # (allowed_lateness 0: the close frontier)
        tick = (frontier - SKEW - 1) // WINDOW * WINDOW
        due = {
            (p["timestamp"] // WINDOW) * WINDOW
            for p in preds
            if (p["timestamp"] // WINDOW + 1) * WINDOW + MAX_DELAY <= tick
        }
        assert max(due) + WINDOW > last_label + MAX_DELAY  # (more than the labels alone would emit)

        def starts() -> set[int]:
            return {parse_iso_ms(r["window_start"]) for r in run.records()}

        run.wait(lambda: starts() >= due, "the windows due by the max_delay rule", 60)
        assert run.consumer.labels is not None and run.consumer.labels.stopped
        assert starts() == due  # and none after them (their max_delay has not passed)
        counts = run.consumer.labels.counts
        assert counts["joined"] == len(labels)
        assert counts["label_timeout"] > 0
        waiting = {s for s, _e in run.consumer.labels.tracker.waiting_windows}
        assert waiting and min(waiting) == max(due) + WINDOW
        gauge = run.registry.get_sample_value("streamdrift_labels_waiting", {"monitor": "lab", "kind": "prediction"})
        assert gauge == counts["pending"]
        cov = [r for r in run.records() if r["statistic"] == "label_coverage" and r["segment"] == {}]
        assert {r["value"] for r in cov if parse_iso_ms(r["window_start"]) >= last_label} == {0.0}
    finally:
        run.close()
