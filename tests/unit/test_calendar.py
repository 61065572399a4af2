"""Calendar windows (``1d``, ``1w``, ``1mo``, with an ``offset``): the shared mapping from event
times to window starts, checked against python's datetime/calendar, and the settings' errors."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from detectors.calendar import DAY_MS, window_starts
from detectors.config import MonitorConfig
from detectors.engine import WindowSpec
from detectors.exceptions import ConfigError

pytestmark = pytest.mark.unit

HOUR_MS = 3_600_000


def _cfg(**window: Any) -> MonitorConfig:
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "ref.json", "window": window})


def _ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _at(text: str) -> int:
    return _ms(datetime.fromisoformat(text).replace(tzinfo=UTC))


# -- the independent computation: python datetime, one event at a time --------------------------------
def _expected_start(t_ms: int, unit: str, n: int, offset_ms: int) -> int:
    dt = _utc(t_ms - offset_ms)
    if unit == "d":
        day = dt.date()
        k = (day - date(1970, 1, 1)).days // n * n
        start = datetime.combine(date(1970, 1, 1) + timedelta(days=k), datetime.min.time(), UTC)
    elif unit == "w":
        monday = dt.date() - timedelta(days=dt.weekday())  # ISO: weeks start on Monday
        k = (monday - date(1970, 1, 5)).days // 7 // n * n
        start = datetime.combine(date(1970, 1, 5) + timedelta(weeks=k), datetime.min.time(), UTC)
    else:
        months = (dt.year - 1970) * 12 + dt.month - 1
        first = months // n * n
        start = datetime(1970 + first // 12, first % 12 + 1, 1, tzinfo=UTC)
    return _ms(start) + offset_ms


def _spec(size: str, offset: str = "0s") -> WindowSpec:
    return WindowSpec.from_config(_cfg(kind="tumbling", size=size, offset=offset))


SIZES = [("1d", "d", 1), ("3d", "d", 3), ("1w", "w", 1), ("2w", "w", 2), ("1mo", "mo", 1), ("3mo", "mo", 3)]
OFFSETS = {"d": ["0s", "6h"], "w": ["0s", "6h", "2d"], "mo": ["0s", "6h", "10d"]}


@pytest.mark.parametrize(("size", "unit", "n"), SIZES)
def test_window_starts_match_python_datetime(size: str, unit: str, n: int) -> None:
    rng = np.random.default_rng(18)
    # 1900 .. 2100 at random, plus every hour around month ends of a leap and a common year
    t = rng.integers(_at("1900-01-01T00:00:00"), _at("2100-01-01T00:00:00"), size=3000, dtype=np.int64)
    edges = [_at(d) for d in ("2028-02-29T00:00:00", "2028-03-01T00:00:00", "2027-03-01T00:00:00", "1970-01-01")]
    around = np.array(
        [e + h * HOUR_MS + ms for e in edges for h in range(-30, 30) for ms in (-1, 0, 1)], dtype=np.int64
    )
    t = np.concatenate([t, around])
    for offset in OFFSETS[unit]:
        spec = _spec(size, offset)
        got = window_starts(t, spec.steps)
        off = spec.origin_ms - (4 * DAY_MS if unit == "w" else 0)
        want = np.array([_expected_start(int(x), unit, n, off) for x in t], dtype=np.int64)
        np.testing.assert_array_equal(got, want)
        # each event lies in its window, and the window's end is the next window's start
        panes = spec.pane_of(t)
        assert (spec.pane_start(panes) <= t).all() and (t < spec.window_end(panes)).all()
        np.testing.assert_array_equal(spec.pane_start(panes + 1), spec.window_end(panes))


def test_month_windows_by_hand_leap_years_and_offsets() -> None:
    m = _spec("1mo")
    feb = m.pane_of(_at("2028-02-29T12:00:00"))
    assert m.window_bounds(feb) == (_at("2028-02-01"), _at("2028-03-01"))
    days = (m.window_bounds(feb)[1] - m.window_bounds(feb)[0]) // DAY_MS
    assert days == calendar.monthrange(2028, 2)[1] == 29
    assert m.window_bounds(m.pane_of(_at("2027-02-10")))[1] == _at("2027-03-01")  # 28 days
    assert m.pane_of(_at("2027-12-31T23:59:59.999")) + 1 == m.pane_of(_at("2028-01-01"))
    assert m.pane_of(_at("1970-01-01")) == 0 and m.pane_of(_at("1969-12-31T23:59:59.999")) == -1
    # offset 6h: months from the 1st 06:00 UTC; 2028-03-01 05:59 still belongs to February
    o = _spec("1mo", "6h")
    p = o.pane_of(_at("2028-03-01T05:59:59.999"))
    assert o.window_bounds(p) == (_at("2028-02-01T06:00:00"), _at("2028-03-01T06:00:00"))
    assert o.pane_of(_at("2028-03-01T06:00:00")) == p + 1
    # quarters
    q = _spec("3mo")
    assert q.window_bounds(q.pane_of(_at("2028-05-17")))[0] == _at("2028-04-01")


def test_weeks_start_on_monday_and_days_at_midnight() -> None:
    w = _spec("1w")
    # 2026-11-30 is a Monday
    assert w.window_bounds(w.pane_of(_at("2026-11-30T00:00:00"))) == (_at("2026-11-30"), _at("2026-12-07"))
    assert w.window_bounds(w.pane_of(_at("2026-11-29T23:59:59.999")))[0] == _at("2026-11-23")
    assert w.window_bounds(w.pane_of(_at("1970-01-01")))[0] == _at("1969-12-29")  # before the epoch too
    d = _spec("1d", "6h")
    assert d.window_bounds(d.pane_of(_at("2026-11-30T05:00:00"))) == (_at("2026-11-29T06:00"), _at("2026-11-30T06:00"))


def test_sliding_windows_in_weeks_and_days_with_an_offset() -> None:
    spec = WindowSpec.from_config(_cfg(kind="sliding", size="1w", slide="1d", offset="6h"))
    t = _at("2026-11-30T07:00:00")
    firsts = spec.windows_of_panes([spec.pane_of(t)])
    bounds = [spec.window_bounds(f) for f in firsts]
    assert len(bounds) == 7 and all(s <= t < e and e - s == 7 * DAY_MS for s, e in bounds)
    assert {(s - 6 * HOUR_MS) % DAY_MS for s, _e in bounds} == {0}


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ({"kind": "sliding", "size": "1mo", "slide": "1d"}, r"window\.size.*tumbling windows only"),
        ({"kind": "sliding", "size": "2w", "slide": "1mo"}, r"window\.slide"),
        ({"kind": "tumbling", "size": "1mo", "offset": "28d"}, r"window\.offset.*28 days"),
        ({"kind": "tumbling", "size": "1d", "offset": "1d"}, r"window\.offset.*shorter than the window"),
        ({"kind": "tumbling", "size": "1w", "offset": "7d"}, r"window\.offset"),
        ({"kind": "sliding", "size": "1h", "slide": "10m", "offset": "10m"}, r"window\.offset.*slide"),
        ({"kind": "tumbling", "size": "1d", "offset": "6"}, r"window\.offset.*'6s'"),
        ({"kind": "tumbling", "size": "1d", "offset": "6x"}, r"window\.offset"),
        ({"kind": "count", "size": 100, "offset": "6h"}, r"window\.offset.*count windows"),
        ({"kind": "tumbling", "size": "0mo"}, r"window\.size"),
        ({"kind": "tumbling", "size": "1 month"}, r"window\.size: '1 month' is not a duration.*'1mo' \(from the 1st\)"),
    ],
)
def test_bad_calendar_settings_fail_at_load_naming_the_parameter(window: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**window)


def test_good_calendar_settings() -> None:
    assert _cfg(kind="tumbling", size="1mo", offset="27d").window.months == 1
    w = _cfg(kind="tumbling", size="2w", offset="6d").window
    assert (w.months, w.size_ms, w.origin_ms) == (0, 14 * DAY_MS, 10 * DAY_MS)
    assert _cfg(kind="tumbling", size="1mo").window.size_ms == 31 * DAY_MS  # the longest (for the metric)
