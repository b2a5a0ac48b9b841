"""The shapes of what the simulator answers: errors, task bodies, dropped connections.

The documentation is silent on errors, so the simulator picked one shape and
documents it (docs/simulator.md):

    {"error": {"code": "...", "message": "...",
               "details": [{"field": "input.duration", "message": "..."}]},
     "request_id": "req_..."}

`details` appears on 422 only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from mvbatch.sim.faults import DroppedConnection
from mvbatch.sim.validation import FieldError


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    details: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    listed = [{"field": d.field, "message": d.message} for d in details]
    if listed:
        body["details"] = listed
    all_headers = {"X-Request-Id": request_id, **(headers or {})}
    return JSONResponse({"error": body, "request_id": request_id}, status, headers=all_headers)


def ok(
    body: dict[str, Any], request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, 200, headers={"X-Request-Id": request_id, **(headers or {})})


class DroppedResponse(Response):
    """Starts a response and then cuts the connection: the client sees a transport error.

    Headers go out first because uvicorn answers 500 to an app that fails
    before starting a response; after the start it closes the socket instead.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(status_code=200)
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"4096"),
                ],
            }
        )
        raise DroppedConnection(f"simulated fault: connection dropped {self.reason}")
