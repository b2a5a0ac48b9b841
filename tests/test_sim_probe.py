"""Probing a motion-control reference video: data URIs, name hints, loopback Range reads."""

from __future__ import annotations

import base64
import struct
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mvbatch.sim.mp4 import iter_boxes, write_mp4
from mvbatch.sim.probe import DEFAULT_SECONDS, reference_seconds

pytestmark = pytest.mark.anyio


def no_own_files(url: str) -> Decimal | None:
    return None


def moov_last(seconds: str) -> bytes:
    """An MP4 whose moov comes after 600 KB of other boxes (not "fast start")."""
    data = write_mp4(seconds=Decimal(seconds), aspect_ratio="1:1", target_size=0, seed=b"p")
    boxes = {kind: data[body - 8 : end] for kind, body, end in iter_boxes(data)}
    padding = struct.pack(">I4s", 600_000, b"free") + bytes(600_000 - 8)
    return boxes[b"ftyp"] + padding + boxes[b"mdat"] + boxes[b"moov"]


class RangeServer(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}  # noqa: RUF012 - test fixture state
    requests: list[str] = []  # noqa: RUF012

    def do_GET(self) -> None:
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        header = self.headers.get("Range", "")
        self.requests.append(header)
        first, _, last = header.removeprefix("bytes=").partition("-")
        start, stop = int(first or 0), min(int(last or len(data) - 1), len(data) - 1)
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(stop - start + 1))
        self.end_headers()
        self.wfile.write(data[start : stop + 1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeServer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_a_loopback_url_is_read_by_range_requests(loopback: str) -> None:
    RangeServer.files = {"/ref.mp4": moov_last("9.25")}
    RangeServer.requests = []
    assert await reference_seconds(f"{loopback}/ref.mp4", no_own_files) == Decimal("9.25")
    assert all(r.startswith("bytes=") for r in RangeServer.requests)
    assert len(RangeServer.requests) <= 4  # never the whole file


async def test_an_unreachable_loopback_url_falls_back_to_the_name_hint(loopback: str) -> None:
    RangeServer.files = {}
    assert await reference_seconds(f"{loopback}/gone-7s.mp4", no_own_files) == Decimal(7)
    assert await reference_seconds("http://127.0.0.1:9/ref-4s.mp4", no_own_files) == Decimal(4)


async def test_hints_defaults_and_data_uris() -> None:
    hint = await reference_seconds("https://example.com/ref-video-8s.mp4", no_own_files)
    assert hint == Decimal(8)
    assert await reference_seconds("https://example.com/a.mp4", no_own_files) == DEFAULT_SECONDS
    data = write_mp4(seconds=Decimal("3.2"), aspect_ratio="16:9", target_size=0, seed=b"x")
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    assert await reference_seconds(uri, no_own_files) == Decimal("3.2")
    assert await reference_seconds("data:video/mp4;base64,AAAA", no_own_files) is None
