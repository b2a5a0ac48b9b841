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
