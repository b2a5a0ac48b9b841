"""Sending one task: intent committed, POST under its idempotency key, answer committed.

Owns: the three steps that make a task charged exactly once (`Submitter`):

1. `claim`: the job counts as committed spend from now (a `--retry-failed`
   resubmission gets its next derived key, and the failed attempt's cost
   stays committed);
2. `submit`: the payload is built (off the event loop when local files are
   hashed and encoded), the intent (`submitting`, with the key) is committed
   as a reservation against the cap (the ledger refuses it, and nothing is
   sent, when the manifest's committed spend, every process's, leaves no
   room), the POST is sent with the `Idempotency-Key` header. The intents of
   the jobs that reach this point in the same turn of the event loop are one
   ledger step (`_commit_intents`, `Ledger.record_intents`), answered task by
   task, and each POST waits for it;
3. the answer is committed at once: the task id, or the end if the POST's
   answer is already final, or what a refusal means.

A refusal (4xx) of a first POST is `rejected` at $0. A refusal of a POST
that may have reached the server before (an intent from an earlier run, or
a retry within this call) is `failed` at our estimate, never `rejected`
(`_record_refused_resend`). An answer that is no task API at all
(`EndpointMissing`, a wrong base URL) fails nothing: a new task goes back to
`planned`, an earlier intent stays `submitting` for the next run.

It must not poll (the `Follower` does), choose what to send next (the
executor does) or retry a POST itself (the `ApiClient` retries it, under the
same key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from mvbatch import logs
from mvbatch.errors import EndpointMissing, FileChangedError, TaskRejected, UsageError
from mvbatch.ledger import FAILED, Intent, Reservation
from mvbatch.plan.keys import retry_key
from mvbatch.plan.media import LocalFile
from mvbatch.run.budget import Budget
from mvbatch.run.concurrency import AdaptiveLimit
from mvbatch.run.context import RunContext
from mvbatch.run.finish import Finisher
from mvbatch.run.fleet import Fleet
from mvbatch.run.jobs import TaskJob
from mvbatch.run.probes import PriceProbes

log = logs.get("mvbatch.run.submit")


class Submitter:
    """Submits jobs, one `claim` then one `submit` each."""

    def __init__(
        self,
        context: RunContext,
        *,
        budget: Budget,
        probes: PriceProbes,
        limit: AdaptiveLimit,
        finisher: Finisher,
        stopping: Callable[[], bool],
        fleet: Fleet | None = None,
    ) -> None:
        self.context = context
        self.fleet = fleet
        # The ledger refused a new task because the fleet (every worker on the
        # ledger) has `--concurrency` tasks in flight: the executor waits.
        self.fleet_busy = False
        self.client, self.ledger, self.board = context.client, context.ledger, context.board
        self.budget, self.probes = budget, probes
        self.limit, self.finisher = limit, finisher
        self._stopping = stopping
        self.submitted = 0  # POSTs answered in this run
        # Intents waiting for this turn of the event loop to end (`_reserve`).
        self._waiting: list[tuple[TaskJob, str, asyncio.Future[Reservation | None]]] = []

    def claim(self, job: TaskJob) -> str:
        """Mark the job `submitting` on the board (committed from now); returns its
        status before, which `submit` records the intent from."""
        previous = job.status
        if job.retry and previous in FAILED:
            job.attempt += 1
            job.submit_key = retry_key(job.key, job.attempt)
            job.retry = False
        if previous in FAILED:
            # The superseded attempt's cost stays committed (the ledger moves
            # it into cost_prior with the intent).
            self.board.update(
                job,
                "submitting",
                prior=job.committed,
                task_id=None,
                server_estimate=None,
                actual=None,
                error=None,
                polls=0,
                last_alive=None,
            )
        else:
            self.board.update(job, "submitting")
        job.dispatched = True
        return previous

    async def submit(self, job: TaskJob, previous: str) -> bool:
        """Intent, POST and record the answer. True when the task is now to be followed.

        Raises `UsageError` when a local file changed since the plan (nothing
        sent), `EndpointMissing` when no task API answered, and what the
        client raises to stop the run (`AuthError`, `ApiUnavailable`).
        """
        task = job.task
        probe = self.probes.is_probe(job)
        resend = job.resend or previous == "submitting"
        try:
            payload = await self._record_intent(job, previous)
            if payload is None:
                if probe:
                    self.probes.release(job.price_class, confirmed=False)
                return False
            model, body = payload["model"], payload["input"]
            del payload
            state = await self.client.submit(model, body, job.submit_key)
            del body
        except UsageError:
            if probe:
                self.probes.release(job.price_class, confirmed=False)
            raise  # stops the run
        except EndpointMissing as missing:
            self._record_not_sent(job, previous, missing)
            if probe:
                self.probes.release(job.price_class, confirmed=False)
            raise  # stops the run, like an AuthError
        except TaskRejected as rejected:
            if resend or rejected.maybe_sent:
                self._record_refused_resend(job, rejected)
            else:
                self._record_rejected(job, rejected)
            if probe:
                self.probes.release(job.price_class, confirmed=False)
            return False
        finally:
            job.posting = False
        job.since = time.monotonic()
        self.submitted += 1
        if self.limit.succeeded():
            log.info("concurrency.raised", limit=self.limit.limit)
        job.resend = False
        if state.cost_estimate is not None:
            # The task now stands for the server's estimate; then the rest of
            # its class is re-priced (and the plan re-checked) from it.
            self.board.update(job, server_estimate=state.cost_estimate)
            self.budget.learn_price(job, state.cost_estimate)
        self.probes.answered(job, state.cost_estimate, was_probe=probe)
        if state.terminal and not (state.status == "succeeded" and not state.urls):
            self.finisher.record_end(job, state, at_post=True)
            if state.status != "succeeded":
                await self.finisher.keep_server_events(job)
            return False
        status = "queued" if state.terminal else state.status
        self.ledger.record_submitted(
            self.context.env,
            job.key,
            task_id=state.task_id,
            request_id=state.request_id,
            status=status,
            cost_estimate=state.cost_estimate,
            run_id=self.context.run_id,
        )
        self.board.update(job, status, task_id=state.task_id, server_estimate=state.cost_estimate)
        log.info(
            "task.submitted",
            key=job.key,
            shot=task.shot,
            model=task.model,
            task_id=state.task_id,
            request_id=state.request_id,
            cost_estimate=None if state.cost_estimate is None else str(state.cost_estimate),
            replayed=state.replayed,
            attempt=job.attempt,
        )
        return True

    async def _record_intent(self, job: TaskJob, previous: str) -> dict[str, Any] | None:
        """Build the payload (off the event loop when it reads local files, which are
        hashed and encoded), then commit the intent, reserved against the cap. None
        when the run stopped meanwhile or the ledger refused the reservation."""
        try:
            if _reads_files(job.task.input):
                payload = await asyncio.to_thread(job.task.payload)
            else:
                payload = job.task.payload()
        except FileChangedError as error:
            self.board.update(job, previous)
            error.message += ": nothing more was submitted"
            raise
        if self._stopping():  # stopped while the payload was built: nothing was sent
            self.board.update(job, previous)
            return None
        reservation = await self._reserve(job, previous)
        if reservation is None:  # stopped before the intent was written: nothing was sent
            self.board.update(job, previous)
            return None
        if reservation.stale:  # another run moved this task on: it is not ours to send
            self.board.update(job, previous)
            job.elsewhere = True  # watched: taken over if its holder dies
            log.info("task.taken_elsewhere", key=job.key, shot=job.task.shot, status=previous)
            return None
        if reservation.busy:  # the fleet has --concurrency tasks in flight: later
            self.board.update(job, previous)
            self.board.queue.appendleft(job)
            self.fleet_busy = True
            log.debug("task.fleet_busy", key=job.key, limit=self.limit.maximum)
            return None
        self.budget.heard(job, reservation)
        if not reservation.granted:  # the cap is full, other processes' spend included
            self.board.update(job, previous)
            self.budget.refused(job, reservation)
            return None
        return payload

    def _reserve(self, job: TaskJob, previous: str) -> asyncio.Future[Reservation | None]:
        """The job's intent, to be committed with every other intent that comes in the
        same turn of the event loop, in one ledger step (`_commit_intents`)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reservation | None] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._commit_intents)
        self._waiting.append((job, previous, answer))
        return answer

    def _commit_intents(self) -> None:
        """Commit the waiting intents in one step (`Ledger.record_intents`) and answer each.

        Each job's POST waits for its own answer, so every intent is committed
        before its POST is sent; the ledger decides them one by one, in the
        order they came, exactly as it would have alone (the cap, the fleet's
        in-flight limit, stale and claimed tasks). A job cancelled meanwhile is
        left out; when the run stopped meanwhile, nothing is written.
        """
        waiting = [w for w in self._waiting if not w[2].done()]
        self._waiting = []
        if not waiting:
            return
        if self._stopping():
            for _, _, answer in waiting:
                answer.set_result(None)
            return
        intents = [
            Intent(
                job.key,
                previous,
                job.submit_key,
                job.attempt,
                job.estimate,
                # A new task only: a re-send is in flight already, and a retry's
                # new attempt is sent at once (its failed attempt freed a slot).
                self.limit.maximum if previous == "planned" else None,
            )
            for job, previous, _ in waiting
        ]
        try:
            reservations = self.ledger.record_intents(
                self.context.env,
                intents,
                run_id=self.context.run_id,
                cap=self.budget.cap,
                worker=None if self.fleet is None else self.fleet.worker,
                lease=None if self.fleet is None else self.fleet.lease,
            )
        except Exception as error:  # nothing was written: each job stops the run
            for _, _, answer in waiting:
                answer.set_exception(error)
            return
        for (_, _, answer), reservation in zip(waiting, reservations, strict=True):
            answer.set_result(reservation)

    def _record_rejected(self, job: TaskJob, rejected: TaskRejected) -> None:
        """A 4xx to a first POST: nothing was created, nothing charged (`rejected`, $0)."""
        task = job.task
        self.ledger.record_rejected(
            self.context.env,
            job.key,
            error=rejected.message,
            http_status=rejected.status_code,
            run_id=self.context.run_id,
        )
        self.board.update(job, "rejected", error=rejected.message)
        self.board.note_failure(job, rejected.message)
        log.info(
            "task.rejected",
            key=job.key,
            shot=task.shot,
            model=task.model,
            http_status=rejected.status_code,
            error=rejected.message,
        )

    def _record_not_sent(self, job: TaskJob, previous: str, missing: EndpointMissing) -> None:
        """The POST met no task API (a wrong base URL): nothing was created, nothing failed.

        A new task goes back to `planned`, as if this run had not touched it.
        An intent that was there before (a re-send) or a retry's new key, or a
        call whose earlier attempt went unanswered, stays `submitting`: the
        next run POSTs it again under the same key, which is free.
        """
        if previous == "planned" and not missing.maybe_sent:
            self.ledger.record_progress(
                self.context.env,
                job.key,
                previous="submitting",
                status="planned",
                polls=job.polls,
                run_id=self.context.run_id,
            )
            self.board.update(job, "planned")
        log.info(
            "task.not_sent",
            key=job.key,
            shot=job.task.shot,
            url=missing.url,
            http_status=missing.status_code,
            status=job.status,
        )

    def _record_refused_resend(self, job: TaskJob, rejected: TaskRejected) -> None:
        """A 4xx to a POST that may have reached the server before: maybe charged.

        Never `rejected` ($0): `failed`, with our estimate kept as committed
        spend, and never sent again by this run.
        """
        task = job.task
        message = (
            f"the server refused a re-send of this task (HTTP {rejected.status_code}: "
            f"{rejected.message}); the first send may have created and charged it — it was "
            "not submitted again"
        )
        estimate = job.server_estimate if job.server_estimate is not None else job.estimate
        self.ledger.record_refused_resend(
            self.context.env,
            job.key,
            error=message,
            http_status=rejected.status_code,
            estimate=estimate,
            run_id=self.context.run_id,
        )
        self.board.update(job, "failed", server_estimate=estimate, error=message)
        self.board.note_failure(job, message)
        log.warning(
            "task.resend_refused",
            key=job.key,
            shot=task.shot,
            model=task.model,
            http_status=rejected.status_code,
            error=rejected.message,
            committed=str(estimate),
        )


def _reads_files(value: Any) -> bool:
    """Whether a task's input holds a local file, which building its payload reads."""
    if isinstance(value, LocalFile):
        return True
    if isinstance(value, Mapping):
        return any(_reads_files(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_reads_files(v) for v in value)
    return False
