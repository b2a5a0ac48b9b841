"""Ways to run the simulator in tests: in-process (fast) or as a real process (slow).

- `sim_client(config)` -> an `httpx.AsyncClient` on `httpx.ASGITransport`,
  authorised with `Bearer mv_sim_local` unless told otherwise.
- `running_sim(tmp_path, speed=20, faults="flaky", ...)` -> the base URL of a
  real `python -m mvbatch.sim` on a free loopback port, terminated on exit.
- `FakeClock`: an injectable clock for `SimConfig(clock=...)`.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mvbatch.sim.app import create_app
from mvbatch.sim.config import SimConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KEY = "mv_sim_local"
READY_LINE = "mvbatch sim listening on "
_runs = itertools.count(1)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sim_client(
    config: SimConfig | None = None,
    *,
    api_key: str | None = DEFAULT_KEY,
    base_url: str = "http://sim.test",
) -> httpx.AsyncClient:
    """An async client wired to a fresh in-process simulator (use `async with`)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    transport = httpx.ASGITransport(app=create_app(config or SimConfig()))
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers=headers)


def _arguments(options: dict[str, object]) -> list[str]:
    """`speed=20, accept_key=["a", "b"]` -> `--speed 20 --accept-key a --accept-key b`."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            args += [flag, str(item)]
    return args


@contextmanager
def running_sim(tmp_path: Path, *, timeout: float = 20.0, **options: object) -> Iterator[str]:
    """Start `python -m mvbatch.sim` on 127.0.0.1 and a free port; yield its base URL.

    Its output goes to `tmp_path/sim-N.out` and `.err` (printed on failure).
    """
    run = next(_runs)
    out_path = tmp_path / f"sim-{run}.out"
    err_path = tmp_path / f"sim-{run}.err"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "mvbatch.sim", "--host", "127.0.0.1", "--port", "0"]
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            [*command, "--log-level", "warning", *_arguments(options)],
            stdout=out,
            stderr=err,
            cwd=tmp_path,
            env=env,
        )
    try:
        base_url = _wait_until_ready(process, out_path, err_path, timeout)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_ready(
    process: subprocess.Popen[bytes], out_path: Path, err_path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    base_url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited early:\n{err_path.read_text()}")
        if base_url is None:
            for line in out_path.read_text().splitlines():
                if line.startswith(READY_LINE):
                    base_url = line.removeprefix(READY_LINE).strip()
        if base_url is not None:
            try:
                if httpx.get(f"{base_url}/_sim/health", timeout=2).status_code == 200:
                    return base_url
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"simulator not ready after {timeout} s:\n{err_path.read_text()}")
