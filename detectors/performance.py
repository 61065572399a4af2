"""Realized model performance per window: mergeable state, metrics, calibrated verdicts, records.

The state of a (segment, pane) is one vector; merging two is adding them, so a window is the sum of
its panes and the consumer, the backfill and Spark agree as they do for histograms.

Classification (a score in [0, 1], the probability of the positive class; labels 0/1)
    ``[n_predictions, n_labelled, log_loss_sum, brier_sum, negatives per score bin..., positives per
    score bin...]`` (int64). The *score bins* are fixed, the same for every window and every
    reference: :data:`SCORE_BINS` bins of equal width in logit between ``-LOGIT_RANGE`` and
    ``+LOGIT_RANGE`` (width 0.05: probabilities 6e-6 to 1 - 6e-6), two outer bins, and the
    decision threshold (``labels.threshold``) inserted as one more edge, so the confusion counts at
    the threshold come from the bins exactly (score ``>= threshold`` predicts positive). The loss
    sums are fixed point (units of ``2**-24`` per event, each event's loss rounded: a window's mean
    is within 3e-8 of the float computation, and sums are integers, so their order never matters).
    Log loss clips the score to ``[1e-15, 1 - 1e-15]``.

    * accuracy ``(TP + TN) / n``; precision ``TP / (TP + FP)`` (undefined without a predicted
      positive); recall ``TP / P`` (undefined without a positive); F1 ``2 TP / (2 TP + FP + FN)``
      (undefined with neither a positive nor a predicted positive); log loss and Brier the mean
      losses; positive rate ``P / n``; label coverage ``n_labelled / n_predictions``.
    * ROC AUC from the two score histograms: ``sum_b pos_b (neg_<b + neg_b / 2) / (P N)``. It is
      *exactly* the Mann–Whitney AUC of the scores rounded to their bins, positive–negative pairs
      in one bin counting as ties (1/2), and it differs from the AUC of the raw scores by at most
      half the share of positive–negative pairs that share a bin (:func:`auc_tie_bound`: for a
      typical classifier about 1e-3; it is the bins' only error). Undefined without both classes.

Regression (any finite score and label)
    ``[n_predictions, n_labelled, n_zero_labels, sum(e), sum(|e|), sum(e²), sum(|e| / |y|)]``
    (float64; ``e = score - label``): MAE, RMSE, bias (the mean of ``e``: positive means
    over-prediction) and MAPE, a fraction (0.1 = 10 %), over the events whose label is not 0:
    events with ``y = 0`` are counted (``n_zero_labels``) and left out of MAPE, which is undefined
    when every label is 0. Float sums: different batchings agree to about 1e-12 relative, not bit
    for bit.

Undefined is never 0: an undefined metric is None (NaN in the vectorised functions).

Verdicts (see :func:`evaluate_window`): the reference profile's :class:`PerformanceProfile` holds
the reference period's state and a calibration of each metric's *drop* at the window-size grid of
:mod:`detectors.calibration`, built like the drift statistics' (the module docstring there):

* the *drop* of a window is ``reference - window`` for accuracy, precision, recall, F1 and ROC AUC,
  ``window - reference`` for log loss, Brier, MAE, RMSE and MAPE, and ``|window - reference|`` for
  bias. Its *textbook* p-value is the normal approximation ``Φ̄(drop √n_e / s)`` (two-sided for
  bias), ``s`` the metric's per-event standard deviation (from the bootstrap at the largest size)
  and ``n_e = n m / (n + m)`` for ``n`` labelled events against ``m`` in the reference;
* null windows: at each size ``n``, :data:`detectors.calibration.REPLICATES` windows are drawn
  from the reference's labelled rows: row by row up to :data:`ROW_DRAWS` events (an exact
  bootstrap); larger ones from the reference's joint distribution of (score bin, label) cells
  (classification: the cells' mean losses plus a normal term for the losses' spread within a
  cell) or from its per-event losses in :data:`LOSS_GROUPS` groups, finer in the tails
  (regression: each group's mean plus a normal term for the spread within it); consecutive chunks
  of the reference's rows give the chunks' line. A line is
  fitted to the upper tail of the z-scores of the textbook p-values and kept, raised, replaced by
  the chunks' one or dropped for the textbook exactly as for the drift statistics;
* a metric is flagged when its calibrated p-value passes the family's correction (the metrics of a
  window and segment are one family, or every segment's with ``statistics.family: window``;
  ``statistics.false_alarm_rate`` and ``statistics.correction`` as for drift) **and** its drop is
  at least the floor ``labels.min_drop`` (per kind: ``rate`` an absolute drop for accuracy,
  precision, recall, F1, ROC AUC; ``loss`` relative to the reference's value for the losses;
  ``bias`` relative to the reference's MAE); ``critical`` when it also reaches
  ``labels.critical_drop``. ``threshold`` is the drop from which the window would have been
  flagged.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special as _sp

from detectors.calibration import (
    REPLICATES,
    SIZES,
    _at_tail,
    _bootstrap_line,
    _chunk_counts,
    _larger,
    _round,
    fit_chunks,
    fit_tail,
    z_of_p,
)
from detectors.exceptions import InputError, ReferenceFormatError
from detectors.statistics import adjust

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier"),
    REGRESSION: ("mae", "rmse", "mape", "bias"),
}
#: reported with every window's performance, without a verdict
INFO: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("label_coverage", "positive_rate"),
    REGRESSION: ("label_coverage",),
}
#: every statistic name a performance record can carry
PERFORMANCE_STATISTICS = frozenset(m for t in TASKS for m in (*METRICS[t], *INFO[t]))
#: how a metric's drop is measured and floored: rate (absolute), loss (relative), bias (relative to MAE)
KIND = {
    "accuracy": "rate",
    "precision": "rate",
    "recall": "rate",
    "f1": "rate",
    "roc_auc": "rate",
    "log_loss": "loss",
    "brier": "loss",
    "mae": "loss",
    "rmse": "loss",
    "mape": "loss",
    "bias": "bias",
}
HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc"})
#: the ``feature`` of every performance record
FEATURE = "performance"

LOGIT_RANGE = 12.0
SCORE_BINS = 480
LOSS_SCALE = 2**24
LOG_LOSS_EPS = 1e-15
#: groups of a regression reference's per-event losses that large null windows are drawn from
LOSS_GROUPS = 200
_HEAD = 4  # classification: n_predictions, n_labelled, log_loss, brier


# -- the layout of a state ------------------------------------------------------------------------
@lru_cache(maxsize=16)
def score_edges(threshold: float) -> F64:
    """The interior edges of the score bins: the logit grid and the threshold.

    >>> e = score_edges(0.5)
    >>> len(e), float(e[0]) < 1e-5, 0.5 in e
    (481, True, True)
    """
    grid = 1.0 / (1.0 + np.exp(-np.linspace(-LOGIT_RANGE, LOGIT_RANGE, SCORE_BINS + 1)))
    edges = np.unique(np.concatenate([grid, [threshold]]))
    edges.setflags(write=False)
    return edges


@dataclass(frozen=True)
class PerformanceLayout:
    """How a task's state vector is laid out and filled."""

    task: str
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.task == CLASSIFICATION and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), not {self.threshold}")

    @property
    def edges(self) -> F64:
        return score_edges(self.threshold)

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1 if self.task == CLASSIFICATION else 0

    @property
    def threshold_bin(self) -> int:
        """The first bin whose scores are predicted positive."""
        return int(np.searchsorted(self.edges, self.threshold, side="left")) + 1

    @property
    def size(self) -> int:
        return _HEAD + 2 * self.n_bins if self.task == CLASSIFICATION else 7

    @property
    def dtype(self) -> type[np.generic]:
        return np.int64 if self.task == CLASSIFICATION else np.float64

    def empty(self) -> npt.NDArray[Any]:
        return np.zeros(self.size, dtype=self.dtype)

    def valid_scores(self, score: F64) -> npt.NDArray[np.bool_]:
        """Scores that can be evaluated: finite (classification: within [0, 1])."""
        ok: npt.NDArray[np.bool_] = np.isfinite(score)
        if self.task == CLASSIFICATION:
            ok &= (score >= 0.0) & (score <= 1.0)
        return ok

    def valid_labels(self, label: F64) -> npt.NDArray[np.bool_]:
        ok: npt.NDArray[np.bool_] = (
            (label == 0.0) | (label == 1.0) if self.task == CLASSIFICATION else np.isfinite(label)
        )
        return ok

    def contributions(self, score: F64, label: F64) -> tuple[I64, npt.NDArray[Any]]:
        """Per labelled event: its cell (classification: a position in the state vector; regression:
        -1) and its row of additions to the state's scalar head (one row per event)."""
        n = len(score)
        if self.task == CLASSIFICATION:
            b = np.searchsorted(self.edges, score, side="right").astype(np.int64)
            y = label.astype(np.int64)
            cell = _HEAD + y * self.n_bins + b
            p = np.clip(score, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
            ll = -(label * np.log(p) + (1.0 - label) * np.log1p(-p))
            head = np.zeros((n, _HEAD), dtype=np.int64)
            head[:, 1] = 1
            head[:, 2] = np.rint(ll * LOSS_SCALE).astype(np.int64)
            head[:, 3] = np.rint((score - label) ** 2 * LOSS_SCALE).astype(np.int64)
            return cell, head
        e = score - label
        ay = np.abs(label)
        zero = ay == 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            ape = np.where(zero, 0.0, np.abs(e) / np.where(zero, 1.0, ay))
        head = np.stack([np.zeros(n), np.ones(n), zero.astype(np.float64), e, np.abs(e), e * e, ape], axis=1)
        return np.full(n, -1, dtype=np.int64), head

    def state_of(self, score: F64, label: F64, n_predictions: int | None = None) -> npt.NDArray[Any]:
        """The state of a set of labelled events (``n_predictions``: default, as many as labelled)."""
        state = self.empty()
        self.add(state, score, label)
        state[0] = len(score) if n_predictions is None else n_predictions
        return state

    def add(self, state: npt.NDArray[Any], score: F64, label: F64) -> None:
        """Add labelled events to a state (in place; not their predictions' count)."""
        if not len(score):
            return
        cell, head = self.contributions(score, label)
        if self.task == CLASSIFICATION:
            state[:_HEAD] += head.sum(axis=0)
            state += np.bincount(cell, minlength=self.size)[: self.size]
        else:
            state += head.sum(axis=0)

    # -- metrics ------------------------------------------------------------------------------------
    def metrics_many(self, states: npt.NDArray[Any]) -> dict[str, F64]:
        """Every metric (and info statistic) of each row of a matrix of states; NaN where undefined."""
        m = np.asarray(states, dtype=np.float64)
        if m.ndim == 1:
            m = m[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            n_pred, n = m[:, 0], m[:, 1]
            out: dict[str, F64] = {"label_coverage": n / n_pred}
            if self.task == CLASSIFICATION:
                nb = self.n_bins
                neg = m[:, _HEAD : _HEAD + nb]
                pos = m[:, _HEAD + nb : _HEAD + 2 * nb]
                p_all, n_all = pos.sum(axis=1), neg.sum(axis=1)
                tb = self.threshold_bin
                tp, fp = pos[:, tb:].sum(axis=1), neg[:, tb:].sum(axis=1)
                fn, tn = p_all - tp, n_all - fp
                below = np.cumsum(neg, axis=1) - 0.5 * neg
                out.update(
                    accuracy=(tp + tn) / n,
                    precision=tp / (tp + fp),
                    recall=tp / p_all,
                    f1=2 * tp / (2 * tp + fp + fn),
                    roc_auc=(pos * below).sum(axis=1) / (p_all * n_all),
                    log_loss=m[:, 2] / LOSS_SCALE / n,
                    brier=m[:, 3] / LOSS_SCALE / n,
                    positive_rate=p_all / n,
                )
            else:
                out.update(
                    mae=m[:, 4] / n,
                    rmse=np.sqrt(m[:, 5] / n),
                    mape=m[:, 6] / (n - m[:, 2]),
                    bias=m[:, 3] / n,
                )
        return {k: np.where(np.isfinite(v), v, np.nan) for k, v in out.items()}

    def metrics(self, state: npt.NDArray[Any]) -> dict[str, float | None]:
        """Every metric of one state; None where undefined."""
        return {k: (None if math.isnan(v[0]) else float(v[0])) for k, v in self.metrics_many(state).items()}


def auc_tie_bound(layout: PerformanceLayout, state: npt.NDArray[Any]) -> float | None:
    """How far the binned ROC AUC of a state can be from the AUC of its raw scores: half the share of
    positive–negative pairs in one bin (None without both classes)."""
    nb = layout.n_bins
    neg = state[_HEAD : _HEAD + nb].astype(np.float64)
    pos = state[_HEAD + nb : _HEAD + 2 * nb].astype(np.float64)
    pairs = pos.sum() * neg.sum()
    return None if pairs == 0 else float(0.5 * (pos * neg).sum() / pairs)


def drop(metric: str, window: Any, reference: float) -> Any:
    """How much worse the window is than the reference (see the module docstring)."""
    if metric in HIGHER_IS_BETTER:
        return reference - window
    if KIND[metric] == "loss":
        return window - reference
    return np.abs(window - reference)


def textbook_p(metric: str, d: Any, n_e: Any, scale: float) -> Any:
    """The normal approximation's p-value of a drop (two-sided for bias)."""
    d = np.asarray(d, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = d * np.sqrt(n_e) / scale if scale > 0 else np.where(d > 0, np.inf, np.where(d < 0, -np.inf, 0.0))
    x = np.where(np.isnan(d), -np.inf, x)  # an undefined metric never alarms
    if metric == "bias":
        return np.minimum(2.0 * _sp.ndtr(-np.abs(x)), 1.0)
    return _sp.ndtr(-x)


def _critical_drop(metric: str, p_text: float, n_e: float, scale: float) -> float:
    """The drop whose textbook p-value is ``p_text``."""
    z = -float(_sp.ndtri(p_text / 2 if metric == "bias" else p_text))
    return scale * z / math.sqrt(n_e)


# -- the reference's calibration --------------------------------------------------------------------
@dataclass(frozen=True)
class MetricCalibration:
    scale: float  # per-event standard deviation of the metric (the textbook's s)
    tails: tuple[tuple[float, float], ...]  # (mu, sigma) per size
    sources: tuple[str, ...]  # textbook | bootstrap | chunks, per size


@dataclass(frozen=True)
class PerformanceCalibration:
    sizes: tuple[int, ...]
    replicates: int
    seed: int
    method: str
    metrics: Mapping[str, MetricCalibration]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "replicates": self.replicates,
            "seed": self.seed,
            "method": self.method,
            "metrics": {
                k: {"scale": c.scale, "tails": [list(t) for t in c.tails], "sources": list(c.sources)}
                for k, c in sorted(self.metrics.items())
            },
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PerformanceCalibration:
        sizes = tuple(int(s) for s in doc["sizes"])
        metrics = {}
        for k, c in doc["metrics"].items():
            tails = tuple((float(a), float(b)) for a, b in c["tails"])
            sources = tuple(str(s) for s in c["sources"])
            if len(tails) != len(sizes) or len(sources) != len(sizes):
                raise ReferenceFormatError(f"performance calibration of {k!r}: not one entry per size")
            metrics[str(k)] = MetricCalibration(float(c["scale"]), tails, sources)
        return cls(sizes, int(doc["replicates"]), int(doc["seed"]), str(doc["method"]), metrics)

    def tail(self, metric: str, n_effective: float) -> tuple[float, float]:
        """The line at an effective size: between two sizes the one higher at the tail (the fewer
        alarms), outside them the nearest (as :meth:`detectors.calibration.Calibration.tail`)."""
        rows = self.metrics[metric].tails
        i = int(np.searchsorted(self.sizes, n_effective, side="left"))
        if i < len(self.sizes) and self.sizes[i] == n_effective:
            return rows[i]
        if i == 0:
            return rows[0]
        if i == len(self.sizes):
            return rows[-1]
        low, high = rows[i - 1], rows[i]
        return low if _at_tail(low) >= _at_tail(high) else high

    def p_value(self, metric: str, d: float, n_effective: float) -> float:
        c = self.metrics[metric]
        mu, sigma = self.tail(metric, n_effective)
        z = float(z_of_p(textbook_p(metric, d, n_effective, c.scale)))
        return float(_sp.ndtr(-(z - mu) / sigma))

    def critical_drop(self, metric: str, level: float, n_effective: float) -> float:
        """The drop at which the calibrated p-value equals ``level``."""
        c = self.metrics[metric]
        mu, sigma = self.tail(metric, n_effective)
        p_text = float(_sp.ndtr(-(mu + sigma * float(z_of_p(level)))))
        return _critical_drop(metric, p_text, n_effective, c.scale)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(("performance:" + name).encode())])


@dataclass(frozen=True)
class _Cells:
    """A classification reference's nonzero (score bin, label) cells: where each sits in a state, its
    count, and the mean and variance of the two losses within it."""

    where: I64
    count: F64
    mean_ll: F64
    var_ll: F64
    mean_br: F64
    var_br: F64

    @classmethod
    def of(cls, cell: I64, head: npt.NDArray[Any]) -> _Cells:
        uniq, inv = np.unique(cell, return_inverse=True)
        cnt = np.bincount(inv).astype(np.float64)
        moments = []
        for col in (2, 3):
            x = head[:, col] / LOSS_SCALE
            mean = np.bincount(inv, weights=x) / cnt
            moments += [mean, np.maximum(np.bincount(inv, weights=x * x) / cnt - mean * mean, 0.0)]
        return cls(uniq.astype(np.int64), cnt, *moments)

    def null_states(
        self, layout: PerformanceLayout, n: int, replicates: int, rng: np.random.Generator
    ) -> npt.NDArray[np.float64]:
        """Null windows of ``n`` events (one state per row)."""
        k = rng.multinomial(n, self.count / self.count.sum(), size=replicates).astype(np.float64)
        states = np.zeros((replicates, layout.size))
        states[:, 0] = states[:, 1] = n
        z = rng.standard_normal((replicates, 2))
        states[:, 2] = (k @ self.mean_ll + np.sqrt(k @ self.var_ll) * z[:, 0]) * LOSS_SCALE
        states[:, 3] = (k @ self.mean_br + np.sqrt(k @ self.var_br) * z[:, 1]) * LOSS_SCALE
        states[:, self.where] = k
        return states


#: null windows of at most this many events are drawn row by row from the reference (exact); larger
#: ones from its cells (classification) or groups of its per-event losses (regression), where the
#: sum of many events is close to normal within a cell or group
ROW_DRAWS = 1_000


def _groups(v: F64, groups: int) -> tuple[F64, F64, F64]:
    """The sorted values in ``groups`` groups, finer in both tails (cut at normal quantiles, so that
    the rare extreme values form small groups of their own): (counts, means, variances)."""
    s = np.sort(v)
    levels = _sp.ndtr(np.linspace(-3.5, 3.5, groups + 1)[1:-1])
    ids = np.searchsorted(levels, (np.arange(len(s)) + 0.5) / len(s))
    counts = np.bincount(ids, minlength=groups).astype(np.float64)
    sums = np.bincount(ids, weights=s, minlength=groups)
    sq = np.bincount(ids, weights=s * s, minlength=groups)
    keep = counts > 0
    counts, sums, sq = counts[keep], sums[keep], sq[keep]
    mean = sums / counts
    return counts, mean, np.maximum(sq / counts - mean * mean, 0.0)


def _regression_values(metric: str, e: F64, label: F64) -> F64:
    """The per-event values whose mean a regression metric is (``mape``: over labels other than 0)."""
    if metric == "mae":
        return np.abs(e)
    if metric == "rmse":
        return e * e
    if metric == "bias":
        return e
    nz = label != 0.0
    out: F64 = np.abs(e[nz]) / np.abs(label[nz])
    return out


def _regression_metric(metric: str, mean: F64) -> F64:
    out: F64 = np.sqrt(mean) if metric == "rmse" else mean
    return out


def _null_values(
    layout: PerformanceLayout,
    score: F64,
    label: F64,
    names: Sequence[str],
    n: int,
    replicates: int,
    rng: np.random.Generator,
) -> dict[str, F64]:
    """Each metric's value in ``replicates`` null windows of ``n`` labelled events."""
    got: dict[str, list[F64]] = {m: [] for m in names}
    if layout.task == CLASSIFICATION:
        cell, head = layout.contributions(score, label)
        cells = _Cells.of(cell, head) if n > ROW_DRAWS else None
        for part in _parts(replicates):
            if cells is None:
                rows = rng.integers(0, len(score), size=(part, n))
                states = np.zeros((part, layout.size))
                flat = (np.arange(part)[:, None] * layout.size + cell[rows]).ravel()
                states += np.bincount(flat, minlength=part * layout.size).reshape(part, layout.size)
                states[:, 0] = states[:, 1] = n
                states[:, 2] = head[rows, 2].sum(axis=1)
                states[:, 3] = head[rows, 3].sum(axis=1)
            else:
                states = cells.null_states(layout, n, part, rng)
            values = layout.metrics_many(states)
            for m in names:
                got[m].append(values[m])
        return {m: np.concatenate(v) for m, v in got.items()}
    e = score - label
    for m in names:
        v = _regression_values(m, e, label)
        nn = max(1, round(n * len(v) / len(e)))
        groups = _groups(v, LOSS_GROUPS) if nn > ROW_DRAWS else None
        for part in _parts(replicates):
            if groups is None:
                mean = v[rng.integers(0, len(v), size=(part, nn))].mean(axis=1)
            else:
                counts, gmean, gvar = groups
                k = rng.multinomial(nn, counts / counts.sum(), size=part).astype(np.float64)
                mean = (k @ gmean + np.sqrt(k @ gvar) * rng.standard_normal(part)) / nn
            got[m].append(_regression_metric(m, mean))
    return {m: np.concatenate(v) for m, v in got.items()}


def _chunk_values(layout: PerformanceLayout, score: F64, label: F64, names: Sequence[str], n: int) -> dict[str, F64]:
    """Each metric's value in the consecutive chunks of ``n`` rows (empty without MIN_CHUNKS of them)."""
    k = len(score) // n
    if k < 20:
        return {}
    if layout.task == CLASSIFICATION:
        cell, head = layout.contributions(score[: k * n], label[: k * n])
        chunks = _chunk_counts(cell - _HEAD, n, 2 * layout.n_bins)
        assert chunks is not None
        states = np.zeros((k, layout.size))
        states[:, _HEAD:] = chunks
        states[:, 0] = states[:, 1] = n
        starts = np.arange(0, k * n, n)
        states[:, 2] = np.add.reduceat(head[:, 2], starts)
        states[:, 3] = np.add.reduceat(head[:, 3], starts)
        values = layout.metrics_many(states)
        return {m: values[m] for m in names}
    out = {}
    e, y = score[: k * n] - label[: k * n], label[: k * n]
    ids = np.repeat(np.arange(k), n)
    for m in names:
        keep = y != 0.0 if m == "mape" else np.ones(len(e), dtype=bool)
        v = _regression_values(m, e, y)
        sums = np.bincount(ids[keep], weights=v, minlength=k)
        cnt = np.bincount(ids[keep], minlength=k).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[m] = _regression_metric(m, sums / cnt)
    return out


def calibrate_performance(
    layout: PerformanceLayout,
    score: F64,
    label: F64,
    *,
    sizes: Sequence[int] = SIZES,
    replicates: int = REPLICATES,
    seed: int = 0,
    chunks: bool = True,
) -> PerformanceCalibration:
    """The calibration of every metric of the task from the reference's labelled rows (in order)."""
    if replicates < 500:
        raise ValueError(f"calibration replicates must be at least 500 (got {replicates})")
    reference = layout.metrics(layout.state_of(score, label))
    names = [m for m in METRICS[layout.task] if reference.get(m) is not None]
    grid = sorted(int(n) for n in sizes)
    rng = _rng(seed, layout.task)
    null = {n: _null_values(layout, score, label, names, n, replicates, rng) for n in grid}
    chunked = {n: _chunk_values(layout, score, label, names, n) for n in grid} if chunks else {}
    out: dict[str, MetricCalibration] = {}
    for m in names:
        ref = reference[m]
        assert ref is not None
        at_max = null[grid[-1]][m]
        finite = at_max[np.isfinite(at_max)]
        scale = float(np.std(finite) * math.sqrt(grid[-1])) if len(finite) > 1 else 0.0
        tails: list[tuple[float, float]] = []
        sources: list[str] = []
        for n in grid:
            z_boot = np.asarray(z_of_p(textbook_p(m, drop(m, null[n][m], ref), n, scale)), dtype=np.float64)
            line, source = _bootstrap_line(fit_tail(z_boot))
            cv = chunked.get(n, {}).get(m)
            if cv is not None:
                z_chunks = np.asarray(z_of_p(textbook_p(m, drop(m, cv, ref), n, scale)), dtype=np.float64)
                fitted = fit_chunks(z_chunks)
                if fitted is not None:
                    shifted = (fitted[0] + fitted[2], fitted[1])
                    if _at_tail(shifted) > _at_tail(line) and _larger(z_chunks, z_boot):
                        line, source = shifted, "chunks"
            elif chunks and sources and sources[-1] == "chunks":
                line, source = tails[-1], "chunks"  # too few chunks: keep the largest size's
            tails.append((_round(line[0]), _round(line[1])))
            sources.append(source)
        out[m] = MetricCalibration(_round(scale), tuple(tails), tuple(sources))
    return PerformanceCalibration(
        tuple(grid), int(replicates), int(seed), "bootstrap+chunks" if chunks else "bootstrap", out
    )


def _parts(replicates: int, size: int = 1_000) -> list[int]:
    """Replicates in parts of at most ``size`` (bounded memory per draw)."""
    return [min(size, replicates - i) for i in range(0, replicates, size)]


# -- the reference period's performance -----------------------------------------------------------------
@dataclass(frozen=True)
class PerformanceProfile:
    """The reference period's performance (its state) and the calibration of each metric's drop."""

    task: str
    threshold: float
    state: tuple[float, ...]
    n_rows: int  # baseline rows
    n_unlabelled: int  # rows without a valid score or label (left out)
    calibration: PerformanceCalibration | None

    @property
    def layout(self) -> PerformanceLayout:
        return PerformanceLayout(self.task, self.threshold)

    @property
    def state_array(self) -> npt.NDArray[Any]:
        return np.asarray(self.state, dtype=self.layout.dtype)

    @property
    def n_labelled(self) -> int:
        return int(self.state[1])

    @property
    def metrics(self) -> dict[str, float | None]:
        return self.layout.metrics(self.state_array)

    @classmethod
    def build(
        cls,
        score: Any,
        label: Any,
        *,
        task: str,
        threshold: float = 0.5,
        calibrate: bool = True,
        chunks: bool = True,
        replicates: int = REPLICATES,
        seed: int = 0,
        sizes: Sequence[int] = SIZES,
    ) -> PerformanceProfile:
        """From the baseline's score and label columns (rows in the baseline's order). Rows without a
        score or a label are left out (counted); an invalid one (a classification label other than
        0/1, a score outside [0, 1]) is an error naming the row."""
        layout = PerformanceLayout(task, threshold)
        s = _float_column(score, "prediction")
        y = _float_column(label, "label")
        if len(s) != len(y):
            raise InputError(f"prediction and label columns differ in length ({len(s)} and {len(y)})")
        present = ~(np.isnan(s) | np.isnan(y))
        for name, ok in (("prediction", layout.valid_scores(s)), ("label", layout.valid_labels(y))):
            bad = np.flatnonzero(present & ~ok)
            if len(bad):
                what = "a probability in [0, 1]" if name == "prediction" else "0 or 1"
                if task == REGRESSION:
                    what = "a finite number"
                value = float((s if name == "prediction" else y)[bad[0]])
                raise InputError(f"{name} at row {bad[0] + 1} is {value!r}, not {what} (labels.task: {task})")
        s, y = s[present], y[present]
        if len(s) == 0:
            raise InputError("no baseline row has both a prediction and a label")
        state = layout.state_of(s, y)
        cal = calibrate_performance(layout, s, y, sizes=sizes, replicates=replicates, seed=seed, chunks=chunks)
        return cls(
            task,
            float(threshold),
            tuple(state.tolist()),
            len(present),
            int((~present).sum()),
            cal if calibrate else None,
        )

    def to_dict(self) -> dict[str, Any]:
        state: Any = self.state
        if self.task == CLASSIFICATION:  # the cells sparse: [position, count] of the nonzero ones
            head = [int(v) for v in self.state[:_HEAD]]
            cells = [[i, int(v)] for i, v in enumerate(self.state[_HEAD:]) if v]
            state = {"head": head, "cells": cells}
        else:
            state = [float(v) for v in self.state]
        return {
            "task": self.task,
            "threshold": self.threshold,
            "score_bins": {"logit_range": LOGIT_RANGE, "bins": SCORE_BINS} if self.task == CLASSIFICATION else None,
            "state": state,
            "n_rows": self.n_rows,
            "n_unlabelled": self.n_unlabelled,
            "metrics": {k: v for k, v in self.metrics.items() if v is not None},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PerformanceProfile:
        try:
            task = str(doc["task"])
            threshold = float(doc["threshold"])
            layout = PerformanceLayout(task, threshold)
            if task == CLASSIFICATION:
                bins = doc["score_bins"]
                if float(bins["logit_range"]) != LOGIT_RANGE or int(bins["bins"]) != SCORE_BINS:
                    raise ReferenceFormatError(
                        f"performance: score bins {bins} differ from this streamdrift's ({SCORE_BINS} bins over "
                        f"±{LOGIT_RANGE} logit); rebuild the reference"
                    )
                state = layout.empty()
                state[:_HEAD] = [int(v) for v in doc["state"]["head"]]
                for i, v in doc["state"]["cells"]:
                    state[_HEAD + int(i)] = int(v)
            else:
                state = np.asarray([float(v) for v in doc["state"]], dtype=np.float64)
            if len(state) != layout.size:
                raise ReferenceFormatError("performance: the state does not fit its task")
            cal = doc.get("calibration")
            return cls(
                task,
                threshold,
                tuple(state.tolist()),
                int(doc["n_rows"]),
                int(doc["n_unlabelled"]),
                None if cal is None else PerformanceCalibration.from_dict(cal),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, ReferenceFormatError):
                raise
            raise ReferenceFormatError(f"performance section is malformed: {type(exc).__name__}: {exc}") from exc


def _float_column(values: Any, name: str) -> F64:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64)
    if isinstance(values, np.ndarray) and values.dtype.kind == "b":
        return values.astype(np.float64)
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, (bool, np.bool_)):
            out[i] = 1.0 if v else 0.0
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[i] = float(v)
        else:
            raise InputError(f"{name} at row {i + 1} is {v!r}, not a number")
    return out


