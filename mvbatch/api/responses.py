"""What the task API's answers say: task bodies, error messages, and answers from elsewhere.

Owns: reading a body (`load_json`: at most `MAX_BODY_BYTES`, nested at most
`MAX_DEPTH` levels, else `MalformedResponse`), turning it into a `TaskState`
(documented fields only, extras ignored, tolerant of numbers sent as strings
and of unknown statuses; a body that names no task is `MalformedResponse`,
with the server's words), the person-readable message of an error body, and
telling an answer of the task API from one of something else at the base URL
(`not_the_api`, `endpoint_missing`). Pure functions of a response: no
requests, no retries, no state.

This is where server data enters mvbatch, so this is where the key is taken
out of it: every string a server sends that anything stores or shows (task
and request ids, output URLs, statuses, messages, events) passes through
`logs.redact_text` here, whatever field it came in. An output URL that
carried the key is kept with `[redacted]` in its place (never fetched with
the key: the downloader asks the API for a fresh one if it is refused). A
task id that carries the key can be neither stored nor used to poll: that
answer is malformed.

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
MESSAGE_LIMIT = 500  # characters of an error body's message
ERROR_LIMIT = 2000  # characters of a task's failure message
WORDS_LIMIT = 300  # characters of a malformed body quoted in its error
IDENT_LIMIT = 256  # characters of a task id or a request id
STATUS_LIMIT = 80  # characters of a status
# An answer of the task API is a few hundred bytes and 4 levels deep: anything
# beyond these is not one, and is never parsed further (a body of a million
# nested brackets would exhaust the interpreter's recursion).
MAX_BODY_BYTES = 1 << 20
MAX_DEPTH = 32
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
    # The server's words on a task that failed, was cancelled or is in a
    # status the docs do not list (`documented` is False); None otherwise.
    error: str | None = None
    raw_status: str = ""  # as sent (redacted, at most STATUS_LIMIT characters)
    # Undocumented but common: the server's own created/updated times give the
    # task's true latency, better than our polling can measure. None if absent.
    server_seconds: float | None = None
    replayed: bool = False  # the POST returned an existing task (same key)
    retry_after: float | None = None  # a polling hint sent with a 200

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def documented(self) -> bool:
        """Is the status as sent one the API docs list?"""
        return self.raw_status.strip().lower() in STATUSES


def parse_task(body: Any, response: httpx.Response | None = None) -> TaskState:
    """The task a decoded body describes, every string redacted; `MalformedResponse`
    (with the server's words) when it describes none."""
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"the answer is not a task (a JSON {_kind(body)}): {words(body)}")
    task_id = _ident(body.get("task_id"))
    raw_status = body.get("status")
    if not task_id:
        raise MalformedResponse(f"the answer is not a task (no task_id): {words(body)}")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise MalformedResponse(f"the answer is not a task (no status): {words(body)}")
    _check_task_id(task_id, body)
    raw_status = _redacted(raw_status, STATUS_LIMIT)
    status = raw_status.strip().lower()
    documented = status in STATUSES
    if not documented:
        status = "processing"  # tolerant: an unknown state is not an end state
    headers = response.headers if response is not None else httpx.Headers()
    request_id = _ident(body.get("request_id")) or headers.get("x-request-id")
    telling = status in ("failed", "cancelled") or not documented
    error = _error_text(body) if telling else None
    return TaskState(
        task_id=task_id,
        status=status,
        raw_status=raw_status,
        request_id=None if request_id is None else _redacted(request_id, IDENT_LIMIT),
        cost_estimate=_money(body.get("cost_estimate")),
        cost_actual=_money(body.get("cost_actual")),
        urls=tuple(logs.redact_text(url) for url in _video_urls(body.get("output"))),
        error=None if error is None else _redacted(error, ERROR_LIMIT),
        server_seconds=_server_seconds(body) if status in TERMINAL else None,
        replayed=headers.get("idempotent-replayed", "").lower() == "true",
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


def _check_task_id(task_id: str, body: Mapping[str, Any]) -> None:
    """A task id is stored and put in the path of every poll: it must be usable as both."""
    if logs.redact_text(task_id) != task_id:
        raise MalformedResponse(
            "the answer's task_id carries the API key: it can be neither stored nor polled"
        )
    if (
        len(task_id) > IDENT_LIMIT
        or task_id.strip(".") == ""
        or not task_id.isprintable()
        or task_id != task_id.strip()
    ):
        raise MalformedResponse(f"the answer's task_id is not an identifier: {words(body)}")


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean"}.get(type(value), "value")


def _redacted(text: str, limit: int) -> str:
    """Server text as it may be stored: the key taken out first, then cut to `limit`."""
    return logs.redact_text(text)[:limit]


def words(value: Any) -> str:
    """What a server sent, for a message: redacted, on one line, cut short."""
    # Redacted whole, then cut: a cut first could halve a key that redaction
    # would then no longer recognise. (Bodies are already read to MAX_BODY_BYTES.)
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    shown = " ".join(logs.redact_text(text).split()) or "(an empty body)"
    return shown if len(shown) <= WORDS_LIMIT else shown[: WORDS_LIMIT - 1] + "…"


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
    """Decoded server JSON with the key (and credential shapes) taken out of every string,
    names included (it is stored). `load_json` bounded its depth."""
    if isinstance(value, str):
        return logs.redact_text(value)
    if isinstance(value, Mapping):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def server_message(response: httpx.Response) -> str:
    """Whatever message the server sent, for a person; never empty."""
    text = ""
    try:
        text = response.text
        message = _error_text(load_json(response.content))
    except (MalformedResponse, UnicodeDecodeError):
        message = None
    if not message:
        message = " ".join(text.split()) or response.reason_phrase or "no message"
    # Redacted here, at the boundary, because this text is stored in the
    # ledger and printed in reports: a proxy echoing our headers must not
    # carry the key into them. Redacted whole, then cut, so that no key is
    # ever halved into a shape redaction cannot recognise.
    return logs.redact_text(message)[:MESSAGE_LIMIT]


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
        body = load_json(response.content)
    except MalformedResponse:
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


def load_json(content: bytes) -> Any:
    """A body as JSON, money as Decimal, if it could be an answer of the API at all.

    `MalformedResponse`, quoting the body, when it is larger than
    `MAX_BODY_BYTES`, not JSON, or nested deeper than `MAX_DEPTH` levels
    (Python's own parser gives up with RecursionError somewhat deeper: that is
    caught too, never let out).
    """
    if len(content) > MAX_BODY_BYTES:
        raise MalformedResponse(
            f"the answer is larger than {MAX_BODY_BYTES // 1024} KiB: {words(content)}"
        )
    nested = f"the answer's JSON nests deeper than {MAX_DEPTH} levels: {words(content)}"
    try:
        value = json.loads(content, parse_float=Decimal)
    except RecursionError:
        raise MalformedResponse(nested) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedResponse(f"the body is not JSON ({error}): {words(content)}") from None
    if _deeper_than(value, MAX_DEPTH):
        raise MalformedResponse(nested)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Does `value` nest arrays and objects more than `limit` levels deep? (No recursion.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def decode(response: httpx.Response) -> Any:
    """The JSON body, money as Decimal; `MalformedResponse` if it cannot be an answer."""
    return load_json(response.content)


def events_body(response: httpx.Response) -> Any:
    """The events of a task as sent (redacted): the `events` list, any JSON, or some text."""
    try:
        body = load_json(response.content)
    except MalformedResponse:
        text = _scrubbed(response.content.decode("utf-8", "replace"))
        return text[:EVENTS_TEXT_LIMIT]
    if isinstance(body, Mapping) and "events" in body:
        return _scrubbed(body["events"])
    return _scrubbed(body)
