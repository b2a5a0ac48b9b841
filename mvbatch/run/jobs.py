"""The jobs of a run: one per task, and the board that keeps their tallies exact.

Owns: `TaskJob`, what the run knows about one task (status, the key it is
sent under, our estimate and the server's, polling state); how a job is
rebuilt from its ledger row (`job_for`, `orphan_job`); the order new work is
sent in (`interleave`); and `JobBoard`, the state every part of the run
shares: the jobs, their counts by status, the spend they stand for, the
queue waiting to be sent, the failures, and the event that wakes the
executor when any of it changes.

It must not do I/O (no ledger writes, no requests, no log events): the parts
that act on a job change it here, through `JobBoard.update`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from mvbatch.ledger import IN_FLIGHT, TaskRow, committed_cost
from mvbatch.plan.planner import PlannedTask
from mvbatch.plan.pricing import Estimate
from mvbatch.run.polling import latency_class


@dataclass(slots=True, eq=False)
class TaskJob:
    """One task during a run. Change it through `JobBoard.update` to keep the counts right."""

    task: PlannedTask
    status: str
    attempt: int
    submit_key: str
    estimate: Decimal  # ours; replaced when the class's rate is learned
    task_id: str | None = None
    server_estimate: Decimal | None = None
    actual: Decimal | None = None
    error: str | None = None
    polls: int = 0
    since: float = 0.0  # monotonic time the POST was answered
    last_alive: float | None = None  # seconds after `since` it was last seen running
    posting: bool = False
    empty_success: int = 0  # polls that said "succeeded" without an output URL
    dispatched: bool = False
    retry: bool = False  # a deliberate resubmission of a failed task
    prior: Decimal = Decimal(0)  # committed by earlier, superseded attempts
    resend: bool = False  # found `submitting` in the ledger: a POST may have gone before
    probe_pending: bool = False  # a probe answered without a price: its class waits
    elsewhere: bool = False  # another worker holds it: watched, taken over if that one dies

    @property
    def key(self) -> str:
        return self.task.key

    @property
    def price_class(self) -> str:
        return self.task.estimate.price_class

    @property
    def latency_class(self) -> str:
        return latency_class(self.price_class, self.task.estimate.seconds)

    @property
    def committed(self) -> Decimal:
        return self.prior + committed_cost(
            self.status, self.estimate, self.server_estimate, self.actual
        )


def job_for(task: PlannedTask, row: TaskRow | None, wall: float, mono: float) -> TaskJob:
    """The job of a planned task, where its ledger row (if any) left it.

    `wall` and `mono` are the same instant on the wall clock and the monotonic
    clock: a task submitted by an earlier run has been running since then.
    """
    job = TaskJob(task, "planned", 0, task.key, task.estimate.cost)
    if row is None:
        return job
    job.status, job.attempt, job.submit_key = row.status, row.attempt, row.submit_key
    job.task_id, job.server_estimate = row.task_id, row.cost_estimate
    job.actual, job.error, job.polls = row.cost_actual, row.error, row.polls
    job.prior, job.resend = row.cost_prior, row.status == "submitting"
    if row.submitted_at:
        age = wall - datetime.fromisoformat(row.submitted_at).timestamp()
        job.since = mono - max(0.0, age)
    return job


def orphan_job(row: TaskRow, wall: float, mono: float) -> TaskJob:
    """A task in flight that the edited manifest no longer has: polled to the end."""
    seconds = row.seconds if row.seconds is not None else Decimal(0)
    estimate = Estimate(
        row.estimate_local,
        row.estimate_source,  # type: ignore[arg-type]
        row.price_class,
        seconds,
        row.upper_bound,
    )
    task = PlannedTask(
        key=row.key,
        manifest=row.manifest,
        shot=row.shot,
        shots=tuple(row.shots),
        variant=tuple(row.variant.items()),
        take=row.take,
        model=row.model,
        input=row.input,
        estimate=estimate,
    )
    job = job_for(task, row, wall, mono)
    job.dispatched = True  # sent by an earlier run, never by this one
    return job


def interleave(jobs: list[TaskJob]) -> list[TaskJob]:
    """Plan order, but taking turns between latency classes (model, tier, length).

    Every class then has tasks in the first wave: its price is confirmed and
    its latency learned early, instead of each class starting cold when the
    one before it is done.
    """
    by_class: dict[str, deque[TaskJob]] = {}
    for job in jobs:
        by_class.setdefault(job.latency_class, deque()).append(job)
    order: list[TaskJob] = []
    queues = list(by_class.values())
    while queues:
        for queue in queues:
            order.append(queue.popleft())
        queues = [q for q in queues if q]
    return order


class JobBoard:
    """Every job of the run with exact tallies; `changed()` wakes whoever waits on them."""

    def __init__(self) -> None:
        self.jobs: list[TaskJob] = []
        self.by_price_class: dict[str, list[TaskJob]] = {}  # the plan's jobs only
        # The plan's jobs in flight, by price class: what a bill above the
        # estimate makes the run expect more of (`Budget.anticipated`).
        self.in_flight: dict[str, set[TaskJob]] = {}
        self._planned: set[TaskJob] = set()
        self.counts: Counter[str] = Counter()  # by ledger status
        self.queue: deque[TaskJob] = deque()  # waiting for their POST, in sending order
        self.committed = Decimal(0)  # what the jobs stand for (`TaskJob.committed`)
        self.spent = Decimal(0)  # actual costs of finished tasks (failed ones may be billed)
        self.failures: list[tuple[str, str, str]] = []  # (shot, key, message)
        self.finished_in_run = 0
        self._changed = asyncio.Event()

    def add(self, job: TaskJob, *, planned: bool = True) -> None:
        """A job joins the run; `planned=False` for one the manifest no longer has."""
        self.jobs.append(job)
        if planned:
            self.by_price_class.setdefault(job.price_class, []).append(job)
            self._planned.add(job)
            if job.status in IN_FLIGHT:
                self.in_flight.setdefault(job.price_class, set()).add(job)
        self.counts[job.status] += 1
        self.committed += job.committed

    def update(self, job: TaskJob, status: str | None = None, **fields: Any) -> None:
        """Change a job's status or fields, keeping the counts and committed spend exact."""
        before = job.committed
        if status is not None and status != job.status:
            self.counts[job.status] -= 1
            self.counts[status] += 1
            if job in self._planned and (job.status in IN_FLIGHT) != (status in IN_FLIGHT):
                flying = self.in_flight.setdefault(job.price_class, set())
                if status in IN_FLIGHT:
                    flying.add(job)
                else:
                    flying.discard(job)
            job.status = status
        for name, value in fields.items():
            setattr(job, name, value)
        self.committed += job.committed - before
        self._changed.set()

    def note_failure(self, job: TaskJob, message: str) -> None:
        self.failures.append((job.task.shot, job.key, message))

    def wake(self) -> None:
        """Something changed that the executor may be waiting for (a slot, a price)."""
        self._changed.set()

    async def changed(self) -> None:
        """Wait until something changes."""
        await self._changed.wait()
        self._changed.clear()
