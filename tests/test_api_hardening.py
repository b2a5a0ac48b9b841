"""What a server sends can never leak the key, crash the run, or be followed for ever.

Four rules at the API boundary, each tested in process and through the real
CLI against `Loopback`, a small HTTP server on 127.0.0.1 that misbehaves as
the test says:

- the key: every string the server sends that the ledger, a log or a report
  keeps (request ids, output URLs, messages, events, statuses) has the key
  replaced by `[redacted]` first (`api/responses.py`, with `logs.redact_text`),
  whatever the key's shape; a task id carrying the key is no usable answer;
- malformed answers: a 2xx that is not a task (no task_id, JSON nested too
  deeply, a body too large, a body that never ends) is retried like a 5xx and
  then stops the run with exit 4 and the server's words; never a traceback;
- a status the API docs do not list: read as still running, and let go after
  `follow.UNKNOWN_STATUS_POLLS` answers spanning `follow.UNKNOWN_STATUS_SPAN`
  seconds, kept in flight in the ledger with the server's words (exit 1), and
  counted by `status`;
- MINDVIDEO_BASE_URL: anything but an http(s) URL with a host is a
  configuration error (exit 4) naming the variable and the reason.

`fast_cli` runs the real CLI in its own process with stamina's testing mode
(no sleeping between retries) and, where a test asks, smaller polling
constants, so nothing here waits for real time; durations are never asserted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from mp4_fixtures import make_mp4
from run_helpers import REPO, cli, cli_env, planned, prepare_ledger, write_manifest
from structlog.testing import capture_logs

from mvbatch import logs
from mvbatch.api import client as client_module
from mvbatch.api.client import ApiClient
from mvbatch.api.responses import parse_task
from mvbatch.api.retry import ATTEMPTS
from mvbatch.commands.status import status_document
from mvbatch.errors import ApiUnavailable, ConfigError, MalformedResponse, TaskRejected
from mvbatch.ledger import IN_FLIGHT
from mvbatch.run import follow, polling
from mvbatch.run.executor import Executor
from mvbatch.settings import Settings
from mvbatch.ui.progress import status_view

pytestmark = pytest.mark.anyio

# Keys of the shapes people paste: none of them looks like `mv_live_...`, so
# only the registered secret can catch them, not a pattern.
KEYS = {
    "sk": "sk-proj-4fT9xQ2mZ7vL1cB8nR3kW6yH0aJ5",
    "uuid": "3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c",
    "hex64": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "mindvideo": "mv_live_Q7x2Lk9PzR4mN8vB",
    "metachars": "k3y.+*?^$()[]{}|\\/=&%",
}
VIDEO = make_mp4(5)
DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads gives up with RecursionError
STD = {"mode": "std", "duration": 5, "size": "16:9"}


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    logs._secrets.clear()


# ------------------------------------------------------------------ a server on loopback


@dataclass
class Seen:
    """One request the loopback server received."""

    method: str
    path: str  # with the query
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def key(self) -> str:
        return self.headers.get("authorization", "").removeprefix("Bearer ")

    @property
    def idempotency_key(self) -> str:
        return self.headers.get("idempotency-key", "")

    @property
    def task_id(self) -> str:
        """The task id this POST creates: derived from its idempotency key."""
        return "task_" + hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:10]


# (status, body: bytes as they are or anything JSON, extra headers)
Reply = tuple[int, Any, Mapping[str, str]]
Answer = Callable[[Seen, str], Reply]  # (the request, the server's origin) -> reply


@dataclass
class Loopback:
    """A threaded HTTP server on 127.0.0.1 answering every request with `answer`."""

    answer: Answer
    seen: list[Seen] = field(default_factory=list)
    origin: str = ""

    @property
    def base_url(self) -> str:
        return self.origin + "/api/v1"

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


@contextmanager
def loopback(answer: Answer) -> Iterator[Loopback]:
    server_state = Loopback(answer)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen = Seen(self.command, self.path, headers, body)
            server_state.seen.append(seen)
            status, content, extra = server_state.answer(seen, server_state.origin)
            data = content if isinstance(content, bytes) else json.dumps(content).encode()
            self.send_response(status)
            self.send_header("Content-Type", extra.get("Content-Type", "application/json"))
            for name, value in extra.items():
                if name != "Content-Type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.origin = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def a_task(seen: Seen, status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": "req_" + seen.task_id[5:],
        "task_id": seen.task_id,
        "status": status,
        "cost_estimate": 0.0414,
        **extra,
    }


def task_of_path(path: str) -> str:
    return path.partition("?")[0].split("/")[4]  # /api/v1/tasks/{id}[/events]


# ------------------------------------------------------------------ running the CLI


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    state: Path
    outputs: Path

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def assert_no_crash(self) -> None:
        assert "Traceback" not in self.text, self.text
        assert "internal error" not in self.text.lower(), self.text
        assert "task.crashed" not in self.text, self.text
        assert not list((self.state / "logs").glob("crash-*.log")), self.text

    def assert_key_nowhere(self, key: str) -> None:
        """Not in stdout or stderr, nor in any file of the state or output folder."""
        assert key not in self.text
        needle = key.encode()
        for folder in (self.state, self.outputs):
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.is_file():
                    assert needle not in path.read_bytes(), f"the key is in {path}"

    def rows(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.state / "ledger.sqlite") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM tasks ORDER BY rowid")]


# The real CLI (`mvbatch.cli.main`, what `python -m mvbatch` runs) in its own
# process, with stamina's testing mode on: retries happen at once, attempts
# as in production. `patches` are Python statements run first.
FAST_CLI = """\
import sys
import stamina
stamina.set_testing(True, attempts={attempts}, cap=True)
{patches}
from mvbatch.cli import main
sys.argv[0] = "mvbatch"
main()
"""
# Tasks of a class the ledger has no history of are first polled after 50 ms.
QUICK_POLLS = ("import mvbatch.run.polling as polling", "polling.COLD_FIRST = 0.05")


def fast_cli(
    args: list[str], env: Mapping[str, str], cwd: Path, *patches: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    code = FAST_CLI.format(attempts=ATTEMPTS, patches="\n".join(patches))
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the run did not end within {timeout}s: {expired.stderr!r}")


def live_run(
    tmp_path: Path,
    manifest: Path,
    server: Loopback,
    key: str,
    *patches: str,
    options: tuple[str, ...] = (),
) -> Outcome:
    env = cli_env(tmp_path, key=key, MINDVIDEO_BASE_URL=server.base_url)
    result = fast_cli(["run", str(manifest), "--yes", *options], env, tmp_path, *patches)
    return Outcome(
        result.returncode, result.stdout, result.stderr, tmp_path / "state", tmp_path / "outputs"
    )


def one_shot(tmp_path: Path, prompt: str = "a car in neon rain") -> Path:
    return write_manifest(
        tmp_path / "m", "t", [{"id": "one", "prompt": prompt, "input": STD}], max_usd=1.0
    )


# ================================================================== 3. the key


def echo_the_key(seen: Seen, origin: str) -> Reply:
    """A server that echoes the caller's key wherever it writes text."""
    key = seen.key
    if seen.path.startswith("/files/"):
        return 200, VIDEO, {"Content-Type": "video/mp4"}
    if seen.method == "POST":
        prompt = json.loads(seen.body)["input"]["prompt"]
        if "refused" in prompt:
            return 422, {"error": {"message": f"prompt refused for {key}"}}, {}
        if "failing" in prompt:
            error = {"message": f"the worker rejected credentials {key}"}
            body = a_task(seen, "failed", request_id=key, cost_actual=0, error=error)
            return 200, body, {}
        url = f"{origin}/files/{seen.task_id}.mp4?token={key}&sig=1"
        body = a_task(
            seen,
            "succeeded",
            request_id=f"req-{key}",
            cost_actual=0.0414,
            output={"videos": [{"url": url}]},
        )
        return 200, body, {"X-Request-Id": key}
    if seen.path.endswith("/events"):
        return 200, {"events": [{"status": "failed", "message": f"auth={key}", "key": key}]}, {}
    return 404, {"error": {"message": f"no task for {key}"}}, {}


