"""Frozen reference profiles: bins and counts that every window is compared with.

A profile is built once from baseline data and stored as versioned JSON with a sha256
fingerprint of its canonical form. Bins come from the reference only, never from a window.

Numeric feature
    *fine* bins whose interior edges are reference quantiles (default 100 bins); duplicate
    edges are merged (discrete data gives fewer bins); the outer bins are open to -inf and
    +inf. Bin ``i`` is ``[edge[i-1], edge[i])``: a value equal to an edge goes to the bin
    above it. *Coarse* PSI bins (default 10) are unions of consecutive fine bins, cut where
    the reference CDF crosses ``j / coarse_bins``, so one histogram serves PSI and KS.
    When the reference maximum is itself an edge (discrete data), an extra edge just above
    it keeps values beyond the reference's range apart (see :func:`quantile_edges`).
    Missing values (None, NaN) and non-finite values (+-inf) are counted apart.

Categorical feature
    the ``top_n`` most frequent reference categories (ties broken by name), ``__other__``
    for the rest of the reference's categories, ``__unseen__`` for values the reference
    never had, and ``__missing__`` (None, NaN, empty string).

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> ref = ReferenceProfile.build(
...     {"x": rng.normal(size=1000), "c": np.array(["a", "b", "a", None] * 250, dtype=object)},
...     categorical=["c"], fine_bins=10, coarse_bins=5)
>>> ref.features["x"].n_bins, ref.features["x"].n_coarse
(10, 5)
>>> ref.features["c"].buckets
('a', 'b', '__other__', '__unseen__')
>>> ReferenceProfile.from_json(ref.to_json()).fingerprint == ref.fingerprint
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from detectors.calibration import REPLICATES, Calibration, calibrate, categorical_null, numeric_null
from detectors.exceptions import ConfigError, InputError, ReferenceFormatError
from detectors.performance import PerformanceProfile

SCHEMA_VERSION = 2  # 2: calibration, n_singletons, discrete_values
KIND = "streamdrift.reference"
OTHER = "__other__"
UNSEEN = "__unseen__"
MISSING = "__missing__"
#: most reference categories kept to tell ``__other__`` from ``__unseen__``
MAX_OTHER_VALUES = 10_000
#: a numeric feature with at most this many distinct reference values gets one bin per value
DISCRETE_VALUES = 20

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def to_float_array(values: Any) -> FloatArray:
    """Convert a column to float64 with None -> NaN; raise :class:`InputError` on non-numbers."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False)
    if isinstance(values, np.ndarray) and values.dtype.kind == "b":
        raise InputError("values are booleans, not numbers")
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InputError(f"value {v!r} at row {i} is not a number")
        else:
            try:
                out[i] = float(v)
            except OverflowError:
                raise InputError(f"value at row {i} is an integer too large for a float") from None
    return out


def int_label(v: int | np.integer[Any]) -> str | None:
    """An integer category as its decimal text; None if Python cannot render it (> 4300 digits)."""
    try:
        return str(v)
    except ValueError:
        return None


