"""The task API of the simulator, in-process: auth, creation, lifecycle, events, scoping."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import FaultRates, SimConfig

pytestmark = pytest.mark.anyio

KLING = {
    "model": "kling-v2-6",
    "input": {"prompt": "A silver car in neon rain", "size": "16:9", "duration": 5, "mode": "std"},
}


def example(slug: str) -> dict[str, Any]:
    text = files("mvbatch.schemas").joinpath(f"examples/{slug}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


async def test_requests_without_a_valid_bearer_key_are_401() -> None:
    async with sim_client(api_key=None) as client:
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer sk_other"}):
            response = await client.post("/api/v1/tasks", json=KLING, headers=headers)
            assert response.status_code == 401
            body = response.json()
            assert body["error"]["code"] == "unauthorized"
            assert body["error"]["message"]
            assert body["request_id"].startswith("req_")
        assert (await client.get("/api/v1/tasks/task_x")).status_code == 401


async def test_accepted_keys_restrict_which_keys_work() -> None:
    config = SimConfig(accepted_keys=frozenset({"mv_live_good"}))
    async with sim_client(config, api_key="mv_live_good") as client:
        assert (await client.post("/api/v1/tasks", json=KLING)).status_code == 200
        other = {"Authorization": "Bearer mv_live_other"}
        assert (await client.post("/api/v1/tasks", json=KLING, headers=other)).status_code == 401


async def test_a_task_moves_queued_processing_succeeded_on_the_clock() -> None:
    clock = FakeClock()
    async with sim_client(SimConfig(clock=clock, seed=3)) as client:
        created = (await client.post("/api/v1/tasks", json=KLING)).json()
        assert created["status"] == "queued"
        assert created["task_id"].startswith("task_")
        assert created["request_id"].startswith("req_")
        assert created["cost_estimate"] == 0.0414
        assert created["cost_actual"] is None
        assert created["output"] is None

        url = f"/api/v1/tasks/{created['task_id']}"
        seen: list[str] = []
        for _ in range(200):
            body = (await client.get(url)).json()
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if body["status"] == "succeeded":
                break
            clock.advance(0.25)
        assert seen == ["queued", "processing", "succeeded"]
        assert body["request_id"] == created["request_id"]
        assert body["cost_actual"] == 0.0414
        video_url = body["output"]["videos"][0]["url"]
        assert video_url.startswith("http://sim.test/files/" + created["task_id"])

        events = (await client.get(url + "/events")).json()
        assert events["task_id"] == created["task_id"]
        assert [e["type"] for e in events["events"]] == [
            "task.created",
            "task.processing",
            "task.succeeded",
        ]
        assert [e["status"] for e in events["events"]] == ["queued", "processing", "succeeded"]
        assert all(e["at"].endswith("Z") for e in events["events"])


async def test_speed_zero_completes_at_creation() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        body = (await client.post("/api/v1/tasks", json=KLING)).json()
        assert body["status"] == "succeeded"
        assert body["cost_actual"] == body["cost_estimate"] == 0.0414


@pytest.mark.parametrize(
    "slug",
    [
        "kling-v2-6",
        "kling-video-o1",
        "kling-v3-omni",
        "kling-v3-motion-control",
        "wan2-6-i2v-flash",
    ],
)
async def test_documented_examples_cost_exactly_what_the_pages_say(slug: str) -> None:
    documented = example(slug)
    async with sim_client(SimConfig(speed=0)) as client:
        response = await client.post("/api/v1/tasks", json=documented["request"])
        assert response.status_code == 200, response.text
        body = response.json()
        for field, value in documented["response"].items():
            assert field in body
            if field in {"status", "cost_estimate", "cost_actual"}:
                assert body[field] == value
        assert body["output"]["videos"][0]["url"].startswith("http://sim.test/files/")


async def test_another_keys_task_is_404() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        task_id = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        stranger = {"Authorization": "Bearer mv_live_someone_else"}
        for path in (f"/api/v1/tasks/{task_id}", f"/api/v1/tasks/{task_id}/events"):
            response = await client.get(path, headers=stranger)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "task_not_found"
        assert (await client.get("/api/v1/tasks/task_missing")).status_code == 404


async def test_unknown_model_is_404_and_bad_input_is_422_naming_each_field() -> None:
    async with sim_client() as client:
        response = await client.post("/api/v1/tasks", json={"model": "sora-9", "input": {}})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"

        bad = {"model": "kling-v2-6", "input": {"prompt": "", "duration": 7, "mode": "ultra"}}
        response = await client.post("/api/v1/tasks", json=bad)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        fields = {d["field"] for d in error["details"]}
        assert fields == {"input.prompt", "input.duration", "input.mode"}
        assert all(d["message"] for d in error["details"])

        response = await client.post("/api/v1/tasks", json={"input": {}, "extra": 1})
        assert response.status_code == 422
        assert {d["field"] for d in response.json()["error"]["details"]} == {"extra", "model"}

        response = await client.post(
            "/api/v1/tasks", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"


async def test_a_failed_task_says_why_costs_nothing_and_is_refunded() -> None:
    config = SimConfig(speed=0, faults=FaultRates(generation_failure=1.0))
    async with sim_client(config) as client:
        body = (await client.post("/api/v1/tasks", json=KLING)).json()
        assert body["status"] == "failed"
        assert body["cost_estimate"] == 0.0414
        assert body["cost_actual"] == 0
        assert body["error"]["code"] == "generation_failed"
        assert body["error"]["message"]
        events = (await client.get(f"/api/v1/tasks/{body['task_id']}/events")).json()
        assert events["events"][-1]["type"] == "task.failed"
        assert events["events"][-1]["message"] == body["error"]["message"]

        stats = (await client.get("/_sim/stats")).json()
        assert stats["billing"]["total_charged"] == 0.0414
        assert stats["billing"]["total_refunded"] == 0.0414
        assert stats["billing"]["net"] == 0
        assert stats["tasks"]["by_status"]["failed"] == 1
        assert stats["faults"]["generation_failure"] == 1


async def test_admin_cancel_ends_a_task_cancelled_and_refunds_it() -> None:
    clock = FakeClock()
    async with sim_client(SimConfig(clock=clock)) as client:
        task_id = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        assert (await client.post(f"/_sim/tasks/{task_id}/cancel")).json()["status"] == "cancelled"
        clock.advance(3600)
        body = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        assert body["status"] == "cancelled"
        assert body["cost_actual"] == 0
        events = (await client.get(f"/api/v1/tasks/{task_id}/events")).json()["events"]
        assert [e["type"] for e in events] == ["task.created", "task.cancelled"]
        assert (await client.get("/_sim/stats")).json()["billing"]["net"] == 0


async def test_admin_clock_moves_time_for_a_real_process() -> None:
    async with sim_client(SimConfig(speed=0.001)) as client:
        task_id = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        assert (await client.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "queued"
        assert (await client.post("/_sim/clock", json={"advance": 10**7})).status_code == 200
        assert (await client.get(f"/api/v1/tasks/{task_id}")).json()["status"] == "succeeded"


async def test_unknown_routes_answer_json() -> None:
    async with sim_client() as client:
        response = await client.get("/api/v1/nothing")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        response = await client.delete("/api/v1/tasks")
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_stats_count_requests_and_responses() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        await client.post("/api/v1/tasks", json=KLING)
        await client.post("/api/v1/tasks", json=KLING)
        await client.get("/api/v1/tasks/task_missing")
        stats = (await client.get("/_sim/stats")).json()
        assert stats["requests"]["POST /api/v1/tasks"] == 2
        assert stats["requests"]["GET /api/v1/tasks/{task_id}"] == 1
        assert stats["responses"] == {"200": 2, "404": 1}
        assert stats["billing"]["without_idempotency_key"]["charges"] == 2
        assert stats["billing"]["total_charged"] == 0.0828
        old = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        assert (await client.post("/_sim/reset")).status_code == 200
        assert (await client.get("/_sim/stats")).json()["tasks"]["total"] == 0
        new = (await client.post("/api/v1/tasks", json=KLING)).json()["task_id"]
        assert new != old  # ids are never reused after a reset
