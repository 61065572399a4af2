"""Contract tests: every concept detector, discovered, checked the same way.

Golden detection indices are not made up here: the river-doc goldens are the change points
that river's own documentation prints for the same stream and parameters (river 0.26,
``river.drift.ADWIN`` / ``PageHinkley`` / ``KSWIN`` docstrings), and the others are checked
against river run directly in the same test.
"""

from __future__ import annotations

import inspect
import json
import random
from typing import Any

import numpy as np
import pytest
from river import drift

import detectors.sequential as seq
from detectors.sequential import DETECTORS, ConceptDetector, make_detector, restore

pytestmark = pytest.mark.unit


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


CONCRETE = [c for c in _all_subclasses(ConceptDetector) if not inspect.isabstract(c) and "kind" in c.__dict__]


def test_every_subclass_is_registered_and_well_formed() -> None:
    assert {c.kind for c in CONCRETE} == set(DETECTORS)
    assert len(CONCRETE) == len(DETECTORS) >= 3
    for cls in CONCRETE:
        assert DETECTORS[cls.kind] is cls
        assert cls.threshold_param in cls.defaults
        assert cls.__doc__
        det = cls()
        # constructor arguments stored under their own names, learned state private
        assert det.params == cls.defaults
        assert all(not k.startswith("_") for k in det.params)


def _stream(seed: int, n: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(v) for v in np.concatenate([rng.normal(0, 1, n // 2), rng.normal(1.5, 1, n - n // 2)])]


def _small(cls: type[ConceptDetector]) -> dict[str, Any]:
    return {"window_size": 60, "stat_size": 20} if cls.kind == "kswin" else {}


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.kind)
def test_determinism(cls: type[ConceptDetector]) -> None:
    xs = _stream(1, 1200)
    runs = []
    for _ in range(2):
        det = cls(**_small(cls))
        runs.append(([i for i, x in enumerate(xs) if det.update(x)], det.snapshot()))
    assert runs[0] == runs[1]
    assert runs[0][0], "the stream has a change; the detector must fire"


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.kind)
@pytest.mark.parametrize("split", [0, 1, 37, 600, 1199, -1])
def test_snapshot_is_strict_json_and_round_trips(cls: type[ConceptDetector], split: int) -> None:
    """``split = -1``: snapshot right after the first detection (the pending-reset state)."""
    xs = _stream(2, 1200)
    full = cls(**_small(cls))
    hits = [i for i, x in enumerate(xs) if full.update(x)]
    if split == -1:
        split = hits[0] + 1
    det = cls(**_small(cls))
    for x in xs[:split]:
        det.update(x)
    snap = det.snapshot()
    text = json.dumps(snap, allow_nan=False)  # strict JSON: no NaN / Infinity tokens
    back = restore(json.loads(text))
    assert type(back) is cls
    assert back.snapshot() == snap
    later = [split + i for i, x in enumerate(xs[split:]) if back.update(x)]
    assert later == [h for h in hits if h >= split]


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.kind)
def test_drift_detected_is_a_read_only_result(cls: type[ConceptDetector]) -> None:
    det = cls(**_small(cls))
    assert det.drift_detected is False
    with pytest.raises(AttributeError):
        det.drift_detected = True  # type: ignore[misc]


# -- golden -----------------------------------------------------------------------------------
def _river_doc_stream() -> list[int]:
    rng = random.Random(12345)
    return rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)


@pytest.mark.parametrize(
    ("kind", "params", "first_change"),
    [
        ("adwin", {}, 1023),  # river ADWIN docstring: "Change detected at index 1023"
        ("page_hinkley", {}, 1006),  # river PageHinkley docstring: "Change detected at index 1006"
        ("kswin", {"alpha": 0.0001, "seed": 42}, 1016),  # river KSWIN docstring: index 1016
    ],
)
def test_golden_river_documentation_streams(kind: str, params: dict[str, Any], first_change: int) -> None:
    det = make_detector(kind, params)
    hits = [i for i, x in enumerate(_river_doc_stream()) if det.update(float(x))]
    assert hits[0] == first_change


GOLDEN_SEEDS = [(kind, seed) for kind in sorted(DETECTORS) for seed in (7, 8)]


@pytest.mark.parametrize(("kind", "seed"), GOLDEN_SEEDS)
def test_golden_indices_and_values_against_river_directly(kind: str, seed: int) -> None:
    """Pins every detection index and the detector's estimate at each one, on seeded streams."""
    xs = _stream(seed, 3000)
    det = make_detector(kind)
    ref = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[kind](**det.params)
    got, expected = [], []
    for i, x in enumerate(xs):
        if det.update(x):
            got.append((i, det.estimation))
        ref.update(x)
        if ref.drift_detected:
            est: float | None
            if kind == "adwin":
                est = float(ref.estimation) if ref.width else None
            elif kind == "page_hinkley":
                est = float(ref._x_mean.get()) if ref._x_mean.n else None
            else:
                est = None
            expected.append((i, est))
    # indices exactly; the estimate to the last bits (the wrapper keeps its own running mean for
    # Page-Hinkley, in another summation order than river's)
    assert [i for i, _ in got] == [i for i, _ in expected]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-12, abs=1e-15)
    assert got and got[-1][0] >= 1500  # the change at 1500 is among the detections


def test_module_doctest_example_fires_after_the_change() -> None:
    # mirrors the module docstring: ADWIN on a 0.2 -> 0.6 step at index 1000
    rng = np.random.default_rng(42)
    stream = np.concatenate([rng.normal(0.2, 0.05, 1000), rng.normal(0.6, 0.05, 1000)])
    det = make_detector("adwin")
    theirs = drift.ADWIN()
    hits, rhits = [], []
    for i, x in enumerate(stream):
        if det.update(float(x)):
            hits.append(i)
        theirs.update(float(x))
        if theirs.drift_detected:
            rhits.append(i)
    assert hits == rhits and 1000 <= hits[0] < 1100
    assert seq.SNAPSHOT_VERSION == 2
