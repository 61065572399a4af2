"""``backfill --mlflow-run/--mlflow-experiment``: a backfill's window statistics as metrics of an MLflow
run, and its HTML drift report as the run's artifact ``streamdrift/drift-report.html``.

The registry client is :mod:`stream.modelref`; the page is :mod:`stream.report.html`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detectors.reference import ReferenceProfile
from stream.modelref import ARTIFACT_DIR, ModelRegistry


def log_backfill(
    registry: ModelRegistry,
    run_id: str | None,
    experiment: str | None,
    records: Sequence[Mapping[str, Any]],
    config: Any,
    reference: ReferenceProfile,
    events_path: str,
) -> str:
    """A backfill's window statistics as metrics of an MLflow run (``run_id``, or a new run of
    ``experiment``), and its HTML drift report (``stream.report.html``) as the artifact
    ``streamdrift/drift-report.html``; returns the run id."""
    run = registry.run_for(run_id, experiment)
    try:
        return _log_backfill(registry, run, records, config, reference, events_path)
    finally:
        if run_id is None:  # (the run made here ends here; one given by the caller is the caller's)
            registry._call(f"end run {run}", registry.client.set_terminated, run)


def _log_backfill(
    registry: ModelRegistry,
    run: str,
    records: Sequence[Mapping[str, Any]],
    config: Any,
    reference: ReferenceProfile,
    events_path: str,
) -> str:
    from stream.report.html import (
        Thresholds,
        choose_window,
        render_html,
        select_records,
        window_histogram,
        window_records_of,
    )

    n = registry.log_window_metrics(run, records)
    windows = len({(r["window_start"], r["window_end"], r.get("window_index")) for r in records})
    recs = [dict(r) for r in records]
    if not any(r["statistic"] in ("psi", "ks", "chi2", "unseen") for r in recs):
        print(f"mlflow: {n} metrics of {windows} windows -> run {run} (no window statistics: no report)")
        return run
    monitor, segment, mine = select_records(recs, None, None)
    window = choose_window(mine, None)
    features = list(dict.fromkeys(r["feature"] for r in window_records_of(mine)))
    hist = window_histogram(
        reference,
        features,
        config=config,
        events_path=events_path,
        segment=segment,
        start=window[0],
        end=window[1],
        index=window[2],
    )
    page = render_html(
        mine,
        monitor=monitor,
        segment=segment,
        thresholds=Thresholds.from_config(config),
        window=window,
        hist=hist,
        reference=reference,
        source=Path(events_path).name,
    )
    with tempfile.TemporaryDirectory(prefix="streamdrift-report-") as tmp:
        path = Path(tmp) / "drift-report.html"
        path.write_text(page, encoding="utf-8")
        registry.log_file(run, path)
    print(f"mlflow: {n} metrics of {windows} windows and {ARTIFACT_DIR}/drift-report.html -> run {run}")
    return run
