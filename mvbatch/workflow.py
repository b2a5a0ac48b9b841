"""The steps the commands share, wired to settings: plan, run, read ledger state.

Owns: choosing the price book (documented rates plus those the ledger has
learned) and the reference-video probe for a plan; preparing a run without a
request (endpoint, plan, ledger, budget check), executing it with the
downloader and the reports, and the `status` document. Keeps `cli.py` thin:
nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from mvbatch import logs
from mvbatch.errors import MvbatchError, UsageError
from mvbatch.ledger.store import Ledger, TaskRow
from mvbatch.plan import manifest, media, mp4, planfile
from mvbatch.plan.planner import Plan, ReferenceProbe, plan
from mvbatch.plan.pricing import PriceBook
from mvbatch.settings import Settings

if TYPE_CHECKING:
    from mvbatch.api.endpoint import Endpoint
    from mvbatch.report.model import ReportResult
    from mvbatch.run.executor import Executor, Preflight, RunResult

PROBE_TIMEOUT = httpx.Timeout(5.0, connect=3.0)

log = logs.get("mvbatch.workflow")


def reference_probe(client: httpx.Client) -> ReferenceProbe:
    """Reads a reference video's length once per file or URL, header bytes only."""
    seen: dict[str, mp4.ProbeResult] = {}

    def probe(reference: media.LocalFile | str) -> mp4.ProbeResult:
        if isinstance(reference, media.LocalFile):
            return mp4.probe_local(reference.path)
        if reference not in seen:
            if reference.startswith("data:"):
                seen[reference] = mp4.probe_data_uri(reference)
            elif reference.startswith(("http://", "https://")):
                seen[reference] = mp4.probe_url_sync(client, reference)
            else:
                seen[reference] = mp4.ProbeResult(None, detail="not an http(s) or data: URL")
        return seen[reference]

    return probe


def build_plan(path: Path, settings: Settings, env: str | None = None) -> Plan:
    target = path
    reviewed: tuple[str, list[str]] | None = None
    if path.suffix == ".toml" and planfile.is_plan_file(path):
        target, sha, keys = planfile.read(path)
        reviewed = (sha, keys)
    loaded = manifest.load(target)
    # No Authorization header here: reference videos live on other hosts.
    with httpx.Client(timeout=PROBE_TIMEOUT, follow_redirects=True) as client:
        result = plan(loaded, PriceBook(learned_rates(settings, env)), reference_probe(client))
    if reviewed is not None:
        planfile.check_unchanged(path, result, *reviewed)
    return result


def default_env(settings: Settings) -> str:
    """Which side of the ledger a command without --simulate/--live speaks of."""
    return "live" if settings.api_key_value() else "sim"


def learned_rates(settings: Settings, env: str | None = None) -> Mapping[str, Decimal]:
    from mvbatch.ledger import store as ledger

    return ledger.learned_rates(settings.state_dir, env or default_env(settings))


def ledger_states(the_plan: Plan, settings: Settings, env: str | None = None) -> Mapping[str, str]:
    from mvbatch.ledger import store as ledger

    return ledger.plan_states(
        settings.state_dir,
        the_plan.name,
        [t.key for t in the_plan.tasks],
        env or default_env(settings),
    )


# ------------------------------------------------------------------ run and status
#
# `run` is prepared without a single request (endpoint chosen, plan built,
# ledger opened, budget checked), so that the CLI can show the plan, refuse
# or ask, and only then `execute` it.

SIM_SPEED_VARIABLE = "MVBATCH_SIM_SPEED"  # the built-in simulator's speed (demo and tests)


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
    rows: dict[str, TaskRow] = field(default_factory=dict)
    max_cost: Decimal | None = None  # --max-cost, shown beside the manifest's max_usd

    @property
    def states(self) -> dict[str, str]:
        return {key: row.plan_state for key, row in self.rows.items()}

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
) -> PreparedRun:
    """Everything `run` needs before its first request; makes none."""
    from mvbatch.api.endpoint import choose
    from mvbatch.run.executor import DEFAULT_MAX_WAIT, MAX_CONCURRENCY, effective_cap, preflight

    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}; got {concurrency}"
        )
    if max_cost is not None and max_cost <= 0:
        raise UsageError(f"--max-cost must be a positive amount of US dollars; got {max_cost}")
    if max_wait_minutes is not None and not 0 < max_wait_minutes < float("inf"):
        raise UsageError(f"--max-wait must be a positive number of minutes; got {max_wait_minutes}")
    max_wait = DEFAULT_MAX_WAIT if max_wait_minutes is None else max_wait_minutes * 60
    speed = _sim_speed()
    endpoint = choose(settings, simulate, sim_speed=speed)
    the_plan = build_plan(path, settings, endpoint.env)
    ledger = Ledger(settings.state_dir)
    try:
        rows = {r.key: r for r in ledger.tasks(endpoint.env, the_plan.name)}
        planned = {t.key for t in the_plan.tasks}
        cap = effective_cap(the_plan.max_usd, max_cost)
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
        rows,
        max_cost,
    )


