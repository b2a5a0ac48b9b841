"""Running a plan: submit each task exactly once, poll it to the end, respect the budget.

Owns: the order of submissions, the budget (before the first submission and
before every one after), adaptive concurrency, polling, resuming from the
ledger and stopping cleanly. It must not print (the CLI renders its
`Snapshot`s and `RunResult`) and it never sees the API key (the `ApiClient`'s
HTTP client carries it).

The rules that keep money and work safe, in the order they happen:

1. Before anything is sent, `preflight` holds the plan against the cap
   (`BudgetError`, zero requests, when over).
2. Per task: intent (`submitting`, with the idempotency key) is committed to
   the ledger, then the POST is sent, then the task id is committed. A crash
   between any two steps is repaired by the next run: intent without a task id
   is POSTed again under the same key (no new charge), a task id is polled.
3. Before each submission, committed spend (the server's estimates of
   submitted tasks, our estimates of tasks whose POST is unanswered, actual
   costs of finished ones) plus this task's estimate must stay within the cap.
4. The first POST of each price class in a run goes alone: its `cost_estimate`
   confirms (or teaches) the rate before other tasks follow (the rest of the
   batch waits for every class's first answer). A rate that changes re-checks
   the rest of the plan against the cap. A probe of an assumed rate answered
   without a `cost_estimate` holds its class until it ends (`cost_actual`).
6. A 4xx to a POST that may have reached the server before (an intent from an
   earlier run, or a retry in this call) is `failed` at our estimate, never
   `rejected` at $0. A 4xx to a poll is retried (bounded), never final at once.
7. Tasks in flight that an edited manifest dropped are still polled to the
   end; intents without a task id that it dropped are reported, not lost.
5. Concurrency (tasks in flight) halves on a 429 and grows back by one per
   window of successful submissions.
8. Until the API has answered once in this run, one POST goes at a time. An
   answer that no task API gives (`EndpointMissing`: a wrong base URL) stops
   the run at once (exit 4) and fails nothing: a task that was new goes back
   to `planned`; an intent from before (a re-send, a retry) stays
   `submitting`, POSTed again under its key by the next run.

Order: unanswered POSTs first, then new tasks taking turns between latency
classes (so every class's price and latency are learned in the first wave),
then `--retry-failed` resubmissions. Polling times come from
`polling.LatencyBook`, fed from the ledger and by every task that finishes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mvbatch import logs
from mvbatch.api.client import STATUSES, ApiClient, EndpointMissing, TaskRejected, TaskState
from mvbatch.errors import ApiError, BudgetError, MvbatchError, UsageError
from mvbatch.ledger.store import FAILED, IN_FLIGHT, Ledger, TaskRow, committed_cost
from mvbatch.plan.keys import retry_key
from mvbatch.plan.media import FileChangedError
from mvbatch.plan.planner import Plan, PlannedTask
from mvbatch.plan.pricing import MICRO, Estimate, learn_rate, normalize
from mvbatch.run.polling import LatencyBook, latency_class, replan_after

DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256
STOP_GRACE = 10.0  # seconds a stopping run waits for POSTs already sent to answer
# How long one run follows a task that has not ended, from when it starts
# following it: far beyond any documented generation time, short of forever.
DEFAULT_MAX_WAIT = 3 * 3600.0
THROTTLE_COOLDOWN = 1.0  # one halving per this many seconds, however many 429s arrive
EMPTY_SUCCESS_POLLS = 3
# A task id the API says it does not know (404/410, or another 4xx on a GET)
# may just not be visible yet: it fails only after this many answers in a row
# spanning at least NOT_FOUND_SPAN seconds.
NOT_FOUND_POLLS = 5
NOT_FOUND_SPAN = 120.0
NOT_FOUND_BACKOFF = (2.0, 60.0)  # first wait after a not-found answer, and the ceiling

OnSucceeded = Callable[[TaskRow], Awaitable[None]]
log = logs.get("mvbatch.run.executor")


# ----------------------------------------------------------------- test hook

_CRASH_POINT = os.environ.get("MVBATCH_TEST_CRASH_POINT", "")
_crash_counts: Counter[str] = Counter()


def _crash_point(name: str) -> None:
    """Kill this process with SIGKILL at a named point, for the crash tests only.

    `MVBATCH_TEST_CRASH_POINT=after_post` dies right after the first POST
    returns, before its task id is committed; `after_post:3` at the third.
    """
    if not _CRASH_POINT:
        return
    point, _, nth = _CRASH_POINT.partition(":")
    if point != name:
        return
    _crash_counts[name] += 1
    if _crash_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------- budget


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
        needs = f"the plan needs ${check.projected:.4f}"
        if check.floor != check.projected:
            # Only assumed prices can make the projection wrong; the floor is
            # what the run would spend even if every assumed rate were zero
            # but one probe task of each assumed tier.
            needs += (
                f" at the prices it knows, and at least ${check.floor:.4f} even if the assumed "
                f"prices ({', '.join(check.assumed_classes)}) are wrong (committed so far + "
                "tasks with documented or learned prices + one task of each assumed-price tier)"
            )
        raise BudgetError(
            f"{needs}, but the cap is ${check.cap:.4f} (already committed by {check.manifest}: "
            f"${check.committed:.4f}); nothing was submitted",
            hint="raise [budget] max_usd or --max-cost, or plan fewer tasks",
        )


# ----------------------------------------------------------------- concurrency


class AdaptiveLimit:
    """How many tasks may be in flight: halves on 429, regains one per window of successes."""

    def __init__(self, maximum: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.in_use = 0
        self._successes = 0
        self._last_cut = -float("inf")
        self._clock = clock

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def acquire(self) -> None:
        self.in_use += 1

    def release(self) -> None:
        self.in_use = max(0, self.in_use - 1)

    def throttled(self) -> bool:
        """The API said 429: halve, at most once per cooldown. True if it changed."""
        now = self._clock()
        if now - self._last_cut < THROTTLE_COOLDOWN or self.limit == 1:
            return False
        self._last_cut = now
        self.limit = max(1, self.limit // 2)
        self._successes = 0
        return True

    def succeeded(self) -> bool:
        """A submission went through: additive increase. True if the limit grew."""
        if self.limit >= self.maximum:
            return False
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            return True
        return False


# ----------------------------------------------------------------- state


@dataclass(slots=True, eq=False)
class _Job:
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
    orphan: bool = False  # no longer in the manifest: followed to the end, never sent

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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the progress display shows; cheap to take at any moment."""

    manifest: str
    simulated: bool
    total: int
    counts: Mapping[str, int]  # by ledger status
    held: int
    committed: Decimal
    spent: Decimal  # actual cost of finished tasks
    cap: Decimal | None
    concurrency: int
    max_concurrency: int
    elapsed: float
    eta: float | None
    stopping: bool


