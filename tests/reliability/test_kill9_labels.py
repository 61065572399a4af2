"""kill -9 of ``streamdrift serve`` with a labels topic (the labels case of the fault battery).

As :mod:`tests.reliability.test_kill9`, with late labels: paced producers write predictions (two
partitions, accuracy drops half way) and their labels 1-20 minutes later in event time (two
partitions of the labels topic) while one ``serve`` is killed with SIGKILL at seeded random points
and restarted; an uninterrupted ``serve`` reads the same topics. After both have read everything:

* the performance records and the concept detections on the joined labels (latest per key) are
  the same, and the drop is flagged;
* the join's counts in the final checkpoints are the same (joined, orphans, duplicates, windows
  emitted; predictions timed out or still waiting), and predictions that waited across restarts
  were joined (every label of a known id pairs: nothing pending was lost);
* the predictions topic's offsets in the checkpoint are its ends, the labels topic's the first
  label not released to the join (only the last one, which no other label partition has passed).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from detectors.performance import FEATURE
from stream.service.checkpoint import StateStore
from stream.service.labels import ServeLabels
from stream.settings import ServeConfig
from tests.conftest import create_topics
from tests.integration.test_serve_labels import build_reference, make_stream, serve_config, topics_for
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability


def final_state(cfg: Path, state: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The newest checkpoint's state and the join's counts restored from its blob."""
    config = ServeConfig.load(cfg)
    from detectors.reference import ReferenceProfile

    ref = ReferenceProfile.load(config.monitor.reference)
    cp = StateStore(state, config.monitor.monitor, ref.fingerprint).load()
    assert cp is not None and cp.blob is not None
    labels = ServeLabels(config.monitor, ref, max_event_bytes=1 << 20, clock=time.monotonic, wall_clock=time.time)
    labels.restore(cp.state["labels"], cp.blob)
    return cp.state, labels.tracker.counts


def label_offsets(state: Path) -> dict[int, int]:
    doc = h.newest_checkpoint(state)
    if doc is None or doc["state"].get("labels") is None:
        return {}
    return {int(p): int(o) for p, o, _run in doc["state"]["labels"]["partitions"]}


def kill_replay_labels(bootstrap: str, tmp: Path, kills: int, seed: int, n: int) -> None:
    rng = random.Random(seed)
    topics = topics_for(f"k9l-{seed}-{time.monotonic_ns() % 10**8}")
    clean_topics = {**topics_for(topics["events"] + "-clean"), "events": topics["events"], "labels": topics["labels"]}
    create_topics(bootstrap, topics["events"], topics["labels"], partitions=2)
    create_topics(bootstrap, *(t[k] for t in (topics, clean_topics) for k in ("stats", "alerts", "dlq")))
    build_reference(tmp / "ref.json")
    preds, labels = make_stream(n, seed=seed, hours=3.0, labelled_hours=2.0, drop_at=1.0)
    sentinel = labels.pop()  # (produced last, one per label partition: see the module docstring)
    concept = {"detector": "adwin", "params": {"delta": 0.002}}
    paths = {}
    for name, t in (("victim", topics), ("clean", clean_topics)):
        data = serve_config(tmp, bootstrap, t, name=name, concept=concept)
        data["kafka"]["extra"] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        data["kafka"]["batch_size"] = 200
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(data))
    victim_log, clean_log = tmp / "victim.log", tmp / "clean.log"
    duration = kills * 2.2
    pp = h.PacedProducer(bootstrap, topics["events"], [json.dumps(p).encode() for p in preds], 2, n / duration)
    lp = h.PacedProducer(
        bootstrap, topics["labels"], [json.dumps(r).encode() for r in labels], 2, len(labels) / duration
    )
    clean = h.start_serve(paths["clean"], clean_log)
    pp.start()
    lp.start()
    kill_points: list[float] = []
    try:
        kill_points += h.kill_repeatedly(paths["victim"], victim_log, kills, rng)
        pp.check()
        lp.check()
        p = Producer({"bootstrap.servers": bootstrap})
        for part in (0, 1):  # the labels' time moves past the last windows' ticks on both partitions
            p.produce(
                topics["labels"],
                value=json.dumps({**sentinel, "timestamp": sentinel["timestamp"] + part}),
                partition=part,
            )
        assert p.flush(10) == 0
        ends = h.end_offsets(bootstrap, topics["events"], 2)
        lends = h.end_offsets(bootstrap, topics["labels"], 2)
        assert sum(ends.values()) == n and sum(lends.values()) == len(labels) + 2
        # every label released to the join but partition 1's sentinel (partition 0 never passes its time)
        want_lab = {0: lends[0], 1: lends[1] - 1}
        joined = victim_log.read_text().count("active: consuming")
        final = h.start_serve(paths["victim"], victim_log)
        h.wait_for(
            lambda: victim_log.read_text().count("active: consuming") > joined, "take-over", 30, final, victim_log
        )
        for state, proc, log in ((tmp / "victim-state", final, victim_log), (tmp / "clean-state", clean, clean_log)):
            h.wait_for(
                lambda s=state: h.offsets(s) == ends and label_offsets(s) == want_lab,
                f"{state.name} to catch up",
                120,
                proc,
                log,
            )
        assert h.stop(final) == 0
        assert h.stop(clean) == 0
    finally:
        h.kill(clean)

    def perf(path: Path) -> list[dict[str, Any]]:
        return [r for r in h.latest_per_key(h.read_records(path)) if r["feature"] in (FEATURE, "model_error")]

    got, want = perf(tmp / "victim-stats.jsonl"), perf(tmp / "clean-stats.jsonl")
    got_state, got_counts = final_state(paths["victim"], tmp / "victim-state")
    want_state, want_counts = final_state(paths["clean"], tmp / "clean-state")
    waited = {k: got_counts[k] for k in ("label_timeout", "pending")}
    print(
        f"\nkill -9 x {kills} with labels (seed {seed}; delays {kill_points[:6]}...): "
        f"{len(want)} performance/concept records, equal={h.digest(got) == h.digest(want)}; counts {got_counts}"
    )
    assert want and any(r["drift"] for r in want if r["feature"] == FEATURE), "the accuracy drop was not flagged"
    assert h.digest(got) == h.digest(want)
    for k in ("joined", "label_orphan", "duplicate_prediction", "unjoinable", "windows_emitted", "held"):
        assert got_counts[k] == want_counts[k], (k, got_counts, want_counts)
    assert sum(waited.values()) == want_counts["label_timeout"] + want_counts["pending"]
    assert got_counts["joined"] == len(labels)  # every label met its prediction, across every restart
    assert got_state["labels"] == want_state["labels"]


def test_kill9_with_labels_same_performance(kafka_bootstrap: str, tmp_path: Path) -> None:
    kill_replay_labels(kafka_bootstrap, tmp_path, kills=12, seed=17, n=12_000)
