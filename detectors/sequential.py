"""Sequential (concept-drift) detectors backed by river, behind one small contract.

``update(x)`` feeds one value (a model error, or a feature) and changes state;
``drift_detected`` says whether that update signalled a change; ``snapshot()`` returns
plain data (JSON-able) and :func:`restore` rebuilds an equivalent detector from it, so
the consumer can checkpoint detectors with its windows.

>>> import numpy as np
>>> rng = np.random.default_rng(42)
>>> stream = np.concatenate([rng.normal(0.2, 0.05, 1000), rng.normal(0.6, 0.05, 1000)])
>>> det = make_detector("adwin")
>>> hits = [i for i, x in enumerate(stream) if det.update(float(x))]
>>> hits[0] >= 1000 and hits[0] < 1100
True
"""

from __future__ import annotations

import base64
import math
import random
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from river import drift as river_drift

from detectors.exceptions import ConfigError, SnapshotError

SNAPSHOT_VERSION = 1


class ConceptDetector:
    """A river drift detector with snapshot/restore. Subclasses name the river class."""

    kind: ClassVar[str]
    defaults: ClassVar[dict[str, float | int]]
    #: the parameter that sets how readily the detector fires (reported as a record's threshold)
    threshold_param: ClassVar[str]

    def __init__(self, **params: float | int) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"concept.params: {unknown} are not parameters of {self.kind} (it takes {sorted(self.defaults)})"
            )
        self.params: dict[str, float | int] = {**self.defaults, **params}
        self.reset()

    def reset(self) -> None:
        self._river: Any = self._make()
        self.n_updates = 0
        self.n_detections = 0

    def _make(self) -> Any:
        raise NotImplementedError

    def update(self, x: float) -> bool:
        """Feed one value; return whether this value signalled a drift."""
        self._river.update(x)
        self.n_updates += 1
        hit = bool(self._river.drift_detected)
        if hit:
            self.n_detections += 1
        return hit

    @property
    def drift_detected(self) -> bool:
        return bool(self._river.drift_detected)

    @property
    def estimation(self) -> float | None:
        """The detector's current estimate of the stream mean, where it has one."""
        return None

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "params": dict(self.params),
            "n_updates": self.n_updates,
            "n_detections": self.n_detections,
            "state": self._state(),
        }


def _json_float(x: float) -> float | str:
    """A float as strict JSON allows: non-finite values as the strings ``float()`` reads back."""
    v = float(x)
    return v if math.isfinite(v) else str(v)


class ADWIN(ConceptDetector):
    """river's ADWIN: adaptive windowing on the stream mean (the default)."""

    kind = "adwin"
    threshold_param = "delta"
    defaults: ClassVar[dict[str, float | int]] = {
        "delta": 0.002,
        "clock": 32,
        "max_buckets": 5,
        "min_window_length": 5,
        "grace_period": 10,
    }

    def _make(self) -> Any:
        p = self.params
        return river_drift.ADWIN(  # type: ignore[no-untyped-call]
            delta=float(p["delta"]),
            clock=int(p["clock"]),
            max_buckets=int(p["max_buckets"]),
            min_window_length=int(p["min_window_length"]),
            grace_period=int(p["grace_period"]),
        )

    @property
    def estimation(self) -> float | None:
        return float(self._river.estimation) if self._river.width else None

    def _state(self) -> dict[str, Any]:
        helper = self._river._helper
        return {"helper": base64.b64encode(helper.__getstate__()).decode(), "drift": bool(self._river._drift_detected)}

    def _load(self, state: Mapping[str, Any]) -> None:
        self._river._helper.__setstate__(base64.b64decode(state["helper"]))
        self._river._drift_detected = bool(state["drift"])


class PageHinkley(ConceptDetector):
    """river's Page-Hinkley test for a change in the mean."""

    kind = "page_hinkley"
    threshold_param = "threshold"
    defaults: ClassVar[dict[str, float | int]] = {
        "min_instances": 30,
        "delta": 0.005,
        "threshold": 50.0,
        "alpha": 0.9999,
    }
    _fields = ("_x_mean", "_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease", "_drift_detected")

    def _make(self) -> Any:
        p = self.params
        return river_drift.PageHinkley(
            min_instances=int(p["min_instances"]),
            delta=float(p["delta"]),
            threshold=float(p["threshold"]),
            alpha=float(p["alpha"]),
        )

    @property
    def estimation(self) -> float | None:
        return float(self._river._x_mean.get()) if self._river._x_mean.n else None

    def _state(self) -> dict[str, Any]:
        r = self._river
        mean = r._x_mean
        return {
            "mean_n": float(mean.n),
            "mean": float(mean._mean),
            "sum_increase": float(r._sum_increase),
            "sum_decrease": float(r._sum_decrease),
            # +inf before the first update: kept as a string so the snapshot is strict JSON
            "min_increase": _json_float(r._min_increase),
            "max_decrease": _json_float(r._max_decrease),
            "drift": bool(r._drift_detected),
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        r = self._river
        r._x_mean.n = state["mean_n"]
        r._x_mean._mean = state["mean"]
        r._sum_increase = state["sum_increase"]
        r._sum_decrease = state["sum_decrease"]
        r._min_increase = float(state["min_increase"])
        r._max_decrease = float(state["max_decrease"])
        r._drift_detected = bool(state["drift"])


class KSWIN(ConceptDetector):
    """river's KSWIN: a KS test between a recent and an older sample of a sliding window."""

    kind = "kswin"
    threshold_param = "alpha"
    defaults: ClassVar[dict[str, float | int]] = {"alpha": 0.005, "window_size": 100, "stat_size": 30, "seed": 42}

    def _make(self) -> Any:
        p = dict(self.params)
        return river_drift.KSWIN(
            alpha=float(p["alpha"]),
            window_size=int(p["window_size"]),
            stat_size=int(p["stat_size"]),
            seed=int(p["seed"]),
        )

    def _state(self) -> dict[str, Any]:
        r = self._river
        version, internal, gauss = r._rng.getstate()
        return {
            "window": [float(v) for v in r.window],
            "n": int(r.n),
            "p_value": float(r.p_value),
            "rng": [version, list(internal), gauss],
            "drift": bool(r._drift_detected),
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        r = self._river
        r.window = deque(state["window"], maxlen=int(self.params["window_size"]))
        r.n = state["n"]
        r.p_value = state["p_value"]
        version, internal, gauss = state["rng"]
        rng = random.Random()
        rng.setstate((version, tuple(internal), gauss))
        r._rng = rng
        r._drift_detected = bool(state["drift"])


DETECTORS: dict[str, type[ConceptDetector]] = {c.kind: c for c in (ADWIN, PageHinkley, KSWIN)}


def make_detector(kind: str, params: Mapping[str, float | int] | None = None) -> ConceptDetector:
    try:
        cls = DETECTORS[kind]
    except KeyError:
        raise ConfigError(f"concept.detector: unknown detector {kind!r} (choose from {sorted(DETECTORS)})") from None
    return cls(**dict(params or {}))


def restore(snapshot: Mapping[str, Any]) -> ConceptDetector:
    """Rebuild a detector from :meth:`ConceptDetector.snapshot`."""
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"detector snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
    try:
        det = make_detector(snapshot["kind"], snapshot["params"])
        det.n_updates = int(snapshot["n_updates"])
        det.n_detections = int(snapshot["n_detections"])
        det._load(snapshot["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"cannot restore {snapshot.get('kind')!r} detector: {exc}") from exc
    return det
