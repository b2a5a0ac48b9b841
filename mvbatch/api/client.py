"""The HTTP client of the MindVideo task API: requests, retries, tolerant parsing.

Owns: the three documented calls (`POST /tasks`, `GET /tasks/{id}`,
`GET /tasks/{id}/events`), when a failed call is tried again, and turning
responses into `TaskState` values. It must not know about the ledger, plans or
budgets, and it never sees the API key: the `httpx.AsyncClient` it is given
(`Endpoint.api_client()`) carries the Authorization header.

What is retried, exactly (nothing else is):

    RETRY_EXCEPTIONS   httpx.TimeoutException, httpx.NetworkError,
                       httpx.RemoteProtocolError, httpx.DecodingError,
                       MalformedResponse (a 2xx whose body is not a task)
    RETRY_STATUSES     408, 429 and every 5xx

A POST is retried only because it carries its Idempotency-Key: the API answers
a repeated key with the original task and no new charge. Waits are exponential
with full jitter, capped, and a `Retry-After` (seconds or an HTTP date) is
honoured. A `RetryBudget` shared by all calls stops a dead API from being
hammered: when it runs dry the call raises `ApiUnavailable` and the run stops,
resumable.

What is not retried, and what it becomes:

    401, 403      AuthError          the run stops (exit 4)
    not the API   EndpointMissing    the run stops (exit 4), see below
    409           TaskRejected       the key was used with other content
    other 4xx     TaskRejected       with the server's own message

A wrong base URL must not fail tasks. A POST creates, so no task API answers
`POST {base}/tasks` with 405, a redirect (never followed: the key would go
along), or a 404 that names nothing (an HTML or text page, an empty body, a
bare "Not Found" from a web framework's router): that answer came from
something else at that URL, and nothing was created. It raises
`EndpointMissing` (a `ConfigError`), naming the URL and what was expected.
A GET answered the same way is one too until the API has answered this
client once (`answered`); after that a 404 to a poll is the task not being
visible yet, which the executor backs off from. A 404 that names what the
API does not know ("Unknown model 'x'", "No task 'task_1'") stays a
`TaskRejected`.

The error body is undocumented: the message is read from `error.message`,
`error` (a string), `message`, `detail` or the raw text, whichever exists.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from mvbatch import logs
from mvbatch.errors import ApiError, AuthError, ConfigError
from mvbatch.plan.keys import canonical_json

STATUSES = ("queued", "processing", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MESSAGE_LIMIT = 500
DOCUMENTED_BASE_URL = "https://api.mindvideo.ai/api/v1"
API_PATH = "/api/v1"  # how every documented base URL ends
MAX_CONNECTIONS = 8
EVENTS_DEADLINE = 10.0  # seconds: the events call is diagnostics, never worth waiting for
EVENTS_TEXT_LIMIT = 4096  # bytes of a non-JSON events body kept as text


def pool_size(concurrency: int) -> int:
    """How many connections to keep to the API for `concurrency` tasks in flight.

    Tasks in flight spend nearly all their time waiting between polls, so a
    few connections carry many tasks. Fewer is also cheaper: httpcore checks
    every pooled connection's socket on each request, and that bookkeeping,
    not the request itself, dominated the client's CPU with 64 connections.
    """
    return max(1, min(concurrency, MAX_CONNECTIONS))


log = logs.get("mvbatch.api.client")


class MalformedResponse(Exception):
    """A 2xx response whose body is not the JSON object the documentation shows."""


RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
    MalformedResponse,
)
RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx, see `_retryable_status`


class TaskRejected(Exception):
    """The server refused this request for good (a 4xx other than 401/403/408/429)."""

    def __init__(self, status_code: int, message: str, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        # An earlier attempt of the same call may have reached the server (a
        # timeout, a dropped connection, a 5xx, a garbled 2xx): for a POST the
        # task may exist and be charged even though this answer refuses it.
        self.maybe_sent = maybe_sent


class ApiUnavailable(ApiError):
    """The API kept failing: attempts or the retry budget ran out. The run stops."""


class EndpointMissing(ConfigError):
    """The base URL does not lead to the task API: the run stops (exit 4).

    Raised for an answer no task API gives (see the module docstring). The
    request created nothing there, unless `maybe_sent`: an earlier attempt
    of the same call went unanswered (a timeout, a 5xx).
    """

    def __init__(
        self, message: str, *, hint: str, status_code: int, url: str, maybe_sent: bool
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.url = url
        self.maybe_sent = maybe_sent


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True, slots=True)
class TaskState:
    """What one response told us about a task; documented fields only, extras ignored."""

    task_id: str
    status: str  # one of STATUSES; an unknown status reads as "processing"
    request_id: str | None = None
    cost_estimate: Decimal | None = None
    cost_actual: Decimal | None = None
    urls: tuple[str, ...] = ()
    error: str | None = None
    raw_status: str = ""
    # Undocumented but common: the server's own created/updated times give the
    # task's true latency, better than our polling can measure. None if absent.
    server_seconds: float | None = None
    replayed: bool = False  # the POST returned an existing task (same key)
    retry_after: float | None = None  # a polling hint sent with a 200

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def parse_task(body: Any, response: httpx.Response | None = None) -> TaskState:
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"expected a JSON object, got {type(body).__name__}")
    task_id = _ident(body.get("task_id"))
    raw_status = body.get("status")
    if not task_id or not isinstance(raw_status, str):
        raise MalformedResponse("the response has no task_id or status")
    status = raw_status.strip().lower()
    if status not in STATUSES:
        status = "processing"  # tolerant: an unknown state is not an end state
    headers = response.headers if response is not None else httpx.Headers()
    return TaskState(
        task_id=task_id,
        status=status,
        raw_status=raw_status,
        request_id=_ident(body.get("request_id")) or headers.get("x-request-id"),
        cost_estimate=_money(body.get("cost_estimate")),
        cost_actual=_money(body.get("cost_actual")),
        urls=_video_urls(body.get("output")),
        error=_scrubbed(_error_text(body)) if status in ("failed", "cancelled") else None,
        server_seconds=_server_seconds(body) if status in TERMINAL else None,
        replayed=headers.get("idempotent-replayed", "").lower() == "true",
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _ident(value: Any) -> str | None:
    """An identifier: a non-empty string, or a number sent where a string was documented."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal | float):
        return str(value)
    return _text(value)


