"""A seeded synthetic prediction stream with an injected drift (for the demo, tests and benchmarks).

Events look like what a credit-scoring model would write::

    {"timestamp": 1767225600000, "country": "de", "score": 0.31, "label": 0,
     "features": {"income": 52000.0, "age": 41.0, "amount": 120.5, "utilization": 0.42,
                  "merchant": "grocery", "device": "ios"}}

From ``drift_at`` (a fraction of the stream) on, ``income`` shifts up by ``shift`` reference
standard deviations, ``merchant`` moves mass to ``travel`` and the labels stop following the
score (a concept drift: the model's error grows). ``age``, ``amount``, ``utilization`` and
``device`` never change, so a correct monitor flags exactly the first three.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NUMERIC = ("income", "age", "amount", "utilization")
CATEGORICAL = ("merchant", "device")
MERCHANTS = ("grocery", "fuel", "online", "travel", "restaurants")
MERCHANT_P = (0.35, 0.2, 0.3, 0.05, 0.1)
MERCHANT_P_DRIFT = (0.25, 0.15, 0.25, 0.25, 0.1)
DEVICES = ("ios", "android", "web")
DEVICE_P = (0.4, 0.4, 0.2)
COUNTRIES = ("de", "fr", "us")
INCOME_MEAN, INCOME_SD = 50_000.0, 12_000.0
DRIFTED_FEATURES = ("income", "merchant")


@dataclass(frozen=True)
class StreamSpec:
    n_events: int = 60_000
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    step_ms: int = 100  # event-time spacing
    drift_at: float = 0.5  # fraction of the stream where the drift starts
    shift: float = 0.5  # income mean shift in reference standard deviations
    seed: int = 7

    @property
    def drift_start_ms(self) -> int:
        return self.start_ms + int(self.n_events * self.drift_at) * self.step_ms


def _batch(rng: np.random.Generator, n: int, drifted: bool, shift: float) -> dict[str, Any]:
    income = rng.normal(INCOME_MEAN + (shift * INCOME_SD if drifted else 0.0), INCOME_SD, n)
    age = np.clip(rng.normal(40, 12, n), 18, 90).round()
    amount = rng.exponential(80.0, n).round(2)
    utilization = rng.beta(2, 5, n).round(4)
    merchant = rng.choice(MERCHANTS, size=n, p=MERCHANT_P_DRIFT if drifted else MERCHANT_P)
    device = rng.choice(DEVICES, size=n, p=DEVICE_P)
    country = rng.choice(COUNTRIES, size=n)
    z = (income - INCOME_MEAN) / INCOME_SD * 0.8 - (utilization - 0.3) * 3
    score = 1 / (1 + np.exp(-z))
    p_true = rng.random(n) if drifted else score  # labels stop following the score
    label = (rng.random(n) < p_true).astype(int)
    return {
        "income": income.round(2),
        "age": age,
        "amount": amount,
        "utilization": utilization,
        "merchant": merchant,
        "device": device,
        "country": country,
        "score": score.round(4),
        "label": label,
    }


def reference_columns(n: int = 50_000, seed: int = 1) -> dict[str, Any]:
    """Baseline data (no drift) as columns, for `ReferenceProfile.build`."""
    cols = _batch(np.random.default_rng(seed), n, False, 0.0)
    return {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in cols.items()}


def events(spec: StreamSpec, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """The stream, in event-time order."""
    rng = np.random.default_rng(spec.seed)
    drift_index = int(spec.n_events * spec.drift_at)
    i = 0
    while i < spec.n_events:
        n = min(chunk, spec.n_events - i)
        # split a chunk at the drift point so the drift starts exactly there
        if i < drift_index < i + n:
            n = drift_index - i
        cols = _batch(rng, n, i >= drift_index, spec.shift)
        for j in range(n):
            yield {
                "timestamp": spec.start_ms + (i + j) * spec.step_ms,
                "country": str(cols["country"][j]),
                "score": float(cols["score"][j]),
                "label": int(cols["label"][j]),
                "features": {
                    "income": float(cols["income"][j]),
                    "age": float(cols["age"][j]),
                    "amount": float(cols["amount"][j]),
                    "utilization": float(cols["utilization"][j]),
                    "merchant": str(cols["merchant"][j]),
                    "device": str(cols["device"][j]),
                },
            }
        i += n


def flat(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event with its features as top-level columns (a flat file's row)."""
    return {**{k: v for k, v in event.items() if k != "features"}, **event["features"]}


def baseline(n: int, seed: int, end_ms: int) -> Iterator[dict[str, Any]]:
    """``n`` events without drift (the model's past predictions), 100 ms apart, ending before ``end_ms``."""
    spec = StreamSpec(n_events=n, start_ms=end_ms - n * StreamSpec.step_ms, drift_at=1.0, seed=seed)
    return events(spec)


#: the files :func:`write_example` writes, by format: flat CSV and Parquet, nested JSON lines
EXAMPLE_FORMATS = ("csv", "parquet", "jsonl")


def write_example(out: Path, fmt: str = "csv", n_events: int = 20_000, seed: int = 7) -> tuple[Path, Path]:
    """``baseline.<fmt>`` (``n_events`` past events without drift) and ``events.<fmt>`` (``n_events``
    events with the drift injected half-way), with the columns of ``deploy/examples/monitor.yaml``.

    CSV and Parquet are flat (one column per feature; CSV times as ISO-8601, Parquet as a timestamp
    column); JSON lines are nested, as a producer writes them (``features`` object, epoch ms).
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if fmt not in EXAMPLE_FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(EXAMPLE_FORMATS)}")
    spec = StreamSpec(n_events=n_events, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / f"baseline.{fmt}", out / f"events.{fmt}")
    for path, rows in zip(paths, (baseline(n_events, seed + 1, spec.start_ms), events(spec)), strict=True):
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as fh:
                for ev in rows:
                    fh.write(json.dumps(ev, separators=(",", ":")) + "\n")
            continue
        table = pa.Table.from_pylist([flat(ev) for ev in rows])
        ts = pa.array(table.column("timestamp").to_numpy(), type=pa.timestamp("ms", tz="UTC"))
        table = table.set_column(0, "timestamp", ts)
        if fmt == "csv":
            pa_csv.write_csv(table, path)
        else:
            pq.write_table(table, path)
    return paths


def iso_ms_window_start(t_ms: int, size_ms: int) -> str:
    """ISO start of the tumbling window of ``size_ms`` containing ``t_ms``."""
    from detectors.evaluate import iso_ms

    return iso_ms(t_ms - t_ms % size_ms)
