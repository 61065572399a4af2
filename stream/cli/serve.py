"""``streamdrift serve --config FILE``: the long-running consumer (one active process per monitored topic;
further processes on the same ``state.dir`` are standbys that take over when it exits, :mod:`stream.service.consumer`).

SIGTERM or SIGINT: finish the current batch, write a final checkpoint, commit, close, exit 0 (a
standby just stops waiting and exits 0). ``--check`` validates the config and prints it (secrets
masked) without connecting.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading
from types import FrameType
from typing import Any

from stream.service.labels import check_serve_labels
from stream.settings import ServeConfig

log = logging.getLogger("streamdrift.serve")

#: the collector's thresholds while serving: a batch allocates ~10k short-lived tuples and
#: lists, so the young generation is collected every 50k allocations instead of every 700
#: (the default), i.e. about once a batch
GC_THRESHOLD = (50_000, 20, 100)


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="monitor YAML with kafka/outputs/metrics/state sections")
    p.add_argument("--check", action="store_true", help="validate the config, print it (secrets masked) and exit")


def cmd_serve(args: argparse.Namespace) -> int:
    config = ServeConfig.load(args.config)
    check_serve_labels(config)
    if args.check:
        print(f"config ok: {config!r}")
        return 0
    return serve(config)


def serve(config: ServeConfig, **consumer_args: Any) -> int:
    """Run the consumer in this process until SIGTERM/SIGINT (``consumer_args``: DriftConsumer's keyword
    arguments, e.g. an injected schema registry client: the benchmark's in-memory one)."""
    from stream.service.consumer import DriftConsumer

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the batch, then checkpoint, commit and close", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer = DriftConsumer(config, **consumer_args)
    # what exists now (modules, config, reference, layout) lives as long as the process: keep it
    # out of the collector's generations, so full collections scan only what batches leave behind
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    log.info("serving monitor %s: %r", config.monitor.monitor, config)
    stats = consumer.run(stop)
    log.info(
        "stopped: %d messages, %d valid, %d invalid, %d late, %d windows closed, %d alerts, %d checkpoints",
        stats.messages,
        stats.valid,
        stats.invalid,
        stats.late,
        stats.windows_closed,
        stats.alerts,
        stats.checkpoints,
    )
    if consumer.labels is not None:
        from detectors.labelled import join_summary

        log.info(
            "labels topic %s: %d messages, %d invalid; %s",
            consumer.labels.topic,
            stats.label_messages,
            stats.label_invalid,
            join_summary(consumer.labels.counts),
        )
    return 0