@pytest.mark.parametrize("shape", ["sk", "uuid", "hex64"])
def test_a_server_echoing_the_key_leaves_it_in_no_file_and_no_output(
    tmp_path: Path, shape: str
) -> None:
    """request_id, X-Request-Id, an output URL's query, a failure message, an error
    body and the events all carry the key: the ledger (file bytes, WAL included), the
    logs and the reports hold `[redacted]` instead, and the run behaves as usual."""
    key = KEYS[shape]
    manifest = write_manifest(
        tmp_path / "m",
        "t",
        [
            {"id": "ok", "prompt": "a car in neon rain", "input": STD},
            {"id": "bad", "prompt": "a failing car", "input": STD},
            {"id": "no", "prompt": "a refused car", "input": STD},
        ],
        max_usd=1.0,
    )
    with loopback(echo_the_key) as server:
        outcome = live_run(tmp_path, manifest, server, key)
    outcome.assert_no_crash()
    assert outcome.code == 1, outcome.text  # one failed, one rejected
    outcome.assert_key_nowhere(key)
    rows = {r["shot"]: r for r in outcome.rows()}
    assert rows["ok"]["status"] == "succeeded"
    assert rows["ok"]["request_id"] == "req-[redacted]"
    assert rows["bad"]["status"] == "failed"
    assert "[redacted]" in rows["bad"]["error"]
    assert "[redacted]" in rows["bad"]["server_events"]
    assert rows["no"]["status"] == "rejected"
    assert "[redacted]" in rows["no"]["error"]
    with sqlite3.connect(outcome.state / "ledger.sqlite") as db:
        (url,) = db.execute("SELECT url FROM outputs").fetchone()
    assert "token=[redacted]" in url
    assert (outcome.outputs / "t" / "report.json").is_file()
    assert any((outcome.outputs / "t" / "videos").rglob("*.mp4"))


