"""The monitor configuration: one validated model shared by the consumer, Spark and the backfill.

A *monitor* is one configured unit: a topic, a reference, features, windows, statistics
and thresholds. The YAML file may also carry sections that only one component reads
(``kafka``, ``outputs``, ``metrics``, ``state``, ``spark``); :meth:`MonitorConfig.from_mapping`
leaves those to their owners, and every other unknown key is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detectors.calendar import LONGEST_MONTH_MS, MONDAY_MS, SHORTEST_MONTH_MS, WEEK_MS
from detectors.exceptions import ConfigError

#: top-level sections that belong to other components (stream/, jobs/)
FOREIGN_SECTIONS = frozenset(
    {"kafka", "outputs", "metrics", "state", "spark", "checkpoint", "mlflow", "schema_registry"}
)

#: ``reference: models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: a registered model version's profile,
#: resolved through MLflow (``stream.modelref``) instead of a file
MODEL_URI_PREFIX = "models:/"


def is_model_uri(reference: str) -> bool:
    """Whether a ``reference`` setting names an MLflow model version rather than a file.

    >>> is_model_uri("models:/fraud@champion"), is_model_uri("ref/profile.json")
    (True, False)
    """
    return reference.startswith(MODEL_URI_PREFIX)


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` -> (NAME, VERSION, None); ``models:/NAME@ALIAS`` -> (NAME, None, ALIAS).

    >>> parse_model_uri("models:/fraud/3"), parse_model_uri("models:/fraud@champion")
    (('fraud', '3', None), ('fraud', None, 'champion'))
    """
    m = _MODEL_URI.match(uri)
    if m is None:
        raise ValueError(
            f"{uri!r} is not models:/NAME/VERSION (a version number) or models:/NAME@ALIAS (stages such as "
            "/Production are not supported: use an alias)"
        )
    return m.group("name"), m.group("version"), m.group("alias")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _named(name: str, msg: str) -> str:
    return f"{name}: {msg}" if name else msg


def parse_duration_ms(value: Any, name: str = "duration") -> int:
    """``"5m"`` -> 300000. A duration needs its unit (``ms``, ``s``, ``m``, ``h``, ``d``): a bare number
    (``5``, ``"5"``) is an error that suggests ``5s`` and ``5m``, except 0, which is the same in any unit.

    >>> parse_duration_ms("90s"), parse_duration_ms("2h"), parse_duration_ms("250ms"), parse_duration_ms(0)
    (90000, 7200000, 250, 0)
    >>> parse_duration_ms(5, "window.size")
    Traceback (most recent call last):
    ValueError: window.size: 5 is a number without a unit: write '5s' or '5m' (units: ms, s, m, h, d)
    """
    if isinstance(value, bool):
        raise ValueError(_named(name, f"{value!r} is not a duration"))
    if isinstance(value, (int, float)):
        if value == 0:
            return 0
        raise ValueError(_named(name, _unitless(value)))
    if not isinstance(value, str):
        raise ValueError(_named(name, f"{value!r} is not a duration"))
    m = _DURATION.match(value)
    if not m:
        raise ValueError(_named(name, f"{value!r} is not a duration like '30s', '5m', '1h' or '250ms'"))
    if m.group(2) is None:
        if float(m.group(1)) == 0:
            return 0
        raise ValueError(_named(name, _unitless(m.group(1))))
    ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    if ms != int(ms):
        raise ValueError(_named(name, f"{value!r} is not a whole number of milliseconds"))
    return int(ms)


def _unitless(number: Any) -> str:
    n = number if isinstance(number, str) else f"{number:g}"
    return f"{number!r} is a number without a unit: write '{n}s' or '{n}m' (units: ms, s, m, h, d)"


