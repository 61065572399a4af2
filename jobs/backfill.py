"""The Spark backfill: window statistic records over files or a Kafka offset range.

Run it as a user would::

    spark-submit --master local[2] jobs/backfill.py --config monitor.yaml --input events.jsonl --output stats.jsonl
    spark-submit jobs/backfill.py --config monitor.yaml --input kafka \\
        --starting-offsets earliest --ending-offsets '{"events": {"0": 5000}}' --output stats.parquet
    streamdrift backfill --engine spark --config monitor.yaml --input events.parquet --output stats.jsonl
    spark-submit jobs/backfill.py --config monitor.yaml --input predictions.jsonl --labels labels.jsonl \
        --output stats.jsonl    # + each window's performance from late labels (jobs/labels.py)

Spark settings (master, memory, ``spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods``)
belong to spark-submit; the job sets none of them. The driver and the executors' Python
(``PYSPARK_PYTHON``) need ``streamdrift`` installed (``pip install 'streamdrift[spark]'``).

How it computes (the same records as :func:`detectors.engine.run_local`)
    1. executors decode each partition in chunks with :func:`detectors.events.decode_events`
       and bin every valid event with the reference's edges; per partition they emit one
       count vector per (raw segment, pane), the first appearance ``(event time, input
       position)`` of every segment, the rejected-event count and the concept stream;
    2. the driver caps segments: the first ``segments.max_segments`` by first appearance keep
       their own key, the others share ``__other__``. First appearance is the smallest
       ``(event time, input position)``; on in-order data this is the input order the local
       engine uses, so the segments agree exactly;
    3. Spark sums the count vectors per (segment, pane) and the driver collects them (never
       raw events); a window is the sum of its panes; the driver evaluates the segments of a
       window together with :func:`detectors.evaluate.evaluate_window` (as the local engine);
    4. the concept detector runs on the driver over the one-dimensional concept stream,
       sorted by (event time, input position) — the order of the local engine.

Input position: a file's partition index then row number (for one file, the file order);
for Kafka, (partition, offset). Inputs: ``.parquet``/``.pq``, ``.csv`` (header, types
inferred by Spark), ``.jsonl``/``.ndjson``/``.json`` (JSON lines; a line that is not JSON is
rejected, not fatal), a directory of one of them (``--format``), or ``kafka`` (the config's
``kafka.bootstrap_servers`` and ``kafka.topic``).

Count windows: every segment's events are sorted by input position in Spark (hash
partitions by segment, sorted within) and cut into full groups of N; the driver collects one
count vector per group. ``window.keep_raw`` (exact KS on raw values) is refused: it would
collect raw values; use ``--engine local`` for it.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detectors.engine import ConceptTracker, record_sort_key
from detectors.evaluate import evaluate_window, require_calibration, window_records
from detectors.exceptions import StreamdriftError
from detectors.sequential import make_detector
from jobs.common import (
    JobError,
    Monitor,
    Tally,
    concept_stream,
    decoded_chunks,
    parse_json_value,
    route_segments,
    segment_dict,
)
from jobs.kafka_source import KafkaSourceError
from stream.records import write_records

SEQ_SHIFT = 40  # input position = (partition << 40) + row
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


# -- input -----------------------------------------------------------------------------------------
Items = Iterator[tuple[Any, int, Any]]  # (event object, input position, kafka timestamp ms or None)
Summarize = Callable[[Monitor, Items], Iterator[tuple[Any, ...]]]


def partials(
    spark: Any,
    monitor: Monitor,
    bc: Any,
    source: str,
    fmt: str | None = None,
    kafka: Mapping[str, str] | None = None,
    summarize: Summarize | None = None,
) -> Any:
    """An RDD of every input partition's tagged partial results (``summarize``: by default
    :func:`partition_summary`; the late labels' job passes its own, :mod:`jobs.labels`).

    Executors receive the input as Arrow record batches (``mapInArrow``, :func:`_arrow_partials`),
    not as pickled ``Row`` objects (``df.rdd``): pickling every row on the JVM side cost about a
    fifth of the CPU the Python decoding did, and it ran beside the Python workers, so two cores
    could not speed the job up as much as they should. A JSON-lines file is read by the
    executors themselves (:func:`_file_lines`).
    """
    fn = summarize or partition_summary
    if source == "kafka":
        from pyspark.sql import functions as F

        from jobs.kafka_source import read_kafka

        df = read_kafka(
            spark, kafka_options(monitor, kafka or {}), fmt=(kafka or {}).get("format", "streamdrift-kafka")
        )
        df = df.select("value", "partition", "offset", F.unix_millis("timestamp").alias("ts"))

        def records(_pid: int, batches: Iterator[Any]) -> Items:
            for b in batches:
                cols = [b.column(j).to_pylist() for j in range(4)]
                for value, part, offset, ts in zip(*cols, strict=True):
                    yield (parse_json_value(value), (part << SEQ_SHIFT) + offset, ts)

        return _arrow_partials(df, records, bc, fn)
    p = Path(source)
    if not p.exists():
        raise JobError(f"--input {source}: no such file or directory")
    kind = fmt or FORMATS.get(p.suffix.lower())
    if kind is None:
        raise JobError(f"--input {source}: unknown file type {p.suffix!r}; use .parquet, .csv or .jsonl, or --format")
    if kind == "jsonl":
        if p.is_file():
            return _file_lines(spark, p).mapPartitions(lambda it: fn(bc.value, it))

        def lines(pid: int, batches: Iterator[Any]) -> Items:
            i = 0
            for b in batches:
                for value in b.column(0).to_pylist():
                    if value.strip():
                        yield (parse_json_value(value), (pid << SEQ_SHIFT) + i, None)
                    i += 1

        return _arrow_partials(spark.read.text(str(p)), lines, bc, fn)
    if kind == "parquet":
        df = spark.read.parquet(str(p))
    elif kind == "csv":
        df = spark.read.option("header", True).option("inferSchema", True).csv(str(p))
    else:
        raise JobError(f"--format {kind!r}: use parquet, csv or jsonl")

    def rows(pid: int, batches: Iterator[Any]) -> Items:
        i = 0
        for b in batches:
            for row in b.to_pylist():
                yield (row, (pid << SEQ_SHIFT) + i, None)
                i += 1

    return _arrow_partials(df, rows, bc, fn)


def _size_bytes(text: str) -> int:
    """A Spark byte size (``134217728``, ``128m``, ``16MB``...) in bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", text.lower())
    if m is None:
        raise JobError(f"spark.sql.files.maxPartitionBytes={text!r} is not a byte size")
    return int(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b")


def line_splits(size: int, max_bytes: int, parallelism: int, open_cost: int = 4 << 20) -> list[tuple[int, int]]:
    """Byte ranges of one file, sized as Spark sizes file splits (maxPartitionBytes, at least one per core).

    >>> line_splits(10, 4, 1, open_cost=1)
    [(0, 4), (4, 8), (8, 10)]
    """
    per_core = -(-size // max(1, parallelism))
    step = max(1, min(max_bytes, max(open_cost, per_core)))
    return [(a, min(size, a + step)) for a in range(0, size, step)] or [(0, 0)]


def read_lines(path: str, start: int, end: int) -> Iterator[bytes]:
    """The lines of ``path`` that begin at a byte offset in ``[start, end)``, without their line end."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line holding byte start - 1 belongs to the split before
        pos = f.tell()
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            yield line.rstrip(b"\r\n")


def _file_lines(spark: Any, path: Path) -> Any:
    """An RDD of a JSON-lines file's events, each executor reading its byte range of the file itself.

    Spark's text source would read the lines in the JVM and hand them to Python: on a
    2-core machine that JVM work, beside the Python decoding, kept local[2] at 1.5x local[1].
    The file must be readable at the same path by the executors, as ``--input`` already
    requires of every file input.
    """
    max_bytes = _size_bytes(spark.conf.get("spark.sql.files.maxPartitionBytes", "128m"))
    splits = line_splits(path.stat().st_size, max_bytes, spark.sparkContext.defaultParallelism)
    name = str(path.resolve())

    def lines(pid: int, it: Iterator[int]) -> Items:
        for k in it:
            start, end = splits[k]
            for i, line in enumerate(read_lines(name, start, end)):
                if line.strip():
                    yield (parse_json_value(line), (pid << SEQ_SHIFT) + i, None)

    return spark.sparkContext.parallelize(range(len(splits)), len(splits)).mapPartitionsWithIndex(lines)


def _arrow_partials(
    df: Any, to_items: Callable[[int, Iterator[Any]], Items], bc: Any, summarize: Summarize | None = None
) -> Any:
    """Tagged partial results of a DataFrame's partitions, computed on its Arrow batches."""

    fn = summarize or partition_summary

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        out = list(fn(bc.value, to_items(pid, batches)))
        yield pa.RecordBatch.from_pydict({"part": [pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)]})

    return df.mapInArrow(run, "part binary").rdd.flatMap(lambda r: pickle.loads(r.part))


def kafka_options(monitor: Monitor, given: Mapping[str, str]) -> dict[str, str]:
    """Data source options from the config's ``kafka`` section and the offset arguments."""
    k = monitor.section("kafka")
    if not k.get("bootstrap_servers") or not k.get("topic"):
        raise JobError("--input kafka needs kafka.bootstrap_servers and kafka.topic in the config")
    opts = {"kafka.bootstrap.servers": str(k["bootstrap_servers"]), "subscribe": str(k["topic"])}
    for ours, theirs in (
        ("security_protocol", "security.protocol"),
        ("sasl_mechanism", "sasl.mechanism"),
        ("sasl_username", "sasl.username"),
        ("sasl_password", "sasl.password"),
        ("ssl_ca_location", "ssl.ca.location"),
        ("ssl_certificate_location", "ssl.certificate.location"),
        ("ssl_key_location", "ssl.key.location"),
    ):
        if k.get(ours):
            opts[f"kafka.{theirs}"] = str(k[ours])
    for key, value in (k.get("extra") or {}).items():
        opts[f"kafka.{key}"] = str(value)
    opts["startingOffsets"] = given.get("startingOffsets", "earliest")
    opts["endingOffsets"] = given.get("endingOffsets", "latest")
    return opts


# -- executors -------------------------------------------------------------------------------------
def partition_summary(monitor: Monitor, items: Iterator[tuple[Any, int, Any]]) -> Iterator[tuple[Any, ...]]:
    """Tagged partial results of one partition (see the module docstring, step 1)."""
    spec = monitor.spec
    size = monitor.layout.size
    segmented = bool(monitor.segment_fields)
    counts: dict[tuple[Any, int], np.ndarray] = {}
    first: dict[tuple[str, ...], tuple[int, int]] = {}
    tally = Tally()
    for d in decoded_chunks(monitor, items, tally):
        n = len(d.cols)
        t = d.cols.time_ms
        groups: list[tuple[list[Any], np.ndarray]] = []
        if monitor.overall:
            groups.append(([None], np.zeros(n, dtype=np.int64)))
        if segmented:
            keys: dict[tuple[str, ...], int] = {}
            sid = np.fromiter((keys.setdefault(k, len(keys)) for k in d.cols.segments), dtype=np.int64, count=n)
            key_list = list(keys)
            order = np.lexsort((d.seq, t))
            _, pos = np.unique(sid[order], return_index=True)
            for j in pos:
                i = order[j]
                k = key_list[sid[i]]
                cand = (int(t[i]), int(d.seq[i]))
                if k not in first or cand < first[k]:
                    first[k] = cand
            groups.append((key_list, sid))
        if spec.kind == "count":
            # count windows need each segment's events in input order: emit (segment, position, time, slots)
            for key_list, gid in groups:
                for i in range(n):
                    yield ("p", key_list[gid[i]], int(d.seq[i]), int(t[i]), d.slots[i].tolist())
            groups = []
        for key_list, gid in groups:
            pairs = np.stack([gid, spec.pane_of(t)], axis=1)
            uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            idx = d.slots + (inv * size)[:, None]
            hist = np.bincount(idx.reshape(-1), minlength=len(uniq) * size).reshape(len(uniq), size)
            for g, (k, pane) in enumerate(uniq.tolist()):
                ck = (key_list[k], pane)
                if ck in counts:
                    counts[ck] += hist[g]
                else:
                    counts[ck] = hist[g].astype(np.int64)
        cv = concept_stream(monitor, d)
        if cv is not None:
            keep = ~np.isnan(cv)
            yield ("v", t[keep], d.seq[keep], cv[keep])
    for (k, pane), c in counts.items():
        yield ("c", k, pane, c)
    for k, fs in first.items():
        yield ("s", k, fs)
    yield ("e", tally.valid, tally.rejected, tally.first_error)


# -- driver ----------------------------------------------------------------------------------------
def run_backfill(
    spark: Any,
    monitor: Monitor,
    source: str,
    *,
    fmt: str | None = None,
    kafka: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every window statistic record (then the concept records) and a summary of the input."""
    config = monitor.config
    require_calibration(monitor.layout)  # (no verdict without it: fail before reading anything)
    if config.window.keep_raw:
        raise JobError("window.keep_raw: the Spark backfill keeps no raw values (exact KS); use --engine local")
    sc = spark.sparkContext
    bc = sc.broadcast(monitor)
    tagged = partials(spark, monitor, bc, source, fmt, kafka)
    tagged = tagged.persist()
    segmented = bool(monitor.segment_fields)
    pane_kind = monitor.spec.kind != "count"
    try:
        # one job for what needs no segment route: first appearances, input counts, the concept
        # stream and, without segment fields, the pane counts (each Spark job over the cached
        # partitions costs ~1 s of task overhead that two cores barely shorten)
        small = tagged.mapPartitionsWithIndex(lambda pid, it: _keyed(pid, it, pane_kind and not segmented))
        got = small.reduceByKey(_merge).collect()
        first = {k[1]: v for k, v in got if k[0] == "s"}
        stats = [v for k, v in got if k[0] == "e"]
        concept = [v for k, v in got if k[0] == "v"]
        route = route_segments(monitor, first)
        if not pane_kind:
            windows = _count_windows(tagged, sc.broadcast(route), monitor.spec.count, monitor.layout.size)
        elif not segmented:
            windows = _pane_windows(monitor, [((None, k[1]), v) for k, v in got if k[0] == "c"])
        else:
            bc_route = sc.broadcast(route)
            summed = (
                tagged.filter(lambda x: x[0] == "c")
                .map(lambda x: ((None if x[1] is None else bc_route.value[x[1]], x[2]), x[3]))
                .reduceByKey(np.add)
                .collect()
            )
            windows = _pane_windows(monitor, summed)
    finally:
        tagged.unpersist()
    by_window: dict[tuple[int, int, int], list[tuple[Any, np.ndarray]]] = {}
    for seg, start, end, index, counts in windows:
        by_window.setdefault((start, end, index), []).append((seg, counts))
    records: list[dict[str, Any]] = []
    for (start, end, index), members in by_window.items():
        verdicts = evaluate_window(monitor.layout, [(c, None) for _s, c in members], config.statistics)
        for (seg, _c), results in zip(members, verdicts, strict=True):
            records.extend(
                window_records(
                    results,
                    monitor=config.monitor,
                    segment={} if seg is None else segment_dict(monitor, seg),
                    window_start_ms=start,
                    window_end_ms=end,
                    window_index=index,
                    fingerprint=monitor.reference.fingerprint,
                )
            )
    records.sort(key=record_sort_key)
    records.extend(concept_records(monitor, concept))
    errors = [e for _, _, e in stats if e is not None]
    summary = {
        "valid": sum(s[0] for s in stats),
        "rejected": sum(s[1] for s in stats),
        "first_error": min(errors) if errors else None,
        "segments": len(first),
        "overflowed_segments": sum(1 for k, v in route.items() if k != v),
    }
    return records, summary


def _keyed(pid: int, items: Iterator[tuple[Any, ...]], with_counts: bool) -> Iterator[tuple[Any, Any]]:
    """Keyed partial results for one ``reduceByKey(_merge)``: first appearances merge by min,
    pane counts by addition; input counts and concept parts get keys of their own."""
    for j, x in enumerate(items):
        tag = x[0]
        if tag == "s":
            yield ("s", x[1]), x[2]
        elif tag in ("e", "v"):
            yield (tag, pid, j), x[1:]
        elif tag == "c" and with_counts:
            yield ("c", x[2]), x[3]  # no segment fields: every count vector is the overall's


def _merge(a: Any, b: Any) -> Any:
    return a + b if isinstance(a, np.ndarray) else min(a, b)


def _pane_windows(monitor: Monitor, summed: list[Any]) -> list[tuple[Any, int, int, int, np.ndarray]]:
    """Time windows (segment, start, end, window index: the first pane, counts): each window of a
    segment is the sum of its panes."""
    panes: dict[Any, dict[int, np.ndarray]] = {}
    for (seg, pane), c in summed:
        panes.setdefault(seg, {})[int(pane)] = c
    spec = monitor.spec
    k = spec.panes_per_window
    out = []
    for seg, by_pane in panes.items():
        for first_pane in spec.windows_of_panes(sorted(by_pane)):
            members = [by_pane[p] for p in range(first_pane, first_pane + k) if p in by_pane]
            start, end = spec.window_bounds(first_pane)
            out.append((seg, start, end, first_pane, np.sum(members, axis=0)))
    return out


def _count_windows(tagged: Any, bc_route: Any, count: int, size: int) -> list[tuple[Any, int, int, int, np.ndarray]]:
    """Count windows: every segment's events sorted by input position, cut into full groups of ``count``
    (segment, start, end, window index: the group's ordinal in its segment, counts).

    Spark sorts (segment, position) within hash partitions of the segment, so one pass over a
    partition sees each segment's events in order and keeps one count vector at a time.
    """
    import json
    import zlib

    def seg_id(key: Any) -> str:
        return "" if key is None else json.dumps(list(bc_route.value[key]))

    events = tagged.filter(lambda x: x[0] == "p").map(lambda x: ((seg_id(x[1]), x[2]), (x[3], x[4])))
    n_parts = max(1, events.getNumPartitions())
    # crc32, not hash(): str hashes differ between Python workers unless PYTHONHASHSEED is fixed
    ordered = events.repartitionAndSortWithinPartitions(n_parts, partitionFunc=lambda k: zlib.crc32(k[0].encode()))

    def groups(it: Iterator[Any]) -> Iterator[tuple[Any, int, int, int, np.ndarray]]:
        seg, n, k, lo, hi, acc = None, 0, 0, 0, 0, np.zeros(size, dtype=np.int64)
        for (s, _pos), (t, slots) in it:
            if s != seg:
                seg, n, k = s, 0, 0
            if n == 0:
                acc = np.zeros(size, dtype=np.int64)
                lo = hi = t
            acc[slots] += 1
            lo, hi, n = min(lo, t), max(hi, t), n + 1
            if n == count:
                yield (None if s == "" else tuple(json.loads(s)), lo, hi + 1, k, acc)
                n, k = 0, k + 1

    return ordered.mapPartitions(groups).collect()


def concept_records(monitor: Monitor, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """The sequential detector over the concept stream in (event time, input position) order."""
    config = monitor.config
    if not config.concept_active or not parts:
        return []
    t = np.concatenate([p[0] for p in parts])
    seq = np.concatenate([p[1] for p in parts])
    x = np.concatenate([p[2] for p in parts])
    order = np.lexsort((seq, t))
    det = make_detector(config.concept.detector, config.concept.params)
    tracker = ConceptTracker(config, monitor.reference.fingerprint)
    out = []
    for i in order:
        rec = tracker.update(det, float(x[i]), int(t[i]))
        if rec is not None:
            out.append(rec)
    return out


# -- command line ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="backfill.py", description="streamdrift backfill on Spark (run with spark-submit)")
    p.add_argument("--config", required=True, help="monitor YAML")
    p.add_argument("--input", required=True, help="events file or directory (.parquet, .csv, .jsonl), or 'kafka'")
    p.add_argument("--output", required=True, help="window statistic records: .jsonl or .parquet")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], help="input format when the extension does not say")
    p.add_argument("--starting-offsets", default="earliest", help="--input kafka: earliest, latest or JSON offsets")
    p.add_argument("--ending-offsets", default="latest", help="--input kafka: latest or JSON offsets (exclusive)")
    p.add_argument(
        "--kafka-format", default="streamdrift-kafka", help="streamdrift-kafka (default) or kafka (JVM connector)"
    )
    p.add_argument(
        "--labels",
        metavar="PATH",
        help="label events (.parquet, .csv, .jsonl; the config's labels section) joined to --input's predictions by "
        "id: adds each window's performance to the records (jobs/labels.py)",
    )
    p.add_argument("--labels-format", choices=["parquet", "csv", "jsonl"], help="--labels format if not by extension")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        monitor = Monitor.load(args.config)
        if Path(args.output).suffix.lower() not in (".jsonl", ".ndjson", ".json", ".parquet", ".pq"):
            raise JobError(f"--output {args.output}: records are written as .jsonl or .parquet")
    except StreamdriftError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    except JobError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    from pyspark.sql import SparkSession

    if args.labels and monitor.config.labels is None:
        print("backfill: error: --labels: the monitor config has no labels section", file=sys.stderr)
        return 2
    joins: dict[str, Any] = {}
    spark = SparkSession.builder.appName(f"streamdrift-backfill-{monitor.config.monitor}").getOrCreate()
    try:
        kafka = {
            "startingOffsets": args.starting_offsets,
            "endingOffsets": args.ending_offsets,
            "format": args.kafka_format,
        }
        records, summary = run_backfill(spark, monitor, args.input, fmt=args.format, kafka=kafka)
        if args.labels:
            from jobs.labels import run_labels

            perf, joins = run_labels(
                spark, monitor, args.input, args.labels, fmt=args.format, labels_format=args.labels_format, kafka=kafka
            )
            records.extend(perf)
        write_records(args.output, records)
    except (JobError, StreamdriftError, KafkaSourceError) as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    if summary["rejected"]:
        _pos, reason = summary["first_error"]
        print(f"{summary['rejected']} of {summary['valid'] + summary['rejected']} events rejected; first: {reason}")
    if summary["overflowed_segments"]:
        print(f"{summary['overflowed_segments']} segments beyond segments.max_segments share __other__")
    if args.labels:
        from jobs.labels import join_line

        print(join_line(joins))
    print(f"{len(records)} records from {summary['valid']} events -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
