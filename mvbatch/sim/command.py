"""`mvbatch sim`: the simulator's command for the client's Typer app.

`register(app)` adds the command; the client's cli.py calls it, and nothing
here imports the client. Options mirror `python -m mvbatch.sim`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvbatch.sim.config import PROFILES, build_config


def _rate(what: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(
        min=0.0, max=1.0, show_default=False, help=f"Rate of {what} (0..1)."
    )
    return option


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(  # every option is keyword-only: Typer passes them by name
        *,
        host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8765,
        faults: Annotated[
            str, typer.Option(help=f"Fault profile: {', '.join(PROFILES)}.")
        ] = "none",
        speed: Annotated[float, typer.Option(min=0.0, help="Latency divisor; 0 = instant.")] = 1.0,
        seed: Annotated[int, typer.Option(help="Seed of faults and latencies.")] = 0,
        latency_median: Annotated[
            float, typer.Option(help="Median seconds of a 5 s std task at speed 1.")
        ] = 4.0,
        latency_spread: Annotated[float, typer.Option(help="Lognormal sigma of latency.")] = 0.35,
        state_dir: Annotated[
            Path | None, typer.Option(help="Keep state in DIR/sim.sqlite3 (default: memory).")
        ] = None,
        url_ttl: Annotated[float, typer.Option(help="Output URL lifetime in seconds.")] = 3600.0,
        output_scale: Annotated[float, typer.Option(help="Multiply output file sizes.")] = 1.0,
        files_base_url: Annotated[
            str | None, typer.Option(help="Origin of output URLs (files on another host).")
        ] = None,
        public_base_url: Annotated[
            str | None, typer.Option(help="Origin to advertise instead of the request's.")
        ] = None,
        accept_key: Annotated[
            list[str] | None,
            typer.Option(
                metavar="KEY",
                help="Only accept this API key (repeatable). Without it any key that starts "
                "with mv_ is accepted (the documented keys look like mv_live_...); others get 401.",
            ),
        ] = None,
        fault_server_error: Annotated[float | None, _rate("5xx answers")] = None,
        fault_rate_limit: Annotated[float | None, _rate("429 answers with Retry-After")] = None,
        fault_drop_before_create: Annotated[
            float | None, _rate("POSTs dropped before creating the task")
        ] = None,
        fault_drop_after_create: Annotated[
            float | None, _rate("POSTs dropped after creating and billing the task")
        ] = None,
        fault_slow_response: Annotated[float | None, _rate("slow responses")] = None,
        fault_truncated_download: Annotated[float | None, _rate("downloads cut short")] = None,
        fault_expired_url: Annotated[float | None, _rate("valid URLs refused as expired")] = None,
        fault_generation_failure: Annotated[float | None, _rate("tasks that end failed")] = None,
        retry_after: Annotated[
            float | None, typer.Option(help="Retry-After of a 429, seconds before --speed.")
        ] = None,
        slow_seconds: Annotated[
            float | None, typer.Option(help="Delay of a slow response, seconds before --speed.")
        ] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Serve a MindVideo-compatible API simulator (faults, latency, billing ledger).

        It prints the base URL to export as MINDVIDEO_BASE_URL (it ends in
        /api/v1; the bare origin is served too). Clients must send an API key
        that starts with mv_ (for example MINDVIDEO_API_KEY=mv_test_local);
        mvbatch then treats the run as live, so give it its own
        MVBATCH_STATE_DIR. Billing, per idempotency key: GET /_sim/stats.
        """
        from mvbatch.sim.server import announcement, serve

        try:
            config = build_config(
                faults=faults,
                rates={
                    "server_error": fault_server_error,
                    "rate_limit": fault_rate_limit,
                    "drop_before_create": fault_drop_before_create,
                    "drop_after_create": fault_drop_after_create,
                    "slow_response": fault_slow_response,
                    "truncated_download": fault_truncated_download,
                    "expired_url": fault_expired_url,
                    "generation_failure": fault_generation_failure,
                    "retry_after_seconds": retry_after,
                    "slow_seconds": slow_seconds,
                },
                state_dir=state_dir,
                seed=seed,
                speed=speed,
                latency_median_seconds=latency_median,
                latency_spread=latency_spread,
                url_ttl_seconds=url_ttl,
                output_scale=output_scale,
                files_base_url=files_base_url,
                public_base_url=public_base_url,
                accepted_keys=frozenset(accept_key) if accept_key else None,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc

        def announce(url: str) -> None:
            typer.echo(announcement(url, config.public_base_url))

        serve(config, host, port, log_level=log_level, on_ready=announce)
