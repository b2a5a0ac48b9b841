"""The command line: parse, build settings, call the core, render, pick the exit code.

Only this module prints. Every command runs inside `_edge`, the one place that
maps the error tree (`mvbatch.errors`) to the contract's exit codes; a user
mistake is a message, an unexpected error is a traceback written to the log
folder (or, if that cannot be written, the temporary folder) and a line that
says where.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mvbatch import logs
from mvbatch.errors import (
    BudgetError,
    ConfigError,
    ExitCode,
    Interrupted,
    MvbatchError,
    UsageError,
)
from mvbatch.sim.command import register as register_sim_command
from mvbatch.ui.help import EPILOG, mode_line
from mvbatch.ui.terminal import Terminal

if TYPE_CHECKING:
    from mvbatch.settings import Settings

# Start-up: `mvbatch --help` imports this module and Typer, nothing more.
# pydantic (through the settings), Rich (the terminal makes its consoles when
# first used), structlog (`mvbatch.logs` imports it when a first event is
# logged), httpx and every stage are imported where a command needs them;
# tests/test_startup.py keeps it so.

app = typer.Typer(
    name="mvbatch",
    help="Plan, run and report batches of MindVideo video generation tasks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    # Plain help: Rich panels cut long option names to the terminal's width
    # (and to 80 columns in a pipe) and label every flag `<bool>`.
    rich_markup_mode=None,
    # Local variables would include the settings, and so the API key.
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
)

# The terminal of the command being run: built by `_options` from the streams
# the process has when the command starts (see `mvbatch.ui.terminal` for why it
# must never look them up again), and replaced for each command.
terminal = Terminal(sys.stdout, sys.stderr)

F = TypeVar("F", bound=Callable[..., Any])
# The console logging chosen by the global options; `run` adds its log file.
_LOGGING: dict[str, str] = {"format": "auto", "level": "warning"}


# `--ledger` on plan, run, status and report: MVBATCH_LEDGER for one command.
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        metavar="PATH|URL",
        help="The ledger: a SQLite file, or a postgresql:// URL a fleet of workers shares "
        "(default: MVBATCH_LEDGER, else ledger.sqlite in MVBATCH_STATE_DIR).",
        show_default=False,
    ),
]


def _settings(ledger: str | None = None) -> Settings:
    from urllib.parse import urlsplit

    from pydantic import SecretStr, ValidationError

    from mvbatch.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']} (got {item['input']!r})"
            for item in error.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings in the environment: {problems}") from None
    if ledger is not None:
        settings = settings.model_copy(update={"ledger": SecretStr(ledger)})
    logs.register_secret(settings.api_key_value())
    location = settings.ledger_location()
    if isinstance(location, str):  # a database password never reaches a log or the console
        logs.register_secret(urlsplit(location).password if "@" in location else None)
    return settings


def _edge(command: F) -> F:
    """The one place a command's outcome becomes an exit code.

    A command returns an `ExitCode` (or None for OK); an error of the tree
    exits with its own; Ctrl-C exits 130; anything else is a bug, written to
    the log folder, exit 1. (The second Ctrl-C of a run exits 130 at once
    from `_quit_now`, below.)
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            code = command(*args, **kwargs)
        except MvbatchError as error:
            from rich.text import Text

            message = Text.assemble(("error:", "bold red"), " ", logs.redact_text(error.message))
            terminal.say(
                message,
                event="cli.error",
                level="error",
                exit_code=error.exit_code,
                hint=error.hint,
            )
            if error.hint and not terminal.json:
                terminal.say(error.hint, event="cli.hint")
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            terminal.say("interrupted", event="cli.interrupted", level="warning")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception:
            from rich.text import Text

            where, words = _write_crash_log()
            terminal.say(
                Text.assemble(
                    ("internal error", "bold red"),
                    f": this is a bug in mvbatch. {words}; please attach it to a bug report.",
                ),
                event="cli.crashed",
                level="error",
                crash_log=None if where is None else str(where),
            )
            raise typer.Exit(ExitCode.UNFINISHED) from None
        raise typer.Exit(ExitCode.OK if code is None else code)

    return wrapper  # type: ignore[return-value]