@pytest.mark.parametrize("shape", list(KEYS))
def test_every_server_string_of_a_task_is_redacted_whatever_the_keys_shape(shape: str) -> None:
    key = KEYS[shape]
    logs.register_secret(key)
    body = {
        "request_id": f"req/{key}",
        "task_id": "task_1",
        "status": "failed",
        "error": {"message": f"bad key {key}!", "details": [{"field": key, "message": key}]},
        "output": {"videos": [{"url": f"https://cdn.test/v.mp4?key={key}"}]},
    }
    state = parse_task(json.loads(json.dumps(body)))
    for text in (state.request_id, state.error, *state.urls):
        assert text is not None
        assert key not in text, text
        assert logs.REDACTED in text
    assert state.urls == (f"https://cdn.test/v.mp4?key={logs.REDACTED}",)
    headers = httpx.Headers({"x-request-id": key})
    echoed = parse_task({"task_id": "t", "status": "queued"}, httpx.Response(200, headers=headers))
    assert echoed.request_id == logs.REDACTED


def test_an_unknown_status_echoing_the_key_is_redacted() -> None:
    key = KEYS["uuid"]
    logs.register_secret(key)
    state = parse_task({"task_id": "t", "status": f"held:{key}", "message": f"for {key}"})
    assert state.status == "processing"
    assert key not in state.raw_status
    assert state.error is not None
    assert key not in state.error


@pytest.mark.parametrize("shape", ["sk", "hex64", "metachars"])
def test_a_task_id_carrying_the_key_is_not_a_usable_answer(shape: str) -> None:
    """Stored, it would leak the key; redacted, it would name no task: not an answer."""
    key = KEYS[shape]
    logs.register_secret(key)
    with pytest.raises(MalformedResponse, match="task_id"):
        parse_task({"task_id": f"task-{key}", "status": "queued"})


async def test_a_key_echoed_percent_encoded_in_a_url_is_redacted_too() -> None:
    key = KEYS["metachars"]
    logs.register_secret(key)
    encoded = httpx.URL("https://cdn.test/v.mp4", params={"k": key}).query.decode()
    body = {
        "task_id": "t",
        "status": "succeeded",
        "output": {"videos": [{"url": f"https://cdn.test/v.mp4?{encoded}"}]},
    }
    (url,) = parse_task(body).urls
    assert encoded.removeprefix("k=") not in url
    assert key not in url


async def test_events_echoing_the_key_are_redacted_at_every_depth() -> None:
    key = KEYS["sk"]
    logs.register_secret(key)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"events": [{"a": [{"b": key}], key: "x"}]})

    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://a.test/")
    )
    events = await api.events("task_1")
    assert key not in json.dumps(events)


# ================================================================== 5. malformed answers


