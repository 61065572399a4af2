"""The batch commands: ``reference`` (build or calibrate a profile) and ``backfill`` (window
statistics over a file of events, locally or with spark-submit), with the summary they print.

Registered in :mod:`stream.cli`; each handler returns a process exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from detectors.calibration import REPLICATES
from detectors.config import MonitorConfig, is_model_uri, reference_columns
from detectors.engine import run_local
from detectors.evaluate import flag_rates
from detectors.events import EventColumns, decode_events, decode_reference_rows
from detectors.exceptions import ConfigError
from detectors.histogram import Layout
from detectors.reference import DISCRETE_VALUES, ReferenceProfile
from stream.cli import labels as labels_cli
from stream.exceptions import InputFileError
from stream.files import EventRows, numbers_from_text, read_columns, read_event_rows
from stream.inputs import (
    DEFAULT_MAX_REJECTED,
    check_rejections,
    detect_features_field,
    parse_share,
    percent,
    present_columns,
    read_events,
    rejection_summary,
)
from stream.records import write_records
from stream.settings import load_monitor, load_yaml

log = logging.getLogger("streamdrift")


def reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["build", "calibrate"],
        help="build: a reference profile from baseline data; calibrate: (re)compute an existing profile's "
        "calibrated thresholds (also upgrades a profile of an earlier version)",
    )
    p.add_argument("--input", help="baseline data: .parquet, .csv or .jsonl (build; calibrate: for the design effect)")
    p.add_argument("--reference", help="calibrate: the profile to calibrate")
    p.add_argument("--out", required=True, help="where to write the reference JSON")
    p.add_argument("--config", help="monitor YAML: features.include / features.categorical are used")
    p.add_argument("--features", help="comma-separated feature columns (default: all but the event fields)")
    p.add_argument("--categorical", default="", help="comma-separated categorical columns")
    p.add_argument("--fine-bins", type=int, default=100)
    p.add_argument("--coarse-bins", type=int, default=10)
    p.add_argument("--top-n", type=int, default=50, help="categories kept per categorical feature")
    p.add_argument(
        "--discrete-values",
        type=int,
        default=DISCRETE_VALUES,
        help="numeric features with at most this many distinct values get one bin per value",
    )
    p.add_argument("--keep-values", type=int, default=0, help="keep up to N raw values for exact KS")
    p.add_argument(
        "--calibration-replicates",
        type=int,
        default=REPLICATES,
        help="null windows drawn per feature and window size for the calibrated thresholds",
    )
    p.add_argument(
        "--no-chunks",
        action="store_true",
        help="the baseline's rows are in no meaningful order (shuffled): calibrate from the bootstrap alone, "
        "not also from chunks of consecutive rows",
    )
    p.add_argument("--engine", choices=["local", "spark"], default="local", help="spark: for data larger than memory")
    p.add_argument("--master", default="local[2]", help="Spark master for --engine spark")
    _max_rejected_arg(p)
    p.add_argument(
        "--mlflow-model",
        metavar="NAME",
        help="also log the profile to this registered model's version (its run's artifacts, streamdrift/) and tag "
        "the version with the fingerprint; the server is MLFLOW_TRACKING_URI; monitors then say "
        "reference: models:/NAME/VERSION or models:/NAME@ALIAS",
    )
    p.add_argument("--spark-verbose", action="store_true", help="--engine spark: show Spark's own INFO log")
    labels_cli.add_reference_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--mlflow-version", metavar="V", help="with --mlflow-model: the version number")
    which.add_argument("--mlflow-alias", metavar="ALIAS", help="with --mlflow-model: the version this alias names")


def _mlflow_target(args: argparse.Namespace) -> str | None:
    """``models:/NAME/V`` or ``models:/NAME@ALIAS`` of --mlflow-model and its version flag (None: not asked)."""
    if args.mlflow_model is None:
        if args.mlflow_version or args.mlflow_alias:
            raise ConfigError("--mlflow-version / --mlflow-alias go with --mlflow-model NAME")
        return None
    if args.mlflow_version:
        return f"models:/{args.mlflow_model}/{args.mlflow_version}"
    if args.mlflow_alias:
        return f"models:/{args.mlflow_model}@{args.mlflow_alias}"
    raise ConfigError("--mlflow-model: say which version: --mlflow-version V or --mlflow-alias ALIAS")


def _log_to_mlflow(target: str | None, path: str, ref: ReferenceProfile) -> None:
    if target is None:
        return
    from stream.modelref import ModelRegistry

    mv = ModelRegistry().log_reference(target, path, ref)
    print(f"mlflow: logged to {mv} (run {mv.run_id}); monitors can use reference: {mv.uri}")


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def cmd_reference(args: argparse.Namespace) -> int:
    target = _mlflow_target(args)
    if args.action == "calibrate":
        return _calibrate(args, target)
    if not args.input:
        raise ConfigError("reference build: --input (the baseline data) is required")
    if args.engine == "spark":
        if args.max_rejected is not None:
            raise ConfigError("--max-rejected applies to --engine local (the Spark build does not reject single rows)")
        if args.keep_values:
            raise ConfigError("--keep-values: the Spark reference build does not keep raw values")
        job_args = ["--input", args.input, "--out", args.out, "--fine-bins", str(args.fine_bins)]
        job_args += ["--coarse-bins", str(args.coarse_bins), "--top-n", str(args.top_n)]
        job_args += ["--calibration-replicates", str(args.calibration_replicates)]
        for flag, value in (("--config", args.config), ("--features", args.features)):
            if value:
                job_args += [flag, value]
        if args.categorical:
            job_args += ["--categorical", args.categorical]
        rc = spark_submit("jobs.reference_build", args.master, job_args, verbose=args.spark_verbose)
        if rc == 0:
            _log_to_mlflow(target, args.out, ReferenceProfile.load(args.out))
        return rc
    raw = load_yaml(args.config) if args.config else None
    data, features, categorical, field, notes = _baseline(args, raw)
    cols, errors = decode_reference_rows(data.rows, features, categorical, field)
    _say_rejections(notes, errors, len(data.rows), data.rows, None, "rows")
    check_rejections(errors, len(data.rows), max_rejected(args), "--max-rejected")
    t0 = time.perf_counter()
    ref = ReferenceProfile.build(
        cols,
        features=features,
        categorical=categorical,
        fine_bins=args.fine_bins,
        coarse_bins=args.coarse_bins,
        top_n=args.top_n,
        keep_values=args.keep_values,
        discrete_values=args.discrete_values,
        calibration_replicates=args.calibration_replicates,
        chunks=not args.no_chunks,
        metadata={"source": Path(args.input).name},
    )
    rejected = {i for i, _reason in errors}
    ref = labels_cli.with_performance(ref, _top_level_columns(data.rows, rejected), args, raw)
    ref.save(args.out)
    took = time.perf_counter() - t0
    print(f"reference: {len(ref.features)} features from {ref.n_rows} rows -> {args.out} ({took:.1f} s)")
    print(f"fingerprint: {ref.fingerprint}")
    _print_profile(ref)
    _log_to_mlflow(target, args.out, ref)
    return 0


def _top_level_columns(rows: Sequence[Any], rejected: set[int]) -> dict[str, list[Any]]:
    """The top-level fields of the accepted rows as columns (a labelled baseline's prediction and label)."""
    kept = [r for i, r in enumerate(rows) if i not in rejected and isinstance(r, Mapping)]
    names = dict.fromkeys(k for r in kept[:1000] for k, v in r.items() if not isinstance(v, Mapping))
    return {k: [r.get(k) for r in kept] for k in names}


def _baseline(
    args: argparse.Namespace, raw: Mapping[str, Any] | None
) -> tuple[EventRows, list[str], list[str], str | None, list[str]]:
    """The baseline's rows, its features and categorical features, the features field of its shape, notes.

    Categorical: the flags, else the config's ``features.categorical``, plus Parquet dictionary
    columns. A CSV's categorical columns are read as text, its numeric ones keep their numbers
    when a cell elsewhere in the column is text (only that row is rejected)."""
    declared = _split(args.categorical) or list(((raw or {}).get("features") or {}).get("categorical") or [])
    data = read_event_rows(args.input, text=declared)
    if not data.rows:
        raise InputFileError(f"--input {args.input} has no rows")
    events = dict((raw or {}).get("events") or {})
    configured = events.get("features_field", "features")
    asked = _split(args.features) or list(((raw or {}).get("features") or {}).get("include") or [])
    field, note = detect_features_field(data.rows, configured, asked)
    notes = [note] if note and (raw is not None and "features_field" in events) else []
    columns = present_columns(data, field)
    features, categorical = reference_columns(columns, _split(args.features), _split(args.categorical), raw)
    dictionary = [f for f in features if f in data.dictionary_columns and f not in categorical]
    if dictionary:
        notes.append(f"categorical because Parquet stores them as dictionaries (pandas' category): {dictionary}")
        categorical = [*categorical, *dictionary]
    numbers_from_text(data, [f for f in features if f not in categorical])
    absent = [f for f in dict.fromkeys([*features, *categorical]) if f not in columns]
    if absent:
        where = "columns" if field is None else f"fields in the {field!r} objects"
        raise InputFileError(f"--input {args.input}: no row has the column(s) {absent}; its {where} are {columns[:30]}")
    return data, features, categorical, field, notes


def max_rejected(args: argparse.Namespace) -> float:
    return DEFAULT_MAX_REJECTED if args.max_rejected is None else parse_share(args.max_rejected)


def _say_rejections(
    notes: Sequence[str],
    errors: Sequence[tuple[int, str]],
    total: int,
    rows: Sequence[Any],
    config: MonitorConfig | None,
    what: str,
) -> None:
    """Notes about the input and the rejection summary, on stderr (``--quiet`` does not hide them)."""
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    for line in rejection_summary(errors, total, rows, config, what):
        print(line, file=sys.stderr)


def _max_rejected_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-rejected",
        metavar="SHARE",
        help="fail (exit 2, nothing written) when more than this share of the rows is rejected, as 5%% or 0.05 "
        f"(default {percent(DEFAULT_MAX_REJECTED).replace('%', '%%')}); the reasons and fixes are printed on "
        "stderr either way",
    )


