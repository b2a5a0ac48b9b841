"""The executor against the in-process simulator and scripted APIs (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from run_helpers import (
    InProcessSim,
    charges_by_key,
    planned,
    prepare_ledger,
    shots,
    write_manifest,
)
from structlog.testing import capture_logs

from mvbatch.api.client import ApiClient
from mvbatch.api.retry import Backoff
from mvbatch.errors import AuthError, FileChangedError, UsageError
from mvbatch.ledger import Ledger, SqliteLedger, TaskRow, open_ledger
from mvbatch.plan.keys import retry_key
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.run import follow
from mvbatch.run.budget import effective_cap, preflight
from mvbatch.run.concurrency import AdaptiveLimit
from mvbatch.run.executor import Executor
from mvbatch.run.polling import LatencyBook, latency_class
from mvbatch.run.results import RunResult

pytestmark = pytest.mark.anyio

PRO = {"mode": "pro", "duration": 5, "size": "16:9"}  # kling-v2-6 pro: no documented rate


def plan_of(tmp_path: Path, count: int = 4, **shot: Any) -> Plan:
    return planned(write_manifest(tmp_path, "t", shots(count, **shot)), tmp_path / "state")


async def run(
    tmp_path: Path, plan: Plan, api: ApiClient, **options: Any
) -> tuple[RunResult, Ledger]:
    ledger = prepare_ledger(tmp_path / "state", plan)
    async with api:
        executor = Executor(plan, ledger, api, env="sim", cap=options.pop("cap", None), **options)
        return await executor.run(), ledger


def quick_book(plan: Plan, seconds: float = 0.05) -> LatencyBook:
    """A latency history that makes tasks of the plan be polled within a fraction of a second."""
    return LatencyBook(
        {
            latency_class(t.estimate.price_class, t.estimate.seconds): [seconds] * 10
            for t in plan.tasks
        }
    )


AsyncHandler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def scripted(handler: AsyncHandler | Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
        base_url="https://api.test/api/v1/",
    )
    return ApiClient(http)


def task_body(
    task_id: str, status: str = "succeeded", cost: float = 0.0414, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "req_" + task_id,
        "task_id": task_id,
        "status": status,
        "cost_estimate": cost,
    }
    if status == "succeeded":
        body |= {"cost_actual": cost, "output": {"videos": [{"url": f"https://cdn/{task_id}"}]}}
    return body | extra


# ------------------------------------------------------------------ the happy path


async def test_every_task_is_submitted_once_and_every_step_recorded(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 4)
    sim = InProcessSim(speed=0)
    result, ledger = await run(tmp_path, plan, sim.api())
    assert result.counts == {"succeeded": 4}
    assert result.failed == 0
    assert not result.held
    assert result.spent == Decimal("0.1656") == result.committed
    assert charges_by_key(await sim.stats()) == {t.key: 1 for t in plan.tasks}
    for task in plan.tasks:
        row = ledger.task("sim", task.key)
        assert row is not None
        assert row.status == "succeeded"
        assert row.task_id
        assert row.cost_actual == Decimal("0.0414")
        assert row.submit_key == task.key
        assert [e["status"] for e in ledger.events("sim", task.key)] == ["submitting", "succeeded"]
        assert len(ledger.outputs("sim", task.key)) == 1
    # An instant task answered "succeeded" with its output at the POST: no GET needed.
    assert result.requests.get("GET", 0) == 0


async def test_tasks_that_take_time_are_polled_and_their_progress_recorded(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 3)
    sim = InProcessSim(speed=4)  # queued for 100 ms or more: a stalled machine still sees it
    result, ledger = await run(tmp_path, plan, sim.api(), latencies=quick_book(plan))
    assert result.counts == {"succeeded": 3}
    for task in plan.tasks:
        statuses = [e["status"] for e in ledger.events("sim", task.key)]
        assert statuses[0] == "submitting"
        assert statuses[1] in ("queued", "processing")
        assert statuses[-1] == "succeeded"
        row = ledger.task("sim", task.key)
        assert row is not None
        assert 1 <= row.polls <= 10
    assert ledger.latencies("sim")  # learned for the next run
    assert charges_by_key(await sim.stats()) == {t.key: 1 for t in plan.tasks}


# ------------------------------------------------------------------ resuming


async def test_intent_without_a_task_id_is_posted_again_under_the_same_key(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 3)
    sim = InProcessSim(speed=0)
    ledger = prepare_ledger(tmp_path / "state", plan)
    first = plan.tasks[0]
    # A previous run recorded its intent, POSTed, and died before recording the answer.
    ledger.record_intent(
        "sim", first.key, previous="planned", submit_key=first.key, attempt=0, run_id=None
    )
    async with sim.api() as api:
        payload = first.payload()
        await api.submit(payload["model"], payload["input"], first.key)
    ledger.close()
    result, ledger = await run(tmp_path, plan, sim.api())
    assert result.counts == {"succeeded": 3}
    assert charges_by_key(await sim.stats()) == {t.key: 1 for t in plan.tasks}
    row = ledger.task("sim", first.key)
    assert row is not None
    assert row.submissions == 2


async def test_a_task_in_flight_is_polled_and_never_posted_again(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 2)
    ledger = prepare_ledger(tmp_path / "state", plan)
    running = plan.tasks[0]
    ledger.record_intent(
        "sim", running.key, previous="planned", submit_key=running.key, attempt=0, run_id=None
    )
    ledger.record_submitted(
        "sim",
        running.key,
        task_id="task_running",
        request_id="r",
        status="processing",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.close()
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(request.headers["Idempotency-Key"])
            return httpx.Response(200, json=task_body("task_new"))
        assert request.url.path == "/api/v1/tasks/task_running"
        return httpx.Response(200, json=task_body("task_running"))

    result, ledger = await run(tmp_path, plan, scripted(handler), latencies=quick_book(plan))
    assert posted == [plan.tasks[1].key]
    assert result.counts == {"succeeded": 2}
    assert ledger.task("sim", running.key).task_id == "task_running"  # type: ignore[union-attr]


async def test_a_task_the_api_no_longer_knows_is_failed_not_resubmitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "NOT_FOUND_SPAN", 0.3)
    monkeypatch.setattr(follow, "NOT_FOUND_BACKOFF", Backoff(base=0.02, cap=0.1))
    plan = plan_of(tmp_path, 1)
    ledger = prepare_ledger(tmp_path / "state", plan)
    key = plan.tasks[0].key
    ledger.record_intent("sim", key, previous="planned", submit_key=key, attempt=0, run_id=None)
    ledger.record_submitted(
        "sim",
        key,
        task_id="task_gone",
        request_id=None,
        status="queued",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.close()
    gets: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        gets.append(time.monotonic())
        return httpx.Response(404, json={"error": {"message": "No task 'task_gone'."}})

    result, ledger = await run(tmp_path, plan, scripted(handler), latencies=quick_book(plan))
    row = ledger.task("sim", key)
    assert row is not None
    assert row.status == "failed"
    assert "the server no longer knows the task id task_gone" in (row.error or "")
    assert "No task 'task_gone'." in (row.error or "")
    assert result.failed == 1
    assert len(gets) >= 5  # asked again and again over NOT_FOUND_SPAN before giving up
    assert row.committed == Decimal("0.0414")  # it may still have been charged


@pytest.mark.parametrize("status", [404, 410, 400])
async def test_a_4xx_on_one_poll_does_not_fail_a_running_task(tmp_path: Path, status: int) -> None:
    plan = plan_of(tmp_path, 1)
    gets: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=task_body("task_1", "queued"))
        gets.append(request.url.path)
        if len(gets) <= 2:
            return httpx.Response(status, json={"error": {"message": "task not found"}})
        return httpx.Response(200, json=task_body("task_1"))

    result, _ = await run(tmp_path, plan, scripted(handler), latencies=quick_book(plan))
    assert result.counts == {"succeeded": 1}
    assert len(gets) == 3


async def test_a_task_that_never_ends_is_let_go_after_max_wait_and_picked_up_later(
    tmp_path: Path,
) -> None:
    plan = plan_of(tmp_path, 2)
    stuck = plan.tasks[0].key
    posts: list[str] = []
    ended = False

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            key = request.headers["Idempotency-Key"]
            posts.append(key)
            task_id = "task_stuck" if key == stuck else "task_ok"
            return httpx.Response(200, json=task_body(task_id, "queued"))
        if request.url.path.endswith("task_stuck") and not ended:
            return httpx.Response(200, json=task_body("task_stuck", "processing"))
        return httpx.Response(200, json=task_body(request.url.path.rsplit("/", 1)[1]))

    with capture_logs() as logs:
        result, ledger = await run(
            tmp_path, plan, scripted(handler), latencies=quick_book(plan), max_wait=0.4
        )
    assert result.counts == {"succeeded": 1, "processing": 1}
    assert result.pending == 1
    assert result.overdue == ("s0",)
    assert result.overdue_message is not None
    assert "not submitted again" in result.overdue_message
    assert [e["event"] for e in logs].count("task.overdue") == 1
    row = ledger.task("sim", stuck)
    assert row is not None
    assert row.status == "processing"  # still in flight in the ledger: nothing is lost
    assert row.task_id == "task_stuck"
    ledger.close()

    ended = True  # the server finishes it; the next run follows it without a POST
    result, ledger = await run(tmp_path, plan, scripted(handler), latencies=quick_book(plan))
    assert result.counts == {"succeeded": 2}
    assert result.overdue == ()
    assert sorted(posts) == sorted(t.key for t in plan.tasks)  # each POSTed once, ever


async def test_an_undocumented_status_reads_as_running_and_is_reported_once(
    tmp_path: Path,
) -> None:
    plan = plan_of(tmp_path, 1)
    gets: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=task_body("task_1", "queued"))
        gets.append(request.url.path)
        return httpx.Response(200, json=task_body("task_1", "Expired"))

    with capture_logs() as logs:
        result, ledger = await run(
            tmp_path, plan, scripted(handler), latencies=quick_book(plan), max_wait=0.4
        )
    unknown = [e for e in logs if e["event"] == "task.unknown_status"]
    assert len(unknown) == 1
    assert unknown[0]["status"] == "Expired"
    assert unknown[0]["read_as"] == "processing"
    assert result.overdue == ("s0",)
    assert gets  # polled on, not taken for an end (overdue, still processing)
    row = ledger.task("sim", plan.tasks[0].key)
    assert row is not None
    assert row.status == "processing"


# ------------------------------------------------------------------ maybe-sent refusals


async def test_a_4xx_to_a_resent_post_is_failed_with_its_cost_not_rejected(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 1)
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request.headers["Idempotency-Key"])
        if len(posts) == 1:
            raise httpx.ReadTimeout("the answer was lost")
        return httpx.Response(409, json={"error": {"message": "key reused"}})

    result, ledger = await run(tmp_path, plan, scripted(handler))
    row = ledger.task("sim", plan.tasks[0].key)
    assert row is not None
    assert row.status == "failed"
    assert row.committed == plan.tasks[0].estimate.cost
    assert "the server refused a re-send of this task (HTTP 409" in (row.error or "")
    assert "may have created and charged it" in (row.error or "")
    assert result.committed == plan.tasks[0].estimate.cost
    assert len(posts) == 2


async def test_a_4xx_to_an_earlier_runs_intent_is_failed_with_its_cost(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 1)
    ledger = prepare_ledger(tmp_path / "state", plan)
    key = plan.tasks[0].key
    ledger.record_intent("sim", key, previous="planned", submit_key=key, attempt=0, run_id=None)
    ledger.close()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": {"message": "content changed"}})

    result, ledger = await run(tmp_path, plan, scripted(handler))
    row = ledger.task("sim", key)
    assert row is not None
    assert row.status == "failed"
    assert row.committed == plan.tasks[0].estimate.cost
    assert "refused a re-send" in (row.error or "")
    assert result.failed == 1


# ------------------------------------------------------------------ failures


async def test_a_failed_task_keeps_the_servers_message_and_events_and_is_not_resubmitted(
    tmp_path: Path,
) -> None:
    plan = plan_of(tmp_path, 2)
    sim = InProcessSim(speed=0, rates={"generation_failure": 1.0})
    result, ledger = await run(tmp_path, plan, sim.api())
    assert result.counts == {"failed": 2}
    assert len(result.failures) == 2
    for task in plan.tasks:
        row = ledger.task("sim", task.key)
        assert row is not None
        assert row.status == "failed"
        assert row.cost_actual == 0
        assert row.error
        assert "ended failed" not in row.error
        assert (task.shot, task.key, row.error) in result.failures
        assert row.server_events
        assert row.server_events[-1]["status"] == "failed"
    ledger.close()
    # Run again: the failed tasks are not sent again (their key would only
    # return the same failed task).
    again, ledger = await run(tmp_path, plan, sim.api())
    assert again.submitted == 0
    assert again.requests == {}
    assert again.failed == 2


async def test_retry_failed_resubmits_under_a_new_derived_key(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 2)
    sim = InProcessSim(speed=0, rates={"generation_failure": 1.0})
    _, ledger = await run(tmp_path, plan, sim.api())
    ledger.close()
    await sim.post("/_sim/faults", {"generation_failure": 0.0})
    result, ledger = await run(tmp_path, plan, sim.api(), retry_failed=True)
    assert result.counts == {"succeeded": 2}
    charges = charges_by_key(await sim.stats())
    for task in plan.tasks:
        row = ledger.task("sim", task.key)
        assert row is not None
        assert row.attempt == 1
        assert row.submit_key == retry_key(task.key, 1) != task.key
        assert charges[task.key] == 1
        assert charges[row.submit_key] == 1
        assert [e["status"] for e in ledger.events("sim", task.key)] == [
            "submitting",
            "failed",
            "submitting",
            "succeeded",
        ]


async def test_a_rejected_request_keeps_the_servers_message_and_is_not_retried(
    tmp_path: Path,
) -> None:
    plan = plan_of(tmp_path, 1)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            422,
            json={
                "error": {
                    "message": "The input is invalid.",
                    "details": [{"field": "input.prompt", "message": "too long"}],
                }
            },
        )

    result, ledger = await run(tmp_path, plan, scripted(handler))
    row = ledger.task("sim", plan.tasks[0].key)
    assert row is not None
    assert row.status == "rejected"
    assert row.error == "The input is invalid.; input.prompt: too long"
    assert calls == 1
    assert result.failed == 1
    assert result.committed == 0


async def test_a_key_reused_with_other_content_fails_with_a_409_explained(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 1)
    sim = InProcessSim(speed=0)
    key = plan.tasks[0].key
    async with sim.api() as api:  # someone used our key for something else
        await api.submit("kling-v2-6", {"prompt": "something else"}, key)
    _, ledger = await run(tmp_path, plan, sim.api())
    row = ledger.task("sim", key)
    assert row is not None
    assert row.status == "rejected"
    assert "already used with different content" in (row.error or "")
    assert charges_by_key(await sim.stats()) == {key: 1}  # only the other request


async def test_an_auth_error_stops_the_run_and_keeps_the_intent(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 3)
    sim = InProcessSim(speed=0)
    with pytest.raises(AuthError):
        await run(tmp_path, plan, sim.api(key="bad-key"))
    with open_ledger(tmp_path / "state") as ledger:
        statuses = sorted(r.status for r in ledger.tasks("sim", "t"))
    assert statuses.count("planned") >= 1
    assert "succeeded" not in statuses
    assert (await sim.stats())["billing"]["charges"] == 0


async def test_a_local_file_changed_since_the_plan_stops_the_run_before_its_intent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_of(tmp_path, 3)
    changed = FileChangedError("ref.jpg")

    def payload(self: PlannedTask) -> dict[str, Any]:
        raise changed

    monkeypatch.setattr(PlannedTask, "payload", payload)
    sim = InProcessSim(speed=0)
    with pytest.raises(UsageError) as raised:
        await run(tmp_path, plan, sim.api())
    assert raised.value.message == (
        "ref.jpg changed since it was planned; plan again: nothing more was submitted"
    )
    assert raised.value.hint == "run `mvbatch plan` again, then `mvbatch run`"
    with open_ledger(tmp_path / "state") as ledger:
        assert {r.status for r in ledger.tasks("sim", "t")} == {"planned"}  # no intent either
    assert (await sim.stats())["requests"] == {}


# ------------------------------------------------------------------ order and concurrency


async def test_the_first_post_of_each_price_class_goes_alone(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "t", [*shots(4, "std"), *shots(4, "pro", input=PRO)])
    plan = planned(path, tmp_path / "state")
    events: list[tuple[str, str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        mode = body["input"]["mode"]
        key = request.headers["Idempotency-Key"]
        events.append(("start", mode, key))
        await asyncio.sleep(0.01)
        events.append(("end", mode, key))
        cost = 0.0414 if mode == "std" else 0.058
        return httpx.Response(200, json=task_body("task_" + key[-6:], cost=cost))

    result, ledger = await run(tmp_path, plan, scripted(handler), concurrency=8)
    assert result.counts == {"succeeded": 8}
    for mode in ("std", "pro"):
        mine = [(kind, key) for kind, m, key in events if m == mode]
        first_key = mine[0][1]
        assert mine[1] == ("end", first_key)  # nothing else of the class before it answered
    # The assumed pro rate was replaced by the one the server taught.
    assert ledger.learned_rates("sim") == {
        'kling-v2-6 {"audio":false,"mode":"pro"}': Decimal("0.0116")
    }


async def test_a_wave_of_intents_is_one_ledger_step_committed_before_its_posts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tasks that start together record their intents in one transaction; each
    POST still goes only once its own intent is committed."""
    plan = plan_of(tmp_path, 8)
    steps: list[list[str]] = []
    record_intents = SqliteLedger.record_intents

    def spy(self: SqliteLedger, env: str, intents: Any, **options: Any) -> Any:
        steps.append([i.key for i in intents])
        return record_intents(self, env, intents, **options)

    monkeypatch.setattr(SqliteLedger, "record_intents", spy)
    seen: dict[str, tuple[str, str]] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        with SqliteLedger(tmp_path / "state") as look:  # another connection: committed only
            row = look.task("sim", key)
            assert row is not None
            seen[key] = (row.status, row.submit_key)
        return httpx.Response(200, json=task_body("task_" + key[-6:]))

    result, _ = await run(tmp_path, plan, scripted(handler), concurrency=8)
    assert result.counts == {"succeeded": 8}
    # The first POST of the class goes alone; the other seven start together.
    assert [len(step) for step in steps] == [1, 7]
    assert sorted(k for step in steps for k in step) == sorted(t.key for t in plan.tasks)
    assert seen == {t.key: ("submitting", t.key) for t in plan.tasks}