def parse_instant_ms(value: Any, name: str) -> int:
    """An ISO-8601 instant (UTC unless it says otherwise) as epoch milliseconds.

    >>> parse_instant_ms("1980-01-01T00:00:00Z", "events.min_time"), parse_instant_ms("1970-01-01", "x")
    (315532800000, 0)
    """
    if not isinstance(value, str):
        raise ValueError(_named(name, f"{value!r} is not an ISO-8601 time like '1980-01-01T00:00:00Z'"))
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(_named(name, f"{value!r} is not an ISO-8601 time like '1980-01-01T00:00:00Z'")) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventsConfig(_Model):
    """Where things are in an event."""

    time_field: str | None = Field(
        "timestamp", description="event time: epoch s/ms/us/ns, or ISO-8601 (UTC); None = Kafka timestamp"
    )
    time_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = Field(
        "auto", description="unit of numeric event times; auto: inferred per value from its magnitude"
    )
    time_missing: Literal["reject", "kafka_timestamp"] = Field(
        "reject", description="an event without its time field: dead-letter it, or use the Kafka timestamp"
    )
    min_time: str = Field(
        "1980-01-01T00:00:00Z", description="event times before this instant (ISO-8601) are rejected as implausible"
    )
    max_future_skew: int | str = Field(
        "1h", description="event times further ahead of their Kafka timestamp (files: the run's start) are rejected"
    )
    features_field: str | None = Field(
        "features", description="object holding the features; None = features at the top level"
    )
    format: Literal["json", "avro"] = Field(
        "json", description="message values: JSON, or Avro framed with a schema registry id (Confluent wire format)"
    )
    segment_fields: tuple[str, ...] = ()
    prediction_field: str | None = None
    label_field: str | None = None
    id_field: str | None = Field(None, description="the events' id column: never taken as a feature")

    @property
    def fields(self) -> frozenset[str]:
        """The fields an event carries besides its features (time, segments, prediction, label, id):
        never features unless ``features.include`` lists them."""
        names = (self.time_field, self.features_field, self.prediction_field, self.label_field, self.id_field)
        return frozenset(n for n in (*names, *self.segment_fields) if n)

    @field_validator("min_time", mode="before")
    @classmethod
    def _min_time_from_yaml(cls, v: Any) -> Any:
        """YAML reads an unquoted ``1980-01-01`` (or a full timestamp) as a date: take it as ISO text."""
        return v.isoformat() if isinstance(v, (date, datetime)) else v

    @field_validator("min_time")
    @classmethod
    def _min_time(cls, v: str) -> str:
        parse_instant_ms(v, "")  # (the error's location names the setting)
        return v

    @field_validator("max_future_skew")
    @classmethod
    def _skew(cls, v: int | str) -> int | str:
        if parse_duration_ms(v, "") <= 0:
            raise ValueError(f"{v!r} is not positive: every event would be in the future")
        return v

    @property
    def min_time_ms(self) -> int:
        return parse_instant_ms(self.min_time, "events.min_time")

    @property
    def max_future_skew_ms(self) -> int:
        return parse_duration_ms(self.max_future_skew, "events.max_future_skew")


class FeaturesConfig(_Model):
    """Which reference features to monitor (default: all of them)."""

    include: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = Field((), description="used by `reference build` to type columns")


_CALENDAR = re.compile(r"^\s*(\d+)\s*(w|mo)\s*$")


def parse_calendar(value: Any) -> tuple[int, str] | None:
    """``"1mo"`` -> (1, "mo"), ``"2w"`` -> (2, "w"); None for anything else (a duration, say).

    >>> parse_calendar("3mo"), parse_calendar("1w"), parse_calendar("7d")
    ((3, 'mo'), (1, 'w'), None)
    """
    if not isinstance(value, str):
        return None
    m = _CALENDAR.match(value)
    return None if m is None else (int(m.group(1)), m.group(2))


