"""The docker-compose demo producer: a live synthetic prediction stream that drifts.

``reference --out PATH`` writes the reference profile of the baseline (no drift) data;
``produce`` writes events stamped with the wall clock to Kafka, ``--rate`` per second, and
injects the synthetic drift (income shift, merchant mix, labels decoupled from the score)
after ``--drift-after`` seconds, so windows close in real time and Prometheus sees the
drift alerts fire. Run inside the streamdrift image (it uses ``stream.demo.synthetic``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from detectors.reference import ReferenceProfile
from stream.demo import synthetic


def build_reference(out: str, seed: int) -> None:
    cols = synthetic.reference_columns(50_000, seed=seed)
    ref = ReferenceProfile.build(
        cols,
        features=[*synthetic.NUMERIC, *synthetic.CATEGORICAL],
        categorical=synthetic.CATEGORICAL,
        metadata={"source": "docker-compose demo baseline"},
    )
    ref.save(out)
    print(f"reference {ref.fingerprint[:16]} -> {out}", flush=True)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    for topic, fut in futures.items():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            print(f"topic {topic} exists", flush=True)


def produce(bootstrap: str, topic: str, rate: float, drift_after: float, seed: int) -> None:
    if rate <= 0:
        raise SystemExit(f"--rate must be positive (got {rate})")
    step_ms = max(1, round(1000 / rate))
    start_ms = int(time.time() * 1000)
    drift_events = int(drift_after * 1000 / step_ms)
    # a stream long enough to run for days; the drift starts after `drift_after` seconds
    n_events = max(drift_events * 2, 10_000_000)
    spec = synthetic.StreamSpec(
        n_events=n_events, start_ms=start_ms, step_ms=step_ms, drift_at=drift_events / n_events, seed=seed
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    print(f"producing {rate:g} events/s to {topic}; drift after {drift_after:g} s", flush=True)
    for i, event in enumerate(synthetic.events(spec)):
        wait = event["timestamp"] / 1000 - time.time()
        if wait > 0:
            producer.poll(0)
            time.sleep(wait)
        producer.produce(topic, json.dumps(event, separators=(",", ":")).encode(), key=event["country"].encode())
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ref = sub.add_parser("reference", help="write the baseline reference profile")
    ref.add_argument("--out", required=True)
    ref.add_argument("--seed", type=int, default=8)
    prod = sub.add_parser("produce", help="produce the live stream")
    prod.add_argument("--bootstrap", required=True)
    prod.add_argument("--topic", default="predictions")
    prod.add_argument(
        "--create-topics",
        default="predictions,streamdrift.statistics,streamdrift.alerts,predictions.dlq",
        help="comma-separated topics to create first (existing ones are kept)",
    )
    prod.add_argument("--partitions", type=int, default=3)
    prod.add_argument("--rate", type=float, default=200.0, help="events per second")
    prod.add_argument("--drift-after", type=float, default=900.0, help="seconds before the drift starts")
    prod.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.cmd == "reference":
        build_reference(args.out, args.seed)
        return 0
    topics = [t for t in args.create_topics.split(",") if t]
    ensure_topics(args.bootstrap, topics, args.partitions)
    produce(args.bootstrap, args.topic, args.rate, args.drift_after, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
