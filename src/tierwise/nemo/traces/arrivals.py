"""Arrival times (integer ns) of a trace's requests, for a replay driven by the trace's timestamps.

`TraceClock` turns the requests' `time` column (whole seconds, see `request.REQUEST_DTYPE`) into arrivals, one slice
of the trace after another, in trace order:
- times are taken relative to the first request's second; a timestamp smaller than an earlier one (out of order)
  is raised to it, so arrivals never go back;
- the n requests sharing a second are spread evenly over it: the k-th at t + k/n seconds;
- a second cut by the end of a slice (the replay feeds the trace in slices of at most 65,536 requests) cannot be
  counted in advance: its requests in that slice are spread at the rate of the last complete second (if they are
  more than that second had, over the second as if one more were to come), and the rest of the second, in the
  next slice, evenly over the time left. So at a steady rate the spacing is exact wherever the slices end; the
  trace's very first second, which has no second before it, is the exception;
- a trace without timestamps (every `time` 0) is refused with a TierwiseError that suggests a fixed rate: when
  the trace (or a chunk of it) ends with every time so far 0, or once more than `ZERO_LIMIT` requests are
  stamped 0 (no cache trace serves a million requests in one second). A timed trace that starts at
  second 0 is fine.
"""

from __future__ import annotations

import numpy as np

from tierwise.common.errors import TierwiseError

NS = 1_000_000_000
ZERO_LIMIT = 1_000_000  # more requests than this at time 0, and no other time seen: the trace has no timestamps

NO_TIMESTAMPS = ("the trace has no timestamps (every request's time is 0): replay it at a fixed arrival rate "
                 "instead (--rate REQUESTS_PER_S, ReplayOptions(arrivals='rate'))")


def rate_arrivals(first: int, n: int, rate: float) -> np.ndarray:
    """Request i (counted from the trace's start) at i / rate seconds."""
    return (np.arange(first, first + n, dtype=np.float64) * (1e9 / rate)).astype(np.int64)


class TraceClock:
    """Arrivals from timestamps, slice after slice (the state carries a second cut by a slice boundary)."""

    def __init__(self) -> None:
        self.t0: int | None = None  # the first request's second
        self.top = 0  # latest (relative) second seen
        self.cur = -1  # the second the last slice ended in
        self.count = 0  # requests of that second so far
        self.used = 0.0  # ns of that second given to them
        self.prev = 0  # requests in the last complete second
        self.zeros = 0  # requests stamped 0 while no other time has been seen

    def arrivals(self, times: np.ndarray, ends_trace: bool = False) -> np.ndarray:
        """Arrival (ns from the trace's first second) of each request of the next slice; `ends_trace`: this slice
        is known to end the trace (or its first chunk)."""
        n = len(times)
        if n == 0:
            return np.zeros(0, np.int64)
        t = np.asarray(times).astype(np.int64)
        if self.zeros >= 0:  # no nonzero time seen yet
            if t.any():
                self.zeros = -1
            else:
                self.zeros += n
                if ends_trace or self.zeros > ZERO_LIMIT:
                    raise TierwiseError(NO_TIMESTAMPS)
        if self.t0 is None:
            self.t0 = int(t[0])
        rel = np.maximum.accumulate(np.maximum(t - self.t0, self.top))
        starts = np.concatenate(([0], np.flatnonzero(np.diff(rel)) + 1))
        sizes = np.diff(np.concatenate((starts, [n])))
        secs = rel[starts]
        g = len(starts)
        before = np.zeros(g, np.int64)  # requests of each group's second in earlier slices
        offset = np.zeros(g, np.float64)  # ns of the second already used by them
        if secs[0] == self.cur:
            before[0], offset[0] = self.count, self.used
        elif self.cur >= 0:
            self.prev = self.count  # the carried second ended with the last slice
        slots = sizes.astype(np.float64)  # a group whose second ends in this slice fills what is left of it
        # the last group's second may go on in the next slice: space it at the last complete second's rate
        prev = self.prev if g == 1 else int(before[-2] + sizes[-2])
        expect = prev - before[-1]  # requests of its second still expected
        slots[-1] = expect if expect >= sizes[-1] else sizes[-1] + 1
        spacing = np.maximum(NS - offset, 0) / slots
        k = np.arange(n) - np.repeat(starts, sizes)
        within = np.repeat(offset, sizes) + k * np.repeat(spacing, sizes)
        out = rel * NS + within.astype(np.int64)
        self.top = int(rel[-1])
        self.cur = int(secs[-1])
        self.count = int(before[-1] + sizes[-1])
        self.used = float(offset[-1] + sizes[-1] * spacing[-1])
        if g >= 2:
            self.prev = int(before[-2] + sizes[-2])
        return out
