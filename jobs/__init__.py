"""streamdrift on Spark: Python Kafka data sources, the Structured Streaming job and the
spark-submit backfill, all evaluating with ``detectors``.

Modules (each runnable with spark-submit where it has a ``main``):

* :mod:`jobs.kafka_source` — ``streamdrift-kafka``, a pyspark 4 Python Data Source reading
  Kafka with confluent-kafka (batch offset ranges, streaming with offsets in Spark's checkpoint);
* :mod:`jobs.binned` — ``streamdrift-binned``, the same source decoding (with the consumer's
  decoder) and binning while it reads: count vectors per (pane, segment), dead letters, tallies;
* :mod:`jobs.streaming` — the Structured Streaming job (window state in Spark's state store,
  watermark, late counts, concept detection per partition, evaluation and metrics on the driver);
* :mod:`jobs.backfill` — window statistic records over Parquet/CSV/JSON-lines files or a
  Kafka offset range, equal to :func:`detectors.engine.run_local` on in-order data;
* :mod:`jobs.reference_build` — a reference profile from data that does not fit in memory;
* :mod:`jobs.common` — the monitor, executor-side decoding/binning for the backfill, record writers.

``jobs`` imports ``detectors`` and the library modules of ``stream`` (decoder, metrics,
settings, files, publish), never the service (consumer, cli, demo, report). Spark settings
(master, memory, JVM options) are spark-submit's; the streaming job sets only what its own
plan needs (one shuffle partition for its one state key). ``log4j2.properties`` (Spark's
warnings only, passed by ``streamdrift ... --engine spark``) and ``spark-k8s-entrypoint.sh``
(the command of executor pods on Kubernetes) ship with the jobs.
"""
