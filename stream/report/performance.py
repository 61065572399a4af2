"""The HTML report's performance section: realized model performance from labels joined later.

Self-contained (the report hooks it in with :func:`split_performance` and :func:`performance_html`):
the drift part of the page never sees the performance records, and this section draws only them.

What it shows, for the report's segment
    * a table of the windows whose performance was flagged (metric, value, drop, threshold,
      severity, labels and coverage);
    * per metric, the window's value over time with the reference period's value (when the records
      came with verdicts, ``value + drop`` for a rate, ``value - drop`` for a loss) and the flagged
      windows marked; label coverage and positive rate in a panel of their own;
    * windows without a value (undefined, too few labels) are gaps, not zeros.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from detectors.performance import HIGHER_IS_BETTER, INFO, KIND, METRICS, PERFORMANCE_STATISTICS

TITLE = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "roc_auc": "ROC AUC (binned scores)",
    "log_loss": "log loss",
    "brier": "Brier score",
    "mae": "MAE",
    "rmse": "RMSE",
    "mape": "MAPE (fraction; labels of 0 left out)",
    "bias": "bias (mean of score - label)",
    "label_coverage": "label coverage",
    "positive_rate": "positive rate",
}
_COLOR = {"warning": "#f09000", "critical": "#c62828"}


def split_performance(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the other records, the performance records)."""
    perf = [r for r in records if r.get("feature") == "performance" and r["statistic"] in PERFORMANCE_STATISTICS]
    ids = {id(r) for r in perf}
    return [r for r in records if id(r) not in ids], perf


def _iso(text: str) -> str:
    return text.replace("T", " ").removesuffix("Z")


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _reference_value(rec: Mapping[str, Any]) -> float | None:
    """The reference period's metric, from a record with a verdict (its drop and value)."""
    v, d = rec.get("value"), rec.get("effect")
    if v is None or d is None or rec["statistic"] == "bias":
        return None
    return float(v) + float(d) if rec["statistic"] in HIGHER_IS_BETTER else float(v) - float(d)


def _figure(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=[TITLE[m] for m in metrics]
    )
    for row, metric in enumerate(metrics, start=1):
        recs = sorted((r for r in records if r["statistic"] == metric), key=lambda r: r["window_start"])
        x = [datetime.fromisoformat(r["window_start"].replace("Z", "+00:00")) for r in recs]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r["value"] for r in recs],
                mode="lines+markers",
                name=TITLE[metric],
                connectgaps=False,
                marker={"color": [_COLOR.get(r["severity"], "#1565c0") for r in recs], "size": 7},
                line={"color": "#1565c0"},
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        ref = [_reference_value(r) for r in recs]
        if any(v is not None for v in ref):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=ref,
                    mode="lines",
                    name="reference period",
                    line={"color": "#555", "dash": "dash", "width": 1.5},
                    showlegend=row == 1,
                    legendgroup="reference",
                ),
                row=row,
                col=1,
            )
    fig.update_layout(height=220 * len(metrics) + 80, margin={"t": 40, "b": 30, "l": 60, "r": 20})
    return fig


def performance_html(records: Sequence[Mapping[str, Any]], segment: str = "") -> list[str]:
    """The section's HTML parts (nothing without performance records)."""
    if not records:
        return []
    e = html.escape
    task_metrics = [m for task in METRICS.values() for m in task if any(r["statistic"] == m for r in records)]
    info = [m for task in INFO.values() for m in task if any(r["statistic"] == m for r in records)]
    info = list(dict.fromkeys(info))
    windows = sorted({r["window_start"] for r in records})
    flagged = sorted(
        (r for r in records if r.get("drift")),
        key=lambda r: (r["window_start"], r["statistic"]),
    )
    with_verdict = any(r.get("drift") is not None for r in records if r["statistic"] in KIND)
    parts = ['<h2 id="performance">Model performance (labels joined later)</h2>']
    parts.append(
        f'<p class="meta">{len(windows)} windows with performance{" in segment " + e(segment) if segment else ""}; '
        "each was emitted once its labels were complete enough (labels.min_coverage) or labels.max_delay after its "
        "end. The drop is how much worse than the reference period (reference - window for accuracy, precision, "
        "recall, F1 and ROC AUC; window - reference for the losses; |window - reference| for bias); the threshold "
        "is the drop from which the window would have been flagged.</p>"
    )
    if not with_verdict:
        parts.append(
            '<p class="note" id="performance-note">No verdicts: the reference profile has no performance (build it '
            "from a baseline with the prediction and label columns), or the windows had too few labels.</p>"
        )
    if flagged:
        parts.append(
            '<table id="performance-flagged"><thead><tr><th>window start (UTC)</th><th>metric</th><th>value</th>'
            "<th>drop</th><th>threshold</th><th>severity</th><th>labels</th><th>coverage</th></tr></thead><tbody>"
        )
        for r in flagged:
            n, missing = r.get("n_window") or 0, r.get("n_missing") or 0
            coverage = n / (n + missing) if n + missing else None
            parts.append(
                f'<tr data-window-start="{e(r["window_start"])}" data-metric="{e(r["statistic"])}">'
                f"<td>{e(_iso(r['window_start']))}</td><td>{e(TITLE[r['statistic']])}</td><td>{_num(r['value'])}</td>"
                f"<td>{_num(r.get('effect'))}</td><td>{_num(r.get('threshold'))}</td>"
                f'<td><span class="sev sev-{e(r["severity"])}">{e(r["severity"])}</span></td>'
                f"<td>{n}</td><td>{_num(coverage, '.1%')}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append('<p id="performance-flagged">No window\'s performance was flagged.</p>')
    metrics = task_metrics + info
    if metrics:
        fig = _figure(records, metrics)
        parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                include_mathjax=False,
                div_id="performance-figure",
                config={"displaylogo": False, "responsive": True},
            )
        )
    return parts