# -- verdicts and records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Floors:
    """``labels.min_drop`` or ``labels.critical_drop``: per kind of metric."""

    rate: float
    loss: float
    bias: float

    def of(self, metric: str, reference: Mapping[str, float | None]) -> float:
        kind = KIND[metric]
        if kind == "rate":
            return self.rate
        if kind == "loss":
            ref = reference.get(metric)
            return self.loss * abs(ref) if ref is not None else math.inf
        mae = reference.get("mae")
        return self.bias * mae if mae is not None else math.inf


@dataclass(frozen=True)
class Rules:
    """What deciding a window needs from the monitor config."""

    metrics: tuple[str, ...]
    min_labels: int
    min_drop: Floors
    critical_drop: Floors
    false_alarm_rate: float
    correction: str
    family: str  # segment | window


OK, WARNING, CRITICAL, INSUFFICIENT = "ok", "warning", "critical", "insufficient_data"


def evaluate_window(
    layout: PerformanceLayout,
    segments: Sequence[tuple[Mapping[str, str], npt.NDArray[Any]]],
    profile: PerformanceProfile | None,
    rules: Rules,
    *,
    monitor: str,
    window_start_ms: int,
    window_end_ms: int,
    window_index: int,
    fingerprint: str,
    model_name: str | None = None,
    model_version: str | None = None,
) -> list[dict[str, Any]]:
    """The performance records of one window (``segments``: each segment's state, in order)."""
    from detectors.evaluate import iso_ms

    ref = profile.metrics if profile is not None else {}
    cal = profile.calibration if profile is not None else None
    m = profile.n_labelled if profile is not None else 0
    measured: list[tuple[dict[str, float | None], int, int, list[tuple[str, float, float]]]] = []
    for _segment, state in segments:
        values = layout.metrics(state)
        n_pred, n = int(state[0]), int(state[1])
        tests: list[tuple[str, float, float]] = []  # (metric, drop, p)
        if n < rules.min_labels:
            values = {k: (v if k == "label_coverage" else None) for k, v in values.items()}
        for metric in rules.metrics:
            v = values.get(metric)
            if v is None or cal is None or metric not in cal.metrics or ref.get(metric) is None:
                continue
            d = float(drop(metric, v, ref[metric]))  # type: ignore[arg-type]
            n_e = n * m / (n + m)
            tests.append((metric, d, cal.p_value(metric, d, n_e)))
        measured.append((values, n_pred, n, tests))
    families = [list(range(len(measured)))] if rules.family == "window" else [[i] for i in range(len(measured))]
    decided: dict[tuple[int, str], tuple[float, float, float, bool, str]] = {}
    for fam in families:
        family = [(i, t) for i in fam for t in measured[i][3]]
        adjusted = adjust([t[2] for _i, t in family], rules.correction) if family else []
        k = len(family)
        rate = rules.false_alarm_rate
        if rules.correction == "bonferroni":
            level = rate / max(k, 1)
        elif rules.correction == "bh":
            level = rate * max(sum(q <= rate for q in adjusted), 1) / max(k, 1)
        else:
            level = rate
        for (i, (metric, d, p)), q in zip(family, adjusted, strict=True):
            assert cal is not None
            n = measured[i][2]
            n_e = n * m / (n + m)
            floor = rules.min_drop.of(metric, ref)
            high = rules.critical_drop.of(metric, ref)
            crit = cal.critical_drop(metric, level, n_e)
            drifted = p <= level and d >= floor
            severity = (CRITICAL if d >= high else WARNING) if drifted else OK
            decided[(i, metric)] = (p, q, max(floor, crit), drifted, severity)
    start, end = iso_ms(window_start_ms), iso_ms(window_end_ms)
    records: list[dict[str, Any]] = []
    for i, (segment, _state) in enumerate(segments):
        values, n_pred, n, _tests = measured[i]
        common = {
            "monitor": monitor,
            "segment": dict(sorted(segment.items())),
            "feature": FEATURE,
            "window_start": start,
            "window_end": end,
            "window_index": window_index,
            "n_reference": m if profile is not None else None,
            "n_window": n,
            "n_missing": n_pred - n,
            "reference_fingerprint": fingerprint,
            "model_name": model_name,
            "model_version": model_version,
        }
        for metric in rules.metrics:
            v = values.get(metric)
            method = "joined_labels_auc_binned" if metric == "roc_auc" else "joined_labels"
            got = decided.get((i, metric))
            if got is None:
                records.append(_record(common, metric, method, v, severity=INSUFFICIENT))
                continue
            p, q, threshold, drifted, severity = got
            effect = float(drop(metric, v, ref[metric]))  # type: ignore[arg-type]
            records.append(_record(common, metric, method, v, effect, p, q, threshold, drifted, severity))
        for info in INFO[layout.task]:
            v = values.get(info)
            records.append(_record(common, info, "joined_labels", v, severity=OK if v is not None else INSUFFICIENT))
    return records


def _record(
    common: Mapping[str, Any],
    statistic: str,
    method: str,
    value: float | None,
    effect: float | None = None,
    p_value: float | None = None,
    p_adjusted: float | None = None,
    threshold: float | None = None,
    drift: bool | None = None,
    severity: str = INSUFFICIENT,
) -> dict[str, Any]:
    """A performance record in the field order of :data:`detectors.evaluate.RECORD_TYPES`."""
    from detectors.evaluate import RECORD_FIELDS

    rec = {
        **common,
        "statistic": statistic,
        "method": method,
        "value": value,
        "effect": effect,
        "p_value": p_value,
        "p_value_adjusted": p_adjusted,
        "threshold": threshold,
        "drift": drift,
        "severity": severity,
    }
    return {k: rec[k] for k in RECORD_FIELDS}
