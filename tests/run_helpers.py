"""Shared helpers for the executor, ledger, budget, e2e and crash tests.

- `write_manifest(folder, ...)`: a small manifest file from shots.
- `planned(path, state_dir, env)`: the plan, as `mvbatch run` builds it.
- `InProcessSim`: the simulator app in-process (ASGITransport), an `ApiClient`
  on it (retrying without waits: stamina's testing mode, `conftest.py`), and
  its billing stats.
- `cli(...)`, `cli_env(...)`: the real CLI in a subprocess (`python -m mvbatch`).
- `sim_stats(base_url)`: `/_sim/stats` of a simulator process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
from click.testing import Result
from typer.testing import CliRunner

from mvbatch.api.client import ApiClient
from mvbatch.cli import app
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.ledger import Ledger, open_ledger
from mvbatch.plan.planner import Plan
from mvbatch.settings import Settings
from mvbatch.sim.app import create_app
from mvbatch.sim.config import build_config

REPO = Path(__file__).resolve().parent.parent
TEST_KEY = "mv_test_xxx"
STD = {"mode": "std", "duration": 5, "size": "16:9"}  # kling-v2-6, documented rate


def write_manifest(
    folder: Path,
    name: str = "t",
    shots: Iterable[Mapping[str, Any]] = (),
    max_usd: float | None = None,
) -> Path:
    """A manifest; each shot: {"id", "model", "prompt", "takes", "input"}."""
    lines = [f'name = "{name}"', ""]
    if max_usd is not None:
        lines += ["[budget]", f"max_usd = {max_usd}", ""]
    for shot in shots:
        lines += [
            "[[shots]]",
            f'id = "{shot["id"]}"',
            f'model = "{shot.get("model", "kling-v2-6")}"',
            f"prompt = {json.dumps(shot.get('prompt', 'a car in neon rain'))}",
            f"takes = {shot.get('takes', 1)}",
            "[shots.input]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in shot.get("input", STD).items()]
        lines.append("")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def shots(count: int, prefix: str = "s", **shot: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "prompt": f"shot {prefix}{i}: a car in neon rain", **shot}
        for i in range(count)
    ]


def planned(path: Path, state_dir: Path, env: str = "sim") -> Plan:
    return build_plan(path, Settings(MVBATCH_STATE_DIR=state_dir), env)


def prepare_ledger(state_dir: Path, plan: Plan, env: str = "sim") -> Ledger:
    ledger = open_ledger(state_dir)
    ledger.ensure_tasks(env, planned_rows(plan))
    return ledger


@dataclass
class InProcessSim:
    """The simulator in this process; `api()` gives an ApiClient on it."""

    speed: float = 0.0
    faults: str = "none"
    rates: dict[str, float | None] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        config = build_config(
            faults=self.faults, rates=self.rates, speed=self.speed, seed=self.seed
        )
        self.app = create_app(config)

    def http(self, key: str = TEST_KEY) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://sim.test/api/v1/",
            headers={"Authorization": f"Bearer {key}"},
        )

    def api(self, key: str = TEST_KEY) -> ApiClient:
        return ApiClient(self.http(key))

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://sim.test"
        ) as client:
            return (await client.get("/_sim/stats")).json()  # type: ignore[no-any-return]

    async def post(self, path: str, body: Mapping[str, Any]) -> Any:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://sim.test"
        ) as client:
            return (await client.post(path, json=dict(body))).json()


def charges_by_key(stats: Mapping[str, Any]) -> dict[str, int]:
    return {k: v["charges"] for k, v in stats["billing"]["by_idempotency_key"].items()}


def sim_stats(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/_sim/stats", timeout=30).json()  # type: ignore[no-any-return]


def api_requests(stats: Mapping[str, Any]) -> int:
    """Requests to the task API (not to /_sim, not downloads)."""
    return sum(n for name, n in stats["requests"].items() if "/api/v1/" in name)


def cli_env(
    tmp_path: Path, base_url: str | None = None, key: str | None = TEST_KEY, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDVIDEO_", "MVBATCH_"))}
    env.update(
        MVBATCH_STATE_DIR=str(tmp_path / "state"),
        MVBATCH_OUTPUT_DIR=str(tmp_path / "outputs"),
        PYTHONPATH=str(REPO),
        COLUMNS="120",
    )
    if base_url is not None:
        env["MINDVIDEO_BASE_URL"] = base_url + "/api/v1"
    if key is not None:
        env["MINDVIDEO_API_KEY"] = key
    env.update(extra)
    return env


def invoke(args: list[str]) -> Result:
    """The CLI in this process (typer's CliRunner), for commands that send nothing.

    The CLI configures logging to the runner's streams, which close after the
    call: logging is reset so later tests do not write to a closed stream.
    """
    try:
        return CliRunner().invoke(app, args)
    finally:
        structlog.reset_defaults()


def cli(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real CLI, `python -m mvbatch ARGS`, with no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "mvbatch", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# Every `cli_popen` process, so that a failing test does not leave one running
# (the autouse `no_leftover_processes` fixture in conftest.py kills them).
STARTED: list[subprocess.Popen[bytes]] = []


def cli_popen(
    args: list[str], env: Mapping[str, str], cwd: Path, out: Path
) -> subprocess.Popen[bytes]:
    with out.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mvbatch", *args],
            env=dict(env),
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    STARTED.append(process)
    return process
