"""The backfill's own JSON-lines splits: every line read exactly once, in file order, whatever the split size."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.backfill import line_splits, read_lines

pytestmark = pytest.mark.unit

line = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(line, max_size=30),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=30, max_size=30),
    final_newline=st.booleans(),
    step=st.integers(1, 64),
)
def test_splits_read_every_line_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], ends: list[bytes], final_newline: bool, step: int
) -> None:
    body = b"".join(x + e for x, e in zip(lines, ends, strict=False))
    if lines and not final_newline:
        body = body[: -len(ends[len(lines) - 1])]
    path = tmp_path_factory.mktemp("split") / "events.jsonl"
    path.write_bytes(body)
    splits = line_splits(len(body), step, 1, open_cost=1)
    assert splits[0][0] == 0 and splits[-1][1] == len(body)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(splits))  # contiguous, no overlap
    got = [x for a, b in splits for x in read_lines(str(path), a, b)]
    trailing_empty = bool(lines) and not final_newline and lines[-1] == b""  # no line at all
    assert got == (lines[:-1] if trailing_empty else lines)


def test_split_size_follows_spark_rules(tmp_path: Path) -> None:
    mib = 1 << 20
    # maxPartitionBytes caps a split; a small file is still cut into one split per core
    assert line_splits(300 * mib, 16 * mib, 2) == [
        (a, min(300 * mib, a + 16 * mib)) for a in range(0, 300 * mib, 16 * mib)
    ]
    assert len(line_splits(20 * mib, 128 * mib, 2)) == 2
    assert line_splits(1000, 128 * mib, 2) == [(0, 1000)]  # below the open cost: one split
    assert line_splits(0, 128 * mib, 2) == [(0, 0)]
