"""Idempotency-Key rules of the simulator: replay, 409, the concurrent race, scoping."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import SimConfig

pytestmark = pytest.mark.anyio

PAYLOAD: dict[str, Any] = {
    "model": "kling-video-o1",
    "input": {"prompt": "A skyline at dusk", "mode": "pro"},
}


async def test_same_key_same_payload_returns_the_original_task_without_a_new_charge() -> None:
    clock = FakeClock()
    async with sim_client(SimConfig(clock=clock)) as client:
        headers = {"Idempotency-Key": "shot-1"}
        first = await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)
        clock.advance(60)
        # Same content, different key order and whitespace: still the same payload.
        again = await client.post(
            "/api/v1/tasks",
            content=(
                b'{"input": {"mode": "pro", "prompt": "A skyline at dusk"},\n'
                b' "model": "kling-video-o1"}'
            ),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert first.status_code == again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.json()["request_id"] == first.json()["request_id"]
        assert again.json()["status"] == "succeeded"  # the original, as it is now

        stats = (await client.get("/_sim/stats")).json()
        assert stats["tasks"]["total"] == 1
        assert stats["billing"]["by_idempotency_key"]["shot-1"]["charges"] == 1
        assert stats["billing"]["total_charged"] == 0.0756


async def test_same_key_different_payload_is_409_and_charges_nothing() -> None:
    async with sim_client() as client:
        headers = {"Idempotency-Key": "shot-1"}
        assert (await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)).is_success
        changed = {"model": "kling-video-o1", "input": {"prompt": "A skyline at dawn"}}
        response = await client.post("/api/v1/tasks", json=changed, headers=headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_conflict"
        assert response.json()["error"]["message"]
        # An explicit default is a different payload too: payloads compare as sent.
        explicit = {"model": "kling-video-o1", "input": {**PAYLOAD["input"], "duration": 5}}
        assert (
            await client.post("/api/v1/tasks", json=explicit, headers=headers)
        ).status_code == 409
        stats = (await client.get("/_sim/stats")).json()
        assert stats["billing"]["charges"] == 1


async def test_concurrent_requests_with_one_new_key_create_one_task() -> None:
    async with sim_client() as client:
        results: list[dict[str, object]] = []

        async def submit() -> None:
            response = await client.post(
                "/api/v1/tasks", json=PAYLOAD, headers={"Idempotency-Key": "race"}
            )
            assert response.status_code == 200
            results.append(response.json())

        async with anyio.create_task_group() as group:
            for _ in range(25):
                group.start_soon(submit)

        assert len({r["task_id"] for r in results}) == 1
        stats = (await client.get("/_sim/stats")).json()
        assert stats["tasks"]["total"] == 1
        assert stats["billing"]["by_idempotency_key"]["race"]["charges"] == 1


async def test_no_key_creates_and_bills_a_new_task_every_time() -> None:
    async with sim_client() as client:
        ids = {
            (await client.post("/api/v1/tasks", json=PAYLOAD)).json()["task_id"] for _ in range(3)
        }
        assert len(ids) == 3
        stats = (await client.get("/_sim/stats")).json()
        assert stats["billing"]["without_idempotency_key"]["charges"] == 3


async def test_keys_are_scoped_per_api_key() -> None:
    async with sim_client() as client:
        headers = {"Idempotency-Key": "shared"}
        mine = (await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)).json()
        other = {**headers, "Authorization": "Bearer mv_live_other"}
        changed = {"model": "kling-video-o1", "input": {"prompt": "Different"}}
        theirs = await client.post("/api/v1/tasks", json=changed, headers=other)
        assert theirs.status_code == 200
        assert theirs.json()["task_id"] != mine["task_id"]


async def test_an_invalid_request_does_not_bind_its_key() -> None:
    async with sim_client() as client:
        headers = {"Idempotency-Key": "fix-me"}
        bad = {"model": "kling-video-o1", "input": {"prompt": ""}}
        assert (await client.post("/api/v1/tasks", json=bad, headers=headers)).status_code == 422
        assert (
            await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)
        ).status_code == 200


async def test_an_overlong_key_is_rejected() -> None:
    async with sim_client() as client:
        response = await client.post(
            "/api/v1/tasks", json=PAYLOAD, headers={"Idempotency-Key": "k" * 256}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_idempotency_key"
