"""Sequential (concept-drift) detectors backed by river, behind one small contract.

``update(x)`` feeds one value (a model error, or a feature) and changes state;
``drift_detected`` says whether that update signalled a change; ``snapshot()`` returns
plain data (JSON-able) and :func:`restore` rebuilds an equivalent detector from it, so
the consumer can checkpoint detectors with its windows.

The river object's state goes through river's own public surface: river detectors pickle
(the pickled bytes, base64, are the snapshot's ``state``), so no private field of river is
read or written here. The snapshot records river's version; a snapshot of another river
version is refused (:class:`SnapshotError`), because river's pickled internals may change
between releases: the caller starts that detector afresh (it relearns the stream) rather
than resume from state it cannot trust. Checkpoints are local, checksummed files this
process wrote itself, which is what makes unpickling them acceptable.

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
import pickle
from collections.abc import Mapping
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

from river import drift as river_drift

from detectors.exceptions import ConfigError, SnapshotError

SNAPSHOT_VERSION = 2  # 2: river's own pickled state, river's version recorded
#: the installed river, recorded in every snapshot
RIVER_VERSION = _dist_version("river")


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
        #: what this wrapper keeps beside river's object (plain JSON; saved with the snapshot)
        self._extra: dict[str, Any] = {}

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
    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "params": dict(self.params),
            "n_updates": self.n_updates,
            "n_detections": self.n_detections,
            "river_version": RIVER_VERSION,
            "extra": dict(self._extra),
            "state": base64.b64encode(pickle.dumps(self._river, protocol=pickle.HIGHEST_PROTOCOL)).decode(),
        }


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

    def _make(self) -> Any:
        p = self.params
        return river_drift.PageHinkley(
            min_instances=int(p["min_instances"]),
            delta=float(p["delta"]),
            threshold=float(p["threshold"]),
            alpha=float(p["alpha"]),
        )

    def update(self, x: float) -> bool:
        """As river's, keeping the mean of the values since the last detection (river resets its own
        at the update after one) for :attr:`estimation`, without reading river's private fields."""
        e = self._extra
        if e.get("restart", True):
            e.update(n=0, mean=0.0, restart=False)
        e["n"] += 1
        e["mean"] += (x - e["mean"]) / e["n"]
        hit = super().update(x)
        e["restart"] = hit
        return hit

    @property
    def estimation(self) -> float | None:
        return float(self._extra["mean"]) if self._extra.get("n") else None


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


DETECTORS: dict[str, type[ConceptDetector]] = {c.kind: c for c in (ADWIN, PageHinkley, KSWIN)}


def make_detector(kind: str, params: Mapping[str, float | int] | None = None) -> ConceptDetector:
    try:
        cls = DETECTORS[kind]
    except KeyError:
        raise ConfigError(f"concept.detector: unknown detector {kind!r} (choose from {sorted(DETECTORS)})") from None
    return cls(**dict(params or {}))


def restore(snapshot: Mapping[str, Any]) -> ConceptDetector:
    """Rebuild a detector from :meth:`ConceptDetector.snapshot` (refused when river's version differs)."""
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"detector snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
    saved = snapshot.get("river_version")
    if saved != RIVER_VERSION:
        raise SnapshotError(
            f"detector state was saved with river {saved}, this is river {RIVER_VERSION}: its pickled state "
            "may not mean the same; the detector starts afresh"
        )
    try:
        det = make_detector(snapshot["kind"], snapshot["params"])
        state = pickle.loads(base64.b64decode(snapshot["state"]))
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError, AttributeError) as exc:
        raise SnapshotError(f"cannot restore {snapshot.get('kind')!r} detector: {exc}") from exc
    if type(state) is not type(det._river):
        raise SnapshotError(f"detector state is a {type(state).__name__}, not river's {type(det._river).__name__}")
    det._river = state
    det._extra = dict(snapshot["extra"])
    det.n_updates = int(snapshot["n_updates"])
    det.n_detections = int(snapshot["n_detections"])
    return det
