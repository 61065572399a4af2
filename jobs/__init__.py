"""streamdrift on Spark: a Python Kafka data source, the Structured Streaming job and the
spark-submit backfill, all evaluating with ``detectors``."""
