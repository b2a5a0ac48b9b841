"""The API client: what it retries (and only that), how it waits, what it tolerates.

Retries run in stamina's testing mode (tests/conftest.py): no sleeping, and
as many attempts as in production unless a test says otherwise. The wait of
each retry is still decided, and logged as `api.retry`: `decided_waits`
reads it. One test turns the testing mode off and waits for real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import stamina
from run_helpers import InProcessSim
from structlog.testing import capture_logs

from mvbatch.api.client import ApiClient
from mvbatch.api.responses import parse_task, server_message
from mvbatch.api.retry import (
    ATTEMPTS,
    Backoff,
    RetryBudget,
    RetryPolicy,
    never,
    parse_retry_after,
)
from mvbatch.errors import ApiUnavailable, AuthError, TaskRejected

pytestmark = pytest.mark.anyio

TASK = {
    "request_id": "req_1",
    "task_id": "task_1",
    "status": "queued",
    "cost_estimate": 0.0414,
}
DONE = {
    **TASK,
    "status": "succeeded",
    "cost_actual": 0.0414,
    "output": {"videos": [{"url": "https://cdn.example/a.mp4"}]},
}

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, policy: RetryPolicy | None = None) -> ApiClient:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="https://api.test/api/v1/"
    )
    return ApiClient(http, policy)


@pytest.fixture
def decided_waits() -> Iterator[Callable[[], list[float]]]:
    """The wait of each retry the client made, as decided (testing mode does not sleep it)."""
    with capture_logs() as events:
        yield lambda: [e["wait_s"] for e in events if e["event"] == "api.retry"]


def status_error(status: int, **headers: str) -> httpx.HTTPStatusError:
    """What a failed attempt raises for a retryable status (see `ApiClient._attempt`)."""
    request = httpx.Request("GET", "https://api.test/api/v1/tasks/task_1")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def sequence(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with each response in turn (an exception is raised)."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def ok(body: dict[str, Any] = TASK, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=body, headers=headers)


async def test_submit_sends_the_documented_request_and_reads_the_documented_answer() -> None:
    handler, seen = sequence(ok())
    client = client_for(handler)
    state = await client.submit("kling-v2-6", {"prompt": "p", "mode": "std"}, "mvb1-abc")
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == "/api/v1/tasks"
    assert request.headers["Idempotency-Key"] == "mvb1-abc"
    assert json.loads(request.content) == {
        "model": "kling-v2-6",
        "input": {"prompt": "p", "mode": "std"},
    }
    assert (state.task_id, state.request_id, state.status) == ("task_1", "req_1", "queued")
    assert state.cost_estimate == Decimal("0.0414")  # exact: parsed as Decimal, not float
    assert not state.terminal


async def test_get_reads_outputs_and_actual_cost_and_ignores_the_rest() -> None:
    body = {
        **DONE,
        "unexpected": {"nested": [1, 2]},
        "output": {
            "videos": [{"url": "https://cdn.example/a.mp4", "expires_at": "later"}, {"no": "url"}],
            "thumbnails": [],
        },
    }
    client = client_for(lambda r: ok(body))
    state = await client.get("task_1")
    assert state.status == "succeeded"
    assert state.terminal
    assert state.urls == ("https://cdn.example/a.mp4",)
    assert state.cost_actual == Decimal("0.0414")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("SUCCEEDED", "succeeded"),
        (" processing ", "processing"),
        ("rendering", "processing"),
        ("cancelled", "cancelled"),
    ],
)
def test_status_is_normalised_and_an_unknown_one_is_not_terminal(raw: str, status: str) -> None:
    assert parse_task({"task_id": "t", "status": raw}).status == status


def test_server_times_give_the_true_latency_when_present() -> None:
    state = parse_task(
        {**DONE, "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:04.500Z"}
    )
    assert state.server_seconds == pytest.approx(4.5)
    assert parse_task(DONE).server_seconds is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_transient_statuses_are_retried(
    status: int, decided_waits: Callable[[], list[float]]
) -> None:
    handler, seen = sequence(httpx.Response(status, json={"error": {"message": "busy"}}), ok())
    client = client_for(handler)
    state = await client.get("task_1")
    assert state.task_id == "task_1"
    assert len(seen) == 2
    assert len(decided_waits()) == 1
    assert client.counts["retry"] == 1


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("reset"),
    ],
)
async def test_network_errors_are_retried_and_a_post_keeps_its_key(error: Exception) -> None:
    handler, seen = sequence(error, ok())
    client = client_for(handler)
    await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-same")
    assert [r.headers["Idempotency-Key"] for r in seen] == ["mvb1-same", "mvb1-same"]
    assert seen[0].content == seen[1].content


async def test_a_garbled_2xx_body_is_retried() -> None:
    handler, seen = sequence(httpx.Response(200, content=b'{"task_id": "tas'), ok())
    client = client_for(handler)
    assert (await client.get("task_1")).task_id == "task_1"
    assert len(seen) == 2


async def test_retry_after_in_seconds_is_honoured(
    decided_waits: Callable[[], list[float]],
) -> None:
    handler, _ = sequence(httpx.Response(429, headers={"Retry-After": "7"}), ok())
    client = client_for(handler)
    await client.get("task_1")
    [wait] = decided_waits()
    assert 7 <= wait <= 7.7  # the server's wait, plus at most 10% jitter


async def test_retry_after_as_an_http_date_is_honoured(
    decided_waits: Callable[[], list[float]],
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    handler, _ = sequence(httpx.Response(503, headers={"Retry-After": when}), ok())
    client = client_for(handler)
    await client.get("task_1")
    [wait] = decided_waits()
    assert 25 <= wait <= 33


def test_the_wait_is_the_servers_retry_after_else_backoff() -> None:
    """The wait stamina is told by the backoff hook, computed without stamina."""
    policy = RetryPolicy(backoff=Backoff(base=0.5, cap=4.0))
    assert 7 <= policy.wait(status_error(429, **{"Retry-After": "7"}), attempt=1) <= 7.7
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= policy.wait(status_error(503, **{"Retry-After": when}), attempt=1) <= 33
    # A Retry-After longer than any wait mvbatch honours is not slept on: backoff.
    assert 0 <= policy.wait(status_error(503, **{"Retry-After": "86400"}), attempt=1) <= 0.5
    assert 0 <= policy.wait(status_error(429, **{"Retry-After": "1000000000"}), attempt=3) <= 2.0
    assert 120 <= policy.wait(status_error(429, **{"Retry-After": "120"}), attempt=1) <= 121
    # No (readable) Retry-After, or not an answer at all: backoff, by attempt.
    for error in (status_error(503, **{"Retry-After": "soon"}), httpx.ConnectError("refused")):
        assert 0 <= policy.wait(error, attempt=1) <= 0.5
        assert 0 <= policy.wait(error, attempt=9) <= 4.0


def test_the_backoff_hook_gives_stamina_the_wait_or_refuses() -> None:
    """stamina's `on`: False (give up) or the seconds to wait, Retry-After first."""
    retry_after_7 = status_error(429, **{"Retry-After": "7"})
    hook = RetryPolicy().retrying().backoff_hook
    assert 7 <= hook(retry_after_7) <= 7.7
    assert hook(status_error(503)) is not False
    assert hook(httpx.ConnectError("refused")) is not False
    assert hook(status_error(404)) is False
    assert hook(AuthError("no")) is False
    assert RetryPolicy().retrying(on=never).backoff_hook(retry_after_7) is False
    dry = RetryPolicy(budget=RetryBudget(reserve=0)).retrying()
    assert dry.backoff_hook(retry_after_7) is False
    assert dry.out_of_budget
    # A caller's `on` may name the wait itself (stamina's contract); the budget still holds.
    assert RetryPolicy().retrying(on=lambda _: 2.5).backoff_hook(retry_after_7) == 2.5
    own_wait = RetryPolicy(budget=RetryBudget(reserve=0)).retrying(on=lambda _: 2.5)
    assert own_wait.backoff_hook(retry_after_7) is False


