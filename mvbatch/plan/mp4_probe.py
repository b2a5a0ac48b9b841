"""Probe a reference video's duration where it lives: a local file, a ``data:`` URI, a URL.

Owns the I/O around the sans-I/O parser in ``mp4.py``: each driver here is a
``read_at(offset, length)`` handed to :func:`mp4.probe_reader`, which asks for a few
small reads (at most 32 bytes each) at box boundaries.

* A local file is read with seek + small reads (:func:`probe_local`, :func:`local_duration`).
* A ``data:`` URI is decoded lazily, only where the parser reads (:func:`probe_data_uri`).
* A URL is probed with ``Range`` requests (:func:`probe_url_sync`): the first 64 KiB, then
  a few KiB at each box boundary beyond that, under a hard byte budget (8 MiB by default)
  that also caps a server which ignores ``Range`` and answers ``200`` with the whole body,
  a cap on requests, and a wall-clock deadline.

Must not: parse boxes (``mp4.py`` does), download or read whole files, or raise for bad
input or network trouble: every driver returns a :class:`mp4.ProbeResult`, with reason
``io``, ``network`` or ``http`` when the bytes could not be had.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import time
import urllib.parse
from collections.abc import Generator, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from mvbatch.plan.mp4 import ProbeResult, ProbeStop, Reason, probe_bytes, probe_reader

if TYPE_CHECKING:  # imported by `probe_url_sync`: a plan without URLs never loads httpx
    import httpx

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_TOTAL_TIMEOUT",
    "local_duration",
    "probe_data_uri",
    "probe_local",
    "probe_url_sync",
]

# First Range request: faststart files keep ftyp + moov well inside this.
FIRST_SPAN = 64 * 1024
# Later Range requests ask for this much at a box boundary, so a small moov right after
# mdat usually arrives together with its header: one round trip instead of two.
READAHEAD = 4 * 1024
# Range requests per URL. A non-faststart file usually needs two: the start, then moov.
MAX_REQUESTS = 32
# Bytes of content received per URL, whatever the server does (plus at most one piece).
DEFAULT_BUDGET = 8 * 1024 * 1024
# httpcore hands the body over in pieces of at most 64 KiB (its read size); one piece is
# the most a probe can overshoot its budget by. (iter_raw(chunk_size) would instead wait
# to fill each chunk, which is worse for a slow server.)

# Wall-clock cap per URL on top of the client's per-operation timeouts, which alone would
# let a server that drips one byte per read-timeout hold the planner for hours.
DEFAULT_TOTAL_TIMEOUT = 30.0


# ---------------------------------------------------------------------------------------
# Local files and data: URIs.
# ---------------------------------------------------------------------------------------


def probe_local(path: str | os.PathLike[str]) -> ProbeResult:
    """Probe a local file with seek + small reads; never reads the file through."""
    try:
        with Path(path).open("rb") as handle:

            def read_at(offset: int, length: int) -> bytes:
                try:
                    handle.seek(offset)
                    return handle.read(length)
                except OSError as exc:
                    raise ProbeStop(Reason.IO, f"cannot read {os.fspath(path)!r}: {exc}") from exc

            return probe_reader(read_at)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        return ProbeResult(None, Reason.IO, f"cannot open {os.fspath(path)!r}: {exc}")


def local_duration(path: str | os.PathLike[str]) -> Decimal | None:
    """Duration in seconds (ms precision) of a local MP4 file, or None."""
    return probe_local(path).duration


def probe_data_uri(uri: str) -> ProbeResult:
    """Probe a ``data:`` URI (``data:video/mp4;base64,...``; percent-encoding works too).

    Base64 is decoded lazily, four characters per three bytes, only where the parser reads,
    so a large inline video is not decoded (and its copy not held) just to find moov.
    """
    scheme, _, rest = uri.partition(":")
    meta, comma, payload = rest.partition(",")
    if scheme.strip().lower() != "data" or not comma:
        return ProbeResult(None, Reason.NOT_MP4, "not a data: URI")
    if not meta.lower().endswith(";base64"):
        return probe_bytes(urllib.parse.unquote_to_bytes(payload))
    text = "".join(payload.split())  # line breaks inside base64 are tolerated by decoders
    text += "=" * (-len(text) % 4)  # and so is missing padding
    decoded_size = len(text) // 4 * 3 - (len(text) - len(text.rstrip("=")))

    def read_at(offset: int, length: int) -> bytes:
        if offset >= decoded_size:
            return b""
        first_quad = offset // 3
        last_quad = -(-(offset + length) // 3)
        try:
            piece = base64.b64decode(text[first_quad * 4 : last_quad * 4], validate=True)
        except binascii.Error as exc:
            raise ProbeStop(Reason.NOT_MP4, f"data: URI is not valid base64 ({exc})") from None
        skip = offset - first_quad * 3
        return piece[skip : skip + length]

    return probe_reader(read_at)


# ---------------------------------------------------------------------------------------
# HTTP: the parser's small reads, served from a few Range requests.
# ---------------------------------------------------------------------------------------


def probe_url_sync(
    client: httpx.Client,
    url: str,
    *,
    budget: int = DEFAULT_BUDGET,
    total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
) -> ProbeResult:
    """Probe an http(s) URL with Range requests on a synchronous client.

    Per-operation timeouts, proxies and TLS settings come from ``client``; redirects are
    followed whatever the client's default, because reference videos often sit behind
    one. At most ``budget`` content bytes (plus one piece of at most 64 KiB) are
    received. The probe gives up once ``total_timeout`` seconds have passed, checked
    between network operations (each of which the client's own timeouts bound).
    ``bytes_read`` counts the bytes received, not only those the parser looked at.
    """
    import httpx

    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    ranges = _RangeReader(client, url, budget, deadline)
    try:
        result = probe_reader(ranges.read_at)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        result = ProbeResult(None, Reason.NETWORK, detail)
    finally:
        ranges.close()
    return replace(result, bytes_read=ranges.used)


class _RangeReader:
    """One URL as a ``read_at``: what is cached, what is known, what has been spent."""

    def __init__(self, client: httpx.Client, url: str, budget: int, deadline: float | None) -> None:
        self.client = client
        self.url = url
        self.budget = budget
        self.deadline = deadline
        self.size: int | None = None  # total length, once a response has told us
        self.chunks: list[tuple[int, bytes]] = []  # (offset, bytes) from 206 responses
        self.prefix: bytearray | None = None  # the body from byte 0, if Range was ignored
        self.prefix_done = False
        self.used = 0  # content bytes received
        self.requests = 0
        self.response_scope = contextlib.ExitStack()  # the open response, if any
        self.body: Iterator[bytes] = iter(())

    def close(self) -> None:
        self.response_scope.close()

    def read_at(self, offset: int, length: int) -> bytes:
        length = self._clip(offset, length)
        if length == 0:
            return b""
        if self.prefix is None:
            cached = self._cached(offset, length)
            if cached is not None and len(cached) == length:
                return cached
            self._fetch(offset, length)
        if self.prefix is not None:
            return self._stream_to(offset, length)
        length = self._clip(offset, length)
        return b"" if length == 0 else self._cached(offset, length) or b""

    def _clip(self, offset: int, length: int) -> int:
        return length if self.size is None else max(0, min(length, self.size - offset))

    def _cached(self, offset: int, length: int) -> bytes | None:
        for start, data in self.chunks:
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + length]
        return None

    def _fetch(self, offset: int, length: int) -> None:
        if self.requests >= MAX_REQUESTS:
            raise ProbeStop(Reason.LIMIT, f"more than {MAX_REQUESTS} Range requests")
        room = self.budget - self.used
        if length > room:
            raise ProbeStop(Reason.LIMIT, f"would read more than {self.budget} bytes")
        # length <= room and (once the size is known) length <= size - offset, so the
        # span never drops below what the parser asked for.
        span = max(length, FIRST_SPAN if self.requests == 0 else READAHEAD)
        if self.size is not None:
            span = min(span, self.size - offset)
        span = min(span, room)
        self.requests += 1
        response = self._open(offset, offset + span - 1)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            # Ranges of an encoded body are ranges of the encoding: offsets would lie.
            raise ProbeStop(Reason.HTTP, f"server sent Content-Encoding {encoding!r}")
        if response.status_code == 206:
            self._take_partial(response.headers, offset, span)
        elif response.status_code == 200:
            # The server ignores Range and sends everything from byte 0. Keep reading it
            # only as far as the parser needs and the budget allows; then drop it.
            self.prefix = bytearray()
            length_header = response.headers.get("content-length", "")
            if length_header.isdigit():
                self.size = int(length_header)
        elif response.status_code == 416:
            # Nothing at or past `offset`; "bytes */N" says where the file ends, and
            # without it `offset` is still a safe bound.
            total = _content_range_total(response.headers)
            self.size = offset if total is None else min(total, offset)
        else:
            raise ProbeStop(Reason.HTTP, f"HTTP {response.status_code}")

    def _take_partial(self, headers: httpx.Headers, offset: int, span: int) -> None:
        first, last, total = _content_range(headers)
        if first != offset or last < first:
            raise ProbeStop(Reason.HTTP, f"asked for byte {offset}, got range {first}-{last}")
        if total is not None:
            self.size = total
        declared = last - first + 1
        want = min(declared, span)
        body = bytearray()
        while len(body) < want:
            chunk = self._next_chunk()
            if not chunk:
                raise ProbeStop(Reason.HTTP, "partial response ended early")
            self.used += len(chunk)
            body += chunk
        if want == declared and len(body) == want:
            # Let the response see its end so the connection can go back to the pool.
            self.used += len(self._next_chunk())
        self.chunks.append((offset, bytes(body[:want])))

    def _stream_to(self, offset: int, length: int) -> bytes:
        prefix = self.prefix
        if prefix is None:  # pragma: no cover - callers check
            raise TypeError("no streamed body")
        need = offset + length
        while len(prefix) < need and not self.prefix_done:
            if self.used + need - len(prefix) > self.budget:
                # Checked before reading: a 20 MB mdat declared in the first bytes ends
                # the probe at once instead of after the budget has been spent.
                raise ProbeStop(
                    Reason.LIMIT,
                    f"server ignores Range and moov is past the first {self.budget} bytes",
                )
            chunk = self._next_chunk()
            if not chunk:
                self.prefix_done = True
                self.size = len(prefix)
                break
            self.used += len(chunk)
            prefix += chunk
        return bytes(prefix[offset:need])

    def _open(self, start: int, end: int) -> httpx.Response:
        """Start a GET for bytes ``start..end`` (inclusive), closing the previous one."""
        self._check_deadline()
        self.response_scope.close()  # a finished or abandoned earlier response
        # identity: byte ranges must be ranges of the file, not of a gzip of it.
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        response = self.response_scope.enter_context(
            self.client.stream("GET", self.url, headers=headers, follow_redirects=True)
        )
        body = response.iter_raw()
        if isinstance(body, Generator):  # close it before its response, not at GC
            self.response_scope.callback(body.close)
        self.body = body
        return response

    def _next_chunk(self) -> bytes:
        """The next piece of the open response's body, ``b""`` at its end."""
        self._check_deadline()
        return next(self.body, b"")

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ProbeStop(Reason.LIMIT, "took longer than the total timeout")


def _content_range(headers: httpx.Headers) -> tuple[int, int, int | None]:
    """Parse ``Content-Range: bytes first-last/total`` (total may be ``*``)."""
    value = headers.get("content-range", "")
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    try:
        if unit.lower() != "bytes":
            raise ValueError(unit)
        return int(first), int(last), None if total.strip() == "*" else int(total)
    except ValueError:
        raise ProbeStop(Reason.HTTP, f"unusable Content-Range {value!r}") from None


def _content_range_total(headers: httpx.Headers) -> int | None:
    _, _, total = headers.get("content-range", "").rpartition("/")
    return int(total) if total.strip().isdigit() else None