def is_missing_category(v: Any) -> bool:
    """None, NaN and the empty string are missing categorical values."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == ""


@dataclass(frozen=True)
class NumericProfile:
    """Reference bins of one numeric feature."""

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    coarse_starts: tuple[int, ...]
    n_missing: int
    n_invalid: int
    values: tuple[float, ...] | None = None
    type: Literal["numeric"] = "numeric"

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1

    @property
    def n_coarse(self) -> int:
        return len(self.coarse_starts)

    @property
    def n(self) -> int:
        """Number of valid (finite) reference values."""
        return int(sum(self.counts))

    @property
    def slot_size(self) -> int:
        """Fine bins + missing + invalid."""
        return self.n_bins + 2

    @property
    def edges_array(self) -> FloatArray:
        return np.asarray(self.edges, dtype=np.float64)

    def bin_index(self, x: FloatArray) -> IntArray:
        """Slot index of each value: a fine bin, ``n_bins`` (missing) or ``n_bins + 1`` (inf)."""
        idx = np.searchsorted(self.edges_array, x, side="right").astype(np.int64)
        nan = np.isnan(x)
        if nan.any():
            idx[nan] = self.n_bins
        inf = np.isinf(x)
        if inf.any():
            idx[inf] = self.n_bins + 1
        return idx

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "numeric",
            "edges": list(self.edges),
            "counts": list(self.counts),
            "coarse_starts": list(self.coarse_starts),
            "n_missing": self.n_missing,
            "n_invalid": self.n_invalid,
        }
        if self.values is not None:
            d["values"] = list(self.values)
        return d


class _SlotLookup(dict[Any, int]):
    """Slot of a categorical value: the kept strings and the missing markers (None, "") are keys.

    Only strings and None are keys, so no other value can hit one by equality (``True == 1``,
    ``1.0 == 1``): every other value, and every string the reference did not keep, goes
    through ``bucket_of`` (``__missing__`` does not insert, so memory stays bounded).
    ``misses`` counts those calls: unchanged over a column means every value was a key.
    """

    def __init__(self, bucket_of: Any) -> None:
        super().__init__()
        self._bucket_of = bucket_of
        self.misses = 0

    def __missing__(self, value: Any) -> int:
        self.misses += 1
        return int(self._bucket_of(value))


@dataclass(frozen=True)
class CategoricalProfile:
    """Reference buckets of one categorical feature."""

    name: str
    categories: tuple[str, ...]
    counts: tuple[int, ...]  # per category, then __other__, then __unseen__ (always 0)
    other_values: tuple[str, ...]
    other_truncated: bool
    n_missing: int
    n_singletons: int = 0  # reference categories seen exactly once (the unseen rate's estimate)
    type: Literal["categorical"] = "categorical"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _lookup: dict[Any, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {c: i for i, c in enumerate(self.categories)}
        k = len(self.categories)
        for v in self.other_values:
            index[v] = k
        self._index.update(index)
        lookup = _SlotLookup(self.bucket_of)
        lookup.update(index)
        lookup.update({None: self.n_bins, "": self.n_bins})  # missing
        object.__setattr__(self, "_lookup", lookup)

    @property
    def buckets(self) -> tuple[str, ...]:
        return (*self.categories, OTHER, UNSEEN)

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 2

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    @property
    def slot_size(self) -> int:
        """Buckets + missing + invalid."""
        return self.n_bins + 2

    @property
    def unseen_rate(self) -> float:
        """The share of events whose category the reference never had, expected under no drift:
        Good–Turing's estimate (the share of reference values whose category occurred exactly
        once), add-one smoothed, ``(n_singletons + 1) / (n + 1)``, so a reference without rare
        categories still allows the odd new one. 0 when the reference's list of categories was
        truncated (a new category then cannot be told from ``__other__``)."""
        if self.other_truncated:
            return 0.0
        return (self.n_singletons + 1) / (self.n + 1)

    def bucket_of(self, v: Any) -> int:
        """Slot index of one value."""
        if is_missing_category(v):
            return self.n_bins
        if isinstance(v, (bool, np.bool_)):
            v = "true" if v else "false"
        elif isinstance(v, (int, np.integer)):
            label = int_label(v)
            if label is None:
                return self.n_bins + 1
            v = label
        elif not isinstance(v, str):
            return self.n_bins + 1
        i = self._index.get(v)
        if i is not None:
            return i
        # not among the kept reference values: unseen, unless the list was truncated
        return len(self.categories) if self.other_truncated else len(self.categories) + 1

    def bin_index(self, values: Sequence[Any]) -> IntArray:
        return self.bin_index_plain(values)[0]

    def bin_index_plain(self, values: Sequence[Any]) -> tuple[IntArray, bool]:
        """Slot of each value, and whether every value was *plain*: a kept string (a category
        or one of ``other_values``), None or "" (so a plain column with no missing slot holds
        only non-empty strings, already in the form ``decode_events`` gives)."""
        n = len(values)
        lookup = self._lookup
        assert isinstance(lookup, _SlotLookup)
        before = lookup.misses
        try:  # one dict lookup per value; what the dict does not have goes through bucket_of
            return np.fromiter(map(lookup.__getitem__, values), dtype=np.int64, count=n), lookup.misses == before
        except TypeError:  # an unhashable value (a list...)
            return np.fromiter(map(self.bucket_of, values), dtype=np.int64, count=n), False

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "categorical",
            "categories": list(self.categories),
            "counts": list(self.counts),
            "other_values": list(self.other_values),
            "other_truncated": self.other_truncated,
            "n_missing": self.n_missing,
            "n_singletons": self.n_singletons,
        }


FeatureProfile = NumericProfile | CategoricalProfile


def quantile_edges(x: FloatArray, fine_bins: int) -> tuple[float, ...]:
    """Interior fine-bin edges: reference quantiles ``i / fine_bins``, duplicates merged.

    When the largest edge is the reference maximum itself (discrete or constant data: an
    atom at the top), one more edge just above it (``nextafter(max, inf)``) closes the top
    atom's bin, so values above everything the reference ever had land in an empty bin of
    their own instead of being counted with the top atom. Without it a constant reference
    would have one populated bin and could never show a shift upwards.

    >>> quantile_edges(np.array([3.0, 3.0, 3.0]), 4)
    (3.0, 3.0000000000000004)
    """
    if x.size == 0:
        return ()
    qs = np.arange(1, fine_bins, dtype=np.float64) / fine_bins
    edges = np.quantile(x, qs, method="linear")
    uniq = [float(e) for e in np.unique(edges)]
    top = float(np.max(x))
    above = float(np.nextafter(top, np.inf))
    if uniq and uniq[-1] >= top and math.isfinite(above):
        uniq = [e for e in uniq if e < top] + [top, above]
    return tuple(uniq)


def coarse_starts_from_counts(counts: Sequence[int], coarse_bins: int) -> tuple[int, ...]:
    """First fine bin of each coarse bin, cutting where the reference CDF crosses j/coarse.

    Works from counts alone, so the Spark build (approximate quantiles) uses it too.

    Outer fine bins that the reference left empty (below its minimum or above its maximum,
    which happens with discrete data, see :func:`quantile_edges`) become coarse bins of
    their own, so PSI sees values outside the reference's range too; this can give up to
    two coarse bins more than ``coarse_bins``. Continuous data never has such bins.

    >>> coarse_starts_from_counts([0, 60, 30, 10, 0], 10)
    (0, 1, 2, 3, 4)
    >>> coarse_starts_from_counts([10] * 10, 5)
    (0, 2, 4, 6, 8)
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    cuts = {0}
    if total > 0:
        cum = np.cumsum(c) / total
        for j in range(1, coarse_bins):
            # the first fine bin whose cumulative share has reached j / coarse_bins
            b = int(np.searchsorted(cum, j / coarse_bins - 1e-12, side="left")) + 1
            if 0 < b < len(c):
                cuts.add(b)
        nonzero = np.flatnonzero(c)
        first, last = int(nonzero[0]), int(nonzero[-1])
        if first > 0:
            cuts.add(first)  # bins below the reference minimum stand alone
        if last + 1 < len(c):
            cuts.add(last + 1)  # bins above the reference maximum stand alone
    return tuple(sorted(cuts))


