"""`serve()`: the simulator under uvicorn on a real socket.

Binds the socket itself so port 0 works (the chosen port is reported through
`on_ready`), runs without lifespan (the app needs none) and keeps injected
dropped connections out of the error log: they are faults on purpose, counted
in /_sim/stats, not crashes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import uvicorn

from mvbatch.sim.app import API_PREFIX, create_app
from mvbatch.sim.config import SimConfig
from mvbatch.sim.faults import DroppedConnection


class QuietDrops(logging.Filter):
    """Turns uvicorn's traceback for an injected drop into one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DroppedConnection):
            record.msg, record.args, record.exc_info = "%s", (str(exc),), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    # Listening now means early clients queue in the backlog instead of being refused.
    sock.listen(128)
    return sock


def base_url(sock: socket.socket) -> str:
    """The origin the simulator listens on (no path): `http://127.0.0.1:8765`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def announcement(origin: str, public: str | None = None) -> str:
    """What the simulator prints once listening: its origin, then the line to paste.

    The first line is what scripts wait for (`mvbatch sim listening on
    ORIGIN`); the second is the client's full base URL, with /api/v1, on
    the `public` origin when one is advertised (`--public-base-url`).
    """
    return (
        f"mvbatch sim listening on {origin}\n"
        f"export MINDVIDEO_BASE_URL={(public or origin).rstrip('/')}{API_PREFIX}"
    )


def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM); `on_ready(base_url)` once listening."""
    sock = bind(host, port)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            lifespan="off",
            log_level=log_level,
            access_log=log_level == "debug",
            timeout_graceful_shutdown=2,
        )
    )
    logging.getLogger("uvicorn.error").addFilter(QuietDrops())
    if on_ready is not None:
        on_ready(base_url(sock))
    server.run(sockets=[sock])
