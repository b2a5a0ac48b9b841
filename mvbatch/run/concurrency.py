"""How many tasks may be in flight at once: halved by a 429, regained step by step.

Owns: the limit on tasks in flight (`--concurrency`, at most MAX_CONCURRENCY)
and its adaptation (`AdaptiveLimit`): a 429 halves it, at most once per
THROTTLE_COOLDOWN however many arrive together; it grows back by one after as
many successful submissions as the current limit (additive increase).

It must not wait, sleep or know about tasks: the executor takes and gives
back slots and tells it what the API answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256
THROTTLE_COOLDOWN = 1.0  # one halving per this many seconds, however many 429s arrive


class AdaptiveLimit:
    """How many tasks may be in flight: halves on 429, regains one per window of successes."""

    def __init__(self, maximum: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.in_use = 0
        self._successes = 0
        self._last_cut = -float("inf")
        self._clock = clock

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def acquire(self) -> None:
        self.in_use += 1

    def release(self) -> None:
        self.in_use = max(0, self.in_use - 1)

    def throttled(self) -> bool:
        """The API said 429: halve, at most once per cooldown. True if it changed."""
        now = self._clock()
        if now - self._last_cut < THROTTLE_COOLDOWN or self.limit == 1:
            return False
        self._last_cut = now
        self.limit = max(1, self.limit // 2)
        self._successes = 0
        return True

    def succeeded(self) -> bool:
        """A submission went through: additive increase. True if the limit grew."""
        if self.limit >= self.maximum:
            return False
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            return True
        return False