@dataclass(frozen=True, slots=True)
class RunResult:
    manifest: str
    simulated: bool
    total: int
    counts: Mapping[str, int]
    submitted: int  # POSTs answered in this run
    held: int  # tasks not submitted because of the budget
    held_reason: str | None
    committed: Decimal
    spent: Decimal
    cap: Decimal | None
    interrupted: bool
    elapsed: float
    requests: Mapping[str, int]
    failures: tuple[tuple[str, str, str], ...]  # (shot, key, message) of failed tasks
    # Shots of tasks sent (maybe) by an earlier version of the manifest, with
    # no task id: they may have been charged and cannot be followed.
    unfollowed: tuple[str, ...] = ()
    # Shots of tasks still running on the server when `max_wait` ran out.
    overdue: tuple[str, ...] = ()
    max_wait: float | None = None
    downloads_interrupted: bool = False  # Ctrl-C came after the executor, during the downloads

    @property
    def unfollowed_message(self) -> str | None:
        if not self.unfollowed:
            return None
        shots = ", ".join(sorted(set(self.unfollowed)))
        return (
            f"{len(self.unfollowed)} task(s) from an earlier version of the manifest may have "
            f"been charged and cannot be followed: restore shot {shots} to resume them"
        )

    @property
    def overdue_message(self) -> str | None:
        if not self.overdue:
            return None
        shots = ", ".join(sorted(set(self.overdue)))
        waited = "" if self.max_wait is None else f" after {_duration(self.max_wait)}"
        return (
            f"{len(self.overdue)} task(s) had not ended{waited} (shot {shots}): no longer "
            "followed in this run. They keep running on the server and are not submitted "
            "again; run again to collect them"
        )

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in FAILED)

    @property
    def pending(self) -> int:
        return self.total - self.failed - self.counts.get("succeeded", 0)