async def test_no_more_tasks_in_flight_than_the_concurrency(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 12)
    in_flight = peak = 0
    full = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        # The first three wait for each other (however slowly they arrive);
        # a fourth would show up here before any of them answers.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(full.wait(), 10)
        in_flight -= 1
        return httpx.Response(200, json=task_body("task_x"))

    result, _ = await run(tmp_path, plan, scripted(handler), concurrency=3)
    assert result.counts == {"succeeded": 12}
    assert peak == 3


def test_adaptive_limit_halves_on_429_and_recovers_one_step_at_a_time() -> None:
    now = [0.0]
    limit = AdaptiveLimit(16, clock=lambda: now[0])
    assert limit.throttled()
    assert limit.limit == 8
    assert not limit.throttled()
    assert limit.limit == 8
    now[0] += 5
    assert limit.throttled()
    assert limit.limit == 4
    grown = [limit.succeeded() for _ in range(4)]
    assert grown == [False, False, False, True]
    assert limit.limit == 5
    for _ in range(200):
        limit.succeeded()
    assert limit.limit == 16


async def test_a_429_lowers_the_concurrency(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 6)
    limited = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if limited and request.method == "POST":
            limited.clear()
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(
            200, json=task_body("task_" + request.headers["Idempotency-Key"][-6:])
        )

    with capture_logs() as logs:
        result, _ = await run(tmp_path, plan, scripted(handler), concurrency=8)
    assert result.counts == {"succeeded": 6}
    reduced = [e for e in logs if e["event"] == "concurrency.reduced"]
    assert reduced
    assert reduced[0]["limit"] == 4