#: a feature whose baseline windows vary like 1/N as many independent rows, N above this, is warned about
CHUNK_SPREAD_WARNING = 4.0


def _print_profile(ref: ReferenceProfile) -> None:
    cal = ref.calibration
    warnings: list[str] = []
    for name, prof in ref.features.items():
        line = f"  {name:<24} {prof.type:<12} {prof.n_bins:>4} bins  {prof.n_missing} missing"
        if cal is not None and name in cal.features and cal.features[name].chunked:
            spread = cal.chunk_spread(name)
            line += f"  windows of its rows vary like 1/{spread:.1f} as many independent rows (thresholds from chunks)"
            if spread > CHUNK_SPREAD_WARNING:
                warnings.append(
                    f"{name}: the baseline's own windows vary like 1/{spread:.0f} as many independent rows, so "
                    "shifts as large as its own variation will not page; if the baseline drifted within itself, "
                    "build from a stable period (or with --no-chunks)"
                )
        print(line)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cal is not None:
        print(
            f"calibration: {cal.method}, {cal.replicates:,} null windows per feature at each of {len(cal.sizes)} "
            f"window sizes ({cal.sizes[0]:,} to {cal.sizes[-1]:,} events)"
        )


def _calibrate(args: argparse.Namespace, target: str | None = None) -> int:
    if not args.reference:
        raise ConfigError("reference calibrate: --reference (the profile to calibrate) is required")
    ref = ReferenceProfile.load(args.reference, upgrade=True)
    rows = None
    if args.input:
        cols = read_columns(args.input)
        missing = [n for n in ref.features if n not in cols]
        if missing:
            raise ConfigError(f"--input: the data has no column(s) {missing} of the reference")
        rows = {n: ref.row_bins(n, cols[n]) for n in ref.features}
    t0 = time.perf_counter()
    ref = ref.calibrated(replicates=args.calibration_replicates, rows=None if args.no_chunks else rows)
    ref.save(args.out)
    print(f"reference: calibrated {len(ref.features)} features -> {args.out} ({time.perf_counter() - t0:.1f} s)")
    print(f"fingerprint: {ref.fingerprint}")
    _print_profile(ref)
    _log_to_mlflow(target, args.out, ref)
    return 0


