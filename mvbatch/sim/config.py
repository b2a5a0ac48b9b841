"""What a simulator instance is told at start: `SimConfig` and the fault profiles.

Everything here is frozen data; `faults.py` rolls the dice and `service.py`
holds the state. The command lines (`__main__.py`, `command.py`) build a
config through `build_config()` so both spell the options the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probability of each injected fault, per request (or per task where noted)."""

    server_error: float = 0.0  # API request answered 500/502/503
    rate_limit: float = 0.0  # API request answered 429 with Retry-After
    drop_before_create: float = 0.0  # POST connection dropped, no task created
    drop_after_create: float = 0.0  # POST creates and bills the task, then drops
    slow_response: float = 0.0  # any request delayed by `slow_seconds`
    truncated_download: float = 0.0  # file body cut short, connection dropped
    expired_url: float = 0.0  # a valid output URL is refused as expired
    generation_failure: float = 0.0  # per task: ends `failed` with a message
    retry_after_seconds: float = 1.0  # Retry-After of a 429, before `speed`
    slow_seconds: float = 2.0  # delay of a slow response, before `speed`

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (f.name in RATE_NAMES and value > 1):
                raise ValueError(f"fault {f.name} must be within [0, 1], got {value}")


RATE_NAMES = (
    "server_error",
    "rate_limit",
    "drop_before_create",
    "drop_after_create",
    "slow_response",
    "truncated_download",
    "expired_url",
    "generation_failure",
)

PROFILES: dict[str, FaultRates] = {
    "none": FaultRates(),
    "flaky": FaultRates(
        server_error=0.05,
        rate_limit=0.05,
        drop_before_create=0.03,
        drop_after_create=0.03,
        slow_response=0.02,
        truncated_download=0.05,
        expired_url=0.05,
        generation_failure=0.05,
    ),
    "hostile": FaultRates(
        server_error=0.15,
        rate_limit=0.15,
        drop_before_create=0.08,
        drop_after_create=0.08,
        slow_response=0.05,
        truncated_download=0.15,
        expired_url=0.15,
        generation_failure=0.10,
    ),
}


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulator instance.

    - `state_dir`: folder of `sim.sqlite3`; None keeps everything in memory.
    - `seed`: seeds fault rolls, latencies and generation failures.
    - `speed`: divides every latency, slow response and Retry-After;
      0 means instantaneous (tasks are terminal when created).
    - `latency_median_seconds`, `latency_spread`: the lognormal of a 5 s std
      kling-v2-6 task at speed 1 (median, sigma); other tasks scale from it.
    - `url_ttl_seconds`: lifetime of a signed output URL.
    - `output_scale`: multiplies output file sizes (1 = a few hundred KB).
    - `accepted_keys`: exact API keys accepted; None accepts any `mv_…` key.
    - `public_base_url`: origin written into output URLs instead of the
      request's own (e.g. behind a proxy); `files_base_url` overrides both,
      so files can live on another host than the API.
    - `clock`: seconds since the epoch; injectable so tests move time.
    """

    state_dir: Path | None = None
    seed: int = 0
    speed: float = 1.0
    latency_median_seconds: float = 4.0
    latency_spread: float = 0.35
    url_ttl_seconds: float = 3600.0
    output_scale: float = 1.0
    faults: FaultRates = field(default_factory=FaultRates)
    accepted_keys: frozenset[str] | None = None
    public_base_url: str | None = None
    files_base_url: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise ValueError("speed must be >= 0")
        if self.latency_median_seconds < 0 or self.latency_spread < 0:
            raise ValueError("latency_median_seconds and latency_spread must be >= 0")
        if self.url_ttl_seconds <= 0:
            raise ValueError("url_ttl_seconds must be > 0")
        if self.output_scale < 0:
            raise ValueError("output_scale must be >= 0")

    def scaled(self, seconds: float) -> float:
        """A duration of the real service, scaled down by `speed`."""
        return 0.0 if self.speed == 0 else seconds / self.speed


def build_config(
    *,
    faults: str = "none",
    rates: dict[str, float | None] | None = None,
    state_dir: Path | None = None,
    **options: object,
) -> SimConfig:
    """A config from a fault profile name, individual rate overrides and options.

    `rates` maps FaultRates field names to a value, or None to keep the
    profile's; `options` are SimConfig fields.
    """
    if faults not in PROFILES:
        raise ValueError(f"unknown fault profile {faults!r} (choose {', '.join(PROFILES)})")
    overrides = {name: value for name, value in (rates or {}).items() if value is not None}
    fault_rates = replace(PROFILES[faults], **overrides)
    return SimConfig(state_dir=state_dir, faults=fault_rates, **options)  # type: ignore[arg-type]
