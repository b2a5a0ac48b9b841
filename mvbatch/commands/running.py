"""`run`: prepared without a request, then executed with the downloads and the reports.

Owns: preparing a run (endpoint chosen, the state and output folders checked,
plan built, ledger opened, the tasks to run chosen (`selection.py`), budget
checked) so that the CLI can show the plan, refuse or ask before anything is
sent; executing it (the executor, then the
downloads catching up, then the reports), recording the run's outcome and
backing the ledger up after a run that ended; what Ctrl-C does (`Stopper`).
Must not: print (the CLI watches through `watch` and `Stopper`'s callbacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from mvbatch import logs
from mvbatch.api.client import ApiClient, pool_size
from mvbatch.api.endpoint import Endpoint, choose
from mvbatch.commands import folders
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.commands.selection import Kind, Selection, select, shard_cap, shard_of, shard_text
from mvbatch.downloads.fetch import Downloader
from mvbatch.errors import MvbatchError, UsageError
from mvbatch.ledger import Ledger, keep_backup, open_ledger
from mvbatch.plan.planner import Plan
from mvbatch.report import command as report
from mvbatch.report.command import ReportResult
from mvbatch.report.posters import PostersAsVideosLand
from mvbatch.run.budget import Preflight, effective_cap, preflight
from mvbatch.run.concurrency import MAX_CONCURRENCY
from mvbatch.run.executor import Executor
from mvbatch.run.follow import DEFAULT_MAX_WAIT
from mvbatch.run.results import RunResult
from mvbatch.settings import Settings

log = logs.get("mvbatch.commands.running")

# ------------------------------------------------------------------ run and status
#
# `run` is prepared without a single request (endpoint chosen, plan built,
# ledger opened, budget checked), so that the CLI can show the plan, refuse
# or ask, and only then `execute` it.


@dataclass
class PreparedRun:
    settings: Settings
    endpoint: Endpoint
    plan: Plan
    ledger: Ledger
    check: Preflight
    cap: Decimal | None
    concurrency: int
    retry_failed: bool
    max_wait: float | None  # seconds a run follows a task that has not ended; None: forever
    # The plan state of each task the ledger has (`plan_view`): states, not
    # rows, so a run of 100,000 tasks does not hold every row while it runs.
    states: dict[str, str] = field(default_factory=dict)
    max_cost: Decimal | None = None  # --max-cost, shown beside the manifest's max_usd
    # What `plan` was chosen from (`run --draft`, `--approved-only`, `--reroll-rejected`).
    selection: Selection | None = None
    # `run --shard K/N`: which slice, said beside the plan with the cap's share.
    shard_line: str | None = None

    @property
    def manifest_plan(self) -> Plan:
        """Every task of the manifest, recorded re-rolls included: what the report speaks of."""
        return self.selection.full if self.selection is not None else self.plan

    def close(self) -> None:
        self.ledger.close()


def prepare_run(
    path: Path,
    settings: Settings,
    *,
    simulate: bool | None,
    max_cost: Decimal | None,
    concurrency: int,
    retry_failed: bool,
    max_wait_minutes: float | None = None,
    selection: Kind = "all",
    shard: tuple[int, int] | None = None,
) -> PreparedRun:
    """Everything `run` needs before its first request; makes none.

    `selection` chooses the tasks (`commands.selection`): all that is left,
    a draft, the shots with an approved take, or re-rolls of rejected takes.
    """

    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}; got {concurrency}"
        )
    if max_cost is not None and max_cost <= 0:
        raise UsageError(f"--max-cost must be a positive amount of US dollars; got {max_cost}")
    if max_wait_minutes is not None and not 0 < max_wait_minutes < float("inf"):
        raise UsageError(f"--max-wait must be a positive number of minutes; got {max_wait_minutes}")
    max_wait = DEFAULT_MAX_WAIT if max_wait_minutes is None else max_wait_minutes * 60
    speed = settings.sim_speed
    endpoint = choose(settings, simulate, sim_speed=speed)
    # Every folder the run will write in, before the first request: a task
    # must never be charged and then have nowhere to be recorded or saved.
    sim = ("sim",) if endpoint.simulated else ()
    folders.writable(settings.state_dir, folders.STATE, "logs", *sim)
    manifest_plan = build_plan(path, settings, endpoint.env)
    folders.writable(settings.output_dir, folders.OUTPUT, manifest_plan.name)
    ledger = open_ledger(settings.ledger_location())
    try:
        recorded = ledger.tasks(endpoint.env, manifest_plan.name)
        verdicts = ledger.verdicts(endpoint.env, manifest_plan.name) if selection != "all" else {}
        chosen = select(manifest_plan, recorded, verdicts, selection)
        rows = {r.key: r for r in recorded}
        cap = effective_cap(chosen.plan.max_usd, max_cost)
        shard_line = None
        if shard is not None:
            # The shard's slice is all this run and its report speak of.
            whole, whole_cap = len(chosen.plan.tasks), cap
            chosen = replace(
                chosen, plan=shard_of(chosen.plan, *shard), full=shard_of(chosen.full, *shard)
            )
            cap = shard_cap(cap, shard[1])
            shard_line = shard_text(shard, len(chosen.plan.tasks), whole, cap, whole_cap)
        the_plan = chosen.plan
        planned = {t.key for t in the_plan.tasks}
        check = preflight(
            the_plan,
            {k: r for k, r in rows.items() if k in planned},
            cap,
            retry_failed,
            [r for k, r in rows.items() if k not in planned],
        )
    except BaseException:
        ledger.close()
        raise
    return PreparedRun(
        settings,
        endpoint,
        the_plan,
        ledger,
        check,
        cap,
        concurrency,
        retry_failed,
        max_wait,
        {key: row.plan_state for key, row in rows.items()},
        max_cost,
        chosen,
        shard_line,
    )


@dataclass(frozen=True)
class RunOutcome:
    result: RunResult
    report: ReportResult | None
    # Every task the run was asked for succeeded with its videos on disk (the
    # report speaks of the whole manifest; a draft asks for part of it).
    complete: bool = False


class Stopper:
    """SIGINT/SIGTERM while a run runs: the first stops it cleanly, the second exits now.

    The first stops what is under way: the executor (no new submissions,
    what was sent is recorded) or, once it is done, the catching-up
    downloads (their part files stay, to resume with a Range request).
    `on_first(phase)` ("run" or "downloads") lets the CLI say what is
    happening; `on_second` is the CLI's, which exits at once (the edge owns
    exit codes). Exiting at once is safe because every step is a committed
    transaction: intent without a task id is re-sent under the same key by
    the next run.
    """

    def __init__(self, on_first: Callable[[str], None], on_second: Callable[[], None]) -> None:
        self.on_first, self.on_second = on_first, on_second
        self.executor: Executor | None = None
        self.finishing: asyncio.Future[Any] | None = None  # the downloads after the executor
        self.count = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        # Event loops without signal support (Windows) refuse the handler;
        # Ctrl-C then arrives as KeyboardInterrupt, which the CLI edge maps to 130.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signalled)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    def _signalled(self) -> None:
        self.count += 1
        if self.count == 1:
            if self.finishing is not None:
                self.on_first("downloads")
                self.finishing.cancel()
            else:
                self.on_first("run")
                if self.executor is not None:
                    self.executor.request_stop("interrupted")
            return
        self.on_second()


async def execute(
    prepared: PreparedRun,
    *,
    download: bool,
    watch: Callable[[Executor], AbstractAsyncContextManager[Any]] | None = None,
    stopper: Stopper | None = None,
) -> RunOutcome:
    """Run a prepared plan: the executor, then the downloads and the reports.

    `watch(executor)` is the progress display's context (entered while the
    executor runs). Raises what the executor raises (AuthError, ApiUnavailable).
    """

    endpoint, ledger, the_plan = prepared.endpoint, prepared.ledger, prepared.plan
    loop = asyncio.get_running_loop()
    if stopper is not None:
        stopper.install(loop)
    rerolled_from = prepared.selection.rerolled_from if prepared.selection is not None else {}
    ledger.ensure_tasks(endpoint.env, planned_rows(the_plan, rerolled_from))
    run_id = ledger.start_run(
        endpoint.env, the_plan.name, endpoint.base_url, prepared.cap, prepared.concurrency
    )
    outcome = "crashed"
    ended = False  # the run came to its end: the ledger is backed up after it
    api = ApiClient(endpoint.api_client(max_connections=pool_size(prepared.concurrency)))
    files = endpoint.files_client() if download else None
    # Each video's poster as it lands, not all after the last one.
    posters_made = PostersAsVideosLand()
    try:
        downloader = None
        if files is not None:
            downloader = Downloader(
                ledger,
                files,
                prepared.settings.output_dir,
                refresh=api.refresh_outputs,
                on_saved=posters_made.saved,
            )
        executor = Executor(
            the_plan,
            ledger,
            api,
            env=endpoint.env,
            cap=prepared.cap,
            run_id=run_id,
            concurrency=prepared.concurrency,
            retry_failed=prepared.retry_failed,
            on_succeeded=downloader.on_succeeded if downloader else None,
            max_wait=prepared.max_wait,
            lease=prepared.settings.lease_seconds,
        )
        try:
            result = await _run_executor(executor, watch, stopper)
        except MvbatchError as error:
            outcome = f"error: {type(error).__name__}"
            raise
        # The executor's jobs (one per task) are not needed for the reports:
        # let them go before the reports are built (at 100,000 tasks, the
        # difference between the run's peak memory and the executing's). Its
        # parts refer to each other: only a collection frees them.
        del executor
        gc.collect()
        outcome = _outcome(result)
        written = None
        if not result.interrupted:
            written = await _download_and_report(
                report.finish_run(
                    downloader,
                    prepared.settings,
                    ledger,
                    prepared.manifest_plan,
                    endpoint.env,
                    posters_made=posters_made,
                ),
                stopper,
            )
            if written is None:
                log.info("run.downloads_interrupted", manifest=the_plan.name)
                result = dataclasses.replace(result, interrupted=True, downloads_interrupted=True)
                outcome = "interrupted"
        ended = not result.interrupted
        return RunOutcome(result, written, _complete(written, the_plan, prepared.selection))
    except (asyncio.CancelledError, KeyboardInterrupt):
        outcome = "interrupted"  # cancelled by the caller, in either phase
        raise
    finally:
        ledger.finish_run(run_id, outcome)
        if ended:
            keep_backup(prepared.settings.ledger_location())
        await api.aclose()
        if files is not None:
            await files.aclose()
        # Done already at the end of the downloads; after Ctrl-C or an error,
        # the queued posters are left to the next report.
        await asyncio.to_thread(posters_made.close, finish=False)
        if stopper is not None:
            stopper.uninstall(loop)


async def _run_executor(
    executor: Executor,
    watch: Callable[[Executor], AbstractAsyncContextManager[Any]] | None,
    stopper: Stopper | None,
) -> RunResult:
    if stopper is not None:
        stopper.executor = executor
    try:
        if watch is None:
            return await executor.run()
        async with watch(executor):
            return await executor.run()
    finally:
        if stopper is not None:
            stopper.executor = None  # a Ctrl-C from now on stops the downloads


async def _download_and_report(
    finishing: Coroutine[Any, Any, ReportResult], stopper: Stopper | None
) -> ReportResult | None:
    """The end of a run (downloads catching up, then the reports); None if Ctrl-C stopped it."""
    if stopper is not None and stopper.count:
        finishing.close()  # Ctrl-C came as the executor ended: do not start
        return None
    task = asyncio.create_task(finishing)
    if stopper is not None:
        stopper.finishing = task
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # cancelled from outside, not by the stopper
        return None
    finally:
        if stopper is not None:
            stopper.finishing = None


def _complete(written: ReportResult | None, the_plan: Plan, selection: Selection | None) -> bool:
    """Whether every task the run was asked for succeeded and its videos are on disk."""
    if written is None:
        return False
    if selection is None or selection.kind == "all":
        return written.complete
    asked = {t.key for t in the_plan.tasks}
    return all(
        t.status == "succeeded" and t.downloaded for t in written.report.tasks if t.key in asked
    )


def _outcome(result: RunResult) -> str:
    if result.interrupted:
        return "interrupted"
    if result.held or result.over_cap:
        return "budget"
    if result.failed:
        return "failed_tasks"
    return "pending" if result.pending else "succeeded"
