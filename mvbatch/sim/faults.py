"""Fault injection: which request fails, and how.

Every API request rolls the same dice in the same order from one seeded RNG,
so a seed replays the same faults for the same sequence of requests. The
rates are `config.FaultRates`; the admin endpoint `/_sim/faults` may swap them
while the simulator runs.

A dropped connection is `DroppedConnection`, raised after the response has
started: uvicorn then closes the socket mid-response, and an in-process
`httpx.ASGITransport` re-raises it to the caller. It subclasses httpx's
`RemoteProtocolError` so both look the same to a client: a transport error,
never a status code.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import httpx

from mvbatch.sim.config import FaultRates

SERVER_ERROR_STATUSES = (500, 502, 503)


class DroppedConnection(httpx.RemoteProtocolError):
    """The simulator cut the connection on purpose (an injected fault)."""


@dataclass(frozen=True, slots=True)
class ApiRoll:
    slow: bool
    rate_limited: bool
    server_error: int | None  # the status to answer, or None
    drop_before_create: bool
    drop_after_create: bool


@dataclass(frozen=True, slots=True)
class DownloadRoll:
    slow: bool
    expired: bool
    truncate_at: float | None  # fraction of the body sent before the drop


class FaultInjector:
    def __init__(self, rates: FaultRates, seed: int) -> None:
        self.rates = rates
        self._rng = random.Random(f"{seed}:faults")
        self._lock = threading.Lock()

    def _draws(self, count: int) -> list[float]:
        with self._lock:
            return [self._rng.random() for _ in range(count)]

    def roll_api(self) -> ApiRoll:
        rates = self.rates
        slow, limited, failed, status, before, after = self._draws(6)
        return ApiRoll(
            slow=slow < rates.slow_response,
            rate_limited=limited < rates.rate_limit,
            server_error=(
                SERVER_ERROR_STATUSES[int(status * len(SERVER_ERROR_STATUSES))]
                if failed < rates.server_error
                else None
            ),
            drop_before_create=before < rates.drop_before_create,
            drop_after_create=after < rates.drop_after_create,
        )

    def roll_download(self) -> DownloadRoll:
        rates = self.rates
        slow, expired, truncated, where = self._draws(4)
        return DownloadRoll(
            slow=slow < rates.slow_response,
            expired=expired < rates.expired_url,
            truncate_at=0.1 + 0.8 * where if truncated < rates.truncated_download else None,
        )

    def failure_rate(self) -> float:
        return self.rates.generation_failure
