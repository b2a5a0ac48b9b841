"""A wrong MINDVIDEO_BASE_URL is a configuration error, never a ledger full of failures.

A POST to the tasks endpoint answered 404 (nothing like the task API there)
or 405 creates nothing and charges nothing: the run stops at the first one
(exit 4), naming the URL it used and what was expected, and the ledger keeps
every task as it was, so the same command with the right URL then runs each
task once, charged once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from run_helpers import (
    REPO,
    TEST_KEY,
    InProcessSim,
    charges_by_key,
    cli,
    cli_env,
    planned,
    prepare_ledger,
    shots,
    sim_stats,
    write_manifest,
)
from sim_helpers import running_sim

from mvbatch.api.client import ApiClient
from mvbatch.errors import ConfigError
from mvbatch.ledger import open_ledger
from mvbatch.plan.planner import Plan
from mvbatch.run.executor import Executor

DEMO = REPO / "jobs" / "demo.toml"
PRO = {"mode": "pro", "duration": 5, "size": "16:9"}
OMNI = {"mode": "std", "duration": 5, "aspect_ratio": "9:16"}
NGINX_404 = (
    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    "<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# ------------------------------------------------------------------ helpers


@contextmanager
def not_the_api(status: int = 404) -> Iterator[tuple[str, Counter[str]]]:
    """A web server on loopback that is not the task API: `status` (HTML) to everything.

    Yields its origin and a count of the requests it got, by "METHOD path".
    """
    seen: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            seen[f"{self.command} {self.path}"] += 1
            body = NGINX_404.encode() if status == 404 else b"<h1>Method Not Allowed</h1>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def ledger_rows(state: Path) -> list[dict[str, object]]:
    """Every task row, read with sqlite3 itself (not through the Ledger class)."""
    path = state / "ledger.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM tasks ORDER BY rowid")]


def assert_nothing_recorded_as_sent(state: Path) -> None:
    rows = ledger_rows(state)
    for row in rows:
        assert row["status"] == "planned", row
        assert row["task_id"] is None, row
        assert row["error"] is None, row
        assert row["cost_estimate"] is None, row
        assert row["cost_actual"] is None, row


def plan_of(tmp_path: Path) -> Plan:
    """Three price classes, so three first POSTs could otherwise go at once."""
    path = write_manifest(
        tmp_path,
        "t",
        [
            *shots(2, "std"),
            *shots(2, "pro", input=PRO),
            *shots(2, "omni", model="kling-v3-omni", input=OMNI),
        ],
    )
    return planned(path, tmp_path / "state")


def scripted(handler: Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://127.0.0.1:8799/"
    )
    return ApiClient(http)


# ------------------------------------------------------------------ the executor


@pytest.mark.anyio
async def test_the_run_stops_at_the_first_404_to_a_post_and_records_nothing_as_sent(
    tmp_path: Path,
) -> None:
    plan = plan_of(tmp_path)
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url}")
        return httpx.Response(404, text=NGINX_404, headers={"Content-Type": "text/html"})

    ledger = prepare_ledger(tmp_path / "state", plan, env="live")
    async with scripted(handler) as api:
        with pytest.raises(ConfigError) as caught:
            await Executor(plan, ledger, api, env="live", cap=None, concurrency=16).run()
    ledger.close()
    assert requests == ["POST http://127.0.0.1:8799/tasks"]  # the first request, and no other
    message = caught.value.message
    assert "http://127.0.0.1:8799/tasks" in message
    assert "404" in message
    assert "/api/v1" in message
    assert caught.value.exit_code == 4
    with open_ledger(tmp_path / "state") as ledger:
        rows = ledger.tasks("live", "t")
    assert len(rows) == 6
    assert {r.status for r in rows} == {"planned"}  # nothing failed, nothing in flight
    assert all(r.error is None and r.task_id is None for r in rows)


@pytest.mark.anyio
async def test_a_405_to_a_post_is_a_configuration_error_too(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.method)
        return httpx.Response(405, headers={"Allow": "GET"})

    ledger = prepare_ledger(tmp_path / "state", plan, env="live")
    async with scripted(handler) as api:
        with pytest.raises(ConfigError) as caught:
            await Executor(plan, ledger, api, env="live", cap=None).run()
    ledger.close()
    assert requests == ["POST"]
    assert "405" in caught.value.message
    assert "http://127.0.0.1:8799/tasks" in caught.value.message
    assert {r["status"] for r in ledger_rows(tmp_path / "state")} == {"planned"}


@pytest.mark.anyio
async def test_an_earlier_intent_answered_404_stays_to_be_resent_under_its_key(
    tmp_path: Path,
) -> None:
    """A re-send (intent from an earlier run) is never `failed` by a missing endpoint."""
    plan = plan_of(tmp_path)
    ledger = prepare_ledger(tmp_path / "state", plan, env="live")
    first = plan.tasks[0]
    ledger.record_intent(
        "live", first.key, previous="planned", submit_key=first.key, attempt=0, run_id=None
    )
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request.headers.get("Idempotency-Key", ""))
        return httpx.Response(404, json={"detail": "Not Found"})  # a framework's route miss

    async with scripted(handler) as api:
        with pytest.raises(ConfigError):
            await Executor(plan, ledger, api, env="live", cap=None).run()
    ledger.close()
    assert posts == [first.key]
    with open_ledger(tmp_path / "state") as ledger:
        row = ledger.task("live", first.key)
        others = [r.status for r in ledger.tasks("live", "t") if r.key != first.key]
    assert row is not None
    assert row.status == "submitting"  # re-sent under the same key by the next run
    assert row.submit_key == first.key
    assert row.error is None
    assert set(others) == {"planned"}


@pytest.mark.anyio
async def test_tasks_in_flight_polled_at_a_wrong_url_are_not_failed(tmp_path: Path) -> None:
    """Polls answered by something that is not the API stop the run, fail nothing."""
    plan = plan_of(tmp_path)
    ledger = prepare_ledger(tmp_path / "state", plan, env="live")
    for number, task in enumerate(plan.tasks):
        ledger.record_intent(
            "live", task.key, previous="planned", submit_key=task.key, attempt=0, run_id=None
        )
        ledger.record_submitted(
            "live",
            task.key,
            task_id=f"task_{number}",
            request_id=None,
            status="queued",
            cost_estimate=Decimal("0.0414"),
            run_id=None,
        )
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.method)
        return httpx.Response(404, text=NGINX_404, headers={"Content-Type": "text/html"})

    async with scripted(handler) as api:
        with pytest.raises(ConfigError) as caught:
            await Executor(plan, ledger, api, env="live", cap=None).run()
    ledger.close()
    assert "GET http://127.0.0.1:8799/tasks/task_" in caught.value.message
    assert set(requests) == {"GET"}
    assert len(requests) <= len(plan.tasks)  # stopped at once, no polling on and on
    with open_ledger(tmp_path / "state") as ledger:
        rows = ledger.tasks("live", "t")
    assert {r.status for r in rows} == {"queued"}
    assert all(r.error is None for r in rows)


@pytest.mark.anyio
async def test_the_simulator_at_a_wrong_prefix_fails_nothing(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    sim = InProcessSim(speed=0)
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sim.app),
        base_url="http://sim.test/wrong/prefix/",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    ledger = prepare_ledger(tmp_path / "state", plan, env="live")
    async with ApiClient(http) as api:
        with pytest.raises(ConfigError) as caught:
            await Executor(plan, ledger, api, env="live", cap=None).run()
    ledger.close()
    assert "http://sim.test/wrong/prefix/tasks" in caught.value.message
    stats = await sim.stats()
    assert stats["responses"] == {"404": 1}
    assert stats["billing"]["charges"] == 0
    assert {r["status"] for r in ledger_rows(tmp_path / "state")} == {"planned"}


# ------------------------------------------------------------------ the real CLI


@pytest.mark.slow
def test_a_wrong_base_url_exits_4_at_the_first_request_and_the_right_one_then_completes(
    tmp_path: Path,
) -> None:
    """The contract, on the real CLI: exit 4 at the first request, the ledger
    unchanged, then the same command with the right URL completes every task,
    each charged once (the simulator's own billing says so)."""
    state = tmp_path / "state"
    command = ["run", str(DEMO), "--yes"]
    with not_the_api(404) as (origin, seen):
        wrong = cli(command, cli_env(tmp_path, None, MINDVIDEO_BASE_URL=origin + "/api"), tmp_path)
    output = wrong.stdout + wrong.stderr
    assert wrong.returncode == 4, output
    assert f"POST {origin}/api/tasks" in output  # the URL it used
    assert "404" in output
    assert f"{origin}/api/v1" in output  # what was expected
    assert "--retry-failed" not in output
    assert "charged again" not in output
    assert TEST_KEY not in output
    assert seen == Counter({"POST /api/tasks": 1})  # exactly one request, a POST
    assert_nothing_recorded_as_sent(state)

    with running_sim(tmp_path, speed=0) as base:
        right = cli(command, cli_env(tmp_path, base), tmp_path)
        stats = sim_stats(base)
    assert right.returncode == 0, right.stdout + right.stderr
    with open_ledger(state) as ledger:
        rows = ledger.tasks("live", "demo")
    assert len(rows) == 9
    assert {r.status for r in rows} == {"succeeded"}
    assert charges_by_key(stats) == {r.key: 1 for r in rows}  # each charged once
    assert stats["billing"]["without_idempotency_key"]["charges"] == 0


@pytest.mark.slow
def test_the_bare_origin_printed_by_an_old_sim_works_and_a_wrong_prefix_fails_nothing(
    tmp_path: Path,
) -> None:
    """`MINDVIDEO_BASE_URL=http://127.0.0.1:PORT` (no /api/v1) is accepted by the
    simulator; a path it does not serve is exit 4 with nothing charged or failed."""
    state = tmp_path / "state"
    path = write_manifest(tmp_path, "t", [*shots(2, "std"), *shots(2, "pro", input=PRO)], max_usd=2)
    command = ["run", str(path), "--yes"]
    with running_sim(tmp_path, speed=0) as base:
        wrong_url = base + "/wrong/prefix"
        wrong = cli(command, cli_env(tmp_path, None, MINDVIDEO_BASE_URL=wrong_url), tmp_path)
        after_wrong = sim_stats(base)
        right = cli(command, cli_env(tmp_path, None, MINDVIDEO_BASE_URL=base), tmp_path)
        stats = sim_stats(base)
    assert wrong.returncode == 4, wrong.stdout + wrong.stderr
    assert f"{wrong_url}/tasks" in wrong.stderr
    assert after_wrong["responses"] == {"404": 1}
    assert after_wrong["billing"]["charges"] == 0
    assert right.returncode == 0, right.stdout + right.stderr
    with open_ledger(state) as ledger:
        rows = ledger.tasks("live", "t")
    assert {r.status for r in rows} == {"succeeded"}
    assert charges_by_key(stats) == {r.key: 1 for r in rows}
