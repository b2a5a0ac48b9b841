"""The two command lines of the simulator: `mvbatch sim` (Typer) and `python -m mvbatch.sim`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import mvbatch.sim.server
from mvbatch.sim.__main__ import config_from, parser
from mvbatch.sim.command import register
from mvbatch.sim.config import PROFILES, SimConfig


def test_argparse_options_build_the_config(tmp_path: Path) -> None:
    args = parser().parse_args(
        [
            "--faults", "flaky", "--speed", "4", "--seed", "9", "--state-dir", str(tmp_path),
            "--url-ttl", "30", "--fault-server-error", "0.5", "--retry-after", "0",
            "--accept-key", "mv_a", "--accept-key", "mv_b", "--output-scale", "2",
            "--files-base-url", "http://localhost:1", "--latency-median", "9",
        ]
    )  # fmt: skip
    config = config_from(args)
    assert config.speed == 4
    assert config.latency_median_seconds == 9
    assert config.seed == 9
    assert config.state_dir == tmp_path
    assert config.url_ttl_seconds == 30
    assert config.output_scale == 2
    assert config.files_base_url == "http://localhost:1"
    assert config.accepted_keys == frozenset({"mv_a", "mv_b"})
    assert config.faults.server_error == 0.5
    assert config.faults.rate_limit == PROFILES["flaky"].rate_limit
    assert config.faults.retry_after_seconds == 0


def typer_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:
        """A second command, so `sim` is a subcommand as in the real CLI."""

    return app


def test_sim_command_has_help_for_every_option() -> None:
    result = CliRunner().invoke(typer_app(), ["sim", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--faults", "--speed", "--seed", "--state-dir", "--url-ttl"):
        assert option in result.output
    assert "--fault-server-erro" in result.output


def test_sim_command_serves_the_configured_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_serve(config: SimConfig, host: str, port: int, **kwargs: Any) -> None:
        calls.append({"config": config, "host": host, "port": port})
        kwargs["on_ready"](f"http://{host}:{port}")

    monkeypatch.setattr(mvbatch.sim.server, "serve", fake_serve)
    result = CliRunner().invoke(
        typer_app(),
        ["sim", "--port", "9000", "--faults", "hostile", "--speed", "0", "--fault-rate-limit", "0"],
    )
    assert result.exit_code == 0, result.output
    assert "listening on http://127.0.0.1:9000" in result.output
    (call,) = calls
    assert call["host"] == "127.0.0.1"
    assert call["port"] == 9000
    assert call["config"].speed == 0
    assert call["config"].faults.rate_limit == 0
    assert call["config"].faults.server_error == PROFILES["hostile"].server_error


def test_sim_command_rejects_an_unknown_profile() -> None:
    result = CliRunner().invoke(typer_app(), ["sim", "--faults", "evil"])
    assert result.exit_code != 0
    assert "evil" in result.output


def test_sim_prints_the_full_base_url_to_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_serve(config: SimConfig, host: str, port: int, **kwargs: Any) -> None:
        kwargs["on_ready"](f"http://{host}:{port}")

    monkeypatch.setattr(mvbatch.sim.server, "serve", fake_serve)
    result = CliRunner().invoke(typer_app(), ["sim", "--port", "8765"])
    assert result.exit_code == 0, result.output
    assert "export MINDVIDEO_BASE_URL=http://127.0.0.1:8765/api/v1" in result.output.splitlines()


def test_python_m_sim_prints_the_full_base_url_to_export(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mvbatch.sim.__main__ as sim_main

    def fake_serve(config: SimConfig, host: str, port: int, **kwargs: Any) -> None:
        kwargs["on_ready"](f"http://{host}:{port}")

    monkeypatch.setattr(sim_main, "serve", fake_serve)
    sim_main.main(["--port", "9001"])
    lines = capsys.readouterr().out.splitlines()
    assert "mvbatch sim listening on http://127.0.0.1:9001" in lines  # what tests parse
    assert "export MINDVIDEO_BASE_URL=http://127.0.0.1:9001/api/v1" in lines


@pytest.mark.anyio
async def test_the_simulator_answers_at_the_bare_origin_too() -> None:
    """`MINDVIDEO_BASE_URL=http://HOST:PORT` (without /api/v1) reaches the same API."""
    from sim_helpers import sim_client

    body = {"model": "kling-v2-6", "input": {"prompt": "p", "duration": 5, "mode": "std"}}
    async with sim_client(SimConfig(speed=0)) as client:
        created = await client.post("/tasks", json=body, headers={"Idempotency-Key": "k1"})
        assert created.status_code == 200, created.text
        task_id = created.json()["task_id"]
        replayed = await client.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k1"})
        assert replayed.json()["task_id"] == task_id  # one API, two mount points
        assert replayed.headers["Idempotent-Replayed"] == "true"
        assert (await client.get(f"/tasks/{task_id}")).json()["status"] == "succeeded"
        assert (await client.get(f"/tasks/{task_id}/events")).status_code == 200
        stats = (await client.get("/_sim/stats")).json()
        assert stats["billing"]["charges"] == 1
        assert (await client.post("/wrong/prefix/tasks", json=body)).status_code == 404
