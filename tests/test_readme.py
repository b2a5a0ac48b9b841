"""Docs that cannot drift: the README's commands and examples are checked here."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from mvbatch.cli import app
from mvbatch.plan import manifest
from mvbatch.plan.keys import canonical_json
from mvbatch.plan.planner import plan

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
    assert names == ["plan", "run", "status", "report", "review", "export", "sim"]
    runner = CliRunner()
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert len(result.output.strip()) > 40


# ------------------------------------------------------------ for users

CONTRACT_VARIABLES = [  # SPEC section 2: the environment of the contract
    "MINDVIDEO_API_KEY",
    "MINDVIDEO_BASE_URL",
    "MVBATCH_STATE_DIR",
    "MVBATCH_OUTPUT_DIR",
    "MVBATCH_LEDGER",
    "MVBATCH_LEASE_SECONDS",
]
EXIT_CODES = ["0", "1", "2", "3", "4", "130"]
INTERNALS = REPO / "docs" / "internals.md"
# Moved out of the README into docs/internals.md (the issue: a README for users).
INTERNAL_DETAILS = (
    "BEGIN IMMEDIATE",
    "inode",
    "ctime",
    ".part",
    "Range",
    "HTTP/1.1",
    "HTTPS_PROXY",
    "Retry-After",
    "full jitter",
    "Kaplan-Meier",
    "BLAKE2b",
    "BENCHMARKS.md",
)


def _section(text: str, heading: str) -> str:
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found is not None, heading
    return found.group(1)


def test_readme_names_the_env_file_every_exit_code_and_variable() -> None:
    assert ".env" in README
    assert "never the key" in README
    codes = re.findall(r"^\| `(\d+)` \|", _section(README, "Exit codes"), flags=re.M)
    assert codes == EXIT_CODES
    rows = re.findall(r"^\| `([A-Z_]+)` \|", _section(README, "Environment"), flags=re.M)
    assert rows == CONTRACT_VARIABLES
    # The CLI reads each of them (a renamed variable would make the table lie).
    settings_source = (REPO / "mvbatch" / "settings.py").read_text(encoding="utf-8")
    for name in CONTRACT_VARIABLES:
        assert f'"{name}"' in settings_source, name


def test_readme_walks_through_plan_run_resume_report_and_status() -> None:
    for words in (
        "mvbatch plan teaser.toml",
        "mvbatch run teaser.toml",
        "mvbatch status teaser.toml",
        "--retry-failed",
        "rejected (not charged)",
        "failed (charged $x)",
        "outputs/<name>/",
        "report.html",
        "Ctrl-C",
        "kill -9",
        "--log-format json",
        "export MINDVIDEO_BASE_URL=http://127.0.0.1:8765/api/v1",
        "`mv_`",
    ):
        assert words in README, words
    # The walkthrough's file is the README's manifest example, saved under that name.
    assert "Save it as `teaser.toml`" in README


def test_internals_live_in_docs_not_in_the_readme() -> None:
    internals = INTERNALS.read_text(encoding="utf-8")
    for detail in INTERNAL_DETAILS:
        assert detail in internals, detail
        assert detail not in README, detail
    assert "docs/internals.md" in README
    assert "docs/architecture.md" in README
    assert "docs/simulator.md" in README


def test_every_relative_link_in_the_docs_exists() -> None:
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https: and friends
            assert (page.parent / target).exists(), (page.name, target)


def test_the_documented_key_recipe_is_the_planner_s(tmp_path: Path) -> None:
    """docs/internals.md works one key by hand; the planner must agree."""
    internals = INTERNALS.read_text(encoding="utf-8")
    document = re.search(r"^    (\{\"input\".*\})$", internals, flags=re.M)
    key = re.search(r"^    (mvb1-[0-9a-f]{32})$", internals, flags=re.M)
    assert document is not None
    assert key is not None
    text, documented_key = document.group(1), key.group(1)
    # The recipe, by hand: BLAKE2b-128 over the canonical JSON, tagged mvb1-.
    assert "mvb1-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest() == documented_key
    assert canonical_json(json.loads(text)) == text
    # And the planner gives that key to the README manifest's first task.
    example = re.search(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "teaser.toml"
    path.write_text(example.group(1), encoding="utf-8")
    first = plan(manifest.load(path)).tasks[0]
    assert first.key == documented_key
    assert (first.shot, first.model, first.take) == ("car-rain", "kling-v2-6", 1)
    assert json.loads(text) == {
        "manifest": "launch-teaser",
        "model": first.model,
        "input": first.input,
        "take": first.take,
    }
