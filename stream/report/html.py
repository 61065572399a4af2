"""``streamdrift report``: one self-contained HTML drift report from window statistic records.

Sources
    * a records file, the backfill's output (``--records``, JSON lines or Parquet);
    * the statistics topic over a time range (``--topic``, ``--since``/``--until``): the
      partitions are assigned (no consumer group), each starts at ``offsets_for_times(since)``
      and is read up to the high watermark of the fetch responses (partition EOF), never
      up to a ListOffsets(latest) answer. ``--since``/``--until`` select by the Kafka
      message timestamp, half-open ``[since, until)``.

What the page shows (plotly, with plotly.js inlined once, so it opens without a network)
    * a summary: per feature the worst severity, the first drifted window, the number of
      drifted windows, the largest statistics and the smallest adjusted p-value; then a map of
      features by windows coloured by the worst verdict, and the runs of consecutive drifted
      windows with the largest effect of each statistic that drifted;
    * per feature the effect sizes over windows (PSI; KS D; Cramér's V for chi-square; the
      share of never-seen categories) with each window's threshold (calibrated at its size,
      see :mod:`detectors.evaluate`) and the critical levels drawn, the adjusted p-values on a
      log axis with ``statistics.false_alarm_rate`` (the axis reaches the smallest p-value; one
      below 1e-300, 0 included, is a marker "< 1e-300"), and drifted windows shaded by severity.
      Windows without a verdict (too few events) are gaps, not zeros;
    * for one window (``--window``, default the most drifted) the reference vs window shares
      of events on one pair of labelled axes: overlaid bars over a numeric feature's coarse PSI
      bins, grouped bars over a categorical's buckets. Reference proportions come from the
      profile (``--reference``, or the monitor config's ``reference``); the window's histogram
      is recomputed with :mod:`detectors` from the events file (``--events`` with ``--config``).
      Without them the section says what is missing instead of drawing anything.

Every record carries its window's threshold; the critical levels and the false-alarm rate come
from the monitor config (``--config``) when given, and are left out otherwise (the records do
not carry them), which the page says.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detectors.config import MonitorConfig
from detectors.evaluate import SEVERITY_LEVEL, WINDOW_STATISTICS, flag_rates, parse_iso_ms, segment_label
from detectors.events import decode_events, parse_time_ms
from detectors.exceptions import InputError, ReferenceMismatchError
from detectors.histogram import Layout, coarse_counts
from detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from stream.exceptions import ConfigError, InputFileError, StreamError
from stream.inputs import read_events
from stream.modelref import load_reference
from stream.records import read_records, write_text
from stream.report.performance import performance_html, split_performance
from stream.settings import load_monitor, load_yaml

REQUIRED_FIELDS = ("monitor", "segment", "feature", "statistic", "severity", "window_start", "window_end")
SEVERITY_COLOR = {"ok": "#2e7d32", "warning": "#f09000", "critical": "#c62828", "insufficient_data": "#9e9e9e"}
STAT_TITLE = {"psi": "PSI", "ks": "KS D", "chi2": "Cramér's V", "unseen": "unseen share"}
#: p-values below this (0 included: a p-value can underflow) are drawn at it as a "< 1e-300" marker; every
#: other p-value is drawn where it is, the log axis reaching down to the smallest
P_MARK = 1e-300


# -- loading --------------------------------------------------------------------------
def check_records(records: Sequence[Any], source: str) -> list[dict[str, Any]]:
    """Records as dicts; a record without a required field is an error naming it."""
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise InputFileError(f"{source}: record {i + 1} is not a JSON object")
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            raise InputFileError(f"{source}: record {i + 1} is not a window statistic record (no {missing})")
        if not isinstance(rec["segment"], Mapping):
            raise InputFileError(f"{source}: record {i + 1}: segment must be an object, got {rec['segment']!r}")
        out.append(dict(rec))
    return out


def load_records(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"--records: {p} does not exist")
    return check_records(read_records(p), str(p))


@dataclass
class TopicRead:
    records: list[dict[str, Any]]
    skipped: int  # messages in range whose value is not a JSON window statistic record
    messages: int  # messages in the time range


def read_topic(
    bootstrap: str,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    conf: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> TopicRead:
    """Every record of ``topic`` with a Kafka timestamp in ``[since_ms, until_ms)``.

    Partitions are assigned directly; each is read until the fetch responses say it is at
    the high watermark (partition EOF), which is right on Apache Kafka and on the embedded
    broker alike.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": "streamdrift-report",  # required by librdkafka; nothing is committed
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **dict(conf or {}),
    }
    consumer = Consumer(settings)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=min(timeout_s, 10.0))
        except KafkaException as exc:
            raise StreamError(f"--topic: cannot read metadata of {topic!r} from {bootstrap}: {exc}") from exc
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            why = tmeta.error if tmeta is not None and tmeta.error is not None else "no partitions"
            raise StreamError(f"--topic: topic {topic!r} is not available on {bootstrap} ({why})")
        parts = [TopicPartition(topic, p) for p in sorted(tmeta.partitions)]
        if since_ms is not None:
            asked = [TopicPartition(topic, tp.partition, since_ms) for tp in parts]
            parts = consumer.offsets_for_times(asked, timeout=min(timeout_s, 10.0))
            # offset -1 (no message at or after `since`) is OFFSET_END: nothing to read there
        else:
            parts = [TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in parts]
        consumer.assign(parts)
        pending = {tp.partition for tp in parts}
        records: list[dict[str, Any]] = []
        skipped = messages = 0
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise StreamError(
                    f"--topic: partitions {sorted(pending)} of {topic!r} not read to their end "
                    f"within {timeout_s:.0f}s (raise --timeout)"
                )
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise StreamError(f"--topic: error reading {topic!r}: {err}")
                _kind, ts = msg.timestamp()
                if (since_ms is not None and ts < since_ms) or (until_ms is not None and ts >= until_ms):
                    continue
                messages += 1
                try:
                    value = json.loads(msg.value() or b"")
                    records.extend(check_records([value], f"{topic}[{msg.partition()}]@{msg.offset()}"))
                except (json.JSONDecodeError, UnicodeDecodeError, InputFileError):
                    skipped += 1
        return TopicRead(records, skipped, messages)
    finally:
        consumer.close()