def client_for(handler: Callable[[httpx.Request], Any]) -> tuple[ApiClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = handler(request)
        return await answer if asyncio.iscoroutine(answer) else answer

    http = httpx.AsyncClient(
        transport=httpx.MockTransport(recording), base_url="https://api.test/api/v1/"
    )
    return ApiClient(http), seen


NOT_A_TASK = {"request_id": "req_1", "status": "queued", "message": "accepted, id to follow"}


async def test_a_post_answered_without_task_id_is_retried_then_stops_with_the_servers_words() -> (
    None
):
    api, seen = client_for(lambda _: httpx.Response(200, json=NOT_A_TASK))
    with capture_logs() as events, pytest.raises(ApiUnavailable) as raised:
        await api.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert len(seen) == ATTEMPTS
    assert {r.headers["Idempotency-Key"] for r in seen} == {"mvb1-k"}
    assert "task_id" in raised.value.message
    assert "accepted, id to follow" in raised.value.message  # the server's words
    assert sum(e["event"] == "api.retry" for e in events) == ATTEMPTS - 1
    assert not api.answered  # garbage is no proof that the base URL is the API


async def test_a_get_answered_200_without_task_id_is_retried_then_stops() -> None:
    api, seen = client_for(lambda _: httpx.Response(200, json={"status": "queued"}))
    with pytest.raises(ApiUnavailable, match="task_id"):
        await api.get("task_1")
    assert len(seen) == ATTEMPTS


async def test_a_garbled_answer_then_a_good_one_is_the_good_one() -> None:
    answers = [httpx.Response(200, json=NOT_A_TASK), httpx.Response(200, json=a_task_body())]
    api, seen = client_for(lambda _: answers.pop(0))
    state = await api.submit("kling-v2-6", {"prompt": "p"}, "mvb1-k")
    assert state.task_id == "task_1"
    assert len(seen) == 2


def a_task_body(status: str = "queued") -> dict[str, Any]:
    return {"task_id": "task_1", "request_id": "req_1", "status": status}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (DEEP, "nests deeper"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests deeper"),
        (b"[" * 1_000_000 + b"]" * 1_000_000, "larger than"),
    ],
)
async def test_json_nested_a_hundred_thousand_levels_is_a_garbled_answer_not_a_crash(
    body: bytes, why: str
) -> None:
    api, seen = client_for(lambda _: httpx.Response(200, content=body))
    with pytest.raises(ApiUnavailable, match=why):
        await api.get("task_1")
    assert len(seen) == ATTEMPTS


async def test_json_nested_deeper_than_the_limit_is_garbled_though_python_could_read_it() -> None:
    levels = 200  # below Python's recursion limit, far above any documented answer
    body = {"task_id": "t", "status": "queued", "extra": json.loads("[" * levels + "]" * levels)}
    api, _ = client_for(lambda _: httpx.Response(200, json=body))
    with pytest.raises(ApiUnavailable, match="nest"):
        await api.get("task_1")


async def test_an_answer_too_large_to_be_a_task_is_not_read_to_its_end() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"task_id": "t", "status": "queued", "pad": "'
        while True:  # a body that never ends: reading it all would never return
            sent += 65536
            yield b" " * 65536

    api, seen = client_for(lambda _: httpx.Response(200, content=endless()))
    with pytest.raises(ApiUnavailable, match="larger than"):
        await api.get("task_1")
    assert len(seen) == ATTEMPTS
    assert sent < ATTEMPTS * 2 * client_module.MAX_BODY_BYTES


async def test_an_answer_that_never_completes_is_given_up_within_the_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "ATTEMPT_DEADLINE", 0.01)

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"task_id": '
        await asyncio.Event().wait()  # the server never sends the rest
        yield b""

    api, seen = client_for(lambda _: httpx.Response(200, content=stalled()))
    with pytest.raises(ApiUnavailable):
        await api.get("task_1")
    assert len(seen) == ATTEMPTS


async def test_deep_json_in_an_error_body_or_in_events_is_text_not_a_crash() -> None:
    api, _ = client_for(lambda _: httpx.Response(422, content=DEEP))
    with pytest.raises(TaskRejected) as rejected:
        await api.get("task_1")
    assert rejected.value.message.startswith("[[[")
    assert len(rejected.value.message) <= 500
    api, _ = client_for(lambda _: httpx.Response(200, content=DEEP))
    events = await api.events("task_1")
    assert isinstance(events, str)
    assert len(events) <= 4096


async def test_a_transport_error_nobody_retries_is_an_api_error_not_a_crash() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ProxyError("the proxy said no", request=request)

    api, _ = client_for(refuse)
    with pytest.raises(ApiUnavailable, match="ProxyError"):
        await api.get("task_1")