def _write_crash_log() -> tuple[Path | None, str]:
    """Write the traceback being handled; return where, and the words that say so.

    Never raises: a bug must not hide behind a second traceback when the state
    folder cannot be written (a file in the way, a read-only mount). Then the
    log goes to the system's temporary folder, and if even that fails, the
    words say what went wrong.
    """
    import tempfile
    import traceback
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from mvbatch.settings import Settings

    text = logs.redact_text(traceback.format_exc())
    name = f"crash-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    try:
        folder = Settings().state_dir / "logs"
    except ValidationError:
        folder = Path("state") / "logs"
    failures: list[str] = []
    for where in (folder, Path(tempfile.gettempdir()) / "mvbatch"):
        try:
            where.mkdir(parents=True, exist_ok=True)
            path = where / name
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            failures.append(f"{where}: {error.strerror or error}")
            continue
        if failures:
            return path, f"{failures[0]}, so the traceback is in {path}"
        return path, f"The traceback is in {path}"
    last = logs.redact_text(traceback.format_exc(limit=0).strip().splitlines()[-1])
    return None, f"{last}. The traceback could not be written ({'; '.join(failures)})"


@app.callback()
def _options(
    context: typer.Context,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            metavar="FORMAT",
            help="What stderr speaks: auto (text on a terminal, JSON lines for log events "
            "otherwise), console, or json (every message, progress line and error as a "
            "JSON line).",
        ),
    ] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log info events too.")] = False,
) -> None:
    global terminal  # noqa: PLW0603 - one terminal per command, see above
    if log_format not in ("auto", "console", "json"):
        raise typer.BadParameter("expected auto, console or json", param_hint="--log-format")
    columns = os.environ.get("COLUMNS", "")
    terminal = Terminal(
        sys.stdout,
        sys.stderr,
        log_format,  # type: ignore[arg-type]
        columns=int(columns) if columns.isdigit() else None,
    )
    _LOGGING.update(format=log_format, level="info" if verbose else "warning")
    _configure_logs()
    # The terminal is this command's: once it ends, log events (from a test
    # runner, a library) go to whatever stderr is then, not to its streams.
    context.call_on_close(_release_terminal)


def _release_terminal() -> None:
    logs.configure(_LOGGING["format"], _LOGGING["level"])  # type: ignore[arg-type]


def _configure_logs(log_file: Path | None = None) -> None:
    logs.configure(
        _LOGGING["format"],  # type: ignore[arg-type]
        _LOGGING["level"],
        log_file=log_file,
        sink=terminal.log_line,
        tty=terminal.err.is_terminal,
    )


