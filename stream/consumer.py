"""The consumer loop of ``streamdrift serve``.

consume a batch -> decode to columns (bad records to the dead-letter topic, counted) ->
route by segment and update histograms (vectorised) and the concept detector -> close the
windows the watermark passed -> evaluate -> publish records/alerts and set metrics ->
every ``state.checkpoint_interval``: flush outputs, write the checkpoints, commit offsets.

Exactly-the-same-statistics after a crash: each partition's checkpoint holds its window
panes and watermark together with its next offset (partition 0's also the close frontier and
the detector states), outputs are flushed before they are written, and Kafka offsets are
committed only after them (why a crash between two files is safe: :mod:`stream.checkpoint`).
On assignment each partition is sought to its checkpoint's offset (else the committed one),
so whatever was processed after the last checkpoint is processed again from the same state.
Re-sent records of a re-closed window are identical and keyed identically.

Scaling: N processes of one monitor in one consumer group share one ``state.dir``. State
follows the partitions: on revoke a process checkpoints, then lets go of the partitions
(their locks); on assignment it locks each new partition and loads its newest checkpoint.
The owner of partition 0 is the *closer*: the only one that closes time windows and emits
their records and alerts, summing its own panes with the other partitions' panes read from
their owners' newest checkpoints (see :mod:`stream.windows`), and the only one that runs the
concept detector (over the events of its partitions: with one consumer, the whole stream).
The others learn the close frontier from partition 0's checkpoint and prune their panes.
Count windows are per partition and closed by the partition's owner.

A reference that names an MLflow model version (``reference: models:/NAME/VERSION`` or
``models:/NAME@ALIAS``, :mod:`stream.modelref`): every record, alert and checkpoint says which
version it belongs to, and ``streamdrift_reference_info`` carries the version as labels. With
an alias, a background thread polls it every ``mlflow.poll_interval``; when it moves, the loop
switches between two batches (:meth:`DriftConsumer.switch_reference`): checkpoint the old
version's state, close every open window of the old version (published with its version, even
if it is not complete), start empty windows on the new profile with the same watermarks and close
frontier, checkpoint again. Nothing is mixed: a window's events are all counted against one
version (a window cut by the switch is reported once per version, each with its own events).
A checkpoint of another version found when a partition is assigned (the alias moved while serve
was down, or it crashed in the middle of a switch) is closed the same way, from that version's
profile, before its events go on under the current one. With several processes sharing the
topic, each switches its own partitions when it polls; the closer treats a foreign partition
still on another version as not yet known (windows wait for it) and its open panes are not part
of the old version's last windows: run one active process per monitor (standbys are fine) when
following an alias.

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
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig, is_model_uri
from detectors.engine import ConceptTracker
from detectors.evaluate import evaluate_window, make_alert, require_calibration, segment_label, window_records
from detectors.events import EventColumns, concept_values
from detectors.exceptions import ReferenceMismatchError, SnapshotError
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from detectors.sequential import ConceptDetector, make_detector, restore
from stream.checkpoint import CheckpointStore, partition_dir, prepare_state_dir
from stream.connect import check_broker
from stream.decode import EventDecoder
from stream.exceptions import CheckpointError
from stream.metrics import Metrics, serve_http
from stream.modelref import AliasWatcher, ModelRegistry, ModelVersion
from stream.publish import Publisher
from stream.settings import ServeConfig
from stream.windows import ClosedWindow, ForeignPartition, WindowManager

log = logging.getLogger("streamdrift.consumer")

#: the owner of this partition closes the windows (and runs the concept detector)
CLOSER = 0
#: how often other processes' checkpoints are looked at (seconds)
SHARED_REFRESH_S = 0.5


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
    metrics_port: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)


def closed_records(
    layout: Layout, config: MonitorConfig, closed: Sequence[ClosedWindow], model: ModelVersion | None = None
) -> list[dict[str, Any]]:
    """Window statistic records of closed windows (evaluation, correction, verdicts): the segments of
    one window are evaluated together (one family with ``statistics.family: window``); ``model``: the
    model version the reference belongs to."""
    by_window: dict[tuple[int, int], list[ClosedWindow]] = {}
    for w in closed:
        by_window.setdefault((w.start_ms, w.end_ms), []).append(w)
    records: list[dict[str, Any]] = []
    for (start, end), members in by_window.items():
        verdicts = evaluate_window(layout, [(w.counts, w.raw) for w in members], config.statistics)
        for w, results in zip(members, verdicts, strict=True):
            records.extend(
                window_records(
                    results,
                    monitor=config.monitor,
                    segment=w.segment,
                    window_start_ms=start,
                    window_end_ms=end,
                    fingerprint=layout.fingerprint,
                    model_name=None if model is None else model.name,
                    model_version=None if model is None else model.version,
                )
            )
    return records


class DriftConsumer:
    """One monitor's consumer: Kafka in, window records / alerts / metrics out, checkpoints on disk.

    ``on_output`` is called (in the loop's thread) after every step that closed a window or
    detected a concept drift. ``clock`` (monotonic seconds) drives idle timeouts and the
    checkpoint interval; ``wall_clock`` (epoch seconds) stamps alerts and metrics.
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
        self._use_reference(reference, None)
        self.detector: ConceptDetector | None = None
        self.tracker: ConceptTracker | None = None
        self._fresh_concept()
        self.metrics = Metrics(self.registry, self.monitor.monitor, _version())
        size_s = None if self.monitor.window.kind == "count" else self.monitor.window.size_ms / 1000.0
        self.metrics.set_config(size_s)
        self.metrics.set_reference(self.reference.fingerprint, self.model)
        self._watcher: AliasWatcher | None = None
        self._stale: dict[int, dict[str, Any]] = {}  # assigned partition -> its checkpoint of another version
        self.state_dir = prepare_state_dir(config.state.dir)
        self.stores: dict[int, CheckpointStore] = {}  # partition -> its checkpoints
        self.topic = config.kafka.topic
        self.topic_partitions: list[int] | None = None  # every partition of the topic, once known
        self._idle_written: dict[int, bool] = {}  # owned partition -> idle flag in its newest checkpoint
        self._peeked: dict[int, tuple[int, dict[str, Any]]] = {}  # other processes' newest checkpoints
        self._foreign_seq: dict[int, int] = {}
        self._last_refresh = -math.inf
        self.next_offset: dict[int, int] = {}  # partition -> next offset to read
        self.assigned: set[int] = set()
        self.stats = RunStats()
        self._dirty = False
        self._last_checkpoint = clock()
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
        if self.assigned and self._dirty and not self.checkpoint("model switch"):
            return False
        closed = self.windows.flush()
        if closed:
            out = WindowOutput([], [], [])
            out.records.extend(self._emit(closed, out))
            self._publish(out)
        self.model = model
        self._use_reference(reference, self.windows)
        self._fresh_concept()
        for store in self.stores.values():
            store.fingerprint = reference.fingerprint
        self.metrics.set_reference(reference.fingerprint, model)
        if self.assigned:
            self._dirty = True
            self.checkpoint("model switch")
        return True

    def _retire_stale(self) -> None:
        """Close the windows of checkpoints of another model version (found on assignment) with that
        version's profile, publish them, and go on from their offsets and watermarks under this one."""
        stale, self._stale = self._stale, {}
        groups: dict[tuple[Any, Any], dict[int, dict[str, Any]]] = {}
        for p, snap in stale.items():
            ref = snap["reference"]
            groups.setdefault((ref.get("fingerprint"), ref.get("model_version")), {})[p] = snap
        for (fingerprint, old_version), snaps in sorted(groups.items(), key=lambda kv: str(kv[0])):
            name = next(iter(snaps.values()))["reference"].get("model_name")
            where = ", ".join(str(self._store(p).dir) for p in sorted(snaps))
            if self.model is None or self.model_registry is None or name != self.model.name or old_version is None:
                raise ReferenceMismatchError(
                    f"the checkpoints in {where} were written against reference {fingerprint} (model {name!r} "
                    f"version {old_version!r}), not a version of {self.model.name if self.model else None!r}; refusing "
                    "to resume (use a new state.dir)"
                )
            old_model = self.model_registry.resolve(f"models:/{name}/{old_version}")
            old_ref = self.model_registry.fetch_reference(old_model)
            if old_ref.fingerprint != fingerprint:
                raise ReferenceMismatchError(
                    f"the checkpoints in {where} were written against {fingerprint}, but {old_model} now has "
                    f"profile {old_ref.fingerprint}; refusing to close its windows with another profile"
                )
            old_layout = Layout(old_ref, self.monitor.features.include)
            old = WindowManager(self.monitor, old_layout, clock=self.clock)
            old.closer = CLOSER in snaps
            for p in sorted(snaps):
                shared = snaps[p].get("shared")
                if p == CLOSER and shared is not None:
                    old.load_shared(shared["windows"])
                old.load_partition(p, snaps[p]["windows"])
            closed = old.flush()
            log.info(
                "partitions %s: checkpoint of %s, now %s: closing its %d open windows",
                sorted(snaps),
                old_model,
                self.model,
                len(closed),
            )
            if closed:
                out = WindowOutput([], [], [])
                out.records.extend(self._emit(closed, out, old_layout, old_model))
                self._publish(out)
            for p in snaps:
                if p in old.max_time:
                    self.windows.max_time[p] = old.max_time[p]
            self.windows.learn_frontier(old.frontier)
        self._dirty = True
        self.checkpoint_quietly("model switch")  # (in the assignment callback: no commit)

    # -- state ----------------------------------------------------------------------------
    def _store(self, partition: int) -> CheckpointStore:
        store = self.stores.get(partition)
        if store is None:
            d = partition_dir(self.state_dir, partition)
            any_ref = self.model is not None
            store = CheckpointStore(d, self.monitor.monitor, self.reference.fingerprint, any_reference=any_ref)
            self.stores[partition] = store
        return store

    def _fresh_concept(self) -> None:
        if self.monitor.concept_active:
            self.detector = make_detector(self.monitor.concept.detector, self.monitor.concept.params)
            m = self.model
            self.tracker = ConceptTracker(
                self.monitor,
                self.reference.fingerprint,
                None if m is None else m.name,
                None if m is None else m.version,
            )

    def _check_topic(self, state: dict[str, Any], where: Path) -> None:
        if state["topic"] != self.topic:
            raise CheckpointError(
                f"the checkpoint in {where} is of topic {state['topic']!r}, not kafka.topic={self.topic!r}"
            )

    def _take(self, partition: int) -> None:
        """Own a partition: lock its store, load its newest good checkpoint (partition 0's carries the
        closer's shared state: frontier, segment router, concept detector)."""
        store = self._store(partition)
        store.lock(wait_s=self.config.state.lock_timeout_s)
        snap = store.load()
        if snap is None:
            log.info("partition %d: no checkpoint in %s: starting from the committed offsets", partition, store.dir)
            return
        self._check_topic(snap, store.dir)
        if snap["offset"] is not None:
            self.next_offset[partition] = int(snap["offset"])
        self._idle_written[partition] = bool(snap["idle"])
        if not self._same_reference(snap):  # (only with a models:/ reference: the store refuses it otherwise)
            self._stale[partition] = snap
            return
        if partition == CLOSER and snap.get("shared") is not None:
            shared = snap["shared"]
            self.windows.load_shared(shared["windows"])
            if self.detector is not None and self.tracker is not None and shared.get("detector") is not None:
                try:
                    self.detector = restore(shared["detector"])
                    self.tracker.restore(shared["tracker"])
                except SnapshotError as exc:  # (another river version: relearn rather than trust it)
                    log.warning("concept detector not restored, it starts afresh: %s", exc)
                    self._fresh_concept()
        self.windows.load_partition(partition, snap["windows"])
        log.info("partition %d: restored state, next offset %s", partition, snap["offset"])

    def partition_state(self, partition: int) -> dict[str, Any]:
        """What one partition's checkpoint holds (partition 0's also the closer's shared state)."""
        state: dict[str, Any] = {
            "topic": self.topic,
            "partition": partition,
            "offset": self.next_offset.get(partition),
            "idle": self.windows.is_idle(partition),
            "windows": self.windows.partition_snapshot(partition),
            "reference": self.reference_state(),
        }
        if partition == CLOSER:
            state["shared"] = {
                "windows": self.windows.shared_snapshot(),
                "detector": self.detector.snapshot() if self.detector is not None else None,
                "tracker": self.tracker.snapshot() if self.tracker is not None else None,
            }
        return state

    def checkpoint(self, reason: str) -> bool:
        """Flush outputs, write partition 0's checkpoint (if owned), then the other owned partitions',
        then commit offsets. False if a file could not be written (nothing is committed then)."""
        if self._publisher is not None:
            self._publisher.flush()
        written: dict[int, bool] = {}
        try:
            for p in sorted(self.assigned):  # partition 0 first: see stream.checkpoint
                state = self.partition_state(p)
                path = self._store(p).save(state)
                written[p] = state["idle"]
                log.debug("checkpoint (%s) %s", reason, path)
        except CheckpointError as exc:
            self.metrics.checkpoints.labels(self.monitor.monitor, "failed").inc()
            log.error("checkpoint (%s) failed, offsets not committed; will retry: %s", reason, exc)
            return False
        self._idle_written.update(written)
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
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(self.next_offset.items()) if p in self.assigned]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # the checkpoint already holds these offsets; the commit only helps other tools
            log.warning("offset commit failed (the checkpoint has the offsets): %s", exc)

    # -- other processes' partitions --------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether other processes own some of the topic's partitions (or it is not known yet)."""
        return self.topic_partitions is None or not set(self.topic_partitions) <= self.assigned

    def refresh_shared(self, force: bool = False) -> None:
        """Bring in what other processes' checkpoints say, at most every ``SHARED_REFRESH_S``: the
        closer reads the foreign partitions' watermarks and panes, the others partition 0's frontier."""
        now = self.clock()
        if not force and now - self._last_refresh < SHARED_REFRESH_S:
            return
        self._last_refresh = now
        if self.topic_partitions is None and self._consumer is not None:
            try:
                md = self._consumer.list_topics(self.topic, timeout=5)
                t = md.topics.get(self.topic)
                if t is not None and t.error is None and t.partitions:
                    self.topic_partitions = sorted(t.partitions)
            except KafkaException as exc:
                log.warning("cannot read the partitions of %s (windows wait): %s", self.topic, exc)
        if not self.assigned:
            return
        if not self.windows.closer:
            got = self._peek(CLOSER)
            if got is not None and got[1].get("shared") is not None:
                before = self.windows.frontier
                self.windows.learn_frontier(got[1]["shared"]["windows"]["frontier"])
                if self.windows.frontier != before:  # the closer closed windows: this monitor is not stale
                    self.metrics.last_window_closed.labels(self.monitor.monitor).set(self.wall_clock())
            return
        if self.topic_partitions is None:
            self.windows.foreign = None  # every partition of the topic must be known before a window closes
            return
        current = self.windows.foreign or {}
        foreign: dict[int, ForeignPartition] = {}
        for q in self.topic_partitions:
            if q in self.assigned:
                continue
            got = self._peek(q)
            old = current.get(q)
            if got is None:
                foreign[q] = ForeignPartition(None, False)
            elif old is not None and self._foreign_seq.get(q) == got[0]:
                foreign[q] = old
            elif not self._same_reference(got[1]):  # its owner has not switched model versions yet: wait
                foreign[q] = ForeignPartition(None, False)
            else:
                foreign[q] = self.windows.foreign_partition(got[1]["windows"], bool(got[1]["idle"]))
                self._foreign_seq[q] = got[0]
            self.windows.learn_frontier(foreign[q].pruned_to)
        self.windows.foreign = foreign

    def _peek(self, partition: int) -> tuple[int, dict[str, Any]] | None:
        """(generation, state) of another process's newest good checkpoint of ``partition``, or None;
        read again only when a newer file appeared."""
        store = self._store(partition)
        seq = store.newest_seq()
        if seq is None:
            return None
        cached = self._peeked.get(partition)
        if cached is not None and cached[0] == seq:
            return cached
        got = store.peek()
        if got is None:
            return None
        self._check_topic(got[1], store.dir)
        self._peeked[partition] = got
        return got

    # -- rebalance callbacks ---------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = sorted({tp.partition for tp in partitions if tp.topic == self.topic})
        for p in mine:  # partition 0 first: its router and frontier before the others' panes
            self._take(p)
        for tp in partitions:
            if tp.topic == self.topic and tp.partition in self.next_offset:
                tp.offset = self.next_offset[tp.partition]
        self.assigned = set(mine)
        self.windows.assign(self.assigned)
        self.windows.closer = CLOSER in self.assigned
        if self._stale:
            self._retire_stale()
        self.windows.foreign = None  # until refresh_shared has read the topic and the others' checkpoints
        self.topic_partitions = None
        self._last_refresh = -math.inf
        self._overflowed = self.windows.router.overflowed
        self.metrics.assigned.labels(self.monitor.monitor).set(len(self.assigned))
        log.info("assigned %s", [(tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", [tp.partition for tp in partitions])
        if self._dirty:
            self.checkpoint("revoke")
        self._drop(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost %s (no commit)", [tp.partition for tp in partitions])
        if self._dirty:
            # safe: this process still holds the partitions' locks, so their new owner reads this file
            self.checkpoint_quietly("lost")
        self._drop(partitions)

    def checkpoint_quietly(self, reason: str) -> None:
        saved = self._consumer
        self._consumer = None  # snapshot without commit
        try:
            self.checkpoint(reason)
        finally:
            self._consumer = saved

    def _drop(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget revoked/lost partitions (their checkpoints have them) and let their new owner lock them."""
        gone = {tp.partition for tp in partitions if tp.topic == self.topic}
        self.windows.revoke(gone)
        for p in gone:
            self.next_offset.pop(p, None)
            self._idle_written.pop(p, None)
            store = self.stores.get(p)
            if store is not None:
                store.unlock()
        if CLOSER in gone and CLOSER in self.assigned:
            self.windows.closer = False
            self._fresh_concept()  # partition 0's checkpoint has the detector for its next owner
            # the new closer exports the verdicts from now on: an alert must not keep firing on ours
            self.metrics.clear_verdicts()
            self.windows.forget_segment_windows()
        self.metrics.remove_lag(self.topic, gone)
        self.assigned -= gone
        self.metrics.assigned.labels(self.monitor.monitor).set(len(self.assigned))

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> RunStats:
        """Consume until ``stop`` is set; always end with a checkpoint, a commit and a close."""
        cfg = self.config
        server = None
        try:
            check_broker(cfg.kafka, self.topic)  # a wrong CA, password or address stops serve here, named
            if self.serve_metrics:
                m = cfg.metrics
                server, self.metrics_port = serve_http(self.registry, m.address, m.port, m.certfile, m.keyfile)
                self.stats.metrics_port = self.metrics_port
            self._publisher = Publisher(
                cfg.kafka.producer_conf(),
                cfg.outputs.statistics_topic,
                cfg.outputs.alerts_topic,
                cfg.outputs.dead_letter_topic,
                cfg.outputs.statistics_file,
            )
            self._consumer = Consumer(cfg.kafka.consumer_conf(), logger=log)
            if self.model is not None and self.model.alias is not None and self.model_registry is not None:
                self._watcher = AliasWatcher(
                    self.model_registry, self.monitor.reference, self.model, cfg.mlflow.poll_interval_s
                )
                self._watcher.start()
                log.info("following %s every %s s", self.monitor.reference, cfg.mlflow.poll_interval_s)
            switch: tuple[ReferenceProfile, ModelVersion] | None = None
            self._consumer.subscribe(
                [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            log.info("consuming %s as group %s", self.topic, cfg.kafka.group_id)
            interval = cfg.state.checkpoint_interval_s
            batch, timeout = cfg.kafka.batch_size, cfg.kafka.poll_timeout_s
            while not stop.is_set():
                msgs = self._consumer.consume(batch, timeout)
                self.refresh_shared()
                self.process(msgs)
                if self._watcher is not None:
                    switch = switch or self._watcher.take()
                    if switch is not None and self.switch_reference(*switch):
                        switch = None
                if self.shared and self._idle_changed():
                    self._dirty = True  # the closer must learn that an owned partition went idle (or woke up)
                if self._dirty and self.clock() - self._last_checkpoint >= interval:
                    self.checkpoint("interval")
            if self.assigned:
                self.checkpoint("shutdown")
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            try:
                if self._consumer is not None:
                    self._dirty = False  # the final checkpoint is written; close() must not write another
                    self._consumer.close()
            finally:
                if self._publisher is not None:
                    self._publisher.close()
                    self._publisher = None
                self._consumer = None
                if server is not None:
                    server.shutdown()
                    server.server_close()
                for store in self.stores.values():
                    store.unlock()
        return self.stats

    def _idle_changed(self) -> bool:
        return any(self.windows.is_idle(p) != self._idle_written.get(p) for p in self.assigned)

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
        if data:
            out, counted = self._process_data(data)
        closed = self.windows.advance()
        if closed:
            out.records.extend(self._emit(closed, out))
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
        part_arr = np.fromiter(map(Message.partition, data), dtype=np.int64, count=len(data))  # always set on a message
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
        partitions = set(present.tolist())
        valid_parts = part_arr if len(cols.rows) == len(data) else part_arr[np.asarray(cols.rows, dtype=np.int64)]
        res = self.windows.add(cols, valid_parts)  # (rows are positions in data, in order: all of them, or a subset)
        st.valid += res.n_added
        st.late += res.n_late
        over = self.windows.router.overflowed
        if over > self._overflowed:
            self.metrics.segments_overflow.labels(mon).inc(over - self._overflowed)
            self._overflowed = over
        out = WindowOutput([], self._concept(cols), [])
        if res.closed:
            out.records.extend(self._emit(res.closed, out))
        # next offsets and lag
        for p, i in zip(present.tolist(), (len(data) - 1 - last_rev).tolist(), strict=True):
            o = data[i].offset() or 0
            if o + 1 > self.next_offset.get(p, -1):
                self.next_offset[p] = o + 1
        self._dirty = True
        self._lag(partitions)
        return out, (res.n_added, len(rejected), res.n_late)

    def _concept(self, cols: EventColumns) -> list[dict[str, Any]]:
        det, tracker = self.detector, self.tracker
        if det is None or tracker is None or len(cols) == 0 or not self.windows.closer:
            return []  # the closer (partition 0's owner) runs the detector over its partitions' events
        vals = concept_values(cols, self.monitor).tolist()
        times = cols.time_ms.tolist()
        out = []
        for x, t in zip(vals, times, strict=True):
            if math.isnan(x):
                continue
            rec = tracker.update(det, x, t)
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
