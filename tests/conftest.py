"""Shared fixtures: a real Kafka-protocol broker over TCP.

``STREAMDRIFT_TEST_BOOTSTRAP=host:port`` points the tests at an existing broker (Apache
Kafka, Redpanda, ...); otherwise each session starts the embedded one (tansu) on a free
loopback port and stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stream.demo.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("STREAMDRIFT_TEST_BOOTSTRAP")
    if env:
        yield env
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test (topics are auto-created or created by the test)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def create_topics(bootstrap: str, *topics: str, partitions: int = 1) -> None:
    """Create topics and wait until they exist."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    for f in futures.values():
        f.result(timeout=10)
