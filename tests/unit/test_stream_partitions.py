"""The active consumer's partitions: every partition of the topic, each from the checkpoint's offset, else the
group's committed one, else the earliest; partitions added to the topic later are picked up by the metadata
refresh. (The embedded broker answers CreatePartitions with UNSUPPORTED_FEATURE, so the consumer's side is
checked here against a stand-in for confluent-kafka's Consumer: only the calls it makes.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from stream.service.consumer import DriftConsumer
from stream.settings import ServeConfig
from tests.integration.test_serve import build_reference, topics_for, write_config

pytestmark = pytest.mark.unit


class StandIn:
    """What DriftConsumer asks of a Consumer when it assigns partitions."""

    def __init__(self, topic: str, partitions: list[int], committed: dict[int, int]) -> None:
        self.topic, self.partitions, self.committed_offsets = topic, partitions, committed
        self.calls: list[tuple[str, list[tuple[int, int]]]] = []
        self.fail_committed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        parts = {p: SimpleNamespace(id=p) for p in self.partitions}
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=parts, error=None)})

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.fail_committed:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, -1001)) for tp in tps]

    def assign(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("assign", [(tp.partition, tp.offset) for tp in tps]))

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("incremental_assign", [(tp.partition, tp.offset) for tp in tps]))


def _consumer(tmp_path: Path) -> DriftConsumer:
    build_reference(tmp_path / "ref.json")
    path, _data = write_config(tmp_path, "127.0.0.1:1", topics_for("t"))
    config = ServeConfig.from_mapping(yaml.safe_load(path.read_text()), base_dir=tmp_path, env={})
    return DriftConsumer(config, registry=CollectorRegistry(), serve_metrics=False)


def test_every_partition_from_the_checkpoint_else_committed_else_earliest_and_added_ones_later(tmp_path: Path) -> None:
    c = _consumer(tmp_path)
    fake = StandIn(c.topic, [0, 1, 2], committed={1: 40})
    c._consumer = fake  # type: ignore[assignment]
    c.next_offset = {0: 100}  # (from the checkpoint)
    c._refresh_partitions()
    assert fake.calls == [("assign", [(0, 100), (1, 40), (2, OFFSET_BEGINNING)])]
    assert c.partitions == {0, 1, 2} and c.next_offset == {0: 100, 1: 40}
    assert set(c.windows.last_seen) == {0, 1, 2}  # (active: they hold windows back until they have a watermark)
    assert c.registry.get_sample_value("streamdrift_assigned_partitions", {"monitor": "it"}) == 3
    c._refresh_partitions()  # nothing new: no call
    assert len(fake.calls) == 1
    fake.partitions = [0, 1, 2, 3, 4]  # partitions added to the topic
    fake.committed_offsets[4] = 7
    c._refresh_partitions()
    assert fake.calls[1] == ("incremental_assign", [(3, OFFSET_BEGINNING), (4, 7)])
    assert c.partitions == {0, 1, 2, 3, 4}


def test_without_an_answer_for_committed_offsets_librdkafka_looks_them_up(tmp_path: Path) -> None:
    c = _consumer(tmp_path)
    fake = StandIn(c.topic, [0, 1], committed={})
    fake.fail_committed = True
    c._consumer = fake  # type: ignore[assignment]
    c._refresh_partitions()
    assert fake.calls == [("assign", [(0, -1000), (1, -1000)])]  # OFFSET_STORED: committed, else auto.offset.reset
    assert c.next_offset == {}
