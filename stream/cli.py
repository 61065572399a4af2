"""The ``streamdrift`` command line.

Subcommands register themselves in :data:`COMMANDS` via :func:`command`; each gets an
argparse sub-parser and returns a process exit code. Expected failures (bad config, bad
input) print one clear message to stderr and exit 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from detectors.config import reference_columns
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.exceptions import ConfigError, StreamdriftError
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.files import read_columns, read_rows, write_records
from stream.settings import load_monitor, load_yaml

log = logging.getLogger("streamdrift")

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler, str]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register subcommand ``name``: ``add_args`` adds its arguments, the decorated function runs it."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (add_args, handler, help)
        return handler

    return register


# -- reference build --------------------------------------------------------------------
def _reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build"], help="build a reference profile")
    p.add_argument("--input", required=True, help="baseline data: .parquet, .csv or .jsonl")
    p.add_argument("--out", required=True, help="where to write the reference JSON")
    p.add_argument("--config", help="monitor YAML: features.include / features.categorical are used")
    p.add_argument("--features", help="comma-separated feature columns (default: all but the event fields)")
    p.add_argument("--categorical", default="", help="comma-separated categorical columns")
    p.add_argument("--fine-bins", type=int, default=100)
    p.add_argument("--coarse-bins", type=int, default=10)
    p.add_argument("--top-n", type=int, default=50, help="categories kept per categorical feature")
    p.add_argument("--keep-values", type=int, default=0, help="keep up to N raw values for exact KS")
    p.add_argument("--engine", choices=["local", "spark"], default="local", help="spark: for data larger than memory")
    p.add_argument("--master", default="local[2]", help="Spark master for --engine spark")


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


@command("reference", "build a frozen reference profile from baseline data", _reference_args)
def cmd_reference(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        if args.keep_values:
            raise ConfigError("--keep-values: the Spark reference build does not keep raw values")
        job_args = ["--input", args.input, "--out", args.out, "--fine-bins", str(args.fine_bins)]
        job_args += ["--coarse-bins", str(args.coarse_bins), "--top-n", str(args.top_n)]
        for flag, value in (("--config", args.config), ("--features", args.features)):
            if value:
                job_args += [flag, value]
        if args.categorical:
            job_args += ["--categorical", args.categorical]
        return spark_submit("jobs.reference_build", args.master, job_args)
    cols = read_columns(args.input)
    features, categorical = reference_columns(
        list(cols), _split(args.features), _split(args.categorical), load_yaml(args.config) if args.config else None
    )
    ref = ReferenceProfile.build(
        cols,
        features=features,
        categorical=categorical,
        fine_bins=args.fine_bins,
        coarse_bins=args.coarse_bins,
        top_n=args.top_n,
        keep_values=args.keep_values,
        metadata={"source": Path(args.input).name},
    )
    ref.save(args.out)
    print(f"reference: {len(ref.features)} features from {ref.n_rows} rows -> {args.out}")
    print(f"fingerprint: {ref.fingerprint}")
    for name, prof in ref.features.items():
        print(f"  {name:<24} {prof.type:<12} {prof.n_bins:>4} bins  {prof.n_missing} missing")
    return 0


# -- backfill ---------------------------------------------------------------------------
def _backfill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="monitor YAML")
    p.add_argument("--input", required=True, help="events: .parquet, .csv or .jsonl")
    p.add_argument("--output", required=True, help="window statistic records: .jsonl or .parquet")
    p.add_argument("--engine", choices=["local", "spark"], default="local")
    p.add_argument("--master", default="local[2]", help="Spark master for --engine spark")
    p.add_argument("--quiet", action="store_true", help="no summary table")


@command("backfill", "compute window statistics over a file of events", _backfill_args)
def cmd_backfill(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        return _spark_backfill(args)
    config = load_monitor(args.config)
    reference = ReferenceProfile.load(config.reference)
    layout = Layout(reference, config.features.include)
    started_ms = int(time.time() * 1000)  # event times beyond it + events.max_future_skew are rejected
    rows = read_rows(args.input)
    cols, errors = decode_events(rows, config, reference, layout.features, now_ms=started_ms)
    records = run_local(cols, config, reference, layout)
    write_records(args.output, records)
    if errors:
        from stream.decode import reason_code

        codes = Counter(reason_code(reason) for _i, reason in errors)
        by_code = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
        print(
            f"{len(errors)} of {len(rows)} events rejected ({by_code}); first: row {errors[0][0] + 1}: {errors[0][1]}"
        )
    if not args.quiet:
        print_summary(records, sys.stdout)
    print(f"{len(records)} records from {len(cols)} events -> {args.output}")
    return 0


def _spark_backfill(args: argparse.Namespace) -> int:
    return spark_submit(
        "jobs.backfill", args.master, ["--config", args.config, "--input", args.input, "--output", args.output]
    )


def spark_submit(module: str, master: str, job_args: Sequence[str]) -> int:
    """Run one of the jobs/ scripts with spark-submit on ``master``; its exit code."""
    import importlib.util
    import shutil
    import subprocess

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        print(f"streamdrift: the Spark job {module} is not installed", file=sys.stderr)
        return 2
    submit = shutil.which("spark-submit")
    if submit is None:
        print(
            "streamdrift: spark-submit not found; install the spark extra: pip install 'streamdrift[spark]'",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([submit, "--master", master, spec.origin, *job_args])


def print_summary(records: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """A readable table: one line per window and segment, the worst verdict per feature."""
    from detectors.evaluate import SEVERITY_LEVEL, segment_label

    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    features: list[str] = []
    for r in records:
        key = (r["window_start"], r["window_end"], segment_label(r["segment"]))
        feats = rows.setdefault(key, {})
        if r["feature"] not in features:
            features.append(r["feature"])
        cur = feats.get(r["feature"])
        if cur is None or SEVERITY_LEVEL[r["severity"]] > SEVERITY_LEVEL[cur]:
            feats[r["feature"]] = r["severity"]
    mark = {"ok": ".", "warning": "W", "critical": "C", "insufficient_data": "?"}
    width = max([len(f) for f in features] + [1])
    out.write(
        "window start              segment            " + " ".join(f"{f[:width]:>{width}}" for f in features) + "\n"
    )
    for (start, _end, seg), feats in rows.items():
        cells = " ".join(f"{mark.get(feats.get(f, ''), ' '):>{width}}" for f in features)
        out.write(f"{start:<25} {seg[:18]:<18} {cells}\n")
    out.write("legend: . ok   W warning   C critical   ? too few events (no verdict)\n")


# -- entry point ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamdrift", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _handler, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _load_plugins() -> None:
    """Import the modules that register the other subcommands."""
    import importlib

    for mod in ("stream.serve_cli", "stream.demo", "stream.report"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    _load_plugins()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _add, handler, _help = COMMANDS[args.command]
    try:
        return handler(args)
    except StreamdriftError as exc:
        print(f"streamdrift {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m stream.cli`: run the imported module so plugins register where main() looks
    from stream.cli import main as _main

    sys.exit(_main())
