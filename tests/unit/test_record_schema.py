"""One record schema everywhere: the consumer's files, the Spark jobs and detectors agree."""

from __future__ import annotations

import pytest

import jobs.common
import stream.files
from detectors.evaluate import RECORD_FIELDS

pytestmark = pytest.mark.unit


def test_stream_and_jobs_write_the_same_parquet_schema() -> None:
    assert stream.files.RECORD_SCHEMA.equals(jobs.common.RECORD_SCHEMA)


def test_parquet_schema_has_exactly_the_record_fields_in_order() -> None:
    assert tuple(stream.files.RECORD_SCHEMA.names) == RECORD_FIELDS