@app.command(epilog=EPILOG)
@_edge
def plan(  # options are keyword-only: Typer passes them by name
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest of shots.")
    ],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the reviewed plan to this TOML file.")
    ] = None,
    draft: Annotated[bool, typer.Option("--draft", help="What run --draft would run.")] = False,
    approved_only: Annotated[
        bool, typer.Option("--approved-only", help="What run --approved-only would run.")
    ] = False,
    reroll_rejected: Annotated[
        bool, typer.Option("--reroll-rejected", help="What run --reroll-rejected would run.")
    ] = False,
    ledger: LedgerOption = None,
) -> None:
    """Show every task the manifest asks for and what it will cost, before anything is spent.

    The table has one row per shot: its model(s), how many matrix variants
    and tasks (variants x takes) it plans, how many are still to submit
    (tasks not yet in the ledger), their estimated cost, and where each price
    comes from: documented (reproduces the API docs' example costs), learned
    (from the server's estimates recorded in this ledger) or assumed (a tier
    the docs do not price, chosen on the high side; a run sends one such task
    first to learn the real rate). Below it: the totals, the cap and its
    source, and warnings. --json prints every task with its key and state.
    --draft, --approved-only and --reroll-rejected show what `run` with the
    same option would run (see `mvbatch run --help`).
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.planning import build_plan, ledger_states, selected
    from mvbatch.plan import planfile
    from mvbatch.ui import render

    kind = _selection(draft=draft, approved_only=approved_only, reroll=reroll_rejected)
    if out_file is not None and kind != "all":
        raise UsageError(
            "--out saves the whole plan; choose --draft, --approved-only or --reroll-rejected "
            "when you run it (mvbatch run PLAN.toml --draft)"
        )
    settings = _settings(ledger)
    the_plan = build_plan(manifest, settings)
    chosen = selected(the_plan, settings, kind)
    states = ledger_states(chosen.plan, settings)
    if as_json:
        # Written as it is produced: a plan of 100,000 tasks is never held as one document.
        for chunk in render.plan_json_chunks(chosen.plan, states, chosen.rerolled_from):
            terminal.stdout.write(chunk)
        terminal.stdout.flush()
    else:
        if kind != "all" or chosen.empty:
            terminal.print(render.selection_view(chosen))
        if not chosen.empty:
            terminal.print(render.plan_view(chosen.plan, states))
    if out_file is not None:
        try:
            planfile.write(the_plan, out_file)
        except OSError as error:
            raise UsageError(
                f"--out {out_file}: cannot write the plan there ({error.strerror or error})"
            ) from None
        if as_json:
            terminal.say(f"plan written to {out_file}", event="plan.written", path=str(out_file))
        else:
            terminal.print(f"plan written to {out_file}")


# ------------------------------------------------------------------ run and status
#
# `run` prepares everything without a request (endpoint, plan, ledger, budget),
# shows it, refuses or asks, then executes with a progress display. The
# executor itself never prints: it is watched through `progress.Display`.


@app.command(epilog=EPILOG)
@_edge
def run(  # options are keyword-only: Typer passes them by name
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest, or a reviewed PLAN.toml.")
    ],
    *,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before spending money (live runs).")
    ] = False,
    max_cost: Annotated[
        str | None,
        typer.Option(
            "--max-cost",
            metavar="USD",
            help="Cap on this manifest's spend; the lower of this and the manifest's max_usd wins.",
        ),
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Use the built-in simulator, even with a key.")
    ] = False,
    live: Annotated[
        bool, typer.Option("--live", help="Use the real API; refuses without MINDVIDEO_API_KEY.")
    ] = False,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            "-c",
            help="Most tasks in flight at once; lowered automatically when the API says 429.",
        ),
    ] = 16,
    no_download: Annotated[
        bool, typer.Option("--no-download", help="Do not download the videos now.")
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Submit failed and rejected tasks again under new keys: each is a new task, "
            "charged as one.",
        ),
    ] = False,
    max_wait: Annotated[
        float | None,
        typer.Option(
            "--max-wait",
            metavar="MINUTES",
            help="Stop following a task that has not ended after this long (default 180); "
            "it keeps running on the server and a later run collects it.",
        ),
    ] = None,
    draft: Annotated[bool, typer.Option("--draft", help=DRAFT_HELP)] = False,
    approved_only: Annotated[
        bool, typer.Option("--approved-only", help=APPROVED_ONLY_HELP)
    ] = False,
    reroll_rejected: Annotated[
        bool, typer.Option("--reroll-rejected", help=REROLL_REJECTED_HELP)
    ] = False,
    ledger: LedgerOption = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Run only the K-th of N disjoint slices of the plan (by key hash), with an "
            "even share of the cap: one job of an array (Kubernetes, Slurm, a CI matrix).",
        ),
    ] = None,
) -> ExitCode:
    """Execute a plan: submit each task once, follow it to the end, download the videos.

    Live or simulated: with MINDVIDEO_API_KEY set (in the environment, or in
    a .env file in the working directory) the run is live and, without
    --yes, asks before spending; without it the built-in simulator runs and
    nothing is charged. The run's first line says which, and why.

    Re-running the same command resumes: finished tasks are skipped, tasks in
    flight are followed, nothing is charged twice. Ctrl-C stops submitting
    and records what was sent; Ctrl-C again quits at once (still safe).

    Review loop: --draft runs each shot's cheapest variant, one take; after
    approving or rejecting takes in `mvbatch review`, --approved-only runs
    the rest of the matrix of the shots with an approved take, and
    --reroll-rejected one new take for each rejected one. Each shows and
    prices what it will run first; a plain run still runs everything left.
    """
    return _run_command(
        manifest,
        yes=yes,
        max_cost=max_cost,
        simulate=simulate,
        live=live,
        concurrency=concurrency,
        download=not no_download,
        retry_failed=retry_failed,
        max_wait=max_wait,
        selection=_selection(draft=draft, approved_only=approved_only, reroll=reroll_rejected),
        ledger=ledger,
        shard=_shard(shard),
    )


def _shard(text: str | None) -> tuple[int, int] | None:
    """`--shard K/N`: the K-th (1-based) of N slices."""
    if text is None:
        return None
    k_text, _, n_text = text.partition("/")
    if not (k_text.strip().isdigit() and n_text.strip().isdigit()):
        raise UsageError(f"--shard takes K/N, e.g. --shard 2/3; got {text!r}")
    k, n = int(k_text), int(n_text)
    if not 1 <= k <= n:
        raise UsageError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


DRAFT_HELP = "Run only each shot's cheapest variant, one take (review it before the rest)."
APPROVED_ONLY_HELP = "Run the rest of the matrix, only for shots with an approved take."
REROLL_REJECTED_HELP = (
    "Run one new take of each rejected take (a new key; a pinned seed is changed), nothing else."
)


def _selection(*, draft: bool, approved_only: bool, reroll: bool) -> Any:
    """Which tasks `run` or `plan` speaks of: `commands.selection.Kind`."""
    flags = {"--draft": draft, "--approved-only": approved_only, "--reroll-rejected": reroll}
    given = [flag for flag, on in flags.items() if on]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other: choose one")
    kinds = {"--draft": "draft", "--approved-only": "approved", "--reroll-rejected": "reroll"}
    return kinds[given[0]] if given else "all"


def _quit_now(resume: str) -> None:
    """The second Ctrl-C of a run: exit at once. Safe, because every step the
    run took is a committed transaction and the next run resumes from them."""
    terminal.say(
        f"quitting now; resume with: {resume}",
        event="run.quit",
        level="warning",
        style="yellow",
        resume=resume,
    )
    os._exit(ExitCode.INTERRUPTED)


def _run_command(
    manifest: Path,
    *,
    yes: bool,
    max_cost: str | None,
    simulate: bool,
    live: bool,
    concurrency: int,
    download: bool,
    retry_failed: bool,
    max_wait: float | None = None,
    selection: Any = "all",
    ledger: str | None = None,
    shard: tuple[int, int] | None = None,
) -> ExitCode:
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    import asyncio
    import shlex

    from mvbatch.commands import running
    from mvbatch.run.budget import check_budget
    from mvbatch.ui import progress, render

    if simulate and live:
        raise UsageError("--simulate and --live exclude each other")
    settings = _settings(ledger)
    # Prepared first: it checks the state folder the log file goes in (exit 4, one line).
    prepared = running.prepare_run(
        manifest,
        settings,
        simulate=True if simulate else False if live else None,
        max_cost=_usd_option(max_cost),
        concurrency=concurrency,
        retry_failed=retry_failed,
        max_wait_minutes=max_wait,
        selection=selection,
        shard=shard,
    )
    try:
        _configure_logs(settings.state_dir / "logs" / "mvbatch.jsonl")
        endpoint = prepared.endpoint
        _say_mode(settings, endpoint, simulate=simulate, live=live)
        chosen = prepared.selection
        if chosen is not None and chosen.empty:
            terminal.print(render.selection_view(chosen))
            return ExitCode.OK
        if chosen is not None and chosen.kind != "all":
            terminal.print(render.selection_view(chosen))
        terminal.print(render.plan_view(prepared.plan, prepared.states, max_cost=prepared.max_cost))
        if prepared.shard_line:
            terminal.print(prepared.shard_line, highlight=False)
        terminal.print(progress.preflight_view(prepared.check, endpoint.simulated))
        check_budget(prepared.check)
        again = "mvbatch " + shlex.join(a for a in sys.argv[1:] if a != "--retry-failed")
        check = prepared.check
        if check.work == 0 and not download:
            terminal.print("nothing to do: every task is finished")
            return ExitCode.UNFINISHED if check.failed else ExitCode.OK
        if not endpoint.simulated and not yes and check.new + check.retry + check.resume:
            _confirm(check)
        display: Callable[[Any], Any] = lambda ex: progress.Display(terminal, ex.snapshot)  # noqa: E731
        stopper = running.Stopper(
            on_first=lambda phase: terminal.say(
                "stopping the downloads; part files are kept to resume. "
                "Ctrl-C again to quit at once (still safe)"
                if phase == "downloads"
                else "stopping: no new submissions; recording what "
                "was sent. Ctrl-C again to quit at once (still safe)",
                event="run.stopping",
                level="warning",
                style="yellow",
                phase=phase,
            ),
            on_second=lambda: _quit_now(again),
        )
        outcome = asyncio.run(
            running.execute(prepared, download=download, watch=display, stopper=stopper)
        )
    finally:
        prepared.close()
    result = outcome.result
    terminal.print(
        progress.result_view(
            result, again, report=outcome.report.report if outcome.report is not None else None
        )
    )
    if outcome.report is not None:
        for text in outcome.report.summary():
            terminal.print(text, highlight=False)
    if result.interrupted:
        return ExitCode.INTERRUPTED
    if result.held or result.over_cap:  # over it: the server billed more than it estimated
        return ExitCode.BUDGET
    if result.failed or result.pending:
        return ExitCode.UNFINISHED
    if download and outcome.report is not None and not outcome.complete:
        return ExitCode.UNFINISHED
    return ExitCode.OK


def _say_mode(settings: Settings, endpoint: Any, *, simulate: bool, live: bool) -> None:
    """Say which mode this run is in and what chose it (never the key itself)."""
    text, style, fields = mode_line(
        simulated=endpoint.simulated,
        forced=simulate,
        live_flag=live,
        key_source=settings.key_source(),
        base_url=endpoint.base_url,
    )
    terminal.say(text, event="run.mode", style=style, **fields)


def _usd_option(text: str | None) -> Any:
    from decimal import Decimal, InvalidOperation

    if text is None:
        return None
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise UsageError(
            f"--max-cost expects an amount of US dollars such as 12.50; got {text!r}"
        ) from None
    if not value.is_finite() or value <= 0:
        raise UsageError(f"--max-cost must be a positive amount; got {text!r}")
    return value


def _confirm(check: Any) -> None:
    from mvbatch.money import usd

    question = f"Submit for real? projected {usd(check.projected)}" + (
        f" (cap {usd(check.cap)})" if check.cap is not None else ""
    )
    if not sys.stdin.isatty():
        raise BudgetError(
            "a live run needs confirmation and there is no terminal to ask: nothing was submitted",
            hint="review the plan above, then run again with --yes",
        )
    try:
        confirmed = typer.confirm(question, default=False, err=True)
    except typer.Abort as abort:
        # click turns both Ctrl-C and end-of-input into Abort; tell them apart.
        if isinstance(abort.__context__, KeyboardInterrupt):
            raise Interrupted("interrupted at the confirmation: nothing was submitted") from None
        raise BudgetError("no answer to the confirmation: nothing was submitted") from None
    if not confirmed:
        raise BudgetError("not confirmed: nothing was submitted")


@app.command(epilog=EPILOG)
@_edge
def status(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest (or PLAN.toml).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    ledger: LedgerOption = None,
) -> None:
    """Counts by status, spend and what is left: the ledger and the manifest's plan, no request.

    Before the first run it shows the plan's tasks as left, with their
    estimate. Like `plan`, it reads only reference videos' MP4 headers.
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.status import status_document
    from mvbatch.ui import progress

    document = status_document(manifest, _settings(ledger))
    if as_json:
        terminal.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        terminal.print(progress.status_view(document))


