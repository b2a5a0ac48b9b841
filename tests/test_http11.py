"""The files transport (mvbatch.downloads.http11) against scripted servers on loopback.

Each test runs a real asyncio server on 127.0.0.1 that answers every request
with bytes written by hand, so framing, reuse and failures are exactly the
ones named; the downloader's own tests run it against the simulator.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvbatch.api.endpoint import Endpoint
from mvbatch.downloads import http11
from mvbatch.downloads.http11 import FilesTransport

# An answer: the bytes to send, then whether to close the connection. None:
# close at once, answering nothing.
Answer = tuple[bytes, bool] | None
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes, *headers: str, close: bool = False) -> tuple[bytes, bool]:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head).encode() + b"\r\n\r\n" + body, close)


@dataclass
class Server:
    """Answers the n-th request with `answers[n]`, on whichever connection it arrives."""

    answers: list[Answer]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            self.requests.append(head)
            answer = self.answers.pop(0) if self.answers else None
            if answer is None:
                return
            data, close = answer
            writer.write(data)
            await writer.drain()
            if close:
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mp4"


@asynccontextmanager
async def serving(
    answers: list[Answer], handler: Handler | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(list(answers))
    handle = handler or server.handle

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        server.handlers.add(task)
        try:
            await handle(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            pass  # the test is over, or the client hung up: both are the client's story
        finally:
            writer.close()

    listener = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        async with listener:
            yield server
    finally:
        for task in server.handlers:
            task.cancel()
        await asyncio.gather(*server.handlers, return_exceptions=True)


def client(transport: FilesTransport | None = None, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport or FilesTransport(), timeout=timeout)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def get_twice(answers: list[Answer]) -> tuple[list[bytes], int]:
    """Two GETs in a row: their bodies, and how many connections the server saw."""

    async def go() -> tuple[list[bytes], int]:
        async with serving(answers) as server, client() as c:
            bodies = [(await c.get(server.url)).content for _ in range(2)]
            return bodies, server.connections

    return run(go())  # type: ignore[no-any-return]


# -- framing


def test_content_length_bodies_reuse_one_connection() -> None:
    async def go() -> None:
        async with serving([ok(b"first"), ok(b"second body")]) as server, client() as c:
            assert (await c.get(server.url)).content == b"first"
            response = await c.get(server.url)
            assert response.content == b"second body"
            assert response.http_version == "HTTP/1.1"
            assert response.reason_phrase == "OK"
            assert server.connections == 1
            assert server.requests[0].startswith(b"GET /video.mp4 HTTP/1.1\r\n")
            assert b"\r\nHost: 127.0.0.1:" in server.requests[0]

    run(go())


def test_a_chunked_body_with_extensions_and_trailers() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Checksum: abc\r\n\r\n"
    )

    # One connection: the trailers were read to the end.
    assert get_twice([(wire, False), ok(b"next")]) == ([b"hello 0123456789", b"next"], 1)


def test_a_body_that_runs_until_the_server_closes() -> None:
    answers: list[Answer] = [
        (b"HTTP/1.0 200 OK\r\nContent-Type: video/mp4\r\n\r\n" + b"x" * 100_000, True),
        ok(b"again"),
    ]
    assert get_twice(answers) == ([b"x" * 100_000, b"again"], 2)


def test_connection_close_is_never_reused() -> None:
    answers = [ok(b"one", "Connection: close"), ok(b"two")]
    assert get_twice(answers) == ([b"one", b"two"], 2)


def test_interim_responses_folded_headers_and_bare_line_feeds() -> None:
    wire = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\nContent-Length: 4\nX-Long: part one\n\tpart two\n\nbody"
    )

    async def go() -> None:
        async with serving([(wire, False)]) as server, client() as c:
            response = await c.get(server.url)
            assert response.status_code == 200
            assert response.headers["x-long"] == "part one part two"
            assert "link" not in response.headers
            assert response.content == b"body"

    run(go())


@pytest.mark.parametrize("status", [204, 304])
def test_statuses_without_a_body_keep_the_connection(status: int) -> None:
    answers: list[Answer] = [(f"HTTP/1.1 {status} X\r\n\r\n".encode(), False), ok(b"after")]
    assert get_twice(answers) == ([b"", b"after"], 1)


def test_head_reads_no_body_even_with_a_length() -> None:
    async def go() -> None:
        head_answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n", False)
        async with serving([head_answer, ok(b"after")]) as server, client() as c:
            response = await c.head(server.url)
            assert response.headers["content-length"] == "5000000"
            assert (await c.get(server.url)).content == b"after"
            assert server.connections == 1

    run(go())


@given(
    body=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=20),
)
def test_any_chunking_and_any_segmentation_give_back_the_body(
    body: bytes, sizes: list[int], cuts: list[int]
) -> None:
    wire = bytearray()
    position = 0
    for size in sizes * (len(body) // max(sum(sizes), 1) + 1):
        piece = body[position : position + size]
        if not piece:
            break
        wire += b"%x\r\n" % len(piece) + piece + b"\r\n"
        position += len(piece)
    wire += b"0\r\n\r\n"
    wire += b"NEXT"  # the next response's first bytes must be left unread

    async def go() -> tuple[bytes, bytes]:
        protocol = http11._Protocol()
        start = 0
        for cut in cuts:
            protocol.data_received(bytes(wire[start : start + cut]))
            start += cut
        protocol.data_received(bytes(wire[start:]))
        protocol.eof_received()
        got = b"".join([part async for part in http11._chunked(protocol, None)])
        return got, await protocol.read(None)

    got, rest = run(go())
    assert got == body
    assert rest
    assert b"NEXT".startswith(rest)


# -- what goes wrong


def test_a_short_body_is_an_error_and_the_connection_is_dropped() -> None:
    async def go() -> None:
        short = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400, True)
        async with serving([short, ok(b"fine")]) as server, client() as c:
            with pytest.raises(
                httpx.RemoteProtocolError, match="received 400 bytes, expected 1000"
            ):
                await c.get(server.url)
            assert (await c.get(server.url)).content == b"fine"
            assert server.connections == 2

    run(go())


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed inside the response head"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "Content-Length"),
        # Codings httpx would not undo: the file would keep them, so they are refused.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b", "unsupported Transfer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "unsupported"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "unsupported"),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n" * 17, "interim"),
    ],
)
def test_malformed_responses_are_protocol_errors(wire: bytes, message: str) -> None:
    async def go() -> None:
        async with serving([(wire, True)]) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await c.get(server.url)

    run(go())


def test_a_head_larger_than_the_limit_is_refused() -> None:
    wire = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (http11.HEAD_LIMIT + 10) + b"\r\n\r\n"

    async def go() -> None:
        async with serving([(wire, True)]) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="too long"):
                await c.get(server.url)

    run(go())


def test_a_stale_kept_alive_connection_is_retried_once_on_a_fresh_one() -> None:
    async def go() -> None:
        # The second request reaches the first connection, which the server
        # then closes without answering (its keep-alive timer ran out).
        async with serving([ok(b"one"), None, ok(b"two")]) as server, client() as c:
            assert (await c.get(server.url)).content == b"one"
            assert (await c.get(server.url)).content == b"two"
            assert server.connections == 2
            assert len(server.requests) == 3

    run(go())


def test_a_kept_alive_connection_reset_before_the_answer_is_retried() -> None:
    connections = 0
    answered = 0

    async def resets_its_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, answered
        connections += 1
        first = connections == 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if first and answered == 1:
                # SO_LINGER 0: the close is a reset (RST), not a FIN.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            answered += 1
            writer.write(ok(b"%d" % answered)[0])
            await writer.drain()

    async def go() -> None:
        async with serving([], handler=resets_its_first) as server, client() as c:
            assert (await c.get(server.url)).content == b"1"
            assert (await c.get(server.url)).content == b"2"
            assert connections == 2

    run(go())


def test_a_fresh_connection_closed_without_an_answer_is_not_retried() -> None:
    async def go() -> None:
        async with serving([None, ok(b"never asked")]) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await c.get(server.url)
            assert len(server.requests) == 1

    run(go())


def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(30)

    async def go() -> None:
        async with serving([], handler=silent) as server, client(timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(server.url)

    run(go())


def test_a_refused_connection_is_a_connect_error() -> None:
    async def go() -> None:
        async with serving([]) as server:
            port = server.port
        async with client() as c:  # the listener is closed now
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")

    run(go())


def test_a_host_name_the_resolver_refuses_is_a_connect_error() -> None:
    async def go() -> None:
        async with client() as c:
            # A label over 63 characters: IDNA refuses it (a redirect can carry one).
            with pytest.raises(httpx.ConnectError):
                await c.get("http://" + "a" * 64 + ".example.invalid/")

    run(go())


def test_happy_eyeballs_moves_past_an_address_that_never_answers() -> None:
    # A listener whose accept queue is full drops SYNs: a black hole, like a
    # broken IPv6 route in front of a dual-stack CDN.
    hole = socket.socket()
    hole.bind(("127.0.0.2", 0))
    hole.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(hole.getsockname())

    async def go() -> bytes:
        loop = asyncio.get_running_loop()
        async with serving([ok(b"via the second address")]) as server:
            answers = [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", hole.getsockname()),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port)),
            ]

            async def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
                assert host in ("dual.test", b"dual.test")
                return answers

            loop.getaddrinfo = resolve  # type: ignore[method-assign]
            # A connect timeout far shorter than a SYN's: only trying both
            # addresses at once gets through.
            timeout = httpx.Timeout(10.0, connect=3.0)
            async with client() as c:
                response = await c.get(f"http://dual.test:{server.port}/", timeout=timeout)
                return response.content

    try:
        assert run(go()) == b"via the second address"
    finally:
        for sock in (*fillers, hole):
            sock.close()


def test_a_body_still_read_when_the_transport_closes_does_not_keep_its_connection() -> None:
    async def go() -> None:
        async with serving([ok(b"q" * 100_000)]) as server:
            transport = FilesTransport()
            c = client(transport)
            async with c.stream("GET", server.url) as response:
                await transport.aclose()
                assert len(await response.aread()) == 100_000
            assert transport._idle_count == 0
            await c.aclose()

    run(go())


def test_a_line_break_in_a_header_never_reaches_the_wire() -> None:
    async def go() -> None:
        async with serving([ok(b"x")]) as server, client() as c:
            with pytest.raises(httpx.LocalProtocolError):
                await c.get(server.url, headers={"X-Note": "a\r\nAuthorization: Bearer stolen"})
            assert server.requests == []

    run(go())


def test_the_pool_bound_holds_until_a_body_is_closed() -> None:
    async def go() -> None:
        answers = [ok(b"a" * 10), ok(b"b" * 10)]
        transport = FilesTransport(max_connections=1)
        async with serving(answers) as server, client(transport) as c:
            first = await c.send(c.build_request("GET", server.url), stream=True)
            waiting = httpx.Timeout(5.0, pool=0.2)
            with pytest.raises(httpx.PoolTimeout):
                await c.get(server.url, timeout=waiting)
            await first.aread()  # read to the end: the slot and connection come back
            assert (await c.get(server.url, timeout=waiting)).content == b"b" * 10
            assert server.connections == 1

    run(go())


def test_a_body_closed_early_closes_its_connection() -> None:
    async def go() -> None:
        big = ok(b"z" * 2_000_000)
        async with serving([big, ok(b"next")]) as server, client() as c:
            async with c.stream("GET", server.url) as response:
                async for _ in response.aiter_raw():
                    break  # the rest is never read: the connection cannot be reused
            assert (await c.get(server.url)).content == b"next"
            assert server.connections == 2

    run(go())


def test_a_slow_reader_stops_the_socket_instead_of_buffering_the_body() -> None:
    size = 12_000_000
    most = 0

    async def go() -> bytes:
        nonlocal most
        received = bytearray()
        body = bytes(range(256)) * (size // 256)
        async with (
            serving([ok(body)]) as server,
            client() as c,
            c.stream("GET", server.url) as response,
        ):
            protocol = response.stream._stream._connection.protocol  # type: ignore[attr-defined]
            async for chunk in response.aiter_raw():
                received += chunk
                most = max(most, protocol._buffered)
                await asyncio.sleep(0.001)
        return bytes(received)

    assert run(go()) == bytes(range(256)) * (size // 256)
    # Paused above the mark: at most one more receive lands after it.
    assert most <= http11._PAUSE_BYTES + 256 * 1024


def test_an_idle_connection_past_its_expiry_is_not_reused() -> None:
    async def go() -> None:
        transport = FilesTransport(keepalive_expiry=0.05)
        async with serving([ok(b"1"), ok(b"2")]) as server, client(transport) as c:
            await c.get(server.url)
            await asyncio.sleep(0.1)
            await c.get(server.url)
            assert server.connections == 2

    run(go())


# -- TLS


def test_tls_with_a_trusted_certificate_and_refusal_of_a_wrong_name() -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def go() -> None:
        async with serving([ok(b"secret video")], tls=server_context) as server:
            https = server.url.replace("http://", "https://")
            async with client(FilesTransport(ssl_context=client_context)) as c:
                assert (await c.get(https)).content == b"secret video"
            async with client(FilesTransport()) as c:  # the public trust store
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.get(https)

    run(go())


# -- where it is used


def test_the_files_client_uses_it_unless_a_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    live = Endpoint("live", "https://api.example.invalid/v1", "mv_key")

    def transport_of(c: httpx.AsyncClient) -> httpx.AsyncBaseTransport:
        return c._transport_for_url(httpx.URL("https://cdn.example.invalid/a.mp4"))

    async def go() -> tuple[Any, Any]:
        async with live.files_client() as plain:
            first = transport_of(plain)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.invalid:3128")
        async with live.files_client() as proxied:
            second = transport_of(proxied)
        return first, second

    direct, via_proxy = run(go())
    assert isinstance(direct, FilesTransport)
    assert not isinstance(via_proxy, FilesTransport)
    assert isinstance(via_proxy, httpx.AsyncHTTPTransport)