def discrete_edges(distinct: FloatArray) -> tuple[float, ...]:
    """Edges giving each of a discrete feature's values its own bin: the sorted distinct values,
    then one just above the largest (so values beyond the reference's range have a bin apart,
    as do values below it, in the bin below the first edge).

    >>> discrete_edges(np.array([0.0, 1.0, 2.0]))
    (0.0, 1.0, 2.0, 2.0000000000000004)
    """
    values = [float(v) for v in np.unique(distinct)]
    above = float(np.nextafter(values[-1], np.inf))
    return (*values, above) if math.isfinite(above) else tuple(values)


def numeric_profile(
    name: str,
    values: Any,
    *,
    fine_bins: int = 100,
    coarse_bins: int = 10,
    keep_values: int = 0,
    discrete_values: int = DISCRETE_VALUES,
) -> NumericProfile:
    """A numeric feature's profile. A feature with at most ``discrete_values`` distinct values (and
    no more than ``fine_bins``) gets one fine and one coarse (PSI) bin per value, so its PSI is
    the textbook PSI over its values; others get quantile bins (:func:`quantile_edges`)."""
    x = to_float_array(values)
    finite = np.isfinite(x)
    n_missing = int(np.isnan(x).sum())
    n_invalid = int(np.isinf(x).sum())
    xv = x[finite]
    distinct = np.unique(xv)
    if 0 < len(distinct) <= min(discrete_values, fine_bins - 2):
        edges = discrete_edges(distinct)
        return numeric_profile_from_edges(name, edges, xv, n_missing, n_invalid, coarse_bins=0, keep_values=keep_values)
    edges = quantile_edges(xv, fine_bins)
    return numeric_profile_from_edges(
        name, edges, xv, n_missing, n_invalid, coarse_bins=coarse_bins, keep_values=keep_values
    )


