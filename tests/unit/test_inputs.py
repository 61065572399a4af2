"""Reading event files for the command line: shapes, CSV types, rejection summaries and their fixes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detectors.config import MonitorConfig
from stream.exceptions import InputFileError
from stream.files import EventRows, numbers_from_text, read_event_rows
from stream.inputs import (
    check_rejections,
    detect_features_field,
    hint,
    parse_share,
    percent,
    rejection_summary,
)
from stream.records import write_records, write_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "share"), [("1%", 0.01), ("0.05", 0.05), ("100%", 1.0), ("0", 0.0), (" 2.5% ", 0.025)]
)
def test_parse_share(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("bad", ["", "lots", "101%", "-1%", "1.5"])
def test_parse_share_rejects(bad: str) -> None:
    with pytest.raises(InputFileError, match="--max-rejected"):
        parse_share(bad)


def test_percent() -> None:
    assert [percent(x) for x in (0.01, 0.001, 0.25, 1.0)] == ["1%", "0.1%", "25%", "100%"]


def test_detect_features_field() -> None:
    flat = [{"t": 1, "x": 1.0}, {"t": 2, "x": 2.0}]
    nested = [{"t": 1, "features": {"x": 1.0}}, {"t": 2, "features": {"x": 2.0}}]
    assert detect_features_field(flat, "features", ["x"]) == (None, detect_features_field(flat, "features", ["x"])[1])
    assert "flat" in (detect_features_field(flat, "features", ["x"])[1] or "")
    assert detect_features_field(nested, "features", ["x"]) == ("features", None)
    assert detect_features_field(flat, None, ["x"]) == (None, None)
    field, note = detect_features_field(nested, None, ["x"])
    assert field == "features" and note and "events.features_field: features" in note
    # rows of both shapes keep the configured one (the others are rejected with a hint)
    assert detect_features_field([*flat, *nested], "features", ["x"]) == ("features", None)
    # nothing to go by: as configured
    assert detect_features_field(["not json"], "features", ["x"]) == ("features", None)
    assert detect_features_field([{"t": 1, "other": {"y": 1}}], None, ["x"]) == (None, None)


def test_numbers_from_text_only_in_text_columns_of_csv() -> None:
    rows = [{"x": "1.5", "z": "007", "c": "01"}, {"x": " -2e3 ", "z": "abc", "c": "x"}, {"x": "NA", "z": "", "c": ""}]
    d = EventRows([dict(r) for r in rows], "csv", frozenset({"x", "z", "c"}))
    numbers_from_text(d, ["x", "z"])
    assert [r["x"] for r in d.rows] == [1.5, -2000.0, None]
    assert [r["z"] for r in d.rows] == [7, "abc", None]
    assert [r["c"] for r in d.rows] == ["01", "x", ""]  # not asked for: text stays text
    j = EventRows([dict(r) for r in rows], "jsonl", frozenset({"x"}))
    numbers_from_text(j, ["x"])
    assert j.rows == rows  # JSON has types: "1.5" is a string there


def test_csv_categorical_columns_stay_text_and_parquet_dictionaries_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("zip,n,t\n01234,1,x\n00007,2,y\n")
    d = read_event_rows(tmp_path / "a.csv", text=["zip", "absent"])
    assert [r["zip"] for r in d.rows] == ["01234", "00007"] and [r["n"] for r in d.rows] == [1, 2]
    assert d.text_columns == {"zip", "t"}
    t = pa.table(
        {
            "c": pa.array(["a", "b"]).dictionary_encode(),
            "i": pa.array([1, 2]).dictionary_encode(),
            "f": pa.array([1.5, 2.5]).dictionary_encode(),
            "s": pa.array(["a", "b"]),
            "features": pa.array([{"d": "u", "x": 1.0}, {"d": "v", "x": 2.0}]),
        }
    )
    t = t.set_column(4, "features", pa.StructArray.from_arrays(
        [pa.array(["u", "v"]).dictionary_encode(), pa.array([1.0, 2.0])], names=["d", "x"]))  # fmt: skip
    pq.write_table(t, tmp_path / "a.parquet")
    p = read_event_rows(tmp_path / "a.parquet")
    # (an integer dictionary comes back as plain integers; floats are no categories, plain strings no dictionary)
    assert p.dictionary_columns == {"c", "d"}
    assert p.rows[0]["c"] == "a" and p.rows[0]["features"] == {"d": "u", "x": 1.0}


def _config(**events: object) -> MonitorConfig:
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "r.json", "events": events})


def test_rejection_summary_groups_by_code_and_field_with_a_fix() -> None:
    rows = [{"timestamp": "31/01/2026", "features": {"x": 1}}] * 3 + [{"timestamp": 1, "features": {"x": "abc"}}] * 2
    errors = [
        (0, "event time '31/01/2026' is not ISO-8601 or epoch"),
        (1, "event time '31/01/2026' is not ISO-8601 or epoch"),
        (2, "event time '31/01/2026' is not ISO-8601 or epoch"),
        (3, "feature 'x': expected a number, got str"),
        (4, "feature 'x': expected a number, got str"),
    ]
    lines = rejection_summary(errors, 10, rows, _config(), "events")
    assert lines[0].startswith("5 of 10 events rejected (bad_time 3, bad_type 2)")
    assert lines[1] == "  bad_time x3, first row 1: event time '31/01/2026' is not ISO-8601 or epoch"
    assert "day-first" in lines[2] and lines[2].startswith("    fix: ")
    assert lines[3] == "  bad_type x2, first row 4: feature 'x': expected a number, got str ('abc')"
    assert "declare it categorical" in lines[4]
    assert rejection_summary([], 10, rows, None) == []
    # many kinds: the top five, and how many more
    many = [(i, f"feature 'f{i}': expected a number, got str") for i in range(8)]
    lines = rejection_summary(many, 8, [{}] * 8, None)
    assert (
        len([x for x in lines if x.startswith("  bad_type")]) == 5
        and lines[-1] == "  ... and 3 more kinds of rejection"
    )


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        ("missing_field", "missing or non-object features field 'features'", "events.features_field: null"),
        ("missing_field", "missing event time field 'ts'", "events.time_field"),
        ("bad_time", "no Kafka timestamp and no events.time_field", "events.time_field"),
        ("implausible_time", "implausible event time 2024: below 1e8", "'ts' does not hold epoch times"),
        ("future_time", "future event time 1700000000000000000", "events.time_unit"),
        ("bad_type", "feature 'c': expected a string, got float", "categories coded as floats"),
        ("bad_type", "segment field 'country': expected a string, got list", "segment values"),
        ("bad_type", "field 'score': expected a number, got str", "prediction_field"),
        ("not_object", "event is not a JSON object (got str)", "one JSON object per line"),
    ],
)
def test_every_reason_has_a_fix(code: str, reason: str, fix: str) -> None:
    assert fix in hint(code, reason, _config(time_field="ts"))


def test_check_rejections() -> None:
    check_rejections([(0, "x")], 100, 0.01, "--max-rejected")  # 1% is not more than 1%
    with pytest.raises(InputFileError, match=r"2 of 100 rows rejected \(2\.0%\), more than --max-rejected 1%"):
        check_rejections([(0, "x"), (1, "y")], 100, 0.01, "--max-rejected")
    with pytest.raises(InputFileError, match="no rows"):
        check_rejections([], 0, 1.0, "--max-rejected")


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o007)
    try:
        write_records(tmp_path / "r.jsonl", [])
        write_text(tmp_path / "page.html", "<p>x</p>")
    finally:
        os.umask(old)
    for name in ("r.jsonl", "page.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o660, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "r.jsonl"]


def test_pandas_category_columns_are_categorical(tmp_path: Path) -> None:
    """pandas writes its metadata with the table; an integer category is read back as int64 but is named
    categorical there (this is the metadata ``pa.Table.from_pandas`` writes, by hand: pandas is no dependency)."""
    meta = {"columns": [{"name": "i", "pandas_type": "categorical"}, {"name": "n", "pandas_type": "int64"}]}
    t = pa.table({"i": [1, 2, 1], "n": [1, 2, 3]}).replace_schema_metadata({"pandas": json.dumps(meta)})
    pq.write_table(t, tmp_path / "p.parquet")
    assert read_event_rows(tmp_path / "p.parquet").dictionary_columns == {"i"}
    t = t.replace_schema_metadata({"pandas": "not json"})
    pq.write_table(t, tmp_path / "q.parquet")
    assert read_event_rows(tmp_path / "q.parquet").dictionary_columns == frozenset()


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
    out = capsys.readouterr().out
    assert "--max-rejected SHARE" in out and "(default 1%); the reasons" in " ".join(out.split())
