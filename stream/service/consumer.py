"""The consumer loop of ``streamdrift serve``: one active process per monitor, standbys that take over.

**Active and standby.** :meth:`DriftConsumer.run` first serves /metrics, then takes the state
lock (an exclusive ``flock`` on ``state.dir/.lock``, :class:`stream.service.checkpoint.StateLock`). If
another process holds it, this one is a *standby*: it exports ``streamdrift_active 0`` and nothing
else of the monitor (no verdict, lag or staleness series), logs who holds the lock, and tries again
every :data:`STANDBY_POLL_S` seconds for as long as it takes, until the lock is free or it is
stopped. It never gives up on a slow or frozen owner (so it cannot crash-loop): the kernel releases
the lock when the owner exits, ``kill -9`` included. Once it holds the lock it is *active*: it
loads the newest good checkpoint and consumes **every** partition of the topic with ``assign()``
(no consumer-group rebalancing), each from the checkpoint's offset, else the group's committed
offset, else the earliest; it reads the topic's metadata again every :data:`METADATA_REFRESH_S`
seconds and consumes partitions added meanwhile. Scale-out beyond one process is the Spark
Structured Streaming job's.

**The loop.** consume a batch -> decode to columns (bad records to the dead-letter topic,
counted) -> route by segment and update histograms (vectorised) and the concept detectors -> close
the windows the watermark passed -> evaluate -> publish records/alerts and set metrics -> every
``state.checkpoint_interval``: flush outputs, write a checkpoint, commit the offsets under
``kafka.group_id`` (what Kafka's tools show as the group's position; on start the checkpoint's
offsets win).

**Exactly the same statistics after a crash.** A checkpoint (:mod:`stream.service.checkpoint`) holds the
window panes, watermarks, close frontier, segment router, count windows and concept detectors
together with the next offset of every partition, as one atomic unit; outputs are flushed before
it is written and offsets committed only after it. On start the consumer seeks every partition
to the checkpoint's offset, so whatever was processed after the last checkpoint is processed
again from the same state; re-sent records of a re-closed window are identical and keyed
identically. What a window contains does not depend on how the partitions interleave
(:mod:`stream.service.windows`).

**Concept drift.** One detector per Kafka partition, fed that partition's events in offset order
(deterministic under replay); its records have segment ``{"kafka_partition": "<p>"}``. The file
backfill (:func:`detectors.engine.run_local`) runs one detector over the whole history in
event-time order (segment ``{}``): on a one-partition topic in time order, the same detections.

**Late labels.** With a ``labels`` section the partitions of ``labels.topic`` are assigned next
to the predictions' on the same consumer; label messages are split off each batch and handed to
:class:`stream.service.labels.ServeLabels` (decoding, dead letters, the label partitions' own
watermark, the join and the performance records), which is advanced to the windows' close
frontier after every step. Its binary state is part of every checkpoint, with the first label
offset not yet released to the join of each label partition.

**Model versions.** A reference that names an MLflow model version (``reference:
models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, :mod:`stream.modelref`): every record, alert and
checkpoint says which version it belongs to, and ``streamdrift_reference_info`` carries the version
as labels. With an alias, a background thread polls it every ``mlflow.poll_interval``; when it
moves, the loop switches between two batches (:meth:`DriftConsumer.switch_reference`): checkpoint
the old version's state, close every open window of the old version (published with its version,
even if it is not complete), start empty windows on the new profile with the same watermarks and
close frontier, checkpoint again. Nothing is mixed: a window's events are all counted against one
version (a window cut by the switch is reported once per version, each with its own events). A
checkpoint of another version found at take-over (the alias moved while serve was down, or it
crashed in the middle of a switch) is closed the same way, from that version's profile, before its
events go on under the current one.

In-process use (the demo, tests)::

    consumer = DriftConsumer(ServeConfig.from_mapping(data), on_output=print_window)
    stats = consumer.run(stop_event)          # returns when stop_event is set
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig, is_model_uri
from detectors.engine import PARTITION_SEGMENT, ConceptTracker
from detectors.evaluate import evaluate_window, make_alert, require_calibration, segment_label, window_records
from detectors.events import EventColumns, concept_values
from detectors.exceptions import ConfigError, ReferenceMismatchError, SnapshotError
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from detectors.sequential import ConceptDetector, make_detector, restore
from stream.decode import EventDecoder
from stream.exceptions import CheckpointError
from stream.metrics import Metrics, serve_http
from stream.modelref import AliasWatcher, ModelRegistry, ModelVersion
from stream.publish import Publisher
from stream.service.checkpoint import Checkpoint, StateLock, StateStore
from stream.service.connect import check_broker
from stream.service.labels import ServeLabels, check_serve_labels
from stream.service.windows import ClosedWindow, WindowManager
from stream.settings import ServeConfig

log = logging.getLogger("streamdrift.consumer")

#: how often a standby tries to take the state lock (seconds)
STANDBY_POLL_S = 1.0
#: how often the active process reads the topic's partitions again (seconds; every second until it has some)
METADATA_REFRESH_S = 30.0


def _version() -> str:
    try:
        return version("streamdrift")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class WindowOutput:
    """What one processing step produced: records of closed windows, concept records, alerts."""

    records: list[dict[str, Any]]
    concept: list[dict[str, Any]]
    alerts: list[dict[str, Any]]


@dataclass
class RunStats:
    batches: int = 0
    messages: int = 0
    valid: int = 0
    invalid: int = 0
    late: int = 0
    windows_closed: int = 0
    records: int = 0
    alerts: int = 0
    concept_detections: int = 0
    checkpoints: int = 0
    label_messages: int = 0
    label_invalid: int = 0
    performance_records: int = 0
    metrics_port: int | None = None
    standby_s: float = 0.0  # how long it waited for the state lock


def closed_records(
    layout: Layout, config: MonitorConfig, closed: Sequence[ClosedWindow], model: ModelVersion | None = None
) -> list[dict[str, Any]]:
    """Window statistic records of closed windows (evaluation, correction, verdicts): the segments of
    one window are evaluated together (one family with ``statistics.family: window``); ``model``: the
    model version the reference belongs to."""
    by_window: dict[tuple[int, int, int], list[ClosedWindow]] = {}
    for w in closed:
        by_window.setdefault((w.start_ms, w.end_ms, w.index), []).append(w)
    records: list[dict[str, Any]] = []
    for (start, end, index), members in by_window.items():
        verdicts = evaluate_window(layout, [(w.counts, w.raw) for w in members], config.statistics)
        for w, results in zip(members, verdicts, strict=True):
            records.extend(
                window_records(
                    results,
                    monitor=config.monitor,
                    segment=w.segment,
                    window_start_ms=start,
                    window_end_ms=end,
                    window_index=index,
                    fingerprint=layout.fingerprint,
                    model_name=None if model is None else model.name,
                    model_version=None if model is None else model.version,
                )
            )
    return records


class DriftConsumer:
    """One monitor's consumer: Kafka in, window records / alerts / metrics out, checkpoints on disk.

    ``on_output`` is called (in the loop's thread) after every step that closed a window or
    detected a concept drift. ``clock`` (monotonic seconds) drives idle timeouts, the checkpoint
    interval and metadata refreshes; ``wall_clock`` (epoch seconds) stamps alerts and metrics.
    ``model_registry``: the MLflow client layer for a ``models:/`` reference (default: one on
    ``MLFLOW_TRACKING_URI``); ``schema_registry``: the schema registry client of
    ``events.format: avro`` (default: one from the ``schema_registry`` settings).
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        registry: CollectorRegistry | None = None,
        on_output: Callable[[WindowOutput], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        serve_metrics: bool | None = None,
        model_registry: ModelRegistry | None = None,
        schema_registry: Any = None,
    ) -> None:
        self.config = config
        self.monitor = config.monitor
        self.on_output = on_output
        self.clock = clock
        self.wall_clock = wall_clock
        self.serve_metrics = config.metrics.enabled if serve_metrics is None else serve_metrics
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model: ModelVersion | None = None
        self.model_registry = model_registry
        if is_model_uri(self.monitor.reference):
            self.model_registry = model_registry or ModelRegistry()
            reference, self.model = self.model_registry.load(self.monitor.reference)
            log.info("reference: %s, profile %s", self.model, reference.fingerprint)
        else:
            reference = ReferenceProfile.load(self.monitor.reference)
        self.schema_registry = schema_registry
        check_serve_labels(config)
        self._use_reference(reference, None)
        #: late labels (a labels section): the labels topic, the join and the performance records
        self.labels: ServeLabels | None = None
        if self.monitor.labels is not None:
            m = self.model
            self.labels = ServeLabels(
                self.monitor,
                reference,
                max_event_bytes=config.kafka.max_event_bytes,
                clock=clock,
                wall_clock=wall_clock,
                model_name=None if m is None else m.name,
                model_version=None if m is None else m.version,
            )
        self.label_partitions: set[int] = set()
        self.label_offset: dict[int, int] = {}  # label partition -> next offset to read (this process)
        #: partition -> its concept detector and tracker (made at the partition's first event)
        self.concept: dict[int, tuple[ConceptDetector, ConceptTracker]] = {}
        self.metrics = Metrics(self.registry, self.monitor.monitor, _version(), active=False)
        size_s = None if self.monitor.window.kind == "count" else self.monitor.window.size_ms / 1000.0
        self.metrics.set_config(size_s)
        self.metrics.set_reference(self.reference.fingerprint, self.model)
        self._watcher: AliasWatcher | None = None
        self.store = StateStore(
            config.state.dir, self.monitor.monitor, reference.fingerprint, any_reference=self.model is not None
        )
        self.state_dir = self.store.dir
        self.lock = StateLock(self.state_dir)
        self.topic = config.kafka.topic
        self.partitions: set[int] = set()  # the partitions consumed (every one of the topic, once active)
        self.next_offset: dict[int, int] = {}  # partition -> next offset to read
        self.stats = RunStats()
        self._dirty = False
        self._last_checkpoint = clock()
        self._last_metadata = -math.inf
        self._consumer: Consumer | None = None
        self._publisher: Publisher | None = None
        self._overflowed = 0
        self.metrics_port: int | None = None

    # -- the reference (and the model version it belongs to) ------------------------------
    def _use_reference(self, reference: ReferenceProfile, previous: WindowManager | None) -> None:
        """Count and evaluate against ``reference`` from now on: its layout, a decoder for it, and empty
        windows (keeping the watermarks and frontier of ``previous``, if given)."""
        layout = Layout(reference, self.monitor.features.include)
        require_calibration(layout)
        self.reference, self.layout = reference, layout
        self.decoder = self._decoder(reference, layout)
        if previous is None:
            self.windows = WindowManager(self.monitor, layout, clock=self.clock)
        else:
            self.windows = previous.successor(self.monitor, layout)
        self._overflowed = 0

    def _decoder(self, reference: ReferenceProfile, layout: Layout) -> Any:
        max_bytes = self.config.kafka.max_event_bytes
        if self.monitor.events.format == "avro":
            from stream.avro import AvroDecoder, registry_client

            if self.schema_registry is None:
                assert self.config.schema_registry is not None  # (ServeConfig requires it with avro)
                self.schema_registry = registry_client(self.config.schema_registry)
            return AvroDecoder(
                self.monitor, reference, layout.features, self.schema_registry, max_bytes, wall_clock=self.wall_clock
            )
        return EventDecoder(self.monitor, reference, layout.features, max_bytes, wall_clock=self.wall_clock)

    def reference_state(self) -> dict[str, Any]:
        """Which reference a checkpoint's state belongs to."""
        m = self.model
        return {
            "fingerprint": self.reference.fingerprint,
            "model_name": None if m is None else m.name,
            "model_version": None if m is None else m.version,
        }

    def _same_reference(self, state: dict[str, Any]) -> bool:
        """Whether a checkpoint's state was counted against the reference in force (a checkpoint of the same
        profile from a file reference is: the monitor now names that profile through its model version)."""
        ref = state.get("reference") or {}
        mine = self.reference_state()
        if ref.get("fingerprint") != mine["fingerprint"]:
            return False
        return ref.get("model_version") in (None, mine["model_version"])

    def switch_reference(self, reference: ReferenceProfile, model: ModelVersion) -> bool:
        """Go on with another model version's profile (the alias moved): checkpoint the old version's
        state, close and publish every open window of it, start empty windows on the new profile with
        the same watermarks, checkpoint again. False (nothing changed) if the first checkpoint failed;
        the caller tries again after the next batch."""
        log.info("model switch: %s -> %s (profile %s)", self.model, model, reference.fingerprint)
        if self._dirty and not self.checkpoint("model switch"):
            return False
        closed = self.windows.flush()
        if closed:
            out = WindowOutput([], [], [])
            out.records.extend(self._emit(closed, out))
            self._publish(out)
        self.model = model
        self._use_reference(reference, self.windows)
        self.concept = {}
        self.store.fingerprint = reference.fingerprint
        self.metrics.set_reference(reference.fingerprint, model)
        if self.lock.held:
            self._dirty = True
            self.checkpoint("model switch")
        return True

    def _follow_alias(self) -> None:
        """At take-over: where the alias points now (a standby resolved it when it started)."""
        if self.model is None or self.model.alias is None or self.model_registry is None:
            return
        reference, model = self.model_registry.load(self.monitor.reference)
        if model.version != self.model.version or reference.fingerprint != self.reference.fingerprint:
            log.info("reference: %s now points at %s, profile %s", self.monitor.reference, model, reference.fingerprint)
            self.model = model
            self._use_reference(reference, None)
            self.store.fingerprint = reference.fingerprint
            self.metrics.set_reference(reference.fingerprint, model)

    def _retire(self, cp: Checkpoint) -> None:
        """Close the windows of a checkpoint of another model version with that version's profile, publish
        them, and go on from its offsets and watermarks under the version in force."""
        ref = cp.state["reference"]
        fingerprint, name, old_version = ref.get("fingerprint"), ref.get("model_name"), ref.get("model_version")
        if self.model is None or self.model_registry is None or name != self.model.name or old_version is None:
            raise ReferenceMismatchError(
                f"the checkpoint {cp.path} was written against reference {fingerprint} (model {name!r} version "
                f"{old_version!r}), not a version of {self.model.name if self.model else None!r}; refusing to resume "
                "(use a new state.dir)"
            )
        old_model = self.model_registry.resolve(f"models:/{name}/{old_version}")
        old_ref = self.model_registry.fetch_reference(old_model)
        if old_ref.fingerprint != fingerprint:
            raise ReferenceMismatchError(
                f"the checkpoint {cp.path} was written against {fingerprint}, but {old_model} now has profile "
                f"{old_ref.fingerprint}; refusing to close its windows with another profile"
            )
        old_layout = Layout(old_ref, self.monitor.features.include)
        old = WindowManager(self.monitor, old_layout, clock=self.clock)
        self._check_slots(cp, old_layout)
        old.restore(cp.state["windows"], cp.panes)
        closed = old.flush()
        log.info("checkpoint of %s, now %s: closing its %d open windows", old_model, self.model, len(closed))
        if closed:
            out = WindowOutput([], [], [])
            out.records.extend(self._emit(closed, out, old_layout, old_model))
            self._publish(out)
        self.windows = old.successor(self.monitor, self.layout)
        self.concept = {}
        self._dirty = True
        self.checkpoint("model switch")

    # -- state ----------------------------------------------------------------------------
    def _concept_for(self, partition: int) -> tuple[ConceptDetector, ConceptTracker]:
        got = self.concept.get(partition)
        if got is None:
            m, c = self.model, self.monitor.concept
            tracker = ConceptTracker(
                self.monitor,
                self.reference.fingerprint,
                None if m is None else m.name,
                None if m is None else m.version,
                segment={PARTITION_SEGMENT: str(partition)},
            )
            got = self.concept[partition] = (make_detector(c.detector, c.params), tracker)
        return got

    def _check_slots(self, cp: Checkpoint, layout: Layout) -> None:
        if cp.panes and cp.slots != layout.size:
            raise ConfigError(
                f"the checkpoint {cp.path} counts {cp.slots} bins per window, the monitor's features "
                f"{list(layout.features)} {layout.size}: did features.include change? Use a new state.dir"
            )

    def _restore(self, cp: Checkpoint) -> None:
        """Go on from a checkpoint: offsets, windows, concept detectors (a checkpoint of another model
        version: its windows are closed first, :meth:`_retire`)."""
        state = cp.state
        if state["topic"] != self.topic:
            raise CheckpointError(
                f"the checkpoint {cp.path} is of topic {state['topic']!r}, not kafka.topic={self.topic!r}"
            )
        self.next_offset = {int(p): int(o) for p, o in state["offsets"]}
        if not self._same_reference(state):  # (only with a models:/ reference: the store refuses it otherwise)
            self._retire(cp)
            return
        self._check_slots(cp, self.layout)
        self.windows.restore(state["windows"], cp.panes)
        self._overflowed = self.windows.router.overflowed
        if self.labels is not None:
            self.label_offset = self.labels.restore(state.get("labels"), cp.blob)
        self.concept = {}
        for p, saved in state["concept"]:
            _fresh, tracker = self._concept_for(int(p))
            try:
                self.concept[int(p)] = (restore(saved["detector"]), tracker)
            except SnapshotError as exc:  # (another river version: relearn rather than trust it)
                log.warning("partition %s: concept detector not restored, it starts afresh: %s", p, exc)
                continue
            tracker.restore(saved["tracker"])
        log.info("restored state: next offsets %s", dict(sorted(self.next_offset.items())))

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the panes."""
        return {
            "topic": self.topic,
            "offsets": [[p, o] for p, o in sorted(self.next_offset.items())],
            "windows": self.windows.snapshot(),
            "concept": [
                [p, {"detector": det.snapshot(), "tracker": tracker.snapshot()}]
                for p, (det, tracker) in sorted(self.concept.items())
            ],
            "reference": self.reference_state(),
            "labels": None if self.labels is None else self.labels.state(),
        }

    def checkpoint(self, reason: str) -> bool:
        """Flush outputs, write a checkpoint, then commit offsets. False if it could not be written
        (nothing is committed then; the next one writes what this one did not)."""
        if self._publisher is not None:
            self._publisher.flush()
        changed, dropped = self.windows.changes()
        try:
            path = self.store.save(
                self.state(),
                self.windows.panes,
                changed,
                dropped,
                self.layout.size,
                self.layout.fingerprint,
                None if self.labels is None else self.labels.snapshot(),
            )
        except CheckpointError as exc:
            self.metrics.checkpoints.labels(self.monitor.monitor, "failed").inc()
            log.error("checkpoint (%s) failed, offsets not committed; will retry: %s", reason, exc)
            return False
        self.windows.saved()
        log.debug(
            "checkpoint (%s) %s: %d bytes of panes%s in %.3f s",
            reason,
            path.name,
            self.store.last_bytes,
            " (new log)" if self.store.last_compacted else "",
            self.store.last_seconds,
        )
        self.metrics.checkpoints.labels(self.monitor.monitor, "ok").inc()
        self.metrics.last_checkpoint.labels(self.monitor.monitor).set(self.wall_clock())
        self.stats.checkpoints += 1
        self._dirty = False
        self._last_checkpoint = self.clock()
        self._commit()
        return True

    def _commit(self) -> None:
        if self._consumer is None:
            return
        offsets = [
            TopicPartition(self.topic, p, o) for p, o in sorted(self.next_offset.items()) if p in self.partitions
        ]
        if self.labels is not None:  # (the first label not released to the join: what a restart reads again)
            offsets += [
                TopicPartition(self.labels.topic, p, o)
                for p, o, _run in self.labels.merge.offsets()
                if p in self.label_partitions
            ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # the checkpoint already holds these offsets; the commit only helps other tools
            log.warning("offset commit failed (the checkpoint has the offsets): %s", exc)

    # -- partitions ---------------------------------------------------------------------------
    def _refresh_partitions(self) -> None:
        """Read the topic's partitions and consume those not consumed yet (all of them at take-over)."""
        assert self._consumer is not None
        self._last_metadata = self.clock()
        if self.labels is not None:
            self._refresh_label_partitions()
        try:
            md = self._consumer.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            log.warning("cannot read the partitions of %s (trying again): %s", self.topic, exc)
            return
        t = md.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            if not self.partitions:
                log.info("topic %s has no partitions (yet): %s", self.topic, None if t is None else t.error)
            return
        new = sorted(set(t.partitions) - self.partitions)
        if new:
            self.add_partitions(new)

    def add_partitions(self, partitions: Sequence[int]) -> None:
        """Consume these partitions from now on: each from the checkpoint's offset, else the group's
        committed offset, else the earliest."""
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p) for p in partitions]
        missing = [tp for tp in tps if tp.partition not in self.next_offset]
        committed: dict[int, int] = {}
        if missing:
            try:
                got = self._consumer.committed(missing, timeout=10)
                committed = {tp.partition: tp.offset for tp in got if tp.error is None and tp.offset >= 0}
            except KafkaException as exc:  # librdkafka looks it up itself then
                log.warning("cannot read the committed offsets of %s: %s", self.topic, exc)
                committed = {tp.partition: OFFSET_STORED for tp in missing}
        where = []
        for tp in tps:
            p = tp.partition
            if p in self.next_offset:
                tp.offset, how = self.next_offset[p], "checkpoint"
            elif p in committed:
                tp.offset, how = committed[p], "committed"
                if committed[p] >= 0:
                    self.next_offset[p] = committed[p]
            else:
                tp.offset, how = OFFSET_BEGINNING, "earliest"
            where.append(f"{p}@{tp.offset if tp.offset >= 0 else how} ({how})")
        self._assign(tps)
        self.partitions |= set(partitions)
        self.windows.assign(partitions)
        self.metrics.assigned.labels(self.monitor.monitor).set(len(self.partitions))
        log.info("consuming %s partitions %s", self.topic, ", ".join(where))

    def _assign(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        if self.partitions or self.label_partitions:
            self._consumer.incremental_assign(tps)
        else:
            self._consumer.assign(tps)

    def _refresh_label_partitions(self) -> None:
        """Consume the labels topic's partitions not consumed yet: each from the checkpoint's offset (the
        first label not released to the join), else the group's committed offset, else the earliest. An
        absent or empty labels topic holds nothing back (its partitions are not in the windows' watermark)."""
        assert self._consumer is not None and self.labels is not None
        topic = self.labels.topic
        try:
            md = self._consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            log.warning("cannot read the partitions of labels topic %s (trying again): %s", topic, exc)
            return
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            if not self.label_partitions:
                log.info("labels topic %s has no partitions (yet): %s", topic, None if t is None else t.error)
            return
        new = sorted(set(t.partitions) - self.label_partitions)
        if not new:
            return
        tps = [TopicPartition(topic, p) for p in new]
        missing = [tp for tp in tps if tp.partition not in self.label_offset]
        committed: dict[int, int] = {}
        if missing:
            try:
                got = self._consumer.committed(missing, timeout=10)
                committed = {tp.partition: tp.offset for tp in got if tp.error is None and tp.offset >= 0}
            except KafkaException as exc:
                log.warning("cannot read the committed offsets of %s: %s", topic, exc)
        where = []
        for tp in tps:
            p = tp.partition
            if p in self.label_offset:
                tp.offset, how = self.label_offset[p], "checkpoint"
            elif p in committed:
                tp.offset, how = committed[p], "committed"
            else:
                tp.offset, how = OFFSET_BEGINNING, "earliest"
            where.append(f"{p}@{tp.offset if tp.offset >= 0 else how} ({how})")
        self._assign(tps)
        self.label_partitions |= set(new)
        self.labels.merge.assign(new)
        log.info("consuming labels topic %s partitions %s", topic, ", ".join(where))

    # -- the loop ---------------------------------------------------------------------------
    def _wait_for_lock(self, stop: threading.Event) -> bool:
        """Take the state lock, standing by as long as another process holds it; False if stopped first."""
        t0 = time.monotonic()
        holder: str | None = None
        while not self.lock.try_acquire():
            now = self.lock.holder()
            if now != holder:
                log.info(
                    "standby: %s is held by %s; taking over when it lets go (streamdrift_active 0 until then)",
                    self.lock.path,
                    now,
                )
                holder = now
            if stop.wait(STANDBY_POLL_S):
                log.info("stopped while standing by")
                return False
        self.stats.standby_s = time.monotonic() - t0
        if holder is not None:
            log.info("took over %s after %.1f s as a standby", self.lock.path, self.stats.standby_s)
        return True

    def run(self, stop: threading.Event) -> RunStats:
        """Stand by until this process holds the state lock, then consume until ``stop`` is set; the
        active process always ends with a checkpoint, a commit and a close."""
        cfg = self.config
        server = None
        try:
            check_broker(cfg.kafka, self.topic)  # a wrong CA, password or address stops serve here, named
            if self.serve_metrics:
                m = cfg.metrics
                server, self.metrics_port = serve_http(self.registry, m.address, m.port, m.certfile, m.keyfile)
                self.stats.metrics_port = self.metrics_port
            if not self._wait_for_lock(stop):
                return self.stats
            self._follow_alias()
            self.metrics.activate()
            self._publisher = Publisher(
                cfg.kafka.producer_conf(),
                cfg.outputs.statistics_topic,
                cfg.outputs.alerts_topic,
                cfg.outputs.dead_letter_topic,
                cfg.outputs.statistics_file,
            )
            self._consumer = Consumer(cfg.kafka.consumer_conf(), logger=log)
            cp = self.store.load()
            if cp is not None:
                self._restore(cp)
            else:
                log.info("no checkpoint in %s: starting from the committed offsets", self.state_dir)
            self._refresh_partitions()
            if self.model is not None and self.model.alias is not None and self.model_registry is not None:
                self._watcher = AliasWatcher(
                    self.model_registry, self.monitor.reference, self.model, cfg.mlflow.poll_interval_s
                )
                self._watcher.start()
                log.info("following %s every %s s", self.monitor.reference, cfg.mlflow.poll_interval_s)
            switch: tuple[ReferenceProfile, ModelVersion] | None = None
            log.info("active: consuming %s (offsets committed as group %s)", self.topic, cfg.kafka.group_id)
            interval = cfg.state.checkpoint_interval_s
            batch, timeout = cfg.kafka.batch_size, cfg.kafka.poll_timeout_s
            while not stop.is_set():
                msgs = self._consumer.consume(batch, timeout)
                self.process(msgs)
                if self._watcher is not None:
                    switch = switch or self._watcher.take()
                    if switch is not None and self.switch_reference(*switch):
                        switch = None
                now = self.clock()
                if now - self._last_metadata >= (METADATA_REFRESH_S if self.partitions else STANDBY_POLL_S):
                    self._refresh_partitions()
                if self._dirty and now - self._last_checkpoint >= interval:
                    self.checkpoint("interval")
            self.checkpoint("shutdown")
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            try:
                if self._consumer is not None:
                    self._consumer.close()
            finally:
                if self._publisher is not None:
                    self._publisher.close()
                    self._publisher = None
                self._consumer = None
                if server is not None:
                    server.shutdown()
                    server.server_close()
                self.lock.release()
        return self.stats

    def process(self, msgs: Sequence[Message]) -> WindowOutput:
        """One step: a batch of messages (possibly empty) in, closed windows out.

        Per message only what every message needs is read (value, partition, Kafka timestamp:
        one ``map`` each); offsets are read for the last message of each partition and for
        dead letters.
        """
        t0 = time.perf_counter()
        mon = self.monitor.monitor
        data = list(msgs)
        errors = list(map(Message.error, data))
        if errors.count(None) != len(errors):
            data = [m for m, err in zip(data, errors, strict=True) if err is None]
            for err in errors:
                if err is None or err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
        out = WindowOutput([], [], [])
        counted = (0, 0, 0)
        label_msgs: list[Message] = []
        if data and self.label_partitions:
            data, label_msgs = self._split(data)
        if data:
            out, counted = self._process_data(data)
        if label_msgs:
            self._process_labels(label_msgs)
        closed = self.windows.advance()
        if closed:
            out.records.extend(self._emit(closed, out))
        if self.labels is not None:
            self._advance_labels(out)
        if out.records or out.concept:
            self._publish(out)
        if msgs:
            # the events' outcomes are counted once the step is done, together with its time, so a
            # scrape's event count and last-batch time describe the same moment
            m = self.metrics
            valid, invalid, late = counted
            m.events.labels(mon, "valid").inc(valid)
            if invalid:
                m.events.labels(mon, "invalid").inc(invalid)
            if late:
                m.events.labels(mon, "late").inc(late)
            m.last_batch.labels(mon).set(self.wall_clock())
            m.batch_seconds.labels(mon).observe(time.perf_counter() - t0)
        return out

    def _process_data(self, data: list[Message]) -> tuple[WindowOutput, tuple[int, int, int]]:
        """Decode, route and add a batch; returns the output and the (valid, invalid, late) counts."""
        mon = self.monitor.monitor
        st = self.stats
        st.batches += 1
        st.messages += len(data)
        values: list[bytes | None] = list(map(Message.value, data))
        if len(self.partitions) == 1:  # a topic of one partition: every message is of it (none read one by one)
            part_arr = np.full(len(data), next(iter(self.partitions)), dtype=np.int64)
        else:
            part_arr = np.fromiter(map(Message.partition, data), dtype=np.int64, count=len(data))  # (always set)
        # Kafka timestamps: event times too far ahead of theirs are rejected (and, if configured, they stand
        # in for missing event times)
        kts = [ts if ts_type != 0 and ts >= 0 else None for ts_type, ts in map(Message.timestamp, data)]
        cols, rejected = self.decoder.decode(values, kts)
        pub = self._publisher
        for r in rejected:
            m = data[r.index]
            if pub is not None:
                pub.dead_letter(
                    values[r.index], m.key(), r.reason, r.code, m.topic() or "", int(part_arr[r.index]), m.offset() or 0
                )
            self.metrics.dead_letters.labels(mon, r.code).inc()
        if rejected:
            st.invalid += len(rejected)
            log.debug("%d invalid events; first: %s", len(rejected), rejected[0].reason)
        # the last message of each partition in the batch (a partition's messages come in offset order)
        p0 = int(part_arr[0])
        if (part_arr == p0).all():  # the usual batch: one partition
            present, last_rev = np.array([p0]), np.zeros(1, dtype=np.int64)
        else:
            present, last_rev = np.unique(part_arr[::-1], return_index=True)
        valid_parts = part_arr if len(cols.rows) == len(data) else part_arr[np.asarray(cols.rows, dtype=np.int64)]
        res = self.windows.add(cols, valid_parts)  # (rows are positions in data, in order: all of them, or a subset)
        st.valid += res.n_added
        st.late += res.n_late
        if self.labels is not None:
            self.labels.add_predictions(cols, res.rows)
        over = self.windows.router.overflowed
        if over > self._overflowed:
            self.metrics.segments_overflow.labels(mon).inc(over - self._overflowed)
            self._overflowed = over
        out = WindowOutput([], self._concept(cols, valid_parts), [])
        if res.closed:
            out.records.extend(self._emit(res.closed, out))
        # next offsets and lag
        for p, i in zip(present.tolist(), (len(data) - 1 - last_rev).tolist(), strict=True):
            o = data[i].offset() or 0
            if o + 1 > self.next_offset.get(p, -1):
                self.next_offset[p] = o + 1
        self._dirty = True
        self._lag(set(present.tolist()))
        return out, (res.n_added, len(rejected), res.n_late)

    def _split(self, data: list[Message]) -> tuple[list[Message], list[Message]]:
        """(prediction messages, label messages) of a batch, each in the order consumed."""
        assert self.labels is not None
        topics = list(map(Message.topic, data))
        lt = self.labels.topic
        if lt not in topics:
            return data, []
        if topics.count(lt) == len(topics):
            return [], data
        return [m for m, t in zip(data, topics, strict=True) if t != lt], [
            m for m, t in zip(data, topics, strict=True) if t == lt
        ]

    def _process_labels(self, msgs: list[Message]) -> None:
        """Decode label messages (bad ones to the dead-letter topic, counted) and buffer them for the join."""
        assert self.labels is not None
        mon = self.monitor.monitor
        n = len(msgs)
        values: list[bytes | None] = list(map(Message.value, msgs))
        parts = np.fromiter(map(Message.partition, msgs), dtype=np.int64, count=n)
        offs = np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=n)  # (set on every consumed message)
        kts = [ts if ts_type != 0 and ts >= 0 else None for ts_type, ts in map(Message.timestamp, msgs)]
        rejected = self.labels.add_labels(values, parts, offs, kts)
        pub = self._publisher
        for r in rejected:
            m = msgs[r.index]
            if pub is not None:
                pub.dead_letter(
                    values[r.index], m.key(), r.reason, r.code, m.topic() or "", int(parts[r.index]), int(offs[r.index])
                )
            self.metrics.dead_letters.labels(mon, r.code).inc()
        if rejected:
            log.debug("%d invalid label events; first: %s", len(rejected), rejected[0].reason)
        self.stats.label_messages += n
        self.stats.label_invalid += len(rejected)
        self._dirty = True
        if self._consumer is not None:
            for p in np.unique(parts).tolist():
                try:
                    _lo, hi = self._consumer.get_watermark_offsets(TopicPartition(self.labels.topic, p), cached=True)
                except KafkaException:
                    continue
                if hi is not None and hi >= 0:
                    nxt = int(offs[parts == p][-1]) + 1
                    self.metrics.set_lag(self.labels.topic, p, max(0, hi - nxt))

    def _advance_labels(self, out: WindowOutput) -> None:
        """Labels released to the join and processed up to the windows' close frontier: the performance
        records (and concept detections on the joined labels) due, and the join's metrics."""
        from detectors.performance import FEATURE

        assert self.labels is not None
        wl = self.labels.tracker.join.label_watermark
        recs = self.labels.advance(self.windows.frontier)
        if self.labels.tracker.join.label_watermark != wl:
            self._dirty = True
        perf = [r for r in recs if r.get("feature") == FEATURE]
        concept = [r for r in recs if r.get("feature") != FEATURE]
        if perf:
            out.records.extend(perf)
            self.metrics.performance_records(perf)
            self.stats.performance_records += len(perf)
        if concept:
            out.concept.extend(concept)
            c = self.monitor.concept
            self.metrics.concept.labels(self.monitor.monitor, c.detector, c.stream).inc(len(concept))
            self.stats.concept_detections += len(concept)
        self.metrics.set_label_counts(self.labels.counts)

    def _concept(self, cols: EventColumns, partitions: npt.NDArray[np.int64]) -> list[dict[str, Any]]:
        """Each partition's events, in offset order, through that partition's concept detector (with a labels
        section the concept detector runs on the joined labels instead: :mod:`stream.service.labels`)."""
        if not self.monitor.concept_active or self.monitor.concept_on_labels or len(cols) == 0:
            return []
        vals = concept_values(cols, self.monitor)
        times = cols.time_ms
        p0 = int(partitions[0])
        if (partitions == p0).all():
            groups = [(p0, vals, times)]
        else:
            groups = [(p, vals[partitions == p], times[partitions == p]) for p in np.unique(partitions).tolist()]
        out = []
        for p, v, t in groups:
            det, tracker = self._concept_for(p)
            for x, ti in zip(v.tolist(), t.tolist(), strict=True):
                if math.isnan(x):
                    continue
                rec = tracker.update(det, x, ti)
                if rec is not None:
                    out.append(rec)
        if out:
            c = self.monitor.concept
            self.metrics.concept.labels(self.monitor.monitor, c.detector, c.stream).inc(len(out))
            self.stats.concept_detections += len(out)
        return out

    def _emit(
        self,
        closed: list[ClosedWindow],
        out: WindowOutput,
        layout: Layout | None = None,
        model: ModelVersion | None = None,
    ) -> list[dict[str, Any]]:
        """Records of closed windows (of another reference's ``layout`` and ``model``: a switch)."""
        cfg = self.monitor
        if layout is None:
            layout, model = self.layout, self.model
        records = closed_records(layout, cfg, closed, model)
        mon = cfg.monitor
        self.metrics.windows_closed.labels(mon).inc(len(closed))
        self.metrics.last_window_end.labels(mon).set(max(w.end_ms for w in closed) / 1000.0)
        self.metrics.last_window_closed.labels(mon).set(self.wall_clock())
        self.metrics.window_records(records)
        silent = self.windows.silent_segments(self.config.metrics.segment_ttl_windows)
        if silent:  # no events for segment_ttl_windows windows: their last verdicts would go on firing
            self.metrics.remove_segments(segment_label(s) for s in silent)
            log.info(
                "segments without events for %d windows, verdicts removed: %s",
                self.config.metrics.segment_ttl_windows,
                [segment_label(s) for s in silent],
            )
        self.stats.windows_closed += len(closed)
        return records

    def _publish(self, out: WindowOutput) -> None:
        now_ms = int(self.wall_clock() * 1000)
        drifted = [r for r in out.records if r["drift"]] + out.concept
        out.alerts = [make_alert(r, now_ms) for r in drifted]
        mon = self.monitor.monitor
        for a in out.alerts:
            self.metrics.alerts.labels(mon, a["severity"]).inc()
        self.stats.records += len(out.records) + len(out.concept)
        self.stats.alerts += len(out.alerts)
        if self._publisher is not None:
            self._publisher.records(out.records + out.concept)
            self._publisher.alerts(out.alerts)
        self._dirty = True
        if self.on_output is not None:
            self.on_output(out)

    def _lag(self, partitions: set[int]) -> None:
        if self._consumer is None:
            return
        for p in partitions:
            try:
                _lo, hi = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                continue
            if hi is None or hi < 0:
                continue
            self.metrics.set_lag(self.topic, p, max(0, hi - self.next_offset[p]))


def run_consumer(
    config: ServeConfig,
    stop: threading.Event,
    *,
    on_output: Callable[[WindowOutput], None] | None = None,
    registry: CollectorRegistry | None = None,
    serve_metrics: bool | None = None,
) -> RunStats:
    """Run the consumer loop in this thread until ``stop`` is set (the demo's entry point)."""
    return DriftConsumer(config, registry=registry, on_output=on_output, serve_metrics=serve_metrics).run(stop)
