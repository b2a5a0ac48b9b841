"""Rich renderables and JSON documents for what the CLI shows.

Owns: how a plan looks, to a person (tables) and to a program (`--json`),
with the cap that holds and where it came from. Amounts are written by
`mvbatch.money`, the words for what a failed task cost by
`mvbatch.ledger.charges`. Builds values only; `cli.py` prints them.

Scale: past `PLAN_SHOTS` shots the table shows the `TOP_SHOTS` most expensive
ones and one row for the rest (a table of thousands of rows is read by
nobody and took longer to draw than planning took), and says where every
shot and task is (`plan --json`, `plan --out`). `plan --json` is written as
it is produced (`plan_json_chunks`): the document is never held whole.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from decimal import Decimal
from itertools import islice
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mvbatch.commands.selection import Selection
from mvbatch.money import json_number, total, usd
from mvbatch.plan.planner import Plan, PlannedTask

STATES = ("new", "in_flight", "done", "failed")
# The plan table lists every shot up to PLAN_SHOTS; past it, the TOP_SHOTS most
# expensive and one row for the rest.
PLAN_SHOTS = 200
TOP_SHOTS = 20
# Tasks per chunk of `plan --json`.
CHUNK_TASKS = 200
STATE_WORDS = {
    "new": "new (never submitted)",
    "in_flight": "in flight",
    "done": "done",
    "failed": "failed",
}


# ------------------------------------------------------------ the cap


def cap_text(max_usd: Decimal | None, max_cost: Decimal | None = None) -> str:
    """The cap that holds (the lower of the manifest's max_usd and --max-cost) and its source."""
    manifest = "the manifest's [budget] max_usd"
    if max_usd is None and max_cost is None:
        return "no cap (set [budget] max_usd in the manifest, or run with --max-cost)"
    if max_usd is None:
        return f"cap {usd(max_cost)} (--max-cost)"
    if max_cost is None:
        return f"cap {usd(max_usd)} ({manifest})"
    if max_cost < max_usd:
        return f"cap {usd(max_cost)} (--max-cost; {manifest} is {usd(max_usd)})"
    relation = "is higher" if max_cost > max_usd else "is the same"
    return f"cap {usd(max_usd)} ({manifest}; --max-cost {usd(max_cost)} {relation})"


def plan_document(
    plan: Plan, states: Mapping[str, str], rerolled_from: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`plan --json` as one dict; `rerolled_from`: the rejected take each re-rolled one
    replaces, by key. `plan_json_chunks` writes the same document as a stream."""
    replaces = rerolled_from or {}
    return {
        "manifest": plan.name,
        "tasks": [_task_document(t, states, replaces) for t in plan.tasks],
        **_plan_tail(plan, states),
    }


def plan_json_chunks(
    plan: Plan, states: Mapping[str, str], rerolled_from: Mapping[str, str] | None = None
) -> Iterator[str]:
    """`plan --json` (`plan_document`), as it is produced: one task per line, by the json
    module's C encoder, between an indented head and tail; `CHUNK_TASKS` tasks a chunk."""
    replaces = rerolled_from or {}
    tail = _plan_tail(plan, states)  # counted first: the tasks are only ever streamed
    encode = json.JSONEncoder(ensure_ascii=False).encode
    head = json.dumps({"manifest": plan.name}, ensure_ascii=False, indent=2)
    yield head[:-2] + ',\n  "tasks": ['
    separator = "\n    "
    tasks = iter(plan.tasks)
    while batch := list(islice(tasks, CHUNK_TASKS)):
        yield separator + ",\n    ".join(encode(_task_document(t, states, replaces)) for t in batch)
        separator = ",\n    "
    rest = json.dumps(tail, ensure_ascii=False, indent=2)
    yield ("]," if separator == "\n    " else "\n  ],") + rest[1:] + "\n"


def _task_document(
    t: PlannedTask, states: Mapping[str, str], replaces: Mapping[str, str]
) -> dict[str, Any]:
    return {
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
        "rerolled_from": replaces.get(t.key),
    }


def _plan_tail(plan: Plan, states: Mapping[str, str]) -> dict[str, Any]:
    """The fields of `plan --json` after its tasks."""
    counts = Counter(states.get(t.key, "new") for t in plan.tasks)
    sources = Counter(t.estimate.source for t in plan.tasks)
    return {
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


def _count(number: int, word: str) -> str:
    return f"{number} {word}" + ("" if number == 1 else "s")


def selection_view(selection: Selection) -> RenderableType:
    """Which part of the plan a run runs (`--draft`, `--approved-only`, `--reroll-rejected`)."""
    kind, tasks = selection.kind, selection.plan.tasks
    nothing = "so nothing new is sent" if selection.unfinished else "so nothing runs"
    text = Text()
    if kind == "draft":
        text.append(
            f"draft: the cheapest variant of each of {_count(len(selection.shots), 'shot')}, "
            "one take",
            "bold",
        )
        rest = len(selection.full.tasks) - len(tasks)
        if rest > 0:
            text.append(
                f"; the other {_count(rest, 'task')} of the plan wait for your review "
                "(mvbatch review, then run --approved-only)"
            )
    elif kind == "approved":
        if not selection.shots:
            text.append(f"approved only: no shot has an approved take yet, {nothing}", "bold")
            text.append(" (approve takes in mvbatch review)")
        else:
            text.append(
                f"approved only: the rest of the matrix of {_count(len(selection.shots), 'shot')} "
                f"with an approved take ({', '.join(selection.shots)})",
                "bold",
            )
            if selection.left_out:
                text.append(f"; {_count(selection.left_out, 'shot')} without one left out")
    elif kind == "reroll":
        if not selection.rerolls:
            text.append(f"re-rolls: no rejected take waits for a re-roll, {nothing}", "bold")
        else:
            text.append(
                "re-rolls: one new take for each of "
                f"{_count(len(selection.rerolls), 'rejected take')}",
                "bold",
            )
    for reroll in selection.rerolls if kind == "reroll" else ():
        task = reroll.task
        text.append(
            f"\n  {task.shot} · {task.variant_label}: take {reroll.replaces.take} (rejected) "
            f"-> new take {task.take}"
        )
        if reroll.seed is not None:
            text.append(f", seed {reroll.seed[0]} -> {reroll.seed[1]}")
        if reroll.recorded:
            text.append(" (planned by an earlier run, not finished)")
    if selection.unfinished:
        text.append(
            f"\n+ {_count(len(selection.unfinished), 'task')} an earlier run sent and did not "
            "finish: followed to the end, no new charge"
        )
    return text


def plan_view(
    plan: Plan, states: Mapping[str, str], *, max_cost: Decimal | None = None
) -> RenderableType:
    """The plan for a person: a row per shot, the totals, the cap and its source.

    `max_cost` is `run --max-cost`: the cap shown is the lower of it and the
    manifest's max_usd, with where it came from. Past `PLAN_SHOTS` shots, the
    `TOP_SHOTS` most expensive ones, a row for the others, and where to see them.
    """
    by_shot: dict[str, list[PlannedTask]] = defaultdict(list)
    for task in plan.tasks:
        by_shot[task.shot].append(task)
    costs = {shot: total([t.estimate.cost for t in tasks]) for shot, tasks in by_shot.items()}
    shown = list(by_shot)
    title = f"Plan for {plan.name} ({plan.manifest.display})"
    if len(by_shot) > PLAN_SHOTS:
        # The most expensive first; ties in manifest order (sorted() is stable).
        shown = sorted(by_shot, key=lambda shot: -costs[shot])[:TOP_SHOTS]
        title += f": the {len(shown)} most expensive of {len(by_shot):,} shots"
    table = Table(title=title, title_justify="left")
    table.add_column("shot")
    table.add_column("model")
    table.add_column("variants", justify="right")
    table.add_column("tasks", justify="right")
    table.add_column("to submit", justify="right")
    table.add_column("estimate", justify="right")
    table.add_column("price source")
    for shot in shown:
        tasks = by_shot[shot]
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
            usd(costs[shot]),
            Text(source_text, style="yellow" if "assumed" in sources else ""),
        )
    listed = set(shown)
    hidden = [shot for shot in by_shot if shot not in listed]
    if hidden:
        rest = [t for shot in hidden for t in by_shot[shot]]
        table.add_row(
            Text(f"… {len(hidden):,} other shots", style="italic"),
            ", ".join(sorted({t.model for t in rest})),
            "",
            f"{len(rest):,}",
            f"{sum(1 for t in rest if states.get(t.key, 'new') == 'new'):,}",
            usd(total([costs[shot] for shot in hidden])),
            "",
        )
    counts = Counter(states.get(t.key, "new") for t in plan.tasks)
    summary = Text()
    summary.append(f"{len(plan.tasks)} tasks, estimated {usd(plan.cost_estimate)}", "bold")
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
    if hidden:
        parts.append(
            Text(
                f"{len(hidden):,} shots are not listed above: `mvbatch plan "
                f"{plan.manifest.display} --json` prints every task with its shot, state and "
                "estimate, and `--out PLAN.toml` saves the whole plan to read or review."
            )
        )
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
