"""`create_app(config)`: the simulator as one Starlette ASGI app.

Routes:
    POST /api/v1/tasks                      create a task (api.py)
    GET  /api/v1/tasks/{task_id}            its status, cost and output
    GET  /api/v1/tasks/{task_id}/events     its event history
    the same three under /tasks             the bare origin as a base URL works too
    GET|HEAD /files/{task_id}/{name}        signed output downloads (files.py)
    /_sim/...                               admin and test levers (admin.py)

The app opens its state lazily on the first request and needs no lifespan,
so it runs the same under uvicorn and in-process through httpx.ASGITransport.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mvbatch.sim import admin, api, files
from mvbatch.sim.config import SimConfig
from mvbatch.sim.faults import DroppedConnection
from mvbatch.sim.responses import error, new_request_id
from mvbatch.sim.service import Service

API_PREFIX = "/api/v1"  # the documented base path of the task API


class CountResponses:
    """Counts finished responses by status, and dropped ones, for /_sim/stats."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted when complete: a response cut short is "dropped", not its status.
                self.service.count(f"status:{status}")
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except DroppedConnection:
            self.service.count("status:dropped")
            raise


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        new_request_id(),
        headers=exc.headers,
    )


def create_app(config: SimConfig | None = None) -> Starlette:
    service = Service(config or SimConfig())
    # The task API at the documented base path, and again at the root: a
    # base URL written without /api/v1 (`http://127.0.0.1:8765`) reaches the
    # same tasks, keys and billing. Stats name the call, not the mount point.
    api_routes = [
        Route(f"{prefix}/tasks{path}", endpoint, methods=[method])
        for prefix in (API_PREFIX, "")
        for path, endpoint, method in (
            ("", api.create_task, "POST"),
            ("/{task_id}", api.get_task, "GET"),
            ("/{task_id}/events", api.task_events, "GET"),
        )
    ]
    routes = [
        *api_routes,
        Route("/files/{task_id}/{name}", files.download, methods=["GET", "HEAD"]),
        Route("/_sim/health", admin.health, methods=["GET"]),
        Route("/_sim/stats", admin.stats, methods=["GET"]),
        Route("/_sim/reset", admin.reset, methods=["POST"]),
        Route("/_sim/faults", admin.set_faults, methods=["POST"]),
        Route("/_sim/clock", admin.advance_clock, methods=["POST"]),
        Route("/_sim/tasks/{task_id}/cancel", admin.cancel_task, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CountResponses, service=service)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.service = service
    return app