class WindowConfig(_Model):
    kind: Literal["tumbling", "sliding", "count"] = "tumbling"
    size: int | str = Field(
        "5m",
        description="duration with its unit for time windows ('5m', '1d'), calendar weeks ('1w', from Monday "
        "00:00 UTC) or months ('1mo', from the 1st 00:00 UTC; tumbling only), number of events for count windows",
    )
    slide: int | str | None = None
    offset: int | str = Field(
        "0s", description="time windows: every boundary moves later by this (less than the window, or the slide)"
    )
    allowed_lateness: int | str = "0s"
    idle_timeout: int | str = "60s"
    keep_raw: bool = Field(False, description="count windows only: keep raw values for an exact KS")

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        offset = parse_duration_ms(self.offset, "window.offset")
        if self.kind == "count":
            if isinstance(self.size, str) and not self.size.isdigit():
                raise ValueError(f"window.size: a count window needs a number of events, not {self.size!r}")
            if int(self.size) < 1:
                raise ValueError("window.size: a count window needs at least 1 event")
            if self.slide is not None:
                raise ValueError("window.slide: count windows do not slide; remove slide")
            if offset:
                raise ValueError("window.offset: count windows have no time boundaries to shift; remove offset")
            return self
        if self.keep_raw:
            raise ValueError("window.keep_raw: only count windows can keep raw values")
        cal = parse_calendar(self.size)
        if cal is not None:
            n, unit = cal
            if n < 1:
                raise ValueError(f"window.size: {self.size!r} needs at least 1 {unit}")
            if unit == "mo":
                if self.kind == "sliding":
                    raise ValueError(
                        f"window.size: {self.size!r} (calendar months) is for tumbling windows only: months differ "
                        "in length, so they cannot be cut into equal slides; use kind: tumbling, or a sliding "
                        "window in days ('30d') or weeks"
                    )
                if offset >= n * SHORTEST_MONTH_MS:
                    raise ValueError(
                        f"window.offset: {self.offset!r} must be shorter than the shortest window of {self.size!r} "
                        f"({n * 28} days)"
                    )
                size = 0
            else:
                size = n * WEEK_MS
        else:
            try:
                size = parse_duration_ms(self.size, "window.size")
            except ValueError as exc:
                raise ValueError(
                    f"{exc}; or calendar weeks / months: '1w' (from Monday), '1mo' (from the 1st)"
                ) from None
            if size <= 0:
                raise ValueError("window.size must be positive")
        if self.kind == "sliding":
            if self.slide is None:
                raise ValueError("window.slide: a sliding window needs a slide")
            slide = _time_step_ms(self.slide, "window.slide")
            if slide <= 0 or size % slide != 0:
                raise ValueError(f"window.slide: size ({size} ms) must be a positive multiple of slide ({slide} ms)")
            if offset >= slide:
                raise ValueError(
                    f"window.offset: {self.offset!r} must be shorter than the slide ({self.slide!r}): an offset "
                    "of a whole slide gives the same windows"
                )
        else:
            if self.slide is not None:
                raise ValueError("window.slide: only sliding windows have a slide")
            if size and offset >= size:
                raise ValueError(f"window.offset: {self.offset!r} must be shorter than the window ({self.size!r})")
        parse_duration_ms(self.allowed_lateness, "window.allowed_lateness")
        parse_duration_ms(self.idle_timeout, "window.idle_timeout")
        return self

    @property
    def months(self) -> int:
        """Calendar months per window (``size: 3mo`` -> 3); 0 for any other window."""
        cal = parse_calendar(self.size) if self.kind != "count" else None
        return cal[0] if cal is not None and cal[1] == "mo" else 0

    @property
    def size_ms(self) -> int:
        """A time window's length; for calendar months (no fixed length) the longest one (31 days a month)."""
        cal = parse_calendar(self.size)
        if cal is not None:
            n, unit = cal
            return n * (WEEK_MS if unit == "w" else LONGEST_MONTH_MS)
        return parse_duration_ms(self.size, "window.size")

    @property
    def slide_ms(self) -> int:
        """The pane of a fixed-length time window (the slide, or the size of a tumbling window); not
        defined for calendar months (see :attr:`months`)."""
        if self.months:
            raise ValueError("window.size: calendar months have no fixed length")
        if self.kind == "sliding":
            return _time_step_ms(self.slide, "window.slide")
        return self.size_ms

    @property
    def offset_ms(self) -> int:
        return parse_duration_ms(self.offset, "window.offset")

    @property
    def origin_ms(self) -> int:
        """The start of window (pane) number 0: the offset, from Monday 1970-01-05 for weeks."""
        weeks = parse_calendar(self.size) is not None and not self.months
        return self.offset_ms + (MONDAY_MS if weeks else 0)

    @property
    def count(self) -> int:
        return int(self.size)

    @property
    def allowed_lateness_ms(self) -> int:
        return parse_duration_ms(self.allowed_lateness, "window.allowed_lateness")

    @property
    def idle_timeout_ms(self) -> int:
        return parse_duration_ms(self.idle_timeout, "window.idle_timeout")


def _time_step_ms(value: Any, name: str) -> int:
    """A slide: a duration or whole weeks (``1w``); months are refused by the caller."""
    cal = parse_calendar(value)
    if cal is not None:
        if cal[1] == "mo":
            raise ValueError(
                f"{name}: {value!r}: a slide in calendar months is not supported (months differ in length)"
            )
        return cal[0] * WEEK_MS
    return parse_duration_ms(value, name)


def _moved(data: Any, section: str) -> Any:
    """Settings of earlier versions get an error that says what replaced them."""
    if isinstance(data, Mapping) and "alpha" in data:
        raise ValueError(
            f"statistics.{section}.alpha was replaced by statistics.false_alarm_rate: thresholds are now "
            "calibrated from the reference, and the rate is the chance that a window with no drift pages "
            "(default 0.01); remove alpha"
        )
    return data


