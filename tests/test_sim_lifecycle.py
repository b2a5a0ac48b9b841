"""Task schedules: drawn once, read off the clock; longer for pro, 4k and long clips."""

from __future__ import annotations

import random
import statistics
from decimal import Decimal

import pytest
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import SimConfig
from mvbatch.sim.lifecycle import Timeline, draw_schedule


def median_total(model: str, tier: str, seconds: int, scale: float = 1.0) -> float:
    rng = random.Random(1)
    totals = []
    for _ in range(300):
        schedule = draw_schedule(
            rng, model=model, tier=tier, seconds=Decimal(seconds), failure_rate=0, scale=scale
        )
        totals.append(schedule.queued_seconds + schedule.run_seconds)
    return statistics.median(totals)


def test_the_default_median_is_a_few_seconds() -> None:
    assert 3 < median_total("kling-v2-6", "std", 5) < 5


def test_pro_4k_1080p_and_longer_clips_take_longer() -> None:
    std = median_total("kling-v3-omni", "std", 5)
    assert median_total("kling-v3-omni", "pro", 5) > std
    assert median_total("kling-v3-omni", "4k", 5) > median_total("kling-v3-omni", "pro", 5)
    assert median_total("kling-v3-omni", "std", 10) > std
    assert median_total("wan2-6-i2v-flash", "1080p", 5) > median_total(
        "wan2-6-i2v-flash", "720p", 5
    )


def test_scale_divides_latency_and_zero_is_instant() -> None:
    assert median_total("kling-v2-6", "std", 5, scale=0.5) == pytest.approx(
        median_total("kling-v2-6", "std", 5) / 2
    )
    assert median_total("kling-v2-6", "std", 5, scale=0) == 0


def test_a_failure_is_decided_at_creation_and_revealed_at_the_end() -> None:
    rng = random.Random(0)
    schedule = draw_schedule(
        rng, model="kling-v2-6", tier="std", seconds=Decimal(5), failure_rate=1, scale=1
    )
    assert schedule.failure_message
    timeline = Timeline(
        0.0, schedule.queued_seconds, schedule.run_seconds, schedule.failure_message
    )
    assert timeline.status_at(timeline.finished_at - 0.001) == "processing"
    assert timeline.status_at(timeline.finished_at) == "failed"


@pytest.mark.anyio
async def test_the_configured_median_reaches_the_api() -> None:
    clock = FakeClock()
    config = SimConfig(clock=clock, latency_median_seconds=1000)
    async with sim_client(config) as client:
        body = {"model": "kling-v2-6", "input": {"prompt": "slow"}}
        task_id = (await client.post("/api/v1/tasks", json=body)).json()["task_id"]
        clock.advance(30)
        assert (await client.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "queued"