# ------------------------------------------------------------------ budget


async def test_no_submission_takes_committed_spend_over_the_cap(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 6)
    sim = InProcessSim(speed=0)
    cap = Decimal("0.1")  # room for two tasks of 0.0414
    result, ledger = await run(tmp_path, plan, sim.api(), cap=cap, concurrency=4)
    assert result.counts == {"succeeded": 2, "planned": 4}
    assert result.held == 4
    assert result.committed <= cap
    stats = await sim.stats()
    assert Decimal(str(stats["billing"]["net"])) <= cap
    assert sum(1 for r in ledger.tasks("sim", "t") if r.status == "planned") == 4


async def test_an_undocumented_rate_is_learned_and_used_by_the_next_plan(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 3, input=PRO)
    assert {t.estimate.source for t in plan.tasks} == {"assumed"}
    sim = InProcessSim(speed=0)
    result, ledger = await run(tmp_path, plan, sim.api(), concurrency=3)
    assert result.counts == {"succeeded": 3}
    ledger.close()
    again = plan_of(tmp_path, 3, input=PRO)
    assert {t.estimate.source for t in again.tasks} == {"learned"}
    assert {t.estimate.cost for t in again.tasks} == {Decimal("0.058")}


# ------------------------------------------------------------------ hooks and stopping


