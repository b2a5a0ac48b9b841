"""The command line: parse, build settings, call the core, render, pick the exit code.

Only this module prints. Every command runs inside `_edge`, the one place that
maps the error tree (`mvbatch.errors`) to the contract's exit codes; a user
mistake is a message, an unexpected error is a traceback written to the log
folder and a line that says where.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from mvbatch import logs
from mvbatch.errors import MvbatchError
from mvbatch.settings import Settings, load_settings

app = typer.Typer(
    name="mvbatch",
    help="Plan, run and report batches of MindVideo video generation tasks.",
    no_args_is_help=True,
    add_completion=False,
    # Local variables would include the settings, and so the API key.
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ValidationError as error:
        from mvbatch.errors import ConfigError

        raise ConfigError(f"invalid settings in the environment: {error}") from None
    logs.register_secret(settings.api_key_value())
    return settings


def _edge(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MvbatchError as error:
            err.print(
                f"[bold red]error:[/] {logs.redact_text(error.message)}",
                highlight=False,
                markup=True,
            )
            if error.hint:
                err.print(error.hint, highlight=False)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception:
            where = _write_crash_log()
            err.print(
                f"[bold red]internal error[/]: this is a bug in mvbatch. The traceback is in "
                f"{where}; please attach it to a bug report."
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _write_crash_log() -> Path:
    try:
        folder = Settings().state_dir / "logs"
    except ValidationError:
        folder = Path("state") / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    path.write_text(logs.redact_text(traceback.format_exc()), encoding="utf-8")
    return path


@app.callback()
def _options(
    log_format: Annotated[
        str, typer.Option("--log-format", help="Console log format: auto, console or json.")
    ] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log info events too.")] = False,
) -> None:
    if log_format not in ("auto", "console", "json"):
        raise typer.BadParameter("expected auto, console or json", param_hint="--log-format")
    logs.configure(log_format, "info" if verbose else "warning")  # type: ignore[arg-type]


@app.command()
@_edge
def plan(
    manifest: Annotated[Path, typer.Argument(help="The TOML manifest of shots.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the reviewed plan to this TOML file.")
    ] = None,
) -> None:
    """Show every task the manifest asks for, its key, its state and what it will cost."""
    from mvbatch import planfile, render
    from mvbatch.workflow import build_plan, ledger_states

    settings = _settings()
    the_plan = build_plan(manifest, settings)
    states = ledger_states(the_plan, settings)
    if as_json:
        sys.stdout.write(
            json.dumps(render.plan_document(the_plan, states), ensure_ascii=False, indent=2) + "\n"
        )
    else:
        out.print(render.plan_view(the_plan, states))
    if out_file is not None:
        planfile.write(the_plan, out_file)
        (err if as_json else out).print(f"plan written to {out_file}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
