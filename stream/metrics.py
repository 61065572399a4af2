"""The consumer's Prometheus metrics, on an injected registry (``streamdrift_`` prefix).

Rules and the dashboard in ``deploy/`` query these names; a contract test checks that every
name a rule uses is in :data:`METRIC_NAMES`. A verdict that does not exist (too little data) is
NaN, never 0. A scrape only reads.

A process exports only the series of what it currently owns, so that an alert cannot keep
firing on a verdict nobody computes any more. A standby (a ``serve`` process waiting for the
state lock, :mod:`stream.service.consumer`) exports ``streamdrift_active 0`` and its build, nothing else:
no verdict, lag, staleness or reference series; :meth:`Metrics.activate` adds them when it takes
over. The active process removes the verdict series (one child of each per-segment verdict gauge
per (segment, feature, statistic)) of a segment that fell silent (:meth:`Metrics.remove_segments`).
This class is the one owner of those children: they are made (:meth:`Metrics.window_records`,
:meth:`Metrics.set_lag`) and removed only here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from detectors.evaluate import SEVERITY_LEVEL, segment_label
from stream.decode import REASON_CODES

log = logging.getLogger("streamdrift.metrics")

#: every metric name this module exports, as it appears in a scrape (counters with ``_total``;
#: the histogram also exports ``_bucket``/``_sum``/``_count`` series under its name)
METRIC_NAMES: tuple[str, ...] = (
    "streamdrift_statistic_value",
    "streamdrift_statistic_p_value",
    "streamdrift_drift_detected",
    "streamdrift_drift_severity",
    "streamdrift_threshold",
    "streamdrift_effect_size",
    "streamdrift_events_total",
    "streamdrift_dead_letters_total",
    "streamdrift_windows_closed_total",
    "streamdrift_alerts_total",
    "streamdrift_concept_drift_detections_total",
    "streamdrift_last_window_end_timestamp_seconds",
    "streamdrift_last_window_closed_timestamp_seconds",
    "streamdrift_window_size_seconds",
    "streamdrift_consumer_lag_messages",
    "streamdrift_batch_processing_seconds",
    "streamdrift_last_batch_timestamp_seconds",
    "streamdrift_checkpoints_total",
    "streamdrift_last_checkpoint_timestamp_seconds",
    "streamdrift_segments_overflow_total",
    "streamdrift_assigned_partitions",
    "streamdrift_active",
    "streamdrift_build_info",
    "streamdrift_reference_info",
    "streamdrift_performance",
    "streamdrift_performance_drop",
    "streamdrift_performance_threshold",
    "streamdrift_performance_severity",
    "streamdrift_label_joins_total",
    "streamdrift_labels_waiting",
)

#: the series of late labels: exported only by a monitor with a labels section
LABEL_METRIC_NAMES = tuple(n for n in METRIC_NAMES if n.startswith(("streamdrift_performance", "streamdrift_label")))

#: the reason label of dead letters: every code a rejection can have (children exist from the start)
DEAD_LETTER_REASONS = REASON_CODES
_STAT = ("monitor", "segment", "feature", "statistic")
_NAN = math.nan


class Metrics:
    """The consumer's metrics for one monitor.

    ``active=False``: a standby's (only ``streamdrift_active 0`` and the build) until :meth:`activate`.
    """

    def __init__(
        self, registry: CollectorRegistry, monitor: str, version: str = "0.1.0", *, active: bool = True
    ) -> None:
        self.registry = registry
        self.monitor = monitor
        self.is_active = False
        self._window_size_s: float | None = None
        # (segment, feature, statistic) -> the per-statistic gauge children: a window sets them
        # all, and looking each up through labels() costs more than setting it
        self._stat_children: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        # (segment, feature, statistic) -> every (gauge, label values) child exported for it: what
        # removing its verdict removes (every per-segment gauge registers through _verdict_child)
        self._verdict_series: dict[tuple[str, str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}
        self._lag_children: dict[tuple[str, int], Any] = {}  # (topic, partition) -> lag child
        r = registry
        self.statistic_value = Gauge(
            "streamdrift_statistic_value", "statistic of the last closed window (NaN: no verdict)", _STAT, registry=r
        )
        self.statistic_p_value = Gauge(
            "streamdrift_statistic_p_value", "p-value of the last closed window (NaN: undefined)", _STAT, registry=r
        )
        self.drift_detected = Gauge(
            "streamdrift_drift_detected", "1 if the last closed window drifted (NaN: no verdict)", _STAT, registry=r
        )
        self.drift_severity = Gauge(
            "streamdrift_drift_severity", "0 ok, 1 warning, 2 critical (NaN: no verdict)", _STAT, registry=r
        )
        self.effect = Gauge(
            "streamdrift_effect_size",
            "effect size of the last closed window: PSI, KS D, Cramér's V (chi2), unseen share (NaN: no verdict)",
            _STAT,
            registry=r,
        )
        self.threshold = Gauge(
            "streamdrift_threshold",
            "effect size from which the last closed window would have been flagged: the larger of the effect "
            "floor and the calibrated critical value at its size (NaN: no verdict)",
            _STAT,
            registry=r,
        )
        self.events = Counter("streamdrift_events", "events by outcome", ("monitor", "outcome"), registry=r)
        self.dead_letters = Counter(
            "streamdrift_dead_letters", "messages sent to the dead-letter topic", ("monitor", "reason"), registry=r
        )
        self.windows_closed = Counter("streamdrift_windows_closed", "windows closed", ("monitor",), registry=r)
        self.alerts = Counter("streamdrift_alerts", "alerts published", ("monitor", "severity"), registry=r)
        self.concept = Counter(
            "streamdrift_concept_drift_detections",
            "concept-drift detections",
            ("monitor", "detector", "stream"),
            registry=r,
        )
        self.last_window_end = Gauge(
            "streamdrift_last_window_end_timestamp_seconds",
            "event time of the last closed window's end",
            ("monitor",),
            registry=r,
        )
        self.last_window_closed = Gauge(
            "streamdrift_last_window_closed_timestamp_seconds",
            "wall-clock time when the last window closed (the process start until one closes)",
            ("monitor",),
            registry=r,
        )
        self.window_size = Gauge(
            "streamdrift_window_size_seconds", "window size (NaN for count windows)", ("monitor",), registry=r
        )
        self.lag = Gauge(
            "streamdrift_consumer_lag_messages",
            "high watermark minus next offset",
            ("monitor", "topic", "partition"),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "streamdrift_batch_processing_seconds",
            "time to process one consumed batch",
            ("monitor",),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.last_batch = Gauge(
            "streamdrift_last_batch_timestamp_seconds",
            "wall-clock time when the consumer last finished a batch of messages (NaN until the first)",
            ("monitor",),
            registry=r,
        )
        self.checkpoints = Counter("streamdrift_checkpoints", "checkpoints", ("monitor", "outcome"), registry=r)
        self.last_checkpoint = Gauge(
            "streamdrift_last_checkpoint_timestamp_seconds",
            "time of the last good checkpoint",
            ("monitor",),
            registry=r,
        )
        self.segments_overflow = Counter(
            "streamdrift_segments_overflow", "events routed to the __other__ segment", ("monitor",), registry=r
        )
        self.assigned = Gauge("streamdrift_assigned_partitions", "partitions assigned", ("monitor",), registry=r)
        self.active = Gauge(
            "streamdrift_active",
            "1 in the active serve process of the monitor (it holds the state lock and consumes), 0 in a standby",
            ("monitor",),
            registry=r,
        )
        self.active.labels(monitor).set(0)
        self.build_info = Gauge("streamdrift_build_info", "build information", ("version",), registry=r)
        self.build_info.labels(version).set(1)
        self._label_metrics(r)
        # which reference (and model version) the statistics are computed against: one series per
        # monitor, replaced on a switch; join it onto any series with
        #   ... * on (monitor) group_left (model_name, model_version) streamdrift_reference_info
        self.reference_info = Gauge(
            "streamdrift_reference_info",
            "1 for the reference the monitor evaluates against now (model_name, model_version: the MLflow model "
            "version it belongs to; empty for a reference file)",
            ("monitor", "reference_fingerprint", "model_name", "model_version"),
            registry=r,
        )
        self._reference_labels: tuple[str, str, str, str] | None = None
        self._reference: tuple[str, Any] | None = None
        if active:
            self.activate()

    def activate(self) -> None:
        """This process is the active one from now on: export its series (children that exist from the
        start, so a scrape shows zeros rather than nothing; the staleness clock starts now)."""
        if self.is_active:
            return
        self.is_active = True
        m = self.monitor
        for outcome in ("valid", "invalid", "late"):
            self.events.labels(m, outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(m, reason)
        for outcome in ("ok", "failed"):
            self.checkpoints.labels(m, outcome)
        self.windows_closed.labels(m)
        self.segments_overflow.labels(m)
        self.assigned.labels(m).set(0)
        self.last_window_end.labels(m).set(_NAN)
        # the time it became active, not NaN: a consumer that never closes a window must still go stale
        self.last_window_closed.labels(m).set(time.time())
        self.last_checkpoint.labels(m).set(_NAN)
        self.last_batch.labels(m).set(_NAN)
        self.window_size.labels(m).set(_NAN if self._window_size_s is None else self._window_size_s)
        if self._reference is not None:
            self.set_reference(*self._reference)
        self.active.labels(m).set(1)

    def set_config(self, window_size_s: float | None) -> None:
        """The window size, once at start (exported while active)."""
        self._window_size_s = window_size_s
        if self.is_active:
            self.window_size.labels(self.monitor).set(_NAN if window_size_s is None else window_size_s)

    def set_reference(self, fingerprint: str, model: Any = None) -> None:
        """The reference in force (``model``: a :class:`stream.modelref.ModelVersion` or None); the series
        of the previous one is removed, so there is always exactly one (while active)."""
        self._reference = (fingerprint, model)
        if not self.is_active:
            return
        labels = (
            self.monitor,
            fingerprint,
            "" if model is None else model.name,
            "" if model is None else model.version,
        )
        if self._reference_labels is not None and self._reference_labels != labels:
            self.reference_info.remove(*self._reference_labels)
        self.reference_info.labels(*labels).set(1)
        self._reference_labels = labels

    def window_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Set the per-statistic gauges from a closed window's records."""
        m = self.monitor
        children = self._stat_children
        for rec in records:
            key = (segment_label(rec["segment"]), rec["feature"], rec["statistic"])
            got = children.get(key)
            if got is None:
                labels = (m, *key)
                got = children[key] = (
                    self._verdict_child(key, self.statistic_value, labels),
                    self._verdict_child(key, self.statistic_p_value, labels),
                    self._verdict_child(key, self.drift_detected, labels),
                    self._verdict_child(key, self.drift_severity, labels),
                    self._verdict_child(key, self.effect, labels),
                    self._verdict_child(key, self.threshold, labels),
                )
            value_g, p_g, drift_g, severity_g, effect_g, threshold_g = got
            value, p, drift = rec["value"], rec["p_value"], rec["drift"]
            effect, threshold = rec.get("effect"), rec.get("threshold")
            value_g.set(_NAN if value is None else float(value))
            effect_g.set(_NAN if effect is None else float(effect))
            threshold_g.set(_NAN if threshold is None else float(threshold))
            p_g.set(_NAN if p is None else float(p))
            drift_g.set(_NAN if drift is None else float(bool(drift)))
            level = SEVERITY_LEVEL.get(rec["severity"], -1)
            severity_g.set(_NAN if level < 0 else float(level))

    def _verdict_child(self, key: tuple[str, str, str], gauge: Gauge, labels: tuple[str, ...]) -> Any:
        """The child of a per-segment verdict gauge for ``labels``, registered under ``key`` (segment,
        feature, statistic) so that removing that verdict removes it too."""
        self._verdict_series.setdefault(key, []).append((gauge, labels))
        return gauge.labels(*labels)

    def _remove_verdicts(self, keys: Iterable[tuple[str, str, str]]) -> None:
        for key in list(keys):
            for gauge, labels in self._verdict_series.pop(key, []):
                gauge.remove(*labels)
            self._stat_children.pop(key, None)

    @property
    def verdict_segments(self) -> set[str]:
        """Segment labels whose verdict series this process exports."""
        return {seg for seg, _f, _s in self._verdict_series}

    def remove_segments(self, segments: Iterable[str]) -> None:
        """Remove the verdict series of these segments (by label, e.g. ``country=de``; ``__all__``)."""
        gone = set(segments)
        self._remove_verdicts([k for k in self._verdict_series if k[0] in gone])

    # -- late labels (detectors.labelled) -------------------------------------------------------------
    def _label_metrics(self, r: CollectorRegistry) -> None:
        perf = ("monitor", "segment", "metric")
        self.performance = Gauge(
            "streamdrift_performance",
            "model performance of the last window emitted (accuracy, ..., label_coverage, positive_rate; NaN: "
            "undefined or too few labels)",
            perf,
            registry=r,
        )
        self.performance_drop = Gauge(
            "streamdrift_performance_drop",
            "how much worse than the reference the last window emitted is (NaN: no verdict)",
            perf,
            registry=r,
        )
        self.performance_threshold = Gauge(
            "streamdrift_performance_threshold",
            "the drop from which the last window emitted would have been flagged (NaN: no verdict)",
            perf,
            registry=r,
        )
        self.performance_severity = Gauge(
            "streamdrift_performance_severity", "0 ok, 1 warning, 2 critical (NaN: no verdict)", perf, registry=r
        )
        self.label_joins = Counter(
            "streamdrift_label_joins",
            "what became of predictions and labels: joined, label_timeout, label_orphan, duplicate_prediction, "
            "unjoinable (no id or no valid score); overflow (over labels.budget) is also counted as a timeout "
            "or an orphan",
            ("monitor", "outcome"),
            registry=r,
        )
        self.labels_waiting = Gauge(
            "streamdrift_labels_waiting",
            "predictions waiting for their label (kind=prediction), labels held for the predictions (kind=label), "
            "windows whose performance waits for labels (kind=window)",
            ("monitor", "kind"),
            registry=r,
        )
        self._joins_seen: dict[str, int] = {}

    def performance_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Set the performance gauges from a window's performance records (other records are skipped)."""
        from detectors.performance import FEATURE

        m = self.monitor
        for rec in records:
            if rec["feature"] != FEATURE:
                continue
            key = (segment_label(rec["segment"]), FEATURE, rec["statistic"])
            children = self._stat_children.get(key)
            if children is None:
                labels = (m, key[0], key[2])
                children = self._stat_children[key] = tuple(
                    self._verdict_child(key, g, labels)
                    for g in (
                        self.performance,
                        self.performance_drop,
                        self.performance_threshold,
                        self.performance_severity,
                    )
                )
            value_g, drop_g, threshold_g, severity_g = children
            level = SEVERITY_LEVEL.get(rec["severity"], -1)
            for gauge, v in (
                (value_g, rec["value"]),
                (drop_g, rec["effect"]),
                (threshold_g, rec["threshold"]),
                (severity_g, None if rec["drift"] is None or level < 0 else level),
            ):
                gauge.set(_NAN if v is None else float(v))

    def set_label_counts(self, counts: Mapping[str, int]) -> None:
        """The join's counts (:attr:`detectors.labelled.PerformanceTracker.counts`): cumulative counters
        advance by what is new since the last call; the waiting gauges are set."""
        m = self.monitor
        for outcome in ("joined", "label_timeout", "label_orphan", "duplicate_prediction", "unjoinable", "overflow"):
            now = int(counts.get(outcome, 0))
            before = self._joins_seen.get(outcome)
            if before is None or now >= before:
                self.label_joins.labels(m, outcome).inc(now - (before or 0))
            self._joins_seen[outcome] = now  # (a restored, smaller count: counted on from there)
        self.labels_waiting.labels(m, "prediction").set(int(counts.get("pending", 0)))
        self.labels_waiting.labels(m, "label").set(int(counts.get("held", 0)))
        if "windows_waiting" in counts:
            self.labels_waiting.labels(m, "window").set(int(counts["windows_waiting"]))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        child = self._lag_children.get((topic, partition))
        if child is None:
            child = self._lag_children[(topic, partition)] = self.lag.labels(self.monitor, topic, str(partition))
        child.set(lag)

    def remove_lag(self, topic: str, partitions: Iterable[int]) -> None:
        """Remove the lag series of partitions this process no longer owns."""
        for p in partitions:
            if self._lag_children.pop((topic, p), None) is not None:
                self.lag.remove(self.monitor, topic, str(p))


def serve_http(
    registry: CollectorRegistry, address: str, port: int, certfile: str | None = None, keyfile: str | None = None
) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``address:port`` (0 = a free port), over HTTPS when a certificate is given.

    Return the server and its port.
    """
    server, _thread = start_http_server(port, addr=address, registry=registry, certfile=certfile, keyfile=keyfile)
    actual = int(server.server_port)
    log.info("metrics on %s://%s:%d/metrics", "https" if certfile else "http", address, actual)
    return server, actual
