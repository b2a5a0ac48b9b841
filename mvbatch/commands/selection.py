"""Which of a plan's tasks a run runs: everything, a draft, the approved shots, or re-rolls.

Owns: `select`, which turns the manifest's plan, the ledger's rows and the
verdicts given in `mvbatch review` into the plan a run runs (`run --draft`,
`--approved-only`, `--reroll-rejected`, or everything left); re-rolled
takes: the ones recorded by earlier runs, rebuilt into the plan
(`with_rerolls`), and new ones, made the same way every time (`new_rerolls`),
a pinned seed changed (`reroll_seed`).

A re-roll of a rejected take X is X's task as take t, t one past the highest
take of X's shot and variant that the plan or the ledger knows, its pinned
`seed` (if any) replaced by `reroll_seed(seed, t)`. Nothing about it is
random: a crash before the run records it makes the same re-roll next time,
and once recorded (a ledger row whose `rerolled_from` is X's key) X is not
re-rolled again. The recipe is part of every re-roll's key, like the key's
own (`plan/keys.py`): a recorded re-roll is taken back into the plan only if
rebuilding it gives the key the ledger has.

Must not: write the ledger (the run records new re-rolls through
`ensure_tasks`, with `rerolled_from`), send anything, or print.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

from mvbatch.ledger import IN_FLIGHT, TaskRow, Verdict
from mvbatch.money import usd
from mvbatch.plan import catalog
from mvbatch.plan.planner import Plan, PlannedTask, another_take

Kind = Literal["all", "draft", "approved", "reroll"]
KINDS: tuple[Kind, ...] = ("all", "draft", "approved", "reroll")
# A seed field's bounds when its schema gives none (a signed 32-bit integer's).
SEED_MIN, SEED_MAX = 0, 2**31 - 1


@dataclass(frozen=True, slots=True)
class Reroll:
    """A new take of a rejected one."""

    task: PlannedTask  # the new take
    replaces: PlannedTask  # the rejected take
    seed: tuple[int, int] | None = None  # (before, after), when a pinned seed changed
    recorded: bool = False  # an earlier run recorded it in the ledger


@dataclass(frozen=True, slots=True)
class Selection:
    """The plan a run runs, and what it was chosen from."""

    kind: Kind
    plan: Plan  # the tasks to run
    full: Plan  # the manifest's plan with its recorded re-rolls: what reports speak of
    rerolls: tuple[Reroll, ...]  # the re-rolls in `plan`
    shots: tuple[str, ...]  # draft: the shots drafted; approved: the shots with an approved take
    # In flight in the ledger but not chosen: followed to their end (no new charge).
    unfinished: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.plan.tasks

    @property
    def rerolled_from(self) -> dict[str, str]:
        """The rejected take each re-roll replaces, by the re-roll's key (`ensure_tasks`)."""
        return {r.task.key: r.replaces.key for r in self.rerolls}

    @property
    def left_out(self) -> int:
        """The manifest's shots this selection runs nothing of."""
        return len(self.full.manifest.manifest.shots) - len(self.shots)


def select(
    plan: Plan,
    rows: Sequence[TaskRow],
    verdicts: Mapping[str, Verdict],
    kind: Kind = "all",
    status: Mapping[str, str] | None = None,
) -> Selection:
    """The plan to run; `rows` are the manifest's ledger rows on the run's side, in order.

    `status`: each row's status by key, when the caller read only that of a
    large ledger; then `rows` need only hold the re-rolled takes
    (`Ledger.rerolls`) for `kind` "all", which reads nothing else of a row.
    """
    full, recorded = with_rerolls(plan, rows)
    if status is None:
        status = {r.key: r.status for r in rows}
    rerolls: tuple[Reroll, ...] = ()
    shots: tuple[str, ...] = tuple(s.id for s in plan.manifest.manifest.shots)
    if kind == "all":
        chosen = list(full.tasks)
        rerolls = recorded
    elif kind == "draft":
        drafts = draft_tasks(plan)
        shots = tuple(drafts)
        keys = {t.key for t in drafts.values()}
        chosen = [t for t in full.tasks if t.key in keys]
    elif kind == "approved":
        shots = approved_shots(full, rows, verdicts)
        wanted = set(shots)
        chosen = [t for t in full.tasks if wanted.intersection(t.shots)]
        rerolls = tuple(r for r in recorded if wanted.intersection(r.task.shots))
    else:
        unfinished = tuple(r for r in recorded if status.get(r.task.key) != "succeeded")
        rerolls = (*unfinished, *new_rerolls(full, rows, verdicts))
        chosen = [r.task for r in rerolls]
        shots = tuple(dict.fromkeys(r.task.shot for r in rerolls))
    keys = {t.key for t in chosen}
    # Sent or being sent by an earlier run: followed to the end, whatever is chosen.
    extra = [t for t in full.tasks if t.key not in keys and status.get(t.key) in IN_FLIGHT]
    tasks = (*chosen, *extra)
    return Selection(
        kind,
        _with_tasks(full, tasks),
        full,
        rerolls,
        shots,
        tuple(t.key for t in extra),
    )


def _with_tasks(plan: Plan, tasks: Iterable[PlannedTask]) -> Plan:
    chosen = tuple(tasks)
    return replace(plan, tasks=chosen, duplicates=sum(1 for t in chosen if len(t.shots) > 1))


# ------------------------------------------------------------------ draft and approved


def draft_tasks(plan: Plan) -> dict[str, PlannedTask]:
    """Each shot's draft: take 1 of its variant with the lowest estimate (first on a tie)."""
    best: dict[str, PlannedTask] = {}
    for task in plan.tasks:
        if task.take != 1:
            continue
        for shot in task.shots:
            if shot not in best or task.estimate.cost < best[shot].estimate.cost:
                best[shot] = task
    order = [s.id for s in plan.manifest.manifest.shots]
    return {shot: best[shot] for shot in order if shot in best}


