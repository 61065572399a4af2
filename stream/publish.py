"""Publishing: window statistic records, alerts and dead letters to Kafka, records to a file.

Keys make every output idempotent: a statistic record and an alert are keyed by
:func:`detectors.evaluate.alert_id` (monitor, segment, feature, statistic, window,
reference fingerprint), so a replay after a crash re-sends the same key with the same
record (alerts differ only in ``detected_at``). :meth:`Publisher.flush` waits for every
delivery and raises if one failed: the consumer flushes before each checkpoint, so a
checkpoint never covers output that was not delivered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from detectors.evaluate import alert_id
from stream.exceptions import StreamError
from stream.records import encode

log = logging.getLogger("streamdrift.publish")

#: dead letters larger than this keep only their first bytes (header ``streamdrift.truncated_from``)
DEAD_LETTER_MAX_BYTES = 512 << 10


class Publisher:
    """Output topics and the optional JSON-lines file."""

    def __init__(
        self,
        producer_conf: Mapping[str, Any] | None,
        statistics_topic: str | None,
        alerts_topic: str | None,
        dead_letter_topic: str | None,
        statistics_file: str | None,
    ) -> None:
        self.statistics_topic = statistics_topic
        self.alerts_topic = alerts_topic
        self.dead_letter_topic = dead_letter_topic
        needs_kafka = statistics_topic or alerts_topic or dead_letter_topic
        self.producer: Producer | None = Producer(dict(producer_conf)) if needs_kafka and producer_conf else None
        self._errors: list[str] = []
        self._file = None
        if statistics_file:
            path = Path(statistics_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_line(path)
            self._file = open(path, "ab")  # noqa: SIM115 - kept open for the life of the consumer

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _produce(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, str | bytes | None]] | None = None
    ) -> None:
        assert self.producer is not None
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)

    def _poll_reports(self) -> None:
        """Serve the delivery reports due (one poll for the messages just produced, not one each)."""
        if self.producer is not None:
            self.producer.poll(0)

    def records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Window statistic (and concept-drift) records."""
        lines = []
        for rec in records:
            value = encode(rec)
            if self.statistics_topic and self.producer is not None:
                self._produce(self.statistics_topic, alert_id(rec).encode(), value)
            if self._file is not None:
                lines.append(value + b"\n")
        if self._file is not None and lines:
            self._file.write(b"".join(lines))
        self._poll_reports()

    def alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        if not self.alerts_topic or self.producer is None:
            return
        for a in alerts:
            self._produce(self.alerts_topic, str(a["alert_id"]).encode(), encode(a))
        self._poll_reports()

    def dead_letter(
        self, value: bytes | None, key: bytes | None, reason: str, code: str, topic: str, partition: int, offset: int
    ) -> None:
        if not self.dead_letter_topic or self.producer is None:
            return
        headers: list[tuple[str, str | bytes | None]] = [
            ("streamdrift.reason", reason.encode()),
            ("streamdrift.reason_code", code.encode()),
            ("streamdrift.topic", topic.encode()),
            ("streamdrift.partition", str(partition).encode()),
            ("streamdrift.offset", str(offset).encode()),
        ]
        body = value or b""
        for cut in (DEAD_LETTER_MAX_BYTES, 64 << 10):
            if len(body) > cut:
                # a message too big for the producer is kept in part; the header says how big it was
                body = body[:cut]
                headers = [*headers, ("streamdrift.truncated_from", str(len(value or b"")).encode())]
            try:
                self._produce(self.dead_letter_topic, key, body, headers)
                self._poll_reports()
                return
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                headers = [h for h in headers if h[0] != "streamdrift.truncated_from"]
        raise StreamError(f"cannot dead-letter message {topic}/{partition}@{offset}: too large even when cut")

    def flush(self, timeout: float = 30.0) -> None:
        """Deliver everything produced so far (and sync the file); raise if anything failed."""
        if self.producer is not None:
            left = self.producer.flush(timeout)
            if left:
                raise StreamError(f"{left} output messages not delivered within {timeout:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise StreamError(f"{len(errors)} output messages failed; first: {errors[0]}")
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Release the producer (after :meth:`flush`) and the file."""
        self.producer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _drop_partial_line(path: Path) -> None:
    """After a crash mid-write the file may end in half a record: cut it (it is re-sent on replay)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                log.warning("%s ended in a partial record (crash mid-write); removed it", path)
                return
            pos = start
        f.truncate(0)
