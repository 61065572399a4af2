"""The benchmark's spark_streaming report: its table and targets from the figures of a run."""

from __future__ import annotations

import pytest

from tests.benchmarks.run import report

pytestmark = pytest.mark.unit


def _run(rate: float, cpu_rate: float) -> dict[str, float]:
    return {"rate": rate, "cpu_rate": cpu_rate, "startup_s": 30.0}


def test_streaming_targets_are_judged_on_the_medians() -> None:
    ss = {
        "events": 4_000_000,
        "max_offsets_per_trigger": 1_000_000,
        "runs": {
            "serve": [_run(300e3, 310e3), _run(320e3, 300e3), _run(310e3, 305e3)],
            "local[2]": [_run(330e3, 250e3), _run(340e3, 260e3), _run(200e3, 255e3)],
            "local[1]": [_run(190e3, 230e3), _run(200e3, 240e3), _run(180e3, 235e3)],
        },
        "serve_rate": 310e3,
        "serve_cpu_rate": 305e3,
        "local[2]_rate": 330e3,
        "local[2]_cpu_rate": 255e3,
        "local[1]_rate": 190e3,
        "local[1]_cpu_rate": 235e3,
        "local2_vs_serve": 330e3 / 310e3,
        "local2_vs_local1": 330e3 / 190e3,
    }
    machine = {k: "x" for k in ("cpu", "cores", "memory_gib", "kernel", "python", "numpy", "confluent_kafka")}
    machine |= {"librdkafka": "x", "java": "x", "broker": "x"}
    text, targets = report({"machine": machine, "events": 1_000_000, "repeats": 3, "spark_streaming": ss})
    assert "| Structured Streaming local[2] (micro-batches of 1,000,000) | 330k | 255k | 30.0 |" in text
    assert targets["Structured Streaming local[2] >= 1.0x serve (events/s)"] == ("1.06x", True)
    assert targets["Structured Streaming local[2] >= 1.7x local[1]"] == ("1.74x", True)
    ss["local2_vs_local1"] = 1.5
    _text, targets = report({"machine": machine, "events": 1_000_000, "repeats": 3, "spark_streaming": ss})
    assert targets["Structured Streaming local[2] >= 1.7x local[1]"] == ("1.50x", False)