class PSIConfig(_Model):
    """PSI: its verdict reads the chi-square test on the same bins; ``warning`` is its effect floor."""

    enabled: bool = True
    warning: float = Field(0.1, gt=0, description="PSI floor of a verdict (and of severity warning)")
    critical: float = Field(0.25, gt=0, description="PSI at or above which a drift is critical")
    epsilon: float = Field(1e-4, gt=0, lt=0.01, description="floor of a bin's proportion in PSI's logarithm")

    @model_validator(mode="after")
    def _order(self) -> PSIConfig:
        if self.critical < self.warning:
            raise ValueError(f"psi.critical ({self.critical}) must be >= psi.warning ({self.warning})")
        return self


class KSConfig(_Model):
    enabled: bool = True
    min_statistic: float = Field(0.05, ge=0, le=1, description="KS D floor of a verdict")
    critical_statistic: float = Field(0.2, gt=0, le=1, description="D at or above which a drift is critical")

    @model_validator(mode="before")
    @classmethod
    def _alpha(cls, data: Any) -> Any:
        return _moved(data, "ks")


class ChiSquareConfig(_Model):
    enabled: bool = True
    min_cramers_v: float = Field(0.05, ge=0, le=1, description="Cramér's V floor of a verdict")
    critical_cramers_v: float = Field(0.2, gt=0, le=1, description="Cramér's V at or above which a drift is critical")

    @model_validator(mode="before")
    @classmethod
    def _alpha(cls, data: Any) -> Any:
        return _moved(data, "chi2")


class UnseenConfig(_Model):
    """The share of events of categories the reference never had (categorical features)."""

    enabled: bool = True
    min_share: float = Field(0.002, ge=0, le=1, description="share floor of a verdict")
    critical_share: float = Field(0.05, gt=0, le=1, description="share at or above which a drift is critical")


class StatisticsConfig(_Model):
    false_alarm_rate: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="chance that a window family (see family) with no drift has any verdict; the "
        "correction spreads it over the family's tests",
    )
    correction: Literal["bonferroni", "bh", "none"] = "bonferroni"
    family: Literal["segment", "window"] = Field(
        "segment",
        description="segment: every (window, segment) is a family; window: all segments of a time window "
        "together (the page rate per window then stays at false_alarm_rate however many segments)",
    )
    psi: PSIConfig = PSIConfig()
    ks: KSConfig = KSConfig()
    chi2: ChiSquareConfig = ChiSquareConfig()
    unseen: UnseenConfig = UnseenConfig()
    min_events: int = Field(100, ge=1, description="fewer valid values in a window give no verdict")


class SegmentsConfig(_Model):
    overall: bool = Field(True, description="also evaluate all events together (segment {})")
    max_segments: int = Field(100, ge=1, description="distinct segments tracked; the rest go to __other__")


class ConceptConfig(_Model):
    detector: Literal["adwin", "page_hinkley", "kswin", "none"] = "adwin"
    stream: str = Field("model_error", description="'model_error' or 'feature:<name>'")
    error: Literal["absolute", "misclassification"] = "absolute"
    threshold: float = Field(0.5, description="score threshold for misclassification error")
    params: dict[str, float | int] = Field(default_factory=dict)

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if v != "model_error" and not (v.startswith("feature:") and len(v) > len("feature:")):
            raise ValueError(f"concept.stream must be 'model_error' or 'feature:<name>', not {v!r}")
        return v

    @model_validator(mode="after")
    def _params(self) -> ConceptConfig:
        """Unknown or invalid detector parameters fail when the config is read, not at the first event."""
        if self.detector != "none":
            from detectors.sequential import make_detector  # config must not import river eagerly

            try:
                make_detector(self.detector, self.params)
            except ConfigError as exc:
                raise ValueError("params: " + str(exc).removeprefix("concept.params: ")) from None
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{self.detector} rejects {self.params}: {exc}") from None
        return self


class MinDrop(_Model):
    """The effect floor of a performance verdict, per kind of metric (see :mod:`detectors.performance`)."""

    rate: float = Field(0.02, ge=0, le=1, description="accuracy, precision, recall, F1, ROC AUC: absolute drop")
    loss: float = Field(0.1, ge=0, description="log loss, Brier, MAE, RMSE, MAPE: increase relative to the reference")
    bias: float = Field(0.1, ge=0, description="bias: shift either way, relative to the reference's MAE")


