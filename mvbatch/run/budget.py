"""The budget: the cap, the spend a run commits to, and the prices the server teaches.

Owns: the cap (`effective_cap`: the lowest of `[budget] max_usd` and
`--max-cost`); the whole plan held against it before the first request
(`preflight`, then `check_budget`: exit 3, nothing sent); and, during a run,
`Budget`: whether the next task fits under the cap with the spend already
committed, the tasks held because they do not, and the rates the server
teaches (a learned rate re-prices the class's unsent tasks and holds the rest
of the plan against the cap again).

Committed spend is what every task of the manifest stands for: its actual
cost once finished, else the server's `cost_estimate`, else our estimate
while its POST is unanswered (`TaskJob.committed`), plus what superseded
attempts cost.

It must not send requests or choose the order of work. Its one ledger write
is a learned rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from mvbatch import logs
from mvbatch.errors import BudgetError
from mvbatch.ledger import FAILED, IN_FLIGHT, Ledger, TaskRow
from mvbatch.money import normalize, usd
from mvbatch.plan.planner import Plan
from mvbatch.plan.pricing import MICRO, learn_rate
from mvbatch.run.jobs import JobBoard, TaskJob

log = logs.get("mvbatch.run.budget")


# ----------------------------------------------------------------- before the run


def effective_cap(*caps: Decimal | None) -> Decimal | None:
    """The lowest of the caps given; None when there is none."""
    given = [c for c in caps if c is not None]
    return min(given) if given else None


@dataclass(frozen=True, slots=True)
class Preflight:
    """The plan held against the ledger and the cap, before any request is made."""

    manifest: str
    cap: Decimal | None
    committed: Decimal  # what this manifest's tasks already stand for in the ledger
    new: int
    new_cost: Decimal
    retry: int  # failed tasks resubmitted under new keys (--retry-failed): paid again
    retry_cost: Decimal
    resume: int  # intent recorded, no task id: POSTed again under the same key
    poll: int  # in flight: polled, not submitted
    done: int
    failed: int  # failed and not retried
    assumed_classes: tuple[str, ...]  # price classes with no documented or learned rate
    floor: Decimal  # committed + tasks of known rates + one task per assumed class

    @property
    def projected(self) -> Decimal:
        return self.committed + self.new_cost + self.retry_cost

    @property
    def over_cap(self) -> bool:
        """Certain to break the cap: refuse before the first request."""
        return self.cap is not None and self.floor > self.cap

    @property
    def uncertain(self) -> bool:
        """Over the cap only at assumed rates: run, learn the rates, stop at the cap."""
        return self.cap is not None and not self.over_cap and self.projected > self.cap

    @property
    def work(self) -> int:
        return self.new + self.retry + self.resume + self.poll


def preflight(
    plan: Plan,
    rows: Mapping[str, TaskRow],
    cap: Decimal | None,
    retry_failed: bool = False,
    others: Iterable[TaskRow] = (),
) -> Preflight:
    """`rows`: the ledger's rows of the plan's tasks; `others`: the manifest's other rows.

    Spend already committed by tasks of the same manifest that are no longer
    in the plan counts too: the cap is the manifest's, across runs.
    """
    committed = sum((r.committed for r in others), Decimal(0))
    new = retry = resume = poll = done = failed = 0
    new_cost = retry_cost = known = Decimal(0)
    assumed: dict[str, Decimal] = {}
    for task in plan.tasks:
        row = rows.get(task.key)
        status = row.status if row is not None else "planned"
        cost = task.estimate.cost
        if row is not None:
            committed += row.committed
        if status == "planned":
            new, new_cost = new + 1, new_cost + cost
        elif status in FAILED and retry_failed:
            retry, retry_cost = retry + 1, retry_cost + cost
        elif status == "submitting":
            resume += 1
            continue
        elif status in IN_FLIGHT:
            poll += 1
            continue
        elif status == "succeeded":
            done += 1
            continue
        else:
            failed += 1
            continue
        if task.estimate.source == "assumed":
            name = task.estimate.price_class
            assumed[name] = min(assumed.get(name, cost), cost)
        else:
            known += cost
    floor = committed + known + sum(assumed.values(), Decimal(0))
    return Preflight(
        plan.name,
        cap,
        committed,
        new,
        new_cost,
        retry,
        retry_cost,
        resume,
        poll,
        done,
        failed,
        tuple(sorted(assumed)),
        floor,
    )


def check_budget(check: Preflight) -> None:
    """Refuse (exit 3, nothing sent) when the plan cannot fit under the cap."""
    if check.over_cap:
        log.info(
            "budget.refused",
            manifest=check.manifest,
            cap=str(check.cap),
            projected=str(check.projected),
            floor=str(check.floor),
            committed=str(check.committed),
        )
        needs = f"the plan needs {usd(check.projected)}"
        if check.floor != check.projected:
            # Only assumed prices can make the projection wrong; the floor is
            # what the run would spend even if every assumed rate were zero
            # but one probe task of each assumed tier.
            needs += (
                f" at the prices it knows, and at least {usd(check.floor)} even if the assumed "
                f"prices ({', '.join(check.assumed_classes)}) are wrong (committed so far + "
                "tasks with documented or learned prices + one task of each assumed-price tier)"
            )
        raise BudgetError(
            f"{needs}, but the cap is {usd(check.cap)} (already committed by {check.manifest}: "
            f"{usd(check.committed)}); nothing was submitted",
            hint="raise [budget] max_usd or --max-cost, or plan fewer tasks",
        )


# ----------------------------------------------------------------- during the run


class Budget:
    """The cap during a run: what fits, what is held, and the rates learned on the way."""

    def __init__(
        self, cap: Decimal | None, board: JobBoard, ledger: Ledger, env: str, manifest: str
    ) -> None:
        self.cap = cap
        self.board, self.ledger, self.env, self.manifest = board, ledger, env, manifest
        # Tasks of the manifest that the plan dropped and nobody follows: their
        # spend still counts against the manifest's cap.
        self.others_committed = Decimal(0)
        self.held: list[TaskJob] = []  # over the cap now; may fit once others finish
        self.held_for_good: list[TaskJob] = []  # over the cap at a learned rate
        self.held_reason: str | None = None

    @property
    def committed(self) -> Decimal:
        return self.board.committed + self.others_committed

    @property
    def held_count(self) -> int:
        return len(self.held) + len(self.held_for_good)

    def fits(self, job: TaskJob) -> bool:
        return self.cap is None or self.committed + job.estimate <= self.cap

    def hold(self, job: TaskJob) -> None:
        """Sending the job now would take committed spend over the cap."""
        self.held.append(job)
        log.info(
            "budget.held",
            key=job.key,
            shot=job.task.shot,
            estimate=str(job.estimate),
            committed=str(self.committed),
            cap=str(self.cap),
        )

    def release_fitting(self) -> list[TaskJob]:
        """Held jobs that fit now (a task ended costing less than it stood for)."""
        fitting = [j for j in self.held if self.fits(j)]
        if fitting:
            self.held = [j for j in self.held if j not in fitting]
        return fitting

    def note_stopped(self) -> None:
        """The run sent all it could; jobs still held stay `planned` for a later run."""
        self.held_reason = self.held_reason or (
            f"{len(self.held)} task(s) would take committed spend over the cap (${self.cap})"
        )
        log.info(
            "budget.stopped",
            manifest=self.manifest,
            held=len(self.held),
            committed=str(self.committed),
            cap=str(self.cap),
        )

    def learn_price(self, job: TaskJob, server_estimate: Decimal) -> None:
        """Compare the server's estimate with ours; adopt its rate for the class if new."""
        estimate = job.task.estimate
        if estimate.upper_bound or estimate.seconds <= 0 or server_estimate == job.estimate:
            return
        name = job.price_class
        rate = learn_rate(server_estimate, estimate.seconds)
        previous = (job.estimate / estimate.seconds) if estimate.seconds else None
        self.ledger.record_learned_rate(self.env, name, rate)
        log.info(
            "rate.learned",
            price_class=name,
            usd_per_second=str(rate),
            previous=None if previous is None else str(previous),
            source=estimate.source,
            key=job.key,
        )
        for other in self.board.by_price_class.get(name, ()):
            if other.dispatched or other.task.estimate.upper_bound:
                continue
            cost = normalize(
                (rate * other.task.estimate.seconds).quantize(MICRO, rounding=ROUND_HALF_UP)
            )
            self.board.update(other, estimate=cost)
        self._hold_the_rest_if_over_cap(name)

    def _hold_the_rest_if_over_cap(self, price_class: str) -> None:
        """After a rate changed, hold the rest of the plan against the cap again."""
        if self.cap is None:
            return
        queue = self.board.queue
        pending = [j for j in queue if j.status != "submitting"]
        projected = self.committed + sum((j.estimate for j in pending), Decimal(0))
        if projected <= self.cap:
            return
        self.held_reason = (
            f"the rate learned for {price_class} puts the plan at {usd(projected)}, over the "
            f"cap ${self.cap}; the {len(pending)} task(s) not yet submitted were held"
        )
        log.info(
            "budget.refused",
            manifest=self.manifest,
            projected=str(projected),
            cap=str(self.cap),
            price_class=price_class,
            held=len(pending),
        )
        self.held_for_good.extend(pending)
        held = set(map(id, pending))
        kept = [j for j in queue if id(j) not in held]
        queue.clear()
        queue.extend(kept)
