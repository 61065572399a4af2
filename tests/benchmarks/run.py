"""streamdrift's performance benchmark: ``make bench`` or ``.venv/bin/python tests/benchmarks/run.py``.

One run, one machine, one broker (the embedded tansu, ``stream.demo.broker.EmbeddedBroker``), the
same data for every contender: N JSON events with 20 numeric features, and a variant with 5
categorical features and a segment field. For each repeat and variant the data is drawn
afresh (its own seed) and produced to a fresh topic; the ceiling, the floor and
``streamdrift serve`` each consume that topic in their own process (the order rotates per
repeat). Medians over the repeats; ratios are of medians measured in this run.

Sections (``--sections``, default all):
  kafka  ceiling (raw confluent-kafka consume), floor (consume + msgspec decode to numpy),
         serve (``streamdrift serve`` end to end), and serve on the same events as Avro with
         schema registry framing (``events.format: avro``; its registry in memory,
         ``bench_avro_serve.py``); ``--long`` adds a 10 x N stream for memory
  batch  one 100k x 20 window: streamdrift vs Evidently's data drift report vs naive scipy
  spark  the Spark backfill at local[1] and local[2]
  spark_streaming  the Structured Streaming job at local[2] and local[1] against one ``streamdrift
         serve``, all on the same two-partition topic of ``--stream-events`` events
  checkpoint  not the consume loop: checkpoint time and bytes of serve's state store on 1 h / 1 min
         sliding windows, 100 segments, 25 features at 100k events/s, against the full-JSON format
         of earlier versions (``bench_checkpoint.py``; ``--checkpoint-minutes`` of event time)
  verdicts  not a timing: false-alarm (page) rates on null streams and detection rates on drifted
         ones, for streamdrift, textbook KS/chi-square at the same false-alarm rate, Evidently and
         NannyML (``bench_verdicts.py``); ``--quick`` makes it a smoke run of about a minute
  labels  late labels (``bench_labels.py``): memory per waiting prediction at 1M and 10M, the join's
         throughput, ``serve`` with a labels topic at the predictions' rate against ``serve`` without
         labels, and detection of an accuracy drop (0.90 -> 0.85) from labels 1 min to 1 h late
         through the backfill path; ``--quick``: 1M only, smaller streams

Prints Markdown tables and writes every figure to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tests.benchmarks import (  # noqa: E402
    bench_batch,
    bench_checkpoint,
    bench_labels,
    bench_serve,
    bench_spark,
    bench_verdicts,
)
from tests.benchmarks.bench_common import (  # noqa: E402
    MIXED,
    NUMERIC,
    NUMERIC_ONLY,
    Variant,
    avro_self_check,
    columns,
    delete_topic,
    encode_avro_events,
    encode_events,
    fresh_topic,
    machine,
    median,
    produce,
    self_check,
    wait_quiet,
)

SECTIONS = ("kafka", "batch", "spark", "spark_streaming", "verdicts", "labels", "checkpoint")
TARGETS = {
    "consumer_vs_floor": 0.75,
    "avro_vs_json": 0.7,  # serve on Avro / serve on JSON, msgs/s
    "memory_growth": 1.10,  # VmHWM(10 x N) / VmHWM(N), or RSS end / RSS at 20% without --long
    "batch_vs_evidently": 50.0,
    "spark_scaling": 1.6,
    "streaming_vs_serve": 1.0,  # Structured Streaming at local[2] / one serve process, same topic
    "streaming_scaling": 1.7,  # Structured Streaming local[2] / local[1]
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def serve_available() -> str | None:
    r = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--help"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return None if r.returncode == 0 else f"`streamdrift serve` is not available (exit {r.returncode})"


def consumer_proc(mode: str, bootstrap: str, topic: str, n: int, mixed: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.benchmarks.bench_kafka", mode, "--bootstrap", bootstrap]
    cmd += ["--topic", topic, "--n", str(n)] + (["--mixed"] if mixed else [])
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{mode} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


QUIET = {"min_idle": 0.8, "timeout": 120.0}


def quiet() -> float:
    return wait_quiet(QUIET["min_idle"], QUIET["timeout"], log)


def kafka_section(
    bootstrap: str, workdir: Path, variants: list[Variant], n: int, repeats: int, long: bool, serve_why: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for vi, variant in enumerate(variants):
        reference = bench_serve.build_reference(workdir, variant)
        runs: dict[str, list[dict[str, Any]]] = {"ceiling": [], "floor": [], "serve": [], "serve_avro": []}
        modes = ["ceiling", "floor"] + ([] if serve_why else ["serve", "serve_avro"])
        produce_rates = []
        idle: list[float] = []
        for rep in range(repeats):
            seed = 1 + rep + 1000 * vi
            cols = columns(n, seed, variant)
            values = encode_events(cols, variant)
            avro_values = encode_avro_events(cols, variant) if not serve_why else []
            expected_sum = float(np.column_stack([cols[f] for f in NUMERIC]).sum())
            scale = float(np.abs(np.column_stack([cols[f] for f in NUMERIC])).sum())
            del cols
            topic = fresh_topic(bootstrap, f"bench-{variant.name.split('+')[0]}")
            produce_rates.append(produce(bootstrap, topic, values))
            del values
            avro_topic = fresh_topic(bootstrap, f"bench-avro-{variant.name.split('+')[0]}")
            if avro_values:
                produce(bootstrap, avro_topic, avro_values)
            del avro_values
            order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
            idle.append(quiet())
            for mode in order:
                if mode in ("serve", "serve_avro"):
                    avro = mode == "serve_avro"
                    res = bench_serve.run_serve(
                        workdir, reference, variant, bootstrap, avro_topic if avro else topic, n, avro=avro
                    )
                    if res["events_valid"] != n:
                        raise RuntimeError(f"serve counted {res['events_valid']} valid events of {n}: {res}")
                else:
                    res = consumer_proc(mode, bootstrap, topic, n, variant.categorical)
                    if mode == "floor" and abs(res["value_sum"] - expected_sum) > 1e-9 * scale:
                        raise RuntimeError(f"floor decoded sum {res['value_sum']} != produced {expected_sum}")
                runs[mode].append(res)
            for t in (topic, f"{topic}-stats", f"{topic}-alerts", avro_topic, f"{avro_topic}-stats"):
                err = delete_topic(bootstrap, t)
                if err and t == topic:
                    log(f"  note: could not delete topic {t}: {err}")
            log(
                f"  {variant.name} repeat {rep + 1}/{repeats}: "
                + ", ".join(
                    f"{m} {runs[m][-1]['rate'] / 1000:.0f}k/s ({runs[m][-1]['cpu_rate'] / 1000:.0f}k/CPU-s)"
                    for m in modes
                )
            )
        v: dict[str, Any] = {
            "runs": runs,
            "produce_rate": median(produce_rates),
            "features_per_event": len(variant.features),
            "cpu_idle_before_repeat": idle,
        }
        for m in modes:
            v[f"{m}_rate"] = median(r["rate"] for r in runs[m])
            v[f"{m}_cpu_rate"] = median(r["cpu_rate"] for r in runs[m])
        if not serve_why:
            v["serve_avro_vs_json"] = v["serve_avro_rate"] / v["serve_rate"]
            v["serve_avro_vs_json_cpu"] = v["serve_avro_cpu_rate"] / v["serve_cpu_rate"]
            # (the same repeat's two runs saw the same machine: their ratio is the steadier figure)
            v["serve_avro_vs_json_per_repeat"] = [
                a["rate"] / j["rate"] for a, j in zip(runs["serve_avro"], runs["serve"], strict=True)
            ]
            v["serve_feature_values_rate"] = v["serve_rate"] * len(variant.features)
            v["serve_vs_floor"] = v["serve_rate"] / v["floor_rate"]
            v["serve_vs_floor_cpu"] = v["serve_cpu_rate"] / v["floor_cpu_rate"]
            v["serve_vm_hwm_kb"] = median(r["vm_hwm_kb"] for r in runs["serve"])
            v["serve_startup_s"] = median(r["startup_s"] for r in runs["serve"])
            growth = [r["rss_at_end_kb"] / r["rss_at_20pct_kb"] for r in runs["serve"] if r["rss_at_20pct_kb"]]
            v["serve_rss_growth_20_to_100pct"] = median(growth)
        v["floor_vs_ceiling"] = v["floor_rate"] / v["ceiling_rate"]
        v["floor_vs_ceiling_cpu"] = v["floor_cpu_rate"] / v["ceiling_cpu_rate"]
        out[variant.name] = v
    if long and not serve_why:
        out["long"] = long_run(bootstrap, workdir, n, out[NUMERIC_ONLY.name])
    return out


def long_run(bootstrap: str, workdir: Path, n: int, base: dict[str, Any]) -> dict[str, Any]:
    """serve on a 10 x N stream (produced in chunks of N): is its peak memory that of N?"""
    variant = NUMERIC_ONLY
    reference = bench_serve.build_reference(workdir, variant)
    topic = fresh_topic(bootstrap, "bench-long")
    total = 10 * n
    for k in range(10):
        cols = columns(n, 500 + k, variant)
        produce(bootstrap, topic, encode_events(cols, variant, start_ms=1_767_225_600_000 + k * n))
        log(f"  long: produced {(k + 1) * n:,} of {total:,}")
    res = bench_serve.run_serve(workdir, reference, variant, bootstrap, topic, total, timeout=1800)
    for t in (topic, f"{topic}-stats", f"{topic}-alerts"):
        delete_topic(bootstrap, t)
    res["vm_hwm_ratio_vs_n"] = res["vm_hwm_kb"] / base["serve_vm_hwm_kb"]
    log(f"  long: {total:,} events at {res['rate'] / 1000:.0f}k/s, VmHWM {res['vm_hwm_kb'] / 1024:.0f} MiB")
    return res


# -- report ------------------------------------------------------------------------------------------
def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x / 1000:,.0f}k"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def report(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    m = res["machine"]
    timed = any(res.get(k) for k in ("kafka", "batch", "spark"))
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Linux {m['kernel']}; Python {m['python']}, "
        f"numpy {m['numpy']}, confluent-kafka {m['confluent_kafka']} (librdkafka {m['librdkafka']}); {m['java']}; "
        f"broker: {m['broker']}." + (f" {res['events']:,} events, median of {res['repeats']} repeats." if timed else "")
    )
    idle = [x for v in (res.get("kafka") or {}).values() for x in v.get("cpu_idle_before_repeat", [])]
    idle += (res.get("batch") or {}).get("cpu_idle_before_repeat", [])
    idle += (res.get("spark") or {}).get("cpu_idle_before_run", [])
    idle += (res.get("spark_streaming") or {}).get("cpu_idle_before_run", [])
    idle = [x for x in idle if x == x]
    if idle:
        lines.append(
            f"CPU idle just before each repeat (other work on the machine skews timings): "
            f"min {min(idle):.0%}, median {median(idle):.0%}."
        )
    targets: dict[str, Any] = {}
    k = res.get("kafka")
    if k:
        names = [v for v in k if v != "long"]
        lines += ["", "| consume path (msgs/s) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

        def row(label: str, key: str, f: Any = fmt_rate) -> None:
            lines.append(f"| {label} | " + " | ".join(f(k[v].get(key)) for v in names) + " |")

        row("produce (setup, not a contender)", "produce_rate")
        row("ceiling: raw confluent-kafka consume", "ceiling_rate")
        row("floor: consume + msgspec decode to numpy", "floor_rate")
        row("`streamdrift serve` end to end", "serve_rate")
        row("`streamdrift serve` on Avro (schema registry framing)", "serve_avro_rate")
        row("serve feature-values/s", "serve_feature_values_rate", lambda x: "n/a" if x is None else f"{x / 1e6:.2f}M")
        row("floor / ceiling", "floor_vs_ceiling", lambda x: fmt(x, ".2f") + "x" if x else "n/a")
        row("serve / floor", "serve_vs_floor", lambda x: fmt(x, ".2f") + "x" if x else "n/a")
        row("serve Avro / serve JSON", "serve_avro_vs_json", lambda x: fmt(x, ".2f") + "x" if x else "n/a")
        row(
            "serve Avro / JSON, per repeat",
            "serve_avro_vs_json_per_repeat",
            lambda x: " ".join(f"{r:.2f}" for r in x) if x else "n/a",
        )
        row("ceiling, msgs per CPU-second", "ceiling_cpu_rate")
        row("floor, msgs per CPU-second", "floor_cpu_rate")
        row("serve, msgs per CPU-second", "serve_cpu_rate")
        row("serve Avro, msgs per CPU-second", "serve_avro_cpu_rate")
        row("serve / floor, per CPU-second", "serve_vs_floor_cpu", lambda x: fmt(x, ".2f") + "x" if x else "n/a")
        row("serve peak RSS (VmHWM, MiB)", "serve_vm_hwm_kb", lambda x: "n/a" if x is None else f"{x / 1024:.0f}")
        row("serve RSS growth, 20% -> 100% of stream", "serve_rss_growth_20_to_100pct", lambda x: fmt(x, ".3f") + "x")
        row("serve start-up to first event (s)", "serve_startup_s", lambda x: fmt(x, ".1f"))
        first = k[names[0]]
        if "serve_vs_floor" in first:
            ratios = [k[v]["serve_vs_floor"] for v in names]
            targets["consumer >= 0.75 x floor (msgs/s)"] = (
                ", ".join(f"{v}: {r:.2f}x" for v, r in zip(names, ratios, strict=True)),
                min(ratios) >= TARGETS["consumer_vs_floor"],
            )
            ratios = [k[v]["serve_vs_floor_cpu"] for v in names]
            targets["consumer >= 0.75 x floor (msgs per CPU-second)"] = (
                ", ".join(f"{v}: {r:.2f}x" for v, r in zip(names, ratios, strict=True)),
                min(ratios) >= TARGETS["consumer_vs_floor"],
            )
            ratios = [k[v]["serve_avro_vs_json"] for v in names]
            targets["consumer on Avro >= 0.7 x on JSON (msgs/s)"] = (
                ", ".join(f"{v}: {r:.2f}x" for v, r in zip(names, ratios, strict=True)),
                min(ratios) >= TARGETS["avro_vs_json"],
            )
            ratios = [k[v]["serve_avro_vs_json_cpu"] for v in names]
            targets["consumer on Avro >= 0.7 x on JSON (msgs per CPU-second)"] = (
                ", ".join(f"{v}: {r:.2f}x" for v, r in zip(names, ratios, strict=True)),
                min(ratios) >= TARGETS["avro_vs_json"],
            )
            if "long" in k:
                ratio = k["long"]["vm_hwm_ratio_vs_n"]
                targets["memory flat (VmHWM 10xN / N <= 1.10)"] = (f"{ratio:.3f}x", ratio <= TARGETS["memory_growth"])
            else:
                g = first["serve_rss_growth_20_to_100pct"]
                targets["memory flat (RSS end / RSS at 20% <= 1.10; run --long for 10xN)"] = (
                    f"{g:.3f}x",
                    g <= TARGETS["memory_growth"],
                )
        else:
            targets["consumer >= 0.75 x floor"] = (res.get("serve_unavailable", "serve not measured"), None)
        if "long" in k:
            lg = k["long"]
            lines.append(
                f"\nLong run: {lg['messages']:,} events through serve at {fmt_rate(lg['rate'])} msgs/s, "
                f"VmHWM {lg['vm_hwm_kb'] / 1024:.0f} MiB = {lg['vm_hwm_ratio_vs_n']:.3f}x "
                f"the {res['events']:,}-event run."
            )
    b = res.get("batch")
    if b:
        med = b["median_s"]
        lines += [
            "",
            f"| batch: one {b['rows'] // 1000}k x {b['columns']} window vs a {b['rows'] // 1000}k reference "
            "| median ms | streamdrift is faster by | median CPU ms | faster by (CPU) "
            "| drifted columns (expected f00) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        cmed = b["median_cpu_s"]
        for name, label in (
            ("streamdrift", "streamdrift: Layout.histogram + evaluate_counts"),
            ("evidently", f"Evidently {b['evidently_version'] or '(not installed)'} DataDriftPreset report"),
            ("naive", "naive: np.quantile + np.histogram PSI + ks_2samp per column"),
        ):
            t, c = med.get(name), cmed.get(name)
            speed = "-" if name == "streamdrift" else fmt(t / med["streamdrift"] if t == t else None, ".1f") + "x"
            cspeed = "-" if name == "streamdrift" else fmt(c / cmed["streamdrift"] if c == c else None, ".1f") + "x"
            ok = b["verdicts_correct"].get(name)
            verdict = "all repeats correct" if ok else "n/a" if ok is None else f"WRONG: {b['drifted_columns'][name]}"
            lines.append(
                f"| {label} | {fmt(t * 1000 if t == t else None, '.1f')} | {speed} | "
                f"{fmt(c * 1000 if c == c else None, '.1f')} | {cspeed} | {verdict} |"
            )
        lines.append(f"\nReference build (once, 100k x 20): {b['reference_build_s'] * 1000:.0f} ms.")
        sp, spc = b["speedup_vs_evidently"], b["speedup_vs_evidently_cpu"]
        targets["batch statistics >= 50x Evidently"] = (
            f"{sp:.1f}x wall, {spc:.1f}x CPU" if sp else (b["evidently_error"] or "n/a"),
            None if sp is None else min(sp, spc) >= TARGETS["batch_vs_evidently"],
        )
    s = res.get("spark")
    if s and "seconds" in s:
        n, n0 = s["events"], s["small_events"]
        lines += [
            "",
            "| Spark backfill (spark-submit jobs/backfill.py) | median s | rows/s (wall) | rows/s net of start-up |",
            "|---|---:|---:|---:|",
        ]
        net = {}
        for master, secs in s["seconds"].items():
            t = median(secs)
            work = t - s["startup_s"][master]
            net[master] = (n - n0) / work if work > 0 else float("nan")
            lines.append(f"| {master} | {t:.1f} | {fmt_rate(n / t)} | {fmt_rate(net[master])} |")
        s["net_rate"] = net
        scaling = net["local[2]"] / net["local[1]"]
        s["scaling"] = scaling if scaling == scaling else None
        lines.append(
            f"\nSpark start-up (median of the same command on {n0:,} events): "
            + ", ".join(f"{mm} {v:.1f} s" for mm, v in s["startup_s"].items())
            + "."
        )
        targets["Spark local[2] >= 1.6x local[1]"] = (
            f"{scaling:.2f}x (net)" if scaling == scaling else "n/a (runs no longer than start-up)",
            scaling >= TARGETS["spark_scaling"] if scaling == scaling else None,
        )
    elif s:
        targets["Spark local[2] >= 1.6x local[1]"] = (s.get("unavailable", "n/a"), None)
    ss = res.get("spark_streaming")
    if ss and "runs" in ss:
        lines += streaming_report(ss, targets)
    elif ss:
        targets["Structured Streaming local[2] >= 1.0x serve"] = (ss.get("unavailable", "n/a"), None)
    v = res.get("verdicts")
    if v:
        verdict_lines, verdict_targets = bench_verdicts.report(v)
        lines += verdict_lines
        targets.update(verdict_targets)
    lab = res.get("labels")
    if lab:
        label_lines, label_targets = bench_labels.report(lab)
        lines += label_lines
        targets.update(label_targets)
    c = res.get("checkpoint")
    if c:
        checkpoint_lines, checkpoint_targets = bench_checkpoint.report(c)
        lines += checkpoint_lines
        targets.update(checkpoint_targets)
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    for name, (val, ok) in targets.items():
        lines.append(f"| {name} | {val} | {'PASS' if ok else ('FAIL' if ok is False else 'not measured')} |")
    return "\n".join(lines), targets


def streaming_report(ss: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """The spark_streaming table and its two targets."""
    lines = [
        "",
        f"| {ss['events']:,} events, 2 partitions, 20 numeric features (the same topic for the three; "
        f"median of {len(ss['runs']['serve'])}) | events/s | events per CPU-second | start-up to first count (s) |",
        "|---|---:|---:|---:|",
    ]
    for mode, label in (
        ("serve", "`streamdrift serve` (one process)"),
        ("local[2]", f"Structured Streaming local[2] (micro-batches of {ss['max_offsets_per_trigger']:,})"),
        ("local[1]", "Structured Streaming local[1]"),
    ):
        runs = ss["runs"][mode]
        startup = median(r["startup_s"] for r in runs)
        lines.append(
            f"| {label} | {fmt_rate(ss[f'{mode}_rate'])} | {fmt_rate(ss[f'{mode}_cpu_rate'])} | {startup:.1f} |"
        )
    r1, r2 = ss["local2_vs_serve"], ss["local2_vs_local1"]
    targets["Structured Streaming local[2] >= 1.0x serve (events/s)"] = (
        f"{r1:.2f}x",
        r1 >= TARGETS["streaming_vs_serve"],
    )
    measured = f"{r2:.2f}x"
    ceiling = ss.get("local2_ceiling_vs_local1")
    if ceiling is not None:  # what this machine allows, the broker sharing its cores
        measured += (
            f" (this machine's ceiling: {ceiling:.2f}x, {ss['cores']} cores shared with the broker, which spends "
            f"{ss['broker_cpu_per_event'] * 1e6:.2f} us of CPU an event)"
        )
    targets["Structured Streaming local[2] >= 1.7x local[1]"] = (measured, r2 >= TARGETS["streaming_scaling"])
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="streamdrift performance benchmark")
    p.add_argument("--events", type=int, default=1_000_000, help="events per stream (default 1,000,000)")
    p.add_argument("--repeats", type=int, default=5, help="repetitions; medians are reported (default 5)")
    p.add_argument("--spark-repeats", type=int, help="repetitions of the Spark runs (default: --repeats)")
    p.add_argument(
        "--stream-events", type=int, default=4_000_000, help="spark_streaming: events on the topic (default 4,000,000)"
    )
    p.add_argument(
        "--stream-batch", type=int, help="spark_streaming: --max-offsets-per-trigger (default a quarter of the events)"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--variants", default="numeric,mixed", help="numeric (20 numeric) and/or mixed (+5 cat +segment)")
    p.add_argument("--long", action="store_true", help="also stream 10 x --events through serve (memory flatness)")
    p.add_argument("--quick", action="store_true", help="verdicts: a smoke run (few windows, about a minute)")
    p.add_argument("--no-peers", action="store_true", help="verdicts: without Evidently and NannyML")
    p.add_argument("--json", help="where to write the results (default /tmp/streamdrift-bench-<time>.json)")
    p.add_argument("--workdir", help="scratch directory (default: a temp dir)")
    p.add_argument(
        "--min-idle",
        type=float,
        default=0.8,
        help="before each repeat wait until the CPUs are this idle (0 = never wait; default 0.8)",
    )
    p.add_argument("--quiet-timeout", type=float, default=120.0, help="give up waiting for idle after this many s")
    p.add_argument(
        "--checkpoint-minutes", type=int, default=30, help="checkpoint: minutes of event time measured (default 30)"
    )
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {bad}; choose from {list(SECTIONS)}")
    if a.events < 10_000 or a.repeats < 1:
        p.error("--events must be >= 10000 and --repeats >= 1")
    chosen = {"numeric": NUMERIC_ONLY, "mixed": MIXED}
    variants = []
    for v in (x.strip() for x in a.variants.split(",") if x.strip()):
        if v not in chosen:
            p.error(f"--variants: unknown {v!r}; use numeric and/or mixed")
        variants.append(chosen[v])
    QUIET.update(min_idle=a.min_idle, timeout=a.quiet_timeout)
    # SIGTERM unwinds like Ctrl-C, so the broker and any serve subprocess are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    json_path = Path(a.json or f"/tmp/streamdrift-bench-{time.strftime('%Y%m%dT%H%M%S')}.json")

    from stream.demo.broker import EmbeddedBroker

    self_check()
    if "kafka" in sections:
        avro_self_check()
    res: dict[str, Any] = {
        "events": a.events,
        "repeats": a.repeats,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="streamdrift-bench-", dir=a.workdir) as tmp:
        workdir = Path(tmp)
        if "kafka" in sections:
            why = serve_available()
            if why:
                res["serve_unavailable"] = why
                log(f"note: {why}; measuring the ceiling and the floor only")
            with EmbeddedBroker() as broker:
                log(f"broker at {broker.bootstrap}")
                res["kafka"] = kafka_section(broker.bootstrap, workdir, variants, a.events, a.repeats, a.long, why)
        if "batch" in sections:
            log("batch statistics")
            res["batch"] = bench_batch.run(a.repeats, log, quiet)
        if "spark" in sections:
            why = bench_spark.available()
            if why:
                res["spark"] = {"unavailable": why}
                log(f"note: {why}")
            else:
                log("spark backfill")
                reference = bench_serve.build_reference(workdir, NUMERIC_ONLY)
                res["spark"] = bench_spark.run(workdir, reference, a.events, a.spark_repeats or a.repeats, log, quiet)
        if "spark_streaming" in sections:
            why = bench_spark.available() or serve_available()
            if why:
                res["spark_streaming"] = {"unavailable": why}
                log(f"note: {why}")
            else:
                log("spark streaming vs serve")
                batch = a.stream_batch or a.stream_events // 4
                with EmbeddedBroker() as broker:
                    assert broker.proc is not None
                    res["spark_streaming"] = bench_spark.run_streaming(
                        workdir,
                        broker.bootstrap,
                        a.stream_events,
                        a.spark_repeats or a.repeats,
                        batch,
                        log,
                        quiet,
                        broker_pid=broker.proc.pid,
                    )
        if "verdicts" in sections:
            log("verdicts (page rates on null streams, detection rates)")
            res["verdicts"] = bench_verdicts.run(a.quick, log, peers=not a.no_peers)
        if "labels" in sections:
            log("late labels (memory per waiting prediction, join throughput, detection)")
            res["labels"] = bench_labels.run(a.quick, log)
        if "checkpoint" in sections:
            log("checkpoint cost (state store)")
            quiet()
            res["checkpoint"] = bench_checkpoint.run(workdir, a.checkpoint_minutes, log)
    text, targets = report(res)
    res["targets"] = {k: {"measured": v, "pass": ok} for k, (v, ok) in targets.items()}
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    json_path.write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    print(text)
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
