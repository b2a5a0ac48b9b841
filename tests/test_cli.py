"""The CLI edge: exit codes, help for every command, and no traceback for mistakes."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mvbatch import cli
from mvbatch.cli import app

SECRET = "mv_live_cli_secret_value_42"


def test_every_command_has_help_text() -> None:
    runner = CliRunner()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert (command.help or (command.callback.__doc__ or "")).strip(), name


def test_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["plan", "jobs/demo.toml", "--frobnicate"])
    assert result.exit_code == 2


def test_missing_manifest_is_exit_2_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "file not found" in result.output
    assert "Traceback" not in result.output


def test_internal_error_writes_a_redacted_crash_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINDVIDEO_API_KEY", SECRET)

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"unexpected with {SECRET}")

    monkeypatch.setattr("mvbatch.commands.planning.build_plan", explode)
    manifest = tmp_path / "m.toml"
    manifest.write_text('name = "m"\n[[shots]]\nid = "a"\nmodel = "kling-v2-6"\nprompt = "p"\n')
    result = CliRunner().invoke(app, ["plan", str(manifest)])
    assert result.exit_code == 1
    assert "internal error" in result.output
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    crash_logs = list((tmp_path / "state" / "logs").glob("crash-*.log"))
    assert len(crash_logs) == 1
    text = crash_logs[0].read_text()
    assert "RuntimeError" in text
    assert SECRET not in text


def test_pretty_exceptions_never_show_locals() -> None:
    # Locals would include the settings, and so the API key.
    assert cli.app.pretty_exceptions_show_locals is False


def test_module_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mvbatch", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert "plan" in done.stdout


@pytest.mark.parametrize(("raised", "exit_code"), [(KeyboardInterrupt, 130), (EOFError, 3)])
def test_confirmation_prompt_abort_maps_to_contract_codes(
    monkeypatch: pytest.MonkeyPatch, raised: type[BaseException], exit_code: int
) -> None:
    from types import SimpleNamespace

    from mvbatch.errors import MvbatchError

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)

    def prompt(*_args: object, **_kwargs: object) -> bool:
        try:
            raise raised
        except raised:
            raise typer.Abort() from None

    monkeypatch.setattr("typer.confirm", prompt)
    with pytest.raises(MvbatchError) as caught:
        cli._confirm(SimpleNamespace(projected=Decimal(1), cap=None))
    assert caught.value.exit_code == exit_code


def test_a_bad_max_wait_is_a_usage_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text('name = "m"\n[[shots]]\nid = "a"\nmodel = "kling-v2-6"\nprompt = "p"\n')
    for value in ("0", "-5", "inf", "soon"):
        result = CliRunner().invoke(app, ["run", str(manifest), "--max-wait", value])
        assert result.exit_code == 2, (value, result.output)
        assert "--max-wait" in result.output
        assert "Traceback" not in result.output
