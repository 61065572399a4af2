"""What the Spark jobs share: the monitor, decoding + binning on executors, records out.

Executors decode events with :func:`detectors.events.decode_events` (the reference
validation semantics) and turn every valid event into its histogram slot indices with
:meth:`detectors.histogram.Layout.flat_indices`, so Spark aggregates exactly the counts
the local engine and the consumer compute. The driver only ever sees count vectors,
segment keys and (for the sequential detectors) the one-dimensional concept stream.

Layering: ``jobs`` imports ``detectors`` and the *library* modules of ``stream`` — the
consumer's fast decoder (:mod:`stream.decode`), the metrics (:mod:`stream.metrics`), the
settings and their rendering to librdkafka keys (:mod:`stream.settings`), record I/O
(:mod:`stream.records`, the one record schema and NaN rule) and the dead-letter format
(:mod:`stream.publish`) — never the service, the CLI, the demo or the report (``stream.service``,
``stream.cli``, ``stream.demo``, ``stream.report``; tests/unit/test_layering.py checks it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detectors.config import MonitorConfig
from detectors.engine import OTHER_SEGMENT, WindowSpec
from detectors.events import EventColumns, concept_values, decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.settings import ServeConfig

#: rows decoded at a time on an executor
CHUNK = 20_000


class JobError(ValueError):
    """A bad argument or input of a Spark job; the message names it."""


@dataclass
class Monitor:
    """The monitor config, its reference and layout, plus the raw YAML (for the foreign sections)."""

    config: MonitorConfig
    reference: ReferenceProfile
    layout: Layout
    raw: dict[str, Any]
    path: Path | None = None  # the YAML file it was loaded from

    @classmethod
    def load(cls, path: str | Path) -> Monitor:
        p = Path(path).absolute()
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise JobError(f"--config: cannot read {p}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise JobError(f"--config: {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise JobError(f"--config: {p}: the top level must be a mapping of settings")
        config = MonitorConfig.from_mapping(data, base_dir=p.parent)
        reference = ReferenceProfile.load(config.reference)
        return cls(config, reference, Layout(reference, config.features.include), data, p)

    def settings(self) -> ServeConfig:
        """The kafka, outputs and metrics sections, validated as ``streamdrift serve`` validates them
        (``STREAMDRIFT_<SECTION>__<KEY>`` overrides included); a missing kafka section is an error."""
        return ServeConfig.from_mapping(self.raw, base_dir=self.path.parent if self.path else None)

    def section(self, name: str) -> dict[str, Any]:
        """A foreign section (kafka, outputs, spark, ...) with STREAMDRIFT_<SECTION>__<KEY> overrides."""
        sec = dict(self.raw.get(name) or {})
        prefix = f"STREAMDRIFT_{name.upper()}__"
        for k, v in os.environ.items():
            if k.startswith(prefix):
                sec[k[len(prefix) :].lower()] = v
        return sec

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec.from_config(self.config)

    @property
    def segment_fields(self) -> tuple[str, ...]:
        return self.config.events.segment_fields

    @property
    def overall(self) -> bool:
        """Every event also counts in segment ``{}`` (as in :class:`detectors.engine.SegmentRouter`)."""
        return self.config.segments.overall or not self.segment_fields


# -- decoding on executors -------------------------------------------------------------------------
def parse_json_value(raw: bytes | str | None) -> Any:
    """A Kafka value or JSON-lines line as an object; undecodable text is kept, so validation rejects it."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.rstrip("\n")


@dataclass
class Decoded:
    """One chunk of events after validation: columns plus per-event slot indices."""

    cols: EventColumns
    seq: np.ndarray  # input position of each valid event
    slots: np.ndarray  # (n, features) absolute slot indices
    rejected: list[tuple[int, str]]  # (input position, reason)


def decode_chunk(
    monitor: Monitor, rows: Sequence[Any], seqs: Sequence[int], kafka_ts: Sequence[int | None] | None = None
) -> Decoded:
    cols, errors = decode_events(rows, monitor.config, monitor.reference, monitor.layout.features, kafka_ts)
    n = len(cols)
    seq = np.asarray(seqs, dtype=np.int64)[np.asarray(cols.rows, dtype=np.int64)] if n else np.zeros(0, np.int64)
    slots = monitor.layout.flat_indices(cols.features, n).reshape(n, -1)
    return Decoded(cols, seq, slots, [(int(seqs[i]), msg) for i, msg in errors])


