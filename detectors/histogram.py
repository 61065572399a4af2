"""Window state: one integer count vector over the reference's bins, so states merge by addition.

The :class:`Layout` lays every monitored feature's slot end to end: a numeric feature's
slot is its fine bins, then ``missing``, then ``invalid`` (+-inf); a categorical feature's
slot is its buckets (categories, ``__other__``, ``__unseen__``), then ``missing``, then
``invalid`` (not a string). A window's state for one segment is a vector of that length,
plus the number of events. Merging two states is adding them, which is why the consumer,
the Spark job and the backfill agree exactly, and why sliding windows are sums of panes.

>>> import numpy as np
>>> from detectors.reference import ReferenceProfile
>>> ref = ReferenceProfile.build({"x": np.arange(100.0)}, fine_bins=4, coarse_bins=2)
>>> layout = Layout(ref, ["x"])
>>> a = layout.histogram({"x": np.array([1.0, 60.0, np.nan])})
>>> b = layout.histogram({"x": np.array([99.0, np.inf])})
>>> (a + b).counts.tolist()
[1, 0, 1, 1, 1, 1]
>>> (a + b).n_events
5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.exceptions import ConfigError, ReferenceMismatchError, SnapshotError
from detectors.reference import (
    CategoricalProfile,
    FloatArray,
    IntArray,
    NumericProfile,
    ReferenceProfile,
    to_float_array,
)

STATE_VERSION = 1


class Layout:
    """Where each feature's bins live in a window's count vector."""

    def __init__(self, reference: ReferenceProfile, features: Sequence[str] | None = None) -> None:
        names = list(features) if features is not None else list(reference.features)
        unknown = [n for n in names if n not in reference.features]
        if unknown:
            raise ConfigError(
                f"features: {unknown} not in the reference profile (it has {sorted(reference.features)}); "
                "rebuild the reference or fix the feature list"
            )
        self.reference = reference
        self.features: tuple[str, ...] = tuple(names)
        self.numeric: tuple[str, ...] = tuple(n for n in names if isinstance(reference.features[n], NumericProfile))
        self.categorical: tuple[str, ...] = tuple(
            n for n in names if isinstance(reference.features[n], CategoricalProfile)
        )
        self.offsets: dict[str, int] = {}
        pos = 0
        for n in names:
            self.offsets[n] = pos
            pos += reference.features[n].slot_size
        self.size = pos
        # stacked numeric edges for the vectorised binning path
        self._num_profiles = [reference.features[n] for n in self.numeric]
        self._num_offsets = np.array([self.offsets[n] for n in self.numeric], dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        return self.reference.fingerprint

    def slot(self, counts: IntArray, feature: str) -> IntArray:
        p = self.reference.features[feature]
        o = self.offsets[feature]
        return counts[o : o + p.slot_size]

    def empty(self) -> WindowState:
        return WindowState(np.zeros(self.size, dtype=np.int64), 0, self.fingerprint)

    def flat_indices(self, columns: Mapping[str, Any], n: int) -> IntArray:
        """(n, features) matrix of absolute slot indices, flattened row-major."""
        out = np.empty((n, len(self.features)), dtype=np.int64)
        for j, name in enumerate(self.features):
            p = self.reference.features[name]
            col = columns[name]
            if isinstance(p, NumericProfile):
                out[:, j] = p.bin_index(to_float_array(col)) + self.offsets[name]
            else:
                assert isinstance(p, CategoricalProfile)
                out[:, j] = p.bin_index(col) + self.offsets[name]
        return out.reshape(-1)

    def histogram(self, columns: Mapping[str, Any]) -> WindowState:
        """State of one group of events given as columns (feature name -> values)."""
        n = len(columns[self.features[0]]) if self.features else 0
        idx = self.flat_indices(columns, n)
        counts = np.bincount(idx, minlength=self.size).astype(np.int64)
        return WindowState(counts, n, self.fingerprint)

    def grouped_histograms(self, columns: Mapping[str, Any], group: IntArray, n_groups: int) -> IntArray:
        """Counts of many groups at once: row ``g`` of the result sums the events with group ``g``."""
        n = len(group)
        if n == 0:
            return np.zeros((n_groups, self.size), dtype=np.int64)
        idx = self.flat_indices(columns, n).reshape(n, -1)
        idx += (group.astype(np.int64) * self.size)[:, None]
        counts = np.bincount(idx.reshape(-1), minlength=n_groups * self.size)
        return counts.reshape(n_groups, self.size).astype(np.int64)


@dataclass
class WindowState:
    """Counts of one (segment, window): merge is ``+``."""

    counts: IntArray
    n_events: int
    fingerprint: str

    def __add__(self, other: WindowState) -> WindowState:
        if other.fingerprint != self.fingerprint:
            raise ReferenceMismatchError(
                f"cannot merge window states of different references ({self.fingerprint} vs {other.fingerprint})"
            )
        return WindowState(self.counts + other.counts, self.n_events + other.n_events, self.fingerprint)

    def add_(self, counts: IntArray, n_events: int) -> None:
        """In-place merge of raw counts (hot path)."""
        self.counts += counts
        self.n_events += n_events

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "n_events": int(self.n_events),
            "counts": sparse(self.counts),
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any], layout: Layout) -> WindowState:
        if snap.get("version") != STATE_VERSION:
            raise SnapshotError(f"window state version {snap.get('version')!r} is not {STATE_VERSION}")
        if snap.get("fingerprint") != layout.fingerprint:
            raise ReferenceMismatchError(
                f"window state was computed against reference {snap.get('fingerprint')}, "
                f"not the configured {layout.fingerprint}; refusing to resume"
            )
        counts = dense(snap["counts"], layout.size)
        return cls(counts, int(snap["n_events"]), layout.fingerprint)


def sparse(counts: IntArray) -> list[list[int]]:
    """Non-zero entries as ``[[index, count], ...]`` (compact for mostly empty states)."""
    nz = np.flatnonzero(counts)
    return [[int(i), int(counts[i])] for i in nz]


def dense(pairs: Sequence[Sequence[int]], size: int) -> IntArray:
    out = np.zeros(size, dtype=np.int64)
    for i, c in pairs:
        if not 0 <= int(i) < size:
            raise SnapshotError(f"count index {i} outside a layout of size {size}")
        out[int(i)] = int(c)
    return out


def coarse_counts(profile: NumericProfile, fine: IntArray | FloatArray) -> IntArray:
    """Sum fine-bin counts into the profile's coarse PSI bins."""
    return np.add.reduceat(np.asarray(fine, dtype=np.int64), np.asarray(profile.coarse_starts, dtype=np.int64))
