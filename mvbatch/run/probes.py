"""The first POST of each price class goes alone: a probe that confirms the class's rate.

Owns: which price classes have a confirmed rate in this run, which have their
first POST out (a probe), and the rule that says whether a queued job may be
sent now (`may_go`): while a probe is out, only other first POSTs (and
re-sends) go; the rest of the batch waits until every class it mixes has a
confirmed price. A probe answered with a `cost_estimate` confirms its class.
A probe of an assumed rate answered without one holds its class until the
task ends (`settle`, with its `cost_actual`). A probe that was refused or
never sent leaves its class unconfirmed: the class's next task probes.

It must not send requests or write the ledger: what a price teaches is the
`Budget`'s to learn.
"""

from __future__ import annotations

from decimal import Decimal

from mvbatch import logs
from mvbatch.run.budget import Budget
from mvbatch.run.jobs import JobBoard, TaskJob

log = logs.get("mvbatch.run.probes")


class PriceProbes:
    """The price classes confirmed and probed in this run."""

    def __init__(self, budget: Budget, board: JobBoard) -> None:
        self.budget, self.board = budget, board
        self.probing: set[str] = set()
        self.confirmed: set[str] = set()

    def may_go(self, job: TaskJob) -> bool:
        """Whether a queued job may be sent now, as far as prices are concerned."""
        name = job.price_class
        first_of_its_class = name not in self.confirmed and name not in self.probing
        return (
            job.status == "submitting"
            or first_of_its_class
            or (name in self.confirmed and not self.probing)
        )

    def begin(self, job: TaskJob) -> None:
        """The job is about to be sent: it probes its class if nothing confirmed it yet."""
        if job.status != "submitting" and job.price_class not in self.confirmed:
            self.probing.add(job.price_class)

    def is_probe(self, job: TaskJob) -> bool:
        return job.price_class in self.probing and job.price_class not in self.confirmed

    def confirm(self, price_class: str) -> None:
        """The server priced the class already (a task in flight from an earlier run)."""
        self.confirmed.add(price_class)

    def answered(self, job: TaskJob, cost_estimate: Decimal | None, was_probe: bool) -> None:
        """The job's POST was answered; `cost_estimate` is the server's price, if it gave one."""
        if was_probe and cost_estimate is None and job.task.estimate.source == "assumed":
            # No price in the answer and only an assumed rate: the rest of the
            # class keeps waiting until this task ends (its cost_actual).
            job.probe_pending = True
            log.info("budget.probe_unpriced", price_class=job.price_class, key=job.key)
        elif was_probe or job.price_class not in self.confirmed:
            self.release(job.price_class, confirmed=True)

    def settle(self, job: TaskJob, cost_actual: Decimal | None) -> None:
        """A probe that answered without a price has ended: learn from its
        actual cost if it has one, else release its class at the assumed rate."""
        job.probe_pending = False
        if cost_actual is not None:
            self.budget.learn_price(job, cost_actual)
        else:
            log.warning(
                "budget.unconfirmed_rate",
                price_class=job.price_class,
                key=job.key,
                assumed=str(job.estimate),
            )
        self.release(job.price_class, confirmed=True)

    def release(self, price_class: str, confirmed: bool) -> None:
        """The first POST of a class answered: the rest of the class may follow.

        Refused, the class stays unconfirmed, and its next task probes instead.
        """
        self.probing.discard(price_class)
        if confirmed:
            self.confirmed.add(price_class)
        self.board.wake()
