"""Window numbers and starts of time windows, calendar-aligned or fixed, for every engine.

A time window configuration is a *step* (the pane: the slide of a sliding window, the size of a
tumbling one) and an *origin*. Panes are numbered from the origin; pane ``p`` is
``[pane_start(p), pane_start(p + 1))``. All times are epoch milliseconds, UTC.

* Fixed steps (``5m``, ``1h``, ``1d``, ``2d``): ``pane = floor((t - origin) / step)``,
  ``pane_start(p) = origin + p * step``. With origin 0 they are aligned to the epoch, so ``1d``
  starts at 00:00 UTC (Unix time has no leap seconds).
* Weeks (``1w``, ``2w``): fixed steps of 7 days from Monday 1970-01-05 00:00 UTC (ISO weeks
  start on Monday); ``2w`` numbers pairs of weeks from that Monday.
* Months (``1mo``, ``3mo``): ``pane = floor(months since 1970-01 of (t - offset) / N)``,
  ``pane_start(p)`` the 1st of month ``p * N`` (+ offset): months of 28 to 31 days, so ``3mo``
  gives calendar quarters and ``12mo`` calendar years.

An ``offset`` moves every boundary later by that much (``1d`` with offset ``6h``: days from 06:00
UTC to 06:00 UTC); it is smaller than the shortest window it shifts.

Everything here is vectorised (numpy ``datetime64[M]`` for months); :func:`window_starts` is the
one mapping from event times to the start of their tumbling window that the local engine,
``serve`` and the Spark jobs share (through :class:`detectors.engine.WindowSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
#: Monday 1970-01-05 00:00 UTC, the first Monday after the epoch (a Thursday): where weeks start
MONDAY_MS = 4 * DAY_MS
#: the shortest month (February, 28 days): an offset of a month window must be below N of these
SHORTEST_MONTH_MS = 28 * DAY_MS
#: the longest month: a bound on how long a month window lasts
LONGEST_MONTH_MS = 31 * DAY_MS

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Steps:
    """How panes are numbered: ``months`` > 0 for calendar months (then ``step_ms`` is 0), else a
    fixed ``step_ms``; ``origin_ms`` is the start of pane 0 (for months: the offset)."""

    step_ms: int
    months: int
    origin_ms: int

    def __post_init__(self) -> None:
        if (self.months > 0) == (self.step_ms > 0):
            raise ValueError(f"a step is either months or milliseconds, not {self.months} mo and {self.step_ms} ms")

    def pane_of(self, t_ms: Any) -> Any:
        """The number of the pane holding each time (an array for an array, an int for an int)."""
        if self.months:
            t = np.asarray(t_ms, dtype=np.int64) - self.origin_ms
            month = t.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
            out = np.floor_divide(month, self.months)
        else:
            t = np.asarray(t_ms, dtype=np.int64)
            out = np.floor_divide(t - self.origin_ms if self.origin_ms else t, self.step_ms)
        return int(out) if np.ndim(out) == 0 else out

    def pane_start(self, pane: Any) -> Any:
        """The start (epoch ms) of each pane number (an array for an array, an int for an int)."""
        p = np.asarray(pane, dtype=np.int64)
        if self.months:
            month = (p * self.months).astype("datetime64[M]")
            out = month.astype("datetime64[ms]").astype(np.int64) + self.origin_ms
        else:
            out = p * self.step_ms + self.origin_ms
        return int(out) if np.ndim(out) == 0 else out


def window_starts(t_ms: I64, steps: Steps) -> I64:
    """The start (epoch ms) of the tumbling window of ``steps`` that holds each event time."""
    starts: I64 = np.asarray(steps.pane_start(steps.pane_of(np.asarray(t_ms, dtype=np.int64))), dtype=np.int64)
    return starts
