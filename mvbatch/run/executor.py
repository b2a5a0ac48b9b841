"""Running a plan: submit each task exactly once, follow it to the end, respect the budget.

Owns: the run as a whole (`Executor`): the jobs loaded from the plan and the
ledger, the order they are sent in, the slots they take, the tasks that
drive each job, stopping (`request_stop`) and the `Snapshot`s and
`RunResult` it reports. It must not print (the CLI renders what it reports)
and it never sees the API key (the `ApiClient`'s HTTP client carries it).

A task's path through `mvbatch/run/`:

    executor  _load_jobs ─► _submit_queued ─► _begin_submission ─► _submit_then_follow
    submit    Submitter.claim ─► Submitter.submit (intent, POST, answer)
    follow    Follower.follow (GETs on the schedule of `polling.LatencyBook`)
    finish    Finisher.record_end ─► hooks.SuccessHooks.start (downloads)

with `budget` (the cap, committed spend, learned rates), `probes` (the first
POST of each price class), `concurrency` (the slots) and `jobs` (the job
record and the board of tallies they all update) beside it.

The rules that keep money and work safe, in the order they happen:

1. Before anything is sent, `budget.preflight` holds the plan against the cap
   (`BudgetError`, zero requests, when over).
2. Per task: intent (`submitting`, with the idempotency key) is committed to
   the ledger, then the POST is sent, then the task id is committed (the
   intents of tasks that start together share one transaction, committed
   before any of their POSTs: `Submitter._commit_intents`). A crash
   between any two steps is repaired by the next run: intent without a task id
   is POSTed again under the same key (no new charge), a task id is polled.
3. Before each submission, committed spend (the server's estimates of
   submitted tasks, our estimates of tasks whose POST is unanswered, actual
   costs of finished ones) plus this task's estimate must stay within the cap:
   `Budget.fits` checks it first, and the intent itself is a reservation the
   ledger refuses when the manifest's committed spend, every process's
   included, leaves no room (the task is then held, as over the cap).
4. The first POST of each price class in a run goes alone: its `cost_estimate`
   confirms (or teaches) the rate before other tasks follow (the rest of the
   batch waits for every class's first answer). A rate that changes re-checks
   the rest of the plan against the cap. A probe of an assumed rate answered
   without a `cost_estimate` holds its class until it ends (`cost_actual`).
   A task billed more than its estimate re-prices its class by the bill and
   re-checks the rest of the plan the same way; the result names the bill and
   says when committed spend went over the cap (exit 3).
5. Concurrency (tasks in flight) halves on a 429 and grows back by one per
   window of successful submissions.
6. A 4xx to a POST that may have reached the server before (an intent from an
   earlier run, or a retry in this call) is `failed` at our estimate, never
   `rejected` at $0. A 4xx to a poll is retried (bounded), never final at once.
7. Tasks in flight that an edited manifest dropped are still polled to the
   end; intents without a task id that it dropped are reported, not lost.
8. Until the API has answered once in this run, one POST goes at a time. An
   answer that no task API gives (`EndpointMissing`: a wrong base URL) stops
   the run at once (exit 4) and fails nothing: a task that was new goes back
   to `planned`; an intent from before (a re-send, a retry) stays
   `submitting`, POSTed again under its key by the next run.
9. Every run is a worker among those on its ledger (`fleet.py`): the intent
   is also a claim, with a lease a heartbeat renews. A task another live
   worker holds is never sent or polled here; one whose holder is gone (its
   lease over, or its pid gone on this machine) is taken over: polled if it
   has a task id, sent again under the same key if not. `--concurrency` is
   the fleet's: the intent is refused (`busy`) while the manifest has that
   many tasks in flight, every worker's counted, and tried again later.

Order: unanswered POSTs first, then new tasks taking turns between latency
classes (so every class's price and latency are learned in the first wave),
then `--retry-failed` resubmissions. Polling times come from
`polling.LatencyBook`, fed from the ledger and by every task that finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal

from mvbatch import logs
from mvbatch.api.client import ApiClient
from mvbatch.errors import MvbatchError
from mvbatch.ledger import FAILED, IN_FLIGHT, Ledger, TaskRow
from mvbatch.plan.planner import Plan
from mvbatch.run.budget import Budget
from mvbatch.run.concurrency import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, AdaptiveLimit
from mvbatch.run.context import RunContext
from mvbatch.run.finish import Finisher
from mvbatch.run.fleet import DEFAULT_LEASE, Fleet
from mvbatch.run.follow import DEFAULT_MAX_WAIT, Follower
from mvbatch.run.hooks import OnSucceeded, SuccessHooks
from mvbatch.run.jobs import JobBoard, TaskJob, interleave, job_for, orphan_job
from mvbatch.run.polling import LatencyBook
from mvbatch.run.probes import PriceProbes
from mvbatch.run.results import RunResult, Snapshot
from mvbatch.run.submit import Submitter

STOP_GRACE = 10.0  # seconds a stopping run waits for POSTs already sent to answer
# A worker with nothing of its own left watches the tasks other workers hold:
# this often (seconds), reading them one by one while they are this few.
WATCH_EVERY = 1.0
WATCH_ONE_BY_ONE = 200

log = logs.get("mvbatch.run.executor")


class Executor:
    """Runs one plan against one API; create, then `await run()` once."""

    def __init__(
        self,
        plan: Plan,
        ledger: Ledger,
        client: ApiClient,
        *,
        env: str,
        cap: Decimal | None,
        run_id: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry_failed: bool = False,
        on_succeeded: OnSucceeded | None = None,
        latencies: LatencyBook | None = None,
        max_wait: float | None = DEFAULT_MAX_WAIT,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.plan, self.ledger, self.client, self.env = plan, ledger, client, env
        self.run_id, self.retry_failed = run_id, retry_failed
        self.latency = latencies if latencies is not None else LatencyBook(ledger.latencies(env))
        self.limit = AdaptiveLimit(min(MAX_CONCURRENCY, concurrency))
        client.on_throttle = self._on_throttle
        self.board = JobBoard()
        self.budget = Budget(cap, self.board, ledger, env, plan.name)
        self.probes = PriceProbes(self.budget, self.board)
        self.hooks = SuccessHooks(on_succeeded, ledger, env)
        self.fleet = Fleet(ledger, env, lease=lease)
        context = RunContext(client, ledger, env, run_id, self.board)
        self.finisher = Finisher(
            context,
            latency=self.latency,
            budget=self.budget,
            probes=self.probes,
            hooks=self.hooks,
        )
        self.submitter = Submitter(
            context,
            budget=self.budget,
            probes=self.probes,
            limit=self.limit,
            finisher=self.finisher,
            stopping=self._is_stopping,
            fleet=self.fleet,
        )
        self.follower = Follower(
            context,
            latency=self.latency,
            finisher=self.finisher,
            max_wait=max_wait,
            stopping=self._is_stopping,
        )
        self._drivers: dict[asyncio.Task[None], TaskJob] = {}  # one per job being worked on
        self._stopping = False
        self._fatal: BaseException | None = None
        self._started = time.monotonic()
        self._unfollowed: list[str] = []
        self._held_elsewhere: set[str] = set()  # in flight under another worker's live claim
        self._by_key: dict[str, TaskJob] = {}

    # -- setup

    def _load_jobs(self) -> list[TaskJob]:
        """Jobs from the plan and the ledger, queued in sending order; returns those to follow."""
        rows = {r.key: r for r in self.ledger.tasks(self.env, self.plan.name)}
        if self.fleet.release_the_dead(rows.values()):
            rows = {r.key: r for r in self.ledger.tasks(self.env, self.plan.name)}
        rows = self._claim_in_flight(rows)
        planned_keys = {t.key for t in self.plan.tasks}
        orphans = self._follow_or_report_dropped(
            [r for k, r in rows.items() if k not in planned_keys]
        )
        resend: list[TaskJob] = []
        new: list[TaskJob] = []
        retries: list[TaskJob] = []
        following: list[TaskJob] = []
        wall, mono = time.time(), time.monotonic()
        for task in self.plan.tasks:
            job = job_for(task, rows.get(task.key), wall, mono)
            job.elsewhere = task.key in self._held_elsewhere
            self.board.add(job)
            if job.elsewhere:
                continue  # another worker's, alive: watched until it ends (`_adopt_abandoned`)
            if job.status == "planned":
                new.append(job)
            elif job.status == "submitting":
                resend.append(job)
            elif job.status in IN_FLIGHT:
                following.append(job)
                if job.server_estimate is not None:
                    # The server already priced this class: no need to send
                    # one of its tasks alone to learn the rate.
                    self.budget.learn_price(job, job.server_estimate)
                    self.probes.confirm(job.price_class)
            elif job.status in FAILED and self.retry_failed:
                job.retry = True
                retries.append(job)
            elif job.status in FAILED:
                self.board.note_failure(job, job.error or job.status)
            if job.actual is not None:  # a failed task the server billed was spent too
                self.board.spent += job.actual
        for row in orphans:
            if row.key in self._held_elsewhere:
                continue  # its holder follows it
            job = orphan_job(row, wall, mono)
            log.info("task.orphan_followed", key=row.key, shot=row.shot, task_id=row.task_id)
            self.board.add(job, planned=False)
            following.append(job)
        # Unanswered POSTs first (they are already paid for, if anything),
        # then new tasks, then deliberate retries.
        self.board.queue.extend(resend)
        self.board.queue.extend(interleave(new))
        self.board.queue.extend(interleave(retries))
        return following

    def _claim_in_flight(self, rows: dict[str, TaskRow]) -> dict[str, TaskRow]:
        """Claim every task in flight that no live worker holds; note those others hold."""
        claimed = dict(rows)
        for key, row in rows.items():
            if row.status not in IN_FLIGHT:
                continue
            mine = self.fleet.claim(key)
            if mine is None:
                self._held_elsewhere.add(key)
            else:
                claimed[key] = mine
        return claimed

    def _follow_or_report_dropped(self, dropped: list[TaskRow]) -> list[TaskRow]:
        """Rows of this manifest that the plan no longer has; returns those to follow.

        In flight with a task id: polled to the end (and downloaded). Intent
        without a task id: cannot be rebuilt from the ledger, so reported.
        """
        orphans = [r for r in dropped if r.status in IN_FLIGHT and r.task_id]
        orphan_keys = {r.key for r in orphans}
        self.budget.others_committed = sum(
            (r.committed for r in dropped if r.key not in orphan_keys), Decimal(0)
        )
        lost = [r for r in dropped if r.status == "submitting" and not r.task_id]
        if lost:
            self._unfollowed = [r.shot for r in lost]
            log.warning(
                "run.unfollowed",
                manifest=self.plan.name,
                tasks=len(lost),
                shots=sorted({r.shot for r in lost}),
                keys=[r.key for r in lost],
                message=(
                    "tasks from an earlier version of the manifest may have been charged and "
                    "cannot be followed; restore their shots to resume them"
                ),
            )
        return orphans

    # -- what the run reports

    def snapshot(self) -> Snapshot:
        board = self.board
        elapsed = time.monotonic() - self._started
        remaining = sum(board.counts[s] for s in ("planned", *IN_FLIGHT)) - self.budget.held_count
        eta = None
        if remaining <= 0:
            eta = 0.0
        elif board.finished_in_run >= 3 and elapsed > 0:
            eta = remaining / (board.finished_in_run / elapsed)
        else:
            medians = [
                m
                for m in (self.latency.median(j.latency_class) for j in board.jobs[:50])
                if m is not None
            ]
            if medians:
                waves = -(-remaining // max(1, self.limit.limit))
                eta = waves * sorted(medians)[len(medians) // 2]
        return Snapshot(
            self.plan.name,
            self.env == "sim",
            len(board.jobs),
            dict(board.counts),
            self.budget.held_count,
            self.budget.committed,
            board.spent,
            self.budget.cap,
            self.limit.limit,
            self.limit.maximum,
            elapsed,
            eta,
            self._stopping,
        )

    def _result(self) -> RunResult:
        return RunResult(
            manifest=self.plan.name,
            simulated=self.env == "sim",
            total=len(self.board.jobs),
            counts={k: v for k, v in self.board.counts.items() if v},
            submitted=self.submitter.submitted,
            held=self.budget.held_count,
            held_reason=self.budget.held_reason,
            committed=self.budget.committed,
            spent=self.board.spent,
            cap=self.budget.cap,
            interrupted=self._stopping and self._fatal is None,
            elapsed=time.monotonic() - self._started,
            requests=dict(self.client.counts),
            failures=tuple(self.board.failures),
            unfollowed=tuple(self._unfollowed),
            overdue=tuple(self.follower.overdue),
            unresolved=tuple(self.follower.unresolved),
            max_wait=self.follower.max_wait,
            overbilled=tuple(self.budget.overbilled),
        )

    def _on_throttle(self) -> None:
        if self.limit.throttled():
            log.info("concurrency.reduced", limit=self.limit.limit)

    # -- stopping

    def _is_stopping(self) -> bool:
        return self._stopping

    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop submitting; POSTs already sent are recorded, polling stops. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        log.info(
            "run.stopping",
            manifest=self.plan.name,
            reason=reason,
            posting=sum(1 for j in self._drivers.values() if j.posting),
        )
        for task, job in self._drivers.items():
            if not job.posting:
                task.cancel()
        self.hooks.cancel()  # downloads resume on the next run
        self.board.wake()

    def _stop_with_error(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        self.request_stop(f"error: {error}")

    # -- the run

    async def run(self) -> RunResult:
        following = self._load_jobs()
        log.info(
            "run.started",
            manifest=self.plan.name,
            env=self.env,
            run_id=self.run_id,
            tasks=len(self.board.jobs),
            to_submit=len(self.board.queue),
            to_poll=len(following),
            cap=None if self.budget.cap is None else str(self.budget.cap),
            concurrency=self.limit.maximum,
        )
        if self.hooks.enabled:
            for key in sorted(self.ledger.undownloaded(self.env, self.plan.name)):
                self.hooks.start(key)
        for job in following:
            self.limit.acquire()  # already running on the server: they hold slots
            self._spawn_driver(job, None)
        self.fleet.start(self._take_over_abandoned)
        try:
            await self._submit_queued()
            await self._await_in_flight()
            await self._adopt_abandoned()
            self._settle_with_the_ledger()
            await self.hooks.wait(self._is_stopping)
        except asyncio.CancelledError:
            self._stopping = True
            raise
        finally:
            for task in list(self._drivers):
                task.cancel()
            await self.fleet.stop()
            # The client outlives the run (the downloads after it use it): its
            # hook must not keep this executor, and every task's job, alive.
            self.client.on_throttle = None
        if self._fatal is not None:
            raise self._fatal
        return self._result()

    def _next_ready_job(self) -> TaskJob | None:
        """The first queued job that may go now; the queue's order is otherwise kept.

        While the first POST of a price class is unanswered, only other first
        POSTs (and re-sends) go: the rest of the batch starts once every class
        it mixes has a confirmed price, in its interleaved order.
        """
        queue = self.board.queue
        for index, job in enumerate(queue):
            if self.probes.may_go(job):
                del queue[index]
                return job
        return None

    def _api_unproven(self) -> bool:
        """A POST is out and the API has not answered yet: is the base URL even right?

        Then nothing else is POSTed: a wrong URL costs one request, not a wave.
        """
        return not self.client.answered and any(j.posting for j in self._drivers.values())

    async def _submit_queued(self) -> None:
        """Submit queued jobs in order, within the slots, the budget and the probe rule."""
        while not self._stopping:
            if self.submitter.fleet_busy:
                # Every worker together has --concurrency tasks in flight: look
                # again when one of ours ends, or a moment later for theirs.
                self.submitter.fleet_busy = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.board.changed(), self.fleet.wait / 5)
                continue
            if self.limit.full or self._api_unproven():
                await self.board.changed()
                continue
            job = self._next_ready_job()
            if job is not None:
                if job.status != "submitting" and not self.budget.fits(job):
                    self.budget.hold(job)
                    continue
                self.probes.begin(job)
                self._begin_submission(job)
                continue
            if self.board.queue:
                # Everything left waits for a first POST of its class to answer.
                await self.board.changed()
                continue
            if self.budget.held and self._drivers:
                # Tasks still running may end up costing less than committed
                # (a failed task is refunded): look again when one finishes.
                await self.board.changed()
                self.board.queue.extend(self.budget.release_fitting())
                continue
            break
        if self.budget.held and not self._stopping:
            self.budget.note_stopped()

    def _begin_submission(self, job: TaskJob) -> None:
        """Take a slot and start the job's driver; the job counts as committed from now."""
        previous = self.submitter.claim(job)
        self.limit.acquire()
        self._spawn_driver(job, previous)

    def _spawn_driver(self, job: TaskJob, previous: str | None) -> None:
        """`previous`: the status before the intent, when the job is to be POSTed."""
        job.posting = previous is not None
        task = asyncio.create_task(self._submit_then_follow(job, previous), name=f"task {job.key}")
        self._drivers[task] = job

    async def _await_in_flight(self) -> None:
        """Wait for every job in flight; when stopping, only for POSTs already sent."""
        while self._drivers:
            if self._stopping:
                posting = [t for t, j in self._drivers.items() if j.posting]
                for task, job in list(self._drivers.items()):
                    if not job.posting:
                        task.cancel()
                if posting:
                    _, late = await asyncio.wait(posting, timeout=STOP_GRACE)
                    for task in late:
                        task.cancel()
                await asyncio.gather(*self._drivers, return_exceptions=True)
                return
            await asyncio.wait(list(self._drivers), return_when=asyncio.FIRST_COMPLETED)

    def _take_over_abandoned(self) -> None:
        """Take the tasks of this plan whose holder is gone, while this worker runs.

        A dead worker's tasks hold slots of the fleet's --concurrency until
        someone takes them: without this, workers that still have work to send
        would wait on a limit only the dead could free.
        """
        if self._stopping:
            return
        driving = {job.key for job in self._drivers.values()}
        jobs = self._jobs_by_key()
        for row in self.ledger.abandoned(self.env, self.plan.name, self.fleet.worker):
            job = jobs.get(row.key)
            if job is None or row.key in driving:
                continue
            mine = self.fleet.claim(row.key)
            if mine is None:
                continue  # another worker took it first
            if job in self.board.queue:
                self.board.queue.remove(job)
            self.budget.forget(job)
            self._adopt(job, mine)
            self.board.wake()

    def _jobs_by_key(self) -> dict[str, TaskJob]:
        if len(self._by_key) != len(self.board.jobs):
            self._by_key = {job.key: job for job in self.board.jobs}
        return self._by_key

    async def _adopt_abandoned(self) -> None:
        """Wait for the tasks other workers hold; take over those whose holder is gone.

        A holder that stops lets go at once; one that died loses its claims
        when its lease runs out. Ends when no task of the plan is held by
        anyone else: the work left is then none, or none this worker may take.
        """
        while not self._stopping:
            watched = {j.key: j for j in self.board.jobs if j.elsewhere}
            if not watched:
                return
            self.fleet.saw_others = True
            rows = self._rows_of(watched)
            self.fleet.release_the_dead(rows.values())
            for key, job in watched.items():
                row = rows.get(key)
                if row is None:  # the ledger does not know it: nothing to wait for
                    job.elsewhere = False
                elif row.status not in IN_FLIGHT:
                    job.elsewhere = False
                    self._sync(job, row)
                    if row.status == "planned":  # sent back (a wrong URL elsewhere): ours
                        self.board.queue.append(job)
            self._take_over_abandoned()  # in flight, but its holder is gone
            if self.board.queue:
                await self._submit_queued()
            if self._drivers:
                await self._await_in_flight()
            elif any(j.elsewhere for j in self.board.jobs):
                # Nothing of its own left: look again soon, so that the worker
                # ends close to the fleet's last task (one read per task watched).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.board.changed(), min(WATCH_EVERY, self.fleet.wait))

    def _rows_of(self, watched: dict[str, TaskJob]) -> dict[str, TaskRow]:
        """The ledger's rows of the watched tasks: one by one when few, else the plan's."""
        if len(watched) <= WATCH_ONE_BY_ONE:
            found = (self.ledger.task(self.env, key) for key in watched)
            return {row.key: row for row in found if row is not None}
        return {r.key: r for r in self.ledger.tasks(self.env, self.plan.name) if r.key in watched}

    def _settle_with_the_ledger(self) -> None:
        """The board as the ledger has it now that this worker is done sending.

        Other workers (or runs on this ledger) may have finished tasks this one
        held back or never tried: the ledger is the truth, and the result says
        what it says. What other workers committed was learned during the run
        (`Budget.elsewhere`); tasks synced here count on the board now, so
        `elsewhere` becomes what the ledger holds beyond the board.
        """
        # The rows one at a time: only those that moved on without us are kept.
        drifted: list[tuple[TaskJob, TaskRow]] = []
        total = Decimal(0)
        jobs = self._jobs_by_key()
        for row in self.ledger.each_task(self.env, self.plan.name):
            total += row.committed
            job = jobs.get(row.key)
            if job is not None and row.status != job.status:
                drifted.append((job, row))
        for job, row in drifted:
            self.budget.forget(job)
            self._sync(job, row)
        # What other processes committed, as the ledger has it now: during the
        # run `elsewhere` kept the largest difference a reservation showed,
        # which a task re-priced meanwhile can leave too high.
        board = self.board.committed + self.budget.others_committed
        self.budget.elsewhere = max(Decimal(0), total - board)

    def _adopt(self, job: TaskJob, row: TaskRow) -> None:
        """Take over a task whose holder is gone: re-send its POST (same key) or poll it."""
        job.elsewhere = False
        self._sync(job, row)
        job.resend = row.status == "submitting"
        job.dispatched = True
        job.since = job_for(job.task, row, time.time(), time.monotonic()).since
        log.info("task.taken_over", key=job.key, shot=job.task.shot, status=row.status)
        self.limit.acquire()
        self._spawn_driver(job, "submitting" if row.status == "submitting" else None)

    def _sync(self, job: TaskJob, row: TaskRow) -> None:
        """The job as another worker left it in the ledger (its spend, counted in
        `Budget.elsewhere` until now, moves onto the board)."""
        self.fleet.saw_others = True
        before = job.committed
        if row.cost_actual is not None and job.actual is None:
            self.board.spent += row.cost_actual
        self.board.update(
            job,
            row.status,
            attempt=row.attempt,
            submit_key=row.submit_key,
            task_id=row.task_id,
            server_estimate=row.cost_estimate,
            actual=row.cost_actual,
            error=row.error,
            polls=row.polls,
            prior=row.cost_prior,
        )
        moved = job.committed - before
        self.budget.elsewhere = max(Decimal(0), self.budget.elsewhere - moved)
        if row.status in FAILED:
            self.board.note_failure(job, row.error or row.status)

    async def _submit_then_follow(self, job: TaskJob, previous: str | None) -> None:
        """One job's whole life in this run: its POST (unless already sent), then its polls."""
        try:
            # The payload (data URIs can be tens of MB) lives only inside
            # `submit`: it is not kept while the task is polled.
            if previous is not None and not await self.submitter.submit(job, previous):
                return
            if job.status in IN_FLIGHT and not self._stopping:
                await self.follower.follow(job)
        except asyncio.CancelledError:
            pass  # stopping: the ledger already holds what we know
        except MvbatchError as error:  # AuthError, ApiUnavailable, UsageError, ...
            self._stop_with_error(error)
        except Exception as error:
            log.exception("task.crashed", key=job.key)
            self._stop_with_error(error)
        finally:
            job.posting = False
            self.limit.release()
            self._drivers.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self.board.wake()
