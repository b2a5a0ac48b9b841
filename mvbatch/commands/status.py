"""`status`: counts, spend and what is left, from the ledger and the manifest's plan.

Owns: the `status` document (`status --json` prints it as it is).
Must not: send anything but the reference-video header requests planning reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from mvbatch import logs
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.commands.selection import with_rerolls
from mvbatch.errors import MvbatchError
from mvbatch.ledger import IN_FLIGHT, STATUSES, Ledger, TaskRow, open_ledger
from mvbatch.ledger import exists as ledger_exists
from mvbatch.ledger.charges import Charge, charge_of, failures_by_charge
from mvbatch.plan import manifest
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.settings import Settings

log = logs.get("mvbatch.commands.status")


def status_document(path: Path, settings: Settings) -> dict[str, Any]:
    """`status`: counts, spend and what is left, from the ledger and the manifest's plan.

    The plan is built as `plan` builds it (no request but the reference videos'
    MP4 headers, which planning reads anyway): it says which tasks the manifest
    asks for, the ledger what became of them. A task the ledger has never seen
    (before the first run, or a shot added since) counts as `planned` and left,
    at the plan's estimate; a task still `planned` in the ledger but no longer
    in the manifest (an edited shot) is left out, as no run will submit it.
    What is left is what `run` would still do: the plan's tasks not submitted
    yet and every task in flight. If the manifest no longer plans (an edit
    broke it) but the ledger has tasks, the ledger alone is reported and
    `plan_error` says why; with no ledger rows the error is raised.
    """

    loaded = manifest.load(manifest_of(path))
    name = loaded.manifest.name
    cap = loaded.manifest.budget.max_usd
    run: dict[str, Any] | None = None
    env = default_env(settings)
    tally: _Tally | None = None
    unknown: dict[str, int] = {}
    if not ledger_exists(settings.ledger_location()):
        the_plan, plan_error = _status_plan(path, settings, env, has_rows=lambda: False)
    else:
        with open_ledger(settings.ledger_location()) as ledger:
            run = ledger.last_run(name)
            if run is not None:
                env = str(run["env"])

            def has_rows() -> bool:  # can the ledger speak without a plan? asked only then
                return bool(ledger.task_states(env, name))

            the_plan, plan_error = _status_plan(path, settings, env, has_rows=has_rows)
            if the_plan is not None:  # re-rolled takes (`run --reroll-rejected`) were planned too
                the_plan, _ = with_rerolls(the_plan, ledger.rerolls(env, name))
            # One pass over the rows, one at a time: 100,000 of them are never held.
            tally = _Tally(the_plan)
            for row in ledger.each_task(env, name):
                tally.add(row)
            unknown = _unknown_statuses(ledger, env, tally.let_go)
    if tally is None:
        tally = _Tally(the_plan)
    unseen = tally.unseen()
    counts = tally.counts
    counts["planned"] += len(unseen)
    states = tally.states
    states["new"] += len(unseen)
    left_cost = tally.left_cost + sum((t.estimate.cost for t in unseen), Decimal(0))

    def number(value: Decimal | None) -> float | None:
        return None if value is None else float(value)

    return {
        "manifest": name,
        "env": env,
        "simulated": env == "sim",
        "tasks": tally.tasks + len(unseen),
        "counts": counts,
        "states": states,
        "spend": {"actual": number(tally.actual), "committed": number(tally.committed)},
        "left": {"tasks": tally.unfinished + len(unseen), "cost_estimate": number(left_cost)},
        "max_usd": number(cap),
        "budget_left": None if cap is None else number(cap - tally.committed),
        "failures_by_charge": failures_by_charge(tally.charges),
        "plan": None
        if the_plan is None
        else {
            "tasks": len(the_plan.tasks),
            "cost_estimate": number(the_plan.cost_estimate),
            "not_in_ledger": len(unseen),
        },
        "plan_error": plan_error,
        # Tasks a run let go in a status the API docs do not list, by that status.
        "unknown_status": {"tasks": sum(unknown.values()), "statuses": unknown},
        "last_run": None
        if run is None
        else {k: run[k] for k in ("id", "started_at", "finished_at", "outcome")},
    }


class _Tally:
    """What `status` says of the ledger's rows, summed as they are read.

    A row still `planned` but no longer in the manifest's plan (an edited
    shot) is left out: no run will submit it.
    """

    def __init__(self, plan: Plan | None) -> None:
        self.planned = {t.key: t for t in plan.tasks} if plan is not None else None
        self.known: set[str] = set()
        self.tasks = 0
        self.counts = dict.fromkeys(STATUSES, 0)
        self.states = dict.fromkeys(("new", "in_flight", "done", "failed"), 0)
        self.actual = Decimal(0)
        self.committed = Decimal(0)
        self.unfinished = 0
        self.left_cost = Decimal(0)
        self.charges: list[tuple[str, Charge]] = []
        self.let_go: list[TaskRow] = []  # in flight, with the server's words kept

    def add(self, row: TaskRow) -> None:
        planned = self.planned
        if planned is not None and row.key not in planned and row.status == "planned":
            return
        self.known.add(row.key)
        self.tasks += 1
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        self.states[row.plan_state] += 1
        if row.cost_actual is not None:
            self.actual += row.cost_actual
        self.committed += row.committed
        if row.status in ("planned", *IN_FLIGHT):
            self.unfinished += 1
            if row.status == "planned" and planned is not None:
                self.left_cost += planned[row.key].estimate.cost  # what `run` would hold
            elif row.cost_estimate is not None:
                self.left_cost += row.cost_estimate
            else:
                self.left_cost += row.estimate_local
        if row.status in IN_FLIGHT and row.error:
            self.let_go.append(row)
        charge = charge_of(row.status, row.cost_actual, row.cost_estimate)
        if charge is not None:
            self.charges.append((row.status, charge))

    def unseen(self) -> list[PlannedTask]:
        """The plan's tasks the ledger has never seen: `planned`, left, at the plan's estimate."""
        if self.planned is None:
            return []
        return [t for t in self.planned.values() if t.key not in self.known]


def _unknown_statuses(ledger: Ledger, env: str, rows: list[TaskRow]) -> dict[str, int]:
    """How many tasks in flight a run let go in an undocumented status, by that status.

    Such a task keeps the server's words in `error` while in flight, and the
    event that let it go names the status (`run/follow.py`); `rows` are those.
    """
    found: Counter[str] = Counter()
    for row in rows:
        for event in reversed(ledger.events(env, row.key)):
            detail = json.loads(event["detail"]) if event["detail"] else {}
            if detail.get("server_status"):
                found[str(detail["server_status"])] += 1
                break
    return dict(sorted(found.items()))


def _status_plan(
    path: Path, settings: Settings, env: str, *, has_rows: Callable[[], bool]
) -> tuple[Plan | None, str | None]:
    """The manifest's plan for `status`, or (None, why) when it does not plan but the ledger
    can still speak; without ledger rows the error is the answer."""
    try:
        return build_plan(path, settings, env), None
    except MvbatchError as error:
        if not has_rows():
            raise
        log.info("status.unplanned", manifest=str(path), error=error.message)
        return None, error.message