async def test_the_success_hook_sees_each_row_and_its_errors_are_not_fatal(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 3)
    sim = InProcessSim(speed=0)
    seen: list[TaskRow] = []

    async def hook(row: TaskRow) -> None:
        seen.append(row)
        if len(seen) == 2:
            raise OSError("disk full")

    with capture_logs() as logs:
        result, _ = await run(tmp_path, plan, sim.api(), on_succeeded=hook)
    assert result.counts == {"succeeded": 3}
    assert sorted(r.key for r in seen) == sorted(t.key for t in plan.tasks)
    assert all(r.status == "succeeded" and r.task_id for r in seen)
    assert [e["error"] for e in logs if e["event"] == "task.hook_failed"] == ["OSError: disk full"]


async def test_stopping_submits_nothing_more_and_keeps_what_was_sent(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 5)
    ledger = prepare_ledger(tmp_path / "state", plan)
    executor: Executor | None = None

    def handler(request: httpx.Request) -> httpx.Response:
        assert executor is not None
        executor.request_stop()  # Ctrl-C while the first POST is on the wire
        return httpx.Response(200, json=task_body("task_1", status="queued"))

    async with scripted(handler) as api:
        executor = Executor(plan, ledger, api, env="sim", cap=None, concurrency=1)
        result = await executor.run()
    assert result.interrupted
    assert result.submitted == 1
    statuses = [r.status for r in ledger.tasks("sim", "t")]
    assert statuses == ["queued", "planned", "planned", "planned", "planned"]


