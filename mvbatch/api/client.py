"""The HTTP client of the MindVideo task API: the documented calls and what each answer becomes.

Owns: the three documented calls (`POST /tasks`, `GET /tasks/{id}`,
`GET /tasks/{id}/events`), what each HTTP answer becomes, and what a call's
attempts leave behind (whether an unanswered attempt may have been acted on;
whether the API has answered this client at all). When to try again and how
long to wait is `mvbatch.api.retry`'s, reading bodies `mvbatch.api.responses`'.
It must not know about the ledger, plans or budgets, and it never sees the
API key: the `httpx.AsyncClient` it is given (`Endpoint.api_client()`)
carries the Authorization header.

What each answer becomes:

    2xx, a task             the call's result; the retry budget earns
    2xx, not a task         retried (MalformedResponse): not JSON, no task_id or
                            status, larger than MAX_BODY_BYTES, nested deeper
                            than MAX_DEPTH, a task id carrying the key; when
                            retries run out, ApiUnavailable quoting the server
    408, 5xx                retried; the request may have been acted on
    429                     retried; `on_throttle()` first (the executor lowers
                            its concurrency)
    timeout, network error  retried; the request may have arrived (so is an
                            answer not read to its end within ATTEMPT_DEADLINE)
    other transport error   ApiUnavailable     the run stops (exit 4)
    401, 403                AuthError          the run stops (exit 4)
    not the API             EndpointMissing    the run stops (exit 4), see below
    409                     TaskRejected       the key was used with other content
    other 4xx               TaskRejected       with the server's own message
    retries run out         ApiUnavailable     the run stops, resumable (exit 4)

Every answer is read to at most MAX_BODY_BYTES + 1 bytes and parsed inside
its attempt, so garbage is retried like a 5xx and nothing a server sends can
make a call unbounded in memory or time.

A POST is retried only because it carries its Idempotency-Key: the API
answers a repeated key with the original task and no new charge. Once an
attempt went unanswered (a timeout, a dropped connection, a 408 or 5xx, a
garbled 2xx), a POST may have created its task even if a later attempt is
refused: the refusal says so (`TaskRejected.maybe_sent`,
`EndpointMissing.maybe_sent`), and the executor then records the task as
failed at our estimate, never as rejected at $0.

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
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from mvbatch import logs
from mvbatch.api.responses import (
    MAX_BODY_BYTES,
    TaskState,
    decode,
    endpoint_missing,
    events_body,
    not_the_api,
    parse_task,
    server_message,
)
from mvbatch.api.retry import RETRY_EXCEPTIONS, RetryPolicy, never, retryable_status, transient
from mvbatch.errors import ApiUnavailable, AuthError, MalformedResponse, TaskRejected
from mvbatch.plan.keys import canonical_json

MAX_CONNECTIONS = 8
EVENTS_DEADLINE = 10.0  # seconds: the events call is diagnostics, never worth waiting for
# Seconds for one attempt, its answer read to the end. httpx's timeouts bound
# each read, not the sum of them: a server trickling a byte a second would
# otherwise hold a call for ever.
ATTEMPT_DEADLINE = 120.0
# Headers that describe the bytes on the wire, not the (decoded, capped) body kept.
_HEADERS_OF_THE_WIRE = frozenset({"content-encoding", "content-length", "transfer-encoding"})
T = TypeVar("T")
# What a failed attempt may raise that `retry.transient` retries: our
# HTTPStatusError for a 408, 429 or 5xx, and the network's and the body's.
_RETRIED: tuple[type[Exception], ...] = (httpx.HTTPStatusError, *RETRY_EXCEPTIONS)


def pool_size(concurrency: int) -> int:
    """How many connections to keep to the API for `concurrency` tasks in flight.

    Tasks in flight spend nearly all their time waiting between polls, so a
    few connections carry many tasks. Fewer is also cheaper: httpcore checks
    every pooled connection's socket on each request, and that bookkeeping,
    not the request itself, dominated the client's CPU with 64 connections.
    """
    return max(1, min(concurrency, MAX_CONNECTIONS))


log = logs.get("mvbatch.api.client")


class ApiClient:
    """The task API over one pooled `httpx.AsyncClient` (which holds the auth header)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        on_throttle: Callable[[], None] | None = None,
    ) -> None:
        self.http = http
        # One policy, so one retry budget, for every call of this client.
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
            return await self._request(
                "POST",
                "tasks",
                _task,
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

    async def get(self, task_id: str) -> TaskState:
        """GET /tasks/{task_id}: the id is one path segment, whatever it holds."""
        return await self._request("GET", f"tasks/{quote(task_id, safe='')}", _task)

    async def events(self, task_id: str, deadline: float = EVENTS_DEADLINE) -> Any:
        """GET /tasks/{task_id}/events: the server's history of the task, as sent.

        Diagnostics only: one attempt, no retry budget spent, a hard deadline.
        A body that is not JSON is kept as (truncated) text. Raises
        `ApiUnavailable` when the call fails or times out, `TaskRejected` on
        a 4xx, `AuthError` on 401/403.
        """
        path = f"tasks/{quote(task_id, safe='')}/events"
        self.counts["GET"] += 1
        try:
            response = await asyncio.wait_for(self._exchange("GET", path), deadline)
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
        return events_body(response)

    async def refresh_outputs(self, task_id: str) -> list[str]:
        """Fresh output URLs of a succeeded task (signed URLs expire)."""
        state = await self.get(task_id)
        return list(state.urls) if state.status == "succeeded" else []

    # -- machinery

    async def _request(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], T],
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """One call, its attempts run by the retry policy; what `read` makes of the 2xx.

        `read` runs inside the attempt, so a truncated, garbled or not-a-task
        answer (`MalformedResponse`) is retried like a dropped connection.
        Raises `ApiUnavailable` when the policy gives up on a retryable
        failure, with the last answer's words, and for any other failure of
        the transport: nothing of httpx escapes.
        """
        # Only a POST with an Idempotency-Key may be repeated; GETs are safe.
        repeatable = method == "GET" or bool(headers and headers.get("Idempotency-Key"))

        def before_retry(error: Exception, attempt: int, wait: float) -> None:
            self.counts["retry"] += 1
            log.info(
                "api.retry",
                method=method,
                path=path,
                attempt=attempt,
                reason=_reason(error)[:200],
                wait_s=round(wait, 3),
            )

        retries = self.policy.retrying(
            on=transient if repeatable else never, before_retry=before_retry
        )
        maybe_sent = False  # an earlier attempt may have reached the server
        try:
            async for attempt in retries:
                with attempt:
                    self.counts[method] += 1
                    try:
                        return await self._attempt(
                            method, path, content, headers, maybe_sent, read=read
                        )
                    except httpx.HTTPStatusError as error:
                        # A 408 or 5xx may have been acted on; a 429 was turned away.
                        maybe_sent = maybe_sent or error.response.status_code != 429
                        raise
                    except RETRY_EXCEPTIONS as error:
                        self.counts[type(error).__name__] += 1
                        maybe_sent = True  # a timeout or a broken answer: it may have arrived
                        raise
        except _RETRIED as error:
            reason = _reason(error)
            if not repeatable:
                raise ApiUnavailable(
                    f"{method} /{path} failed ({reason}) and cannot be repeated safely"
                ) from None
            if retries.out_of_budget:
                raise ApiUnavailable(
                    f"the API keeps failing (retry budget spent); last: {reason}",
                    hint="re-run later to resume where this stopped",
                ) from None
            if isinstance(error, MalformedResponse):
                again = (
                    "its task is sent again under the same idempotency key, never charged twice"
                    if method == "POST"
                    else "the task is asked about again, never sent twice"
                )
                raise ApiUnavailable(
                    f"{method} /{path} was answered {retries.attempt} times with something "
                    f"that is not a task of the API; last: {reason}",
                    hint=f"re-run later to resume: {again}",
                ) from None
            raise ApiUnavailable(
                f"{method} /{path} failed {retries.attempt} times; last: {reason}",
                hint="the API seems down; re-run later to resume",
            ) from None
        except httpx.HTTPError as error:  # nothing to retry: a proxy, a protocol, a URL
            raise ApiUnavailable(
                f"{method} /{path} failed ({_reason(error)})",
                hint="check the network, the proxy settings and MINDVIDEO_BASE_URL; re-run "
                "to resume",
            ) from None
        raise AssertionError("unreachable: stamina gives up by raising the last error")

    async def _attempt(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        maybe_sent: bool,
        *,
        read: Callable[[httpx.Response], T],
    ) -> T:
        """One request and what its answer becomes; a retryable status is an HTTPStatusError."""
        response = await self._exchange(method, path, content, headers)
        code = response.status_code
        if code < 300:
            result = read(response)  # raises MalformedResponse: not an answer
            if self.policy.budget is not None:
                self.policy.budget.earn()
            self.answered = True
            return result
        self.counts[str(code)] += 1
        if code in (401, 403):
            raise AuthError(
                f"the API refused the key (HTTP {code}: {server_message(response)})",
                hint="check MINDVIDEO_API_KEY; nothing more was submitted, and "
                "re-running resumes where this stopped",
            )
        if not_the_api(response) and (method == "POST" or not self.answered):
            missing = endpoint_missing(method, response, str(self.http.base_url), maybe_sent)
            log.info(
                "api.not_the_api",
                method=method,
                url=missing.url,
                http_status=code,
                maybe_sent=maybe_sent,
            )
            raise missing
        if not retryable_status(code):
            self.answered = True  # an error of the API's own
            raise TaskRejected(code, server_message(response), maybe_sent=maybe_sent)
        if code == 429 and self.on_throttle is not None:
            self.on_throttle()
        raise httpx.HTTPStatusError(
            f"HTTP {code}: {server_message(response)}", request=response.request, response=response
        )

    async def _exchange(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request; its answer read to at most MAX_BODY_BYTES + 1 bytes, within
        ATTEMPT_DEADLINE. What is kept is a complete response of those bytes (a
        body cut there is too large to be an answer: `load_json` says so)."""
        request = self.http.build_request(method, path, content=content, headers=headers)
        try:
            async with asyncio.timeout(ATTEMPT_DEADLINE):
                response = await self.http.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            break  # never read an endless answer to its end
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no complete answer within {ATTEMPT_DEADLINE:g}s", request=request
            ) from None
        kept = [(k, v) for k, v in response.headers.multi_items() if k not in _HEADERS_OF_THE_WIRE]
        extensions = {k: v for k, v in response.extensions.items() if k == "reason_phrase"}
        return httpx.Response(
            response.status_code,
            headers=kept,
            content=bytes(body[: MAX_BODY_BYTES + 1]),
            request=request,
            extensions=extensions,
        )


def _task(response: httpx.Response) -> TaskState:
    """A 2xx of POST or GET /tasks: the task it describes, or `MalformedResponse`."""
    return parse_task(decode(response), response)


def _reason(error: Exception) -> str:
    """A failed attempt, for a log line or the message of `ApiUnavailable`."""
    if isinstance(error, httpx.HTTPStatusError | MalformedResponse):
        return str(error)  # "HTTP 503: <the server's message>", or what the 2xx was
    text = logs.redact_text(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