# -- backfill ---------------------------------------------------------------------------
def backfill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="monitor YAML")
    p.add_argument("--input", required=True, help="events: .parquet, .csv or .jsonl")
    p.add_argument("--output", required=True, help="window statistic records: .jsonl or .parquet")
    p.add_argument("--engine", choices=["local", "spark"], default="local")
    p.add_argument("--master", default="local[2]", help="Spark master for --engine spark")
    p.add_argument("--spark-verbose", action="store_true", help="--engine spark: show Spark's own INFO log")
    p.add_argument("--quiet", action="store_true", help="no summary table")
    p.add_argument(
        "--reference-check",
        action="store_true",
        help="--input is the reference's own baseline data: run the monitor over it and say what it would flag "
        "(with calibrated thresholds, about statistics.false_alarm_rate of its windows)",
    )
    p.add_argument(
        "--window-events",
        type=int,
        help="with --reference-check: cut the baseline into windows of N rows (for a baseline without event "
        "times, whose rows then get times 1 ms apart from 2000-01-01T00:00:00Z)",
    )
    _max_rejected_arg(p)
    run = p.add_mutually_exclusive_group()
    run.add_argument(
        "--mlflow-run",
        metavar="RUN_ID",
        help="log the window statistics to this MLflow run as metrics (one step per window, <segment>/<feature>/"
        "<statistic>) and the HTML report as an artifact (the server: MLFLOW_TRACKING_URI)",
    )
    run.add_argument("--mlflow-experiment", metavar="NAME", help="as --mlflow-run, in a new run of this experiment")
    labels_cli.add_backfill_args(p)


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.engine == "spark" and args.max_rejected is not None:
        raise ConfigError("--max-rejected applies to --engine local (the Spark job counts its rejections only)")
    if args.engine == "spark":
        if args.reference_check:
            raise ConfigError("--reference-check runs with --engine local")
        if args.mlflow_run or args.mlflow_experiment:
            raise ConfigError("--mlflow-run / --mlflow-experiment: run the backfill with --engine local")
        if is_model_uri(load_monitor(args.config).reference):
            raise ConfigError(
                "reference: the Spark backfill reads the profile from a file; a models:/ reference is resolved by "
                "--engine local and serve (or point the config at the profile's file)"
            )
        return _spark_backfill(args)
    config = load_monitor(args.config)
    model = None
    registry = None
    if is_model_uri(config.reference) or args.mlflow_run or args.mlflow_experiment:
        from stream.modelref import ModelRegistry

        registry = ModelRegistry()
    if is_model_uri(config.reference):
        assert registry is not None
        reference, model = registry.load(config.reference)
    else:
        reference = ReferenceProfile.load(config.reference)
    config.check_event_fields(list(reference.features))
    layout = Layout(reference, config.features.include)
    started_ms = int(time.time() * 1000)  # event times beyond it + events.max_future_skew are rejected
    events = read_events(args.input, config, reference, layout.features)
    config, rows = events.config, events.rows
    row_times = None
    if args.reference_check:
        config = reference_check_config(config, rows, args.window_events)
        if config.events.time_field is None:  # a baseline without event times: its rows 1 ms apart
            row_times = [ROW_TIME_BASE_MS + i for i in range(len(rows))]
    cols, errors = decode_events(rows, config, reference, layout.features, row_times, now_ms=started_ms)
    _say_rejections(events.notes, errors, len(rows), rows, config, "events")
    check_rejections(errors, len(rows), max_rejected(args), "--max-rejected")
    _say_empty_features(cols, layout.features)
    name, version = (model.name, model.version) if model is not None else (None, None)
    records = run_local(cols, config, reference, layout, name, version)
    records += labels_cli.backfill_labels(args, config, reference, cols, started_ms, name, version)
    write_records(args.output, records)
    if args.reference_check:
        print_reference_check(records, config, sys.stdout)
    elif not args.quiet:
        print_summary(records, sys.stdout)
    print(f"{len(records)} records from {len(cols)} events -> {args.output}")
    if registry is not None and (args.mlflow_run or args.mlflow_experiment):
        from stream.cli.mlflow_log import log_backfill

        log_backfill(registry, args.mlflow_run, args.mlflow_experiment, records, config, reference, args.input)
    return 0


