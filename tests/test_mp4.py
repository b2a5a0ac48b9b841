"""mvbatch.plan.mp4: durations from moov/mvhd, locally and over real loopback HTTP.

The HTTP tests run a stdlib threaded server on 127.0.0.1 that honours (or, on purpose,
ignores) Range and counts the body bytes it sends, so "header bytes only" is measured on
the wire rather than assumed from mocks.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvbatch.plan import mp4
from mvbatch.plan.mp4 import ProbeResult, Reason

try:  # tests/ as a plain directory on sys.path, or as a package
    from mp4_fixtures import box, make_mp4, mvhd, trak_stub, udta_stub, write_mp4
except ImportError:  # pragma: no cover
    from tests.mp4_fixtures import box, make_mp4, mvhd, trak_stub, udta_stub, write_mp4

MB = 1_000_000
FTYP = box("ftyp", b"isom" + bytes(4) + b"isomiso2")


def expected(units: int, timescale: int) -> Decimal:
    """units / timescale rounded half-up to milliseconds, via Fraction (independent path)."""
    exact = Fraction(units, timescale) * 1000
    millis = int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)
    return Decimal(millis) / 1000


def failed(result: ProbeResult, reason: Reason) -> bool:
    return result.duration is None and result.reason is reason and not result.ok


# ------------------------------------------------------------------------------ bytes


def test_exactly_8_seconds() -> None:
    result = mp4.probe_bytes(make_mp4(8))
    assert result == ProbeResult(Decimal("8.000"), None, "", result.bytes_read)
    assert result.duration == 8
    assert str(result.duration) == "8.000"
    assert result.ok
    assert not result.fetch_failed


def test_version_1_with_64_bit_duration() -> None:
    data = make_mp4(0, timescale=90_000, version=1, units=90_000 * 1_000_000 + 45)
    assert mp4.duration_from_bytes(data) == Decimal("1000000.001")


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("moov_first", [True, False])
@pytest.mark.parametrize("largesize", [False, True])
def test_layouts(version: int, moov_first: bool, largesize: bool) -> None:
    data = make_mp4(Decimal("12.345"), version=version, moov_first=moov_first, largesize=largesize)
    assert mp4.duration_from_bytes(data) == Decimal("12.345")


def test_moov_after_large_mdat_is_reached_by_jumping() -> None:
    data = make_mp4(30, timescale=600, moov_first=False, mdat_bytes=20 * MB, largesize=True)
    result = mp4.probe_bytes(data)
    assert result.duration == Decimal("30.000")
    assert result.bytes_read < 200  # headers and the mvhd fields, nothing of mdat


def test_boxes_before_mvhd_are_skipped() -> None:
    data = make_mp4(5, before_mvhd=[udta_stub(), trak_stub(5000)], after_mvhd=[trak_stub()])
    assert mp4.duration_from_bytes(data) == 5


def test_mdat_running_to_end_of_file() -> None:
    assert mp4.duration_from_bytes(make_mp4(3, mdat_to_eof=True)) == 3
    no_moov = FTYP + struct.pack(">I4s", 0, b"mdat") + bytes(100)
    assert failed(mp4.probe_bytes(no_moov), Reason.NO_MOOV)


def test_moov_without_ftyp_like_old_quicktime() -> None:
    data = make_mp4(2)
    moov_and_mdat = data[data.index(b"moov") - 4 :]
    assert mp4.duration_from_bytes(moov_and_mdat) == 2


def test_rounding_is_half_up_to_milliseconds() -> None:
    assert mp4.duration_from_bytes(make_mp4(0, timescale=2000, units=1)) == Decimal("0.001")
    assert mp4.duration_from_bytes(make_mp4(0, timescale=3, units=1)) == Decimal("0.333")
    assert mp4.duration_from_bytes(make_mp4(0, timescale=3, units=2)) == Decimal("0.667")
    assert mp4.duration_from_bytes(make_mp4(0, timescale=2000, units=2999)) == Decimal("1.500")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is definitely not a video file at all",
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(100),
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        b"\x1aE\xdf\xa3" + bytes(100),  # WebM / Matroska
        b"{}",
        bytes(64),  # a zero size is "to end of file", but type \0\0\0\0 is no MP4 box
    ],
    ids=["empty", "text", "jpeg", "png", "webm", "json", "zeros"],
)
def test_not_an_mp4(data: bytes) -> None:
    result = mp4.probe_bytes(data)
    assert failed(result, Reason.NOT_MP4)
    assert not result.fetch_failed


def test_no_moov() -> None:
    assert failed(mp4.probe_bytes(FTYP + box("mdat", bytes(50))), Reason.NO_MOOV)


def test_no_mvhd() -> None:
    data = FTYP + box("moov", udta_stub() + trak_stub())
    assert failed(mp4.probe_bytes(data), Reason.NO_MVHD)


def test_zero_timescale_is_corrupt() -> None:
    assert failed(mp4.probe_bytes(make_mp4(0, timescale=0, units=8000)), Reason.CORRUPT)


def test_unknown_mvhd_version_is_corrupt() -> None:
    assert failed(mp4.probe_bytes(make_mp4(1, version=2)), Reason.CORRUPT)


@pytest.mark.parametrize(("version", "units"), [(0, 0), (0, 2**32 - 1), (1, 0), (1, 2**64 - 1)])
def test_unknown_duration_without_mehd(version: int, units: int) -> None:
    assert failed(mp4.probe_bytes(make_mp4(0, version=version, units=units)), Reason.NO_DURATION)


@pytest.mark.parametrize("mehd_version", [0, 1])
def test_fragmented_mp4_duration_from_mehd(mehd_version: int) -> None:
    fmt = ">B3xI" if mehd_version == 0 else ">B3xQ"
    mvex = box("mvex", box("trex", bytes(24)) + box("mehd", struct.pack(fmt, mehd_version, 1500)))
    data = make_mp4(0, units=0, after_mvhd=[trak_stub(), mvex])
    assert mp4.duration_from_bytes(data) == Decimal("1.500")


def test_truncated_inside_moov() -> None:
    data = make_mp4(8, moov_first=False, mdat_bytes=10_000)
    mvhd_at = data.index(b"mvhd") - 4
    assert failed(mp4.probe_bytes(data[: mvhd_at + 8 + 10]), Reason.TRUNCATED)
    assert failed(mp4.probe_bytes(data[: mvhd_at + 4]), Reason.TRUNCATED)
    assert failed(mp4.probe_bytes(data[: mvhd_at - 3]), Reason.TRUNCATED)  # in moov header
    # Cut exactly between boxes: a well-formed file that has no moov (yet).
    assert failed(mp4.probe_bytes(data[: mvhd_at - 8]), Reason.NO_MOOV)


@pytest.mark.parametrize(
    "data",
    [
        FTYP + struct.pack(">I4s", 4, b"free") + bytes(20),  # size below the header size
        FTYP + struct.pack(">I4sQ", 1, b"free", 9) + bytes(20),  # largesize below 16
        FTYP + struct.pack(">I4sQ", 1, b"mdat", 2**64 - 1),  # past any possible file
        FTYP + box("moov", struct.pack(">I4s", 500, b"trak") + bytes(20)),  # child overruns
        FTYP + box("moov", box("mvhd", bytes(10))),  # version 0 mvhd too small
    ],
    ids=["size<8", "largesize<16", "largesize-huge", "child-overruns", "mvhd-small"],
)
def test_corrupt_sizes(data: bytes) -> None:
    assert failed(mp4.probe_bytes(data), Reason.CORRUPT)


def test_moov_bigger_than_limit_is_refused_without_reading_it() -> None:
    data = FTYP + struct.pack(">I4s", mp4.MAX_MOOV_SIZE + 100, b"moov") + mvhd(8000, 1000)
    result = mp4.probe_bytes(data)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read < 100


def test_hostile_many_top_level_boxes_is_bounded() -> None:
    data = FTYP + box("free") * 200_000 + box("moov", mvhd(8000, 1000))
    result = mp4.probe_bytes(data)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read <= (mp4.MAX_BOXES + 1) * 16


def test_hostile_many_boxes_inside_moov_is_bounded() -> None:
    data = FTYP + box("moov", box("free") * 200_000 + mvhd(8000, 1000))
    assert failed(mp4.probe_bytes(data), Reason.LIMIT)


def test_reader_returning_too_much_is_clipped() -> None:
    data = make_mp4(4)
    assert mp4.probe_reader(lambda offset, length: data[offset:]).duration == 4


@settings(max_examples=300, deadline=None, database=None)
@given(
    version=st.sampled_from([0, 1]),
    timescale=st.integers(1, 2**32 - 1),
    data=st.data(),
    moov_first=st.booleans(),
    largesize=st.booleans(),
)
def test_any_duration_and_timescale_round_trip(
    version: int, timescale: int, data: st.DataObject, moov_first: bool, largesize: bool
) -> None:
    top = 2**32 - 2 if version == 0 else 2**64 - 2  # 0 and all-ones mean "unknown"
    units = data.draw(st.integers(1, top), label="units")
    mp4_bytes = make_mp4(
        0,
        timescale=timescale,
        version=version,
        units=units,
        moov_first=moov_first,
        largesize=largesize,
        mdat_bytes=17,
    )
    assert mp4.duration_from_bytes(mp4_bytes) == expected(units, timescale)


@settings(max_examples=200, deadline=None, database=None)
@given(
    millis=st.integers(1, 10**9),
    timescale=st.sampled_from([1000, 30_000, 48_000, 90_000, 1_000_000]),
    version=st.sampled_from([0, 1]),
)
def test_millisecond_durations_round_trip_exactly(
    millis: int, timescale: int, version: int
) -> None:
    seconds = Decimal(millis) / 1000
    if version == 0 and millis * timescale // 1000 > 2**32 - 2:
        version = 1  # does not fit 32 bits: what a writer would do
    assert mp4.duration_from_bytes(make_mp4(seconds, timescale, version)) == seconds


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    result = mp4.probe_bytes(FTYP + data)
    assert isinstance(result, ProbeResult)
    assert (result.duration is None) == (result.reason is not None)


@settings(max_examples=200, deadline=None, database=None)
@given(cut=st.integers(0, 10**6))
def test_every_truncation_is_either_right_or_none(cut: int) -> None:
    data = make_mp4(Decimal("7.25"), moov_first=cut % 2 == 0, mdat_bytes=300)
    result = mp4.probe_bytes(data[: cut % (len(data) + 1)])
    assert result.duration in (None, Decimal("7.250"))
    assert not result.fetch_failed


# ------------------------------------------------------------------------------ local files


def test_local_file(tmp_path: Path) -> None:
    ref = write_mp4(tmp_path / "refs" / "ref.mp4", 8)
    assert mp4.local_duration(ref) == Decimal("8.000")
    assert mp4.local_duration(str(ref)) == 8


def test_local_file_with_late_moov_reads_only_headers(tmp_path: Path) -> None:
    ref = write_mp4(tmp_path / "late.mp4", 9.5, moov_first=False, mdat_bytes=20 * MB)
    result = mp4.probe_local(ref)
    assert result.duration == Decimal("9.500")
    assert result.bytes_read < 200


@pytest.mark.parametrize("name", ["missing.mp4", "."])
def test_local_unreadable_is_io(tmp_path: Path, name: str) -> None:
    result = mp4.probe_local(tmp_path / name)
    assert failed(result, Reason.IO)
    assert result.fetch_failed
    assert mp4.local_duration(tmp_path / name) is None


def test_local_not_an_mp4(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("just some text pretending to be a video")
    assert failed(mp4.probe_local(text), Reason.NOT_MP4)


# ------------------------------------------------------------------------------ data: URIs


def _data_uri(data: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_data_uri() -> None:
    assert mp4.data_uri_duration(_data_uri(make_mp4(Decimal("8.5")))) == Decimal("8.500")


@pytest.mark.parametrize("mdat_bytes", [0, 1, 2, 3, 1000])
def test_data_uri_alignment_and_late_moov(mdat_bytes: int) -> None:
    # Varying mdat sizes put box boundaries at every offset modulo 3 (base64 groups).
    uri = _data_uri(make_mp4(6, moov_first=False, mdat_bytes=mdat_bytes, version=1))
    assert mp4.data_uri_duration(uri) == 6


def test_data_uri_tolerates_line_breaks_and_missing_padding() -> None:
    data = next(d for n in (1, 2) if len(d := make_mp4(7, mdat_bytes=n)) % 3)
    encoded = base64.b64encode(data).decode()
    assert encoded.endswith("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert mp4.data_uri_duration("data:video/mp4;base64," + wrapped.rstrip("=")) == 7


def test_data_uri_percent_encoded_and_uppercase() -> None:
    quoted = urllib.parse.quote_from_bytes(make_mp4(3))
    assert mp4.data_uri_duration("DATA:video/mp4," + quoted) == 3
    assert mp4.data_uri_duration(_data_uri(make_mp4(3)).replace(";base64", ";BASE64")) == 3


def test_data_uri_big_video_is_not_decoded_whole() -> None:
    uri = _data_uri(make_mp4(11, moov_first=False, mdat_bytes=30 * MB))
    result = mp4.probe_data_uri(uri)
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
    assert failed(mp4.probe_data_uri(uri), Reason.NOT_MP4)


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


# ------------------------------------------------------------------------------ HTTP, sync


def test_url_faststart_one_request(server: Server, client: httpx.Client) -> None:
    url = server.add("fast.mp4", make_mp4(8, mdat_bytes=5 * MB))
    result = mp4.probe_url_sync(client, url)
    assert result.duration == Decimal("8.000")
    assert len(server.requests) == 1
    assert server.requests[0][1] == f"bytes=0-{mp4.FIRST_SPAN - 1}"
    assert server.bytes_sent == mp4.FIRST_SPAN
    assert mp4.url_duration_sync(client, url) == 8


def test_url_late_moov_transfers_headers_only(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("late.mp4", late_moov_20mb)
    result = mp4.probe_url_sync(client, url)
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
    assert mp4.url_duration_sync(client, url) == 21
    assert server.bytes_sent < 200_000
    assert len(server.requests) == 3  # the first 64 KiB, moov + trak headers, mvhd


def test_url_tiny_and_empty_files(server: Server, client: httpx.Client) -> None:
    assert mp4.url_duration_sync(client, server.add("tiny.mp4", make_mp4(1, mdat_bytes=0))) == 1
    result = mp4.probe_url_sync(client, server.add("empty.mp4", b""))
    assert failed(result, Reason.NOT_MP4)


@pytest.mark.parametrize("hide_total", [False, True])
def test_url_jump_past_the_end(server: Server, client: httpx.Client, hide_total: bool) -> None:
    # mdat claims more bytes than the file has. With the total known from Content-Range
    # the jump is not even requested; with "bytes a-b/*" it is, and the server says 416.
    data = FTYP + struct.pack(">I4s", 10 * MB, b"mdat") + bytes(100_000)
    result = mp4.probe_url_sync(client, server.add("short.mp4", data, hide_total=hide_total))
    assert failed(result, Reason.NO_MOOV)
    assert len(server.requests) == (2 if hide_total else 1)


def test_url_without_total_size(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("late.mp4", late_moov_20mb, hide_total=True)
    assert mp4.url_duration_sync(client, url) == Decimal("14.6")
    assert server.bytes_sent < 200_000


def test_url_not_an_mp4_is_not_a_fetch_failure(server: Server, client: httpx.Client) -> None:
    result = mp4.probe_url_sync(client, server.add("page.mp4", b"<html>nope</html>" * 10))
    assert failed(result, Reason.NOT_MP4)
    assert not result.fetch_failed


def test_url_server_ignoring_range_early_moov(server: Server, client: httpx.Client) -> None:
    url = server.add("norange.mp4", make_mp4(8, mdat_bytes=20 * MB), honour_range=False)
    result = mp4.probe_url_sync(client, url)
    assert result.duration == 8
    assert result.bytes_read <= 2 * 64 * 1024


def test_url_server_ignoring_range_moov_within_budget(server: Server, client: httpx.Client) -> None:
    data = make_mp4(4, moov_first=False, mdat_bytes=300_000)
    url = server.add("norange-late.mp4", data, honour_range=False)
    result = mp4.probe_url_sync(client, url)
    assert result.duration == 4
    assert result.bytes_read <= len(data)


def test_url_server_ignoring_range_moov_beyond_budget(
    server: Server, client: httpx.Client, late_moov_20mb: bytes
) -> None:
    url = server.add("norange-20mb.mp4", late_moov_20mb, honour_range=False)
    result = mp4.probe_url_sync(client, url)
    assert failed(result, Reason.LIMIT)
    # The mdat header already says moov is past the budget: stop at the first piece.
    assert result.bytes_read <= 64 * 1024


def test_url_budget_parameter(server: Server, client: httpx.Client) -> None:
    url = server.add(
        "norange.mp4", make_mp4(3, moov_first=False, mdat_bytes=200_000), honour_range=False
    )
    result = mp4.probe_url_sync(client, url, budget=1000)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read <= 64 * 1024  # the budget plus at most one piece
    url = server.add("late-ranged.mp4", make_mp4(3, moov_first=False, mdat_bytes=100))
    result = mp4.probe_url_sync(client, url, budget=100)
    assert failed(result, Reason.LIMIT)
    assert result.bytes_read <= 100


def test_url_hostile_many_jumps_is_bounded(server: Server, client: httpx.Client) -> None:
    data = FTYP + box("free", bytes(100_000)) * 60 + box("moov", mvhd(8000, 1000))
    result = mp4.probe_url_sync(client, server.add("jumps.mp4", data))
    assert failed(result, Reason.LIMIT)
    assert len(server.requests) == mp4.MAX_REQUESTS
    assert server.bytes_sent <= mp4.FIRST_SPAN + mp4.MAX_REQUESTS * mp4.READAHEAD


def test_url_wrong_content_range_is_refused(server: Server, client: httpx.Client) -> None:
    data = make_mp4(3, moov_first=False, mdat_bytes=200_000)
    result = mp4.probe_url_sync(client, server.add("liar.mp4", data, wrong_range=True))
    assert failed(result, Reason.HTTP)


def test_url_follows_redirects(server: Server, client: httpx.Client) -> None:
    server.add("moved.mp4", make_mp4(6))
    assert mp4.url_duration_sync(client, f"{server.base}/redirect/moved.mp4") == 6


def test_url_404(server: Server, client: httpx.Client) -> None:
    result = mp4.probe_url_sync(client, f"{server.base}/files/missing.mp4")
    assert failed(result, Reason.HTTP)
    assert result.fetch_failed
    assert "404" in result.detail


def test_url_connection_refused(client: httpx.Client, refused_url: str) -> None:
    result = mp4.probe_url_sync(client, refused_url)
    assert failed(result, Reason.NETWORK)
    assert result.fetch_failed
    assert mp4.url_duration_sync(client, refused_url) is None


@pytest.mark.parametrize("url", ["ftp://example.com/a.mp4", "not a url", "http://"])
def test_url_unusable(client: httpx.Client, url: str) -> None:
    assert failed(mp4.probe_url_sync(client, url), Reason.NETWORK)


def test_url_total_timeout(server: Server, client: httpx.Client) -> None:
    url = server.add("fast.mp4", make_mp4(8))
    assert failed(mp4.probe_url_sync(client, url, total_timeout=0), Reason.LIMIT)


# ------------------------------------------------------------------------------ HTTP, async


def test_async_url_probes(server: Server, late_moov_20mb: bytes, refused_url: str) -> None:
    fast = server.add("fast.mp4", make_mp4(8))
    late = server.add("late.mp4", late_moov_20mb)
    norange = server.add("norange.mp4", late_moov_20mb, honour_range=False)

    async def probe_all() -> list[ProbeResult]:
        async with httpx.AsyncClient(timeout=5.0) as http:
            results = list(
                await asyncio.gather(
                    mp4.probe_url(http, fast),
                    mp4.probe_url(http, late),
                    mp4.probe_url(http, norange),
                    mp4.probe_url(http, f"{server.base}/files/missing.mp4"),
                    mp4.probe_url(http, refused_url),
                )
            )
            assert await mp4.url_duration(http, fast) == 8
            return results

    fast_r, late_r, norange_r, missing_r, refused_r = asyncio.run(probe_all())
    assert fast_r.duration == 8
    assert late_r.duration == Decimal("14.600")
    assert late_r.bytes_read < 200_000
    assert failed(norange_r, Reason.LIMIT)
    assert failed(missing_r, Reason.HTTP)
    assert failed(refused_r, Reason.NETWORK)
