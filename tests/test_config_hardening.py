"""What a disk can do to mvbatch: folders it cannot use, a damaged ledger.

A folder that cannot be used (a file in the way, a path nothing can be created
under, a read-only mount) is a configuration error: exit 4 and one line naming
the variable, the folder and the cause, before any request. A damaged ledger
is said to be damaged, where it is and how to recover, and is never changed.

Tests run as root here, where a folder's mode bits do not stop writes: a
read-only folder is stood in for by paths the kernel refuses to create (under
a regular file, under /proc), and the chmod test only runs as another user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from run_helpers import (
    api_requests,
    cli,
    cli_env,
    invoke,
    shots,
    sim_stats,
    write_manifest,
)
from sim_helpers import running_sim

from mvbatch import cli as cli_module

NEVER = ("Traceback", "internal error", "this is a bug")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _manifest(folder: Path) -> Path:
    return write_manifest(folder, "hard", shots(2))


def _assert_clean(output: str) -> None:
    for never in NEVER:
        assert never not in output, output


# ------------------------------------------------------------------ folders


def test_output_dir_that_is_a_file_stops_the_run_before_any_request(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    in_the_way = tmp_path / "outputs"
    in_the_way.write_text("not a folder")
    with running_sim(tmp_path, speed=0) as base:
        result = cli(["run", str(path), "--yes"], cli_env(tmp_path, base), tmp_path)
        stats = sim_stats(base)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert api_requests(stats) == 0
    assert stats["billing"]["charges"] == 0
    _assert_clean(output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: MVBATCH_OUTPUT_DIR={in_the_way} cannot be used: {in_the_way} is a file, "
        "not a folder. Set MVBATCH_OUTPUT_DIR to a folder mvbatch can write (checked before "
        "anything was sent)."
    ], output
    assert in_the_way.read_text() == "not a folder"


def test_state_dir_that_is_a_file_is_exit_4_in_one_line_from_the_real_cli(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    state = tmp_path / "state"
    state.write_text("not a folder")
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0")
    for command in (["run", str(path)], ["report", str(path)], ["status", str(path)]):
        result = cli(command, env, tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 4, (command, output)
        _assert_clean(output)
        assert result.stderr.splitlines()[0] == (
            f"error: MVBATCH_STATE_DIR={state} cannot be used: {state} is a file, not a "
            "folder. Set MVBATCH_STATE_DIR to a folder mvbatch can write (checked before "
            "anything was sent)."
        ), (command, output)
    assert state.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["run", "report"])
def test_a_folder_that_cannot_be_created_is_exit_4(tmp_path: Path, command: str) -> None:
    # /proc refuses new entries, even to root: the stand-in for a read-only mount.
    path = _manifest(tmp_path)
    unusable = Path("/proc/mvbatch-cannot-exist/outputs")
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0", MVBATCH_OUTPUT_DIR=str(unusable))
    result = cli([command, str(path)], env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    _assert_clean(output)
    assert result.stderr.splitlines()[0].startswith(
        f"error: MVBATCH_OUTPUT_DIR={unusable} cannot be used: {unusable} cannot be created "
    ), output


def test_a_folder_nothing_can_be_written_in_is_exit_4(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0", MVBATCH_STATE_DIR="/proc")
    result = cli(["run", str(path)], env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    _assert_clean(output)
    assert result.stderr.splitlines()[0].startswith(
        "error: MVBATCH_STATE_DIR=/proc cannot be used: nothing can be written in /proc "
    ), output


@pytest.mark.skipif(AS_ROOT, reason="root writes into a chmod 0o555 folder: nothing to refuse")
def test_a_read_only_folder_is_exit_4(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    locked = tmp_path / "outputs"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke(["run", str(path)])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 4, result.output
    assert f"MVBATCH_OUTPUT_DIR={locked} cannot be used" in result.output


def test_a_subfolder_in_the_way_is_named(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    (tmp_path / "state").mkdir()
    logs = tmp_path / "state" / "logs"
    logs.write_text("a file where the logs go")
    result = invoke(["run", str(path)])
    assert result.exit_code == 4, result.output
    _assert_clean(result.output)
    assert (
        f"error: MVBATCH_STATE_DIR={tmp_path / 'state'} cannot be used: {logs} is a file, "
        "not a folder." in result.output
    )


def test_plan_and_status_create_nothing_and_refuse_a_file_in_the_way(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    for command in ("plan", "status"):
        result = invoke([command, str(path)])
        assert result.exit_code == 0, result.output
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "state").write_text("not a folder")
    for command in ("plan", "status"):
        result = invoke([command, str(path)])
        assert result.exit_code == 4, result.output
        _assert_clean(result.output)
        assert "MVBATCH_STATE_DIR=" in result.output


def test_plan_out_into_a_file_is_a_usage_error(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    (tmp_path / "reviewed").write_text("a file")
    result = invoke(["plan", str(path), "--out", str(tmp_path / "reviewed" / "plan.toml")])
    assert result.exit_code == 2, result.output
    _assert_clean(result.output)
    assert "--out" in result.output


def test_crash_log_falls_back_to_a_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state folder does not exist and cannot be created: plan needs nothing
    # there, so the bug below is reached, and its log must still go somewhere.
    monkeypatch.setenv("MVBATCH_STATE_DIR", "/proc/mvbatch-cannot-exist/state")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # what TMPDIR would say

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("mvbatch.commands.planning.build_plan", explode)
    result = invoke(["plan", str(_manifest(tmp_path))])
    assert not isinstance(result.exception, OSError), result.exception
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    written = list((tmp_path / "tmp").rglob("crash-*.log"))
    assert len(written) == 1, result.output
    assert str(written[0]) in result.output.replace("\n", "")
    assert "RuntimeError: a bug" in written[0].read_text()


def test_write_crash_log_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(tmp_path / "file"))
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", "/proc/mvbatch-cannot-exist")  # no fallback either
    try:
        raise ValueError("boom")
    except ValueError:
        where, words = cli_module._write_crash_log()
    assert where is None
    assert words.startswith("ValueError: boom. The traceback could not be written ("), words


def test_invalid_settings_are_one_line_exit_4(tmp_path: Path) -> None:
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="-1")
    result = cli(["run", str(_manifest(tmp_path))], env, tmp_path)
    assert result.returncode == 4, result.stderr
    _assert_clean(result.stdout + result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: invalid settings in the environment: MVBATCH_SIM_SPEED: Input should be "
        "greater than or equal to 0 (got '-1')"
    ], result.stderr


# ------------------------------------------------------------------ a damaged ledger


@pytest.fixture(scope="module")
def healthy_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder after a real, successful simulated run (built once)."""
    folder = tmp_path_factory.mktemp("healthy")
    path = _manifest(folder)
    env = cli_env(folder, key=None, MVBATCH_SIM_SPEED="0")
    result = cli(["run", str(path), "--no-download"], env, folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "state"


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _truncate_inside_first_page(path: Path) -> None:
    os.truncate(path, 1000)


def _truncate_to_nothing(path: Path) -> None:
    os.truncate(path, 0)


def _overwrite_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(b"this is no longer SQLite")


def _garbage_in_the_middle(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(4096 * 2)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(4096)))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated-half": _truncate_half,
    "truncated-first-page": _truncate_inside_first_page,
    "truncated-empty": _truncate_to_nothing,
    "bad-header": _overwrite_header,
    "damaged-pages": _garbage_in_the_middle,
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damaged_copy(healthy: Path, tmp_path: Path, damage: str) -> tuple[Path, Path]:
    state = tmp_path / "state"
    shutil.copytree(healthy, state)
    ledger = state / "ledger.sqlite"
    DAMAGE[damage](ledger)
    return state, ledger


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["plan", "status", "run", "report"])
def test_a_damaged_ledger_is_said_so_and_left_as_it_is(
    healthy_state: Path, tmp_path: Path, damage: str, command: str
) -> None:
    state, ledger = _damaged_copy(healthy_state, tmp_path, damage)
    before = _sha256(ledger)
    path = _manifest(tmp_path)
    result = invoke([command, str(path)])
    output = result.output
    assert result.exit_code == 4, output
    _assert_clean(output)
    first = output.splitlines()[0]
    assert first.startswith(f"error: the ledger {ledger} is damaged ("), output
    assert "mvbatch did not change it" in first
    assert _sha256(ledger) == before
    copies = sorted(state.glob("ledger.sqlite.damaged-*"))
    assert [c for c in copies if not c.name.endswith(("-wal", "-shm"))], output
    assert _sha256(copies[0]) == before
    assert str(copies[0]) in output.replace("\n", "")
    assert ".recover" in output
    assert "MVBATCH_STATE_DIR" in output