def chunks(it: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


@dataclass
class Tally:
    """What the decoding of one partition accepted and rejected (its first error: (position, reason))."""

    valid: int = 0
    rejected: int = 0
    first_error: tuple[int, str] | None = None


def decoded_chunks(monitor: Monitor, items: Iterable[tuple[Any, int, Any]], tally: Tally) -> Iterator[Decoded]:
    """The partition's (row, position, Kafka timestamp) items decoded a chunk at a time; the chunks with
    at least one valid event, the counts in ``tally``."""
    for chunk in chunks(items):
        rows = [c[0] for c in chunk]
        seqs = [c[1] for c in chunk]
        kts = [c[2] for c in chunk] if any(c[2] is not None for c in chunk) else None
        d = decode_chunk(monitor, rows, seqs, kts)
        if d.rejected:
            tally.rejected += len(d.rejected)
            e = min(d.rejected)
            tally.first_error = e if tally.first_error is None else min(tally.first_error, e)
        if len(d.cols):
            tally.valid += len(d.cols)
            yield d


def concept_stream(monitor: Monitor, d: Decoded) -> np.ndarray | None:
    if not monitor.config.concept_active or monitor.config.concept_on_labels or len(d.cols) == 0:
        return None
    return concept_values(d.cols, monitor.config)


# -- applyInPandasWithState ------------------------------------------------------------------------
def stateful_batch(
    pdfs: Iterator[Any],
    state: Any,
    kind: Any,
    fingerprint: str,
    step: Callable[[Any, Any, int], list[Any]],
    wake: Callable[[Any], int | None],
) -> list[Any]:
    """The frame of every ``applyInPandasWithState`` function of the jobs: the group's state restored
    (``kind.from_bytes(saved, fingerprint)``, or a new ``kind(fingerprint)`` when it has none), this
    call's rows concatenated (None without any), ``step`` at the operator's watermark, a timeout just
    before the next instant ``wake`` names (Spark calls again once its watermark passes it), the state
    saved (``to_bytes``); returns ``step``'s output."""
    import warnings

    import pandas as pd

    # pyspark pads these functions' output with all-null rows and concatenates (its own FutureWarning)
    warnings.filterwarnings("ignore", "The behavior of DataFrame concatenation with empty", FutureWarning)
    st = kind.from_bytes(state.get[0], fingerprint) if state.exists else kind(fingerprint)
    frames = [p for p in pdfs if len(p)]
    rows = pd.concat(frames, ignore_index=True) if frames else None
    watermark = int(state.getCurrentWatermarkMs())
    out = step(st, rows, watermark)
    due = wake(st)
    if due is not None:
        state.setTimeoutTimestamp(max(due - 1, watermark, 1))
    state.update((st.to_bytes(),))
    return out


def start_query(spark: Any, frame: Any, checkpoint: str, trigger_ms: int, name: str, writer: Any) -> Any:
    """Start a streaming query of ``frame`` into ``writer`` (``foreachBatch``), triggered every
    ``trigger_ms``, checkpointed in ``checkpoint``. Its state gets one shuffle partition: the state is
    keyed by the monitor alone (the default 200 would run 199 empty state-store tasks per batch). A
    query keeps the value it started with (Spark records it in the checkpoint), so the session's own
    setting is put back at once."""
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "1")
    try:
        return (
            frame.writeStream.outputMode("append")
            .option("checkpointLocation", checkpoint)
            .trigger(processingTime=f"{trigger_ms} milliseconds")
            .queryName(name)
            .foreachBatch(writer)
            .start()
        )
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


# -- segments --------------------------------------------------------------------------------------
def route_segments(
    monitor: Monitor, first_seen: Mapping[tuple[str, ...], Any]
) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Raw segment key -> reported key: the first ``max_segments`` keys by first appearance keep
    their own, later ones share ``__other__`` (:class:`detectors.engine.SegmentRouter`).

    ``first_seen`` maps each key to a sortable "time of first appearance"; the jobs use
    ``(event time, input position)`` of the key's first event.
    """
    cap = monitor.config.segments.max_segments
    other = tuple(OTHER_SEGMENT for _ in monitor.segment_fields)
    ordered = sorted(first_seen, key=lambda k: first_seen[k])
    return {k: (k if i < cap else other) for i, k in enumerate(ordered)}


def segment_dict(monitor: Monitor, key: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(monitor.segment_fields, key, strict=True)) if key else {}
