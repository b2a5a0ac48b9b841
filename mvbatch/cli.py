"""The command line: parse, build settings, call the core, render, pick the exit code.

Only this module prints. Every command runs inside `_edge`, the one place that
maps the error tree (`mvbatch.errors`) to the contract's exit codes; a user
mistake is a message, an unexpected error is a traceback written to the log
folder (or, if that cannot be written, the temporary folder) and a line that
says where.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.text import Text

from mvbatch import logs
from mvbatch.errors import (
    BudgetError,
    ConfigError,
    ExitCode,
    Interrupted,
    MvbatchError,
    UsageError,
)
from mvbatch.money import usd
from mvbatch.settings import Settings, load_settings
from mvbatch.sim.command import register as register_sim_command
from mvbatch.ui.help import EPILOG, mode_line
from mvbatch.ui.terminal import Terminal

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


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']} (got {item['input']!r})"
            for item in error.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings in the environment: {problems}") from None
    logs.register_secret(settings.api_key_value())
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
def plan(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="The TOML manifest of shots.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the reviewed plan to this TOML file.")
    ] = None,
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
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.planning import build_plan, ledger_states
    from mvbatch.plan import planfile
    from mvbatch.ui import render

    settings = _settings()
    the_plan = build_plan(manifest, settings)
    states = ledger_states(the_plan, settings)
    if as_json:
        terminal.stdout.write(
            json.dumps(render.plan_document(the_plan, states), ensure_ascii=False, indent=2) + "\n"
        )
    else:
        terminal.print(render.plan_view(the_plan, states))
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
) -> ExitCode:
    """Execute a plan: submit each task once, follow it to the end, download the videos.

    Live or simulated: with MINDVIDEO_API_KEY set (in the environment, or in
    a .env file in the working directory) the run is live and, without
    --yes, asks before spending; without it the built-in simulator runs and
    nothing is charged. The run's first line says which, and why.

    Re-running the same command resumes: finished tasks are skipped, tasks in
    flight are followed, nothing is charged twice. Ctrl-C stops submitting
    and records what was sent; Ctrl-C again quits at once (still safe).
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
    )


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
) -> ExitCode:
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands import running
    from mvbatch.run.budget import check_budget
    from mvbatch.ui import progress, render

    if simulate and live:
        raise UsageError("--simulate and --live exclude each other")
    settings = _settings()
    # Prepared first: it checks the state folder the log file goes in (exit 4, one line).
    prepared = running.prepare_run(
        manifest,
        settings,
        simulate=True if simulate else False if live else None,
        max_cost=_usd_option(max_cost),
        concurrency=concurrency,
        retry_failed=retry_failed,
        max_wait_minutes=max_wait,
    )
    try:
        _configure_logs(settings.state_dir / "logs" / "mvbatch.jsonl")
        endpoint = prepared.endpoint
        _say_mode(settings, endpoint, simulate=simulate, live=live)
        terminal.print(render.plan_view(prepared.plan, prepared.states, max_cost=prepared.max_cost))
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
    if download and outcome.report is not None and not outcome.report.complete:
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
) -> None:
    """Counts by status, spend and what is left: the ledger and the manifest's plan, no request.

    Before the first run it shows the plan's tasks as left, with their
    estimate. Like `plan`, it reads only reference videos' MP4 headers.
    """
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.status import status_document
    from mvbatch.ui import progress

    document = status_document(manifest, _settings())
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
) -> ExitCode:
    """Write report.json/csv/md/html from the ledger, fetching any videos not yet on disk."""
    # Imported here for start-up time: `mvbatch --help` and other commands skip it.
    from mvbatch.commands.reporting import report_manifest

    result = report_manifest(manifest, _settings(), download=not no_download)
    for line in result.summary():
        terminal.print(line, highlight=False)
    counts = result.report.counts
    unfinished = sum(counts.get(s, 0) for s in ("failed", "cancelled", "pending", "rejected"))
    missing = result.report.download_totals["missing"]
    if unfinished or (missing and not no_download) or result.lost:
        return ExitCode.UNFINISHED
    return ExitCode.OK


# The simulator contributes its own command; it imports nothing of ours.
register_sim_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
