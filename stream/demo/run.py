"""``streamdrift demo``: everything on one machine, in one command (and ``streamdrift example-data``).

1. starts the embedded Kafka-compatible broker (tansu) on a free loopback port;
2. builds a reference profile from synthetic baseline data;
3. starts ``streamdrift serve`` (a real subprocess) with /metrics live;
4. produces a synthetic prediction stream with a drift injected part-way (plus a few
   malformed messages, which go to the dead-letter topic), and the predictions' labels on a
   labels topic, each 1 to 20 minutes (event time) after its prediction: from the drift on the
   labels stop following the score, so the model's accuracy drops there;
5. prints each closed window's verdicts, each window's performance once its late labels have
   come (joined by prediction id), and every alert as they arrive on their topics;
6. stops the consumer with SIGTERM and prints a summary: events, windows, alerts, and where
   the drift was found against where it was injected;
7. writes an HTML report of the records serve wrote (``records.jsonl``), and prints where
   everything is and the next commands: the report again, a backfill on your own file, and
   the ``monitor.yaml`` to start from.

Everything stays in the work directory (``--workdir``, default a new directory under the
system's temporary directory, kept).

``streamdrift example-data`` writes the demo's baseline and stream as files (flat CSV or
Parquet, nested JSON lines) with the columns of ``deploy/examples/monitor.yaml``, for the
README's quick tour.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detectors.config import parse_duration_ms
from detectors.evaluate import iso_ms
from detectors.performance import FEATURE as PERFORMANCE
from detectors.reference import ReferenceProfile
from stream.demo import synthetic
from stream.demo.broker import EmbeddedBroker, free_port
from stream.exceptions import StreamError

CONFIG_HEADER = """\
# A monitor written by `streamdrift demo`: a starting point for your own. Set `reference` (built by
# `streamdrift reference build`), the events.* fields to your events' names (features_field: null when
# the features are top-level columns), kafka.* to your cluster; remove state.dir and metrics.port to
# take the defaults. Every setting, commented: deploy/examples/monitor.yaml in the repository.
"""
TOPIC, STATS, ALERTS, DLQ = "predictions", "streamdrift.statistics", "streamdrift.alerts", "streamdrift.dead-letters"
LABELS = "labels"
MALFORMED = (b"not json at all", b'{"timestamp": "yesterday", "features": {}}', b'{"features": {"income": "high"}}')


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=60_000, help="events in the synthetic stream")
    p.add_argument("--drift-at", type=float, default=0.5, help="fraction of the stream where the drift starts")
    p.add_argument("--window", default="10m", help="tumbling window size (event time; events are 100 ms apart)")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics (0 = a free one)")
    p.add_argument(
        "--workdir",
        help="where to write the reference, config, events, records, report and state (default: a new "
        "directory under the temporary directory, kept)",
    )
    p.add_argument("--seed", type=int, default=7)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 0 < args.drift_at < 1:
        raise StreamError(f"--drift-at must be between 0 and 1 (got {args.drift_at})")
    if args.events < 1000:
        raise StreamError(f"--events must be at least 1000 (got {args.events}) for windows with verdicts")
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="streamdrift-demo-"))
    return Demo(args, workdir.resolve()).run()


def example_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=".", help="directory to write baseline.FORMAT and events.FORMAT to")
    p.add_argument(
        "--format",
        choices=synthetic.EXAMPLE_FORMATS,
        default="csv",
        help="csv and parquet: flat (a column per feature); jsonl: nested, as a producer sends events",
    )
    p.add_argument("--events", type=int, default=20_000, help="rows in each file (events are 100 ms apart)")
    p.add_argument("--seed", type=int, default=7)


def cmd_example_data(args: argparse.Namespace) -> int:
    if args.events < 1000:
        raise StreamError(f"--events must be at least 1000 (got {args.events}) for windows with verdicts")
    base, events = synthetic.write_example(Path(args.out), args.format, args.events, args.seed)
    spec = synthetic.StreamSpec(n_events=args.events, seed=args.seed)
    _say(f"{base}: {args.events:,} events of the model before (the baseline)")
    _say(
        f"{events}: {args.events:,} events from {iso_ms(spec.start_ms)}, 100 ms apart; from "
        f"{iso_ms(spec.drift_start_ms)} on, {' and '.join(synthetic.DRIFTED_FEATURES)} drift"
    )
    shape = "nested (a features object)" if args.format == "jsonl" else "flat (a column per feature)"
    _say(
        f"columns: timestamp, country, score, label, {', '.join([*synthetic.NUMERIC, *synthetic.CATEGORICAL])}; "
        f"{shape}, as deploy/examples/monitor.yaml expects"
    )
    return 0


def _say(msg: str) -> None:
    print(msg, flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.spec = synthetic.StreamSpec(n_events=args.events, drift_at=args.drift_at, seed=args.seed)
        self.metrics_port = args.metrics_port or free_port()
        self.windows: dict[str, dict[str, Any]] = defaultdict(dict)  # window_start -> feature -> worst record
        self.alerts: list[dict[str, Any]] = []
        self.concept: list[dict[str, Any]] = []
        self.performance: dict[str, dict[str, Any]] = {}  # window_start -> statistic -> overall record
        self.perf_printed: set[str] = set()
        self.perf_alerts: list[dict[str, Any]] = []
        self.counts: dict[str, float] = {}
        self.records = workdir / "records.jsonl"
        self.events = workdir / "events.jsonl"
        self.labels = workdir / "labels.jsonl"
        # a label arrives 1 minute to two windows after its prediction (event time, uniformly at random);
        # a prediction waits three windows for it (labels.max_delay)
        window_ms = parse_duration_ms(args.window, "--window")
        self.label_delay_ms = (60_000, 2 * window_ms)
        self.max_delay_ms = 3 * window_ms

    # -- steps ----------------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.monotonic()
        _say(f"streamdrift demo (files in {self.workdir})")
        # what an earlier demo left here would mix with this run: its records, its checkpoints
        self.records.unlink(missing_ok=True)
        if (self.workdir / "state").is_dir():
            shutil.rmtree(self.workdir / "state")
        with EmbeddedBroker() as broker:
            _say(f"[1/6] embedded broker (tansu) listening on {broker.bootstrap}")
            self._create_topics(broker.bootstrap)
            ref_path = self._build_reference()
            config_path = self._write_config(broker.bootstrap, ref_path)
            proc = self._start_consumer(config_path)
            try:
                n_bad = self._produce(broker.bootstrap)
                self._follow(broker.bootstrap, proc, self.spec.n_events + n_bad)
            finally:
                self._stop_consumer(proc)
            self._summary(n_bad, time.monotonic() - t0)
        report = self._report(config_path)
        self._next_steps(config_path, report)
        return 0

    def _create_topics(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in (TOPIC, LABELS, STATS, ALERTS, DLQ)]
        )
        for f in futures.values():
            f.result(timeout=10)

    def _build_reference(self) -> Path:
        import dataclasses

        from detectors.performance import PerformanceProfile

        cols = synthetic.reference_columns(50_000, seed=self.args.seed + 1)
        ref = ReferenceProfile.build(
            cols,
            features=[*synthetic.NUMERIC, *synthetic.CATEGORICAL],
            categorical=synthetic.CATEGORICAL,
            metadata={"source": "streamdrift demo baseline"},
        )
        perf = PerformanceProfile.build(cols["score"], cols["label"], task="classification", threshold=0.5)
        ref = dataclasses.replace(ref, performance=perf)
        path = self.workdir / "reference.json"
        ref.save(path)
        _say(
            f"[2/6] reference profile: 50,000 baseline events, {len(ref.features)} features, the model's accuracy "
            f"{perf.metrics['accuracy']:.3f} on their labels -> {path}"
        )
        _say(f"      fingerprint {ref.fingerprint[:23]}...")
        return path

    def _write_config(self, bootstrap: str, ref_path: Path) -> Path:
        config = {
            "monitor": "demo-credit-model",
            "reference": str(ref_path),
            "events": {
                "time_field": "timestamp",
                "features_field": "features",
                "segment_fields": ["country"],
                "prediction_field": "score",
            },
            "window": {"kind": "tumbling", "size": self.args.window},
            "statistics": {"min_events": 200},
            "concept": {"detector": "adwin", "stream": "model_error", "error": "absolute"},
            # the labels come later, on their own topic, joined to the predictions by id
            "labels": {
                "topic": LABELS,
                "id_field": "id",
                "label_field": "label",
                "max_delay": f"{self.max_delay_ms // 1000}s",
            },
            "kafka": {"bootstrap_servers": bootstrap, "topic": TOPIC, "group_id": "streamdrift-demo"},
            "outputs": {
                "statistics_topic": STATS,
                "alerts_topic": ALERTS,
                "dead_letter_topic": DLQ,
                "statistics_file": str(self.records),
            },
            "metrics": {"address": "127.0.0.1", "port": self.metrics_port},
            "state": {"dir": str(self.workdir / "state")},
        }
        path = self.workdir / "monitor.yaml"
        path.write_text(CONFIG_HEADER + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def _start_consumer(self, config_path: Path) -> subprocess.Popen[bytes]:
        log = (self.workdir / "serve.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "--log-level", "WARNING", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._wait_metrics(proc)
        _say(
            f"[3/6] streamdrift serve running (pid {proc.pid}); metrics at http://127.0.0.1:{self.metrics_port}/metrics"
        )
        return proc

    def _wait_metrics(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StreamError(f"streamdrift serve exited with {proc.returncode}; see {self.workdir / 'serve.log'}")
            if self._scrape() is not None:
                return
            time.sleep(0.2)
        raise StreamError("streamdrift serve did not expose /metrics in time")

    def _scrape(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        out: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if line.startswith("streamdrift_events_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] += float(line.rsplit(" ", 1)[1])
        return out

    def _produce(self, bootstrap: str) -> int:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none"})
        n = self.spec.n_events
        drift_index = int(n * self.spec.drift_at)
        _say(
            f"[4/6] producing {n:,} events to '{TOPIC}' (event time {iso_ms(self.spec.start_ms)} + 100 ms each); "
            f"drift injected at event {drift_index:,} = {iso_ms(self.spec.drift_start_ms)}"
        )
        _say(
            f"      and their labels to '{LABELS}', each {self.label_delay_ms[0] // 60_000} to "
            f"{self.label_delay_ms[1] // 60_000} minutes after its prediction (joined by id; labels.max_delay "
            f"{self.max_delay_ms // 60_000}m);\n"
            "      from the drift on the labels stop following the score: the model's accuracy drops there"
        )
        bad_at = {n // 4 + k * 7 for k in range(len(MALFORMED))}
        n_bad = 0
        rng = np.random.default_rng(self.args.seed + 2)
        pending: list[tuple[int, int, bytes]] = []  # (label time, seq, label message): a heap
        with self.events.open("wb") as copy, self.labels.open("wb") as labels:
            # (the valid events and the labels, for `report --events` and a backfill --labels)

            def send_labels(until_ms: int) -> None:
                while pending and pending[0][0] <= until_ms:
                    _t, _seq, value = heapq.heappop(pending)
                    p.produce(LABELS, value)
                    labels.write(value + b"\n")

            for i, ev in enumerate(synthetic.events(self.spec)):
                if i in bad_at:
                    p.produce(TOPIC, MALFORMED[n_bad])
                    n_bad += 1
                ev["id"] = f"e{i}"
                label = ev.pop("label")
                send_labels(ev["timestamp"])
                value = json.dumps(ev, separators=(",", ":")).encode()
                p.produce(TOPIC, value)
                copy.write(value + b"\n")
                t_label = ev["timestamp"] + int(rng.integers(*self.label_delay_ms))
                heapq.heappush(
                    pending,
                    (t_label, i, json.dumps({"id": ev["id"], "label": label, "timestamp": t_label}).encode()),
                )
                if i % 5000 == 0:
                    p.poll(0)
                if (i + 1) % (n // 4) == 0:
                    _say(f"      produced {i + 1:,}/{n:,}")
            send_labels(2**62)
        p.flush(30)
        return n_bad

    def _follow(self, bootstrap: str, proc: subprocess.Popen[bytes], expected: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        _say("[5/6] closed windows (overall segment; '.' ok, 'W' warning, 'C' critical, '?' too few events):")
        features = [*synthetic.NUMERIC, *synthetic.CATEGORICAL]
        _say(
            "      alerts: the alert messages of the window on 'streamdrift.alerts': one per drifted statistic (PSI, "
            "KS, chi-square, unseen share) of each segment (all events, and each country)"
        )
        _say("      window start              " + " ".join(f"{f[:11]:>11}" for f in features) + "   alerts")
        c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "streamdrift-demo-viewer", "enable.auto.commit": False}
        )
        c.assign([TopicPartition(STATS, 0, 0), TopicPartition(ALERTS, 0, 0)])
        printed: set[str] = set()
        last_window_seen = time.monotonic()
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise StreamError(
                        f"streamdrift serve exited with {proc.returncode}; see {self.workdir / 'serve.log'}"
                    )
                for msg in c.consume(1000, 0.5):
                    if msg.error():
                        continue
                    rec = json.loads(msg.value() or b"null")
                    if msg.topic() == ALERTS:
                        if rec["feature"] == "model_error":
                            self.concept.append(rec)
                        elif rec["feature"] == PERFORMANCE:
                            self.perf_alerts.append(rec)
                        else:
                            self.alerts.append(rec)
                        continue
                    last_window_seen = time.monotonic()
                    if rec["segment"] or rec["feature"] == "model_error":
                        continue
                    if rec["feature"] == PERFORMANCE:
                        self.performance.setdefault(rec["window_start"], {})[rec["statistic"]] = rec
                        continue
                    self._keep(rec)
                self._print_ready(features, printed)
                self._print_performance()
                counts = self._scrape() or {}
                if counts:
                    self.counts = dict(counts)
                done = sum(counts.values()) >= expected
                if done and time.monotonic() - last_window_seen > 2.0:
                    break
        finally:
            c.close()
        self._print_ready(features, printed, final=True)

    def _keep(self, rec: dict[str, Any]) -> None:
        from detectors.evaluate import SEVERITY_LEVEL

        feats = self.windows[rec["window_start"]]
        cur = feats.get(rec["feature"])
        if cur is None or SEVERITY_LEVEL[rec["severity"]] > SEVERITY_LEVEL[cur["severity"]]:
            feats[rec["feature"]] = rec

    def _print_ready(self, features: list[str], printed: set[str], final: bool = False) -> None:
        mark = {"ok": ".", "warning": "W", "critical": "C", "insufficient_data": "?"}
        for start in sorted(self.windows):
            feats = self.windows[start]
            if start in printed or (len(feats) < len(features) and not final):
                continue
            printed.add(start)
            cells = " ".join(f"{mark[feats[f]['severity']] if f in feats else '-':>11}" for f in features)
            n_alerts = sum(1 for a in self.alerts if a["window_start"] == start)
            _say(f"      {start}  {cells}   {n_alerts}")

    def _print_performance(self) -> None:
        """Each window's performance, once its late labels are in (its records come together)."""
        mark = {"ok": "ok", "warning": "DROP (warning)", "critical": "DROP (critical)", "insufficient_data": "?"}
        for start in sorted(self.performance):
            recs = self.performance[start]
            acc, cov = recs.get("accuracy"), recs.get("label_coverage")
            if start in self.perf_printed or acc is None or cov is None:
                continue
            self.perf_printed.add(start)
            value = "-" if acc["value"] is None else f"{acc['value']:.3f}"
            _say(
                f"      performance of window {start}: accuracy {value} on {acc['n_window']:,} late labels "
                f"(coverage {cov['value']:.2f})  {mark[acc['severity']]}"
            )

    def _stop_consumer(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _say(f"[6/6] consumer stopped (SIGTERM, exit code {proc.returncode}); checkpoint in {self.workdir / 'state'}")

    def _summary(self, n_bad: int, seconds: float) -> None:
        drift_start = iso_ms(self.spec.drift_start_ms)
        flagged: dict[str, list[str]] = defaultdict(list)
        for start, feats in sorted(self.windows.items()):
            for f, rec in feats.items():
                if rec["drift"]:
                    flagged[f].append(start)
        counts = self.counts
        _say("")
        _say("summary")
        _say(f"  events produced        {self.spec.n_events:,} valid + {n_bad} malformed (-> {DLQ})")
        if counts:
            _say("  consumer counted       " + ", ".join(f"{k} {int(v):,}" for k, v in sorted(counts.items())))
        _say(
            f"  windows closed         {len(self.windows)} (overall segment), plus per-country segments; the last "
            "window stays open until later events move the watermark past its end"
        )
        _say(f"  feature alerts         {len(self.alerts)} on '{ALERTS}'; concept-drift detections {len(self.concept)}")
        _say(
            f"  drift injected at      {drift_start} into {', '.join(synthetic.DRIFTED_FEATURES)} (and the labels: "
            "the accuracy drops)"
        )
        for f in [*synthetic.NUMERIC, *synthetic.CATEGORICAL]:
            starts = flagged.get(f, [])
            where = f"first flagged in window {starts[0]} ({len(starts)} windows)" if starts else "never flagged"
            expect = "drifted" if f in synthetic.DRIFTED_FEATURES else "stable "
            _say(f"    {f:<12} {expect}  {where}")
        dropped = sorted(s for s, recs in self.performance.items() if (recs.get("accuracy") or {}).get("drift"))
        where = f"first flagged in window {dropped[0]}" if dropped else "never flagged"
        _say(
            f"  performance            {len(self.performance)} windows from late labels (the last ones wait for "
            f"theirs: labels.max_delay); accuracy drop {where} ({len(self.perf_alerts)} performance alerts)"
        )
        if self.concept:
            _say(
                f"    model error  ADWIN first detection at {self.concept[0]['window_end']} (on the joined labels, "
                "in label-arrival order)"
            )
        _say(f"  wall time              {seconds:.1f} s")

    def _report(self, config_path: Path) -> Path:
        """The HTML report of the records serve wrote, with the window histograms from the events."""
        from stream.report.html import report_command

        out = self.workdir / "report.html"
        report_command(
            ["--records", str(self.records), "--config", str(config_path), "--events", str(self.events)],
            out,
        )
        return out

    def _next_steps(self, config_path: Path, report: Path) -> None:
        w = self.workdir
        report_cmd = (
            f"streamdrift report --records {self.records} --config {config_path} --events {self.events} "
            f"--segment country=de --out {w / 'report-de.html'}"
        )
        _say("")
        _say(f"files in {w}")
        _say(f"  {report.name:<15} the drift report: open it in a browser")
        _say(f"  {self.records.name:<15} the window statistic records serve wrote (also on '{STATS}')")
        _say(f"  {self.events.name:<15} the events the demo sent (nested JSON lines)")
        _say(f"  {self.labels.name:<15} their labels, in the order they were sent to '{LABELS}'")
        _say(f"  {'reference.json':<15} the reference profile the windows were compared with")
        _say(f"  {config_path.name:<15} the monitor's configuration")
        _say("next")
        _say("  the report of one segment (or --window START for another window's histograms):")
        _say(f"    {report_cmd}")
        _say("  the same statistics from the events file, without Kafka:")
        _say(
            f"    streamdrift backfill --config {config_path} --input {self.events} --labels {self.labels} "
            f"--output {w / 'backfill.jsonl'}"
        )
        _say("  your own data (a file of past events for the reference, and the events to check):")
        _say(f"    cp {config_path} monitor.yaml   # then set reference, events.* (your columns) and kafka.*")
        _say("    streamdrift reference build --input baseline.csv --config monitor.yaml --out reference.json")
        _say("    streamdrift backfill --config monitor.yaml --input events.csv --output stats.jsonl")
        _say("    streamdrift report --records stats.jsonl --config monitor.yaml --events events.csv --out report.html")
        _say("  every setting, commented: deploy/examples/monitor.yaml in the repository")
