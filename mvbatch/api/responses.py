"""What the task API's answers say: task bodies, error messages, and answers from elsewhere.

Owns: turning a response into a `TaskState` (documented fields only, extras
ignored, tolerant of numbers sent as strings and of unknown statuses), the
person-readable message of an error body, and telling an answer of the task
API from one of something else at the base URL (`not_the_api`,
`endpoint_missing`). Pure functions of a response: no requests, no retries,
no state.

Server text is redacted here, at the boundary (see `server_message`).

The error body is undocumented: the message is read from `error.message`,
`error` (a string), `message`, `detail` or the raw text, whichever exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from mvbatch import logs
from mvbatch.api.retry import parse_retry_after
from mvbatch.errors import EndpointMissing, MalformedResponse

STATUSES = ("queued", "processing", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MESSAGE_LIMIT = 500
DOCUMENTED_BASE_URL = "https://api.mindvideo.ai/api/v1"
API_PATH = "/api/v1"  # how every documented base URL ends
EVENTS_TEXT_LIMIT = 4096  # bytes of a non-JSON events body kept as text


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
    """The task a decoded body describes; `MalformedResponse` when it describes none."""
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


def decode(response: httpx.Response) -> Any:
    """The JSON body, money as Decimal; `MalformedResponse` if it is not JSON."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedResponse(f"the body is not JSON ({error})") from None


def events_body(response: httpx.Response) -> Any:
    """The events of a task as sent (redacted): the `events` list, any JSON, or some text."""
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return _scrubbed(response.content[:EVENTS_TEXT_LIMIT].decode("utf-8", "replace"))
    if isinstance(body, Mapping) and "events" in body:
        return _scrubbed(body["events"])
    return _scrubbed(body)
