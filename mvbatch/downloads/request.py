"""One GET for one output, and what its answer means.

Owns: the state of an output on its way (`Transfer`: its URL, its attempts,
its size and deadline once known), one request (`get`): the Range asked, the
answer read (206 appends after a Range request, 200 restarts from 0, 416 on
a complete part, Content-Range, Content-Length, an encoding we did not ask
for), its body into the part file under `pace`, and the check of what
arrived (`verify`) before the part may be made final. Each way a request
fails is one exception here, which `fetch` turns into a retry, a fresh URL
or a reason:

    Refused ..... 401, 403, 404, 410: the URL expired or is refused
      NotVideo .. the answer is not a video (an error page, a JSON body)
    Broken ...... cut short, a 408/425/429/5xx, a bad range: another request may do
      Slow ...... `pace` cut it off: too slow, or past the deadline (`late`)
    Fatal ....... too large, not http(s): no request will help

Must not: retry, ask the API, touch the ledger, or make a file final
(`fetch` and `partfile` do).
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from mvbatch import logs
from mvbatch.downloads import verify
from mvbatch.downloads.naming import output_relpath
from mvbatch.downloads.pace import Bounds, Pace
from mvbatch.downloads.partfile import PartFile
from mvbatch.ledger import TaskRow

REFRESH_STATUSES = frozenset({401, 403, 404, 410})  # how expired or refused signed URLs answer
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class Refused(Exception):
    """The file host refused the URL (expired signature, gone): ask the API again."""

    words = "URL expired or refused; "


class NotVideo(Refused):
    """What arrived is not a video (an error page, a JSON body): ask the API again."""

    words = ""


class Broken(Exception):
    """The transfer stopped early or went wrong in a way a new request may fix."""


class Slow(Broken):
    """`pace` cut the transfer off: too slow (retried), or past its deadline (`late`)."""

    def __init__(self, words: str, *, late: bool) -> None:
        super().__init__(words)
        self.late = late


class Fatal(Exception):
    """No new request will help (too large, not a URL we may fetch)."""


@dataclass
class Transfer:
    """One output on its way: which task, where to, and how it went so far."""

    row: TaskRow
    idx: int
    url: str
    folder: Path
    attempts: int = 0
    refreshes: int = 0
    resumed: int = 0
    started: float = 0.0  # the loop's clock at the first request
    size: int | None = None  # the file's, once an answer said it
    deadline: float | None = None  # `pace`'s, for all attempts together, once the size is known
    slow: str | None = None  # why the last attempt cut off for its rate was

    @property
    def key(self) -> str:
        return self.row.key

    @functools.cached_property
    def relpath(self) -> str:
        return output_relpath(self.row, self.idx).as_posix()


async def get(
    client: httpx.AsyncClient, transfer: Transfer, part: PartFile, bounds: Bounds, max_bytes: int
) -> None:
    """One GET appending to the part file; returns when the file is complete, and a video.

    It runs under `pace`: too slow, or past the output's deadline, it ends
    as `Slow`.
    """
    check_url(transfer.url)
    headers = {"Accept-Encoding": "identity"}
    if part.have:
        headers["Range"] = f"bytes={part.have}-"
    pace: Pace | None = None
    try:
        async with asyncio.timeout(None) as guard:
            pace = Pace(bounds, guard, transfer.deadline, transfer.size)
            try:
                async with client.stream("GET", transfer.url, headers=headers) as response:
                    await _take(transfer, part, response, pace, bounds=bounds, max_bytes=max_bytes)
            finally:
                pace.close()
    except TimeoutError:
        if pace is None or pace.verdict is None:
            raise
        # Only `pace` reschedules the guard: this timeout is its verdict.
        if not pace.late:
            transfer.slow = pace.verdict
        raise Slow(pace.verdict, late=pace.late) from None


async def _take(
    transfer: Transfer,
    part: PartFile,
    response: httpx.Response,
    pace: Pace,
    *,
    bounds: Bounds,
    max_bytes: int,
) -> None:
    """What one answer means, and its body into the part file."""
    status, asked, host = response.status_code, part.have, host_of(transfer.url)
    if status in REFRESH_STATUSES:
        raise Refused(f"HTTP {status} from {host}")
    if status == 416 and asked:
        if _range_total(response.headers) == asked:
            _check_arrived(part, None, ours=False)
            return  # the part was already complete when we were cut off
        part.restart()
        raise Broken("HTTP 416: the part is longer than the file; starting again")
    if status in RETRY_STATUSES or status >= 500:
        raise Broken(f"HTTP {status} from {host}")
    if status not in (200, 206) or (status == 206 and not asked):
        raise Fatal(f"unexpected HTTP {status} from {host}")
    content_type = response.headers.get("content-type")
    if verify.refused_type(content_type):  # before the part is touched
        raise NotVideo(verify.not_a_video(content_type, await _first_bytes(response)))
    if status == 206:
        start, total = _content_range(response.headers)
        if start != asked:
            part.restart()
            raise Broken(f"206 from offset {start} when {asked} was asked")
    else:
        # No Range asked, or the server ignored it: start from byte 0.
        part.restart()
        length = response.headers.get("content-length", "")
        total = int(length) if length.isdigit() else None
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        # We asked for identity. Lengths and ranges count encoded bytes;
        # decoded, neither can be checked, so take the whole body again.
        part.restart()
        total = None
    if total is not None and total > max_bytes:
        raise Fatal(f"the file is {total} bytes, over the {max_bytes}-byte cap")
    if total is not None and transfer.deadline is None:
        transfer.size = total
        transfer.deadline = transfer.started + bounds.deadline_for(total)
        pace.set_deadline(transfer.deadline, total)
    ours = part.have == 0  # this answer writes the file's first bytes
    await _body(part, response, pace, content_type if ours else None, max_bytes)
    if total is not None and part.have != total:
        if part.have > total:
            part.restart()
            raise Broken(f"got more bytes than the {total} announced; starting again")
        raise Broken(f"transfer ended at {part.have} of {total} bytes")
    _check_arrived(part, content_type, ours=ours)


async def _body(
    part: PartFile, response: httpx.Response, pace: Pace, first: str | None, max_bytes: int
) -> None:
    """The body into the part file. `first`: its Content-Type, when it starts the file."""
    refused = None
    try:
        async for chunk in response.aiter_bytes():
            if part.have + len(chunk) > max_bytes:
                raise Fatal(f"the file is over the {max_bytes}-byte cap")
            pace.add(len(chunk))
            if part.add(chunk):
                await part.write_batch()
            if first is not None and len(part.head) >= verify.HEAD_BYTES:
                # An error page is refused at its first bytes, not its last.
                refused, first = verify.not_a_video(first, part.head), None
                if refused is not None:
                    break
    finally:
        # What arrived before a broken connection is good: keep it for the
        # Range request that resumes the transfer.
        await part.flush()
    if refused is not None:
        part.restart()
        raise NotVideo(refused)


def _check_arrived(part: PartFile, content_type: str | None, *, ours: bool) -> None:
    """Before a complete part may be made final: does it start like a video?

    `ours`: this answer wrote its first bytes, so a refusal is the host's
    (a fresh URL may help). Otherwise they were on disk before (a part of an
    earlier run): the part is at fault, and the file is fetched again from 0.
    """
    refused = verify.not_a_video(content_type, part.head)
    if refused is None:
        return
    part.restart()
    if ours:
        raise NotVideo(refused)
    raise Broken("the part on disk does not start like a video; starting again")


async def _first_bytes(response: httpx.Response) -> bytes:
    """The first `verify.HEAD_BYTES` of a body refused for its type: what to say it was."""
    head = b""
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= verify.HEAD_BYTES:
            break
    return head[: verify.HEAD_BYTES]


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(headers: httpx.Headers) -> tuple[int, int | None]:
    found = _CONTENT_RANGE.match(headers.get("content-range", ""))
    if found is None:
        raise Broken("206 without a usable Content-Range")
    total = found.group(3)
    return int(found.group(1)), None if total == "*" else int(total)


def _range_total(headers: httpx.Headers) -> int | None:
    found = re.match(r"bytes\s+\*/(\d+)", headers.get("content-range", ""))
    return int(found.group(1)) if found else None


def check_url(url: str) -> None:
    """A URL we may fetch: http(s), and one httpx can parse (a server's typo must not
    become a traceback that stops every other download)."""
    try:
        scheme = urlsplit(url).scheme
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise Fatal(f"not a URL: {logs.redact_text(url[:60])!r}") from None
    if scheme not in ("http", "https"):
        raise Fatal(f"not an http(s) URL: {logs.redact_text(url[:60])!r}")


def host_of(url: str) -> str:
    """Signed URLs carry their signature in the query: logs and reasons get the host only."""
    try:
        return urlsplit(url).netloc or "?"
    except ValueError:
        return "?"


def describe(error: BaseException) -> str:
    """An error as one redacted line, for a reason or a log field."""
    return logs.redact_text(str(error) or type(error).__name__)