def _say_empty_features(cols: EventColumns, features: Sequence[str]) -> None:
    """Warn about a feature that no accepted event has a value of: none of its windows gets a verdict."""
    import numpy as np

    for f in features:
        col = cols.features[f]
        empty = bool(np.isnan(col).all()) if isinstance(col, np.ndarray) else all(v is None for v in col)
        if len(cols) and empty:
            print(
                f"warning: feature {f!r} has no value in any of the {len(cols):,} events: none of its windows can "
                "have a verdict (a null column? leave it out with features.include)",
                file=sys.stderr,
            )


#: a baseline without event times gets times 1 ms apart from 2000-01-01T00:00:00Z (reference check)
ROW_TIME_BASE_MS = 946_684_800_000


def reference_check_config(config: MonitorConfig, rows: Sequence[Any], window_events: int | None) -> MonitorConfig:
    """The monitor as the reference check runs it: count windows of ``window_events`` rows when asked
    (or when the baseline has no event time). (The baseline's shape is the rows', see :func:`read_events`.)"""
    first = next((r for r in rows if isinstance(r, Mapping)), None)
    if first is None:
        raise ConfigError("--reference-check: the baseline has no rows")
    events = config.events
    if window_events is None and events.time_field is not None and events.time_field not in first:
        raise ConfigError(
            f"--reference-check: the baseline has no event time field {events.time_field!r}; "
            "pass --window-events N to cut it into windows of N rows"
        )
    data = config.model_dump()
    if window_events is not None:
        if window_events < 1:
            raise ConfigError("--window-events must be at least 1")
        data["window"] = {"kind": "count", "size": window_events}
        if events.time_field is not None and events.time_field not in first:
            data["events"]["time_field"] = None
            data["events"]["time_missing"] = "reject"
        if data["statistics"]["family"] == "window":
            data["statistics"]["family"] = "segment"
    return MonitorConfig.model_validate(data)