def _money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def _video_urls(output: Any) -> tuple[str, ...]:
    if not isinstance(output, Mapping):
        return ()
    videos = output.get("videos")
    if not isinstance(videos, list):
        return ()
    urls = []
    for video in videos:
        url = video.get("url") if isinstance(video, Mapping) else video
        if isinstance(url, str) and url:
            urls.append(url)
    return tuple(urls)


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _server_seconds(body: Mapping[str, Any]) -> float | None:
    created = _timestamp(body.get("created_at"))
    finished = None
    for name in ("finished_at", "completed_at", "updated_at"):
        finished = _timestamp(body.get(name))
        if finished is not None:
            break
    if created is None or finished is None or finished < created:
        return None
    return finished - created


def _error_text(body: Any) -> str | None:
    """The most specific human message in an (undocumented) error body."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    message: str | None = None
    details: Any = None
    if isinstance(error, Mapping):
        message = _text(error.get("message")) or _text(error.get("detail"))
        details = error.get("details")
        if message is None and _text(error.get("code")):
            message = str(error["code"])
    elif isinstance(error, str) and error:
        message = error
    if message is None:
        message = _text(body.get("message"))
    if message is None:
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            message = detail
        elif isinstance(detail, list):
            details = detail
    if details is None:
        details = body.get("details")
    parts = [message] if message else []
    if isinstance(details, list):
        for item in details[:5]:
            if isinstance(item, Mapping):
                where = item.get("field") or item.get("loc")
                what = item.get("message") or item.get("msg")
                if isinstance(where, list):
                    where = ".".join(map(str, where))
                if what:
                    parts.append(f"{where}: {what}" if where else str(what))
    return "; ".join(parts) if parts else None


def _scrubbed(value: Any) -> Any:
    """Server-sent text with anything shaped like a credential removed (it is stored)."""
    if isinstance(value, str):
        return logs.redact_text(value)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def server_message(response: httpx.Response) -> str:
    """Whatever message the server sent, for a person; never empty."""
    text = ""
    try:
        text = response.text
        message = _error_text(json.loads(text))
    except (ValueError, UnicodeDecodeError):
        message = None
    if not message:
        message = " ".join(text.split())[:MESSAGE_LIMIT] or response.reason_phrase or "no message"
    # Redacted here, at the boundary, because this text is stored in the
    # ledger and printed in reports: a proxy echoing our headers must not
    # carry the key into them.
    return logs.redact_text(message[:MESSAGE_LIMIT])


# What a web server or a framework's router says when no route matches: the
# text names no task, no model, nothing of the API's.
_ROUTE_MISS = re.compile(
    r"(?:(?:http\s*)?(?:error\s*)?(?:404|405)\s*[:.-]?\s*)?"
    r"(?:(?:the\s+)?(?:requested\s+)?(?:page|resource|route|url|path|endpoint|file)\s+)?"
    r"(?:not\s*found|method\s+not\s+allowed)[.!]?",
    re.IGNORECASE,
)


def not_the_api(response: httpx.Response) -> bool:
    """Is this an answer no MindVideo task API would give to a call on its tasks?

    405, any redirect, and a 404 whose body is not a JSON object or whose
    message is a router's bare "Not Found". A 404 that says what is missing
    ("Unknown model 'x'.", "No task 'task_1'.") is the API's own answer.
    """
    code = response.status_code
    if code == 405 or 300 <= code < 400:
        return True
    if code != 404:
        return False
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return True  # an HTML or text page, or nothing: a web server's, not the API's
    if not isinstance(body, Mapping):
        return True
    message = _error_text(body)
    return message is None or _ROUTE_MISS.fullmatch(" ".join(message.split())) is not None


def shown_url(url: httpx.URL | str) -> str:
    """A URL for people: no user name, password, query or fragment (they may hold secrets)."""
    url = httpx.URL(url)
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _expected(base_url: str) -> str:
    """What MINDVIDEO_BASE_URL should look like, from the one that did not work."""
    base = httpx.URL(base_url)
    origin = shown_url(base.copy_with(path="/")).rstrip("/")
    if not base.path.rstrip("/").endswith(API_PATH):
        return f"MINDVIDEO_BASE_URL should end in {API_PATH}, e.g. {origin}{API_PATH}"
    return (
        f"MINDVIDEO_BASE_URL is {shown_url(base).rstrip('/')}: check its host and port "
        f"(the documented API is {DOCUMENTED_BASE_URL})"
    )


def endpoint_missing(
    method: str, response: httpx.Response, base_url: str, maybe_sent: bool = False
) -> EndpointMissing:
    """The configuration error for an answer that `not_the_api`, naming URL and expectation."""
    code = response.status_code
    url = shown_url(response.request.url)
    what = f"{code} {response.reason_phrase}".strip()
    expected = _expected(base_url)
    if 300 <= code < 400:
        location = response.headers.get("location")
        if location:
            target = shown_url(response.request.url.join(location))
            what += f", a redirect to {target} that mvbatch does not follow with the key"
            path = response.request.url.path
            tail = path[len(httpx.URL(base_url).path.rstrip("/")) :]
            if tail and target.endswith(tail):
                expected = f"MINDVIDEO_BASE_URL should be {target[: -len(tail)]}"
    message = f"{method} {url} answered {what}: no MindVideo task API there. {expected}"
    return EndpointMissing(
        logs.redact_text(message),
        hint="nothing was created by that request; fix MINDVIDEO_BASE_URL and run the same "
        "command again to resume",
        status_code=code,
        url=url,
        maybe_sent=maybe_sent,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


# ------------------------------------------------------------------ retrying


@dataclass
class RetryBudget:
    """Retries are paid from a bucket that successful calls refill.

    With `ratio` tokens earned per success, the client sustains a failure
    rate up to ratio/(1+ratio) (2/3 for the default) indefinitely, and a dead
    API gets at most `reserve` retries in all before the run stops.
    """

    reserve: float = 40.0
    ratio: float = 2.0
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.reserve

    def earn(self) -> None:
        self.tokens = min(self.reserve, self.tokens + self.ratio)

    def spend(self) -> bool:
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _no_sleep_record(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep


@dataclass
class RetryPolicy:
    attempts: int = 8  # per call, the first one included
    base: float = 0.5  # first backoff ceiling, doubled per attempt
    cap: float = 30.0  # no backoff ceiling above this
    max_retry_after: float = 300.0  # a longer Retry-After is cut to this
    budget: RetryBudget = field(default_factory=RetryBudget)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def for_tests(
        cls, attempts: int = 8, budget: RetryBudget | None = None
    ) -> tuple[RetryPolicy, list[float]]:
        """A policy that records the waits it would make instead of sleeping."""
        waits: list[float] = []
        return cls(
            attempts=attempts, sleep=_no_sleep_record(waits), budget=budget or RetryBudget()
        ), waits

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**(attempt-1))), or the server's wish."""
        if retry_after is not None:
            # Honour the server, with a little jitter on top so that every
            # waiting task does not come back in the same millisecond.
            wait = min(retry_after, self.max_retry_after)
            return wait + self.rng.uniform(0, min(1.0, 0.1 * wait))
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def _decode(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedResponse(f"the body is not JSON ({error})") from None


def _retryable_status(code: int) -> bool:
    return code in RETRY_STATUSES or 500 <= code <= 599


# ------------------------------------------------------------------ the client


class ApiClient:
    """The task API over one pooled `httpx.AsyncClient` (which holds the auth header)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        on_throttle: Callable[[], None] | None = None,
    ) -> None:
        self.http = http
        self.policy = policy or RetryPolicy()
        # Called on every 429, so the executor can lower its concurrency.
        self.on_throttle = on_throttle
        self.counts: Counter[str] = Counter()  # "POST", "GET", "retry", "429", ...
        # True once the task API itself has answered (a task, or an error of
        # its own): the base URL is right, so a later 404 to a poll is about
        # the task, not the URL.
        self.answered = False

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the documented calls

    async def submit(self, model: str, input: Mapping[str, Any], idempotency_key: str) -> TaskState:
        """POST /tasks. Safe to repeat: the same key and payload give the same task."""
        if not idempotency_key:
            raise ValueError("a POST is only sent (and retried) with an idempotency key")
        # Canonical bytes (sorted keys, compact, UTF-8): the same content is
        # always the same body, so the key never meets a byte-different twin.
        body = canonical_json({"model": model, "input": input}).encode()
        try:
            response, parsed = await self._request(
                "POST",
                "tasks",
                content=body,
                headers={"Idempotency-Key": idempotency_key, "Content-Type": "application/json"},
            )
        except TaskRejected as rejected:
            if rejected.status_code == 409 and not rejected.maybe_sent:
                raise TaskRejected(
                    409,
                    (
                        f"the idempotency key {idempotency_key} was already used with different "
                        f"content (HTTP 409: {rejected.message}); the API will not run this "
                        "request under that key. `mvbatch run --retry-failed` submits it under a "
                        "new key"
                    ),
                    maybe_sent=False,
                ) from None
            raise
        return parse_task(parsed, response)

    async def get(self, task_id: str) -> TaskState:
        """GET /tasks/{task_id}."""
        response, parsed = await self._request("GET", f"tasks/{task_id}")
        return parse_task(parsed, response)

    async def events(self, task_id: str, deadline: float = EVENTS_DEADLINE) -> Any:
        """GET /tasks/{task_id}/events: the server's history of the task, as sent.

        Diagnostics only: one attempt, no retry budget spent, a hard deadline.
        A body that is not JSON is kept as (truncated) text. Raises
        `ApiUnavailable` when the call fails or times out, `TaskRejected` on
        a 4xx, `AuthError` on 401/403.
        """
        path = f"tasks/{task_id}/events"
        self.counts["GET"] += 1
        try:
            response = await asyncio.wait_for(self.http.request("GET", path), deadline)
        except TimeoutError:
            raise ApiUnavailable(f"GET /{path} did not answer within {deadline:g}s") from None
        except httpx.HTTPError as error:
            raise ApiUnavailable(f"GET /{path} failed ({type(error).__name__})") from None
        code = response.status_code
        if code >= 300:
            self.counts[str(code)] += 1
            if code in (401, 403):
                raise AuthError(
                    f"the API refused the key (HTTP {code}: {server_message(response)})",
                    hint="check MINDVIDEO_API_KEY",
                )
            if 400 <= code < 500:
                raise TaskRejected(code, server_message(response))
            raise ApiUnavailable(f"GET /{path} failed (HTTP {code})")
        try:
            body = json.loads(response.content, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            return _scrubbed(response.content[:EVENTS_TEXT_LIMIT].decode("utf-8", "replace"))
        if isinstance(body, Mapping) and "events" in body:
            return _scrubbed(body["events"])
        return _scrubbed(body)

    async def refresh_outputs(self, task_id: str) -> list[str]:
        """Fresh output URLs of a succeeded task (signed URLs expire)."""
        state = await self.get(task_id)
        return list(state.urls) if state.status == "succeeded" else []

    # -- machinery

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Response, Any]:
        """One call, retried on RETRY_EXCEPTIONS and RETRY_STATUSES only.

        Returns the response and its JSON body (money parsed as Decimal). The
        body is parsed inside the retry loop, so a truncated or garbled answer
        is retried like a dropped connection.
        """
        policy = self.policy
        # Only a POST with an Idempotency-Key may be repeated; GETs are safe.
        repeatable = method == "GET" or bool(headers and headers.get("Idempotency-Key"))
        attempt = 0
        maybe_sent = False  # an earlier attempt may have reached the server
        while True:
            attempt += 1
            self.counts[method] += 1
            retry_after: float | None = None
            try:
                response = await self.http.request(method, path, content=content, headers=headers)
                code = response.status_code
                if code < 300:
                    parsed = _decode(response)  # raises MalformedResponse if garbled
                    policy.budget.earn()
                    self.answered = True
                    return response, parsed
                self.counts[str(code)] += 1
                if code in (401, 403):
                    raise AuthError(
                        f"the API refused the key (HTTP {code}: {server_message(response)})",
                        hint="check MINDVIDEO_API_KEY; nothing more was submitted, and "
                        "re-running resumes where this stopped",
                    )
                if not_the_api(response) and (method == "POST" or not self.answered):
                    missing = endpoint_missing(
                        method, response, str(self.http.base_url), maybe_sent
                    )
                    log.info(
                        "api.not_the_api",
                        method=method,
                        url=missing.url,
                        http_status=code,
                        maybe_sent=maybe_sent,
                    )
                    raise missing
                if not _retryable_status(code):
                    self.answered = True  # an error of the API's own
                    raise TaskRejected(code, server_message(response), maybe_sent=maybe_sent)
                if code == 429 and self.on_throttle is not None:
                    self.on_throttle()
                elif code != 429:
                    maybe_sent = True  # a 408 or 5xx: the request may have been acted on
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                reason = f"HTTP {code}: {server_message(response)}"
            except RETRY_EXCEPTIONS as error:
                self.counts[type(error).__name__] += 1
                maybe_sent = True  # a timeout or a broken answer: it may have arrived
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if not repeatable:
                raise ApiUnavailable(
                    f"{method} /{path} failed ({reason}) and cannot be repeated safely"
                )
            if attempt >= policy.attempts:
                raise ApiUnavailable(
                    f"{method} /{path} failed {attempt} times; last: {reason}",
                    hint="the API seems down; re-run later to resume",
                )
            if not policy.budget.spend():
                raise ApiUnavailable(
                    f"the API keeps failing (retry budget spent); last: {reason}",
                    hint="re-run later to resume where this stopped",
                )
            wait = policy.backoff(attempt, retry_after)
            self.counts["retry"] += 1
            log.info(
                "api.retry",
                method=method,
                path=path,
                attempt=attempt,
                reason=reason[:200],
                wait_s=round(wait, 3),
            )
            await policy.sleep(wait)
