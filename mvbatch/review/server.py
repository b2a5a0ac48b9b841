"""The review app on a real socket: `bind`, then `serve` under uvicorn until Ctrl-C.

Owns: binding the socket ourselves, so that port 0 picks a free port and the
URL printed names the real one (`origin`), and a busy port or an address
this machine does not have is a `UsageError` that names it and suggests
`--port`, not a traceback; running uvicorn on that socket without lifespan
events or access log (a request's URL may carry the token), and returning
normally when it is interrupted (Ctrl-C, or SIGTERM: the same).

Must not: choose the host or port (the command line does), print, or open a
browser (`commands.reviewing`).
"""

from __future__ import annotations

import errno
import signal
import socket
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from mvbatch.errors import UsageError
from mvbatch.review.access import url_host


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (0: a free port); `UsageError` if it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as error:
        raise UsageError(
            f"--host {host}: not an address of this machine ({error.strerror})",
            hint="the default, 127.0.0.1, serves this machine only",
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening now: a browser opened before uvicorn starts waits in the backlog.
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use",
                hint="choose another with --port (--port 0 picks a free one)",
            ) from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(
                f"port {port} on {host} needs privileges this user lacks",
                hint="choose a port above 1023 with --port (--port 0 picks a free one)",
            ) from None
        raise UsageError(
            f"cannot listen on {host} port {port}: {error.strerror or error}",
            hint="check --host, or leave it at 127.0.0.1",
        ) from None
    return sock


def origin(sock: socket.socket, host: str) -> str:
    """`http://HOST:PORT` with the port the socket really got; a wildcard bind is
    reached on 127.0.0.1 from this machine."""
    port = sock.getsockname()[1]
    shown = url_host(host)
    if shown.strip("[]") in ("0.0.0.0", "::"):  # noqa: S104 - naming it, not binding
        shown = "127.0.0.1"
    return f"http://{shown}:{port}"


def serve(app: ASGIApp, sock: socket.socket) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM; returns normally after Ctrl-C."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    # uvicorn stops gracefully on SIGINT or SIGTERM, then raises the signal
    # again for the caller, under the handler that was there before it ran:
    # SIGTERM would then kill the process before the reports are written. Under
    # ours it ends the review as Ctrl-C does (`kill`, a service manager).
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # for a server, Ctrl-C is how it is meant to end
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
