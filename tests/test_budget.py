"""The budget holds: refused before the first request when over, never crossed during a run."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from run_helpers import (
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

from mvbatch.errors import BudgetError
from mvbatch.run.budget import check_budget, preflight
from mvbatch.run.executor import Executor

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
