"""The ``streamdrift`` command line.

Every subcommand is listed once, in :data:`COMMANDS`: its help text, the function that adds
its arguments to an argparse sub-parser, and the handler that runs it and returns the process
exit code. Expected failures (bad config, bad input) print one clear message to stderr and
exit 2; nothing prints a traceback for them.

The command modules import their heavy or optional dependencies (plotly, pyspark, mlflow, the
embedded broker) inside the handlers, so ``streamdrift --help`` and ``serve`` need none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from detectors.exceptions import StreamdriftError
from stream.cli import batch, serve
from stream.demo import run as demo
from stream.report import html as report


class Command(NamedTuple):
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "reference": Command("build or calibrate a frozen reference profile", batch.reference_args, batch.cmd_reference),
    "backfill": Command("compute window statistics over a file of events", batch.backfill_args, batch.cmd_backfill),
    "serve": Command(
        "consume a Kafka topic and publish window drift statistics, alerts and metrics",
        serve.serve_args,
        serve.cmd_serve,
    ),
    "report": Command(
        "write a self-contained HTML drift report from window statistic records", report.report_args, report.cmd_report
    ),
    "demo": Command(
        "run the whole pipeline on an embedded broker with a drifting synthetic stream", demo.demo_args, demo.cmd_demo
    ),
    "example-data": Command(
        "write an example baseline and events file (a credit model's predictions, drift half-way) to try the commands",
        demo.example_args,
        demo.cmd_example_data,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamdrift", description="Streaming drift detection for ML models.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_args(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except StreamdriftError as exc:
        print(f"streamdrift {args.command}: error: {exc}", file=sys.stderr)
        return 2
