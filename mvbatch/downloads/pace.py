"""How slow a transfer may be: a minimum rate over a sliding window, and a deadline.

Owns: the bounds of every transfer (`Bounds`: the documented constants
below, which a `Downloader` may be given others of) and `Pace`, the watch
over one request, kept on the event loop's clock (no thread, no signal):

- after the first `grace` seconds of a request (its set-up, a slow first
  byte), the bytes of every `window` seconds must average at least
  `min_rate`: a host that trickles, or says nothing at all (before or after
  its headers), is cut off with "slower than 32 KiB/s for 30 s", at the
  earliest `grace + window` seconds after the request started;
- all attempts of one output together must end by the deadline,
  `deadline_base + size / deadline_rate` seconds after its first request,
  once the size is known (Content-Length or Content-Range): a host that keeps
  just above the minimum rate still cannot hold a run for days.

`Pace` only decides when: it ends the request through the `asyncio.timeout`
the request runs in, and says why (`verdict`). What a cut-off means (retry
with Range, give up) is `fetch`'s.

Must not: touch the network, the part file or the ledger; read the wall clock
(the loop's monotonic clock only).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from mvbatch.money import duration

# A host slower than this over any RATE_WINDOW that starts after the first
# RATE_GRACE seconds of a request is cut off: 32 KiB/s is a 5 s clip of a
# few MB in minutes, and far below any CDN; a host this slow is stuck.
MIN_RATE = 32 * 1024  # bytes per second
RATE_WINDOW = 30.0  # seconds the rate is averaged over
RATE_GRACE = 30.0  # seconds at the start of a request that no window covers
# The deadline of one output, all its attempts together: 60 s, plus one
# second per 256 KiB (a 100 MB video: about 7 minutes).
DEADLINE_BASE = 60.0  # seconds
DEADLINE_RATE = 256 * 1024  # bytes per second the deadline allows for
_RESOLUTION = 16  # samples of the byte count per window, at most


@dataclass(frozen=True, slots=True)
class Bounds:
    """The limits of every transfer; tests pass small ones to run in a fraction of a second."""

    min_rate: float = MIN_RATE
    window: float = RATE_WINDOW
    grace: float = RATE_GRACE
    deadline_base: float = DEADLINE_BASE
    deadline_rate: float = DEADLINE_RATE

    def deadline_for(self, size: int) -> float:
        """Seconds all attempts of an output of `size` bytes may take together."""
        return self.deadline_base + size / self.deadline_rate

    @property
    def slow_words(self) -> str:
        """Why a transfer was cut off for its rate: "slower than 32 KiB/s for 30 s"."""
        return f"slower than {self.min_rate / 1024:g} KiB/s for {duration(self.window)}"

    def late_words(self, size: int) -> str:
        """Why an output was given up at its deadline."""
        return (
            f"not finished within {duration(self.deadline_for(size))}, the deadline for "
            f"{size:,} bytes ({duration(self.deadline_base)} + 1 s per "
            f"{self.deadline_rate / 1024:g} KiB)"
        )


class Pace:
    """The watch over one request: cuts it off when too slow or past its deadline.

    `add(n)` counts bytes as they arrive (one addition and one clock read per
    chunk). A timer on the loop checks the rule only when it could first be
    broken: with the bytes of the last window so far, the earliest moment the
    average could fall below the minimum if nothing more arrived. Then it
    either sets the next check or reschedules `guard` (the request's
    `asyncio.timeout`) to now, which ends the request as a timeout;
    `verdict` says why. The byte count is sampled at most `_RESOLUTION`
    times per window: the window may count up to one sample's bytes too many,
    never too few, so a host is never cut off early.
    """

    def __init__(
        self, bounds: Bounds, guard: asyncio.Timeout, deadline: float | None, size: int | None
    ) -> None:
        self.bounds, self.guard = bounds, guard
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.verdict: str | None = None
        self.late = False  # the verdict is the deadline: no retry helps
        self._need = bounds.min_rate * bounds.window  # bytes per window
        self._step = bounds.window / _RESOLUTION
        self._received = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._deadline, self._size = deadline, size
        self._timer: asyncio.TimerHandle | None = None
        self._judged_from = self.started + bounds.grace + bounds.window  # the first window's end
        self._schedule(self._judged_from)

    def add(self, size: int) -> None:
        self._received += size
        now = self.loop.time()
        if now - self._samples[-1][0] >= self._step:
            self._samples.append((now, self._received))

    def set_deadline(self, deadline: float, size: int) -> None:
        """The output's deadline, once its size is known."""
        self._deadline, self._size = deadline, size
        self._schedule(self._next_check())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, when: float) -> None:
        self.close()
        if self._deadline is not None:
            when = min(when, self._deadline)
        self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._end(self.bounds.late_words(self._size or 0), late=True)
            return
        if self._samples[-1][1] != self._received:
            self._samples.append((now, self._received))
        # Keep one sample at or before the window's start: the count there.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.bounds.window:
            self._samples.popleft()
        in_window = self._received - self._samples[0][1]
        if now >= self._judged_from and in_window < self._need:
            self._end(self.bounds.slow_words, late=False)
            return
        self._schedule(max(self._next_check(), now + self._step))

    def _next_check(self) -> float:
        """When the last window's bytes first fall below the minimum, if no more arrive."""
        floor = self._received - self._need
        when = next((t for t, count in self._samples if count > floor), self.loop.time())
        return max(when + self.bounds.window, self._judged_from)

    def _end(self, verdict: str, *, late: bool) -> None:
        self.verdict, self.late = verdict, late
        self.guard.reschedule(self.loop.time())
