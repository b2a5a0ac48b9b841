"""Rich renderables and JSON documents for what the CLI shows.

Owns: how a plan looks, to a person (tables) and to a program (`--json`).
Builds values only; `cli.py` prints them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mvbatch.planner import Plan, PlannedTask
from mvbatch.pricing import total

STATES = ("new", "in_flight", "done", "failed")


def money(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def json_number(value: Decimal | None) -> float | None:
    # float() of a Decimal gives the shortest decimal that round-trips, so
    # 0.0414 prints as 0.0414: exact at the edge, Decimal everywhere inside.
    return None if value is None else float(value)


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


def plan_view(plan: Plan, states: Mapping[str, str]) -> RenderableType:
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
    summary.append("  (" + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES) + ")")
    if plan.max_usd is not None:
        summary.append(f"\nbudget: {money(plan.max_usd)}")
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