def _sim_speed() -> float:
    text = os.environ.get(SIM_SPEED_VARIABLE, "").strip()
    if not text:
        return 1.0
    try:
        speed = float(text)
    except ValueError:
        raise UsageError(f"{SIM_SPEED_VARIABLE} must be a number; got {text!r}") from None
    if speed < 0:
        raise UsageError(f"{SIM_SPEED_VARIABLE} must be >= 0; got {text!r}")
    return speed


def planned_rows(the_plan: Plan) -> list[dict[str, Any]]:
    """The plan's tasks as ledger rows (`Ledger.ensure_tasks`)."""
    return [
        {
            "key": t.key,
            "manifest": t.manifest,
            "shot": t.shot,
            "shots": list(t.shots),
            "variant": dict(t.variant),
            "take": t.take,
            "model": t.model,
            "input": t.public_input(),
            "price_class": t.estimate.price_class,
            "seconds": t.estimate.seconds,
            "upper_bound": t.estimate.upper_bound,
            "estimate_local": t.estimate.cost,
            "estimate_source": t.estimate.source,
        }
        for t in the_plan.tasks
    ]


@dataclass(frozen=True)
class RunOutcome:
    result: RunResult
    report: ReportResult | None


class Stopper:
    """SIGINT/SIGTERM while a run runs: the first stops it cleanly, the second exits now.

    The first stops what is under way: the executor (no new submissions,
    what was sent is recorded) or, once it is done, the catching-up
    downloads (their part files stay, to resume with a Range request).
    `on_first(phase)` ("run" or "downloads") and `on_second` let the CLI say
    what is happening. Exiting at once is safe because every step is a
    committed transaction: intent without a task id is re-sent under the same
    key by the next run.
    """

    def __init__(self, on_first: Callable[[str], None], on_second: Callable[[], None]) -> None:
        self.on_first, self.on_second = on_first, on_second
        self.executor: Executor | None = None
        self.finishing: asyncio.Future[Any] | None = None  # the downloads after the executor
        self.count = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        # Event loops without signal support (Windows) raise NotImplementedError;
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
        os._exit(130)


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
    from mvbatch.api.client import ApiClient, pool_size
    from mvbatch.downloads.fetch import Downloader
    from mvbatch.report import model as report
    from mvbatch.run.executor import Executor

    endpoint, ledger, the_plan = prepared.endpoint, prepared.ledger, prepared.plan
    loop = asyncio.get_running_loop()
    if stopper is not None:
        stopper.install(loop)
    ledger.ensure_tasks(endpoint.env, planned_rows(the_plan))
    run_id = ledger.start_run(
        endpoint.env, the_plan.name, endpoint.base_url, prepared.cap, prepared.concurrency
    )
    outcome = "crashed"
    api = ApiClient(endpoint.api_client(max_connections=pool_size(prepared.concurrency)))
    files = endpoint.files_client() if download else None
    try:
        downloader = None
        if files is not None:
            downloader = Downloader(
                ledger, files, prepared.settings.output_dir, refresh=api.refresh_outputs
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
        )
        if stopper is not None:
            stopper.executor = executor
        try:
            if watch is not None:
                async with watch(executor):
                    result = await executor.run()
            else:
                result = await executor.run()
        except MvbatchError as error:
            outcome = f"error: {type(error).__name__}"
            raise
        outcome = _outcome(result)
        written = None
        if not result.interrupted:
            written = await _download_and_report(
                report.finish_run(downloader, prepared.settings, ledger, the_plan, endpoint.env),
                stopper,
            )
            if written is None:
                log.info("run.downloads_interrupted", manifest=the_plan.name)
                result = dataclasses.replace(result, interrupted=True, downloads_interrupted=True)
                outcome = "interrupted"
        return RunOutcome(result, written)
    except (asyncio.CancelledError, KeyboardInterrupt):
        outcome = "interrupted"  # cancelled by the caller, in either phase
        raise
    finally:
        ledger.finish_run(run_id, outcome)
        await api.aclose()
        if files is not None:
            await files.aclose()
        if stopper is not None:
            stopper.uninstall(loop)


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