# ------------------------------------------------------------------ preflight


def test_preflight_counts_what_a_run_will_do(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "t", [*shots(4), *shots(2, "pro", input=PRO)])
    plan = planned(path, tmp_path / "state")
    ledger = prepare_ledger(tmp_path / "state", plan)
    keys = [t.key for t in plan.tasks]
    ledger.record_intent(
        "sim", keys[0], previous="planned", submit_key=keys[0], attempt=0, run_id=None
    )
    ledger.record_intent(
        "sim", keys[1], previous="planned", submit_key=keys[1], attempt=0, run_id=None
    )
    ledger.record_finished(
        "sim",
        keys[1],
        previous="submitting",
        status="failed",
        cost_estimate=Decimal("0.0414"),
        cost_actual=Decimal(0),
        error="x",
        urls=[],
        polls=1,
        latency=None,
        run_id=None,
        task_id="t1",
    )
    rows = {r.key: r for r in ledger.tasks("sim", "t")}
    check = preflight(plan, rows, Decimal(1))
    assert (check.new, check.resume, check.failed, check.retry) == (4, 1, 1, 0)
    assert check.committed == Decimal("0.0414")  # the unanswered POST, at our estimate
    assert check.new_cost == Decimal("0.0828") + 2 * Decimal("0.069")
    assert check.assumed_classes == ('kling-v2-6 {"audio":false,"mode":"pro"}',)
    # Certain: committed + the two documented new tasks + ONE task of the assumed class.
    assert check.floor == Decimal("0.0414") + Decimal("0.0828") + Decimal("0.069")
    retrying = preflight(plan, rows, Decimal(1), retry_failed=True)
    assert (retrying.retry, retrying.retry_cost, retrying.failed) == (1, Decimal("0.0414"), 0)
    assert not check.over_cap
    assert not check.uncertain
    tight = preflight(plan, rows, Decimal("0.2"))
    assert tight.uncertain
    assert not tight.over_cap
    assert preflight(plan, rows, Decimal("0.1")).over_cap