def numeric_profile_from_edges(
    name: str,
    edges: Sequence[float],
    finite_values: FloatArray,
    n_missing: int,
    n_invalid: int,
    *,
    coarse_bins: int = 10,
    keep_values: int = 0,
) -> NumericProfile:
    """The profile for given edges; ``coarse_bins=0``: one coarse bin per fine bin (discrete data)."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, finite_values, side="right")
    counts = np.bincount(idx, minlength=len(e) + 1)
    kept: tuple[float, ...] | None = None
    if keep_values and finite_values.size <= keep_values:
        kept = tuple(float(v) for v in np.sort(finite_values))
    return NumericProfile(
        name=name,
        edges=tuple(float(v) for v in e),
        counts=tuple(int(v) for v in counts),
        coarse_starts=(
            tuple(range(len(counts))) if coarse_bins == 0 else coarse_starts_from_counts(counts.tolist(), coarse_bins)
        ),
        n_missing=n_missing,
        n_invalid=n_invalid,
        values=kept,
    )


def categorical_profile(name: str, values: Iterable[Any], *, top_n: int = 50) -> CategoricalProfile:
    counter: Counter[str] = Counter()
    n_missing = 0
    for v in values:
        if is_missing_category(v):
            n_missing += 1
        elif isinstance(v, (bool, np.bool_)):
            counter["true" if v else "false"] += 1
        elif isinstance(v, str):
            counter[v] += 1
        elif isinstance(v, (int, np.integer)):
            label = int_label(v)
            if label is None:
                raise InputError(f"categorical feature {name!r}: an integer too long for a category")
            counter[label] += 1
        else:
            raise InputError(f"categorical feature {name!r}: value {v!r} is not a string or integer")
    return categorical_profile_from_counts(name, counter, n_missing, top_n=top_n)


def categorical_profile_from_counts(
    name: str, counter: Mapping[str, int], n_missing: int, *, top_n: int = 50
) -> CategoricalProfile:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ordered[:top_n]
    rest = ordered[top_n:]
    other_count = sum(c for _, c in rest)
    other_values = sorted(v for v, _ in rest)
    truncated = len(other_values) > MAX_OTHER_VALUES
    return CategoricalProfile(
        name=name,
        categories=tuple(v for v, _ in top),
        counts=(*(c for _, c in top), other_count, 0),
        other_values=tuple(other_values[:MAX_OTHER_VALUES]),
        other_truncated=truncated,
        n_missing=n_missing,
        n_singletons=sum(1 for c in counter.values() if c == 1),
    )


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats as shortest repr: the form the fingerprint hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class ReferenceProfile:
    """Bins and counts of every feature of a baseline data set; immutable."""

    features: Mapping[str, FeatureProfile]
    fine_bins: int = 100
    coarse_bins: int = 10
    top_n: int = 50
    n_rows: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None
    discrete_values: int = DISCRETE_VALUES
    #: the reference period's model performance and its calibration (a baseline with labels), or None
    performance: PerformanceProfile | None = None

    @classmethod
    def build(
        cls,
        columns: Mapping[str, Any],
        *,
        categorical: Iterable[str] = (),
        features: Sequence[str] | None = None,
        fine_bins: int = 100,
        coarse_bins: int = 10,
        top_n: int = 50,
        keep_values: int = 0,
        discrete_values: int = DISCRETE_VALUES,
        metadata: Mapping[str, Any] | None = None,
        calibrate: bool = True,
        chunks: bool = True,
        calibration_replicates: int = REPLICATES,
        calibration_seed: int = 0,
    ) -> ReferenceProfile:
        """Build from columns (name -> array or list, rows in the reference's order). ``features``
        defaults to all columns.

        ``calibrate``: compute the null-distribution calibration (:mod:`detectors.calibration`),
        also from chunks of the rows in their order unless ``chunks`` is off (rows in no
        meaningful order). A profile without calibration cannot give verdicts.
        """
        if fine_bins < 2:
            raise ConfigError(f"fine_bins must be >= 2 (got {fine_bins}); fewer bins cannot show a shift")
        if not 2 <= coarse_bins <= fine_bins:
            raise ConfigError(f"coarse_bins must be between 2 and fine_bins={fine_bins} (got {coarse_bins})")
        if top_n < 1:
            raise ConfigError(f"top_n must be >= 1 (got {top_n})")
        cats = set(categorical)
        names = list(features) if features is not None else list(columns)
        if not names:
            raise ConfigError("features: no feature to profile; name at least one column")
        missing_cols = [n for n in list(names) + sorted(cats) if n not in columns]
        if missing_cols:
            raise InputError(f"reference data has no column(s) {missing_cols}; columns are {sorted(columns)}")
        n_rows = len(columns[names[0]])
        profiles: dict[str, FeatureProfile] = {}
        for name in names:
            if name in cats:
                profiles[name] = categorical_profile(name, columns[name], top_n=top_n)
            else:
                try:
                    profiles[name] = numeric_profile(
                        name,
                        columns[name],
                        fine_bins=fine_bins,
                        coarse_bins=coarse_bins,
                        keep_values=keep_values,
                        discrete_values=discrete_values,
                    )
                except InputError as exc:
                    raise InputError(f"feature {name!r}: {exc}; declare it categorical if it holds labels") from exc
        ref = cls(
            features=profiles,
            fine_bins=fine_bins,
            coarse_bins=coarse_bins,
            top_n=top_n,
            n_rows=n_rows,
            metadata=dict(metadata or {}),
            discrete_values=discrete_values,
        )
        if not calibrate:
            return ref
        rows = {name: ref.row_bins(name, columns[name]) for name in names} if chunks else None
        return ref.calibrated(replicates=calibration_replicates, seed=calibration_seed, rows=rows)

    # -- calibration ---------------------------------------------------------------------
    def row_bins(self, name: str, values: Any) -> npt.NDArray[np.int64]:
        """The calibration bin of every value of a reference column in order, missing values left out
        (a numeric feature's fine bin; a categorical's bucket, ``__unseen__`` excluded)."""
        p = self.features[name]
        if isinstance(p, NumericProfile):
            x = to_float_array(values)
            x = x[np.isfinite(x)]
            return np.searchsorted(p.edges_array, x, side="right").astype(np.int64)
        idx = p.bin_index(values)
        return idx[idx < p.n_bins - 1]

    def calibrated(
        self,
        *,
        replicates: int = REPLICATES,
        seed: int = 0,
        rows: Mapping[str, npt.NDArray[np.int64]] | None = None,
    ) -> ReferenceProfile:
        """This profile with its calibration computed (``rows``: :meth:`row_bins` of every feature, in
        the reference's order, for the chunks). Features empty in the reference are left out of it:
        they never have enough data for a verdict."""
        nulls = []
        for name, p in self.features.items():
            if p.n == 0:
                continue
            if isinstance(p, NumericProfile):
                nulls.append(numeric_null(name, p.counts, p.coarse_starts))
            else:
                nulls.append(categorical_null(name, p.counts[:-1]))
        try:
            cal = calibrate(nulls, chunk_bins=rows, replicates=replicates, seed=seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return dataclasses.replace(self, calibration=cal)

    # -- serialisation -------------------------------------------------------------------
    def content(self) -> dict[str, Any]:
        """The hashed part: settings and every feature's bins and counts (and the performance, when the
        baseline had labels: the key is absent otherwise, so profiles without it keep their fingerprint)."""
        doc = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "settings": {
                "fine_bins": self.fine_bins,
                "coarse_bins": self.coarse_bins,
                "top_n": self.top_n,
                "discrete_values": self.discrete_values,
            },
            "n_rows": self.n_rows,
            "features": {name: p.to_dict() for name, p in self.features.items()},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }
        if self.performance is not None:
            doc["performance"] = self.performance.to_dict()
        return doc

    @property
    def fingerprint(self) -> str:
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = "sha256:" + hashlib.sha256(canonical_json(self.content()).encode()).hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return str(cached)

    def to_json(self) -> str:
        doc = self.content()
        doc["metadata"] = dict(self.metadata)
        doc["fingerprint"] = self.fingerprint
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, *, upgrade: bool = False) -> ReferenceProfile:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReferenceFormatError(f"reference is not valid JSON: {exc}") from exc
        return cls.from_dict(doc, upgrade=upgrade)

    @classmethod
    def load(cls, path: str | Path, *, upgrade: bool = False) -> ReferenceProfile:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReferenceFormatError(f"cannot read reference file {p}: {exc.strerror}") from exc
        try:
            return cls.from_json(text, upgrade=upgrade)
        except ReferenceFormatError as exc:
            raise ReferenceFormatError(f"{p}: {exc}") from exc

    @classmethod
    def from_dict(cls, doc: Any, *, upgrade: bool = False) -> ReferenceProfile:
        """A profile from its JSON document. ``upgrade``: also read a version 1 document (no
        calibration, no singleton counts: its unseen rate is then that of a reference without
        rare categories), for ``streamdrift reference calibrate``."""
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise ReferenceFormatError(f"not a streamdrift reference profile (kind must be {KIND!r})")
        version = doc.get("schema_version")
        if version == 1 and upgrade:
            doc = dict(doc, schema_version=SCHEMA_VERSION, calibration=None, fingerprint=None)
            doc["settings"] = {"discrete_values": 0, **doc["settings"]}
            doc["features"] = {
                k: ({"n_singletons": 0, **f} if f.get("type") == "categorical" else f)
                for k, f in doc["features"].items()
            }
            version = SCHEMA_VERSION
        if version == 1:
            raise ReferenceFormatError(
                "reference schema_version 1 has no calibrated thresholds (this streamdrift reads version "
                f"{SCHEMA_VERSION}); add them with `streamdrift reference calibrate --reference FILE --out NEW` "
                "or rebuild it with `streamdrift reference build`"
            )
        if version != SCHEMA_VERSION:
            raise ReferenceFormatError(
                f"reference schema_version {version!r} is not supported (this streamdrift reads "
                f"version {SCHEMA_VERSION}); rebuild it with `streamdrift reference build`"
            )
        try:
            settings = doc["settings"]
            feats: dict[str, FeatureProfile] = {}
            for name, f in doc["features"].items():
                if f["type"] == "numeric":
                    feats[name] = NumericProfile(
                        name=name,
                        edges=tuple(float(v) for v in f["edges"]),
                        counts=tuple(int(v) for v in f["counts"]),
                        coarse_starts=tuple(int(v) for v in f["coarse_starts"]),
                        n_missing=int(f["n_missing"]),
                        n_invalid=int(f["n_invalid"]),
                        values=tuple(float(v) for v in f["values"]) if "values" in f else None,
                    )
                    p = feats[name]
                    assert isinstance(p, NumericProfile)
                    if len(p.counts) != p.n_bins or list(p.edges) != sorted(set(p.edges)):
                        raise ReferenceFormatError(f"feature {name!r}: edges and counts do not agree")
                elif f["type"] == "categorical":
                    feats[name] = CategoricalProfile(
                        name=name,
                        categories=tuple(str(v) for v in f["categories"]),
                        counts=tuple(int(v) for v in f["counts"]),
                        other_values=tuple(str(v) for v in f["other_values"]),
                        other_truncated=bool(f["other_truncated"]),
                        n_missing=int(f["n_missing"]),
                        n_singletons=int(f["n_singletons"]),
                    )
                else:
                    raise ReferenceFormatError(f"feature {name!r}: unknown type {f['type']!r}")
            ref = cls(
                features=feats,
                fine_bins=int(settings["fine_bins"]),
                coarse_bins=int(settings["coarse_bins"]),
                top_n=int(settings["top_n"]),
                n_rows=int(doc["n_rows"]),
                metadata=dict(doc.get("metadata") or {}),
                calibration=None if doc["calibration"] is None else Calibration.from_dict(doc["calibration"]),
                discrete_values=int(settings["discrete_values"]),
                performance=None
                if doc.get("performance") is None
                else PerformanceProfile.from_dict(doc["performance"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ReferenceFormatError):
                raise
            raise ReferenceFormatError(f"reference profile is malformed: {type(exc).__name__}: {exc}") from exc
        stored = doc.get("fingerprint")
        if stored is not None and stored != ref.fingerprint:
            raise ReferenceFormatError(
                f"reference fingerprint mismatch: file says {stored}, content hashes to {ref.fingerprint} "
                "(the file was edited or corrupted)"
            )
        return ref

    # -- helpers ---------------------------------------------------------------------------
    def numeric_features(self) -> list[str]:
        return [n for n, p in self.features.items() if isinstance(p, NumericProfile)]

    def categorical_features(self) -> list[str]:
        return [n for n, p in self.features.items() if isinstance(p, CategoricalProfile)]

    def select(self, names: Sequence[str]) -> ReferenceProfile:
        """A profile restricted to ``names`` (its fingerprint differs from the full one)."""
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise ConfigError(f"features {unknown} are not in the reference (it has {sorted(self.features)})")
        cal = self.calibration
        return ReferenceProfile(
            features={n: self.features[n] for n in names},
            fine_bins=self.fine_bins,
            coarse_bins=self.coarse_bins,
            top_n=self.top_n,
            n_rows=self.n_rows,
            metadata=self.metadata,
            calibration=None if cal is None else cal.subset([n for n in names if n in cal.features]),
            discrete_values=self.discrete_values,
            performance=self.performance,
        )
