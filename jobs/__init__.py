"""streamdrift on Spark: a Python Kafka data source, the Structured Streaming job and the
spark-submit backfill, all evaluating with ``detectors``.

Modules (each runnable with spark-submit where it has a ``main``):

* :mod:`jobs.kafka_source` — ``streamdrift-kafka``, a pyspark 4 Python Data Source reading
  Kafka with confluent-kafka (batch offset ranges, streaming with offsets in Spark's checkpoint);
* :mod:`jobs.backfill` — window statistic records over Parquet/CSV/JSON-lines files or a
  Kafka offset range, equal to :func:`detectors.engine.run_local` on in-order data;
* :mod:`jobs.streaming` — the Structured Streaming job (watermark, event-time windows,
  evaluation in ``foreachBatch``, records/alerts to Kafka once per batch id);
* :mod:`jobs.reference_build` — a reference profile from data that does not fit in memory;
* :mod:`jobs.common` — the monitor, executor-side decoding/binning and record writers.

``jobs`` imports ``detectors`` (never ``stream``). Spark settings (master, memory, JVM options)
are spark-submit's; the jobs set none.
"""