def test_the_real_process_shows_no_traceback_for_a_damaged_ledger(
    healthy_state: Path, tmp_path: Path
) -> None:
    _, ledger = _damaged_copy(healthy_state, tmp_path, "bad-header")
    before = _sha256(ledger)
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0")
    result = cli(["run", str(_manifest(tmp_path))], env, tmp_path)
    assert result.returncode == 4, result.stderr
    _assert_clean(result.stdout + result.stderr)
    assert result.stderr.startswith(f"error: the ledger {ledger} is damaged")
    assert _sha256(ledger) == before


def test_a_damaged_ledger_is_copied_aside_once(healthy_state: Path, tmp_path: Path) -> None:
    state, _ = _damaged_copy(healthy_state, tmp_path, "bad-header")
    path = _manifest(tmp_path)
    for _ in range(3):
        assert invoke(["status", str(path)]).exit_code == 4
    assert len(list(state.glob("ledger.sqlite.damaged-*"))) == 1


def test_a_successful_run_keeps_a_backup_that_restores(
    healthy_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = healthy_state / "ledger.sqlite.bak"
    assert backup.is_file()
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2
    # The message's advice works: restore the backup into a new state folder.
    _, ledger = _damaged_copy(healthy_state, tmp_path, "bad-header")
    path = _manifest(tmp_path)
    damaged = invoke(["status", str(path)])
    assert str(ledger.parent / "ledger.sqlite.bak") in damaged.output.replace("\n", "")
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(ledger.parent / "ledger.sqlite.bak", restored / "ledger.sqlite")
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(restored))
    status = invoke(["status", str(path), "--json"])
    assert status.exit_code == 0, status.output
    assert '"succeeded": 2' in status.output


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command-line tool")
def test_the_recover_advice_works(
    healthy_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, ledger = _damaged_copy(healthy_state, tmp_path, "damaged-pages")
    path = _manifest(tmp_path)
    assert invoke(["status", str(path)]).exit_code == 4
    copy = next(state.glob("ledger.sqlite.damaged-*"))
    advice = invoke(["status", str(path)]).output
    recovered = tmp_path / "state-recovered"
    assert f"MVBATCH_STATE_DIR={recovered}" in advice
    recovered.mkdir()

    # As the advice says: .recover, or .dump where .recover fails (SQLite 3.40).
    def sqlite3_cli(command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["sqlite3", str(copy), command], capture_output=True, timeout=60, check=False
        )

    dump = sqlite3_cli(".recover")
    if dump.returncode != 0:
        assert ".dump instead" in advice
        dump = sqlite3_cli(".dump")
    subprocess.run(
        ["sqlite3", str(recovered / "ledger.sqlite")], input=dump.stdout, check=True, timeout=60
    )
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(recovered))
    status = invoke(["status", str(path), "--json"])
    assert status.exit_code == 0, status.output
    assert '"succeeded": 2' in status.output
    assert ledger.is_file()


def test_a_healthy_ledger_is_not_copied(healthy_state: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(healthy_state, state)
    assert invoke(["status", str(_manifest(tmp_path))]).exit_code == 0
    assert not list(state.glob("ledger.sqlite.damaged-*"))


def test_only_the_contracts_names_are_read_never_a_bare_base_url_or_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `BASE_URL` or `API_KEY` set for another program must not send our key to its host
    or turn a simulated run into a paid one (env lookup ignores case)."""
    from mvbatch.settings import DEFAULT_BASE_URL, Settings

    monkeypatch.setenv("BASE_URL", "http://evil.test/api/v1")
    monkeypatch.setenv("API_KEY", "foreign-key-0123456789")
    monkeypatch.setenv("state_dir", "/nowhere")
    settings = Settings()
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.api_key_value() is None
    assert str(settings.state_dir) != "/nowhere"