async def test_a_task_id_is_one_path_segment_of_the_poll() -> None:
    api, seen = client_for(lambda _: httpx.Response(200, json=a_task_body()))
    await api.get("../../admin?x=1#y")
    assert seen[0].url.path.startswith("/api/v1/tasks/")
    assert seen[0].url.query == b""
    assert seen[0].url.raw_path.count(b"/") == 4


async def test_the_executor_stops_on_garbage_and_keeps_the_intent_for_the_next_run(
    tmp_path: Path,
) -> None:
    two = [{"id": "a", "prompt": "a first car"}, {"id": "b", "prompt": "a second car"}]
    plan = planned(write_manifest(tmp_path, "t", two), tmp_path / "state")
    ledger = prepare_ledger(tmp_path / "state", plan)
    api, seen = client_for(lambda _: httpx.Response(200, json=NOT_A_TASK))
    with capture_logs() as events, pytest.raises(ApiUnavailable, match="accepted, id to follow"):
        async with api:
            await Executor(plan, ledger, api, env="sim", cap=None).run()
    assert not [e for e in events if e["event"] == "task.crashed"]
    statuses = sorted(r.status for r in ledger.tasks("sim", "t"))
    assert statuses == ["planned", "submitting"]  # one POST at a time until the API answers
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1


def answers_garbage_to(method: str, garbage: bytes | dict[str, Any]) -> Answer:
    def answer(seen: Seen, origin: str) -> Reply:
        if seen.method == method:
            return 200, garbage, {}
        if seen.method == "POST":
            return 200, a_task(seen), {}
        return 200, a_task(seen, "queued") | {"task_id": task_of_path(seen.path)}, {}

    return answer


@pytest.mark.parametrize(
    ("method", "garbage", "words"),
    [
        ("POST", NOT_A_TASK, "accepted, id to follow"),
        ("POST", DEEP, "nest"),
        ("GET", {"status": "queued", "message": "try later"}, "try later"),
        ("GET", DEEP, "nest"),
    ],
    ids=["post-no-task-id", "post-deep-json", "get-no-task-id", "get-deep-json"],
)
def test_garbage_stops_the_cli_with_exit_4_and_the_servers_words(
    tmp_path: Path, method: str, garbage: bytes | dict[str, Any], words: str
) -> None:
    """A POST's task stays `submitting` (the next run re-sends it under its key); a
    polled task stays in flight (the next run polls it). Nothing fails, nothing
    crashes, no second task is sent on an answer nobody could read."""
    key = KEYS["sk"]
    two = [{"id": "a", "prompt": "a first car"}, {"id": "b", "prompt": "a second car"}]
    manifest = write_manifest(tmp_path / "m", "t", two, max_usd=1.0)
    with loopback(answers_garbage_to(method, garbage)) as server:
        outcome = live_run(tmp_path, manifest, server, key, *QUICK_POLLS)
        posts = server.posts()
    outcome.assert_no_crash()
    assert outcome.code == 4, outcome.text
    assert words in outcome.stderr, outcome.stderr
    outcome.assert_key_nowhere(key)
    statuses = sorted(r["status"] for r in outcome.rows())
    if method == "POST":
        assert statuses == ["planned", "submitting"]
        assert len({p.idempotency_key for p in posts}) == 1
        assert len(posts) == ATTEMPTS
    else:
        assert all(s in IN_FLIGHT for s in statuses), statuses
        assert not any(r["error"] for r in outcome.rows())


# ================================================================== 11. undocumented statuses


def expired_after_the_post(seen: Seen, origin: str) -> Reply:
    if seen.method == "POST":
        return 200, a_task(seen), {}
    words = {"message": "the task expired before a worker took it"}
    return 200, {"task_id": task_of_path(seen.path), "status": "expired", "error": words}, {}


@pytest.fixture
def unknown_status_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "UNKNOWN_STATUS_POLLS", 3)
    monkeypatch.setattr(follow, "UNKNOWN_STATUS_SPAN", 0.0)
    monkeypatch.setattr(polling, "COLD_FIRST", 0.01)