def print_reference_check(records: Sequence[Mapping[str, Any]], config: MonitorConfig, out: TextIO) -> None:
    """What the monitor would flag on its own reference: windows with any verdict, per feature."""
    rates = flag_rates(records)
    rate = config.statistics.false_alarm_rate
    out.write(
        f"reference check: {rates.flagged} of {rates.windows} windows of the reference flagged "
        f"(calibrated for at most {rate:.1%} of windows with no drift)\n"
    )
    for feature, (hits, total) in rates.per_feature.items():
        if hits:
            out.write(f"  {feature:<24} flagged by {hits} of {total} verdicts\n")
    if rates.windows and rates.flagged > max(1, 3 * rate * rates.windows):
        out.write(
            "  more than expected: the reference's windows differ from each other more than the calibration "
            "allows (is the baseline in time order? rebuild it without --no-chunks), or the baseline "
            "itself drifts\n"
        )


def _spark_backfill(args: argparse.Namespace) -> int:
    job_args = ["--config", args.config, "--input", args.input, "--output", args.output]
    if getattr(args, "labels", None):
        job_args += ["--labels", args.labels]
    return spark_submit("jobs.backfill", args.master, job_args, verbose=args.spark_verbose)


#: the JVM options of a driver started by :func:`spark_submit`: the JIT compiles Spark's large
#: generated aggregation methods too (3x faster wide aggregations, README "Spark")
DRIVER_JAVA_OPTIONS = "-XX:-DontCompileHugeMethods"


