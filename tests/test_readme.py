"""Docs that cannot drift: the README's commands and examples are checked here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from mvbatch import manifest
from mvbatch.cli import app
from mvbatch.planner import plan

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    return re.findall(r"^    (python3 -m venv .*)$", README, flags=re.MULTILINE)


def test_readme_opens_with_exactly_the_two_commands() -> None:
    head = README.split("---", 1)[0]
    commands = re.findall(r"^    (\S.*)$", head, flags=re.MULTILINE)
    assert len(commands) == 2
    demo, tests = commands
    assert "mvbatch run jobs/demo.toml" in demo
    assert "pytest" in tests
    assert (REPO / "jobs/demo.toml").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    # .ci/run extracts the command with sed; run that same extraction here.
    extracted = subprocess.run(
        [
            "sed",
            "-n",
            r"s/^    \(python3 -m venv .venv && .venv\/bin\/pip install .*pytest.*\)$/\1/p",
            str(REPO / "README.md"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == _commands()[1]
    assert "$TEST_COMMAND" in (REPO / ".ci/run").read_text(encoding="utf-8")


def test_the_readme_manifest_plans(tmp_path: Path) -> None:
    example = re.search(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "readme.toml"
    path.write_text(example.group(1), encoding="utf-8")
    planned = plan(manifest.load(path))
    # mode x duration minus one exclude = 3 variants, kling-v2-6, 16:9 sent as `size`.
    assert len(planned.tasks) == 3
    assert all(t.input["size"] == "16:9" for t in planned.tasks)
    assert planned.max_usd is not None


def test_every_command_in_the_readme_exists_and_has_help() -> None:
    block = re.search(r"## Commands\n\n```\n(.*?)```", README, flags=re.DOTALL)
    assert block is not None
    names = re.findall(r"^mvbatch (\w+)", block.group(1), flags=re.MULTILINE)
    assert names == ["plan", "run", "status", "report", "sim"]
    runner = CliRunner()
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert len(result.output.strip()) > 40