def approved_shots(
    plan: Plan, rows: Sequence[TaskRow], verdicts: Mapping[str, Verdict]
) -> tuple[str, ...]:
    """The manifest's shots with an approved take (re-rolls and shared tasks count for each)."""
    shots_of: dict[str, Sequence[str]] = {r.key: r.shots or [r.shot] for r in rows}
    shots_of.update({t.key: t.shots for t in plan.tasks})
    approved = {
        shot
        for key, verdict in verdicts.items()
        if verdict.verdict == "approved"
        for shot in shots_of.get(key, ())
    }
    return tuple(s.id for s in plan.manifest.manifest.shots if s.id in approved)


# ------------------------------------------------------------------ re-rolls


def with_rerolls(plan: Plan, rows: Sequence[TaskRow]) -> tuple[Plan, tuple[Reroll, ...]]:
    """The plan with the re-rolls the ledger recorded of its tasks (and of their re-rolls).

    A recorded re-roll whose key the recipe no longer gives (it re-rolled a
    take of an earlier manifest) is left alone, as any row of an earlier
    manifest is.
    """
    tasks = {t.key: t for t in plan.tasks}
    found: list[Reroll] = []
    for row in rows:  # first planned first: a re-roll comes after the take it replaces
        if row.rerolled_from is None or row.key in tasks:
            continue
        replaced = tasks.get(row.rerolled_from)
        if replaced is None:
            continue
        reroll = _reroll(replaced, row.take)
        if reroll.task.key != row.key:
            continue
        tasks[row.key] = reroll.task
        found.append(replace(reroll, recorded=True))
    if not found:
        return plan, ()
    return _with_tasks(plan, tasks.values()), tuple(found)


def new_rerolls(
    plan: Plan, rows: Sequence[TaskRow], verdicts: Mapping[str, Verdict]
) -> tuple[Reroll, ...]:
    """One new take for each rejected take of `plan` that has no re-roll in the ledger yet.

    `plan` includes the recorded re-rolls (`with_rerolls`): a rejected
    re-roll gets its own.
    """
    rerolled = {r.rerolled_from for r in rows if r.rerolled_from is not None}
    highest: dict[tuple[str, str], int] = {}
    known = [(t.shot, dict(t.variant), t.take) for t in plan.tasks]
    known += [(r.shot, r.variant, r.take) for r in rows]
    for shot, variant, take in known:
        group = (shot, _variant_id(variant))
        highest[group] = max(highest.get(group, 0), take)
    found = []
    for task in plan.tasks:
        verdict = verdicts.get(task.key)
        if verdict is None or verdict.verdict != "rejected" or task.key in rerolled:
            continue
        group = (task.shot, _variant_id(dict(task.variant)))
        highest[group] += 1
        found.append(_reroll(task, highest[group]))
    return tuple(found)


def _variant_id(variant: Mapping[str, Any]) -> str:
    return json.dumps(variant, sort_keys=True, default=str)


def _reroll(task: PlannedTask, take: int) -> Reroll:
    seed = task.input.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return Reroll(another_take(task, take, task.input), task)
    new = reroll_seed(task.model, seed, take)
    rerolled = another_take(task, take, {**task.input, "seed": new})
    return Reroll(rerolled, task, (seed, new) if new != seed else None)


def reroll_seed(model: str, seed: int, take: int) -> int:
    """The seed of take `take` re-rolled from a take pinned at `seed`: another valid one.

    Derived (BLAKE2b of both), never random, within the model schema's
    bounds; different from `seed` unless the schema allows only one value.
    """
    spec = _seed_field(model)
    low = spec.get("minimum", SEED_MIN)
    high = spec.get("maximum", max(SEED_MAX, low))
    span = high - low + 1
    if span <= 1:
        return seed
    digest = hashlib.blake2b(f"mvbatch/reroll/{seed}/{take}".encode(), digest_size=8).digest()
    value = low + int.from_bytes(digest, "big") % span
    if value == seed:
        value = low + (value - low + 1) % span
    return int(value)


def _seed_field(model: str) -> Mapping[str, Any]:
    found = catalog.get(model)
    spec = found.properties.get("seed") if found is not None else None
    return spec if isinstance(spec, Mapping) else {}


# -- run --shard K/N: one of N disjoint slices, for a job array without a shared ledger


def shard_number(key: str, count: int) -> int:
    """Which of `count` shards (1-based) a task belongs to: by a hash of its key, stable."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


def shard_of(plan: Plan, k: int, n: int) -> Plan:
    """The K-th of N disjoint slices of the plan; together the N cover it exactly once."""
    return _with_tasks(plan, (t for t in plan.tasks if shard_number(t.key, n) == k))


def shard_cap(cap: Decimal | None, n: int) -> Decimal | None:
    """Each shard's even share of the cap, rounded down to a hundredth of a cent."""
    if cap is None:
        return None
    return (cap / n).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


def shard_text(
    shard: tuple[int, int], tasks: int, whole: int, cap: Decimal | None, whole_cap: Decimal | None
) -> str:
    """What `run --shard` says beside the plan: its slice and its share of the cap."""
    k, n = shard
    line = f"shard {k}/{n}: {tasks} of the plan's {whole} tasks (by key hash)"
    if cap is None or whole_cap is None:
        return line + "; no cap"
    return (
        f"{line}; cap {usd(cap)} for this shard: an even share of {usd(whole_cap)} over {n} "
        "shards (each holds its own share; shards do not see each other's spend)"
    )
