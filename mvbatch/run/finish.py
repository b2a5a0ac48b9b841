"""The end of a task: its final status, cost, outputs and latency, recorded once.

Owns: `Finisher.record_end`, one ledger transaction per task that ends
(succeeded, failed or cancelled, whether the POST's answer or a poll said
so): the cost it actually stands for, its output URLs, the latency it taught
its class, the failure message; then what follows from it: a probe's class
is settled, a bill above the estimate re-projects the plan against the cap
(`Budget.learn_bill`), the success hook (downloads) is started. And
`keep_server_events`: the server's history of a failed task, fetched once,
never fatal.

It must not decide when a task has ended (the submitter and the follower
do), nor retry anything.
"""

from __future__ import annotations

import time
from decimal import Decimal

from mvbatch import logs
from mvbatch.api.responses import TaskState
from mvbatch.errors import ApiError, TaskRejected
from mvbatch.run.budget import Budget
from mvbatch.run.context import RunContext
from mvbatch.run.hooks import SuccessHooks
from mvbatch.run.jobs import TaskJob
from mvbatch.run.polling import LatencyBook
from mvbatch.run.probes import PriceProbes

log = logs.get("mvbatch.run.finish")


class Finisher:
    """Records how each task ended."""

    def __init__(
        self,
        context: RunContext,
        *,
        latency: LatencyBook,
        budget: Budget,
        probes: PriceProbes,
        hooks: SuccessHooks,
    ) -> None:
        self.context = context
        self.client, self.ledger, self.board = context.client, context.ledger, context.board
        self.latency, self.budget, self.probes, self.hooks = latency, budget, probes, hooks

    def record_end(self, job: TaskJob, state: TaskState, at_post: bool = False) -> None:
        """Record a terminal status, its cost, outputs and latency in one transaction.

        `at_post`: the POST's answer was already final (no task id was recorded yet).
        """
        task = job.task
        elapsed = time.monotonic() - job.since
        if state.server_seconds is not None:
            latency = state.server_seconds
        elif at_post:
            latency = 0.0
        else:
            # Finished somewhere between the last poll that saw it running
            # and this one: the midpoint is the least biased guess.
            latency = ((job.last_alive or 0.0) + elapsed) / 2
        succeeded = state.status == "succeeded"
        actual = state.cost_actual
        if succeeded and actual is None:
            actual = state.cost_estimate or job.server_estimate or job.estimate
        error = None if succeeded else (state.error or f"the task ended {state.status}")
        self.ledger.record_finished(
            self.context.env,
            job.key,
            previous=job.status,
            status=state.status,
            cost_estimate=state.cost_estimate,
            cost_actual=actual,
            error=error,
            urls=state.urls if succeeded else (),
            polls=job.polls,
            latency=(job.latency_class, latency),
            run_id=self.context.run_id,
            task_id=state.task_id if at_post else None,
            request_id=state.request_id if at_post else None,
        )
        self.board.update(
            job,
            state.status,
            task_id=state.task_id,
            server_estimate=state.cost_estimate or job.server_estimate,
            actual=actual,
            error=error,
        )
        self.latency.observe(job.latency_class, latency, job.key)
        self.board.finished_in_run += 1
        self.board.spent += actual or Decimal(0)  # failed tasks may be billed too
        if job.probe_pending:  # its bill is the class's price, not a surprise
            self.probes.settle(job, state.cost_actual)
        elif actual is not None:
            self.budget.learn_bill(job, actual)
        if succeeded:
            log.info(
                "task.succeeded",
                key=job.key,
                shot=task.shot,
                model=task.model,
                task_id=state.task_id,
                cost_actual=None if actual is None else str(actual),
                outputs=len(state.urls),
                latency_s=round(latency, 3),
                polls=job.polls,
                at_post=at_post,
            )
            if self.hooks.enabled:
                self.hooks.start(job.key)
        else:
            self.board.note_failure(job, error or state.status)
            log.info(
                "task.failed",
                key=job.key,
                shot=task.shot,
                model=task.model,
                task_id=state.task_id,
                status=state.status,
                error=error,
                polls=job.polls,
            )

    async def keep_server_events(self, job: TaskJob) -> None:
        """Keep the server's history of a failed task: fetched once, never fatal."""
        if job.task_id is None:
            return
        try:
            events = await self.client.events(job.task_id)
        except (TaskRejected, ApiError) as error:
            log.info("task.events_unavailable", key=job.key, error=str(error))
            return
        self.ledger.record_server_events(self.context.env, job.key, events)
