"""``streamdrift serve`` on Avro, for the benchmark: the same process as the CLI's (``stream.cli.serve.serve``:
signals, garbage-collector settings, /metrics), with the schema registry in memory.

No registry server runs here, and confluent-kafka's in-memory registry lives in one process, so this
process registers the writer schema in its own (a fresh in-memory registry numbers the first schema
1, the id the benchmark's producer framed every message with; checked) and hands that client to the
consumer::

    python -m tests.benchmarks.bench_avro_serve --config serve.yaml --schema schema.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stream.cli.serve import serve
from stream.settings import ServeConfig
from tests.benchmarks.bench_common import AVRO_SCHEMA_ID


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--schema", required=True, help="the writer schema (JSON)")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    config = ServeConfig.load(a.config)
    assert config.schema_registry is not None and config.schema_registry.url.startswith("mock://")
    client = SchemaRegistryClient.new_client(config.schema_registry.client_conf())
    sid = client.register_schema(f"{config.kafka.topic}-value", Schema(Path(a.schema).read_text(), "AVRO"))
    if sid != AVRO_SCHEMA_ID:
        print(f"the in-memory registry gave the schema id {sid}, not {AVRO_SCHEMA_ID}", file=sys.stderr)
        return 2
    return serve(config, schema_registry=client)


if __name__ == "__main__":
    raise SystemExit(main())
