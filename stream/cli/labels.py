"""The command-line side of late labels: ``reference build`` with the baseline's predictions and
labels, and ``backfill --labels`` (kept here so that :mod:`stream.cli` only hooks them in).

``reference build``: when the baseline has the prediction column (``--prediction``, default
``events.prediction_field``) and the label column (``--label``, default ``labels.label_field``,
else ``events.label_field``), the profile gains the reference period's performance and its
calibration (:class:`detectors.performance.PerformanceProfile`) for ``labels.task`` and
``labels.threshold`` (or ``--task`` / ``--threshold``).

``backfill --labels FILE``: the label events (same formats as ``--input``) are joined to the
predictions of ``--input`` with the join ``serve`` uses (:func:`detectors.engine.run_local_labels`);
the performance records (and the concept detector's, on the joined labels) are written with the
window statistics.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.config import MonitorConfig
from detectors.engine import run_local_labels
from detectors.events import EventColumns, decode_labels
from detectors.exceptions import ConfigError
from detectors.labelled import join_summary
from detectors.performance import TASKS, PerformanceProfile
from detectors.reference import ReferenceProfile
from stream.files import read_rows


def add_reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prediction", help="baseline column of the model's score (default: the config's events.prediction_field)"
    )
    p.add_argument("--label", help="baseline column of the label (default: the config's labels.label_field)")
    p.add_argument("--task", choices=TASKS, help="default: the config's labels.task, else classification")
    p.add_argument("--threshold", type=float, help="classification threshold (default: labels.threshold, else 0.5)")


def with_performance(
    ref: ReferenceProfile, cols: Mapping[str, Any], args: argparse.Namespace, config: Mapping[str, Any] | None
) -> ReferenceProfile:
    """The profile with the baseline's performance when it has the prediction and label columns."""
    cfg = config or {}
    events = cfg.get("events") or {}
    labels = cfg.get("labels") or {}
    pred = args.prediction or events.get("prediction_field")
    label = args.label or labels.get("label_field") or events.get("label_field") or ("label" if labels else None)
    asked = bool(args.prediction or args.label)
    if not pred or not label or pred not in cols or label not in cols:
        missing = [c for c in (pred, label) if c and c not in cols]
        if asked or labels:
            why = f"the baseline has no column {missing}" if missing else "name --prediction and --label"
            print(f"warning: no performance in the profile ({why}): performance gets no verdicts", file=sys.stderr)
        return ref
    task = args.task or labels.get("task")
    if task is None:  # not stated: classification when every label is 0 or 1, else regression (said)
        task = _infer_task(cols[label])
        print(f"performance: labels.task not set; {task} from the label values", file=sys.stderr)
    threshold = args.threshold if args.threshold is not None else float(labels.get("threshold", 0.5))
    t0 = time.perf_counter()
    perf = PerformanceProfile.build(
        cols[pred],
        cols[label],
        task=task,
        threshold=threshold,
        replicates=args.calibration_replicates,
        chunks=not args.no_chunks,
    )
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in perf.metrics.items() if k != "label_coverage" and v is not None)
    print(
        f"performance ({task}, {perf.n_labelled} labelled rows of {perf.n_rows}; {time.perf_counter() - t0:.1f} s): "
        f"{metrics}"
    )
    return dataclasses.replace(ref, performance=perf)


def _infer_task(labels: Sequence[Any]) -> str:
    known = [v for v in labels if v is not None and not (isinstance(v, float) and v != v)]
    binary = bool(known) and all(isinstance(v, (bool, int, float)) and v in (0, 1) for v in known)
    return "classification" if binary else "regression"


def add_backfill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="label events (id, label, time; the config's labels section) joined to --input's predictions by id: "
        "adds each window's performance (and its verdict) to the records",
    )


def backfill_labels(
    args: argparse.Namespace,
    config: MonitorConfig,
    reference: ReferenceProfile,
    cols: EventColumns,
    started_ms: int,
    model_name: str | None,
    model_version: str | None,
) -> list[dict[str, Any]]:
    """The performance (and concept) records of ``--labels`` joined to the predictions (none without it)."""
    if not getattr(args, "labels", None):
        return []
    if config.labels is None:
        raise ConfigError("--labels: the monitor config has no labels section (labels.max_delay, labels.id_field, ...)")
    if reference.performance is None:
        print(
            "warning: the reference has no performance (build it from a baseline with predictions and labels): "
            "performance is reported without verdicts",
            file=sys.stderr,
        )
    rows = read_rows(args.labels)
    labels, errors = decode_labels(rows, config, now_ms=started_ms)
    if errors:
        from stream.decode import reason_code

        codes = Counter(reason_code(reason) for _i, reason in errors)
        by_code = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
        print(
            f"{len(errors)} of {len(rows)} label events rejected ({by_code}); first: row {errors[0][0] + 1}: "
            f"{errors[0][1]}"
        )
    records, tracker = run_local_labels(cols, labels, config, reference, model_name, model_version)
    print(join_summary(tracker.counts))
    return records
