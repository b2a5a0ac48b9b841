"""`python -m mvbatch.sim`: run the simulator without the client's CLI.

Prints `mvbatch sim listening on http://HOST:PORT` once the socket is
listening (with `--port 0` that is how a caller learns the port), then the
client's base URL to export: `export MINDVIDEO_BASE_URL=http://HOST:PORT/api/v1`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mvbatch.sim.config import PROFILES, RATE_NAMES, SimConfig, build_config
from mvbatch.sim.server import announcement, serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mvbatch.sim",
        description="Serve a MindVideo-compatible task API simulator on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    p.add_argument("--faults", choices=sorted(PROFILES), default="none", help="fault profile")
    p.add_argument("--speed", type=float, default=1.0, help="latency divisor; 0 = instant")
    p.add_argument(
        "--latency-median", type=float, default=4.0, help="median seconds of a 5 s std task"
    )
    p.add_argument("--latency-spread", type=float, default=0.35, help="lognormal sigma")
    p.add_argument("--seed", type=int, default=0, help="seed of faults and latencies")
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep state in DIR/sim.sqlite3 (default: memory)",
    )
    p.add_argument("--url-ttl", type=float, default=3600.0, help="output URL lifetime, seconds")
    p.add_argument("--output-scale", type=float, default=1.0, help="multiply output file sizes")
    p.add_argument("--files-base-url", help="origin of output URLs (files on another host)")
    p.add_argument("--public-base-url", help="origin to advertise instead of the request's")
    p.add_argument(
        "--accept-key", action="append", dest="accept_keys", help="only accept this key (repeat)"
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    for name in RATE_NAMES:
        flag = f"--fault-{name.replace('_', '-')}"
        p.add_argument(flag, type=float, metavar="RATE", help=f"{name} rate, 0..1")
    p.add_argument("--retry-after", type=float, help="Retry-After of a 429, seconds before speed")
    p.add_argument("--slow-seconds", type=float, help="delay of a slow response, before speed")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    rates: dict[str, float | None] = {name: getattr(args, f"fault_{name}") for name in RATE_NAMES}
    rates["retry_after_seconds"] = args.retry_after
    rates["slow_seconds"] = args.slow_seconds
    return build_config(
        faults=args.faults,
        rates=rates,
        state_dir=args.state_dir,
        seed=args.seed,
        speed=args.speed,
        latency_median_seconds=args.latency_median,
        latency_spread=args.latency_spread,
        url_ttl_seconds=args.url_ttl,
        output_scale=args.output_scale,
        files_base_url=args.files_base_url,
        public_base_url=args.public_base_url,
        accepted_keys=frozenset(args.accept_keys) if args.accept_keys else None,
    )


def announce(url: str, public: str | None = None) -> None:
    print(announcement(url, public), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as exc:
        sys.exit(f"mvbatch sim: {exc}")
    serve(
        config,
        args.host,
        args.port,
        log_level=args.log_level,
        on_ready=lambda url: announce(url, config.public_base_url),
    )


if __name__ == "__main__":
    main()