class CriticalDrop(_Model):
    """The drop at or above which a performance verdict is critical, per kind of metric."""

    rate: float = Field(0.05, ge=0, le=1)
    loss: float = Field(0.25, ge=0)
    bias: float = Field(0.25, ge=0)


class LabelsConfig(_Model):
    """Labels that arrive later, joined to the predictions by id (see :mod:`detectors.join`)."""

    topic: str | None = Field(None, description="serve: the topic of label events")
    id_field: str = Field("id", min_length=1, description="the id, at the top level of predictions and labels")
    label_field: str = Field("label", min_length=1, description="the label, at the top level of label events")
    time_field: str | None = Field(
        "timestamp", description="event time of a label (units as events.time_unit); None = Kafka timestamp"
    )
    task: Literal["classification", "regression"] = "classification"
    threshold: float = Field(0.5, gt=0, lt=1, description="classification: score >= threshold predicts positive")
    max_delay: int | str = Field(description="how long a prediction waits for its label, in the labels' event time")
    clock_skew: int | str = Field("1m", description="a label may be stamped up to this much before its prediction")
    budget: int = Field(10_000_000, ge=1, description="waiting predictions at most (and held labels at most as many)")
    min_coverage: float = Field(
        0.95, gt=0, le=1, description="a window's performance is emitted once this share of its predictions has labels"
    )
    min_labels: int = Field(100, ge=1, description="fewer labelled events in a window give no verdict")
    metrics: tuple[str, ...] | None = Field(None, description="the metrics with verdicts (default: all of the task)")
    min_drop: MinDrop = MinDrop()
    critical_drop: CriticalDrop = CriticalDrop()

    @field_validator("max_delay", "clock_skew")
    @classmethod
    def _duration(cls, v: int | str, info: Any) -> int | str:
        ms = parse_duration_ms(v, "")
        if info.field_name == "max_delay" and ms <= 0:
            raise ValueError(f"{v!r} is not positive: no label could ever arrive in time")
        if ms < 0:
            raise ValueError(f"{v!r} is negative")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: tuple[str, ...] | None, info: Any) -> tuple[str, ...] | None:
        from detectors.performance import METRICS

        task = info.data.get("task", "classification")
        if v is not None:
            bad = [m for m in v if m not in METRICS[task]]
            if bad:
                raise ValueError(f"{bad} are not metrics of task {task} (choose from {list(METRICS[task])})")
        return v

    @model_validator(mode="after")
    def _drops(self) -> LabelsConfig:
        for kind in ("rate", "loss", "bias"):
            low, high = getattr(self.min_drop, kind), getattr(self.critical_drop, kind)
            if high < low:
                raise ValueError(f"labels.critical_drop.{kind} ({high}) must be >= labels.min_drop.{kind} ({low})")
        return self

    @property
    def max_delay_ms(self) -> int:
        return parse_duration_ms(self.max_delay, "labels.max_delay")

    @property
    def clock_skew_ms(self) -> int:
        return parse_duration_ms(self.clock_skew, "labels.clock_skew")

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        from detectors.performance import METRICS

        return self.metrics if self.metrics is not None else METRICS[self.task]