@app.command(epilog=EPILOG)
@_edge
def report(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest that was run.")
    ],
    no_download: Annotated[
        bool, typer.Option("--no-download", help="Write the reports without fetching videos.")
    ] = False,
    ledger: LedgerOption = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Write one report over the ledgers named after the manifest (paths or "
            "postgresql:// URLs), e.g. those of the shards of a job array.",
        ),
    ] = False,
    ledgers: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[LEDGER]...", help="With --merge: the ledgers to merge.", show_default=False
        ),
    ] = None,
) -> ExitCode:
    """Write report.json/csv/md/html from the ledger, fetching any videos not yet on disk.

    With --merge LEDGER...: one report over several ledgers of the same
    manifest (the shards of `run --shard`), read only: no video is fetched.
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.reporting import report_manifest

    if ledgers and not merge:
        raise UsageError("more than one MANIFEST: to merge ledgers, say --merge LEDGER...")
    if merge:
        if not ledgers:
            raise UsageError("--merge needs the ledgers to merge: --merge LEDGER [LEDGER...]")
        from mvbatch.commands.reporting import merged_report

        result = merged_report(manifest, _settings(ledger), ledgers)
        no_download = True
    else:
        result = report_manifest(manifest, _settings(ledger), download=not no_download)
    for line in result.summary():
        terminal.print(line, highlight=False)
    counts = result.report.counts
    unfinished = sum(counts.get(s, 0) for s in ("failed", "cancelled", "pending", "rejected"))
    missing = result.report.download_totals["missing"]
    if unfinished or (missing and not no_download) or result.lost:
        return ExitCode.UNFINISHED
    return ExitCode.OK


@app.command(epilog=EPILOG)
@_edge
def export(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest that was run.")
    ],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="The folder to export into.")],
    approved: Annotated[
        bool, typer.Option("--approved", help="Only the takes approved in `mvbatch review`.")
    ] = False,
) -> ExitCode:
    """Copy the takes into DEST for an editor, verified, with shots.csv and timeline.otio.

    Files are named <shot>_<variant>_v<take>.mp4; the timeline holds the
    approved takes in shot order. Exit 1 if a take asked for could not be
    exported (the reason is said), or there was none to export.
    """
    from mvbatch.commands.exporting import export_manifest

    result = export_manifest(manifest, dest, _settings(), approved=approved)
    for line in result.summary():
        terminal.print(line, highlight=False)
    return ExitCode.OK if result.complete else ExitCode.UNFINISHED


@app.command(epilog=EPILOG)
@_edge
def review(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest whose takes to review.")
    ],
    *,
    host: Annotated[
        str, typer.Option(help="Interface to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8766,
    no_open: Annotated[
        bool, typer.Option("--no-open", help="Do not open the page in a browser.")
    ] = False,
) -> ExitCode:
    """Review the takes in the browser: approve, reject and note each one, live as takes land.

    Serves the contact sheet as a local web app and prints its URL, with a
    random token that every request needs. Each verdict is recorded in the
    ledger at once; report.json's tasks carry the latest one ("verdict",
    "note"), and the reports are written again when the review stops.
    Ctrl-C stops it.
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands import reviewing

    session = reviewing.prepare_review(manifest, _settings(), host=host, port=port)
    try:
        side = " (simulated)" if session.env == "sim" else ""
        terminal.say(
            f"reviewing {session.plan.name}{side}: {session.takes} planned takes; "
            "verdicts are saved as you give them. Ctrl-C stops.",
            event="review.started",
        )
        if not session.loopback:
            terminal.say(
                f"--host {host}: other machines can reach this server; the token still "
                "guards it, so share the URL only with people who may give verdicts",
                event="review.exposed",
                level="warning",
                style="yellow",
            )
        # The URL on its own line, unwrapped: it is what a person or a script copies.
        terminal.stdout.write(f"{session.url}\n")
        terminal.stdout.flush()
        if not no_open:
            reviewing.open_browser(session.url)
        session.serve()
        result = session.finish()
    finally:
        session.close()
    terminal.say(
        f"stopped; {session.sheet.verdicts_given} verdicts given"
        + (f", reports written in {result.folder}" if result is not None else ""),
        event="review.stopped",
    )
    return ExitCode.OK


# The simulator contributes its own command; it imports nothing of ours.
register_sim_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