@pytest.mark.usefixtures("unknown_status_quickly")
async def test_a_task_in_an_undocumented_status_is_let_go_and_kept_in_flight(
    tmp_path: Path,
) -> None:
    plan = planned(write_manifest(tmp_path, "t", [{"id": "a"}]), tmp_path / "state")
    ledger = prepare_ledger(tmp_path / "state", plan)
    gets = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal gets
        if request.method == "POST":
            return httpx.Response(200, json=a_task_body())
        gets += 1
        words = {"message": "the task expired before a worker took it"}
        return httpx.Response(200, json={"task_id": "task_1", "status": "expired", "error": words})

    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://a.test/")
    )
    with capture_logs() as events:
        async with api:
            result = await Executor(plan, ledger, api, env="sim", cap=None).run()
    assert gets == follow.UNKNOWN_STATUS_POLLS
    assert result.pending == 1
    assert result.unresolved == (("a", "expired"),)
    assert result.unresolved_message is not None
    assert "expired" in result.unresolved_message
    (row,) = ledger.tasks("sim", "t")
    assert row.status in IN_FLIGHT
    assert row.task_id == "task_1"
    assert row.error is not None
    assert "expired before a worker took it" in row.error
    let_go = [e for e in events if e["event"] == "task.unknown_status_let_go"]
    assert len(let_go) == 1
    assert let_go[0]["log_level"] == "warning"
    assert let_go[0]["status"] == "expired"
    document = status_document(plan.manifest.path, Settings(MVBATCH_STATE_DIR=tmp_path / "state"))
    assert document["unknown_status"] == {"tasks": 1, "statuses": {"expired": 1}}


@pytest.mark.usefixtures("unknown_status_quickly")
async def test_an_undocumented_status_that_passes_is_followed_to_the_end(tmp_path: Path) -> None:
    plan = planned(write_manifest(tmp_path, "t", [{"id": "a"}]), tmp_path / "state")
    ledger = prepare_ledger(tmp_path / "state", plan)
    statuses = ["starting", "starting", "processing", "starting", "starting"]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=a_task_body())
        status = statuses.pop(0) if statuses else "succeeded"
        body = a_task_body(status) | {"output": {"videos": [{"url": "https://cdn.test/a"}]}}
        return httpx.Response(200, json=body)

    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://a.test/")
    )
    async with api:
        result = await Executor(plan, ledger, api, env="sim", cap=None).run()
    assert result.counts == {"succeeded": 1}
    assert result.unresolved == ()


async def test_max_wait_also_bounds_a_poll_that_never_answers(tmp_path: Path) -> None:
    """A server that holds every GET open: --max-wait lets the task go all the same."""
    plan = planned(write_manifest(tmp_path, "t", [{"id": "a"}]), tmp_path / "state")
    ledger = prepare_ledger(tmp_path / "state", plan)

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=a_task_body())
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://a.test/")
    )
    executor = Executor(plan, ledger, api, env="sim", cap=None, max_wait=0.05)
    async with api:
        # A guard against the hang this test is about, not a timing: the run
        # ends at once once --max-wait is honoured.
        result = await asyncio.wait_for(executor.run(), 60)
    assert result.overdue == ("a",)
    (row,) = ledger.tasks("sim", "t")
    assert row.status in IN_FLIGHT


def test_status_counts_tasks_in_an_undocumented_status(tmp_path: Path) -> None:
    document = {
        "manifest": "t",
        "simulated": False,
        "counts": {"processing": 1},
        "tasks": 1,
        "spend": {"actual": 0, "committed": 0.0414},
        "max_usd": None,
        "left": {"tasks": 1, "cost_estimate": 0.0414},
        "unknown_status": {"tasks": 1, "statuses": {"expired": 1}},
    }
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(status_view(document))
    text = console.export_text()
    assert "1 task(s) in a status the API docs do not list (expired" in text


