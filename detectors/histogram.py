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

import math
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


class NumericBinner:
    """Fine-bin slots of many numeric features at once, equal to ``searchsorted(edges, x, "right")``.

    ``bin_index`` with ``searchsorted`` costs ~20 ns a value (a binary search whose branches
    the CPU cannot predict). Here each feature gets a uniform grid of cells over its edges and
    a lookup table: ``cell(x) = trunc(clip(x * scale + shift, 0, cells + 1))``. The cell map is
    monotone in ``x`` (each step is), and the edges are put through the very same float
    operations, so every edge in a lower cell than ``x`` is ``< x`` and every edge in a higher
    cell is ``> x``; only the (at most ``depth``) edges sharing ``x``'s cell are compared. So
    ``slot = table[cell] + sum(x >= edge_k[cell])`` is exact, whatever the rounding, without a
    branch. A feature whose edges crowd more than :data:`MAX_DEPTH` into one cell even on the
    finest grid keeps ``searchsorted``. NaN goes to the missing slot, +-inf to the invalid one.

    ``coded``: (slots, offset) of further columns, after the numeric ones, whose values are
    slots already (categorical slots the consumer's decoder carries as exact small integers in
    the same float64 matrix): each is a grid of one cell per slot (scale 1, shift 0, no edge),
    so ``slot = offset + value`` comes out of the same passes, and a decoded (n, numeric +
    categorical) matrix is binned whole, contiguous, with no second pass per categorical.

    >>> import numpy as np
    >>> p = NumericProfile("x", (0.0, 1.0, 2.0), (1, 1, 1, 1), (0, 2), 0, 0)
    >>> b = NumericBinner([p], [10])
    >>> b.indices(np.array([[-5.0], [0.0], [0.5], [1.0], [2.0], [np.nan], [np.inf]])).ravel().tolist()
    [10, 11, 11, 12, 13, 14, 15]
    """

    GRIDS = (1024, 4096, 16384, 65536)
    MAX_DEPTH = 4

    def __init__(
        self, profiles: Sequence[NumericProfile], offsets: Sequence[int], coded: Sequence[tuple[int, int]] = ()
    ) -> None:
        self.n_numeric = len(profiles)
        self.k = len(profiles) + len(coded)
        # (a coded column has no missing or invalid value: -1, and indices refuses NaN or inf there)
        self.missing = np.array(
            [o + p.n_bins for p, o in zip(profiles, offsets, strict=True)] + [-1] * len(coded), dtype=np.int64
        )
        self.invalid = np.where(self.missing >= 0, self.missing + 1, -1)
        self.slow: list[tuple[int, FloatArray, int]] = []  # (column, edges, slot offset) kept on searchsorted
        # (column, scale, shift, slot of each cell, per-cell edges padded with +inf)
        fast: list[tuple[int, float, float, IntArray, FloatArray]] = []
        for j, (p, off) in enumerate(zip(profiles, offsets, strict=True)):
            plan = self._plan(p.edges_array)
            if plan is None:
                self.slow.append((j, p.edges_array, int(off)))
            else:
                scale, shift, _cells, per_cell = plan
                fast.append((j, scale, shift, int(off) + self._below(per_cell), per_cell))
        for j, (slots, off) in enumerate(coded, start=len(profiles)):
            fast.append((j, 1.0, 0.0, int(off) + np.arange(slots, dtype=np.int64), np.full((slots, 0), np.inf)))
        self.fast_cols = np.array([f[0] for f in fast], dtype=np.int64)
        self.all_fast = len(fast) == self.k
        self.scale = np.array([f[1] for f in fast], dtype=np.float64)
        self.shift = np.array([f[2] for f in fast], dtype=np.float64)
        width = max((len(f[4]) for f in fast), default=0)  # cells + 2 of the widest grid
        self.depth = max((f[4].shape[1] for f in fast), default=0)
        self.top = np.array([len(f[4]) - 1 for f in fast], dtype=np.float64)
        self.base = np.arange(len(fast), dtype=np.int64) * width
        table = np.zeros(len(fast) * width, dtype=np.int64)
        bounds = np.full((self.depth, len(fast) * width), np.inf)
        for i, (_j, _s, _b, cell_slots, per_cell) in enumerate(fast):
            c = len(per_cell)
            lo = i * width
            table[lo : lo + c] = cell_slots
            bounds[: per_cell.shape[1], lo : lo + c] = per_cell.T
        self.table = table
        self.bounds = bounds

    @staticmethod
    def _cells(x: FloatArray, scale: float, shift: float, top: float) -> IntArray:
        with np.errstate(over="ignore", invalid="ignore"):
            t = x * scale
            t += shift
        np.fmax(t, 0.0, out=t)  # fmax/fmin: NaN -> the bound, so the cast below sees no NaN
        np.fmin(t, top, out=t)
        return t.astype(np.int64)

    @classmethod
    def _plan(cls, edges: FloatArray) -> tuple[float, float, int, FloatArray] | None:
        """(scale, shift, cells, per-cell edges padded with +inf) of the coarsest grid that is deep enough."""
        if len(edges) == 0:
            return 1.0, 0.0, 0, np.full((1, 0), np.inf)
        lo, hi = float(edges[0]), float(edges[-1])
        plans: list[tuple[int, float, float, int, IntArray]] = []  # (depth, scale, shift, cells, cell of each edge)
        for cells in cls.GRIDS:
            span = hi - lo
            scale = cells / span if span > 0 else 1.0
            shift = 1.0 - lo * scale
            if not (math.isfinite(scale) and math.isfinite(shift)):
                break
            cell = cls._cells(edges, scale, shift, float(cells + 1))
            depth = int(np.bincount(cell, minlength=cells + 2).max())
            plans.append((depth, scale, shift, cells, cell))
            if depth <= 1:
                break
        # the coarsest grid with one edge per cell, else with two, else with up to MAX_DEPTH
        for limit in (1, 2, cls.MAX_DEPTH):
            for depth, scale, shift, cells, cell in plans:
                if depth <= limit:
                    counts = np.bincount(cell, minlength=cells + 2)
                    per_cell = np.full((cells + 2, depth), np.inf)
                    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
                    per_cell[cell, np.arange(len(edges)) - start[cell]] = edges
                    return scale, shift, cells, per_cell
        return None

    @staticmethod
    def _below(per_cell: FloatArray) -> IntArray:
        """Number of edges in the cells before each cell."""
        n_in = np.isfinite(per_cell).sum(axis=1)
        return np.concatenate([[0], np.cumsum(n_in)[:-1]]).astype(np.int64)

    def indices(self, x: FloatArray, out: IntArray | None = None) -> IntArray:
        """(n, k) absolute slot indices of an (n, k) float64 matrix of the k features' values."""
        n = x.shape[0]
        if out is None:
            out = np.empty((n, self.k), dtype=np.int64)
        if n == 0:
            return out
        xf = x if self.all_fast else x[:, self.fast_cols]
        if len(self.fast_cols):
            with np.errstate(over="ignore", invalid="ignore"):
                t = xf * self.scale
                t += self.shift
            np.fmax(t, 0.0, out=t)  # NaN -> 0: its slot is fixed below
            np.fmin(t, self.top, out=t)
            cell = t.astype(np.int64)
            cell += self.base
            # (mode="clip": every cell is in range, and take writes into out without a buffer)
            res = self.table.take(cell, out=out, mode="clip") if self.all_fast else self.table.take(cell)
            for d in range(self.depth):
                res += xf >= self.bounds[d].take(cell)
            if not self.all_fast:
                out[:, self.fast_cols] = res
        for j, edges, off in self.slow:
            out[:, j] = np.searchsorted(edges, x[:, j], side="right") + off
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(np.add.reduce(x, axis=None))
        if not math.isfinite(total):  # some NaN or +-inf (or a sum that overflowed): fix those slots
            if self.k > self.n_numeric and not np.isfinite(x[:, self.n_numeric :]).all():
                raise ValueError("a coded column holds NaN or inf: its values must be slots")
            nan = np.isnan(x)
            if nan.any():
                np.copyto(out, np.broadcast_to(self.missing, out.shape), where=nan)
            inf = np.isinf(x)
            if inf.any():
                np.copyto(out, np.broadcast_to(self.invalid, out.shape), where=inf)
        return out


