"""The CLI as a person uses it: the real `mvbatch` console script in a pseudo-terminal.

Every other end-to-end test drives the tool through pipes, where Rich draws
no live panel and click asks nothing. These run it under a pty (pexpect), so
the live display, the confirmation prompt and Ctrl-C behave as they do for a
person; each has a hard timeout, because the failure they guard is a hang.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pexpect
import pytest
from run_helpers import REPO, charges_by_key, cli, cli_env, shots, sim_stats, write_manifest
from sim_helpers import running_sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MVBATCH = str(Path(sys.executable).parent / "mvbatch")  # the installed console script
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
KEY = "mv_test_terminal_key_0123456789"


def terminal_env(tmp_path: Path, base_url: str | None = None, **extra: str) -> dict[str, str]:
    env = cli_env(tmp_path, base_url, key=KEY if base_url else None, **extra)
    env.pop("COLUMNS", None)  # a terminal has its own size
    env["TERM"] = "xterm-256color"
    return env


class Session:
    """One command in a pseudo-terminal, with everything it wrote kept."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path) -> None:
        self.log = cwd / "terminal.log"
        self.child = pexpect.spawn(
            MVBATCH,
            args,
            env=dict(env),
            cwd=str(cwd),
            dimensions=(40, 120),
            timeout=90,
        )
        self.child.logfile_read = self.log.open("ab")

    def expect(self, pattern: str, timeout: float = 90) -> None:
        self.child.expect(pattern, timeout=timeout)

    def finish(self, timeout: float = 120) -> int:
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        assert self.child.logfile_read is not None
        self.child.logfile_read.close()
        status = self.child.exitstatus
        if status is None:  # ended by a signal
            return 128 + int(self.child.signalstatus or 0)
        return int(status)

    @property
    def raw(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace")

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r", "")


@pytest.fixture
def demo_folder(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    return tmp_path


@pytest.fixture
def live_sim(tmp_path: Path) -> Iterator[str]:
    with running_sim(tmp_path, speed=2, seed=7) as base_url:
        yield base_url


def test_readme_demo_in_a_terminal_ends_with_its_reports(demo_folder: Path) -> None:
    session = Session(["run", "jobs/demo.toml"], terminal_env(demo_folder), demo_folder)
    status = session.finish(timeout=120)
    assert status == 0, session.text[-3000:]
    report = demo_folder / "outputs" / "demo"
    assert (report / "report.html").is_file()
    assert (report / "report.json").is_file()
    assert len(list((report / "videos").rglob("*.mp4"))) == 9
    assert "9 succeeded" in session.text
    assert "simulated (no MINDVIDEO_API_KEY" in session.text
    assert "Traceback" not in session.text


def test_live_display_redraws_in_place(demo_folder: Path) -> None:
    env = terminal_env(demo_folder, MVBATCH_SIM_SPEED="2")
    session = Session(["run", "jobs/demo.toml"], env, demo_folder)
    assert session.finish() == 0, session.text[-3000:]
    finished = re.findall(r"demo  (\d+)/9 finished", session.text)
    # The panel was drawn many times, and its counts moved as tasks ended ...
    assert len(finished) >= 4
    assert len(set(finished)) >= 3
    assert finished[-1] == "9"
    # ... in place: Rich moves the cursor up over the last frame (ESC [ n A)
    # instead of printing a new panel under the old one.
    assert re.search(r"\x1b\[\d*A", session.raw)


def test_ctrl_c_once_stops_cleanly_and_says_how_to_resume(tmp_path: Path, live_sim: str) -> None:
    manifest = write_manifest(tmp_path, "ctrlc", shots(12))
    env = terminal_env(tmp_path, live_sim)
    args = ["run", str(manifest.name), "--yes", "--concurrency", "2"]
    session = Session(args, env, tmp_path)
    session.expect(r"/12 finished")
    session.child.sendintr()
    session.expect("stopping: no new submissions")
    assert session.finish() == 130, session.text[-3000:]
    assert f"Resume with: mvbatch run {manifest.name} --yes --concurrency 2" in session.text
    assert "Traceback" not in session.text

    resumed = cli(args, env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    charges = charges_by_key(sim_stats(live_sim))
    assert len(charges) == 12
    assert set(charges.values()) == {1}


def test_ctrl_c_twice_quits_at_once_and_loses_nothing(tmp_path: Path, live_sim: str) -> None:
    manifest = write_manifest(tmp_path, "twice", shots(12))
    env = terminal_env(tmp_path, live_sim)
    args = ["run", manifest.name, "--yes", "--concurrency", "4"]
    session = Session(args, env, tmp_path)
    session.expect(r"/12 finished")
    session.child.sendintr()
    session.expect("stopping: no new submissions")
    session.child.sendintr()
    session.expect("quitting now; resume with: mvbatch run")
    assert session.finish(timeout=30) == 130

    resumed = cli(args, env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    charges = charges_by_key(sim_stats(live_sim))
    assert len(charges) == 12
    assert set(charges.values()) == {1}


def test_live_confirmation_answered_no_sends_nothing(tmp_path: Path, live_sim: str) -> None:
    manifest = write_manifest(tmp_path, "ask", shots(3))
    session = Session(["run", manifest.name], terminal_env(tmp_path, live_sim), tmp_path)
    session.expect(r"Submit for real\?")
    session.child.sendline("n")
    assert session.finish() == 3
    assert "not confirmed: nothing was submitted" in session.text
    assert "live: MINDVIDEO_API_KEY from the environment" in session.text
    stats = sim_stats(live_sim)
    assert charges_by_key(stats) == {}
    assert not any("/tasks" in name for name in stats["requests"])


def test_live_confirmation_answered_yes_runs(tmp_path: Path, live_sim: str) -> None:
    manifest = write_manifest(tmp_path, "askyes", shots(3))
    session = Session(["run", manifest.name], terminal_env(tmp_path, live_sim), tmp_path)
    session.expect(r"Submit for real\?")
    session.child.sendline("y")
    assert session.finish() == 0, session.text[-3000:]
    assert "3 succeeded" in session.text
    charges = charges_by_key(sim_stats(live_sim))
    assert sorted(charges.values()) == [1, 1, 1]


def test_a_run_against_the_flaky_simulator_finishes(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "flaky", shots(16))
    with running_sim(tmp_path, speed=10, faults="flaky", seed=3) as base_url:
        env = terminal_env(tmp_path, base_url)
        session = Session(["run", manifest.name, "--yes"], env, tmp_path)
        status = session.finish(timeout=180)
        charges = charges_by_key(sim_stats(base_url))
    # The flaky profile fails some generations on purpose: 0 or 1, never a hang.
    assert status in (0, 1), session.text[-3000:]
    assert re.search(r"flaky: \d+ succeeded", session.text)
    assert "Traceback" not in session.text
    assert (tmp_path / "outputs" / "flaky" / "report.html").is_file()
    assert charges
    assert set(charges.values()) == {1}
