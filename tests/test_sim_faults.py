"""Injected faults: each knob on its own at rate 1, then the profiles at their rates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import httpx
import pytest
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import PROFILES, FaultRates, SimConfig, build_config

pytestmark = pytest.mark.anyio

PAYLOAD = {"model": "wan2-6-i2v-flash", "input": {"image_urls": ["https://example.com/a.jpg"]}}


def only(**rates: float) -> SimConfig:
    return SimConfig(speed=0, faults=FaultRates(**rates))


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/_sim/stats")).json()
    return body


async def test_server_errors_are_5xx_with_a_json_body_and_create_nothing() -> None:
    async with sim_client(only(server_error=1.0)) as client:
        for _ in range(5):
            response = await client.post("/api/v1/tasks", json=PAYLOAD)
            assert response.status_code in {500, 502, 503}
            assert response.json()["error"]["code"] == "server_error"
        body = await stats(client)
        assert body["tasks"] == {
            "total": 0,
            "by_status": dict.fromkeys(
                ("queued", "processing", "succeeded", "failed", "cancelled"), 0
            ),
            "max_in_flight": 0,
        }
        assert body["faults"]["server_error"] == 5


@pytest.mark.parametrize(("speed", "header", "seconds"), [(1, "1", 1.0), (10, "0", 0.1)])
async def test_rate_limits_are_429_with_retry_after_scaled_by_speed(
    speed: float, header: str, seconds: float
) -> None:
    config = SimConfig(speed=speed, faults=FaultRates(rate_limit=1.0))
    async with sim_client(config) as client:
        response = await client.get("/api/v1/tasks/task_x")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == header
        assert response.json()["error"]["code"] == "rate_limited"
        assert response.json()["error"]["retry_after"] == seconds


async def test_a_drop_before_creation_is_a_transport_error_and_charges_nothing() -> None:
    async with sim_client(only(drop_before_create=1.0)) as client:
        with pytest.raises(httpx.TransportError):
            await client.post("/api/v1/tasks", json=PAYLOAD, headers={"Idempotency-Key": "a"})
        body = await stats(client)
        assert body["tasks"]["total"] == 0
        assert body["billing"]["charges"] == 0
        assert body["faults"]["drop_before_create"] == 1
        assert body["responses"] == {"dropped": 1}


async def test_a_drop_after_creation_bills_once_and_a_retry_gets_the_original() -> None:
    async with sim_client(only(drop_after_create=1.0)) as client:
        headers = {"Idempotency-Key": "lost-response"}
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)
        retry = await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)
        assert retry.status_code == 200
        assert retry.headers["Idempotent-Replayed"] == "true"
        body = await stats(client)
        assert body["tasks"]["total"] == 1
        key = body["billing"]["by_idempotency_key"]["lost-response"]
        assert key["charges"] == 1
        assert key["task_ids"] == [retry.json()["task_id"]]
        assert body["faults"]["drop_after_create"] == 1


async def test_slow_responses_still_answer() -> None:
    config = SimConfig(faults=FaultRates(slow_response=1.0, slow_seconds=0.01))
    async with sim_client(config) as client:
        assert (await client.post("/api/v1/tasks", json=PAYLOAD)).status_code == 200
        assert (await stats(client))["faults"]["slow_response"] == 1


async def succeeded_url(client: httpx.AsyncClient) -> str:
    body = (await client.post("/api/v1/tasks", json=PAYLOAD)).json()
    assert body["status"] == "succeeded"
    url: str = body["output"]["videos"][0]["url"]
    return url


async def test_truncated_downloads_drop_the_connection_mid_body() -> None:
    async with sim_client(only(truncated_download=1.0)) as client:
        url = await succeeded_url(client)
        head = await client.head(url)
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) > 0
        with pytest.raises(httpx.TransportError):
            await client.get(url)
        assert (await stats(client))["faults"]["truncated_download"] == 1


async def test_an_expired_url_is_403_and_getting_the_task_again_gives_a_fresh_one() -> None:
    async with sim_client(only(expired_url=1.0)) as client:
        body = (await client.post("/api/v1/tasks", json=PAYLOAD)).json()
        response = await client.get(body["output"]["videos"][0]["url"])
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "url_expired"

        cleared = await client.post("/_sim/faults", json={"profile": "none"})
        assert cleared.json()["faults"]["expired_url"] == 0
        fresh = (await client.get(f"/api/v1/tasks/{body['task_id']}")).json()
        assert (await client.get(fresh["output"]["videos"][0]["url"])).status_code == 200


async def test_fault_rates_can_be_swapped_at_run_time() -> None:
    async with sim_client() as client:
        response = await client.post("/_sim/faults", json={"profile": "flaky", "rate_limit": 0.5})
        assert response.json()["faults"] == asdict(PROFILES["flaky"]) | {"rate_limit": 0.5}
        assert (await client.post("/_sim/faults", json={"bogus": 1})).status_code == 422
        assert (await client.post("/_sim/faults", json={"profile": "evil"})).status_code == 422
        assert (await client.post("/_sim/faults", json={"server_error": 2})).status_code == 422


async def outcome_codes(profile: str, seed: int, count: int) -> list[str]:
    """What `count` GETs of one task meet under a profile: status codes or 'dropped'."""
    config = build_config(faults=profile, seed=seed, speed=1000.0)
    codes: list[str] = []
    async with sim_client(config) as client:
        await client.post("/_sim/faults", json={"profile": "none"})
        task_id = (await client.post("/api/v1/tasks", json=PAYLOAD)).json()["task_id"]
        await client.post("/_sim/faults", json={"profile": profile})
        for _ in range(count):
            response = await client.get(f"/api/v1/tasks/{task_id}")
            codes.append(str(response.status_code))
    return codes


async def test_the_same_seed_replays_the_same_faults() -> None:
    assert await outcome_codes("hostile", 5, 80) == await outcome_codes("hostile", 5, 80)
    assert await outcome_codes("hostile", 5, 80) != await outcome_codes("hostile", 6, 80)


@pytest.mark.parametrize("profile", ["flaky", "hostile"])
async def test_profiles_fail_api_calls_at_about_their_rates(profile: str) -> None:
    rates = PROFILES[profile]
    count = 400
    codes = await outcome_codes(profile, 1, count)
    limited = codes.count("429") / count
    errors = sum(codes.count(c) for c in ("500", "502", "503")) / count
    assert rates.rate_limit / 2 < limited < rates.rate_limit * 2
    # A 5xx is only rolled when the request was not already rate limited.
    expected_errors = rates.server_error * (1 - rates.rate_limit)
    assert expected_errors / 2 < errors < expected_errors * 2
    assert codes.count("200") > count / 2


async def test_profiles_drop_creations_and_fail_generations() -> None:
    config = build_config(faults="hostile", seed=2, speed=0)
    dropped = 0
    async with sim_client(config) as client:
        for n in range(60):
            headers = {"Idempotency-Key": f"k{n}"}
            for _attempt in range(10):  # a well-behaved client: retry with the same key
                try:
                    response = await client.post("/api/v1/tasks", json=PAYLOAD, headers=headers)
                except httpx.TransportError:
                    dropped += 1
                    continue
                if response.status_code == 200:
                    break
        body = await stats(client)
    assert dropped > 0
    assert body["faults"]["drop_before_create"] > 0
    assert body["faults"]["drop_after_create"] > 0
    assert body["faults"]["generation_failure"] > 0
    # Whatever was dropped, every key was charged exactly once.
    per_key = body["billing"]["by_idempotency_key"]
    assert len(per_key) == 60
    assert {v["charges"] for v in per_key.values()} == {1}


def test_rates_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="server_error"):
        FaultRates(server_error=1.5)
    with pytest.raises(ValueError, match="unknown fault profile"):
        build_config(faults="evil")
    config = build_config(faults="flaky", rates={"server_error": 0.5, "rate_limit": None})
    assert config.faults.server_error == 0.5
    assert config.faults.rate_limit == PROFILES["flaky"].rate_limit


async def test_stats_say_the_most_tasks_ever_in_flight_at_once() -> None:
    """Three tasks at once, then one after they end: at most three were ever alive."""
    clock = FakeClock()
    async with sim_client(SimConfig(clock=clock)) as client:
        for n in range(3):
            payload = {**PAYLOAD, "input": {**PAYLOAD["input"], "prompt": f"a cat {n}"}}
            assert (await client.post("/api/v1/tasks", json=payload)).status_code == 200
        clock.advance(3600)
        payload = {**PAYLOAD, "input": {**PAYLOAD["input"], "prompt": "a cat 4"}}
        assert (await client.post("/api/v1/tasks", json=payload)).status_code == 200
        body = await stats(client)
        assert body["tasks"]["total"] == 4
        assert body["tasks"]["max_in_flight"] == 3