# ----------------------------------------------------------------- the executor


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
    ) -> None:
        self.plan, self.ledger, self.client, self.env = plan, ledger, client, env
        self.max_wait = max_wait  # seconds; None follows every task to its end
        self.cap, self.run_id, self.retry_failed = cap, run_id, retry_failed
        self.on_succeeded = on_succeeded
        self.latency = latencies if latencies is not None else LatencyBook(ledger.latencies(env))
        self.limit = AdaptiveLimit(min(MAX_CONCURRENCY, concurrency))
        client.on_throttle = self._throttled
        self.counts: Counter[str] = Counter()
        self._jobs: list[_Job] = []
        self._by_class: dict[str, list[_Job]] = {}
        self._queue: deque[_Job] = deque()
        self._probing: set[str] = set()
        self._confirmed: set[str] = set()
        self._held: list[_Job] = []  # over the cap now; may fit once others finish
        self._held_for_good: list[_Job] = []
        self._held_reason: str | None = None
        self._committed = Decimal(0)
        self._others_committed = Decimal(0)
        self._spent = Decimal(0)
        self._submitted = 0
        self._finished_in_run = 0
        self._drivers: dict[asyncio.Task[None], _Job] = {}
        self._hooks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._started = time.monotonic()
        self._failures: list[tuple[str, str, str]] = []
        self._unfollowed: list[str] = []
        self._overdue: list[str] = []
        self._unknown_statuses: set[str] = set()

    # -- setup

    def _load(self) -> list[_Job]:
        """Jobs from the plan and the ledger; returns those to resume polling."""
        rows = {r.key: r for r in self.ledger.tasks(self.env, self.plan.name)}
        planned_keys = {t.key for t in self.plan.tasks}
        orphans = self._dropped([r for k, r in rows.items() if k not in planned_keys])
        resubmit: list[_Job] = []
        new: list[_Job] = []
        retries: list[_Job] = []
        polling: list[_Job] = []
        wall, mono = time.time(), time.monotonic()
        for task in self.plan.tasks:
            row = rows.get(task.key)
            job = _Job(task, "planned", 0, task.key, task.estimate.cost)
            if row is not None:
                job.status, job.attempt, job.submit_key = row.status, row.attempt, row.submit_key
                job.task_id, job.server_estimate = row.task_id, row.cost_estimate
                job.actual, job.error, job.polls = row.cost_actual, row.error, row.polls
                job.prior, job.resend = row.cost_prior, row.status == "submitting"
                if row.submitted_at:
                    age = wall - datetime.fromisoformat(row.submitted_at).timestamp()
                    job.since = mono - max(0.0, age)
            self._jobs.append(job)
            self._by_class.setdefault(job.price_class, []).append(job)
            self.counts[job.status] += 1
            self._committed += job.committed
            if job.status == "planned":
                new.append(job)
            elif job.status == "submitting":
                resubmit.append(job)
            elif job.status in IN_FLIGHT:
                polling.append(job)
                if job.server_estimate is not None:
                    # The server already priced this class: no need to send
                    # one of its tasks alone to learn the rate.
                    self._learn(job, job.server_estimate)
                    self._confirmed.add(job.price_class)
            elif job.status in FAILED and self.retry_failed:
                job.retry = True
                retries.append(job)
            elif job.status in FAILED:
                self._failures.append((task.shot, task.key, job.error or job.status))
            if job.actual is not None:  # a failed task the server billed was spent too
                self._spent += job.actual
        for row in orphans:
            job = _orphan_job(row, wall, mono)
            log.info("task.orphan_followed", key=row.key, shot=row.shot, task_id=row.task_id)
            self._jobs.append(job)
            self.counts[job.status] += 1
            self._committed += job.committed
            polling.append(job)
        # Unanswered POSTs first (they are already paid for, if anything),
        # then new tasks, then deliberate retries.
        self._queue.extend(resubmit)
        self._queue.extend(interleave(new))
        self._queue.extend(interleave(retries))
        return polling

    def _dropped(self, dropped: list[TaskRow]) -> list[TaskRow]:
        """Rows of this manifest that the plan no longer has; returns those to follow.

        In flight with a task id: polled to the end (and downloaded). Intent
        without a task id: cannot be rebuilt from the ledger, so reported.
        """
        orphans = [r for r in dropped if r.status in IN_FLIGHT and r.task_id]
        orphan_keys = {r.key for r in orphans}
        self._others_committed = sum(
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

    # -- bookkeeping

    def _set(self, job: _Job, status: str | None = None, **values: Any) -> None:
        """Change a job's status or costs, keeping the counters exact."""
        before = job.committed
        if status is not None and status != job.status:
            self.counts[job.status] -= 1
            self.counts[status] += 1
            job.status = status
        for name, value in values.items():
            setattr(job, name, value)
        self._committed += job.committed - before
        self._wake.set()

    @property
    def committed(self) -> Decimal:
        return self._committed + self._others_committed

    def snapshot(self) -> Snapshot:
        elapsed = time.monotonic() - self._started
        remaining = (
            sum(self.counts[s] for s in ("planned", *IN_FLIGHT))
            - len(self._held)
            - len(self._held_for_good)
        )
        eta = None
        if remaining <= 0:
            eta = 0.0
        elif self._finished_in_run >= 3 and elapsed > 0:
            eta = remaining / (self._finished_in_run / elapsed)
        else:
            medians = [
                m
                for m in (self.latency.median(j.latency_class) for j in self._jobs[:50])
                if m is not None
            ]
            if medians:
                waves = -(-remaining // max(1, self.limit.limit))
                eta = waves * sorted(medians)[len(medians) // 2]
        return Snapshot(
            self.plan.name,
            self.env == "sim",
            len(self._jobs),
            dict(self.counts),
            len(self._held) + len(self._held_for_good),
            self.committed,
            self._spent,
            self.cap,
            self.limit.limit,
            self.limit.maximum,
            elapsed,
            eta,
            self._stopping,
        )

    def _throttled(self) -> None:
        if self.limit.throttled():
            log.info("concurrency.reduced", limit=self.limit.limit)

    def _fits(self, job: _Job) -> bool:
        return self.cap is None or self.committed + job.estimate <= self.cap

    # -- stopping

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
        for hook in self._hooks:
            hook.cancel()  # downloads resume on the next run
        self._wake.set()

    def _fail_run(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        self.request_stop(f"error: {error}")

    # -- the run

    async def run(self) -> RunResult:
        polling = self._load()
        log.info(
            "run.started",
            manifest=self.plan.name,
            env=self.env,
            run_id=self.run_id,
            tasks=len(self._jobs),
            to_submit=len(self._queue),
            to_poll=len(polling),
            cap=None if self.cap is None else str(self.cap),
            concurrency=self.limit.maximum,
        )
        if self.on_succeeded is not None:
            for key in sorted(self.ledger.undownloaded(self.env, self.plan.name)):
                self._spawn_hook(key)
        for job in polling:
            self.limit.acquire()  # already running on the server: they hold slots
            self._start(job, None)
        try:
            await self._dispatch()
            await self._drain()
            await self._finish_hooks()
        except asyncio.CancelledError:
            self._stopping = True
            raise
        finally:
            for task in list(self._drivers):
                task.cancel()
        if self._fatal is not None:
            raise self._fatal
        return self._result()

    def _result(self) -> RunResult:
        return RunResult(
            manifest=self.plan.name,
            simulated=self.env == "sim",
            total=len(self._jobs),
            counts={k: v for k, v in self.counts.items() if v},
            submitted=self._submitted,
            held=len(self._held) + len(self._held_for_good),
            held_reason=self._held_reason,
            committed=self.committed,
            spent=self._spent,
            cap=self.cap,
            interrupted=self._stopping and self._fatal is None,
            elapsed=time.monotonic() - self._started,
            requests=dict(self.client.counts),
            failures=tuple(self._failures),
            unfollowed=tuple(self._unfollowed),
            overdue=tuple(self._overdue),
            max_wait=self.max_wait,
        )

    async def _wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()

    def _next_job(self) -> _Job | None:
        """The first queued job that may go now; the queue's order is otherwise kept.

        While the first POST of a price class is unanswered, only other first
        POSTs (and re-sends) go: the rest of the batch starts once every class
        it mixes has a confirmed price, in its interleaved order.
        """
        for index, job in enumerate(self._queue):
            first_of_its_class = (
                job.price_class not in self._confirmed and job.price_class not in self._probing
            )
            confirmed = job.price_class in self._confirmed
            if (
                job.status == "submitting"
                or first_of_its_class
                or (confirmed and not self._probing)
            ):
                del self._queue[index]
                return job
        return None

    def _unproven(self) -> bool:
        """A POST is out and the API has not answered yet: is the base URL even right?

        Then nothing else is POSTed: a wrong URL costs one request, not a wave.
        """
        return not self.client.answered and any(j.posting for j in self._drivers.values())

    async def _dispatch(self) -> None:
        """Submit queued jobs in order, within the slots, the budget and the probe rule."""
        while not self._stopping:
            if self.limit.full or self._unproven():
                await self._wait()
                continue
            job = self._next_job()
            if job is not None:
                if job.status != "submitting" and not self._fits(job):
                    self._held.append(job)
                    log.info(
                        "budget.held",
                        key=job.key,
                        shot=job.task.shot,
                        estimate=str(job.estimate),
                        committed=str(self.committed),
                        cap=str(self.cap),
                    )
                    continue
                if job.status != "submitting" and job.price_class not in self._confirmed:
                    self._probing.add(job.price_class)
                self._launch(job)
                continue
            if self._queue:
                # Everything left waits for a first POST of its class to answer.
                await self._wait()
                continue
            if self._held and self._drivers:
                # Tasks still running may end up costing less than committed
                # (a failed task is refunded): look again when one finishes.
                await self._wait()
                fitting = [j for j in self._held if self._fits(j)]
                if fitting:
                    self._held = [j for j in self._held if j not in fitting]
                    self._queue.extend(fitting)
                continue
            break
        if self._held and not self._stopping:
            self._held_reason = self._held_reason or (
                f"{len(self._held)} task(s) would take committed spend over the cap (${self.cap})"
            )
            log.info(
                "budget.stopped",
                manifest=self.plan.name,
                held=len(self._held),
                committed=str(self.committed),
                cap=str(self.cap),
            )

    def _launch(self, job: _Job) -> None:
        """Take a slot and start the job's driver: it builds the payload, records
        the intent, then POSTs (`_post`). The job counts as committed from now."""
        previous = job.status
        if job.retry and previous in FAILED:
            job.attempt += 1
            job.submit_key = retry_key(job.key, job.attempt)
            job.retry = False
        if previous in FAILED:
            # The superseded attempt's cost stays committed (the ledger moves
            # it into cost_prior with the intent).
            self._set(
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
            self._set(job, "submitting")
        job.dispatched = True
        self.limit.acquire()
        self._start(job, previous)

    async def _intent(self, job: _Job, previous: str) -> dict[str, Any] | None:
        """Build the payload (off the event loop: local files are hashed and
        encoded), then commit the intent. None when a local file changed."""
        try:
            payload = await asyncio.to_thread(job.task.payload)
        except FileChangedError as error:
            self._set(job, previous)
            self._fail_run(
                UsageError(
                    f"{error}: nothing more was submitted",
                    hint="run `mvbatch plan` again, then `mvbatch run`",
                )
            )
            return None
        if self._stopping:  # stopped while the payload was built: nothing was sent
            self._set(job, previous)
            return None
        self.ledger.record_intent(
            self.env,
            job.key,
            previous=previous,
            submit_key=job.submit_key,
            attempt=job.attempt,
            run_id=self.run_id,
        )
        _crash_point("after_intent")
        return payload

    def _start(self, job: _Job, previous: str | None) -> None:
        """`previous`: the status before the intent, when the job is to be POSTed."""
        job.posting = previous is not None
        task = asyncio.create_task(self._drive(job, previous), name=f"task {job.key}")
        self._drivers[task] = job

    async def _drain(self) -> None:
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

    async def _drive(self, job: _Job, previous: str | None) -> None:
        try:
            # The payload (data URIs can be tens of MB) lives only inside
            # `_post`: it is not kept while the task is polled.
            if previous is not None and not await self._post(job, previous):
                return
            if job.status in IN_FLIGHT and not self._stopping:
                await self._poll(job)
        except asyncio.CancelledError:
            pass  # stopping: the ledger already holds what we know
        except MvbatchError as error:  # AuthError, ApiUnavailable, ...
            self._fail_run(error)
        except Exception as error:
            log.exception("task.crashed", key=job.key)
            self._fail_run(error)
        finally:
            job.posting = False
            self.limit.release()
            self._drivers.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._wake.set()

    # -- one task

    async def _post(self, job: _Job, previous: str) -> bool:
        """Intent, POST and record the answer. False when the task is over (rejected)."""
        task = job.task
        probe = job.price_class in self._probing and job.price_class not in self._confirmed
        resend = job.resend or previous == "submitting"
        try:
            payload = await self._intent(job, previous)
            if payload is None:
                if probe:
                    self._release_probe(job.price_class, confirmed=False)
                return False
            model, body = payload["model"], payload["input"]
            del payload
            state = await self.client.submit(model, body, job.submit_key)
            del body
        except EndpointMissing as missing:
            self._not_sent(job, previous, missing)
            if probe:
                self._release_probe(job.price_class, confirmed=False)
            raise  # stops the run, like an AuthError
        except TaskRejected as rejected:
            if resend or rejected.maybe_sent:
                self._refused_resend(job, rejected)
            else:
                self._rejected(job, rejected)
            if probe:
                self._release_probe(job.price_class, confirmed=False)
            return False
        finally:
            job.posting = False
        _crash_point("after_post")
        job.since = time.monotonic()
        self._submitted += 1
        if self.limit.succeeded():
            log.info("concurrency.raised", limit=self.limit.limit)
        job.resend = False
        if state.cost_estimate is not None:
            # The task now stands for the server's estimate; then the rest of
            # its class is re-priced (and the plan re-checked) from it.
            self._set(job, server_estimate=state.cost_estimate)
            self._learn(job, state.cost_estimate)
        if (
            probe
            and state.cost_estimate is None
            and task.estimate.source
            not in (
                "documented",
                "learned",
            )
        ):
            # No price in the answer and only an assumed rate: the rest of the
            # class keeps waiting until this task ends (its cost_actual).
            job.probe_pending = True
            log.info("budget.probe_unpriced", price_class=job.price_class, key=job.key)
        elif probe or job.price_class not in self._confirmed:
            self._release_probe(job.price_class, confirmed=True)
        if state.terminal and not (state.status == "succeeded" and not state.urls):
            self._finish(job, state, at_post=True)
            if state.status != "succeeded":
                await self._fetch_events(job)
            return False
        self.ledger.record_submitted(
            self.env,
            job.key,
            task_id=state.task_id,
            request_id=state.request_id,
            status="queued" if state.terminal else state.status,
            cost_estimate=state.cost_estimate,
            run_id=self.run_id,
        )
        self._set(
            job,
            "queued" if state.terminal else state.status,
            task_id=state.task_id,
            server_estimate=state.cost_estimate,
        )
        log.info(
            "task.submitted",
            key=job.key,
            shot=task.shot,
            model=task.model,
            task_id=state.task_id,
            request_id=state.request_id,
            cost_estimate=_text(state.cost_estimate),
            replayed=state.replayed,
            attempt=job.attempt,
        )
        return True

    def _rejected(self, job: _Job, rejected: TaskRejected) -> None:
        """A 4xx to a first POST: nothing was created, nothing charged (`rejected`, $0)."""
        task = job.task
        self.ledger.record_rejected(
            self.env,
            job.key,
            error=rejected.message,
            http_status=rejected.status_code,
            run_id=self.run_id,
        )
        self._set(job, "rejected", error=rejected.message)
        self._failures.append((task.shot, job.key, rejected.message))
        log.info(
            "task.rejected",
            key=job.key,
            shot=task.shot,
            model=task.model,
            http_status=rejected.status_code,
            error=rejected.message,
        )

    def _not_sent(self, job: _Job, previous: str, missing: EndpointMissing) -> None:
        """The POST met no task API (a wrong base URL): nothing was created, nothing failed.

        A new task goes back to `planned`, as if this run had not touched it.
        An intent that was there before (a re-send) or a retry's new key, or a
        call whose earlier attempt went unanswered, stays `submitting`: the
        next run POSTs it again under the same key, which is free.
        """
        if previous == "planned" and not missing.maybe_sent:
            self.ledger.record_progress(
                self.env,
                job.key,
                previous="submitting",
                status="planned",
                polls=job.polls,
                run_id=self.run_id,
            )
            self._set(job, "planned")
        log.info(
            "task.not_sent",
            key=job.key,
            shot=job.task.shot,
            url=missing.url,
            http_status=missing.status_code,
            status=job.status,
        )

    def _refused_resend(self, job: _Job, rejected: TaskRejected) -> None:
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
            self.env,
            job.key,
            error=message,
            http_status=rejected.status_code,
            estimate=estimate,
            run_id=self.run_id,
        )
        self._set(job, "failed", server_estimate=estimate, error=message)
        self._failures.append((task.shot, job.key, message))
        log.warning(
            "task.resend_refused",
            key=job.key,
            shot=task.shot,
            model=task.model,
            http_status=rejected.status_code,
            error=rejected.message,
            committed=str(estimate),
        )

    async def _poll(self, job: _Job) -> None:
        name = job.latency_class
        assert job.task_id is not None
        not_before = 0.0  # monotonic: a Retry-After the server sent with its answer
        missing = 0  # not-found (or other 4xx) answers in a row
        missing_since = 0.0  # monotonic time of the first of them
        give_up = None if self.max_wait is None else time.monotonic() + self.max_wait
        while True:
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                self._overdue_task(job)
                return
            wait = self._until_next_poll(job, now, not_before, give_up)
            if wait > 0:
                # Sleep in steps: what this class's other tasks teach in the
                # meantime may move this task's next poll (no GET to re-plan).
                step = replan_after(now - job.since)
                await asyncio.sleep(min(wait, step))
                if wait > step:
                    continue
            if self._stopping:
                return
            try:
                state = await self.client.get(job.task_id)
            except TaskRejected as rejected:
                # A task just created may not be visible yet (eventual
                # consistency), and a 4xx on one GET says nothing certain:
                # keep polling, with backoff; fail only when the answer
                # persists over NOT_FOUND_POLLS answers and NOT_FOUND_SPAN s.
                now = time.monotonic()
                missing_since = now if missing == 0 else missing_since
                missing += 1
                if self._not_found(job, rejected, missing, now - missing_since):
                    return
                first, ceiling = NOT_FOUND_BACKOFF
                not_before = now + min(ceiling, first * 2 ** (missing - 1))
                continue
            missing = 0
            job.polls += 1
            self._note_unknown_status(job, state)
            if state.status == "succeeded" and not state.urls:
                # Succeeded without an output URL: ask again a few times, then
                # accept it as it is rather than poll forever.
                job.empty_success += 1
                if job.empty_success >= EMPTY_SUCCESS_POLLS:
                    log.warning("task.no_outputs", key=job.key, task_id=job.task_id)
                    self._finish(job, state)
                    return
            elif state.terminal:
                self._finish(job, state)
                if state.status in ("failed", "cancelled"):
                    await self._fetch_events(job)
                return
            job.last_alive = time.monotonic() - job.since
            if state.retry_after is not None:
                not_before = time.monotonic() + state.retry_after
            self.latency.alive(name, job.key, job.last_alive)
            status = "processing" if state.terminal else state.status
            if status != job.status:
                self.ledger.record_progress(
                    self.env,
                    job.key,
                    previous=job.status,
                    status=status,
                    polls=job.polls,
                    run_id=self.run_id,
                )
                self._set(job, status)

    def _until_next_poll(
        self, job: _Job, now: float, not_before: float, give_up: float | None
    ) -> float:
        """Seconds to the task's next GET: its class's schedule, a Retry-After, `max_wait`."""
        elapsed = now - job.since
        at = self.latency.next_poll(job.latency_class, elapsed, job.last_alive, job.key)
        wait = max(at - elapsed, not_before - now)
        return wait if give_up is None else min(wait, give_up - now)

    def _overdue_task(self, job: _Job) -> None:
        """`max_wait` ran out: stop following the task; the ledger keeps it in flight."""
        self._overdue.append(job.task.shot)
        log.warning(
            "task.overdue",
            key=job.key,
            shot=job.task.shot,
            task_id=job.task_id,
            status=job.status,
            max_wait_s=self.max_wait,
            polls=job.polls,
        )

    def _note_unknown_status(self, job: _Job, state: TaskState) -> None:
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

    def _not_found(self, job: _Job, rejected: TaskRejected, missing: int, span: float) -> bool:
        """One more 4xx to a poll; True when it has persisted long enough to fail the task."""
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
        self._finish(job, TaskState(job.task_id, "failed", error=message))
        return True

    def _finish(self, job: _Job, state: TaskState, at_post: bool = False) -> None:
        """Record a terminal status, its cost, outputs and latency in one transaction."""
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
        previous = job.status
        self.ledger.record_finished(
            self.env,
            job.key,
            previous=previous,
            status=state.status,
            cost_estimate=state.cost_estimate,
            cost_actual=actual,
            error=error,
            urls=state.urls if succeeded else (),
            polls=job.polls,
            latency=(job.latency_class, latency),
            run_id=self.run_id,
            task_id=state.task_id if at_post else None,
            request_id=state.request_id if at_post else None,
        )
        self._set(
            job,
            state.status,
            task_id=state.task_id,
            server_estimate=state.cost_estimate or job.server_estimate,
            actual=actual,
            error=error,
        )
        self.latency.observe(job.latency_class, latency, job.key)
        self._finished_in_run += 1
        if job.probe_pending:
            self._settle_probe(job, state.cost_actual)
        self._spent += actual or Decimal(0)  # failed tasks may be billed too
        if succeeded:
            log.info(
                "task.succeeded",
                key=job.key,
                shot=task.shot,
                model=task.model,
                task_id=state.task_id,
                cost_actual=_text(actual),
                outputs=len(state.urls),
                latency_s=round(latency, 3),
                polls=job.polls,
                at_post=at_post,
            )
            if self.on_succeeded is not None:
                self._spawn_hook(job.key)
        else:
            self._failures.append((task.shot, job.key, error or state.status))
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

    async def _fetch_events(self, job: _Job) -> None:
        """Keep the server's history of a failed task: fetched once, never fatal."""
        if job.task_id is None:
            return
        try:
            events = await self.client.events(job.task_id)
        except (TaskRejected, ApiError) as error:
            log.info("task.events_unavailable", key=job.key, error=str(error))
            return
        self.ledger.record_server_events(self.env, job.key, events)

    # -- what the server teaches

    def _learn(self, job: _Job, server_estimate: Decimal) -> None:
        """Compare the server's estimate with ours; adopt its rate for the class if new."""
        estimate = job.task.estimate
        if estimate.upper_bound or estimate.seconds <= 0 or server_estimate == job.estimate:
            return
        name = job.price_class
        rate = learn_rate(server_estimate, estimate.seconds)
        previous = (job.estimate / estimate.seconds) if estimate.seconds else None
        self.ledger.learn_rate(self.env, name, rate)
        log.info(
            "rate.learned",
            price_class=name,
            usd_per_second=str(rate),
            previous=_text(previous),
            source=estimate.source,
            key=job.key,
        )
        for other in self._by_class.get(name, ()):
            if other.dispatched or other.task.estimate.upper_bound:
                continue
            cost = normalize(
                (rate * other.task.estimate.seconds).quantize(MICRO, rounding=ROUND_HALF_UP)
            )
            self._set(other, estimate=cost)
        self._recheck_plan(name)

    def _recheck_plan(self, price_class: str) -> None:
        """After a rate changed, hold the rest of the plan against the cap again."""
        if self.cap is None:
            return
        pending = [j for j in self._queue if j.status != "submitting"]
        projected = self.committed + sum((j.estimate for j in pending), Decimal(0))
        if projected <= self.cap:
            return
        self._held_reason = (
            f"the rate learned for {price_class} puts the plan at ${projected:.4f}, over the "
            f"cap ${self.cap}; the {len(pending)} task(s) not yet submitted were held"
        )
        log.info(
            "budget.refused",
            manifest=self.plan.name,
            projected=str(projected),
            cap=str(self.cap),
            price_class=price_class,
            held=len(pending),
        )
        self._held_for_good.extend(pending)
        held = set(map(id, pending))
        self._queue = deque(j for j in self._queue if id(j) not in held)

    def _settle_probe(self, job: _Job, cost_actual: Decimal | None) -> None:
        """A probe that answered without a price has ended: learn from its
        actual cost if it has one, else release its class at the assumed rate."""
        job.probe_pending = False
        if cost_actual is not None:
            self._learn(job, cost_actual)
        else:
            log.warning(
                "budget.unconfirmed_rate",
                price_class=job.price_class,
                key=job.key,
                assumed=str(job.estimate),
            )
        self._release_probe(job.price_class, confirmed=True)

    def _release_probe(self, price_class: str, confirmed: bool) -> None:
        """The first POST of a class answered: the rest of the class may follow.

        Refused, the class stays unconfirmed, and its next task probes instead.
        """
        self._probing.discard(price_class)
        if confirmed:
            self._confirmed.add(price_class)
        self._wake.set()

    # -- hooks (downloads)

    def _spawn_hook(self, key: str) -> None:
        row = self.ledger.task(self.env, key)
        if row is None or self.on_succeeded is None:
            return
        task = asyncio.create_task(self._hook(self.on_succeeded, row), name=f"hook {key}")
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def _hook(self, hook: OnSucceeded, row: TaskRow) -> None:
        try:
            await hook(row)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("task.hook_failed", key=row.key, error=f"{type(error).__name__}: {error}")

    async def _finish_hooks(self) -> None:
        while self._hooks:
            if self._stopping:
                for task in list(self._hooks):
                    task.cancel()
            await asyncio.gather(*list(self._hooks), return_exceptions=True)


def interleave(jobs: list[_Job]) -> list[_Job]:
    """Plan order, but taking turns between latency classes (model, tier, length).

    Every class then has tasks in the first wave: its price is confirmed and
    its latency learned early, instead of each class starting cold when the
    one before it is done.
    """
    by_class: dict[str, deque[_Job]] = {}
    for job in jobs:
        by_class.setdefault(job.latency_class, deque()).append(job)
    order: list[_Job] = []
    queues = list(by_class.values())
    while queues:
        for queue in queues:
            order.append(queue.popleft())
        queues = [q for q in queues if q]
    return order


def _orphan_job(row: TaskRow, wall: float, mono: float) -> _Job:
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
    job = _Job(task, row.status, row.attempt, row.submit_key, row.estimate_local)
    job.task_id, job.server_estimate = row.task_id, row.cost_estimate
    job.actual, job.error, job.polls = row.cost_actual, row.error, row.polls
    job.prior, job.orphan, job.dispatched = row.cost_prior, True, True
    if row.submitted_at:
        age = wall - datetime.fromisoformat(row.submitted_at).timestamp()
        job.since = mono - max(0.0, age)
    return job


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def budget_refusal(check: Preflight) -> BudgetError | None:
    try:
        check_budget(check)
    except BudgetError as error:
        return error
    return None


def _duration(seconds: float) -> str:
    """3 h, 90 min, 45 s: how long, for people."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