def _outcome(result: RunResult) -> str:
    if result.interrupted:
        return "interrupted"
    if result.held:
        return "budget"
    if result.failed:
        return "failed_tasks"
    return "pending" if result.pending else "succeeded"


def status_document(path: Path, settings: Settings) -> dict[str, Any]:
    """`status`: counts, spend and what is left, from the ledger and the manifest's plan.

    The plan is built as `plan` builds it (no request but the reference videos'
    MP4 headers, which planning reads anyway): it says which tasks the manifest
    asks for, the ledger what became of them. A task the ledger has never seen
    (before the first run, or a shot added since) counts as `planned` and left,
    at the plan's estimate; a task still `planned` in the ledger but no longer
    in the manifest (an edited shot) is left out, as no run will submit it.
    What is left is what `run` would still do: the plan's tasks not submitted
    yet and every task in flight. If the manifest no longer plans (an edit
    broke it) but the ledger has tasks, the ledger alone is reported and
    `plan_error` says why; with no ledger rows the error is raised.
    """
    from mvbatch.ledger.store import IN_FLIGHT, STATUSES
    from mvbatch.ui.render import charge_of, failures_by_charge

    target = path
    if path.suffix == ".toml" and planfile.is_plan_file(path):
        target = planfile.read(path)[0]
    loaded = manifest.load(target)
    name = loaded.manifest.name
    cap = loaded.manifest.budget.max_usd
    rows: list[TaskRow] = []
    run: dict[str, Any] | None = None
    env = default_env(settings)
    if (settings.state_dir / "ledger.sqlite").is_file():
        with Ledger(settings.state_dir) as ledger:
            run = ledger.last_run(name)
            if run is not None:
                env = str(run["env"])
            rows = ledger.tasks(env, name)
    the_plan, plan_error = _status_plan(path, settings, env, bool(rows))
    planned = {t.key: t for t in the_plan.tasks} if the_plan is not None else None
    if planned is not None:
        rows = [r for r in rows if r.key in planned or r.status != "planned"]
    known = {r.key for r in rows}
    unseen = [t for t in planned.values() if t.key not in known] if planned is not None else []
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    counts["planned"] += len(unseen)
    states = dict.fromkeys(("new", "in_flight", "done", "failed"), 0)
    for row in rows:
        states[row.plan_state] += 1
    states["new"] += len(unseen)
    actual = sum((r.cost_actual for r in rows if r.cost_actual is not None), Decimal(0))
    committed = sum((r.committed for r in rows), Decimal(0))

    def left_estimate(row: TaskRow) -> Decimal:
        if row.status == "planned" and planned is not None and row.key in planned:
            return planned[row.key].estimate.cost  # what `run` would hold against the cap
        return row.cost_estimate if row.cost_estimate is not None else row.estimate_local

    unfinished = [r for r in rows if r.status in ("planned", *IN_FLIGHT)]
    left_cost = sum((left_estimate(r) for r in unfinished), Decimal(0)) + sum(
        (t.estimate.cost for t in unseen), Decimal(0)
    )

    def number(value: Decimal | None) -> float | None:
        return None if value is None else float(value)

    return {
        "manifest": name,
        "env": env,
        "simulated": env == "sim",
        "tasks": len(rows) + len(unseen),
        "counts": counts,
        "states": states,
        "spend": {"actual": number(actual), "committed": number(committed)},
        "left": {"tasks": len(unfinished) + len(unseen), "cost_estimate": number(left_cost)},
        "max_usd": number(cap),
        "budget_left": None if cap is None else number(cap - committed),
        "failures_by_charge": failures_by_charge(
            (r.status, charge_of(r.status, r.cost_actual, r.cost_estimate)) for r in rows
        ),
        "plan": None
        if the_plan is None
        else {
            "tasks": len(the_plan.tasks),
            "cost_estimate": number(the_plan.cost_estimate),
            "not_in_ledger": len(unseen),
        },
        "plan_error": plan_error,
        "last_run": None
        if run is None
        else {k: run[k] for k in ("id", "started_at", "finished_at", "outcome")},
    }


def _status_plan(
    path: Path, settings: Settings, env: str, has_rows: bool
) -> tuple[Plan | None, str | None]:
    """The manifest's plan for `status`, or (None, why) when it does not plan but the ledger
    can still speak; without ledger rows the error is the answer."""
    try:
        return build_plan(path, settings, env), None
    except MvbatchError as error:
        if not has_rows:
            raise
        log.info("status.unplanned", manifest=str(path), error=error.message)
        return None, error.message
