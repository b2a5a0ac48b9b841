"""Following a submitted task to its end: GETs on the learned schedule until it is over.

Owns: the poll loop of one task (`Follower.follow`): when to ask again (its
latency class's schedule from `polling.LatencyBook`, a `Retry-After`,
`--max-wait`), what an answer means (a status the docs do not list reads as
still running, logged once per status and run, but only for so long, see
`UNKNOWN_STATUS_POLLS`; "succeeded" without an output URL is asked again a
few times; a 4xx to a GET is retried with backoff and fails the task only
when it persists), recording progress, and letting a task go when
`--max-wait` runs out, a GET in progress included, or when it stays in an
undocumented status (it stays in flight in the ledger, never sent again; the
next run picks it up).

It must not POST, and it never decides what an end costs: `Finisher` records it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from mvbatch import logs
from mvbatch.api.responses import STATUSES, TaskState
from mvbatch.api.retry import Backoff
from mvbatch.errors import TaskRejected
from mvbatch.money import duration
from mvbatch.run.context import RunContext
from mvbatch.run.finish import Finisher
from mvbatch.run.jobs import TaskJob
from mvbatch.run.polling import LatencyBook, replan_after

# How long one run follows a task that has not ended, from when it starts
# following it: far beyond any documented generation time, short of forever.
DEFAULT_MAX_WAIT = 3 * 3600.0
EMPTY_SUCCESS_POLLS = 3
# A task id the API says it does not know (404/410, or another 4xx on a GET)
# may just not be visible yet: it fails only after this many answers in a row
# spanning at least NOT_FOUND_SPAN seconds.
NOT_FOUND_POLLS = 5
NOT_FOUND_SPAN = 120.0
NOT_FOUND_BACKOFF = Backoff(base=2.0, cap=60.0)  # waits 2, 4, 8 ... 60 s, no jitter
# A status the API docs do not list ("expired", "archived") reads as still
# running, but not for --max-wait's three hours: it may well be an end nobody
# documented. After this many answers in a row in such statuses, spanning at
# least UNKNOWN_STATUS_SPAN seconds, the task is let go like an overdue one:
# in flight in the ledger with the server's words (`status` counts it), never
# sent again, asked about again by the next run; the run exits 1.
UNKNOWN_STATUS_POLLS = 5
UNKNOWN_STATUS_SPAN = 600.0

log = logs.get("mvbatch.run.follow")


@dataclass(slots=True)
class _Streak:
    """Answers of one kind in a row, and since when (monotonic seconds)."""

    count: int = 0
    since: float = 0.0

    def add(self, now: float) -> float:
        """One more; returns how long the streak has lasted."""
        if self.count == 0:
            self.since = now
        self.count += 1
        return now - self.since


class Follower:
    """Polls submitted tasks until they end, `max_wait` runs out or the run stops."""

    def __init__(
        self,
        context: RunContext,
        *,
        latency: LatencyBook,
        finisher: Finisher,
        max_wait: float | None,
        stopping: Callable[[], bool],
    ) -> None:
        self.context = context
        self.client, self.ledger, self.board = context.client, context.ledger, context.board
        self.latency, self.finisher = latency, finisher
        self.max_wait = max_wait  # seconds; None follows every task to its end
        self._stopping = stopping
        self.overdue: list[str] = []  # shots of tasks let go when `max_wait` ran out
        # (shot, status) of tasks let go in a status the API docs do not list
        self.unresolved: list[tuple[str, str]] = []
        self._unknown_statuses: set[str] = set()

    async def follow(self, job: TaskJob) -> None:
        """GET the task when its schedule says, until it ends or is let go."""
        assert job.task_id is not None
        not_before = 0.0  # monotonic: a Retry-After the server sent with its answer
        missing = _Streak()  # not-found (or other 4xx) answers in a row
        unknown = _Streak()  # answers in a row in a status the docs do not list
        give_up = None if self.max_wait is None else time.monotonic() + self.max_wait
        while True:
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                self._let_go_overdue(job)
                return
            wait = self._seconds_to_next_poll(job, now, not_before, give_up)
            if wait > 0:
                # Sleep in steps: what this class's other tasks teach in the
                # meantime may move this task's next poll (no GET to re-plan).
                step = replan_after(now - job.since)
                await asyncio.sleep(min(wait, step))
                if wait > step:
                    continue
            if self._stopping():
                return
            try:
                # --max-wait bounds a GET in progress too (its retries, a server
                # that never answers), not only the waits between them.
                left = None if give_up is None else max(0.0, give_up - time.monotonic())
                async with asyncio.timeout(left):
                    state = await self.client.get(job.task_id)
            except TimeoutError:
                self._let_go_overdue(job)
                return
            except TaskRejected as rejected:
                # A task just created may not be visible yet (eventual
                # consistency), and a 4xx on one GET says nothing certain:
                # keep polling, with backoff; fail only when the answer
                # persists over NOT_FOUND_POLLS answers and NOT_FOUND_SPAN s.
                now = time.monotonic()
                span = missing.add(now)
                if self._refused_for_good(job, rejected, missing.count, span):
                    return
                not_before = now + NOT_FOUND_BACKOFF.ceiling(missing.count)
                continue
            missing = _Streak()
            job.polls += 1
            if await self._answered(job, state, unknown):
                return
            if state.retry_after is not None:
                not_before = time.monotonic() + state.retry_after

    async def _answered(self, job: TaskJob, state: TaskState, unknown: _Streak) -> bool:
        """What one answer to a poll means; True when the task is no longer followed."""
        if state.documented:
            unknown.count = 0
        else:
            self._note_unknown_status(job, state)
            span = unknown.add(time.monotonic())
            if unknown.count >= UNKNOWN_STATUS_POLLS and span >= UNKNOWN_STATUS_SPAN:
                self._let_go_unresolved(job, state, unknown.count, span)
                return True
        if state.status == "succeeded" and not state.urls:
            # Succeeded without an output URL: ask again a few times, then
            # accept it as it is rather than poll forever.
            job.empty_success += 1
            if job.empty_success >= EMPTY_SUCCESS_POLLS:
                log.warning("task.no_outputs", key=job.key, task_id=job.task_id)
                self.finisher.record_end(job, state)
                return True
        elif state.terminal:
            self.finisher.record_end(job, state)
            if state.status in ("failed", "cancelled"):
                await self.finisher.keep_server_events(job)
            return True
        job.last_alive = time.monotonic() - job.since
        self.latency.alive(job.latency_class, job.key, job.last_alive)
        status = "processing" if state.terminal else state.status
        if status != job.status or (job.error is not None and state.documented):
            # A new status, or a documented one after an earlier run let the
            # task go unresolved (its words in `error` no longer hold).
            self.ledger.record_progress(
                self.context.env,
                job.key,
                previous=job.status,
                status=status,
                polls=job.polls,
                run_id=self.context.run_id,
            )
            self.board.update(job, status, error=None)
        return False

    def _seconds_to_next_poll(
        self, job: TaskJob, now: float, not_before: float, give_up: float | None
    ) -> float:
        """Seconds to the task's next GET: its class's schedule, a Retry-After, `max_wait`."""
        elapsed = now - job.since
        at = self.latency.next_poll(job.latency_class, elapsed, job.last_alive, job.key)
        wait = max(at - elapsed, not_before - now)
        return wait if give_up is None else min(wait, give_up - now)

    def _let_go_overdue(self, job: TaskJob) -> None:
        """`max_wait` ran out: stop following the task; the ledger keeps it in flight."""
        self.overdue.append(job.task.shot)
        log.warning(
            "task.overdue",
            key=job.key,
            shot=job.task.shot,
            task_id=job.task_id,
            status=job.status,
            max_wait_s=self.max_wait,
            polls=job.polls,
        )

    def _let_go_unresolved(self, job: TaskJob, state: TaskState, answers: int, span: float) -> None:
        """An undocumented status for too long: stop following the task; the ledger keeps
        it in flight, with the server's words, until a later run sees it move or end."""
        words = state.error or "no message"
        message = (
            f"the server says the task is {state.raw_status!r}, a status the API docs do not "
            f"list ({words}); let go after {answers} such answers over {duration(span)}: it is "
            "not submitted again, and the next run asks about it again"
        )
        self.ledger.record_progress(
            self.context.env,
            job.key,
            previous=job.status,
            status=job.status,
            polls=job.polls,
            run_id=self.context.run_id,
            server_status=state.raw_status,
            error=message,
        )
        self.board.update(job, error=message)
        self.unresolved.append((job.task.shot, state.raw_status))
        log.warning(
            "task.unknown_status_let_go",
            key=job.key,
            shot=job.task.shot,
            task_id=job.task_id,
            status=state.raw_status,
            error=words,
            answers=answers,
            span_s=round(span, 3),
        )

    def _note_unknown_status(self, job: TaskJob, state: TaskState) -> None:
        """An undocumented status reads as still running; say so once per status and run."""
        raw = state.raw_status.strip().lower()
        if raw in STATUSES or raw in self._unknown_statuses:
            return
        self._unknown_statuses.add(raw)
        log.warning(
            "task.unknown_status",
            key=job.key,
            shot=job.task.shot,
            task_id=job.task_id,
            status=state.raw_status[:80],
            read_as=state.status,
        )

    def _refused_for_good(
        self, job: TaskJob, rejected: TaskRejected, missing: int, span: float
    ) -> bool:
        """One more 4xx to a poll; True when it persisted long enough and the task is failed."""
        assert job.task_id is not None
        job.polls += 1
        log.info(
            "task.poll_refused",
            key=job.key,
            task_id=job.task_id,
            http_status=rejected.status_code,
            error=rejected.message,
            in_a_row=missing,
        )
        if missing < NOT_FOUND_POLLS or span < NOT_FOUND_SPAN:
            return False
        what = (
            "the server no longer knows the task id"
            if rejected.status_code in (404, 410)
            else "the server keeps refusing to show the task"
        )
        message = (
            f"{what} {job.task_id} (HTTP {rejected.status_code}: {rejected.message}; "
            f"{missing} answers in a row over {span:.0f}s); it may still have been charged"
        )
        self.finisher.record_end(job, TaskState(job.task_id, "failed", error=message))
        return True
