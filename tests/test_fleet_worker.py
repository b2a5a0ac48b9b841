"""Who a worker is, and when a worker of this machine is known to be dead (fast, no database)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from mvbatch.run.fleet import dead_here, here, worker_id


def gone_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_a_worker_of_this_machine_whose_pid_is_gone_is_dead() -> None:
    assert worker_id().startswith(here() + ":")
    assert dead_here(f"{here()}:{gone_pid()}:abcd1234")
    assert not dead_here(f"{here()}:{os.getpid()}:abcd1234")  # ourselves


def test_a_worker_elsewhere_is_never_judged_by_its_pid() -> None:
    pid = gone_pid()
    assert not dead_here(f"another-host:{pid}:abcd1234")
    # Same host name, other pid namespace (a container with `--network host`):
    # its pids are not ours to look up; only its lease tells.
    if "~" in here():
        assert not dead_here(f"{socket.gethostname()}~1:{pid}:abcd1234")
    assert not dead_here("garbage")
