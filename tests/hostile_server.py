"""A hostile MindVideo task API on loopback: the documented API, with one named misbehaviour.

`HostileServer(misbehaviour)` serves, on 127.0.0.1 and a free port, from a
background thread (a plain asyncio server, so a misbehaviour may do anything
with the socket: stall, trickle, lie about lengths, hang up):

    POST /api/v1/tasks                 Bearer auth, an Idempotency-Key, a JSON body
                                       {"model", "input"}; answers the seeds'
                                       {"request_id", "task_id", "status",
                                       "cost_estimate"}. A repeated key with the
                                       same payload answers the same task, charged
                                       once; with another payload, 409.
    GET  /api/v1/tasks/{id}            {"request_id", "task_id", "status",
                                       "cost_estimate", "cost_actual",
                                       "output": {"videos": [{"url"}]}}: queued,
                                       then succeeded `latency` seconds after the POST
    GET  /api/v1/tasks/{id}/events     {"request_id", "task_id", "status", "events"}
    GET  /files/{id}/video.mp4         a real, playable H.264 MP4 (the simulator's
                                       frames), with Content-Length and Range

and, on a second loopback port (`other_origin`), the same files: the host a
`redirect_files_to_other_host` answer sends the client to.

Prices: every task costs the documented $0.0414 per 5 s (kling-v2-6 std 5 s
16:9 is the seeds' example at exactly $0.0414); a misbehaviour may bill more.

Counters the test reads once the CLI has exited (`stats()`): requests by
"METHOD path-template", POSTs by idempotency key, charges (count and dollars)
by key and by payload (the same content charged under two keys is a double
charge too), the most requests in flight at once (one the client gave up on
stays in flight until the server answers it), the tokens seen, and every
request that reached the other host with whether it carried Authorization.

Misbehaviours (`MISBEHAVIOURS`, one per server; `recover_after` is N):

    well_behaved                   the documented API, nothing else
    echo_key_in_request_id         request_id (body and X-Request-Id) is the caller's key
    echo_key_in_output_url         the video URL carries the caller's key in its query
    bill_10x                       cost_estimate and cost_actual (and the charge) 10x
    bill_huge                      cost_estimate and cost_actual (and the charge) 1e12
    post_200_without_task_id       POST creates and charges the task, answers without task_id
    get_200_without_task_id        GET answers 200 without task_id, forever
    deep_json                      every 200 of the task API is JSON nested 100 000 levels
                                   (POST, GET and events; the POST creates and charges first)
    unknown_status                 GET says status "expired", forever
    non_json_200                   the first N answers to each POST key and each task's GETs
                                   are 200 with an HTML body (the POST creates first)
    html_502                       the first N answers to each POST key and each task's GETs
                                   are nginx's HTML 502 (the POST creates first)
    slow_answers                   every GET of a task sleeps an hour before answering
    slow_download                  the video trickles at 1 byte/s under a valid Content-Length
    huge_content_length            the video says Content-Length 10^15, sends a little, hangs up
    json_body_as_video             the video URL answers 200 with a JSON error body
    redirect_files_to_other_host   the video URL answers 307 to the other loopback port
    retry_after_billion            the first POST is 429 with Retry-After: 1000000000, then normal
    negative_cost                  cost_estimate -1, cost_actual -5
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from mvbatch.sim.mp4 import write_mp4

MISBEHAVIOURS = (
    "well_behaved",
    "echo_key_in_request_id",
    "echo_key_in_output_url",
    "bill_10x",
    "bill_huge",
    "post_200_without_task_id",
    "get_200_without_task_id",
    "deep_json",
    "unknown_status",
    "non_json_200",
    "html_502",
    "slow_answers",
    "slow_download",
    "huge_content_length",
    "json_body_as_video",
    "redirect_files_to_other_host",
    "retry_after_billion",
    "negative_cost",
)

PRICE_PER_5S = Decimal("0.0414")  # kling-v2-6 std 5 s, the seeds' example
HUGE = Decimal("1e12")
DEEP = 100_000  # levels of nesting of a deep_json body
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HTML_200 = b"<!doctype html><html><body><h1>Service temporarily in maintenance</h1></body></html>"
JSON_ERROR_BODY = json.dumps(
    {"error": {"code": "not_found", "message": "The object does not exist."}}
).encode()
VIDEO = write_mp4(seconds=Decimal(5), aspect_ratio="16:9", target_size=24_000, seed=b"hostile")
REASONS = {
    200: "OK",
    206: "Partial Content",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
    416: "Range Not Satisfiable",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    502: "Bad Gateway",
}
_TASK_PATH = re.compile(r"^/api/v1/tasks/([^/]+)(/events)?$")
_FILE_PATH = re.compile(r"^/files/([^/]+)/video\.mp4$")
_MONEY = re.compile(r'"#money:([^"#]+)#"')


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    host: str  # "api" (the main port) or "other" (the second port)

    @property
    def token(self) -> str | None:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class Task:
    seq: int
    task_id: str
    key: str
    payload: str
    created: float
    seconds: int
    token: str
    gets: int = 0


@dataclass
class Counters:
    requests: Counter[str] = field(default_factory=Counter)
    posts_by_key: Counter[str] = field(default_factory=Counter)
    charges_by_key: Counter[str] = field(default_factory=Counter)
    charges_by_payload: Counter[str] = field(default_factory=Counter)
    charged_usd_by_key: dict[str, Decimal] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    files_with_authorization: int = 0  # requests for a video that carried Authorization
    other_host: list[dict[str, Any]] = field(default_factory=list)


class HostileServer:
    """The task API on 127.0.0.1 with one misbehaviour; `with HostileServer(name) as server:`."""

    def __init__(
        self,
        misbehaviour: str = "well_behaved",
        *,
        latency: float = 0.5,
        recover_after: int = 2,
    ) -> None:
        if misbehaviour not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {misbehaviour!r}; one of {MISBEHAVIOURS}")
        self.misbehaviour = misbehaviour
        self.latency = latency  # seconds from the POST to "succeeded"
        self.recover_after = recover_after  # N of non_json_200 and html_502
        self.counters = Counters()
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._by_key: dict[str, Task] = {}
        self._answers: Counter[str] = Counter()  # answers given per POST key / task's GETs
        self._throttled = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0
        self.other_port = 0

    # -- life

    def __enter__(self) -> HostileServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self.port = self._call(self._listen("api"))
        self.other_port = self._call(self._listen("other"))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _listen(self, host: str) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._connection(reader, writer, host)
            except asyncio.CancelledError:
                # The server is stopping. Ended quietly: asyncio (3.11) reports a
                # connection task that ends cancelled as an error in its callback.
                pass
            finally:
                self._connections.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- what the test reads

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """MINDVIDEO_BASE_URL for this server."""
        return f"{self.origin}/api/v1"

    @property
    def other_origin(self) -> str:
        return f"http://127.0.0.1:{self.other_port}"

    def stats(self) -> dict[str, Any]:
        """A copy of the counters, safe to read while the server runs."""
        with self._lock:
            c = self.counters
            return {
                "requests": dict(c.requests),
                "posts_by_key": dict(c.posts_by_key),
                "charges_by_key": dict(c.charges_by_key),
                "charges_by_payload": dict(c.charges_by_payload),
                "charged_usd_by_key": dict(c.charged_usd_by_key),
                "charged_usd": sum(c.charged_usd_by_key.values(), Decimal(0)),
                "tokens": set(c.tokens),
                "max_in_flight": c.max_in_flight,
                "files_with_authorization": c.files_with_authorization,
                "other_host": list(c.other_host),
            }

    # -- HTTP/1.1, as little of it as the client needs

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        try:
            while True:
                request = await self._read_request(reader, host)
                if request is None:
                    return
                with self._lock:
                    self.counters.in_flight += 1
                    self.counters.max_in_flight = max(
                        self.counters.max_in_flight, self.counters.in_flight
                    )
                try:
                    keep_open = await self._dispatch(request, writer)
                finally:
                    with self._lock:
                        self.counters.in_flight -= 1
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader, host: str) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed a kept-alive connection
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        return Request(method, url.path, url.query, headers, body, host)

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
        head_only: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        all_headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body) if length is None else length),
            **(headers or {}),
        }
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> bool:
        await self._send(writer, status, _dumps(body), headers=headers)
        return True

    async def _error(
        self, writer: asyncio.StreamWriter, status: int, code: str, message: str
    ) -> bool:
        return await self._json(writer, status, {"error": {"code": code, "message": message}})

    # -- routes

    async def _dispatch(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False to close the connection after it."""
        if request.host == "other":
            return await self._other_host(request, writer)
        if request.method == "POST" and request.path == "/api/v1/tasks":
            self._count("POST /api/v1/tasks")
            return await self._create(request, writer)
        if (found := _TASK_PATH.match(request.path)) and request.method == "GET":
            events = bool(found.group(2))
            self._count("GET /api/v1/tasks/{id}" + ("/events" if events else ""))
            return await self._task(request, writer, found.group(1), events=events)
        if (found := _FILE_PATH.match(request.path)) and request.method in ("GET", "HEAD"):
            self._count(f"{request.method} /files/{{id}}/video.mp4")
            if "authorization" in request.headers:
                with self._lock:
                    self.counters.files_with_authorization += 1
            return await self._file(request, writer, found.group(1))
        self._count(f"{request.method} (other)")
        return await self._error(writer, 404, "not_found", f"No route {request.path!r}.")

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters.requests[name] += 1

    def _authorised(self, request: Request) -> str | None:
        token = request.token
        if token is not None:
            with self._lock:
                self.counters.tokens.add(token)
        return token

    async def _create(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        token = self._authorised(request)
        if token is None:
            return await self._error(writer, 401, "unauthorized", "A valid API key is required.")
        key = request.headers.get("idempotency-key", "")
        if not key:
            return await self._error(writer, 400, "missing_key", "Idempotency-Key is required.")
        with self._lock:
            self.counters.posts_by_key[key] += 1
        if self.misbehaviour == "retry_after_billion" and not self._throttled:
            self._throttled = True
            await self._send(
                writer,
                429,
                _dumps({"error": {"code": "rate_limited", "message": "Slow down."}}),
                headers={"Retry-After": "1000000000"},
            )
            return True
        try:
            body = json.loads(request.body)
            model, params = body["model"], body["input"]
            seconds = int(params.get("duration", 5))
        except (ValueError, KeyError, TypeError, AttributeError):
            return await self._error(writer, 422, "validation_error", "The request is invalid.")
        payload = hashlib.sha256(
            json.dumps({"model": model, "input": params}, sort_keys=True).encode()
        ).hexdigest()
        with self._lock:
            task = self._by_key.get(key)
            replayed = task is not None
            if task is None:
                seq = len(self._tasks) + 1
                task = Task(seq, f"task_{seq:04d}", key, payload, time.monotonic(), seconds, token)
                self._tasks[task.task_id] = task
                self._by_key[key] = task
                self.counters.charges_by_key[key] += 1
                self.counters.charges_by_payload[payload] += 1
                self.counters.charged_usd_by_key[key] = self._charge(task)
            self._answers[f"POST {key}"] += 1
            answers = self._answers[f"POST {key}"]
        if task.payload != payload:
            return await self._error(
                writer, 409, "idempotency_conflict", "This key was used with another payload."
            )
        if (reply := await self._broken_answer(writer, answers)) is not None:
            return reply
        if self.misbehaviour == "deep_json":
            return await self._deep_json(writer)
        answer = {
            "request_id": self._request_id(task),
            "task_id": task.task_id,
            "status": "queued",
            "cost_estimate": self._estimate(task),
        }
        if self.misbehaviour == "post_200_without_task_id":
            del answer["task_id"]
        headers = {"X-Request-Id": self._request_id(task)}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return await self._json(writer, 200, answer, headers)

    async def _task(
        self, request: Request, writer: asyncio.StreamWriter, task_id: str, *, events: bool
    ) -> bool:
        token = self._authorised(request)
        if token is None:
            return await self._error(writer, 401, "unauthorized", "A valid API key is required.")
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and not events:
                task.gets += 1
            answers = task.gets if task is not None else 0
        if task is None or task.token != token:
            return await self._error(writer, 404, "task_not_found", f"No task {task_id!r}.")
        if self.misbehaviour == "slow_answers" and not events:
            await asyncio.sleep(3600)  # far beyond any client's read timeout
        if not events and (reply := await self._broken_answer(writer, answers)) is not None:
            return reply
        if self.misbehaviour == "deep_json":
            return await self._deep_json(writer)
        status = self._status(task)
        if events:
            body: dict[str, Any] = {
                "request_id": self._request_id(task),
                "task_id": task.task_id,
                "status": status,
                "events": [{"status": "queued"}]
                + ([{"status": status}] if status != "queued" else []),
            }
            return await self._json(writer, 200, body)
        body = {
            "request_id": self._request_id(task),
            "task_id": task.task_id,
            "status": status,
            "cost_estimate": self._estimate(task),
            "cost_actual": self._actual(task) if status == "succeeded" else None,
            "output": None,
        }
        if status == "succeeded":
            body["output"] = {"videos": [{"url": self._video_url(task)}]}
        if self.misbehaviour == "get_200_without_task_id":
            del body["task_id"]
        return await self._json(writer, 200, body, {"X-Request-Id": self._request_id(task)})

    async def _broken_answer(self, writer: asyncio.StreamWriter, answers: int) -> bool | None:
        """non_json_200 and html_502: the first `recover_after` answers of a call go wrong."""
        if answers > self.recover_after:
            return None
        if self.misbehaviour == "non_json_200":
            await self._send(writer, 200, HTML_200, "text/html")
            return True
        if self.misbehaviour == "html_502":
            await self._send(writer, 502, NGINX_502, "text/html")
            return True
        return None

    async def _deep_json(self, writer: asyncio.StreamWriter) -> bool:
        await self._send(writer, 200, b"[" * DEEP + b"]" * DEEP)
        return True

    async def _file(self, request: Request, writer: asyncio.StreamWriter, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or self._status(task) != "succeeded":
            return await self._error(writer, 404, "file_not_found", "No such file.")
        name = self.misbehaviour
        if name == "redirect_files_to_other_host":
            location = f"{self.other_origin}/files/{task_id}/video.mp4"
            await self._send(writer, 307, b"", "text/plain", {"Location": location})
            return True
        if name == "json_body_as_video":
            await self._send(writer, 200, JSON_ERROR_BODY)
            return True
        if name == "huge_content_length":
            await self._send(writer, 200, VIDEO[:4096], "video/mp4", length=10**15)
            return False  # then hang up
        if name == "slow_download":
            await self._send(writer, 200, b"", "video/mp4", length=len(VIDEO))
            for byte in VIDEO:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
            return True
        return await self._video(request, writer)

    async def _video(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """The MP4 with Content-Length; one `Range: bytes=a-[b]` is honoured."""
        head_only = request.method == "HEAD"
        size = len(VIDEO)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", "").strip())
        if wanted is None:
            await self._send(writer, 200, VIDEO, "video/mp4", head_only=head_only)
            return True
        first = int(wanted.group(1))
        last = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
        if first >= size:
            await self._send(writer, 416, b"", "video/mp4", {"Content-Range": f"bytes */{size}"})
            return True
        await self._send(
            writer,
            206,
            VIDEO[first : last + 1],
            "video/mp4",
            {"Content-Range": f"bytes {first}-{last}/{size}"},
            head_only=head_only,
        )
        return True

    async def _other_host(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        with self._lock:
            self.counters.other_host.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "authorization": "authorization" in request.headers,
                    "headers": dict(request.headers),
                }
            )
        self._count(f"{request.method} other:{request.path}")
        if _FILE_PATH.match(request.path) and request.method in ("GET", "HEAD"):
            return await self._video(request, writer)
        return await self._error(writer, 404, "not_found", "No such file.")

    # -- what a task says

    def _status(self, task: Task) -> str:
        if self.misbehaviour == "unknown_status":
            return "expired"
        return "succeeded" if time.monotonic() - task.created >= self.latency else "queued"

    def _price(self, task: Task) -> Decimal:
        return PRICE_PER_5S * task.seconds / 5

    def _estimate(self, task: Task) -> Any:
        return _money(self._billed(task, "estimate"))

    def _actual(self, task: Task) -> Any:
        return _money(self._billed(task, "actual"))

    def _billed(self, task: Task, which: str) -> Decimal:
        if self.misbehaviour == "bill_10x":
            return self._price(task) * 10
        if self.misbehaviour == "bill_huge":
            return HUGE
        if self.misbehaviour == "negative_cost":
            return Decimal(-1) if which == "estimate" else Decimal(-5)
        return self._price(task)

    def _charge(self, task: Task) -> Decimal:
        return self._billed(task, "actual")

    def _request_id(self, task: Task) -> str:
        if self.misbehaviour == "echo_key_in_request_id":
            return task.token
        return f"req_{task.seq:04d}"

    def _video_url(self, task: Task) -> str:
        url = f"{self.origin}/files/{task.task_id}/video.mp4"
        if self.misbehaviour == "echo_key_in_output_url":
            url += f"?api_key={task.token}&expires=9999999999"
        return url


def _money(amount: Decimal) -> str:
    """A placeholder `_dumps` writes as a bare JSON number, exactly as given (1e12 stays 1e12)."""
    text = "1e12" if amount == HUGE else str(amount)
    return f"#money:{text}#"


def _dumps(body: Any) -> bytes:
    return _MONEY.sub(r"\1", json.dumps(body)).encode()


def new_key() -> str:
    """A distinctive API key: easy to find in any file it should never reach."""
    return f"sk-hostile-{secrets.token_hex(16)}"