def test_the_lowest_cap_wins() -> None:
    assert effective_cap(Decimal(5), Decimal(3)) == Decimal(3)
    assert effective_cap(None, Decimal(3)) == Decimal(3)
    assert effective_cap(Decimal(5), None) == Decimal(5)
    assert effective_cap(None, None) is None


async def test_retry_failed_keeps_the_failed_attempts_cost_committed(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 1)
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(request.headers["Idempotency-Key"])
            return httpx.Response(200, json=task_body(f"task_{len(posts)}", "queued", cost=0.05))
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"events": []})
        task_id = request.url.path.rsplit("/", 1)[1]
        if task_id == "task_1":
            return httpx.Response(200, json=task_body(task_id, "failed", cost=0.05))
        return httpx.Response(200, json=task_body(task_id, cost=0.05))

    await run(tmp_path, plan, scripted(handler), latencies=quick_book(plan))
    result, ledger = await run(
        tmp_path, plan, scripted(handler), latencies=quick_book(plan), retry_failed=True
    )
    row = ledger.task("sim", plan.tasks[0].key)
    assert row is not None
    assert row.status == "succeeded"
    assert row.cost_prior == Decimal("0.05")
    assert row.committed == Decimal("0.10")
    assert result.committed == Decimal("0.10")
    check = preflight(plan, {row.key: row}, None)
    assert check.committed == Decimal("0.10")


