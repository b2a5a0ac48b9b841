"""`status`: counts, spend and what is left, from the ledger and the manifest's plan.

Owns: the `status` document (`status --json` prints it as it is).
Must not: send anything but the reference-video header requests planning reads.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from mvbatch import logs
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.commands.selection import with_rerolls
from mvbatch.errors import MvbatchError
from mvbatch.ledger import IN_FLIGHT, STATUSES, Ledger, TaskRow, open_ledger
from mvbatch.ledger import exists as ledger_exists
from mvbatch.ledger.charges import charge_of, failures_by_charge
from mvbatch.plan import manifest
from mvbatch.plan.planner import Plan
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
    rows: list[TaskRow] = []
    unknown: dict[str, int] = {}
    run: dict[str, Any] | None = None
    env = default_env(settings)
    if ledger_exists(settings.ledger_location()):
        with open_ledger(settings.ledger_location()) as ledger:
            run = ledger.last_run(name)
            if run is not None:
                env = str(run["env"])
            rows = ledger.tasks(env, name)
            unknown = _unknown_statuses(ledger, env, rows)
    the_plan, plan_error = _status_plan(path, settings, env, bool(rows))
    if the_plan is not None:  # re-rolled takes (`run --reroll-rejected`) were planned too
        the_plan, _ = with_rerolls(the_plan, rows)
    planned = {t.key: t for t in the_plan.tasks} if the_plan is not None else None
    if planned is not None:
        rows = [r for r in rows if r.key in planned or r.status != "planned"]
    known = {r.key for r in rows}
    unseen = [t for t in planned.values() if t.key not in known] if planned is not None else []
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    counts["planned"] += len(unseen)
    states = dict.fromkeys(("new", "in_flight", "done", "failed"), 0)
    for row in rows:
        states[row.plan_state] += 1
    states["new"] += len(unseen)
    actual = sum((r.cost_actual for r in rows if r.cost_actual is not None), Decimal(0))
    committed = sum((r.committed for r in rows), Decimal(0))

    def left_estimate(row: TaskRow) -> Decimal:
        if row.status == "planned" and planned is not None and row.key in planned:
            return planned[row.key].estimate.cost  # what `run` would hold against the cap
        return row.cost_estimate if row.cost_estimate is not None else row.estimate_local

    unfinished = [r for r in rows if r.status in ("planned", *IN_FLIGHT)]
    left_cost = sum((left_estimate(r) for r in unfinished), Decimal(0)) + sum(
        (t.estimate.cost for t in unseen), Decimal(0)
    )

    def number(value: Decimal | None) -> float | None:
        return None if value is None else float(value)

    return {
        "manifest": name,
        "env": env,
        "simulated": env == "sim",
        "tasks": len(rows) + len(unseen),
        "counts": counts,
        "states": states,
        "spend": {"actual": number(actual), "committed": number(committed)},
        "left": {"tasks": len(unfinished) + len(unseen), "cost_estimate": number(left_cost)},
        "max_usd": number(cap),
        "budget_left": None if cap is None else number(cap - committed),
        "failures_by_charge": failures_by_charge(
            (r.status, charge_of(r.status, r.cost_actual, r.cost_estimate)) for r in rows
        ),
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


def _unknown_statuses(ledger: Ledger, env: str, rows: list[TaskRow]) -> dict[str, int]:
    """How many tasks in flight a run let go in an undocumented status, by that status.

    Such a task keeps the server's words in `error` while in flight, and the
    event that let it go names the status (`run/follow.py`).
    """
    found: Counter[str] = Counter()
    for row in rows:
        if row.status not in IN_FLIGHT or not row.error:
            continue
        for event in reversed(ledger.events(env, row.key)):
            detail = json.loads(event["detail"]) if event["detail"] else {}
            if detail.get("server_status"):
                found[str(detail["server_status"])] += 1
                break
    return dict(sorted(found.items()))


def _status_plan(
    path: Path, settings: Settings, env: str, has_rows: bool
) -> tuple[Plan | None, str | None]:
    """The manifest's plan for `status`, or (None, why) when it does not plan but the ledger
    can still speak; without ledger rows the error is the answer."""
    try:
        return build_plan(path, settings, env), None
    except MvbatchError as error:
        if not has_rows:
            raise
        log.info("status.unplanned", manifest=str(path), error=error.message)
        return None, error.message