# -- selection and summary ---------------------------------------------------------------
def _ms(iso: str) -> int:
    return parse_iso_ms(iso)


def _display_time(iso: str) -> str:
    """'2026-01-01 00:05:00' (UTC) for axes and tables."""
    return datetime.fromtimestamp(_ms(iso) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plot_time(iso: str) -> str:
    return datetime.fromtimestamp(_ms(iso) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_segment(text: str) -> str:
    """``k=v,k2=v2`` (any order) as the canonical segment label; ``__all__`` as is."""
    text = text.strip()
    if text in ("", "__all__"):
        return "__all__"
    pairs = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--segment: {part!r} is not k=v (example: --segment country=de,device=ios)")
        pairs[k.strip()] = v.strip()
    return segment_label(pairs)


def select_records(
    records: Sequence[dict[str, Any]], segment: str | None, monitor: str | None
) -> tuple[str, str, list[dict[str, Any]]]:
    """The monitor, segment label and records of that monitor and segment."""
    if not records:
        raise InputFileError("no window statistic records to report on")
    monitors = sorted({str(r["monitor"]) for r in records})
    if monitor is None:
        if len(monitors) > 1:
            raise ConfigError(f"--monitor: the records hold several monitors {monitors}; choose one")
        monitor = monitors[0]
    elif monitor not in monitors:
        raise ConfigError(f"--monitor: no records of monitor {monitor!r} (present: {monitors})")
    mine = [r for r in records if r["monitor"] == monitor]
    labels: list[str] = []
    for r in mine:
        lab = segment_label(r["segment"])
        if lab not in labels and r["statistic"] in WINDOW_STATISTICS:
            labels.append(lab)
    if not labels:
        raise InputFileError(f"monitor {monitor!r} has no window statistic records (psi, ks, chi2)")
    if segment is None:
        label = "__all__" if "__all__" in labels else labels[0]
    else:
        label = parse_segment(segment)
        if label not in labels:
            raise ConfigError(f"--segment: no records for segment {label!r} (present: {labels[:20]})")
    return monitor, label, [r for r in mine if segment_label(r["segment"]) == label]


@dataclass(frozen=True)
class Thresholds:
    """Levels drawn on the charts besides each record's own threshold; ``None`` = not known (not drawn)."""

    psi_critical: float | None
    ks_critical: float | None
    chi2_critical: float | None
    unseen_critical: float | None
    false_alarm_rate: float | None
    source: str

    @classmethod
    def from_config(cls, config: MonitorConfig) -> Thresholds:
        s = config.statistics
        return cls(
            s.psi.critical,
            s.ks.critical_statistic,
            s.chi2.critical_cramers_v,
            s.unseen.critical_share,
            s.false_alarm_rate,
            "the records (each window's threshold) and the monitor config (critical levels, false-alarm rate)",
        )

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> Thresholds:
        return cls(
            None,
            None,
            None,
            None,
            None,
            "the records (each window's threshold; pass --config to draw the critical levels and the false-alarm rate)",
        )


@dataclass
class FeatureSummary:
    feature: str
    worst: str = "insufficient_data"
    first_drift: str | None = None
    drifted_windows: int = 0
    windows: int = 0
    windows_no_verdict: int = 0
    max_value: dict[str, float] = field(default_factory=dict)  # statistic -> max (effect size for chi2)
    min_p_adjusted: float | None = None


def effect(rec: Mapping[str, Any]) -> float | None:
    """The value charted for a record: PSI, KS D, or Cramér's V for chi-square (as the verdict computes it)."""
    if "effect" in rec:
        e = rec["effect"]
        return None if e is None else float(e)
    v = rec.get("value")  # a record of an earlier version: no effect field
    if v is None:
        return None
    if rec["statistic"] == "chi2":
        total = (rec.get("n_reference") or 0) + (rec.get("n_window") or 0)
        return float(math.sqrt(float(v) / total)) if total > 0 else None
    return float(v)


def window_records_of(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["statistic"] in WINDOW_STATISTICS]


#: a window: (window_start, window_end, window_index). The index tells apart count windows whose
#: times tie (None in records written before it existed)
WindowKey = tuple[str, str, int | None]


def window_key(r: Mapping[str, Any]) -> WindowKey:
    return (r["window_start"], r["window_end"], r.get("window_index"))


def _window_order(w: WindowKey) -> tuple[int, int, int]:
    return (_ms(w[0]), _ms(w[1]), -1 if w[2] is None else w[2])


def window_labels(windows: Sequence[WindowKey]) -> list[str]:
    """Axis labels of ``windows``: the start (UTC), after ``#index`` where starts tie (count windows)."""
    starts = Counter(w[0] for w in windows)
    return [(f"#{w[2]} " if starts[w[0]] > 1 and w[2] is not None else "") + _display_time(w[0]) for w in windows]


def summarize(records: Sequence[dict[str, Any]]) -> list[FeatureSummary]:
    """Per feature, in order of first appearance."""
    out: dict[str, FeatureSummary] = {}
    per_window: dict[tuple[str, WindowKey], list[dict[str, Any]]] = {}
    for r in window_records_of(records):
        per_window.setdefault((r["feature"], window_key(r)), []).append(r)
        s = out.setdefault(r["feature"], FeatureSummary(r["feature"]))
        if SEVERITY_LEVEL.get(r["severity"], -1) > SEVERITY_LEVEL[s.worst]:
            s.worst = r["severity"]
        e = effect(r)
        if e is not None:
            s.max_value[r["statistic"]] = max(e, s.max_value.get(r["statistic"], -math.inf))
        q = r.get("p_value_adjusted")
        if q is not None and (s.min_p_adjusted is None or q < s.min_p_adjusted):
            s.min_p_adjusted = float(q)
    for (feature, (start, _end, _index)), recs in sorted(
        per_window.items(), key=lambda kv: (kv[0][0], _window_order(kv[0][1]))
    ):
        s = out[feature]
        s.windows += 1
        if all(r["severity"] == "insufficient_data" for r in recs):
            s.windows_no_verdict += 1
        if any(r.get("drift") for r in recs):
            s.drifted_windows += 1
            if s.first_drift is None:
                s.first_drift = start
    return list(out.values())


@dataclass
class DriftWindow:
    start: str
    end: str
    worst: str
    hits: list[dict[str, Any]]  # the drifted records
    score: tuple[int, float] = (0, 0.0)
    index: int | None = None  # window_index

    @property
    def key(self) -> WindowKey:
        return (self.start, self.end, self.index)


def drift_windows(records: Sequence[dict[str, Any]]) -> list[DriftWindow]:
    """Every window with at least one drifted statistic, in time order."""
    by_window: dict[WindowKey, list[dict[str, Any]]] = {}
    for r in window_records_of(records):
        if r.get("drift"):
            by_window.setdefault(window_key(r), []).append(r)
    out = []
    for (start, end, index), hits in sorted(by_window.items(), key=lambda kv: _window_order(kv[0])):
        worst = max((h["severity"] for h in hits), key=lambda s: SEVERITY_LEVEL.get(s, -1))
        level = sum(SEVERITY_LEVEL.get(h["severity"], 0) for h in hits)
        psi_max = max((float(h["value"]) for h in hits if h["statistic"] == "psi"), default=0.0)
        out.append(DriftWindow(start, end, worst, hits, (level, psi_max), index))
    return out


def all_windows(records: Sequence[dict[str, Any]]) -> list[WindowKey]:
    seen = {window_key(r) for r in window_records_of(records)}
    return sorted(seen, key=_window_order)


@dataclass
class DriftRun:
    """Consecutive drifted windows: the first one's start, the last one's end, and per drifted feature
    the largest effect of each statistic that drifted."""

    start: str
    end: str
    n_windows: int
    worst: str
    features: dict[str, dict[str, float | None]]
    starts: list[str] = field(default_factory=list)  # every window's start


def drift_runs(records: Sequence[dict[str, Any]], windows: Sequence[WindowKey]) -> list[DriftRun]:
    """Runs of drifted windows that follow each other in ``windows`` (time order)."""
    drifted = {w.key: w for w in drift_windows(records)}
    runs: list[DriftRun] = []
    previous = False
    for key in windows:
        w = drifted.get(key)
        if w is None:
            previous = False
            continue
        if not previous:
            runs.append(DriftRun(w.start, w.end, 0, w.worst, {}))
        run = runs[-1]
        run.end, run.n_windows = w.end, run.n_windows + 1
        run.starts.append(w.start)
        if SEVERITY_LEVEL[w.worst] > SEVERITY_LEVEL[run.worst]:
            run.worst = w.worst
        for h in w.hits:
            stats = run.features.setdefault(h["feature"], {})
            e = effect(h)
            old = stats.get(h["statistic"])
            if h["statistic"] not in stats or (e is not None and (old is None or e > old)):
                stats[h["statistic"]] = e
        previous = True
    return runs


#: severity as a level of the drift map (None: no record)
MAP_LEVEL = {"insufficient_data": 0, "ok": 1, "warning": 2, "critical": 3}
MAP_COLORS = ("#bdbdbd", "#c8e6c9", SEVERITY_COLOR["warning"], SEVERITY_COLOR["critical"])


def drift_map_figure(records: Sequence[dict[str, Any]], features: Sequence[str], windows: Sequence[WindowKey]) -> Any:
    """A feature x window grid coloured by the worst verdict of the feature's statistics in the window."""
    import plotly.graph_objects as go

    col = {w: j for j, w in enumerate(windows)}
    row = {f: i for i, f in enumerate(features)}
    z: list[list[int | None]] = [[None] * len(windows) for _ in features]
    text: list[list[str]] = [[""] * len(windows) for _ in features]
    for r in window_records_of(records):
        i, j = row.get(r["feature"]), col.get(window_key(r))
        if i is None or j is None:
            continue
        level = MAP_LEVEL.get(r["severity"], 0)
        if z[i][j] is None or level > (z[i][j] or 0):
            z[i][j] = level
        e = effect(r)
        text[i][j] += f"<br>{STAT_TITLE[r['statistic']]} {_num(e)} ({r['severity']})"
    n = len(MAP_COLORS)
    scale = []
    for k, c in enumerate(MAP_COLORS):
        scale += [[k / n, c], [(k + 1) / n, c]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=window_labels(windows),
            y=list(features),
            text=text,
            hovertemplate="%{y} · %{x}%{text}<extra></extra>",
            colorscale=scale,
            zmin=-0.5,
            zmax=n - 0.5,
            showscale=False,
            xgap=1,
            ygap=1,
        )
    )
    tied = len({w[0] for w in windows}) < len(windows)
    fig.update_xaxes(title_text=("#window index, " if tied else "") + "window start (UTC)", type="category", nticks=12)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(
        height=110 + 26 * len(features),
        margin={"l": 110, "r": 20, "t": 10, "b": 60},
        template="plotly_white",
    )
    return fig


def choose_window(records: Sequence[dict[str, Any]], requested: str | None) -> WindowKey:
    """The window given by its ISO start (the first of those that start then), or the most drifted one
    (most severity, then largest PSI)."""
    windows = all_windows(records)
    if not windows:
        raise InputFileError("no windows in the records")
    if requested is not None:
        try:
            want = parse_time_ms(requested, "iso")
        except InputError as exc:
            raise ConfigError(
                f"--window: {exc}; give the window start as ISO-8601, e.g. 2026-01-01T00:05:00Z"
            ) from None
        for w in windows:
            if _ms(w[0]) == want:
                return w
        near = ", ".join(w[0] for w in windows[:5])
        raise ConfigError(f"--window: no window starts at {requested} for this segment (first ones: {near}, ...)")
    drifted = drift_windows(records)
    if drifted:
        best = max(drifted, key=lambda w: w.score)  # max() keeps the earliest of equals
        return best.key
    psi = [
        (float(r["value"]), window_key(r)) for r in records if r["statistic"] == "psi" and r.get("value") is not None
    ]
    if psi:
        return max(psi, key=lambda p: p[0])[1]
    return windows[-1]


# -- histograms for the chosen window ------------------------------------------------------
@dataclass
class WindowHistogram:
    """Counts over each feature's reference buckets for one window (``window`` None = not available)."""

    labels: dict[str, list[str]]
    reference: dict[str, list[int]]
    window: dict[str, list[int]] | None
    n_events: int | None
    note: str | None


def bucket_labels(profile: NumericProfile | CategoricalProfile) -> list[str]:
    """Coarse PSI bins of a numeric feature as ``[lo, hi)``; a categorical feature's buckets."""
    if isinstance(profile, CategoricalProfile):
        return list(profile.buckets)
    edges = profile.edges
    starts = list(profile.coarse_starts)
    out = []
    for j, s in enumerate(starts):
        lo = "-inf" if s == 0 else f"{edges[s - 1]:.4g}"
        nxt = starts[j + 1] if j + 1 < len(starts) else profile.n_bins
        hi = "+inf" if nxt >= profile.n_bins else f"{edges[nxt - 1]:.4g}"
        out.append(f"[{lo}, {hi})")
    return out


def bucket_counts(profile: NumericProfile | CategoricalProfile, fine: Sequence[int] | np.ndarray) -> list[int]:
    arr = np.asarray(fine, dtype=np.int64)[: profile.n_bins]
    if isinstance(profile, NumericProfile):
        return [int(x) for x in coarse_counts(profile, arr)]
    return [int(x) for x in arr]


def window_histogram(
    reference: ReferenceProfile,
    features: Sequence[str],
    *,
    config: MonitorConfig | None,
    events_path: str | Path | None,
    segment: str,
    start: str,
    end: str,
    index: int | None = None,
) -> WindowHistogram:
    """Reference buckets always; the window's, recomputed from the events, when events and config are given
    (a count window: the ``index``-th of the segment, else the first that spans ``start`` .. ``end``)."""
    feats = [f for f in features if f in reference.features]
    labels = {f: bucket_labels(reference.features[f]) for f in feats}
    ref_counts = {f: bucket_counts(reference.features[f], reference.features[f].counts) for f in feats}
    if config is None or events_path is None:
        missing = " and ".join(x for x, v in (("--events", events_path), ("--config", config)) if v is None)
        note = (
            f"The window histogram needs the events and the monitor config ({missing} not given); "
            "only the reference proportions are shown."
        )
        return WindowHistogram(labels, ref_counts, None, None, note)
    from detectors.engine import SegmentRouter, WindowSpec

    layout = Layout(reference, feats)
    events = read_events(events_path, config, reference, layout.features, "--events")
    config = events.config  # (with the shape of the rows: flat or nested)
    cols, _errors = decode_events(events.rows, config, reference, layout.features)
    router = SegmentRouter(config.events.segment_fields, config.segments.max_segments, config.segments.overall)
    seg_ids = router.route(cols.segments)
    seg_id = next((i for i in range(len(router.keys)) if segment_label(router.segment(i)) == segment), None)
    if seg_id is None:
        raise InputFileError(f"--events: no events of segment {segment!r} in {events_path}")
    if router.keys[seg_id] == () and router.overall:
        idx = np.arange(len(cols), dtype=np.int64)
    else:
        idx = np.flatnonzero(seg_ids == seg_id)
    t = cols.time_ms[idx]
    lo, hi = _ms(start), _ms(end)
    spec = WindowSpec.from_config(config)
    if spec.kind == "count":
        groups = len(idx) // spec.count
        chosen = None
        order = range(groups) if index is None else [index] if 0 <= index < groups else []
        for g in order:
            tg = t[g * spec.count : (g + 1) * spec.count]
            if int(tg.min()) == lo and int(tg.max()) + 1 == hi:
                chosen = idx[g * spec.count : (g + 1) * spec.count]
                break
        if chosen is None:
            raise InputFileError(f"--events: no count window of segment {segment!r} spans {start} .. {end}")
        idx = chosen
    else:
        idx = idx[(t >= lo) & (t < hi)]
    sub = {
        f: cols.features[f][idx] if isinstance(cols.features[f], np.ndarray) else [cols.features[f][i] for i in idx]
        for f in feats
    }
    state = layout.histogram(sub)
    win = {f: bucket_counts(reference.features[f], layout.slot(state.counts, f)) for f in feats}
    return WindowHistogram(labels, ref_counts, win, len(idx), None)


# -- rendering -------------------------------------------------------------------------------
def _figure_html(fig: Any, div_id: str, modebar: bool = True) -> str:
    out: str = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True, "displayModeBar": modebar},
    )
    return out


