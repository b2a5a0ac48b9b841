"""mvbatch.plan.mp4_probe: durations from local files, data: URIs and real loopback HTTP.

The HTTP tests run a stdlib threaded server on 127.0.0.1 that honours (or, on purpose,
ignores) Range and counts the body bytes it sends, so "header bytes only" is measured on
the wire rather than assumed from mocks.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from mvbatch.plan import mp4_probe
from mvbatch.plan.mp4 import ProbeResult, Reason

try:  # tests/ as a plain directory on sys.path, or as a package
    from mp4_fixtures import box, make_mp4, mvhd, trak_stub, write_mp4
except ImportError:  # pragma: no cover
    from tests.mp4_fixtures import box, make_mp4, mvhd, trak_stub, write_mp4

MB = 1_000_000
FTYP = box("ftyp", b"isom" + bytes(4) + b"isomiso2")


def failed(result: ProbeResult, reason: Reason) -> bool:
    return result.duration is None and result.reason is reason and not result.ok


# ------------------------------------------------------------------------------ local files


def test_local_file(tmp_path: Path) -> None:
    ref = write_mp4(tmp_path / "refs" / "ref.mp4", 8)
    assert mp4_probe.local_duration(ref) == Decimal("8.000")
    assert mp4_probe.local_duration(str(ref)) == 8


def test_local_file_with_late_moov_reads_only_headers(tmp_path: Path) -> None:
    ref = write_mp4(tmp_path / "late.mp4", 9.5, moov_first=False, mdat_bytes=20 * MB)
    result = mp4_probe.probe_local(ref)
    assert result.duration == Decimal("9.500")
    assert result.bytes_read < 200


@pytest.mark.parametrize("name", ["missing.mp4", "."])
def test_local_unreadable_is_io(tmp_path: Path, name: str) -> None:
    result = mp4_probe.probe_local(tmp_path / name)
    assert failed(result, Reason.IO)
    assert result.fetch_failed
    assert mp4_probe.local_duration(tmp_path / name) is None


def test_local_not_an_mp4(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("just some text pretending to be a video")
    assert failed(mp4_probe.probe_local(text), Reason.NOT_MP4)


# ------------------------------------------------------------------------------ data: URIs


def _data_uri(data: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_data_uri() -> None:
    uri = _data_uri(make_mp4(Decimal("8.5")))
    assert mp4_probe.probe_data_uri(uri).duration == Decimal("8.500")


@pytest.mark.parametrize("mdat_bytes", [0, 1, 2, 3, 1000])
def test_data_uri_alignment_and_late_moov(mdat_bytes: int) -> None:
    # Varying mdat sizes put box boundaries at every offset modulo 3 (base64 groups).
    uri = _data_uri(make_mp4(6, moov_first=False, mdat_bytes=mdat_bytes, version=1))
    assert mp4_probe.probe_data_uri(uri).duration == 6


def test_data_uri_tolerates_line_breaks_and_missing_padding() -> None:
    data = next(d for n in (1, 2) if len(d := make_mp4(7, mdat_bytes=n)) % 3)
    encoded = base64.b64encode(data).decode()
    assert encoded.endswith("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert mp4_probe.probe_data_uri("data:video/mp4;base64," + wrapped.rstrip("=")).duration == 7


def test_data_uri_percent_encoded_and_uppercase() -> None:
    quoted = urllib.parse.quote_from_bytes(make_mp4(3))
    assert mp4_probe.probe_data_uri("DATA:video/mp4," + quoted).duration == 3
    uppercase = _data_uri(make_mp4(3)).replace(";base64", ";BASE64")
    assert mp4_probe.probe_data_uri(uppercase).duration == 3


def test_data_uri_big_video_is_not_decoded_whole() -> None:
    uri = _data_uri(make_mp4(11, moov_first=False, mdat_bytes=30 * MB))
    result = mp4_probe.probe_data_uri(uri)
    assert result.duration == 11
    assert result.bytes_read < 200


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/a.mp4",
        "data:video/mp4;base64",
        "data:video/mp4;base64,!!!!not base64!!!!",
        _data_uri(b"GIF89a" + bytes(30), "image/gif"),
    ],
)
def test_data_uri_not_an_mp4(uri: str) -> None:
    assert failed(mp4_probe.probe_data_uri(uri), Reason.NOT_MP4)


# ------------------------------------------------------------------------------ HTTP server


@dataclass
class Served:
    body: bytes
    honour_range: bool = True
    wrong_range: bool = False  # answers 206 for byte 0 whatever was asked
    hide_total: bool = False  # Content-Range "bytes a-b/*", 416 without a size


@dataclass
class Server:
    base: str = ""
    files: dict[str, Served] = field(default_factory=dict)
    bytes_sent: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, body: bytes, **options: bool) -> str:
        self.files[f"/files/{name}"] = Served(body, **options)
        return f"{self.base}/files/{name}"

    def sent(self, count: int) -> None:
        with self.lock:
            self.bytes_sent += count


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    state: Server

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body is exactly what these tests provoke


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive Range requests wait ~40 ms each on ACKs
    timeout = 5
    server: _QuietServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
        if self.path.startswith("/redirect/"):
            self._empty(302, Location=self.path.replace("/redirect/", "/files/", 1))
            return
        served = state.files.get(self.path)
        if served is None:
            self._empty(404)
            return
        body = served.body
        if range_header and (served.honour_range or served.wrong_range):
            first_text, _, last_text = range_header.removeprefix("bytes=").partition("-")
            first = 0 if served.wrong_range else int(first_text)
            last = min(int(last_text) if last_text else len(body) - 1, len(body) - 1)
            total = "*" if served.hide_total else str(len(body))
            if first >= len(body):
                if served.hide_total:
                    self._empty(416)
                else:
                    self._empty(416, Content_Range=f"bytes */{total}")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
            body = body[first : last + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()
        try:
            for start in range(0, len(body), 64 * 1024):
                piece = body[start : start + 64 * 1024]
                # Counted before writing, so the count is complete by the time the client
                # has the bytes (an over-count only when the client hangs up mid-body).
                state.sent(len(piece))
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    state = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as http:
        yield http


@pytest.fixture(scope="module")
def late_moov_20mb() -> bytes:
    return make_mp4(Decimal("14.6"), timescale=600, moov_first=False, mdat_bytes=20 * MB)


@pytest.fixture
def refused_url() -> Iterator[str]:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}/ref.mp4"


# ------------------------------------------------------------------------------ HTTP


def test_url_faststart_one_request(server: Server, client: httpx.Client) -> None:
    url = server.add("fast.mp4", make_mp4(8, mdat_bytes=5 * MB))
    result = mp4_probe.probe_url_sync(client, url)
    assert result.duration == Decimal("8.000")
    assert len(server.requests) == 1
    assert server.requests[0][1] == f"bytes=0-{mp4_probe.FIRST_SPAN - 1}"
    assert server.bytes_sent == mp4_probe.FIRST_SPAN
    assert mp4_probe.probe_url_sync(client, url).duration == 8


def test_url_late_moov_transfers_headers_only(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("late.mp4", late_moov_20mb)
    result = mp4_probe.probe_url_sync(client, url)
    assert result.duration == Decimal("14.600")
    assert server.bytes_sent < 200_000
    assert result.bytes_read == server.bytes_sent
    assert len(server.requests) == 2  # the first 64 KiB, then moov with its read-ahead
    assert all(rng is not None for _, rng in server.requests)


def test_url_late_big_moov_and_largesize_mdat(server: Server, client: httpx.Client) -> None:
    data = make_mp4(
        21, version=1, moov_first=False, mdat_bytes=3 * MB, largesize=True,
        before_mvhd=[trak_stub(50_000)],
    )  # fmt: skip
    url = server.add("big-moov.mp4", data)
    assert mp4_probe.probe_url_sync(client, url).duration == 21
    assert server.bytes_sent < 200_000
    assert len(server.requests) == 3  # the first 64 KiB, moov + trak headers, mvhd


def test_url_tiny_and_empty_files(server: Server, client: httpx.Client) -> None:
    tiny = server.add("tiny.mp4", make_mp4(1, mdat_bytes=0))
    assert mp4_probe.probe_url_sync(client, tiny).duration == 1
    result = mp4_probe.probe_url_sync(client, server.add("empty.mp4", b""))
    assert failed(result, Reason.NOT_MP4)


@pytest.mark.parametrize("hide_total", [False, True])
def test_url_jump_past_the_end(server: Server, client: httpx.Client, hide_total: bool) -> None:
    # mdat claims more bytes than the file has. With the total known from Content-Range
    # the jump is not even requested; with "bytes a-b/*" it is, and the server says 416.
    data = FTYP + struct.pack(">I4s", 10 * MB, b"mdat") + bytes(100_000)
    result = mp4_probe.probe_url_sync(client, server.add("short.mp4", data, hide_total=hide_total))
    assert failed(result, Reason.NO_MOOV)
    assert len(server.requests) == (2 if hide_total else 1)


def test_url_without_total_size(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("late.mp4", late_moov_20mb, hide_total=True)
    assert mp4_probe.probe_url_sync(client, url).duration == Decimal("14.6")
    assert server.bytes_sent < 200_000


def test_url_not_an_mp4_is_not_a_fetch_failure(server: Server, client: httpx.Client) -> None:
    result = mp4_probe.probe_url_sync(client, server.add("page.mp4", b"<html>nope</html>" * 10))
    assert failed(result, Reason.NOT_MP4)
    assert not result.fetch_failed


def test_url_server_ignoring_range_early_moov(server: Server, client: httpx.Client) -> None:
    url = server.add("norange.mp4", make_mp4(8, mdat_bytes=20 * MB), honour_range=False)
    result = mp4_probe.probe_url_sync(client, url)
    assert result.duration == 8
    assert result.bytes_read <= 2 * 64 * 1024


def test_url_server_ignoring_range_moov_within_budget(server: Server, client: httpx.Client) -> None:
    data = make_mp4(4, moov_first=False, mdat_bytes=300_000)
    url = server.add("norange-late.mp4", data, honour_range=False)
    result = mp4_probe.probe_url_sync(client, url)
    assert result.duration == 4
    assert result.bytes_read <= len(data)


def test_url_server_ignoring_range_moov_beyond_budget(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("norange-20mb.mp4", late_moov_20mb, honour_range=False)
    result = mp4_probe.probe_url_sync(client, url)
    assert failed(result, Reason.LIMIT)
    # The mdat header already says moov is past the budget: stop at the first piece.
    assert result.bytes_read <= 64 * 1024


def test_url_budget_parameter(server: Server, client: httpx.Client) -> None:
    url = server.add(
        "norange.mp4", make_mp4(3, moov_first=False, mdat_bytes=200_000), honour_range=False
    )
    result = mp4_probe.probe_url_sync(client, url, budget=1000)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read <= 64 * 1024  # the budget plus at most one piece
    url = server.add("late-ranged.mp4", make_mp4(3, moov_first=False, mdat_bytes=100))
    result = mp4_probe.probe_url_sync(client, url, budget=100)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read <= 100


def test_url_hostile_many_jumps_is_bounded(server: Server, client: httpx.Client) -> None:
    data = FTYP + box("free", bytes(100_000)) * 60 + box("moov", mvhd(8000, 1000))
    result = mp4_probe.probe_url_sync(client, server.add("jumps.mp4", data))
    assert failed(result, Reason.LIMIT)
    assert len(server.requests) == mp4_probe.MAX_REQUESTS
    assert server.bytes_sent <= mp4_probe.FIRST_SPAN + mp4_probe.MAX_REQUESTS * mp4_probe.READAHEAD


def test_url_wrong_content_range_is_refused(server: Server, client: httpx.Client) -> None:
    data = make_mp4(3, moov_first=False, mdat_bytes=200_000)
    result = mp4_probe.probe_url_sync(client, server.add("liar.mp4", data, wrong_range=True))
    assert failed(result, Reason.HTTP)


def test_url_follows_redirects(server: Server, client: httpx.Client) -> None:
    server.add("moved.mp4", make_mp4(6))
    assert mp4_probe.probe_url_sync(client, f"{server.base}/redirect/moved.mp4").duration == 6


def test_url_404(server: Server, client: httpx.Client) -> None:
    result = mp4_probe.probe_url_sync(client, f"{server.base}/files/missing.mp4")
    assert failed(result, Reason.HTTP)
    assert result.fetch_failed
    assert "404" in result.detail


def test_url_connection_refused(client: httpx.Client, refused_url: str) -> None:
    result = mp4_probe.probe_url_sync(client, refused_url)
    assert failed(result, Reason.NETWORK)
    assert result.fetch_failed
    assert mp4_probe.probe_url_sync(client, refused_url).duration is None


@pytest.mark.parametrize("url", ["ftp://example.com/a.mp4", "not a url", "http://"])
def test_url_unusable(client: httpx.Client, url: str) -> None:
    assert failed(mp4_probe.probe_url_sync(client, url), Reason.NETWORK)


def test_url_total_timeout(server: Server, client: httpx.Client) -> None:
    url = server.add("fast.mp4", make_mp4(8))
    assert failed(mp4_probe.probe_url_sync(client, url, total_timeout=0), Reason.LIMIT)