async def test_a_probe_without_a_price_holds_its_class_until_it_ends(tmp_path: Path) -> None:
    plan = planned(write_manifest(tmp_path, "t", shots(3, "pro", input=PRO)), tmp_path / "state")
    events: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            key = request.headers["Idempotency-Key"]
            events.append("post")
            body = task_body("task_" + key[-6:], "queued")
            del body["cost_estimate"]
            return httpx.Response(200, json=body)
        events.append("done")
        return httpx.Response(200, json=task_body(request.url.path.rsplit("/", 1)[1], cost=0.058))

    result, ledger = await run(
        tmp_path, plan, scripted(handler), latencies=quick_book(plan), concurrency=8
    )
    assert result.counts == {"succeeded": 3}
    assert events[:2] == ["post", "done"]  # the others waited for the probe to end
    assert ledger.learned_rates("sim") == {
        'kling-v2-6 {"audio":false,"mode":"pro"}': Decimal("0.0116")
    }


async def test_tasks_dropped_from_the_manifest_are_followed_or_reported(tmp_path: Path) -> None:
    old = plan_of(tmp_path, 3)
    ledger = prepare_ledger(tmp_path / "state", old)
    in_flight, lost = old.tasks[1], old.tasks[2]
    for task in (in_flight, lost):
        ledger.record_intent(
            "sim", task.key, previous="planned", submit_key=task.key, attempt=0, run_id=None
        )
    ledger.record_submitted(
        "sim",
        in_flight.key,
        task_id="task_old",
        request_id=None,
        status="queued",
        cost_estimate=Decimal("0.0414"),
        run_id=None,
    )
    ledger.close()
    new = plan_of(tmp_path, 1)
    assert new.tasks[0].key == old.tasks[0].key
    hooked: list[str] = []

    async def hook(row: TaskRow) -> None:
        hooked.append(row.key)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=task_body("task_new", "queued"))
        return httpx.Response(200, json=task_body(request.url.path.rsplit("/", 1)[1]))

    with capture_logs() as logs:
        result, ledger = await run(
            tmp_path, new, scripted(handler), latencies=quick_book(old), on_succeeded=hook
        )
    row = ledger.task("sim", in_flight.key)
    assert row is not None
    assert row.status == "succeeded"
    assert sorted(hooked) == sorted([new.tasks[0].key, in_flight.key])
    assert result.unfollowed == (lost.shot,)
    assert result.unfollowed_message is not None
    assert f"restore shot {lost.shot}" in result.unfollowed_message
    assert "1 task(s) from an earlier version of the manifest may have been charged" in (
        result.unfollowed_message
    )
    assert any(e["event"] == "run.unfollowed" for e in logs)