def _hline(fig: Any, x0: str, x1: str, y: float, name: str, color: str, row: int, legend: bool) -> None:
    import plotly.graph_objects as go

    fig.add_trace(
        go.Scatter(
            x=[x0, x1],
            y=[y, y],
            mode="lines",
            name=name,
            line={"color": color, "dash": "dash", "width": 1.5},
            legendgroup=name,
            showlegend=legend,
            hoverinfo="name+y",
        ),
        row=row,
        col=1,
    )


def feature_figure(feature: str, records: Sequence[dict[str, Any]], th: Thresholds) -> Any:
    """Statistics over windows (one row per statistic) and p-values (log axis), drifted windows shaded."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = sorted(
        (r for r in records if r["feature"] == feature and r["statistic"] in WINDOW_STATISTICS),
        key=lambda r: _window_order(window_key(r)),
    )
    stats = [s for s in WINDOW_STATISTICS if any(r["statistic"] == s for r in recs)]
    titles = [STAT_TITLE[s] for s in stats] + [
        f"p-values (calibrated, adjusted for the window's tests; ▼ = below {P_MARK:g})"
    ]
    fig = make_subplots(rows=len(stats) + 1, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles)
    windows = sorted({window_key(r) for r in recs}, key=_window_order)
    labels = dict(zip(windows, window_labels(windows), strict=True))
    # windows whose starts tie (count windows) are told apart by their index on a category axis
    tied = len({w[0] for w in windows}) < len(windows)

    def xs(rs: Sequence[dict[str, Any]]) -> list[str]:
        return [labels[window_key(r)] if tied else _plot_time(r["window_start"]) for r in rs]

    x0, x1 = (
        (labels[windows[0]], labels[windows[-1]]) if tied else (_plot_time(windows[0][0]), _plot_time(windows[-1][0]))
    )
    lines = {
        "psi": [("PSI critical", th.psi_critical, SEVERITY_COLOR["critical"])],
        "ks": [("KS critical D", th.ks_critical, SEVERITY_COLOR["critical"])],
        "chi2": [("critical Cramér's V", th.chi2_critical, SEVERITY_COLOR["critical"])],
        "unseen": [("critical unseen share", th.unseen_critical, SEVERITY_COLOR["critical"])],
    }
    for row, stat in enumerate(stats, start=1):
        rs = [r for r in recs if r["statistic"] == stat]
        fig.add_trace(
            go.Scatter(
                x=xs(rs),
                y=[effect(r) for r in rs],
                mode="lines+markers",
                name=STAT_TITLE[stat],
                line={"color": "#1f4e79", "width": 1.5},
                marker={"color": [SEVERITY_COLOR.get(r["severity"], "#000") for r in rs], "size": 7},
                text=[f"{r['severity']} (n={r.get('n_window')})" for r in rs],
                hovertemplate="%{x}<br>%{y:.4g}<br>%{text}<extra>" + STAT_TITLE[stat] + "</extra>",
                connectgaps=False,
            ),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=xs(rs),
                y=[None if r.get("threshold") is None else float(r["threshold"]) for r in rs],
                mode="lines",
                name="threshold",
                line={"color": SEVERITY_COLOR["warning"], "dash": "dash", "width": 1.5, "shape": "hv"},
                legendgroup="threshold",
                showlegend=row == 1,
                hovertemplate="%{y:.4g}<extra>threshold at the window's size</extra>",
                connectgaps=False,
            ),
            row=row,
            col=1,
        )
        for name, y, color in lines[stat]:
            if y is not None:
                _hline(fig, x0, x1, y, f"{name} {y:g}", color, row, True)
    prow = len(stats) + 1
    for stat in stats:
        rs = [r for r in recs if r["statistic"] == stat]
        ps = [None if r.get("p_value_adjusted") is None else float(r["p_value_adjusted"]) for r in rs]
        fig.add_trace(
            go.Scatter(
                x=xs(rs),
                y=[None if p is None else max(p, P_MARK) for p in ps],
                mode="lines+markers",
                name=f"p {STAT_TITLE[stat]}",
                line={"width": 1},
                marker={
                    "size": [9 if p is not None and p < P_MARK else 5 for p in ps],
                    "symbol": ["triangle-down" if p is not None and p < P_MARK else "circle" for p in ps],
                },
                text=[_p_text(p) for p in ps],
                hovertemplate="%{x}<br>p %{text}<extra>" + STAT_TITLE[stat] + "</extra>",
                connectgaps=False,
            ),
            row=prow,
            col=1,
        )
    if th.false_alarm_rate is not None:
        rate = th.false_alarm_rate
        _hline(fig, x0, x1, rate, f"false-alarm rate {rate:g}", SEVERITY_COLOR["warning"], prow, True)
    # drifted windows, shaded by the feature's worst severity there (added after the traces:
    # plotly leaves out subplots that are still empty)
    worst: dict[WindowKey, str] = {}
    for r in recs:
        if r.get("drift"):
            key = window_key(r)
            if key not in worst or SEVERITY_LEVEL[r["severity"]] > SEVERITY_LEVEL[worst[key]]:
                worst[key] = r["severity"]
    for key, sev in worst.items():  # (a category axis: the window's own slot)
        fig.add_vrect(
            x0=_plot_time(key[0]) if not tied else windows.index(key) - 0.5,
            x1=_plot_time(key[1]) if not tied else windows.index(key) + 0.5,
            fillcolor=SEVERITY_COLOR[sev],
            opacity=0.12,
            line_width=0,
            layer="below",
        )
    for row, stat in enumerate(stats, start=1):
        fig.update_yaxes(title_text=STAT_TITLE[stat], rangemode="tozero", row=row, col=1)
    fig.update_yaxes(type="log", exponentformat="power", title_text="adjusted p (log)", row=prow, col=1)
    fig.update_xaxes(title_text=("#window index, " if tied else "") + "window start (UTC)", row=prow, col=1)
    if tied:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[labels[w] for w in windows])
    fig.update_layout(
        height=230 * (len(stats) + 1) + 60,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.12},
        hovermode="x unified",
    )
    return fig


def histogram_figure(feature: str, profile: NumericProfile | CategoricalProfile, hist: WindowHistogram) -> Any:
    """Reference vs window shares of events on one pair of axes: overlaid bars over a numeric feature's
    coarse PSI bins (the window drawn over the reference), grouped bars over a categorical's buckets."""
    import plotly.graph_objects as go

    labels = hist.labels[feature]
    ref = np.asarray(hist.reference[feature], dtype=np.float64)
    ref_p = (ref / ref.sum()).tolist() if ref.sum() > 0 else [None] * len(ref)
    win_p: list[float | None] | None = None
    if hist.window is not None:
        w = np.asarray(hist.window[feature], dtype=np.float64)
        win_p = (w / w.sum()).tolist() if w.sum() > 0 else [None] * len(w)
    categorical = isinstance(profile, CategoricalProfile)
    hover = "%{x}<br>%{y:.2%}<extra>%{fullData.name}</extra>"
    fig = go.Figure(
        [
            go.Bar(
                x=labels,
                y=ref_p,
                name="reference",
                marker={"color": "#9e9e9e"},
                opacity=0.9 if categorical else 0.6,
                hovertemplate=hover,
            )
        ]
    )
    if win_p is not None:
        # numeric: the window as outlined bars over the reference's filled ones, so both stay readable
        fig.add_trace(
            go.Bar(
                x=labels,
                y=win_p,
                name="window",
                marker={
                    "color": "#1f77b4" if categorical else "rgba(31, 119, 180, 0.18)",
                    "line": {"color": "#1f77b4", "width": 0 if categorical else 2},
                },
                opacity=0.9 if categorical else 1.0,
                hovertemplate=hover,
            )
        )
    fig.update_xaxes(
        title_text="category" if categorical else f"{feature}: coarse PSI bin (from the reference's quantiles)",
        tickangle=0 if categorical else -35,
        type="category",
    )
    fig.update_yaxes(title_text="share of events", tickformat=".0%", rangemode="tozero")
    fig.update_layout(
        title=f"{feature}: {'categories' if categorical else 'coarse PSI bins'}",
        barmode="group" if categorical else "overlay",
        bargap=0.05 if not categorical else 0.2,
        height=360,
        margin={"l": 70, "r": 20, "t": 50, "b": 90},
        template="plotly_white",
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )
    return fig


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1340px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#555;font-size:14px} table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f5f5f5}
.sev{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-size:12px;font-weight:600}
.sev-ok{background:#2e7d32}.sev-warning{background:#f09000}.sev-critical{background:#c62828}
.sev-insufficient_data{background:#9e9e9e}
.sevtext-warning{color:#b36b00;font-weight:600}.sevtext-critical{color:#c62828;font-weight:600}
.note{background:#fff8e1;border-left:4px solid #f09000;padding:8px 12px;margin:8px 0}
"""


def _sev(sev: str) -> str:
    label = "no verdict" if sev == "insufficient_data" else sev
    return f'<span class="sev sev-{html.escape(sev)}">{html.escape(label)}</span>'


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _p_text(p: float | None) -> str:
    """A p-value for a table or a hover label: ``< 1e-300`` below :data:`P_MARK` (0 included)."""
    if p is None:
        return "–"
    return f"< {P_MARK:g}" if p < P_MARK else format(p, ".3g")


def _reference_check_html(records: Sequence[Mapping[str, Any]], thresholds: Thresholds) -> list[str]:
    """The reference check (``backfill --reference-check``): how often the monitor flags windows of
    the reference's own baseline, which the calibration expects at about the false-alarm rate."""
    e = html.escape
    rates = flag_rates(records)
    rate = thresholds.false_alarm_rate
    expected = f" (calibrated for at most {rate:.1%})" if rate is not None else ""
    parts = [
        '<h3 id="reference-check">Reference check</h3>',
        f'<p id="reference-check-rate" data-flagged="{rates.flagged}" data-windows="{rates.windows}">'
        f"The monitor flagged {rates.flagged} of {rates.windows} windows of its own reference data{expected}.</p>",
    ]
    flagged = [(f, h, t) for f, (h, t) in rates.per_feature.items() if h]
    if flagged:
        parts.append('<table id="reference-check-features"><thead><tr><th>feature</th><th>flagged verdicts</th></tr>')
        parts.append("</thead><tbody>")
        for f, h, t in flagged:
            parts.append(f'<tr data-feature="{e(f)}"><td>{e(f)}</td><td>{h} / {t}</td></tr>')
        parts.append("</tbody></table>")
    return parts


def render_html(
    records: Sequence[dict[str, Any]],
    *,
    monitor: str,
    segment: str,
    thresholds: Thresholds,
    window: WindowKey,
    hist: WindowHistogram | None,
    reference: ReferenceProfile | None,
    source: str,
    notes: Sequence[str] = (),
    title: str | None = None,
    reference_check: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The whole page as one string (plotly.js inlined once)."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    records, performance = split_performance(records)  # (late labels: stream/report/performance.py)
    summaries = summarize(records)
    drifted = drift_windows(records)
    windows = all_windows(records)
    concept = [r for r in records if r["statistic"] not in WINDOW_STATISTICS]
    # most severe features first, in the charts as in the summary
    summaries.sort(
        key=lambda s: (-SEVERITY_LEVEL[s.worst], _ms(s.first_drift) if s.first_drift else math.inf, s.feature)
    )
    features = [s.feature for s in summaries]
    fprints = sorted({str(r.get("reference_fingerprint")) for r in records if r.get("reference_fingerprint")})
    models = sorted({f"models:/{r['model_name']}/{r.get('model_version')}" for r in records if r.get("model_name")})
    title = title or f"Drift report: {monitor}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style>",
        f"<script>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        '<p class="meta">'
        f"monitor <b>{e(monitor)}</b> · segment <b>{e(segment)}</b> · {len(windows)} windows from "
        f"{e(_display_time(windows[0][0]))} to {e(_display_time(windows[-1][1]))} UTC · "
        f"{len(features)} features · reference {e(', '.join(f[:12] for f in fprints) or 'unknown')} · "
        + (f"model {e(', '.join(models))} · " if models else "")
        + f"source {e(source)} · generated {datetime.now(tz=UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC</p>",
    ]
    for n in notes:
        parts.append(f'<p class="note">{e(n)}</p>')
    # summary
    n_drift_feats = sum(1 for s in summaries if s.drifted_windows)
    parts.append('<h2 id="summary">Summary</h2>')
    parts.append(
        f"<p>{n_drift_feats} of {len(summaries)} features drifted in {len(drifted)} of {len(windows)} windows.</p>"
    )
    parts.append(
        '<table id="feature-summary"><thead><tr><th>feature</th><th>worst severity</th><th>first drift window</th>'
        "<th>drifted windows</th><th>max PSI</th><th>max KS D</th><th>max Cramér's V</th>"
        "<th>min adjusted p</th><th>windows without verdict</th></tr></thead><tbody>"
    )
    for s in summaries:
        first = e(_display_time(s.first_drift)) if s.first_drift else "–"
        parts.append(
            f'<tr data-feature="{e(s.feature)}"><td><a href="#feature-{e(s.feature)}">{e(s.feature)}</a></td>'
            f"<td>{_sev(s.worst)}</td><td>{first}</td><td>{s.drifted_windows} / {s.windows}</td>"
            f"<td>{_num(s.max_value.get('psi'))}</td><td>{_num(s.max_value.get('ks'))}</td>"
            f"<td>{_num(s.max_value.get('chi2'))}</td><td>{_p_text(s.min_p_adjusted)}</td>"
            f"<td>{s.windows_no_verdict}</td></tr>"
        )
    parts.append("</tbody></table>")
    parts.append(f'<p class="meta">Thresholds from {e(thresholds.source)}.</p>')
    if reference_check is not None:
        parts.extend(_reference_check_html(reference_check, thresholds))
    parts.append('<h3 id="drifted-windows">Drifted windows</h3>')
    if drifted:
        parts.append(
            '<p class="meta">Each cell is a feature in a window, coloured by its worst verdict (grey: too few '
            "events for one; blank: no record). Below, runs of consecutive drifted windows with what drifted.</p>"
        )
        parts.append(_figure_html(drift_map_figure(records, features, windows), "drift-map", modebar=False))
        parts.append(
            '<table id="drift-runs"><thead><tr><th>from (UTC)</th><th>to</th><th>windows</th>'
            "<th>worst</th><th>what drifted (largest effect in the run)</th></tr></thead><tbody>"
        )
        for run in drift_runs(records, windows):
            what = "; ".join(
                f"{e(f)} ({', '.join(f'{STAT_TITLE[st]} {_num(v)}' for st, v in stats.items())})"
                for f, stats in run.features.items()
            )
            parts.append(
                f'<tr data-window-start="{e(run.start)}" data-windows="{run.n_windows}" '
                f'data-starts="{e(" ".join(run.starts))}">'
                f"<td>{e(_display_time(run.start))}</td><td>{e(_display_time(run.end))}</td><td>{run.n_windows}</td>"
                f'<td><span class="sevtext-{e(run.worst)}">{e(run.worst)}</span></td><td>{what}</td></tr>'
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No window drifted.</p>")
    if concept:
        parts.append(
            '<h3 id="concept">Concept drift detections</h3><table><thead><tr><th>detected at (UTC)</th>'
            "<th>detector</th><th>stream</th><th>estimate</th><th>events since last</th></tr></thead><tbody>"
        )
        for r in concept:
            parts.append(
                f"<tr><td>{e(_display_time(r['window_end']))}</td><td>{e(str(r['statistic']))}</td>"
                f"<td>{e(str(r['feature']))}</td><td>{_num(r.get('value'))}</td><td>{r.get('n_window')}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.extend(performance_html(performance, segment))
    # per feature
    parts.append('<h2 id="features">Statistics over windows</h2>')
    parts.append(
        '<p class="meta">Markers are coloured by severity (green ok, orange warning, red critical); '
        "shaded bands are the feature's drifted windows; dashed lines are thresholds. Gaps are windows "
        "with too few events for a verdict.</p>"
    )
    for i, f in enumerate(features):
        parts.append(f'<h3 id="feature-{e(f)}">{e(f)}</h3>')
        parts.append(_figure_html(feature_figure(f, records, thresholds), f"stat-{i}"))
    # histograms
    ws, we, wi = window
    label = f"#{wi} " if wi is not None and sum(1 for w in windows if w[0] == ws) > 1 else ""  # (tied starts)
    parts.append(
        f'<h2 id="histograms" data-window-start="{e(ws)}" data-window-index="{"" if wi is None else wi}">'
        f"Reference vs window {e(label)}{e(_display_time(ws))} – "
        f"{e(_display_time(we))} UTC</h2>"
    )
    if hist is None or reference is None:
        parts.append(
            '<p class="note" id="histogram-note">Histograms need bin counts, which window records do not carry: '
            "pass --reference (the profile JSON) for the reference proportions, and --events with --config "
            "to recompute this window's histogram.</p>"
        )
    else:
        if hist.note:
            parts.append(f'<p class="note" id="histogram-note">{e(hist.note)}</p>')
        if hist.n_events is not None:
            n_rec = {r.get("n_window") for r in records if window_key(r) == window and r["statistic"] == "psi"}
            parts.append(
                f'<p class="meta">{hist.n_events} events of segment {e(segment)} in this window, '
                f"recomputed from the events file (records: n_window {sorted(x for x in n_rec if x is not None)}).</p>"
            )
        for i, f in enumerate(f for f in features if f in hist.labels):
            parts.append(_figure_html(histogram_figure(f, reference.features[f], hist), f"hist-{i}"))
    parts.append("</body></html>")
    return "\n".join(parts)


# -- command ----------------------------------------------------------------------------------
def report_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", help="window statistic records: .jsonl or .parquet (the backfill's output)")
    src.add_argument("--topic", help="read the records from this statistics topic instead")
    p.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers for --topic (default: kafka.bootstrap_servers of --config)"
    )
    p.add_argument("--since", help="--topic: first Kafka timestamp, ISO-8601 or epoch ms/s (default: the beginning)")
    p.add_argument("--until", help="--topic: end Kafka timestamp, exclusive (default: the current end)")
    p.add_argument("--timeout", type=float, default=30.0, help="--topic: seconds to read to the end (default 30)")
    p.add_argument("--out", "--output", dest="out", required=True, help="the HTML file to write")
    p.add_argument("--config", help="monitor YAML: thresholds, and with --events the window histogram")
    p.add_argument("--reference", help="reference profile JSON (default: the config's reference)")
    p.add_argument("--events", help="events file (.jsonl/.parquet/.csv) to recompute the chosen window's histogram")
    p.add_argument("--window", help="ISO start of the window to show histograms for (default: the most drifted)")
    p.add_argument("--segment", help="k=v[,k2=v2] or __all__ (default: __all__, else the first segment present)")
    p.add_argument("--monitor", help="monitor to report on when the records hold several")
    p.add_argument("--title", help="page title (default: 'Drift report: MONITOR')")
    p.add_argument(
        "--reference-check",
        help="records of `streamdrift backfill --reference-check` (the monitor run over its own baseline): "
        "how often it flags the reference",
    )


def _time_arg(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_time_ms(value)
    except InputError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _kafka_conf(raw: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings from a serve config's ``kafka`` section (security keys only)."""
    keys = {
        "security_protocol": "security.protocol",
        "sasl_mechanism": "sasl.mechanisms",
        "sasl_username": "sasl.username",
        "sasl_password": "sasl.password",
        "ssl_ca_location": "ssl.ca.location",
        "ssl_certificate_location": "ssl.certificate.location",
        "ssl_key_location": "ssl.key.location",
    }
    return {lib: raw[k] for k, lib in keys.items() if raw.get(k) is not None}


def cmd_report(args: argparse.Namespace) -> int:
    config = load_monitor(args.config) if args.config else None
    raw_cfg = load_yaml(args.config) if args.config else {}
    notes: list[str] = []
    if args.records:
        records = load_records(args.records)
        source = Path(args.records).name
    else:
        kafka = raw_cfg.get("kafka") or {}
        bootstrap = args.bootstrap_servers or kafka.get("bootstrap_servers")
        if not bootstrap:
            raise ConfigError("--bootstrap-servers: needed with --topic (or kafka.bootstrap_servers in --config)")
        since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")
        if since is not None and until is not None and until <= since:
            raise ConfigError(f"--until ({args.until}) must be after --since ({args.since})")
        got = read_topic(bootstrap, args.topic, since, until, conf=_kafka_conf(kafka), timeout_s=args.timeout)
        records = got.records
        source = f"topic {args.topic}"
        if got.skipped:
            notes.append(
                f"{got.skipped} of {got.messages} messages in the time range were not window records; skipped."
            )
    monitor, segment, recs = select_records(records, args.segment, args.monitor)
    thresholds = Thresholds.from_config(config) if config else Thresholds.from_records(recs)
    window = choose_window(recs, args.window)
    ref_path = args.reference or (config.reference if config else None)
    reference = load_reference(ref_path)[0] if ref_path else None  # (a file, or models:/ through MLflow)
    hist = None
    if reference is not None:
        fps = {r.get("reference_fingerprint") for r in recs if r.get("reference_fingerprint")}
        if fps and fps != {reference.fingerprint}:
            raise ReferenceMismatchError(
                f"--reference: {ref_path} has fingerprint {reference.fingerprint}, the records were computed "
                f"against {sorted(str(f) for f in fps)}; histograms against another reference would mislead"
            )
        features = list(dict.fromkeys(r["feature"] for r in window_records_of(recs)))
        hist = window_histogram(
            reference,
            features,
            config=config,
            events_path=args.events,
            segment=segment,
            start=window[0],
            end=window[1],
            index=window[2],
        )
    elif args.events:
        notes.append("--events was given without a reference profile (--reference or --config): no histograms.")
    page = render_html(
        recs,
        monitor=monitor,
        segment=segment,
        thresholds=thresholds,
        window=window,
        hist=hist,
        reference=reference,
        source=source,
        notes=notes,
        title=args.title,
        reference_check=load_records(args.reference_check) if args.reference_check else None,
    )
    out = Path(args.out)
    write_text(out, page)
    n_drift = len(drift_windows(recs))
    print(
        f"report: {len(recs)} records, segment {segment}, {n_drift} drifted windows -> {out} ({len(page) // 1024} KiB)"
    )
    return 0


def report_command(argv: Sequence[str], out: Path) -> None:
    """``streamdrift report ARGV --out OUT`` in process (the demo's report)."""
    parser = argparse.ArgumentParser(prog="streamdrift report")
    report_args(parser)
    cmd_report(parser.parse_args([*argv, "--out", str(out)]))
