"""The budget: the cap, the spend a run commits to, and the prices the server teaches.

Owns: the cap (`effective_cap`: the lowest of `[budget] max_usd` and
`--max-cost`); the whole plan held against it before the first request
(`preflight`, then `check_budget`: exit 3, nothing sent); and, during a run,
`Budget`: whether the next task fits under the cap with the spend already
committed, the tasks held because they do not, and what the server teaches:
a learned rate, or a bill above the estimate, re-prices the class's unsent
tasks and holds the rest of the plan against the cap again.

Committed spend is what every task of the manifest stands for: its actual
cost once finished, else the server's `cost_estimate`, else our estimate
while its POST is unanswered (`TaskJob.committed`), plus what superseded
attempts cost.

The cap is the ledger's, not the process's: `Budget` is the fast pre-check,
and the reservation each intent makes in the ledger (`Ledger.record_intent`,
given the cap) is the final word, because it sums what every process has
committed in the same transaction. A refusal holds the task like any other
hold (exit 3).

It must not send requests or choose the order of work. Its one ledger write
is a learned rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from mvbatch import logs
from mvbatch.errors import BudgetError
from mvbatch.ledger import FAILED, IN_FLIGHT, Ledger, Reservation, TaskRow
from mvbatch.money import normalize, usd
from mvbatch.plan.planner import Plan
from mvbatch.plan.pricing import MICRO, learn_rate
from mvbatch.run.jobs import JobBoard, TaskJob
from mvbatch.run.results import Overbill

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
            f"{needs}, but the cap is {usd(check.cap)} (already committed by {check.manifest} "
            f"in the ledger, other processes' and earlier runs' included: "
            f"{usd(check.committed)}); nothing was submitted",
            hint="raise [budget] max_usd or --max-cost, or plan fewer tasks",
        )


# ----------------------------------------------------------------- during the run


class Budget:
    """The cap during a run: what fits, what is held, and what prices and bills taught.

    It is the fast pre-check: the ledger's reservation (`Ledger.record_intent`,
    given the cap) is the final word, because it also sees what other
    processes committed. What the ledger answers is learned here too
    (`heard`), so a run that shares its cap stops asking once it is full.
    """

    def __init__(
        self, cap: Decimal | None, board: JobBoard, ledger: Ledger, env: str, manifest: str
    ) -> None:
        self.cap = cap
        self.board, self.ledger, self.env, self.manifest = board, ledger, env, manifest
        # Tasks of the manifest that the plan dropped and nobody follows: their
        # spend still counts against the manifest's cap.
        self.others_committed = Decimal(0)
        # Committed by other processes since this run loaded the ledger, as its
        # last reservation said.
        self.elsewhere = Decimal(0)
        self.held: list[TaskJob] = []  # over the cap now; may fit once others finish
        self.held_for_good: list[TaskJob] = []  # over the cap at a learned rate or bill
        self.held_reason: str | None = None
        self.overbilled: list[Overbill] = []
        # Price class -> its worst bill over its estimate (a factor above 1).
        self.bill_factors: dict[str, Decimal] = {}

    @property
    def committed(self) -> Decimal:
        return self.board.committed + self.others_committed + self.elsewhere

    @property
    def anticipated(self) -> Decimal:
        """What tasks in flight of an overbilled class are expected to be billed above
        what they stand for now (their estimate times the class's bill factor)."""
        extra = Decimal(0)
        for name, factor in self.bill_factors.items():
            # Only the tasks in flight (at most --concurrency), not the whole
            # class: this is asked before every submission.
            for job in self.board.in_flight.get(name, ()):
                if job.actual is None:
                    extra += (job.committed - job.prior) * (factor - 1)
        return extra

    @property
    def held_count(self) -> int:
        return len(self.held) + len(self.held_for_good)

    def fits(self, job: TaskJob) -> bool:
        return self.cap is None or self.committed + self.anticipated + job.estimate <= self.cap

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

    def forget(self, job: TaskJob) -> None:
        """The job is no longer held: another worker ran it (the ledger says so)."""
        self.held = [j for j in self.held if j is not job]
        self.held_for_good = [j for j in self.held_for_good if j is not job]

    def release_fitting(self) -> list[TaskJob]:
        """Held jobs that fit now (a task ended costing less than it stood for)."""
        fitting = [j for j in self.held if self.fits(j)]
        if fitting:
            self.held = [j for j in self.held if j not in fitting]
        return fitting

    def note_stopped(self) -> None:
        """The run sent all it could; jobs still held stay `planned` for a later run."""
        shared = ""
        if self.others_committed or self.elsewhere:
            shared = f" ({usd(self.committed)}, other processes' and earlier runs' included)"
        self.held_reason = self.held_reason or (
            f"{len(self.held)} task(s) would take committed spend{shared} over the cap "
            f"{usd(self.cap)}"
        )
        log.info(
            "budget.stopped",
            manifest=self.manifest,
            held=len(self.held),
            committed=str(self.committed),
            cap=str(self.cap),
        )

    # -- what the ledger answered

    def heard(self, job: TaskJob, reservation: Reservation) -> None:
        """The ledger's answer to the job's reservation: learn what others committed.

        The board already counts the job (claimed) at its estimate; the
        ledger's sum was taken before its intent. Jobs claimed here whose
        intents are not in the ledger yet make the difference look smaller
        than it is: the largest seen stands (others' spend only grows, but
        for refunds, which the ledger's answer still sees).
        """
        if reservation.committed is None:
            return
        ours = self.board.committed + self.others_committed - job.estimate
        self.elsewhere = max(self.elsewhere, reservation.committed - ours)

    def refused(self, job: TaskJob, reservation: Reservation) -> None:
        """The ledger refused the job's intent: the cap is full, other processes' spend
        included. Held for the rest of the run (the ledger would refuse it again)."""
        self.held_for_good.append(job)
        committed = reservation.committed if reservation.committed is not None else Decimal(0)
        self.held_reason = (
            f"the cap {usd(self.cap)} was reached by the committed spend recorded in the "
            f"ledger, other processes' runs of {self.manifest} included ({usd(committed)}; "
            f"task {job.task.shot} at {usd(reservation.estimate)} would pass it)"
        )
        log.info(
            "budget.refused",
            manifest=self.manifest,
            key=job.key,
            shot=job.task.shot,
            estimate=str(reservation.estimate),
            committed=str(committed),
            cap=str(self.cap),
            by="ledger",
        )

    # -- what the server taught

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
        factor = self.bill_factors.get(name, Decimal(1))  # what its bills showed, kept
        for other in self._unsent(name):
            if other.task.estimate.upper_bound:
                continue
            self.board.update(other, estimate=_price(rate * other.task.estimate.seconds * factor))
        self._hold_the_rest_if_over_cap(
            f"the rate learned for {name} puts the plan at", price_class=name
        )

    def learn_bill(self, job: TaskJob, bill: Decimal) -> None:
        """A task ended billed: if more than it stood for, re-project the rest of the plan.

        The class's tasks not sent yet are re-priced by the bill's factor over
        the estimate (the worst seen), those in flight are expected to be
        billed the same way, and the plan is held against the cap again.
        """
        estimate = job.server_estimate or job.estimate
        if bill <= estimate:
            return
        overbill = Overbill(job.task.shot, job.key, estimate, bill)
        self.overbilled.append(overbill)
        name = job.price_class
        before = self.bill_factors.get(name, Decimal(1))
        factor = max(before, bill / max(estimate, MICRO))
        self.bill_factors[name] = factor
        for other in self._unsent(name):
            self.board.update(other, estimate=_price(other.estimate * factor / before))
        log.warning(
            "budget.overbilled",
            key=job.key,
            shot=job.task.shot,
            price_class=name,
            estimate=str(estimate),
            bill=str(bill),
            committed=str(self.committed),
            cap=None if self.cap is None else str(self.cap),
            over_cap=self.cap is not None and self.committed > self.cap,
        )
        self._hold_the_rest_if_over_cap(
            f"{overbill.words}; at that rate the plan comes to", price_class=name
        )

    def _unsent(self, price_class: str) -> list[TaskJob]:
        return [j for j in self.board.by_price_class.get(price_class, ()) if not j.dispatched]

    def _hold_the_rest_if_over_cap(self, why: str, price_class: str) -> None:
        """After a price or a bill changed, hold the rest of the plan against the cap again."""
        if self.cap is None:
            return
        queue = self.board.queue
        pending = [j for j in queue if j.status != "submitting"]
        projected = (
            self.committed + self.anticipated + sum((j.estimate for j in pending), Decimal(0))
        )
        if projected <= self.cap:
            return
        self.held_reason = (
            f"{why} {usd(projected)}, over the cap {usd(self.cap)}; "
            f"the {len(pending)} task(s) not yet submitted were held"
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


def _price(amount: Decimal) -> Decimal:
    """A task's estimate, to the millionth of a dollar, as the price table writes it."""
    return normalize(amount.quantize(MICRO, rounding=ROUND_HALF_UP))