async def test_a_payload_that_reads_local_files_is_built_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing and encoding a file (tens of MB as a data URI) never blocks the loop;
    a payload without one is a small dict, built where it is sent."""
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 an image")
    image = {"id": "image", "model": "wan2-6-i2v-flash", "input": {"image_urls": ["@a.jpg"]}}
    plan = planned(write_manifest(tmp_path, "t", [image, *shots(1, "text")]), tmp_path / "state")
    threads: dict[str, str] = {}
    build = PlannedTask.payload

    def payload(self: PlannedTask) -> dict[str, Any]:
        threads[self.shot] = threading.current_thread().name
        return build(self)

    monkeypatch.setattr(PlannedTask, "payload", payload)
    result, _ = await run(tmp_path, plan, InProcessSim(speed=0).api())
    assert result.counts == {"succeeded": 2}
    assert threads["image"] != threading.main_thread().name
    assert threads["text0"] == threading.main_thread().name


async def test_committed_at_the_end_is_the_ledgers_when_the_server_reprices_a_class(
    tmp_path: Path, repo: Path
) -> None:
    """The demo: one class's server estimate is lower than the plan's. Whatever the run
    believed of other processes' spend along the way, it ends saying what the ledger holds."""
    plan = planned(repo / "jobs" / "demo.toml", tmp_path / "state")
    sim = InProcessSim(speed=0)
    result, ledger = await run(tmp_path, plan, sim.api(), cap=plan.max_usd)
    assert result.counts == {"succeeded": 9}
    in_ledger = sum((row.committed for row in ledger.tasks("sim", plan.name)), Decimal(0))
    assert result.spent == in_ledger
    assert result.committed == in_ledger
