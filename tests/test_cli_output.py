"""What the CLI prints where there is no terminal, and what its help says.

CI logs and pipes are read by people too: nothing is cut to 80 columns, and
`--log-format json` makes stderr a stream a program can parse line by line.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from run_helpers import REPO, cli, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_folder(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    return tmp_path


def no_columns_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = cli_env(tmp_path, key=None, **extra)
    env.pop("COLUMNS", None)
    return env


def test_a_plan_in_a_pipe_is_not_cut_to_80_columns(demo_folder: Path) -> None:
    result = cli(["plan", "jobs/demo.toml"], no_columns_env(demo_folder), demo_folder)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert "kling-v3-omni, kling-video-o1" in result.stdout
    assert "assumed ×1, documented ×2" in result.stdout


@pytest.mark.parametrize(
    "command", [[], ["run"], ["plan"], ["status"], ["report"], ["export"], ["review"], ["sim"]]
)
def test_help_is_whole_and_has_no_type_placeholders_on_flags(
    tmp_path: Path, command: list[str]
) -> None:
    result = cli([*command, "--help"], no_columns_env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout
    assert "…" not in result.stdout
    if command == ["sim"]:
        assert "--fault-drop-before-create" in result.stdout
        assert "--fault-truncated-download" in result.stdout
        assert "mv_" in result.stdout
        assert "/api/v1" in result.stdout
    if command != ["sim"]:
        for code in ("0 everything", "1 some", "2 usage", "3 refused", "4 API", "130 interrupted"):
            assert code in result.stdout.replace("\n  ", " ")
        for variable in (
            "MINDVIDEO_API_KEY",
            "MINDVIDEO_BASE_URL",
            "MVBATCH_STATE_DIR",
            "MVBATCH_OUTPUT_DIR",
        ):
            assert variable in result.stdout
        assert "logs/mvbatch.jsonl" in result.stdout
        assert ".env" in result.stdout


def test_plan_help_says_what_the_table_shows(tmp_path: Path) -> None:
    result = cli(["plan", "--help"], no_columns_env(tmp_path), tmp_path)
    text = " ".join(result.stdout.split())
    for column in ("variants", "to submit", "documented", "learned", "assumed"):
        assert column in text


def test_log_format_json_makes_every_stderr_line_json(demo_folder: Path) -> None:
    env = no_columns_env(demo_folder, MVBATCH_SIM_SPEED="0")
    result = cli(["--log-format", "json", "run", "jobs/demo.toml"], env, demo_folder)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines
    events = [json.loads(line) for line in lines]  # every line, or this raises
    names = {event["event"] for event in events}
    assert "run.mode" in names
    assert "run.progress" in names
    assert all("timestamp" in event and "level" in event for event in events)


def test_log_format_json_errors_are_json_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "Bad Name"\n', encoding="utf-8")
    result = cli(["--log-format", "json", "plan", "bad.toml"], no_columns_env(tmp_path), tmp_path)
    assert result.returncode == 2
    (event,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["event"] == "cli.error"
    assert event["exit_code"] == 2
    assert "bad.toml" in event["message"]


def test_every_run_says_which_source_chose_simulated_mode(demo_folder: Path) -> None:
    env = no_columns_env(demo_folder, MVBATCH_SIM_SPEED="0")
    result = cli(["run", "jobs/demo.toml", "--no-download"], env, demo_folder)
    assert "simulated (no MINDVIDEO_API_KEY in the environment or in ./.env)" in result.stderr
    forced = cli(["run", "jobs/demo.toml", "--simulate", "--no-download"], env, demo_folder)
    assert "simulated (--simulate)" in forced.stderr


def test_a_key_from_dot_env_is_announced_with_its_path_never_the_key(demo_folder: Path) -> None:
    key = "sk-dotenv-shaped-0123456789abcdef"
    (demo_folder / ".env").write_text(
        f"MINDVIDEO_API_KEY={key}\nMINDVIDEO_BASE_URL=http://127.0.0.1:9/api/v1\n",
        encoding="utf-8",
    )
    # No --yes and no terminal: the live run refuses after saying where it came from.
    result = cli(["run", "jobs/demo.toml"], no_columns_env(demo_folder), demo_folder)
    assert result.returncode == 3
    dot_env = str((demo_folder / ".env").resolve())
    assert re.search(rf"live: MINDVIDEO_API_KEY from {re.escape(dot_env)}", result.stderr)
    assert key not in result.stdout + result.stderr
