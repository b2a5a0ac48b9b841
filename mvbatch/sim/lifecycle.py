"""A task's life without background work: drawn once at creation, read off the clock after.

At creation the service draws how long the task waits in the queue, how long
it renders and whether it will fail. Nothing runs afterwards: the status at
any moment is computed from `created_at` and those durations, so an app
driven in-process (no lifespan, no background tasks) and a restarted server
both see exactly the schedule a live run would have seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "processing",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# The real service takes minutes; the simulator keeps the shape, scaled to seconds
# (the median and spread themselves are SimConfig fields).
MODEL_FACTOR = {
    "kling-v2-6": 1.0,
    "kling-video-o1": 1.2,
    "kling-v3-omni": 1.3,
    "kling-v3-motion-control": 1.4,
    "wan2-6-i2v-flash": 0.6,
}
TIER_FACTOR = {"std": 1.0, "pro": 1.6, "4k": 2.5, "720p": 1.0, "1080p": 1.3}

FAILURE_MESSAGES = (
    "The model could not render a coherent video for this prompt; try rephrasing it.",
    "Generation stopped: the output was flagged by content moderation.",
    "The rendering worker crashed while generating this video; please submit again.",
    "The reference media could not be decoded by the model.",
)


@dataclass(frozen=True, slots=True)
class Schedule:
    queued_seconds: float
    run_seconds: float
    failure_message: str | None  # None: the task will succeed


def draw_schedule(
    rng: random.Random,
    *,
    model: str,
    tier: str,
    seconds: Decimal,
    failure_rate: float,
    scale: float,
    median_seconds: float = 4.0,
    spread: float = 0.35,
) -> Schedule:
    """Latency from a lognormal around a median that grows with tier and duration.

    `median_seconds` is that of a 5 s std kling-v2-6 task; `scale` is 1/speed
    (0 for instantaneous). The dice are always rolled in the same order so a
    seed gives the same schedules whatever the speed.
    """
    base, _, extra = tier.partition("+")
    median = (
        median_seconds
        * MODEL_FACTOR.get(model, 1.0)
        * TIER_FACTOR.get(base, 1.0)
        * (1.1 if extra == "audio" else 1.0)
        * (float(seconds) / 5.0) ** 0.8
    )
    total = median * math.exp(rng.gauss(0.0, spread))
    queued_share = rng.uniform(0.1, 0.3)
    fails = rng.random() < failure_rate
    message = rng.choice(FAILURE_MESSAGES)
    return Schedule(
        queued_seconds=total * queued_share * scale,
        run_seconds=total * (1 - queued_share) * scale,
        failure_message=message if fails else None,
    )


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a task changes status; `cancelled_at` set by the admin cancel endpoint."""

    created_at: float
    queued_seconds: float
    run_seconds: float
    failure_message: str | None
    cancelled_at: float | None = None

    @property
    def started_at(self) -> float:
        return self.created_at + self.queued_seconds

    @property
    def finished_at(self) -> float:
        return self.started_at + self.run_seconds

    @property
    def outcome(self) -> str:
        return FAILED if self.failure_message is not None else SUCCEEDED

    def cancelled_before_finish(self) -> bool:
        return self.cancelled_at is not None and self.cancelled_at < self.finished_at

    def status_at(self, now: float) -> str:
        if self.cancelled_before_finish() and now >= (self.cancelled_at or 0.0):
            return CANCELLED
        if now >= self.finished_at:
            return self.outcome
        if now >= self.started_at:
            return PROCESSING
        return QUEUED

    def updated_at(self, now: float) -> float:
        """When the status seen at `now` began."""
        status = self.status_at(now)
        if status == CANCELLED:
            return self.cancelled_at or self.created_at
        return {QUEUED: self.created_at, PROCESSING: self.started_at}.get(status, self.finished_at)

    def events(self, now: float) -> list[dict[str, Any]]:
        """The event history visible at `now`, oldest first."""
        history: list[dict[str, Any]] = [event("task.created", QUEUED, self.created_at)]
        status = self.status_at(now)
        if self.started_at <= now and (
            status != CANCELLED or self.started_at < (self.cancelled_at or 0.0)
        ):
            history.append(event("task.processing", PROCESSING, self.started_at))
        if status == CANCELLED:
            history.append(event("task.cancelled", CANCELLED, self.cancelled_at or now))
        elif status == FAILED:
            failed = event("task.failed", FAILED, self.finished_at)
            failed["message"] = self.failure_message
            history.append(failed)
        elif status == SUCCEEDED:
            history.append(event("task.succeeded", SUCCEEDED, self.finished_at))
        return history


def iso(moment: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2025-01-01T12:00:00.123Z."""
    text = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def event(kind: str, status: str, at: float) -> dict[str, Any]:
    return {"type": kind, "status": status, "at": iso(at)}