class MonitorConfig(_Model):
    monitor: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    reference: str = Field(
        description="path of the reference profile JSON, or models:/NAME/VERSION or models:/NAME@ALIAS (MLflow)"
    )
    events: EventsConfig = EventsConfig()
    features: FeaturesConfig = FeaturesConfig()
    window: WindowConfig = WindowConfig()
    statistics: StatisticsConfig = StatisticsConfig()
    segments: SegmentsConfig = SegmentsConfig()
    concept: ConceptConfig = ConceptConfig()
    labels: LabelsConfig | None = None

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        if is_model_uri(v):
            parse_model_uri(v)
        return v

    @model_validator(mode="after")
    def _family(self) -> MonitorConfig:
        if self.statistics.family == "window" and self.window.kind == "count":
            raise ValueError(
                "statistics.family: 'window' spans the segments of one time window; count windows of "
                "different segments do not line up (use family: segment)"
            )
        return self

    @model_validator(mode="after")
    def _labels(self) -> MonitorConfig:
        if self.labels is None:
            return self
        if not self.events.prediction_field:
            raise ValueError("labels: needs events.prediction_field (the score the labels are compared with)")
        if self.events.label_field:
            raise ValueError(
                "labels: events.label_field (labels inside the prediction events) and a labels section (labels that "
                "arrive later) exclude each other; remove one"
            )
        if self.window.kind == "count":
            raise ValueError(
                "labels: performance windows are by prediction event time; use tumbling or sliding windows"
            )
        if self.labels.id_field in (self.events.prediction_field, self.events.time_field):
            raise ValueError(f"labels.id_field {self.labels.id_field!r} is another event field")
        return self

    @property
    def concept_active(self) -> bool:
        """The concept detector runs when configured and its stream exists in the events.

        With ``stream: model_error`` it needs ``events.prediction_field`` and labels: ``events.label_field``
        (in the events) or a ``labels`` section (joined later, see :attr:`concept_on_labels`); without
        them concept detection is off (the CLI says so at start).
        """
        c = self.concept
        if c.detector == "none":
            return False
        if c.stream == "model_error":
            return bool(self.events.prediction_field and (self.events.label_field or self.labels is not None))
        return True

    def check_event_fields(self, features: Sequence[str]) -> None:
        """Refuse to monitor an event field (time, segment, prediction, label, id) that ``features.include``
        does not list, when the reference has it as a feature (a profile built without the config): an id
        drifts in every window, a label's drift is the concept's, not the data's."""
        if self.features.include is not None:
            return
        fields = self.events.fields
        clash = [f for f in features if f in fields]
        if clash:
            raise ConfigError(
                f"the reference's features {clash} are event fields of this monitor (events.*_field, "
                "events.segment_fields); an event field is a feature only when features.include lists it. "
                "Rebuild the reference with `reference build --config` (which leaves them out), or list the "
                "features to monitor in features.include"
            )

    @property
    def concept_on_labels(self) -> bool:
        """The concept detector runs on the error stream of joined labels (in label-arrival order)."""
        return self.concept_active and self.concept.stream == "model_error" and self.labels is not None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> MonitorConfig:
        """Validate; sections owned by other components are ignored here."""
        if not isinstance(data, Mapping):
            raise ConfigError("monitor config must be a mapping at the top level")
        own = {k: v for k, v in data.items() if k not in FOREIGN_SECTIONS}
        if base_dir is not None and isinstance(own.get("reference"), str) and not is_model_uri(own["reference"]):
            ref = Path(own["reference"])
            if not ref.is_absolute():
                own["reference"] = str(base_dir / ref)
        try:
            return cls.model_validate(own)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "monitor config")) from None


def format_validation_error(exc: ValidationError, what: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)


#: columns never taken as features when the feature list is left to the data
TIME_COLUMNS = frozenset({"timestamp", "time", "ts", "event_time"})


def event_fields(config: Mapping[str, Any] | None) -> frozenset[str]:
    """The event fields a (raw) monitor config names: its time, features, segment, prediction,
    label and id fields; the default time field ``timestamp`` when it names none.

    >>> sorted(event_fields({"events": {"prediction_field": "score", "segment_fields": ["country"]}}))
    ['country', 'features', 'score', 'timestamp']
    """
    ev = dict((config or {}).get("events") or {})
    defaults = EventsConfig()
    names = {
        k: ev.get(k, getattr(defaults, k))
        for k in ("time_field", "features_field", "prediction_field", "label_field", "id_field")
    }
    found = {v for v in names.values() if isinstance(v, str)}
    found |= {s for s in ev.get("segment_fields") or () if isinstance(s, str)}
    return frozenset(found)


def reference_columns(
    columns: Sequence[str],
    features: Sequence[str] | None,
    categorical: Sequence[str],
    config: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """The features and categorical columns of a reference build.

    Flags win; otherwise the config's ``features.include`` / ``features.categorical``;
    otherwise every column but the time columns and the config's event fields (time,
    prediction, label, segments, id): an event field is a feature only when listed.

    >>> reference_columns(["ts", "a", "b", "score", "id"], None, ["b"], {"events": {"prediction_field": "score",
    ...     "id_field": "id"}})
    (['a', 'b'], ['b'])
    """
    skip = set(TIME_COLUMNS) | event_fields(config)
    chosen = list(features) if features else None
    cats = list(categorical)
    if config:
        feats = config.get("features") or {}
        chosen = chosen or (list(feats["include"]) if feats.get("include") else None)
        cats = cats or list(feats.get("categorical") or [])
        if isinstance(config.get("labels"), Mapping):  # the id and label columns of a labelled baseline
            lab = config["labels"]
            skip |= {str(lab.get("id_field", "id")), str(lab.get("label_field", "label"))}
    if chosen is None:
        chosen = [c for c in columns if c not in skip]
    return chosen, cats
