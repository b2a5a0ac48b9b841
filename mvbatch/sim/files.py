"""Output downloads: signed, expiring URLs served with Content-Length, HEAD and Range.

`GET|HEAD /files/{task_id}/{name}.mp4?expires=<unix>&sig=<hmac>` needs no API
key (like a CDN's presigned URL); an expired or forged URL is 403, and getting
the task again hands out a fresh URL. One `Range: bytes=a-b` (or `a-`, `-n`)
is honoured with 206; several ranges get the whole file (as RFC 9110 allows);
an unsatisfiable one is 416. Injected faults: slow start, a valid URL refused
as expired, a body cut short by a dropped connection.
"""

from __future__ import annotations

import hmac

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mvbatch.sim.api import service_of
from mvbatch.sim.faults import DroppedConnection
from mvbatch.sim.lifecycle import SUCCEEDED, iso
from mvbatch.sim.responses import error, new_request_id

CHUNK = 64 * 1024


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte, inclusive, of a single range; None to send the whole file.

    Raises RangeNotSatisfiable when the range starts past the end.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    spec = spec.strip()
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        return None
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        return None
    try:
        if not first_text:
            suffix = int(last_text)
            if suffix <= 0:
                raise RangeNotSatisfiable
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    if last < first:
        return None
    return first, min(last, size - 1)


class BytesBody(Response):
    """Streams a byte string in chunks; may stop part-way and drop the connection."""

    def __init__(
        self,
        body: bytes,
        *,
        status_code: int,
        headers: dict[str, str],
        head: bool,
        truncate_at: float | None,
    ) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.payload = memoryview(body)
        self.head = head
        self.truncate_at = truncate_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if self.head:
            await send({"type": "http.response.body", "body": b""})
            return
        size = len(self.payload)
        limit = size if self.truncate_at is None else int(size * self.truncate_at)
        for start in range(0, limit, CHUNK):
            end = min(start + CHUNK, limit)
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes(self.payload[start:end]),
                    "more_body": True,
                }
            )
        if limit < size:
            raise DroppedConnection(f"simulated fault: download cut after {limit} of {size} bytes")
        await send({"type": "http.response.body", "body": b""})


async def download(request: Request) -> Response:
    service = service_of(request)
    request_id = new_request_id()
    service.count(f"request:{request.method} /files/{{task_id}}/{{name}}")
    if "authorization" in request.headers:
        # Counted so tests can prove the client never sends its key to the file host.
        service.count("download:with_authorization")

    task_id = request.path_params["task_id"]
    name = request.path_params["name"]
    record = service.store.get(task_id)
    if record is None or not hmac.compare_digest(name, service.file_name(record)):
        return error(404, "file_not_found", "No such file.", request_id)
    try:
        expires = int(request.query_params["expires"])
        signature = request.query_params["sig"]
    except (KeyError, ValueError):
        return error(403, "invalid_signature", "The URL is not correctly signed.", request_id)
    if not hmac.compare_digest(signature, service.signature(task_id, name, expires)):
        return error(403, "invalid_signature", "The URL is not correctly signed.", request_id)

    now = service.now()
    expired_message = f"This URL expired at {iso(expires)}; get the task again for a fresh URL."
    if expires < now:
        return error(403, "url_expired", expired_message, request_id)
    if service.settle(record, now) != SUCCEEDED:
        return error(404, "file_not_found", "This task has no output.", request_id)

    roll = service.faults.roll_download()
    if roll.slow:
        service.count("fault:slow_response")
        await anyio.sleep(service.config.scaled(service.faults.rates.slow_seconds))
    if roll.expired:
        service.count("fault:expired_url")
        return error(403, "url_expired", expired_message, request_id)

    data = service.file_bytes(record)
    size = len(data)
    headers = {
        "Content-Type": "video/mp4",
        "Accept-Ranges": "bytes",
        "ETag": f'"{record.task_id}-{size}"',  # the bytes of a task never change
        "Cache-Control": "private, max-age=60",
        "Access-Control-Allow-Origin": "*",
        "X-Request-Id": request_id,
    }
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable:
        return Response(
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"},
        )
    status = 200
    if wanted is not None:
        first, last = wanted
        data = data[first : last + 1]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        status = 206
    headers["Content-Length"] = str(len(data))

    head = request.method == "HEAD"
    truncate_at = None if head else roll.truncate_at
    if truncate_at is not None:
        service.count("fault:truncated_download")
    return BytesBody(data, status_code=status, headers=headers, head=head, truncate_at=truncate_at)
