"""A lean HTTP/1.1 transport for the files client: output videos, read in bulk.

Why it exists: through httpcore, h11 and anyio, every read of a response body
costs a turn of four layers and several copies of its bytes, about as much
CPU per GB as all of curl (BENCHMARKS.md). Here one asyncio `Protocol` hands
the bytes the kernel received straight to httpx's response stream, and the
body's framing is counted off, not parsed byte by byte.

Owns: connections (plain TCP or TLS with httpx's own default certificate
checks), keep-alive reuse per origin with an idle expiry, the request line
and headers on the wire, the response head, and the body's framing:
Content-Length, chunked, or until the server closes. Everything above the
wire stays with httpx: redirects, headers, cookies, decoding, timeouts'
values. Errors are httpx's own exception types, so callers cannot tell the
two transports apart.

Must not: be used behind a proxy (it speaks to origins only;
`Endpoint.files_client` keeps httpx's transport when the environment names a
proxy), speak HTTP/2, send a request body, or reuse a connection whose
response was not read to its end.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple

import httpx

HEAD_LIMIT = 64 << 10  # the most bytes a response head may take (h11's default too)
_PAUSE_BYTES = 1 << 20  # received and not yet read: stop reading the socket above this
_RESUME_BYTES = 256 << 10
_LINE_LIMIT = 4 << 10  # a chunk-size line or a trailer line
_INTERIM_LIMIT = 16  # 1xx responses before the final one
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: (.*))?")
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_LENGTH = re.compile(rb"[0-9]{1,18}")  # 10^18 bytes: far past any cap, and int() is safe
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY_STATUSES = frozenset({204, 304})
_SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS"})

Origin = tuple[str, str, int]  # scheme, host, port


class _Closed(Exception):
    """The connection ended before any byte of the response: a reused one may just be stale."""


class _Protocol(asyncio.Protocol):
    """Bytes as the kernel hands them over, queued for one reader, with flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the reader's side

    @property
    def usable(self) -> bool:
        """Idle and still open, with nothing unexpected received."""
        return (
            not self._eof
            and not self._chunks
            and self.transport is not None
            and not self.transport.is_closing()
        )

    async def read(self, seconds: float | None) -> bytes:
        """The next bytes received; b"" once the peer has closed."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise httpx.ReadError(str(self._error) or type(self._error).__name__)
                return b""
            await self._wait(seconds)
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered <= _RESUME_BYTES and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put back what belongs to the next part of the message."""
        if data:
            self._chunks.appendleft(data)
            self._buffered += len(data)

    async def _wait(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out waiting for the server"))


class _Connection:
    def __init__(self, origin: Origin, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self.origin = origin
        self.transport = transport
        self.protocol = protocol
        self.idle_since = 0.0

    def close(self) -> None:
        self.transport.close()


class FilesTransport(httpx.AsyncBaseTransport):
    """Direct HTTP/1.1 to origin servers, at most `max_connections` requests at once."""

    def __init__(
        self,
        *,
        max_connections: int = 16,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method.upper()
        origin = _origin(request.url)
        head = _request_head(request)
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        if body:
            raise httpx.LocalProtocolError("the files transport sends no request body")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        await _acquire(self._slots, timeouts.get("pool"))
        try:
            connection, status, version, reason, headers = await self._exchange(
                origin, method, head, timeouts
            )
        except BaseException:
            self._slots.release()
            raise
        try:
            framing = _framing(method, status, version, headers)
        except BaseException:
            connection.close()
            self._slots.release()
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, connection, framing, read_timeout),
            extensions={"http_version": b"HTTP/1." + version, "reason_phrase": reason},
        )

    async def _exchange(
        self, origin: Origin, method: str, head: bytes, timeouts: dict[str, float | None]
    ) -> tuple[_Connection, int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """Send the request head and read the response head, on a pooled or new connection."""
        for retry in (False, True):
            connection, reused = await self._connection(origin, timeouts, fresh=retry)
            try:
                connection.transport.write(head)
                status, version, reason, headers = await _read_head(
                    connection.protocol, timeouts.get("read")
                )
                return connection, status, version, reason, headers
            except _Closed:
                connection.close()
                # A kept-alive connection the server closed as we sent: once
                # more on a fresh one, for requests safe to repeat.
                if not (reused and not retry and method in _SAFE_TO_RETRY):
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    ) from None
            except BaseException:
                connection.close()
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def aclose(self) -> None:
        self._closed = True  # bodies still being read close their connections when done
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0

    # -- the pool

    async def _connection(
        self, origin: Origin, timeouts: dict[str, float | None], *, fresh: bool
    ) -> tuple[_Connection, bool]:
        idle = None if fresh else self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.protocol.usable and now - connection.idle_since < self._keepalive_expiry:
                return connection, True
            connection.close()
        return await self._connect(origin, timeouts.get("connect")), False

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        context = self._tls() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                transport, protocol = await loop.create_connection(
                    _Protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                    # Happy Eyeballs (RFC 8305), as httpx's own transport
                    # does: a black-holed IPv6 address must not eat the
                    # whole connect timeout before IPv4 is tried.
                    happy_eyeballs_delay=0.25,
                    interleave=1,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, ssl.SSLError, UnicodeError) as error:
            # UnicodeError: a host name the IDNA codec refuses (a label over
            # 63 characters), which any server can send in a redirect.
            raise httpx.ConnectError(str(error) or type(error).__name__) from error
        assert isinstance(transport, asyncio.Transport)
        return _Connection(origin, transport, protocol)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # The same trust store and environment rules httpx itself uses.
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _release(self, connection: _Connection) -> None:
        """The body is done: keep the connection for the next request, or close it."""
        if connection.protocol.usable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
            self._trim()
        else:
            connection.close()
        assert self._slots is not None
        self._slots.release()

    def _trim(self) -> None:
        """At most `max_connections` idle ones: the longest idle go first."""
        while self._idle_count > self._max_connections:
            oldest = min((c for cs in self._idle.values() for c in cs), key=lambda c: c.idle_since)
            self._idle[oldest.origin].remove(oldest)
            self._idle_count -= 1
            oldest.close()


class _Body(httpx.AsyncByteStream):
    """The response body, framed; gives the connection back when read to its end."""

    def __init__(
        self, pool: FilesTransport, connection: _Connection, framing: Framing, seconds: float | None
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._framing = framing
        self._seconds = seconds
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        protocol = connection.protocol
        kind, length, _ = self._framing
        if kind == "length":
            parts = _sized(protocol, length, self._seconds)
        elif kind == "chunked":
            parts = _chunked(protocol, self._seconds)
        else:
            parts = _until_closed(protocol, self._seconds)
        async for part in parts:
            yield part
        self._complete = True
        await self.aclose()

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not (self._complete and self._framing.persistent):
            # Unread bytes, or a server that will close: never reused.
            connection.close()
        self._pool._release(connection)


# -- the request


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(
            f"the files transport speaks http and https, not {scheme!r}"
        )
    host = url.raw_host.decode("ascii")
    if not host:
        raise httpx.UnsupportedProtocol("the URL has no host")
    return scheme, host, url.port if url.port is not None else (443 if scheme == "https" else 80)


def _request_head(request: httpx.Request) -> bytes:
    method = request.method.encode("ascii")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method) or _UNSAFE_TARGET.search(target):
        raise httpx.LocalProtocolError("an invalid request method or target")
    lines = [method + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        # httpx lets a CR or LF through in a header value; on the wire it
        # would start a header of the server's choosing.
        if not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value or b"\0" in value:
            raise httpx.LocalProtocolError(f"an invalid header: {name[:40]!r}")
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


async def _acquire(slots: asyncio.Semaphore, seconds: float | None) -> None:
    try:
        async with asyncio.timeout(seconds):
            await slots.acquire()
    except TimeoutError:
        raise httpx.PoolTimeout("timed out waiting for a free connection") from None


# -- the response head


async def _read_head(
    protocol: _Protocol, seconds: float | None
) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Status, minor version ("0"/"1"), reason and headers of the final response."""
    received = bytearray()
    interim = 0  # 1xx responses before the final one
    while True:
        first = interim == 0
        end = _head_end(received)
        while end < 0:
            if len(received) > HEAD_LIMIT:
                break
            try:
                data = await protocol.read(seconds)
            except httpx.ReadError:
                if received or not first:
                    raise
                raise _Closed from None  # reset before a byte of the answer: maybe stale
            if not data:
                if received or not first:
                    raise httpx.RemoteProtocolError(
                        "the connection closed inside the response head"
                    )
                raise _Closed
            received += data
            end = _head_end(received)
        if end < 0 or end > HEAD_LIMIT:
            raise httpx.RemoteProtocolError("the response head is too long")
        head, rest = bytes(received[:end]), bytes(received[end:])
        status, version, reason, headers = _parse_head(head)
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("the server switched protocols unasked")
            interim += 1
            if interim > _INTERIM_LIMIT:
                raise httpx.RemoteProtocolError(f"over {_INTERIM_LIMIT} interim (1xx) responses")
            received = bytearray(rest)  # an interim response (103 Early Hints): the next head
            continue
        protocol.unread(rest)
        return status, version, reason, headers


def _head_end(received: bytearray) -> int:
    """Where the body starts, or -1: after the first blank line (bare LFs tolerated, like h11)."""
    ends = [
        found + len(blank)
        for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n")
        if (found := received.find(blank)) >= 0
    ]
    return min(ends, default=-1)


def _parse_head(head: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    match = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if match is None:
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            # An obsolete folded continuation of the previous header's value.
            if not headers:
                raise httpx.RemoteProtocolError("the response head starts with a folded line")
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise httpx.RemoteProtocolError(f"an invalid header line: {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return int(match[2]), match[1], match[3] or b"", headers


class Framing(NamedTuple):
    kind: str  # "length", "chunked", or "close": the body runs until the server closes
    length: int  # for "length"
    persistent: bool  # may the connection carry another request afterwards


def _framing(
    method: str, status: int, version: bytes, headers: list[tuple[bytes, bytes]]
) -> Framing:
    """How the body ends (RFC 9112 §6.3), and whether the connection outlives it."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    tokens: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif lowered == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b",") if c.strip())
        elif lowered == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    # HTTP/1.1 persists unless told to close; HTTP/1.0 only when told to stay.
    persistent = b"close" not in tokens and (version == b"1" or b"keep-alive" in tokens)
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return Framing("length", 0, persistent)
    if codings:
        if codings != [b"chunked"]:
            # Any other transfer coding would reach the file still encoded
            # (httpx decodes Content-Encoding only): refuse it, as httpcore does.
            raise httpx.RemoteProtocolError(
                f"unsupported Transfer-Encoding: {b', '.join(codings)[:80]!r}"
            )
        # Chunked with a Content-Length as well, or from an HTTP/1.0 server:
        # chunked wins (RFC 9112 §6.3), but the connection is not trusted again.
        return Framing("chunked", 0, persistent and version == b"1" and not lengths)
    if lengths:
        if len(lengths) > 1 or not all(_LENGTH.fullmatch(v) for v in lengths):
            raise httpx.RemoteProtocolError("an invalid or conflicting Content-Length")
        return Framing("length", int(lengths.pop()), persistent)
    return Framing("close", 0, False)


# -- the body


async def _sized(protocol: _Protocol, length: int, seconds: float | None) -> AsyncIterator[bytes]:
    remaining = length
    while remaining:
        data = await protocol.read(seconds)
        if not data:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {length - remaining} bytes, expected {length})"
            )
        if len(data) > remaining:
            protocol.unread(data[remaining:])
            data = data[:remaining]
        remaining -= len(data)
        yield data


