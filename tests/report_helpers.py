"""Helpers for the download and report tests: ledgers with finished tasks, file servers.

- `task_row(...)` / `add_task(...)`: write a task straight into the ledger in
  any state, without the executor (what a run would have left behind).
- `FileServer`: an in-process file host (`httpx.MockTransport`) with Range
  support and scripted faults (truncation, expiry, ignored ranges).
- `HeaderRecorder`: a real loopback HTTP server (stdlib) that records every
  request's headers and can redirect elsewhere.
- `api_refresh(client)`: a minimal "GET the task again" for fresh URLs.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from mvbatch.ledger import Ledger, TaskRow


def task_row(
    key: str,
    shot: str,
    variant: dict[str, Any] | None = None,
    *,
    take: int = 1,
    model: str = "kling-v2-6",
    manifest: str = "demo",
    input: dict[str, Any] | None = None,
    estimate: str = "0.0414",
    seconds: int | None = 5,
    price_class: str | None = None,
    source: str = "documented",
) -> dict[str, Any]:
    return {
        "key": key,
        "manifest": manifest,
        "shot": shot,
        "shots": [shot],
        "variant": variant or {},
        "take": take,
        "model": model,
        "input": input or {"prompt": f"prompt of {shot}"},
        "price_class": price_class or f'{model} {{"mode":"std"}}',
        "seconds": seconds,
        "estimate_local": Decimal(estimate),
        "estimate_source": source,
    }


def add_task(
    ledger: Ledger,
    env: str,
    row: dict[str, Any],
    status: str = "succeeded",
    *,
    task_id: str | None = None,
    urls: list[str] | None = None,
    cost_estimate: str | None = None,
    cost_actual: str | None = None,
    error: str | None = None,
) -> TaskRow:
    """A task in `status`, written through the ledger's own steps, as a run would."""
    ledger.ensure_tasks(env, [row])
    key = row["key"]
    if status != "planned":
        ledger.record_intent(env, key, previous="planned", submit_key=key, attempt=0, run_id=None)
    if status == "rejected":
        ledger.record_rejected(env, key, error=error or "rejected", http_status=422, run_id=None)
    elif status not in ("planned", "submitting"):
        estimate = Decimal(cost_estimate or str(row["estimate_local"]))
        ledger.record_submitted(
            env,
            key,
            task_id=task_id or f"task_{key[-8:]}",
            request_id=None,
            status="queued",
            cost_estimate=estimate,
            run_id=None,
        )
        if status == "processing":
            ledger.record_progress(
                env, key, previous="queued", status="processing", polls=1, run_id=None
            )
        elif status in ("succeeded", "failed", "cancelled"):
            actual = (
                cost_actual
                if cost_actual is not None
                else (str(estimate) if status == "succeeded" else None)
            )
            ledger.record_finished(
                env,
                key,
                previous="queued",
                status=status,
                cost_estimate=estimate,
                cost_actual=None if actual is None else Decimal(actual),
                error=error,
                urls=urls or [],
                polls=2,
                latency=None,
                run_id=None,
            )
    found = ledger.task(env, key)
    assert found is not None
    return found


