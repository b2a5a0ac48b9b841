"""`create_app`: the review server's routes, as one Starlette app behind `Guard`.

    GET  /?token=T          the contact sheet in review mode; sets the `mvbatch_review`
                            cookie (HttpOnly, SameSite=Strict) so the page's media load
    GET  /api/cards         {"version", "layout", "cards": {key: html}}: what the page
                            polls; an ETag, so an unchanged sheet is a 304
    POST /api/verdict       {"key", "verdict": "approved"|"rejected"|null, "note"}:
                            200 {"key", "verdict", "note", "at"}; 400 for a bad body,
                            404 for a key not of this manifest; needs the
                            X-Mvbatch-Token header (the cookie alone is not enough)
    GET  /api/report.json   report.json's document as the ledger has it now
    GET  /files/<path>      a file of the manifest's report folder (videos, posters),
                            with Range requests so a video seeks

Every route is behind `access.Guard` (token, Host, Origin: 403 otherwise).

Must not: serve a file outside the report folder (no `..`, no hidden
component, no symlink leading out), write anything but a verdict, or block
the event loop on the ledger or the disk (that work runs in the thread pool).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mvbatch.downloads.naming import contained
from mvbatch.ledger import VERDICTS
from mvbatch.review.access import COOKIE, Access, Guard, request_token_source
from mvbatch.review.sheet import NOTE_LIMIT, Sheet, UnknownTake

BODY_LIMIT = 16 * 1024  # bytes of a verdict request
FIELDS = frozenset({"key", "verdict", "note"})


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(sheet: Sheet, access: Access) -> Starlette:
    """The review app for `sheet`, refusing whatever `access` does not allow."""

    async def page(request: Request) -> Response:
        html = await run_in_threadpool(sheet.page)
        response = HTMLResponse(html)
        response.set_cookie(COOKIE, access.token, httponly=True, samesite="strict", path="/")
        return response

    async def cards(request: Request) -> Response:
        found = await run_in_threadpool(sheet.cards)
        etag = f'"{found.version}"'
        # no-cache: the browser asks every time, and an unchanged sheet costs a 304.
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type="application/json", headers=headers)

    async def verdict(request: Request) -> Response:
        if request_token_source(request) != "header":
            return Response(
                "refused: a verdict needs the X-Mvbatch-Token header\n",
                status_code=403,
                media_type="text/plain",
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_LIMIT:
                return _problem(400, f"the body is over {BODY_LIMIT} bytes")
        fields = _verdict_fields(body)
        if isinstance(fields, str):
            return _problem(400, fields)
        try:
            recorded = await run_in_threadpool(
                sheet.record,
                fields["key"],
                fields.get("verdict"),
                fields.get("note"),
                keep_verdict="verdict" not in fields,
                keep_note="note" not in fields,
            )
        except UnknownTake:
            return _problem(404, "no take of this manifest has that key")
        return JSONResponse(
            {
                "key": recorded.key,
                "verdict": recorded.verdict,
                "note": recorded.note,
                "at": recorded.at,
            }
        )

    async def report_json(request: Request) -> Response:
        text = await run_in_threadpool(sheet.report_json)
        return Response(text, media_type="application/json")

    async def files(request: Request) -> Response:
        found = await run_in_threadpool(_served_file, sheet.folder, request.path_params["path"])
        if found is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return FileResponse(found, headers={"Cache-Control": "private, no-cache"})

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/cards", cards, methods=["GET"]),
            Route("/api/verdict", verdict, methods=["POST"]),
            Route("/api/report.json", report_json, methods=["GET"]),
            Route("/files/{path:path}", files, methods=["GET"]),
        ],
        middleware=[Middleware(Guard, access=access)],
    )


def _verdict_fields(body: bytes) -> dict[str, Any] | str:
    """The request's fields, checked; or what is wrong with them."""
    try:
        data = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(data, dict):
        return 'expected a JSON object: {"key", "verdict", "note"}'
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        return f"unknown fields: {', '.join(unknown)}"
    if not isinstance(data.get("key"), str) or not data["key"]:
        return '"key" must be a task key'
    if "verdict" not in data and "note" not in data:
        return 'expected "verdict", "note" or both'
    if data.get("verdict") is not None and data["verdict"] not in VERDICTS:
        return f'"verdict" is one of {", ".join(VERDICTS)} or null'
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        return '"note" must be text or null'
    if note is not None and len(note) > NOTE_LIMIT:
        return f'"note" is longer than {NOTE_LIMIT} characters'
    return data


def _served_file(folder: Path, relpath: str) -> Path | None:
    """`folder/relpath` if it is a regular file inside `folder` once every link is followed."""
    parts = relpath.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None  # no "..", no hidden files (part files), no empty components
    target = contained(folder, relpath)
    if target is None:
        return None
    try:
        resolved = target.resolve(strict=True)
    except OSError:
        return None
    if not resolved.is_relative_to(folder.resolve()) or not resolved.is_file():
        return None
    return resolved