def test_the_cli_lets_go_of_an_expired_task_and_status_says_so(tmp_path: Path) -> None:
    """exit 1 with a warning naming the status and the server's words; `status` (the
    real `python -m mvbatch`) counts it; the next run polls it again (no second POST)
    and, once the server says it ended, the task is done and `status` is clear."""
    key = KEYS["uuid"]
    manifest = one_shot(tmp_path)
    quick = (
        *QUICK_POLLS,
        "import mvbatch.run.follow as follow",
        "follow.UNKNOWN_STATUS_POLLS = 2",
        "follow.UNKNOWN_STATUS_SPAN = 0.0",
    )
    with loopback(expired_after_the_post) as server:
        outcome = live_run(tmp_path, manifest, server, key, *quick)
        posts = len(server.posts())
    outcome.assert_no_crash()
    assert outcome.code == 1, outcome.text
    assert "expired" in outcome.stderr
    assert "the task expired before a worker took it" in outcome.stderr
    (row,) = outcome.rows()
    assert row["status"] in IN_FLIGHT
    env = cli_env(tmp_path, key=key)
    shown = cli(["status", str(manifest)], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "1 task(s) in a status the API docs do not list (expired" in shown.stdout
    as_json = json.loads(cli(["status", str(manifest), "--json"], env, tmp_path).stdout)
    assert as_json["unknown_status"] == {"tasks": 1, "statuses": {"expired": 1}}

    def now_done(seen: Seen, origin: str) -> Reply:
        if seen.path.startswith("/files/"):
            return 200, VIDEO, {"Content-Type": "video/mp4"}
        task_id = task_of_path(seen.path)
        url = f"{origin}/files/{task_id}.mp4"
        body = {"task_id": task_id, "status": "succeeded", "cost_actual": 0.0414}
        return 200, body | {"output": {"videos": [{"url": url}]}}, {}

    with loopback(now_done) as server:
        again = live_run(tmp_path, manifest, server, key, *quick)
        assert not server.posts()
    assert posts == 1
    again.assert_no_crash()
    assert again.code == 0, again.text
    as_json = json.loads(cli(["status", str(manifest), "--json"], env, tmp_path).stdout)
    assert as_json["unknown_status"] == {"tasks": 0, "statuses": {}}
    outcome.assert_key_nowhere(key)


# ================================================================== 12. the base URL


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("notaurl", "http"),
        ("http://[::1", "not a URL"),
        ("ftp://files.example/api/v1", "http"),
        ("http:///api/v1", "host"),
        ("https://api.mindvideo.ai:99999/api/v1", "port"),
        ("https://user:secret@api.mindvideo.ai/api/v1", "user"),
        ("https://api.mindvideo.ai/api/v1?key=abc", "query"),
    ],
)
def test_a_base_url_that_is_not_an_http_url_with_a_host_is_a_config_error(
    value: str, reason: str
) -> None:
    settings = Settings(MINDVIDEO_API_KEY="sk-test-123456", MINDVIDEO_BASE_URL=value)
    with pytest.raises(ConfigError, match="MINDVIDEO_BASE_URL") as raised:
        settings.api_base_url()
    assert reason in raised.value.message
    assert "secret" not in raised.value.message


def test_a_good_base_url_is_taken_as_given() -> None:
    for value in ("https://api.mindvideo.ai/api/v1", " http://127.0.0.1:8080/api/v1/ "):
        assert Settings(MINDVIDEO_BASE_URL=value).api_base_url() == value.strip()


@pytest.mark.parametrize(
    ("value", "reason"), [("notaurl", "http(s)"), ("http://[::1", "not a URL")]
)
def test_the_cli_says_a_bad_base_url_is_a_config_error(
    tmp_path: Path, value: str, reason: str
) -> None:
    key = KEYS["hex64"]
    env = cli_env(tmp_path, key=key, MINDVIDEO_BASE_URL=value)
    result = cli(["run", str(REPO / "jobs" / "demo.toml"), "--yes"], env, tmp_path)
    outcome = Outcome(
        result.returncode, result.stdout, result.stderr, tmp_path / "state", tmp_path / "outputs"
    )
    outcome.assert_no_crash()
    assert outcome.code == 4, outcome.text
    assert "MINDVIDEO_BASE_URL" in outcome.stderr
    assert reason in outcome.stderr
    outcome.assert_key_nowhere(key)


@pytest.mark.parametrize("where", [0, 480, 495, 499])
def test_a_key_straddling_the_cut_of_a_message_never_shows_in_part(where: int) -> None:
    """Server text is redacted whole, then cut: a key across the limit must not leave a piece."""
    from mvbatch.api.responses import events_body, server_message, words

    key = "sk-straddle-" + "0123456789abcdef" * 3
    logs.register_secret(key)
    text = "x" * where + key + " tail"
    for body in (text.encode(), json.dumps({"error": {"message": text}}).encode()):
        response = httpx.Response(400, content=body)
        for shown in (server_message(response), words(body), str(events_body(response))):
            assert not any(key[i : i + 8] in shown for i in range(len(key) - 8)), shown