class FeatureColumns(dict[str, Any]):
    """Feature columns (name -> values) that may also carry the numeric ones as one (n, k) matrix,
    and categorical ones already binned: ``codes`` (name -> slot within the feature's profile in
    ``codes_reference``), or ``coded``, the names of the matrix's last columns, which hold such
    slots as floats (``matrix_features`` then names every column of the matrix).

    The consumer's decoder fills the matrix row by row; binning it whole saves a copy per feature.
    It bins categoricals while it checks their values, so the layout need not look them up again.
    """

    def __init__(
        self,
        columns: Mapping[str, Any],
        matrix: FloatArray | None = None,
        matrix_features: Sequence[str] = (),
        codes: Mapping[str, IntArray] | None = None,
        codes_reference: ReferenceProfile | None = None,
        coded: Sequence[str] = (),
    ):
        super().__init__(columns)
        self.matrix = matrix
        self.matrix_features = tuple(matrix_features)
        self.codes = dict(codes or {})
        self.codes_reference = codes_reference
        self.coded = tuple(coded)
        if self.coded and self.matrix_features[len(self.matrix_features) - len(self.coded) :] != self.coded:
            raise ValueError(f"coded columns {self.coded} are not the last of the matrix's {self.matrix_features}")

    def carried(self, reference: ReferenceProfile) -> Mapping[str, IntArray]:
        """The categorical slots carried for ``reference`` (none if they were binned for another)."""
        if self.codes_reference is not reference:
            return {}
        if not self.coded:
            return self.codes
        assert self.matrix is not None
        first = len(self.matrix_features) - len(self.coded)
        return {name: self.matrix[:, first + i].astype(np.int64) for i, name in enumerate(self.coded)}


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
        num_profiles = [reference.features[n] for n in self.numeric]
        assert all(isinstance(p, NumericProfile) for p in num_profiles)
        self._binner = NumericBinner(
            [p for p in num_profiles if isinstance(p, NumericProfile)], [self.offsets[n] for n in self.numeric]
        )
        self._num_pos = [names.index(n) for n in self.numeric]
        self._num_first = self._num_pos == list(range(len(self.numeric)))  # bin straight into out[:, :k]
        self._cat_pos = [(names.index(n), n) for n in self.categorical]
        # a matrix of every feature (numeric, then categorical slots: FeatureColumns.coded) bins whole
        # when the layout has them in that order; its binner is made when first needed (serve's decoder).
        # Its table is (features x widest grid): a categorical with more slots than the finest numeric
        # grid has cells (a huge top_n) would widen it for every feature, so such a layout bins the
        # categoricals one by one instead
        self._whole_order = (*self.numeric, *self.categorical) if self.categorical else ()
        widest = NumericBinner.GRIDS[-1] + 2
        if self.features != self._whole_order or any(
            reference.features[n].slot_size > widest for n in self.categorical
        ):
            self._whole_order = ()
        self._whole: NumericBinner | None = None

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
        """(n, features) matrix of absolute slot indices, flattened row-major.

        Numeric features are binned together by :class:`NumericBinner`, from the decoder's
        (n, numeric) matrix when ``columns`` is a :class:`FeatureColumns` carrying it; a matrix of
        every feature with the categoricals' slots last (``coded``, for this reference and in this
        layout's order) is binned whole, in one set of passes.
        """
        fc = columns if isinstance(columns, FeatureColumns) else None
        if (
            fc is not None
            and fc.matrix is not None
            and fc.matrix.shape[0] == n
            and self._whole_order
            and fc.matrix_features == self._whole_order
            and fc.coded == self.categorical
            and fc.codes_reference is self.reference
        ):
            return self._whole_binner().indices(fc.matrix).reshape(-1)
        out = np.empty((n, len(self.features)), dtype=np.int64)
        if self.numeric:
            matrix = None
            if fc is not None and fc.matrix is not None and fc.matrix_features[: len(self.numeric)] == self.numeric:
                matrix = fc.matrix[:, : len(self.numeric)]
            if matrix is None or matrix.shape[0] != n:
                matrix = np.empty((n, len(self.numeric)), dtype=np.float64)
                for j, name in enumerate(self.numeric):
                    matrix[:, j] = to_float_array(columns[name])
            if self._num_first:
                self._binner.indices(matrix, out[:, : len(self.numeric)])
            else:
                out[:, self._num_pos] = self._binner.indices(matrix)
        carried = fc.carried(self.reference) if fc is not None else {}
        for j, name in self._cat_pos:
            codes = carried.get(name)
            if codes is None or len(codes) != n:
                p = self.reference.features[name]
                assert isinstance(p, CategoricalProfile)
                codes = p.bin_index(columns[name])
            out[:, j] = codes + self.offsets[name]
        return out.reshape(-1)

    def _whole_binner(self) -> NumericBinner:
        """The binner of a matrix of every feature, numeric values then categorical slots."""
        if self._whole is None:
            numeric = [p for n in self.numeric if isinstance(p := self.reference.features[n], NumericProfile)]
            self._whole = NumericBinner(
                numeric,
                [self.offsets[n] for n in self.numeric],
                [(self.reference.features[n].slot_size, self.offsets[n]) for n in self.categorical],
            )
        return self._whole

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