def video_bytes(seed: str, size: int = 200_000) -> bytes:
    """A real, playable MP4 (the simulator's writer), different for every seed."""
    from mvbatch.sim.mp4 import write_mp4

    return write_mp4(seconds=Decimal(2), aspect_ratio="16:9", target_size=size, seed=seed.encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------- in-process file host


@dataclass
class FileServer:
    """Serves `files[path]` with Range support; faults are scripted per request.

    `script` is consumed one entry per request: "ok", "truncate" (cut the body
    part-way through and drop the connection), "short" (cut the body and end
    cleanly, shorter than Content-Length), "expired" (403), "ignore-range"
    (200 with the whole body even when a Range was asked), "500".
    """

    files: dict[str, bytes]
    script: list[str] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    expired: set[str] = field(default_factory=set)  # paths that always answer 403
    chunk: int = 16 * 1024

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport(), follow_redirects=True)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        action = self.script.pop(0) if self.script else "ok"
        path = request.url.path
        if action == "expired" or path in self.expired:
            return httpx.Response(403, json={"error": {"message": "URL expired"}})
        if action == "500":
            return httpx.Response(500, text="oops")
        data = self.files.get(path)
        if data is None:
            return httpx.Response(404)
        status, body, headers = 200, data, {"Accept-Ranges": "bytes"}
        wanted = request.headers.get("range")
        if wanted and action != "ignore-range":
            first = int(wanted.removeprefix("bytes=").split("-")[0])
            if first >= len(data):
                return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            body = data[first:]
            status = 206
            headers["Content-Range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        cut = len(body) // 3 if action in ("truncate", "short") else None
        return httpx.Response(
            status, headers=headers, stream=Body(body, self.chunk, cut, drop=action == "truncate")
        )

    def gets(self, path: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if path is None or r.url.path == path]


class Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes, chunk: int, cut: int | None, *, drop: bool) -> None:
        self.data, self.chunk, self.cut, self.drop = data, chunk, cut, drop

    async def __aiter__(self) -> AsyncIterator[bytes]:
        end = len(self.data) if self.cut is None else self.cut
        for start in range(0, end, self.chunk):
            yield self.data[start : min(start + self.chunk, end)]
        if self.cut is not None and self.drop:
            raise httpx.RemoteProtocolError("peer closed connection (test fault)")


def api_refresh(client: httpx.AsyncClient) -> Callable[[str], Any]:
    """GET the task again and return its output URLs (what the executor's client does)."""

    async def refresh(task_id: str) -> list[str]:
        response = await client.get(f"tasks/{task_id}")
        response.raise_for_status()
        output = response.json().get("output") or {}
        return [
            v["url"]
            for v in output.get("videos") or []
            if isinstance(v, dict) and isinstance(v.get("url"), str)
        ]

    return refresh


# ------------------------------------------------------ real loopback server


@dataclass
class HeaderRecorder:
    """A loopback HTTP server that records request headers; serves bytes or redirects."""

    body: bytes = b""
    redirect_to: str | None = None
    seen: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@contextmanager
def header_recorder(
    host: str = "127.0.0.1", body: bytes = b"", redirect_to: str | None = None
) -> Iterator[HeaderRecorder]:
    recorder = HeaderRecorder(body=body, redirect_to=redirect_to)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
            if recorder.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", recorder.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(recorder.body)))
            self.end_headers()
            self.wfile.write(recorder.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    recorder.url = f"http://{host}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def random_key(rng: random.Random) -> str:
    return "mvb1-" + "".join(rng.choice("0123456789abcdef") for _ in range(32))


# ------------------------------------------------------------ the simulator


async def sim_tasks(
    api: httpx.AsyncClient, count: int, *, prefix: str = "t", duration: int = 5
) -> list[dict[str, Any]]:
    """Create `count` kling-v2-6 tasks on a simulator at speed 0; their finished bodies."""
    bodies = []
    for n in range(count):
        created = await api.post(
            "tasks",
            headers={"Idempotency-Key": f"{prefix}-{n}"},
            json={
                "model": "kling-v2-6",
                "input": {"prompt": f"shot {prefix} {n}", "duration": duration, "mode": "std"},
            },
        )
        assert created.status_code == 200, created.text
        task = await api.get(f"tasks/{created.json()['task_id']}")
        assert task.json()["status"] == "succeeded", task.text
        bodies.append(task.json())
    return bodies


def sim_rows(
    ledger: Ledger, env: str, bodies: list[dict[str, Any]], manifest: str = "demo"
) -> list[TaskRow]:
    """Ledger rows for simulator tasks, as the executor would have left them."""
    rows = []
    for n, body in enumerate(bodies):
        key = "mvb1-" + hashlib.sha256(body["task_id"].encode()).hexdigest()[:32]
        row = task_row(key, f"shot-{n % 3}", {"mode": "std", "n": n}, manifest=manifest)
        rows.append(
            add_task(
                ledger,
                env,
                row,
                task_id=body["task_id"],
                urls=[v["url"] for v in body["output"]["videos"]],
                cost_actual=str(body["cost_actual"]),
            )
        )
    return rows