async def _chunked(protocol: _Protocol, seconds: float | None) -> AsyncIterator[bytes]:
    while True:
        line = await _line(protocol, seconds)
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_text):
            raise httpx.RemoteProtocolError(f"an invalid chunk size: {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            trailers = 0
            while line := await _line(protocol, seconds):  # nothing here needs trailers
                trailers += len(line)
                if trailers > HEAD_LIMIT:
                    raise httpx.RemoteProtocolError("the trailers are too long")
            return
        async for part in _sized(protocol, size, seconds):
            yield part
        if await _line(protocol, seconds):
            raise httpx.RemoteProtocolError("a chunk longer than its size")


async def _line(protocol: _Protocol, seconds: float | None) -> bytes:
    """One line (without its CRLF or LF) of a chunked body's framing."""
    received = b""
    while True:
        data = await protocol.read(seconds)
        if not data:
            raise httpx.RemoteProtocolError("peer closed connection inside a chunked body")
        end = data.find(b"\n")
        if end >= 0:
            protocol.unread(data[end + 1 :])
            line = received + data[:end]
            return line[:-1] if line.endswith(b"\r") else line
        received += data
        if len(received) > _LINE_LIMIT:
            raise httpx.RemoteProtocolError("a chunk-size line is too long")


async def _until_closed(protocol: _Protocol, seconds: float | None) -> AsyncIterator[bytes]:
    while data := await protocol.read(seconds):
        yield data