async def test_stamina_really_waits_what_the_server_asked_for() -> None:
    """End to end, testing mode off: the Retry-After wait is slept, not the (tiny) backoff."""
    handler, seen = sequence(httpx.Response(503, headers={"Retry-After": "0.3"}), ok())
    client = client_for(handler, RetryPolicy(backoff=Backoff(base=0.01, cap=0.01)))
    with stamina.set_testing(False):
        started = time.monotonic()
        await client.get("task_1")
        waited = time.monotonic() - started
    assert len(seen) == 2
    assert 0.3 <= waited < 2.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert (
        parse_retry_after(
            "Thu, 01 Jan 2026 00:01:00 GMT", now=datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        )
        == 60.0
    )
    assert (
        parse_retry_after(
            "Thu, 01 Jan 2026 00:00:00 GMT", now=datetime(2026, 1, 2, tzinfo=UTC).timestamp()
        )
        == 0.0
    )


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0), (10_000, 4.0)]:
        assert backoff.ceiling(attempt) == ceiling
        waits = [backoff.wait(attempt) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # full jitter spreads over the whole range
    assert 0 <= backoff.wait(1, 10_000) <= 0.5  # a huge Retry-After is not slept on


def test_the_production_limits_are_the_documented_ones() -> None:
    """docs/internals.md, "Retries and errors": change both or neither."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.timeout) == (8, None) == (ATTEMPTS, None)
    assert (policy.backoff.base, policy.backoff.cap, policy.backoff.max_retry_after) == (
        0.5,
        30.0,
        120.0,
    )
    assert policy.budget is not None
    assert (policy.budget.reserve, policy.budget.ratio) == (40.0, 2.0)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            400,
            {"error": {"code": "invalid_json", "message": "The body is not JSON."}},
            "The body is not JSON.",
        ),
        (404, {"message": "No such model."}, "No such model."),
        (
            422,
            {
                "error": {
                    "message": "The input is invalid.",
                    "details": [{"field": "input.duration", "message": "7 is not one of [5, 10]"}],
                }
            },
            "The input is invalid.; input.duration: 7 is not one of [5, 10]",
        ),
        (
            422,
            {"detail": [{"loc": ["body", "input"], "msg": "field required"}]},
            "body.input: field required",
        ),
        (413, {"detail": "Too large."}, "Too large."),
        (400, {"error": "bad things"}, "bad things"),
    ],
)
async def test_other_4xx_fail_at_once_with_the_servers_message(
    status: int, body: dict[str, Any], message: str
) -> None:
    handler, seen = sequence(httpx.Response(status, json=body))
    client = client_for(handler)
    with pytest.raises(TaskRejected) as caught:
        await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert caught.value.status_code == status
    assert caught.value.message == message
    assert len(seen) == 1


def test_a_plain_text_error_body_is_shown_as_text() -> None:
    assert (
        server_message(httpx.Response(400, text="<h1>Bad   request</h1>\n"))
        == "<h1>Bad request</h1>"
    )
    assert server_message(httpx.Response(400)) == "Bad Request"


async def test_409_says_the_key_was_reused_with_other_content_and_is_not_retried() -> None:
    handler, seen = sequence(
        httpx.Response(
            409,
            json={
                "error": {
                    "code": "idempotency_conflict",
                    "message": "Key used with a different payload.",
                }
            },
        )
    )
    client = client_for(handler)
    with pytest.raises(TaskRejected) as caught:
        await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert caught.value.status_code == 409
    assert "mvb1-k was already used with different content" in caught.value.message
    assert "Key used with a different payload." in caught.value.message
    assert "--retry-failed" in caught.value.message
    assert len(seen) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_stop_with_an_auth_error(status: int) -> None:
    handler, seen = sequence(httpx.Response(status, json={"error": {"message": "bad key"}}))
    client = client_for(handler)
    with pytest.raises(AuthError, match="bad key") as caught:
        await client.get("task_1")
    assert caught.value.exit_code == 4
    assert len(seen) == 1


async def test_attempts_run_out_on_a_failing_call(
    decided_waits: Callable[[], list[float]],
) -> None:
    handler, seen = sequence(httpx.Response(503))
    client = client_for(handler)
    with (
        stamina.set_testing(True, attempts=4),
        pytest.raises(ApiUnavailable, match="failed 4 times"),
    ):
        await client.get("task_1")
    assert len(seen) == 4
    assert len(decided_waits()) == 3
    assert client.counts["retry"] == 3


async def test_a_retry_is_paid_from_the_budget_only_when_it_is_made() -> None:
    budget = RetryBudget(reserve=10)
    handler, _ = sequence(httpx.Response(503))
    client = client_for(handler, RetryPolicy(budget=budget))
    with stamina.set_testing(True, attempts=3), pytest.raises(ApiUnavailable, match="3 times"):
        await client.get("task_1")
    assert budget.tokens == 8  # two retries; the third failure ended the call, at no cost


async def test_stamina_does_not_log_retries_on_the_console_too() -> None:
    handler, _ = sequence(httpx.ReadTimeout("slow"), ok())
    with capture_logs() as events:
        await client_for(handler).get("task_1")
    assert [e["event"] for e in events] == ["api.retry"]
    assert events[0]["log_level"] == "info"
    assert events[0]["reason"] == "ReadTimeout: slow"


async def test_the_retry_budget_stops_hammering_a_dead_api() -> None:
    handler, seen = sequence(httpx.ConnectError("refused"))
    client = client_for(handler, RetryPolicy(budget=RetryBudget(reserve=10)))

    async def hammer() -> None:
        for _ in range(20):
            await client.get("task_1")

    with stamina.set_testing(True, attempts=100), pytest.raises(ApiUnavailable, match="budget"):
        await hammer()
    assert len(seen) == 11  # the first try and the 10 retries the reserve pays for


async def test_the_retry_budget_refills_with_successes() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503) if calls % 2 else ok()

    client = client_for(handler, RetryPolicy(budget=RetryBudget(reserve=3)))
    for _ in range(50):  # one failure per call, forever: sustainable
        await client.get("task_1")


async def test_a_429_tells_the_executor_to_throttle() -> None:
    handler, _ = sequence(httpx.Response(429, headers={"Retry-After": "0"}), ok())
    client = client_for(handler)
    throttled: list[bool] = []
    client.on_throttle = lambda: throttled.append(True)
    await client.get("task_1")
    assert throttled == [True]


async def test_a_post_is_never_sent_without_an_idempotency_key() -> None:
    client = client_for(lambda r: ok())
    with pytest.raises(ValueError, match="idempotency key"):
        await client.submit("kling-v2-6", {"prompt": "p"}, "")


async def test_a_replayed_post_is_flagged() -> None:
    client = client_for(lambda r: ok(TASK, **{"Idempotent-Replayed": "true"}))
    assert (await client.submit("kling-v2-6", {"prompt": "p"}, "k")).replayed


async def test_against_the_simulator_submit_poll_events_refresh() -> None:
    sim = InProcessSim(speed=0)
    async with sim.api() as client:
        body = {"prompt": "A cinematic shot of a car", "size": "16:9", "duration": 5, "mode": "std"}
        first = await client.submit("kling-v2-6", body, "mvb1-sim")
        again = await client.submit("kling-v2-6", body, "mvb1-sim")
        assert first.task_id == again.task_id
        assert again.replayed
        assert first.cost_estimate == Decimal("0.0414")
        state = await client.get(first.task_id)
        assert state.status == "succeeded"
        assert state.urls
        assert state.server_seconds is not None
        events = await client.events(first.task_id)
        assert [e["status"] for e in events][-1] == "succeeded"
        assert (await client.refresh_outputs(first.task_id))[0].startswith("http://sim.test/")
        with pytest.raises(TaskRejected) as caught:
            await client.submit("kling-v2-6", {**body, "duration": 10}, "mvb1-sim")
        assert caught.value.status_code == 409
        with pytest.raises(TaskRejected, match=r"input\.duration"):
            await client.submit("kling-v2-6", {**body, "duration": 7}, "mvb1-bad")
    stats = await sim.stats()
    assert stats["billing"]["by_idempotency_key"]["mvb1-sim"]["charges"] == 1
    assert "mvb1-bad" not in stats["billing"]["by_idempotency_key"]


async def test_a_wrong_key_against_the_simulator_is_an_auth_error() -> None:
    sim = InProcessSim(speed=0)
    async with sim.api(key="not-a-key") as client:
        with pytest.raises(AuthError):
            await client.get("task_x")


async def test_the_post_body_is_canonical_json_whatever_the_key_order() -> None:
    handler, seen = sequence(ok())
    client = client_for(handler)
    await client.submit("m", {"b": 1, "a": {"z": "é", "y": 2}}, "mvb1-k")
    await client.submit("m", {"a": {"y": 2, "z": "é"}, "b": 1}, "mvb1-k")
    assert seen[0].content == seen[1].content
    assert seen[0].content == '{"input":{"a":{"y":2,"z":"é"},"b":1},"model":"m"}'.encode()
    assert seen[0].headers["Content-Type"] == "application/json"


async def test_a_4xx_after_a_retry_says_the_post_may_have_been_sent() -> None:
    for first in (
        httpx.ReadTimeout("slow"),
        httpx.Response(503),
        httpx.Response(200, content=b'{"task_id": "tas'),  # the answer broke, not the POST
    ):
        handler, seen = sequence(first, httpx.Response(409, json={"error": "key reused"}))
        client = client_for(handler)
        with pytest.raises(TaskRejected) as caught:
            await client.submit("m", {"prompt": "p"}, "mvb1-k")
        assert caught.value.maybe_sent
        assert len(seen) == 2
    for answers in (
        [httpx.Response(422, json={"error": "bad"})],
        # A 429 turned the POST away: nothing was created by it.
        [httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(409)],
    ):
        handler, seen = sequence(*answers)
        client = client_for(handler)
        with pytest.raises(TaskRejected) as caught:
            await client.submit("m", {"prompt": "p"}, "mvb1-k")
        assert not caught.value.maybe_sent
        assert len(seen) == len(answers)


def test_numeric_task_and_request_ids_are_accepted() -> None:
    state = parse_task({"task_id": 12345, "request_id": 7, "status": "queued"})
    assert (state.task_id, state.request_id) == ("12345", "7")


async def test_events_is_one_attempt_with_a_deadline_and_keeps_text() -> None:
    budget = RetryBudget()
    handler, seen = sequence(httpx.Response(503))
    client = client_for(handler, RetryPolicy(budget=budget))
    with pytest.raises(ApiUnavailable):
        await client.events("task_1")
    assert len(seen) == 1
    assert budget.tokens == budget.reserve  # no retry budget spent
    handler, _ = sequence(httpx.Response(200, content=b"not json " + b"x" * 100_000))
    client = client_for(handler)
    text = await client.events("task_1")
    assert isinstance(text, str)
    assert text.startswith("not json")
    assert len(text) <= 4096

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return ok()

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow), base_url="https://api.test/")
    client = ApiClient(http)
    with pytest.raises(ApiUnavailable, match="did not answer"):
        await client.events("task_1", deadline=0.05)


async def test_server_messages_echoing_a_credential_are_redacted() -> None:
    response = httpx.Response(
        400,
        json={"error": {"message": "bad request; headers: Authorization=Bearer mv_live_abc123XYZ"}},
    )
    message = server_message(response)
    assert "mv_live_abc123XYZ" not in message
    assert "bad request" in message


# ------------------------------------------------------------------ a wrong base URL

ROUTE_MISSES = [
    pytest.param(httpx.Response(404, text="<html><h1>404 Not Found</h1></html>"), id="nginx-html"),
    pytest.param(httpx.Response(404, text="404 page not found\n"), id="go-text"),
    pytest.param(httpx.Response(404), id="empty"),
    pytest.param(httpx.Response(404, json={"detail": "Not Found"}), id="fastapi"),
    pytest.param(
        httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found"}}),
        id="simulator-route-miss",
    ),
    pytest.param(
        httpx.Response(
            404, json={"status": 404, "error": "Not Found", "path": "/tasks", "timestamp": "x"}
        ),
        id="spring",
    ),
    pytest.param(httpx.Response(405, headers={"Allow": "GET, HEAD"}), id="405"),
    pytest.param(
        httpx.Response(405, json={"error": {"code": "method_not_allowed", "message": "x"}}),
        id="405-json",
    ),
]


@pytest.mark.parametrize("answer", ROUTE_MISSES)
async def test_a_post_to_a_missing_tasks_endpoint_is_a_configuration_error(
    answer: httpx.Response,
) -> None:
    from mvbatch.errors import ConfigError

    handler, seen = sequence(answer)
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://127.0.0.1:8799/"
    )
    client = ApiClient(http)
    with pytest.raises(ConfigError) as caught:
        await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert len(seen) == 1  # not retried
    assert caught.value.exit_code == 4
    message = caught.value.message
    assert f"POST http://127.0.0.1:8799/tasks answered {answer.status_code}" in message
    assert "MINDVIDEO_BASE_URL" in message
    assert "http://127.0.0.1:8799/api/v1" in message  # what was expected


async def test_a_redirected_post_is_not_followed_and_names_where_it_points() -> None:
    from mvbatch.errors import ConfigError

    handler, seen = sequence(
        httpx.Response(308, headers={"Location": "https://api.test/api/v1/tasks"})
    )
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://api.test/api/v1/"
    )
    client = ApiClient(http)
    with pytest.raises(ConfigError) as caught:
        await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert len(seen) == 1
    message = caught.value.message
    assert "POST http://api.test/api/v1/tasks answered 308" in message
    assert "MINDVIDEO_BASE_URL should be https://api.test/api/v1" in message


async def test_a_404_naming_what_the_api_does_not_know_is_still_a_rejection() -> None:
    handler, _ = sequence(
        httpx.Response(
            404, json={"error": {"code": "model_not_found", "message": "Unknown model 'x'."}}
        )
    )
    client = client_for(handler)
    with pytest.raises(TaskRejected, match="Unknown model"):
        await client.submit("x", {"prompt": "p"}, "mvb1-k")


async def test_a_wrong_url_that_already_ends_in_api_v1_names_the_host_to_check() -> None:
    from mvbatch.errors import ConfigError

    handler, _ = sequence(httpx.Response(404, text="<h1>Not Found</h1>"))
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="https://user:secret@wrong.test/api/v1/"
    )
    client = ApiClient(http)
    with pytest.raises(ConfigError) as caught:
        await client.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    message = caught.value.message
    assert "POST https://wrong.test/api/v1/tasks answered 404" in message
    assert "secret" not in message  # credentials in the URL are never shown


async def test_a_poll_answered_by_something_else_stops_only_before_the_api_answered() -> None:
    from mvbatch.errors import ConfigError

    html = httpx.Response(404, text="<html>Not Found</html>")
    handler, seen = sequence(html)
    client = client_for(handler)
    with pytest.raises(ConfigError, match=r"GET https://api.test/api/v1/tasks/task_1 answered 404"):
        await client.get("task_1")
    assert len(seen) == 1
    # Once the API has answered, a 404 to a poll is the task not being
    # visible (yet): the executor's not-found backoff decides, as before.
    handler, _ = sequence(ok(), html)
    client = client_for(handler)
    await client.get("task_1")
    with pytest.raises(TaskRejected):
        await client.get("task_1")
    # A task-not-found answer from the API itself is never a configuration error.
    handler, _ = sequence(httpx.Response(404, json={"error": {"message": "No task 'task_1'."}}))
    client = client_for(handler)
    with pytest.raises(TaskRejected, match="No task"):
        await client.get("task_1")
