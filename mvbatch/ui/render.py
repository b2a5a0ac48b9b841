"""Rich renderables and JSON documents for what the CLI shows.

Owns: how a plan looks, to a person (tables) and to a program (`--json`),
with the cap that holds and where it came from; and the words for money that
every view shares: dollars (`usd`), and what a task that did not succeed cost
("rejected (not charged)", "failed (charged $0.0414)"). Builds values only;
`cli.py` prints them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.plan.pricing import normalize, total

STATES = ("new", "in_flight", "done", "failed")
STATE_WORDS = {
    "new": "new (never submitted)",
    "in_flight": "in flight",
    "done": "done",
    "failed": "failed",
}


def money(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def json_number(value: Decimal | None) -> float | None:
    # float() of a Decimal gives the shortest decimal that round-trips, so
    # 0.0414 prints as 0.0414: exact at the edge, Decimal everywhere inside.
    return None if value is None else float(value)


def usd(value: Decimal | None) -> str:
    """Dollars with as many decimals as the amount has (2 to 6): $0.0414, $0.11574, $2.00."""
    if value is None:
        return "—"
    value = normalize(value)
    exponent = value.as_tuple().exponent
    places = min(6, max(2, -exponent if isinstance(exponent, int) else 2))
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{places}f}"


# ------------------------------------------------------------ the cap


def cap_text(max_usd: Decimal | None, max_cost: Decimal | None = None) -> str:
    """The cap that holds (the lower of the manifest's max_usd and --max-cost) and its source."""
    manifest = "the manifest's [budget] max_usd"
    if max_usd is None and max_cost is None:
        return "no cap (set [budget] max_usd in the manifest, or run with --max-cost)"
    if max_usd is None:
        return f"cap {money(max_cost)} (--max-cost)"
    if max_cost is None:
        return f"cap {money(max_usd)} ({manifest})"
    if max_cost < max_usd:
        return f"cap {money(max_cost)} (--max-cost; {manifest} is {money(max_usd)})"
    relation = "is higher" if max_cost > max_usd else "is the same"
    return f"cap {money(max_usd)} ({manifest}; --max-cost {money(max_cost)} {relation})"


# ------------------------------------------- what a failed task cost, in words
#
# The same words everywhere a person reads about a failed task (the run
# summary, `status`, the reports), so that they know which retries cost money:
# "rejected (not charged)" for a request the server refused before creating a
# task, "failed (charged $0.0414)" or "failed (not charged)" when the server
# said what it charged, and "failed (charge unknown; ...)" when it did not.

FAILED_STATUSES = ("failed", "cancelled", "rejected")
CHARGE_ORDER = ("charged", "unknown", "not_charged")


@dataclass(frozen=True, slots=True)
class Charge:
    """What a task that did not succeed cost, as far as the ledger knows.

    `kind`: `charged` (the server's cost_actual is above zero: `usd`),
    `not_charged` (rejected before a task existed, or a cost_actual of zero),
    `unknown` (no cost_actual: `usd` is the server's estimate, which the ledger
    keeps counting against the cap because it cannot know of a refund).
    """

    kind: str
    usd: Decimal = Decimal(0)


def charge_of(
    status: str, cost_actual: Decimal | None, cost_estimate_server: Decimal | None
) -> Charge | None:
    """The charge of a failed, cancelled or rejected task; None for any other status."""
    if status == "rejected":
        return Charge("not_charged")
    if status not in FAILED_STATUSES:
        return None
    if cost_actual is not None:
        return Charge("charged", cost_actual) if cost_actual > 0 else Charge("not_charged")
    return Charge("unknown", cost_estimate_server or Decimal(0))


def status_words(status: str, charge: Charge | None) -> str:
    """`failed (charged $0.0414)`, `rejected (not charged)`; other statuses as they are."""
    if charge is None:
        return status
    if charge.kind == "charged":
        return f"{status} (charged {usd(charge.usd)})"
    if charge.kind == "not_charged":
        return f"{status} (not charged)"
    if charge.usd:
        return f"{status} (charge unknown; its estimate {usd(charge.usd)} counts against the cap)"
    return f"{status} (charge unknown)"


def failures_by_charge(
    items: Iterable[tuple[str, Charge | None]],
) -> list[dict[str, Any]]:
    """Failed, cancelled and rejected tasks grouped by status and charge, with their words.

    `items` are (status, charge) pairs, one per task; tasks without a charge
    (not failed) are skipped. Each group: `status`, `charge` (its kind),
    `tasks`, `usd` (charged, or still counted when unknown) and `text`, the
    words for them all: "failed (charged $0.0828)" for two tasks charged in all
    $0.0828.
    """
    groups: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for status, charge in items:
        if charge is not None:
            groups[(status, charge.kind)].append(charge.usd)
    found = []
    for status in FAILED_STATUSES:
        for kind in CHARGE_ORDER:
            amounts = groups.get((status, kind))
            if not amounts:
                continue
            amount = total(amounts)
            found.append(
                {
                    "status": status,
                    "charge": kind,
                    "tasks": len(amounts),
                    "usd": json_number(amount),
                    "text": status_words(status, Charge(kind, amount)),
                }
            )
    return found


def plan_document(plan: Plan, states: Mapping[str, str]) -> dict[str, Any]:
    counts = Counter(states.get(t.key, "new") for t in plan.tasks)
    sources = Counter(t.estimate.source for t in plan.tasks)
    return {
        "manifest": plan.name,
        "tasks": [
            {
                "key": t.key,
                "shot": t.shot,
                "model": t.model,
                "input": t.public_input(),
                "cost_estimate": json_number(t.estimate.cost),
                "state": states.get(t.key, "new"),
                "shots": list(t.shots),
                "variant": dict(t.variant),
                "take": t.take,
                "price_source": t.estimate.source,
                "price_class": t.estimate.price_class,
                "upper_bound": t.estimate.upper_bound,
            }
            for t in plan.tasks
        ],
        "totals": {
            "tasks": len(plan.tasks),
            "cost_estimate": json_number(plan.cost_estimate),
            **{state: counts.get(state, 0) for state in STATES},
            "max_usd": json_number(plan.max_usd),
            "price_sources": dict(sorted(sources.items())),
            "duplicates": plan.duplicates,
        },
        "warnings": [str(w) for w in plan.warnings],
    }


def plan_view(
    plan: Plan, states: Mapping[str, str], *, max_cost: Decimal | None = None
) -> RenderableType:
    """The plan for a person: a row per shot, the totals, the cap and its source.

    `max_cost` is `run --max-cost`: the cap shown is the lower of it and the
    manifest's max_usd, with where it came from.
    """
    by_shot: dict[str, list[PlannedTask]] = defaultdict(list)
    for task in plan.tasks:
        by_shot[task.shot].append(task)
    table = Table(title=f"Plan for {plan.name} ({plan.manifest.display})", title_justify="left")
    table.add_column("shot")
    table.add_column("model")
    table.add_column("variants", justify="right")
    table.add_column("tasks", justify="right")
    table.add_column("to submit", justify="right")
    table.add_column("estimate", justify="right")
    table.add_column("price source")
    for shot, tasks in by_shot.items():
        variants = {t.variant for t in tasks}
        models = sorted({t.model for t in tasks})
        to_submit = sum(1 for t in tasks if states.get(t.key, "new") == "new")
        sources = Counter(t.estimate.source for t in tasks)
        source_text = ", ".join(
            f"{s} ×{n}" if len(sources) > 1 else s for s, n in sorted(sources.items())
        )
        if any(t.estimate.upper_bound for t in tasks):
            source_text += " (upper bound)"
        table.add_row(
            shot,
            ", ".join(models),
            str(len(variants)),
            str(len(tasks)),
            str(to_submit),
            money(total([t.estimate.cost for t in tasks])),
            Text(source_text, style="yellow" if "assumed" in sources else ""),
        )
    counts = Counter(states.get(t.key, "new") for t in plan.tasks)
    summary = Text()
    summary.append(f"{len(plan.tasks)} tasks, estimated {money(plan.cost_estimate)}", "bold")
    summary.append(
        " (each task's rate from the price table × its seconds of video; once a task is "
        "submitted, the server's own estimate replaces ours)"
    )
    summary.append("\n" + ", ".join(f"{counts.get(s, 0)} {STATE_WORDS[s]}" for s in STATES))
    summary.append("\n" + cap_text(plan.max_usd, max_cost))
    if plan.max_usd is not None or max_cost is not None:
        summary.append(
            ": the most this manifest's tasks may cost, across all its runs; a run that "
            "cannot fit under it does not start, and no task is submitted past it"
        )
    if plan.duplicates:
        summary.append(f"\n{plan.duplicates} task(s) asked for by several shots are planned once")
    assumed = sum(1 for t in plan.tasks if t.estimate.source == "assumed")
    parts: list[RenderableType] = [table, summary]
    if assumed:
        parts.append(
            Text(
                f"{assumed} task(s) use an assumed price (no documented rate for their tier): "
                "the run submits one such task first and learns the real rate before spending "
                "more.",
                style="yellow",
            )
        )
    for warning in plan.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    return Group(*parts)