def find_spark_submit() -> tuple[str | None, dict[str, str]]:
    """The spark-submit of the environment this Python runs in, and the environment to run it with.

    Looked for, in order: next to this interpreter (a virtualenv's ``bin``, activated or not),
    in the installed ``pyspark`` package (``pyspark/bin``), then on ``PATH``. ``SPARK_HOME``
    defaults to the ``pyspark`` package, and ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON``
    to this interpreter (the one with streamdrift and its dependencies), unless already set.
    """
    import importlib.util
    import os
    import shutil

    env = dict(os.environ)
    spec = importlib.util.find_spec("pyspark")
    locations = spec.submodule_search_locations if spec is not None else None
    pyspark_home = Path(next(iter(locations))) if locations else None
    if pyspark_home is not None:
        env.setdefault("SPARK_HOME", str(pyspark_home))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    candidates = [Path(sys.executable).parent / "spark-submit"]
    if pyspark_home is not None:
        candidates.append(pyspark_home / "bin" / "spark-submit")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c), env
    return shutil.which("spark-submit"), env


def spark_log_config() -> Path | None:
    """The log4j2 configuration shipped with the jobs (Spark's warnings and errors only)."""
    import importlib.util

    spec = importlib.util.find_spec("jobs")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "log4j2.properties"
    return path if path.is_file() else None


def spark_submit_command(
    submit: str, module_file: str, master: str, job_args: Sequence[str], verbose: bool
) -> list[str]:
    """The spark-submit command line of a job: the master, the driver's JVM options (with the
    shipped log4j2 configuration unless ``verbose``), the job file and its arguments."""
    java_opts = DRIVER_JAVA_OPTIONS
    log_config = None if verbose else spark_log_config()
    if log_config is not None:
        java_opts += f" -Dlog4j2.configurationFile={log_config.as_uri()}"
    return [submit, "--master", master, "--conf", f"spark.driver.extraJavaOptions={java_opts}", module_file, *job_args]


def spark_submit(module: str, master: str, job_args: Sequence[str], *, verbose: bool = False) -> int:
    """Run one of the jobs/ scripts with spark-submit on ``master``; its exit code."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        print(f"streamdrift: the Spark job {module} is not installed", file=sys.stderr)
        return 2
    submit, env = find_spark_submit()
    if submit is None:
        print(
            "streamdrift: spark-submit not found (neither next to this Python, nor in the pyspark package, nor on "
            "PATH); install the spark extra: pip install 'streamdrift[spark]'",
            file=sys.stderr,
        )
        return 2
    return subprocess.call(spark_submit_command(submit, spec.origin, master, job_args, verbose), env=env)


def print_summary(records: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """A readable table: one line per window and segment, the worst verdict per feature. Windows are
    told apart by their ``window_index`` too: count windows whose times tie get a line each, and then
    a ``#`` column shows the index."""
    from detectors.evaluate import SEVERITY_LEVEL, segment_label

    rows: dict[tuple[str, str, str, int | None], dict[str, str]] = {}
    features: list[str] = []
    for r in records:
        key = (r["window_start"], r["window_end"], segment_label(r["segment"]), r.get("window_index"))
        feats = rows.setdefault(key, {})
        if r["feature"] not in features:
            features.append(r["feature"])
        cur = feats.get(r["feature"])
        if cur is None or SEVERITY_LEVEL[r["severity"]] > SEVERITY_LEVEL[cur]:
            feats[r["feature"]] = r["severity"]
    mark = {"ok": ".", "warning": "W", "critical": "C", "insufficient_data": "?"}
    width = max([len(f) for f in features] + [1])
    tied = len({k[:3] for k in rows}) < len(rows)  # some windows differ only by their index
    index_w = max([len(str(k[3])) for k in rows] + [1]) if tied else 0
    index_head = f"{'#':>{index_w}} " if tied else ""
    out.write(
        f"window start              {index_head}segment            "
        + " ".join(f"{f[:width]:>{width}}" for f in features)
        + "\n"
    )
    for (start, _end, seg, index), feats in rows.items():
        cells = " ".join(f"{mark.get(feats.get(f, ''), ' '):>{width}}" for f in features)
        shown = f"{'' if index is None else index:>{index_w}} " if tied else ""
        out.write(f"{start:<25} {shown}{seg[:18]:<18} {cells}\n")
    out.write("legend: . ok   W warning   C critical   ? too few events (no verdict)\n")
