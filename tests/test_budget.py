"""The budget holds: refused before the first request when over, never crossed during a run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from run_helpers import (
    TEST_KEY,
    InProcessSim,
    api_requests,
    charges_by_key,
    cli,
    cli_env,
    invoke,
    planned,
    prepare_ledger,
    shots,
    sim_stats,
    write_manifest,
)
from sim_helpers import running_sim
from structlog.testing import capture_logs

from mvbatch.api.client import ApiClient
from mvbatch.api.endpoint import Endpoint
from mvbatch.commands import running
from mvbatch.errors import BudgetError
from mvbatch.ledger import Ledger, Reservation, open_ledger
from mvbatch.plan.planner import Plan
from mvbatch.run.budget import check_budget, preflight
from mvbatch.run.executor import Executor
from mvbatch.run.polling import LatencyBook, latency_class

PRO = {"mode": "pro", "duration": 5, "size": "16:9"}  # kling-v2-6 pro: undocumented, 0.058 real
PRO_CLASS = 'kling-v2-6 {"audio":false,"mode":"pro"}'


@pytest.mark.slow
def test_an_over_cap_plan_is_refused_before_a_single_request(tmp_path: Path) -> None:
    capped = write_manifest(tmp_path, "capped", shots(3), max_usd=0.1)  # 3 x 0.0414 > 0.1
    loose = write_manifest(tmp_path, "loose", shots(3), max_usd=10)
    with running_sim(tmp_path, speed=0) as base:
        env = cli_env(tmp_path, base)
        refused = cli(["run", str(capped), "--yes"], env, tmp_path)
        assert refused.returncode == 3, refused.stderr
        assert "0.1242" in refused.stderr
        assert "nothing was submitted" in refused.stderr
        assert "capped" in refused.stdout  # the plan was shown first
        # --max-cost lower than the manifest's cap wins.
        lowered = cli(["run", str(loose), "--yes", "--max-cost", "0.05"], env, tmp_path)
        assert lowered.returncode == 3, lowered.stderr
        assert api_requests(sim_stats(base)) == 0
        assert sim_stats(base)["billing"]["charges"] == 0


def test_a_bad_max_cost_is_a_usage_error(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "t", shots(1))
    for value in ("-1", "0", "lots"):
        result = invoke(["run", str(path), "--max-cost", value])
        assert result.exit_code == 2, result.output
        assert "--max-cost" in result.output


def test_assumed_prices_alone_over_the_cap_do_not_refuse_the_plan(tmp_path: Path) -> None:
    plan = planned(write_manifest(tmp_path, "t", shots(10, input=PRO)), tmp_path / "state")
    check = preflight(plan, {}, Decimal("0.3"))
    assert check.projected == Decimal("0.69")
    assert check.floor == Decimal("0.069")
    assert check.uncertain
    check_budget(check)  # no error: the real rate may fit; the run learns it first
    with pytest.raises(BudgetError):
        check_budget(preflight(plan, {}, Decimal("0.05")))


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 8])
async def test_an_undocumented_price_is_learned_before_the_cap_is_at_risk(
    tmp_path: Path, concurrency: int
) -> None:
    # 10 tasks whose price class the documentation does not give; once the
    # first POST teaches the real rate (0.058 each, 0.58 in all), the plan no
    # longer fits 0.30: nothing more is sent.
    plan = planned(write_manifest(tmp_path, "t", shots(10, input=PRO)), tmp_path / "state")
    sim = InProcessSim(speed=0)
    cap = Decimal("0.3")
    ledger = prepare_ledger(tmp_path / "state", plan)
    async with sim.api() as api:
        result = await Executor(
            plan, ledger, api, env="sim", cap=cap, concurrency=concurrency
        ).run()
    stats = await sim.stats()
    assert Decimal(str(stats["billing"]["net"])) <= cap
    assert sum(charges_by_key(stats).values()) == 1
    assert result.held == 9
    assert result.committed <= cap
    assert result.held_reason
    assert PRO_CLASS in result.held_reason


@pytest.mark.anyio
async def test_a_wrong_learned_rate_cannot_push_a_concurrent_run_over_the_cap(
    tmp_path: Path,
) -> None:
    # The ledger believes the pro class costs 0.005/s (0.025 a task): 10 tasks
    # "fit" 0.30. The real price is 0.058 a task. With 8 tasks in flight, a
    # naive run would commit 8 x 0.058 = 0.464 before noticing.
    state = tmp_path / "state"
    with prepare_ledger(state, planned(write_manifest(tmp_path, "t", shots(1)), state)) as seed:
        seed.record_learned_rate("sim", PRO_CLASS, Decimal("0.005"))
    plan = planned(write_manifest(tmp_path, "t", shots(10, input=PRO)), state)
    assert {t.estimate.cost for t in plan.tasks} == {Decimal("0.025")}
    cap = Decimal("0.3")
    check = preflight(plan, {}, cap)
    assert not check.over_cap
    assert not check.uncertain
    sim = InProcessSim(speed=0)
    ledger = prepare_ledger(state, plan)
    async with sim.api() as api:
        result = await Executor(plan, ledger, api, env="sim", cap=cap, concurrency=8).run()
    stats = await sim.stats()
    assert Decimal(str(stats["billing"]["net"])) <= cap
    assert result.committed <= cap
    assert result.held == 9
    assert ledger.learned_rates("sim")[PRO_CLASS] == Decimal("0.0116")  # corrected


@pytest.mark.anyio
async def test_learned_rates_that_fit_let_the_whole_plan_run_concurrently(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "t", [*shots(6), *shots(6, "pro", input=PRO)])
    plan = planned(path, tmp_path / "state")
    cap = Decimal("0.6")  # 6 x 0.0414 + 6 x 0.058 = 0.5964 real; 0.6624 at assumed prices
    assert preflight(plan, {}, cap).uncertain
    sim = InProcessSim(speed=0)
    ledger = prepare_ledger(tmp_path / "state", plan)
    async with sim.api() as api:
        result = await Executor(plan, ledger, api, env="sim", cap=cap, concurrency=8).run()
    assert result.counts == {"succeeded": 12}
    assert result.held == 0
    stats = await sim.stats()
    assert Decimal(str(stats["billing"]["net"])) == Decimal("0.5964") <= cap


@pytest.mark.slow
def test_a_concurrent_cli_run_with_an_undocumented_price_stays_under_the_cap(
    tmp_path: Path,
) -> None:
    path = write_manifest(
        tmp_path, "t", [*shots(4), *shots(12, "pro", input=PRO)], max_usd=0.5
    )  # 4 x 0.0414 + 12 x 0.058 = 0.8616 does not fit
    with running_sim(tmp_path, speed=20) as base:
        result = cli(
            ["run", str(path), "--yes", "--concurrency", "8", "--no-download"],
            cli_env(tmp_path, base),
            tmp_path,
        )
        stats = sim_stats(base)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "nothing was submitted over the cap" in result.stdout
    assert Decimal(str(stats["billing"]["net"])) <= Decimal("0.5")
    assert all(n == 1 for n in charges_by_key(stats).values())


# ------------------------------------------------------------------ the ledger's reservation


def test_the_ledger_reserves_each_intent_against_one_cap_that_every_process_shares(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    plan = planned(write_manifest(tmp_path, "t", shots(4)), state)
    a, b, c, d = (t.key for t in plan.tasks)
    cap = Decimal("0.1")  # two tasks of 0.0414, not three

    def intent(
        ledger: Ledger, key: str, cap: Decimal | None, previous: str = "planned"
    ) -> Reservation:
        return ledger.record_intent(
            "sim",
            key,
            previous=previous,
            submit_key=key,
            attempt=0,
            run_id=None,
            estimate=Decimal("0.0414"),
            cap=cap,
        )

    # Two connections: two processes on one ledger.
    with prepare_ledger(state, plan) as one, open_ledger(state) as two:
        assert intent(one, a, cap).granted
        assert intent(two, b, cap).granted
        refused = intent(one, c, cap)
        assert not refused.granted
        assert refused.committed == Decimal("0.0828")  # what both processes committed
        assert (refused.estimate, refused.cap) == (Decimal("0.0414"), cap)
        row = two.task("sim", c)
        assert row is not None
        assert row.status == "planned"  # a refusal records nothing
        assert two.events("sim", c) == []
        # A re-send was reserved by its first intent: it is never refused.
        assert intent(two, a, cap, previous="submitting").granted
        # Another run's lower cap holds against the same shared total.
        assert not intent(two, d, Decimal("0.09")).granted
        # No cap: recorded, nothing summed.
        free = intent(one, d, None)
        assert free.granted
        assert free.committed is None
        detail = json.loads(one.events("sim", a)[0]["detail"])
        assert (detail["reserved"], detail["committed"], detail["cap"]) == ("0.0414", "0", "0.1")


def test_an_intent_on_a_row_another_process_moved_on_writes_nothing(tmp_path: Path) -> None:
    """Two processes both saw a task `planned`; the first sent it. The second's intent,
    read before, must not undo that (its status, its task id): nothing is written."""
    state = tmp_path / "state"
    plan = planned(write_manifest(tmp_path, "t", shots(1)), state)
    (key,) = (t.key for t in plan.tasks)

    def intent(ledger: Ledger, target: str) -> Reservation:
        return ledger.record_intent(
            "sim",
            target,
            previous="planned",
            submit_key=target,
            attempt=0,
            run_id=None,
            estimate=Decimal("0.0414"),
            cap=Decimal(1),
        )

    with prepare_ledger(state, plan) as one, open_ledger(state) as two:
        assert intent(one, key).granted
        one.record_submitted(
            "sim",
            key,
            task_id="t-1",
            request_id=None,
            status="queued",
            cost_estimate=Decimal("0.0414"),
            run_id=None,
        )
        stale = intent(two, key)
        assert not stale.granted
        assert stale.stale
        row = two.task("sim", key)
        assert row is not None
        assert (row.status, row.task_id) == ("queued", "t-1")
        assert row.committed == Decimal("0.0414")  # counted once, not twice
        # A key the ledger never saw: no intent could be recovered after a crash.
        unknown = intent(two, "mvb1-" + "0" * 32)
        assert not unknown.granted
        assert unknown.stale


def test_an_intent_counts_for_the_estimate_it_was_reserved_at(tmp_path: Path) -> None:
    # A rate learned since the plan (0.058 here, the plan said 0.0414): until
    # its POST is answered, the task stands for what was reserved.
    state = tmp_path / "state"
    plan = planned(write_manifest(tmp_path, "t", shots(2)), state)
    first, second = (t.key for t in plan.tasks)
    with prepare_ledger(state, plan) as ledger:
        ledger.record_intent(
            "sim",
            first,
            previous="planned",
            submit_key=first,
            attempt=0,
            run_id=None,
            estimate=Decimal("0.058"),
            cap=Decimal(1),
        )
        row = ledger.task("sim", first)
        assert row is not None
        assert row.committed == Decimal("0.058")
        refused = ledger.record_intent(
            "sim",
            second,
            previous="planned",
            submit_key=second,
            attempt=0,
            run_id=None,
            estimate=Decimal("0.058"),
            cap=Decimal("0.1"),
        )
        assert not refused.granted
        assert refused.committed == Decimal("0.058")


# ------------------------------------------------------------------ a server that bills more


class OverbillingApi:
    """A task API that estimates $0.0414 a task at the POST and bills `bill(n)` for its n-th.

    Each idempotency key is created and charged once (a repeated key gets the
    same task back). Each task is `queued` at its POST and `succeeded` at its
    first GET, with its bill (`at_post`: already `succeeded` at the POST). It
    counts the POSTs that arrive once the ledger under `state` holds a task
    billed more than its estimate.
    """

    def __init__(self, state: Path, bill: Callable[[int], Decimal], at_post: bool = False) -> None:
        self.state, self.bill, self.at_post = state, bill, at_post
        self.tasks: dict[str, tuple[str, Decimal]] = {}  # idempotency key -> task id, bill
        self.charges: Counter[str] = Counter()
        self.posts_after_overbill = 0

    def overbill_recorded(self) -> bool:
        with open_ledger(self.state) as ledger:
            return any(
                r.cost_actual is not None and r.cost_actual > r.estimate_local
                for r in ledger.tasks("live")
            )

    def body(self, task_id: str, bill: Decimal, done: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": "req_" + task_id,
            "task_id": task_id,
            "status": "succeeded" if done else "queued",
            "cost_estimate": 0.0414,
        }
        if done:
            body |= {"cost_actual": float(bill), "output": {"videos": [{"url": "https://cdn/v"}]}}
        return body

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            if self.overbill_recorded():
                self.posts_after_overbill += 1
            key = request.headers["Idempotency-Key"]
            if key not in self.tasks:
                self.tasks[key] = (f"task{len(self.tasks)}", self.bill(len(self.tasks)))
                self.charges[key] += 1
            task_id, bill = self.tasks[key]
            return httpx.Response(200, json=self.body(task_id, bill, self.at_post))
        task_id = request.url.path.rsplit("/", 1)[-1]
        bill = next(b for t, b in self.tasks.values() if t == task_id)
        return httpx.Response(200, json=self.body(task_id, bill, True))

    def endpoint(self) -> Endpoint:
        transport = httpx.MockTransport(self.handler)
        return Endpoint("live", "https://api.test/api/v1", TEST_KEY, transport)


def quick_latencies(plan: Plan) -> LatencyBook:
    """A history that has each task of the plan polled within a fraction of a second."""
    return LatencyBook(
        {latency_class(t.estimate.price_class, t.estimate.seconds): [0.05] * 10 for t in plan.tasks}
    )


@pytest.mark.anyio
async def test_a_bill_ten_times_the_estimate_stops_the_submissions_that_would_cross_the_cap(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    plan = planned(write_manifest(tmp_path, "t", shots(10)), state, env="live")
    server = OverbillingApi(state, lambda n: Decimal("0.414"))
    ledger = prepare_ledger(state, plan, env="live")
    api = ApiClient(server.endpoint().api_client())
    async with api:
        # One task at a time: the first bill is known before the second POST.
        executor = Executor(
            plan,
            ledger,
            api,
            env="live",
            cap=Decimal("0.5"),
            concurrency=1,
            latencies=quick_latencies(plan),
        )
        with capture_logs() as logs:
            result = await executor.run()
    assert server.posts_after_overbill == 0
    assert set(server.charges.values()) == {1}
    assert result.held == 10 - len(server.tasks)
    assert result.held_reason is not None
    first = plan.tasks[0]
    assert f"billed $0.414 for task {first.shot}" in result.held_reason
    assert "estimated at $0.0414" in result.held_reason
    assert [e for e in logs if e["event"] == "budget.overbilled"]


def run_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: OverbillingApi, *args: str
) -> tuple[int, str]:
    """`mvbatch run` in this process against `server`; its exit code and output."""
    monkeypatch.setenv("MINDVIDEO_API_KEY", TEST_KEY)
    monkeypatch.setattr(running, "choose", lambda *a, **k: server.endpoint())
    result = invoke(["run", str(tmp_path / "t.toml"), "--yes", "--no-download", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("bills", "message"),
    [
        # Every task billed ten times its estimate: $4.14 for a plan of $0.414.
        (lambda n: Decimal("0.414"), "the server billed $0.414 for task s"),
        # One task billed a fortune.
        (
            lambda n: Decimal("1e12") if n == 9 else Decimal("0.0414"),
            "the server billed $1,000,000,000,000.00 for task s",
        ),
    ],
    ids=["ten-times-each", "one-fortune"],
)
def test_a_run_that_the_server_billed_over_the_cap_exits_3_and_every_report_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bills: Callable[[int], Decimal],
    message: str,
) -> None:
    # Ten tasks of $0.0414 under a cap of $0.50, all sent at once: the bills
    # come in only when every task is already in flight.
    write_manifest(tmp_path, "t", shots(10), max_usd=0.5)
    server = OverbillingApi(tmp_path / "state", bills)
    code, output = run_cli(tmp_path, monkeypatch, server, "--concurrency", "16")
    assert code == 3, output
    assert set(server.charges.values()) == {1}
    assert message in output
    assert "estimated at $0.0414" in output
    assert "over the cap $0.50" in output
    folder = tmp_path / "outputs" / "t"
    totals = json.loads((folder / "report.json").read_text())["totals"]
    assert totals["over_cap"] is True
    assert totals["overbilled"]
    for name in ("report.md", "report.html"):
        assert "over the cap" in (folder / name).read_text(), name
