"""The Spark Kafka source over TLS: its ``kafka.*`` options go to librdkafka as they are, so
``kafka.security.protocol=ssl`` with ``kafka.ssl.ca.location`` reads a topic behind a real TLS endpoint
(openssl certificates, socat in front of the embedded broker) exactly."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from jobs.kafka_source import register
from tests.servers import TlsBroker, make_certificates

pytestmark = [pytest.mark.spark, pytest.mark.integration]


def test_the_kafka_source_reads_over_tls(spark: Any, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    with TlsBroker(certs) as broker:
        ssl = {"bootstrap.servers": broker.bootstrap, "security.protocol": "ssl", "ssl.ca.location": str(certs.ca)}
        admin = AdminClient(ssl)  # (kept: a collected client cancels its requests)
        for f in admin.create_topics([NewTopic(topic, 2, 1)]).values():
            f.result(timeout=20)
        p = Producer({**ssl, "linger.ms": 5})
        sent = {(i % 2, json.dumps({"i": i}).encode()) for i in range(400)}
        for part, value in sorted(sent):
            p.produce(topic, value, partition=part)
        assert p.flush(30) == 0
        register(spark)
        reader = spark.read.format("streamdrift-kafka").option("subscribe", topic)
        for k, v in ssl.items():
            reader = reader.option(f"kafka.{k}", v)
        rows = reader.load().collect()
        assert {(r.partition, bytes(r.value)) for r in rows} == sent and len(rows) == len(sent)
