"""One record schema and one rule for undefined values, for every writer (files, Kafka, Spark jobs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from detectors.evaluate import RECORD_FIELDS
from stream.exceptions import InputFileError
from stream.records import RECORD_SCHEMA, encode, read_records, write_records

pytestmark = pytest.mark.unit


def _record(**over: object) -> dict[str, object]:
    rec: dict[str, object] = dict.fromkeys(RECORD_FIELDS)
    rec.update(monitor="m", segment={"region": "eu"}, feature="f", statistic="psi", value=0.0, n_window=10)
    rec.update(over)
    return rec


def test_parquet_schema_has_exactly_the_record_fields_in_order() -> None:
    assert tuple(RECORD_SCHEMA.names) == RECORD_FIELDS


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_undefined_in_every_format(tmp_path: Path, bad: float) -> None:
    rec = _record(p_value=bad, effect=0.25)
    # Kafka message value (serve and the Spark streaming job)
    assert json.loads(encode(rec))["p_value"] is None
    assert b"NaN" not in encode(rec) and b"Infinity" not in encode(rec)
    for name in ("r.jsonl", "r.parquet"):
        write_records(tmp_path / name, [rec])
        (back,) = read_records(tmp_path / name)
        assert back["p_value"] is None, name
        assert back["effect"] == 0.25 and back["value"] == 0.0, name  # 0 stays 0: undefined is not zero
        assert back["segment"] == {"region": "eu"}, name
    column = pq.read_table(tmp_path / "r.parquet").column("p_value")
    assert column.null_count == 1


def test_records_go_to_jsonl_or_parquet_only(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not CSV"):
        write_records(tmp_path / "o.csv", [_record()])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_record_field_of_an_unknown_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot be a set"):
        encode(_record(model_name={"x"}))


def test_encoded_records_read_back_equal_whichever_encoder_wrote_them() -> None:
    # plain records take msgspec, others json: both must give the same values back, exactly
    import random

    import numpy as np

    rnd = random.Random(7)
    floats = [rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-30, 30) for _ in range(200)] + [5e-324, -0.0, 1e308]
    for x in floats:
        rec = _record(value=x, effect=x / 3, segment={"pays": "Côte d'Ivoire", "z": "1"}, window_index=2**62)
        back = json.loads(encode(rec))
        assert back == rec and math.copysign(1.0, back["value"]) == math.copysign(1.0, x)
        as_numpy = json.loads(encode(dict(rec, value=np.float64(x))))  # a numpy float: the json path
        assert as_numpy == rec
    assert encode(_record(value=1.5)).startswith(b'{"monitor":"m","segment":{"region":"eu"},"feature":"f"')
    with pytest.raises(TypeError, match="cannot be a set"):
        encode(_record(segment={"region": {"eu"}}))
    with pytest.raises(TypeError, match="cannot be a int64"):
        encode(_record(n_window=np.int64(3)))
