"""Read an MP4's duration from its ``moov/mvhd`` header: local file, ``data:`` URI or URL.

The planner prices ``kling-v3-motion-control`` by the length of the reference video, so it
needs that length *before* anything is submitted. This module owns finding it: walking the
ISO-BMFF box structure (``size``/``type`` headers, 64-bit ``largesize`` when ``size == 1``,
``size == 0`` meaning "to the end of the file") to the ``moov`` box and the ``mvhd`` box
inside it, and turning ``duration / timescale`` into seconds.

It must not download or read whole files. Large boxes (``mdat``) are skipped by their
declared size, never read; a URL is probed with ``Range`` requests for the first 64 KiB,
then for a few KiB at each box boundary beyond that, under a hard byte budget (8 MiB by
default) that also caps a server which ignores ``Range`` and answers ``200`` with the
whole body.
Every loop is bounded (boxes visited, HTTP requests, bytes, wall-clock time) so a hostile
file or server cannot make the planner spin or hang.

Results
-------
The ``probe_*`` functions return a :class:`ProbeResult`:

* ``duration``: seconds as a ``Decimal`` quantized to milliseconds (``8.000``), computed
  exactly from the integers in the file and rounded half-up; ``None`` when unknown.
* ``reason``: ``None`` on success, else a :class:`Reason` saying why. ``result.fetch_failed``
  separates "could not get the bytes" (``io``, ``network``, ``http``) from "got bytes that
  do not say" (``not-mp4``, ``no-moov``, ``truncated``, ...). Either way the caller falls
  back to an upper bound; the distinction is for messages and logs.
* ``detail``: one human sentence; ``bytes_read``: bytes of file content read or received.

The ``*_duration`` functions are the same probes reduced to ``Decimal | None``. None of them
raises for bad input or network trouble; only programming errors propagate.

The parser is written once, as a generator that yields ``(offset, length)`` reads and is
sent the bytes back (sans-I/O), so local files, ``data:`` URIs, sync and async HTTP all
share it; only the small drivers at the bottom of this module do I/O.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import struct
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

import httpx

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_TOTAL_TIMEOUT",
    "ProbeResult",
    "Reason",
    "data_uri_duration",
    "duration_from_bytes",
    "local_duration",
    "probe_bytes",
    "probe_data_uri",
    "probe_local",
    "probe_reader",
    "probe_url",
    "probe_url_sync",
    "url_duration",
    "url_duration_sync",
]

# Boxes visited in one probe, at every level together. Real files have a handful at the
# top level and a few dozen inside moov; a file of millions of 8-byte boxes is an attack.
MAX_BOXES = 1024
# A moov declaring more than this is not a reference clip; refuse rather than trust it.
# (moov is never read whole anyway: its children are walked by header like the top level.)
MAX_MOOV_SIZE = 64 * 1024 * 1024
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

# What an ISO-BMFF or QuickTime file may start with. Checking the first box against this
# list is what tells "not an MP4" apart from "an MP4 without a moov".
_FIRST_BOX_TYPES = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"junk"}
    | {b"uuid", b"pdin", b"sidx"}
)
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1
# No file (and no seek) goes past this; a box claiming to is hostile, not just large.
_MAX_OFFSET = 2**63 - 1


class Reason(StrEnum):
    """Why a probe found no duration."""

    NOT_MP4 = "not-mp4"  # empty, or the first box is not one an MP4/QuickTime file starts with
    NO_MOOV = "no-moov"  # an MP4 whose top-level boxes hold no moov (e.g. still being written)
    NO_MVHD = "no-mvhd"  # moov without mvhd
    NO_DURATION = "no-duration"  # mvhd says 0 / "unknown" (fragmented MP4) and no mvex/mehd
    TRUNCATED = "truncated"  # the data ends inside a header we need
    CORRUPT = "corrupt"  # impossible sizes, unknown mvhd version, timescale 0
    LIMIT = "limit"  # a safety bound was hit: boxes, moov size, requests, bytes, time
    IO = "io"  # a local file could not be opened or read
    NETWORK = "network"  # connection, TLS, timeout or protocol failure
    HTTP = "http"  # an HTTP error status or a response we cannot use


_FETCH_FAILURES = frozenset({Reason.IO, Reason.NETWORK, Reason.HTTP})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe: a duration, or the reason there is none."""

    duration: Decimal | None
    reason: Reason | None = None
    detail: str = ""
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return self.duration is not None

    @property
    def fetch_failed(self) -> bool:
        """True when the bytes could not be obtained, as opposed to saying nothing usable."""
        return self.reason in _FETCH_FAILURES


class _Stop(Exception):
    """Ends a probe early with a reason; never escapes this module."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def result(self, bytes_read: int) -> ProbeResult:
        return ProbeResult(None, self.reason, self.detail, bytes_read)


# ---------------------------------------------------------------------------------------
# The parser: a generator that yields (offset, length) and is sent the bytes found there.
# A reader returns fewer bytes than asked only at the end of the data, b"" past it.
# ---------------------------------------------------------------------------------------

_ReadRequest = tuple[int, int]
_Walk = Generator[_ReadRequest, bytes, Decimal]


@dataclass(frozen=True, slots=True)
class _Box:
    kind: bytes
    start: int
    header: int  # 8, or 16 with a largesize
    end: int | None  # None: runs to the end of the file

    @property
    def body(self) -> int:
        return self.start + self.header


class _Counter:
    """Counts boxes visited so that no input can make the walk unbounded."""

    def __init__(self) -> None:
        self.seen = 0

    def tick(self) -> None:
        self.seen += 1
        if self.seen > MAX_BOXES:
            raise _Stop(Reason.LIMIT, f"more than {MAX_BOXES} boxes before finding mvhd")


def _parse_header(raw: bytes, start: int) -> _Box:
    if len(raw) < 8:
        raise _Stop(Reason.TRUNCATED, f"box header at byte {start} is cut short")
    size, kind = struct.unpack_from(">I4s", raw)
    if size == 1:
        if len(raw) < 16:
            raise _Stop(Reason.TRUNCATED, f"64-bit box header at byte {start} is cut short")
        (size,) = struct.unpack_from(">Q", raw, 8)
        if size < 16:
            raise _Stop(Reason.CORRUPT, f"box at byte {start} has largesize {size} < 16")
        return _checked(_Box(kind, start, 16, start + size))
    if size == 0:
        return _Box(kind, start, 8, None)
    if size < 8:
        raise _Stop(Reason.CORRUPT, f"box at byte {start} has size {size} < 8")
    return _Box(kind, start, 8, start + size)


def _checked(box: _Box) -> _Box:
    if box.end is not None and box.end > _MAX_OFFSET:
        raise _Stop(Reason.CORRUPT, f"box at byte {box.start} ends past any possible file")
    return box


def _seconds(duration: int, timescale: int) -> Decimal:
    # Integer arithmetic, rounded half-up to whole milliseconds, then built from a string:
    # exact for 64-bit durations and independent of the active decimal context.
    millis, rest = divmod(duration * 1000, timescale)
    if 2 * rest >= timescale:
        millis += 1
    return Decimal(f"{millis}E-3")


def _walk() -> _Walk:
    """Top level: find moov, jumping over every other box (mdat included) by its size."""
    counter = _Counter()
    offset = 0
    first = True
    while True:
        counter.tick()
        raw = yield (offset, 16)
        if not raw:
            if first:
                raise _Stop(Reason.NOT_MP4, "no data")
            raise _Stop(Reason.NO_MOOV, "reached the end of the file without a moov box")
        try:
            box = _parse_header(raw, offset)
        except _Stop as stop:
            if first:
                raise _Stop(Reason.NOT_MP4, f"not an MP4 ({stop.detail})") from None
            raise
        if first and box.kind not in _FIRST_BOX_TYPES:
            raise _Stop(Reason.NOT_MP4, f"not an MP4: starts with {box.kind!r}")
        first = False
        if box.kind == b"moov":
            return (yield from _walk_moov(box, counter))
        if box.end is None:
            raise _Stop(Reason.NO_MOOV, f"{box.kind!r} runs to the end of the file, no moov")
        offset = box.end


def _child_at(
    offset: int, end: int | None, counter: _Counter
) -> Generator[_ReadRequest, bytes, _Box | None]:
    """The child box at ``offset`` of a parent ending at ``end``, or None past the last."""
    # Fewer than 8 bytes left is not room for a box: QuickTime writers sometimes end
    # containers with a 32-bit zero terminator, so this is the end, not corruption.
    if end is not None and end - offset < 8:
        return None
    counter.tick()
    raw = yield (offset, 16)
    if not raw:
        if end is None:  # the parent runs to the end of the file, and it has come
            return None
        raise _Stop(Reason.TRUNCATED, f"the file ends inside a box, at byte {offset}")
    box = _parse_header(raw, offset)
    if box.end is None:  # size 0 inside a parent: runs to the parent's end
        return replace(box, end=end)
    if end is not None and box.end > end:
        raise _Stop(Reason.CORRUPT, f"box {box.kind!r} at byte {offset} overruns its parent")
    return box


def _walk_moov(moov: _Box, counter: _Counter) -> _Walk:
    if moov.end is not None and moov.end - moov.start > MAX_MOOV_SIZE:
        raise _Stop(Reason.LIMIT, f"moov declares {moov.end - moov.start} bytes")
    # mvhd is conventionally first, but nothing requires it: other boxes are skipped by
    # size. A fragmented MP4 may leave mvhd's duration at 0 and put it in mvex/mehd.
    mvhd: tuple[int, int | None] | None = None  # (timescale, duration or None if unknown)
    mehd: int | None = None
    offset = moov.body
    while (child := (yield from _child_at(offset, moov.end, counter))) is not None:
        if child.kind == b"mvhd":
            mvhd = yield from _read_mvhd(child)
        elif child.kind == b"mvex":
            mehd = yield from _read_mehd(child, counter)
        if mvhd is not None:
            timescale, duration = mvhd
            if duration is not None:
                return _seconds(duration, timescale)
            if mehd is not None:
                return _seconds(mehd, timescale)
        if child.end is None:
            break
        offset = child.end
    if mvhd is None:
        raise _Stop(Reason.NO_MVHD, "moov has no mvhd box")
    raise _Stop(Reason.NO_DURATION, "mvhd gives no duration (fragmented MP4 without mehd)")


def _read_mvhd(box: _Box) -> Generator[_ReadRequest, bytes, tuple[int, int | None]]:
    raw = yield (box.body, 32)
    if len(raw) < 4:
        raise _Stop(Reason.TRUNCATED, "the file ends inside mvhd")
    version = raw[0]
    # Full box: version(1) flags(3), then creation and modification times, timescale
    # (always 32-bit) and duration; the times and duration are 32-bit in version 0 and
    # 64-bit in version 1.
    if version == 0:
        need, layout, unknown = 20, ">8xII", _MAX_U32
    elif version == 1:
        need, layout, unknown = 32, ">16xIQ", _MAX_U64
    else:
        raise _Stop(Reason.CORRUPT, f"mvhd version {version} is not 0 or 1")
    if box.end is not None and box.end - box.body < need:
        raise _Stop(Reason.CORRUPT, f"mvhd version {version} is too small")
    if len(raw) < need:
        raise _Stop(Reason.TRUNCATED, "the file ends inside mvhd")
    timescale, duration = struct.unpack_from(layout, raw, 4)
    if timescale == 0:
        raise _Stop(Reason.CORRUPT, "mvhd timescale is 0")
    # All ones is the spec's "duration unknown"; 0 is what fragmented writers put there.
    return timescale, (None if duration in (0, unknown) else duration)


def _read_mehd(mvex: _Box, counter: _Counter) -> Generator[_ReadRequest, bytes, int | None]:
    offset = mvex.body
    while (child := (yield from _child_at(offset, mvex.end, counter))) is not None:
        if child.kind == b"mehd":
            raw = yield (child.body, 12)
            if len(raw) >= 8 and raw[0] == 0:
                (duration,) = struct.unpack_from(">I", raw, 4)
            elif len(raw) >= 12 and raw[0] == 1:
                (duration,) = struct.unpack_from(">Q", raw, 4)
            else:
                return None
            return int(duration) or None
        if child.end is None:
            break
        offset = child.end
    return None


# ---------------------------------------------------------------------------------------
# In-memory and local readers.
# ---------------------------------------------------------------------------------------


def probe_reader(read_at: Callable[[int, int], bytes]) -> ProbeResult:
    """Probe through ``read_at(offset, length)``: the core every other probe shares.

    ``read_at`` returns ``length`` bytes from ``offset``, fewer only at the end of the data
    and ``b""`` past it. Reads are small (at most 32 bytes each) and bounded in number.
    """
    walker = _walk()
    got = 0
    try:
        offset, length = next(walker)
        while True:
            data = read_at(offset, length)[:length]
            got += len(data)
            offset, length = walker.send(data)
    except StopIteration as done:
        return ProbeResult(done.value, bytes_read=got)
    except _Stop as stop:
        return stop.result(got)
    finally:
        walker.close()


def probe_bytes(data: bytes | bytearray | memoryview) -> ProbeResult:
    """Probe an MP4 held in memory."""
    view = memoryview(data).cast("B")
    return probe_reader(lambda offset, length: bytes(view[offset : offset + length]))


def duration_from_bytes(data: bytes | bytearray | memoryview) -> Decimal | None:
    """Duration in seconds (ms precision) of an MP4 held in memory, or None."""
    return probe_bytes(data).duration


def probe_local(path: str | os.PathLike[str]) -> ProbeResult:
    """Probe a local file with seek + small reads; never reads the file through."""
    try:
        with Path(path).open("rb") as handle:

            def read_at(offset: int, length: int) -> bytes:
                try:
                    handle.seek(offset)
                    return handle.read(length)
                except OSError as exc:
                    raise _Stop(Reason.IO, f"cannot read {os.fspath(path)!r}: {exc}") from exc

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
            raise _Stop(Reason.NOT_MP4, f"data: URI is not valid base64 ({exc})") from None
        skip = offset - first_quad * 3
        return piece[skip : skip + length]

    return probe_reader(read_at)


def data_uri_duration(uri: str) -> Decimal | None:
    """Duration in seconds (ms precision) of an MP4 ``data:`` URI, or None."""
    return probe_data_uri(uri).duration


# ---------------------------------------------------------------------------------------
# HTTP: a second sans-I/O layer turns the parser's small reads into a few Range requests.
# It yields _Open (start a GET for bytes start..end) and _Read (next body chunk, b"" at
# the end) and is sent _Head and bytes; probe_url_sync / probe_url perform them.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Open:
    start: int
    end: int  # inclusive, as in the Range header


@dataclass(frozen=True, slots=True)
class _Read:
    pass


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    headers: httpx.Headers


_Op = _Open | _Read
_Reply = _Head | bytes
_Steps = Generator[_Op, _Reply, Decimal]


def _open(start: int, end: int) -> Generator[_Op, _Reply, _Head]:
    reply = yield _Open(start, end)
    if not isinstance(reply, _Head):
        raise TypeError("driver answered _Open with body bytes")
    return reply


def _next_chunk() -> Generator[_Op, _Reply, bytes]:
    reply = yield _Read()
    if not isinstance(reply, bytes):
        raise TypeError("driver answered _Read with a head")
    return reply


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
        raise _Stop(Reason.HTTP, f"unusable Content-Range {value!r}") from None


class _HttpSource:
    """State of one URL probe: what is cached, what is known, what has been spent."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size: int | None = None  # total length, once a response has told us
        self.chunks: list[tuple[int, bytes]] = []  # (offset, bytes) from 206 responses
        self.prefix: bytearray | None = None  # the body from byte 0, if Range was ignored
        self.prefix_done = False
        self.used = 0  # content bytes received
        self.requests = 0

    def steps(self) -> _Steps:
        walker = _walk()
        try:
            offset, length = next(walker)
            while True:
                data = yield from self._read(offset, length)
                offset, length = walker.send(data)
        except StopIteration as done:
            value: Decimal = done.value
            return value
        finally:
            walker.close()

    def _clip(self, offset: int, length: int) -> int:
        return length if self.size is None else max(0, min(length, self.size - offset))

    def _cached(self, offset: int, length: int) -> bytes | None:
        for start, data in self.chunks:
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + length]
        return None

    def _read(self, offset: int, length: int) -> Generator[_Op, _Reply, bytes]:
        length = self._clip(offset, length)
        if length == 0:
            return b""
        if self.prefix is None:
            cached = self._cached(offset, length)
            if cached is not None and len(cached) == length:
                return cached
            yield from self._fetch(offset, length)
        if self.prefix is not None:
            return (yield from self._stream_to(offset, length))
        length = self._clip(offset, length)
        return b"" if length == 0 else self._cached(offset, length) or b""

    def _fetch(self, offset: int, length: int) -> Generator[_Op, _Reply, None]:
        if self.requests >= MAX_REQUESTS:
            raise _Stop(Reason.LIMIT, f"more than {MAX_REQUESTS} Range requests")
        room = self.budget - self.used
        if length > room:
            raise _Stop(Reason.LIMIT, f"would read more than {self.budget} bytes")
        # length <= room and (once the size is known) length <= size - offset, so the
        # span never drops below what the parser asked for.
        span = max(length, FIRST_SPAN if self.requests == 0 else READAHEAD)
        if self.size is not None:
            span = min(span, self.size - offset)
        span = min(span, room)
        self.requests += 1
        head = yield from _open(offset, offset + span - 1)
        encoding = head.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            # Ranges of an encoded body are ranges of the encoding: offsets would lie.
            raise _Stop(Reason.HTTP, f"server sent Content-Encoding {encoding!r}")
        if head.status == 206:
            yield from self._take_partial(head, offset, span)
        elif head.status == 200:
            # The server ignores Range and sends everything from byte 0. Keep reading it
            # only as far as the parser needs and the budget allows; then drop it.
            self.prefix = bytearray()
            length_header = head.headers.get("content-length", "")
            if length_header.isdigit():
                self.size = int(length_header)
        elif head.status == 416:
            # Nothing at or past `offset`; "bytes */N" says where the file ends, and
            # without it `offset` is still a safe bound.
            total = _content_range_total(head.headers)
            self.size = offset if total is None else min(total, offset)
        else:
            raise _Stop(Reason.HTTP, f"HTTP {head.status}")

    def _take_partial(self, head: _Head, offset: int, span: int) -> Generator[_Op, _Reply, None]:
        first, last, total = _content_range(head.headers)
        if first != offset or last < first:
            raise _Stop(Reason.HTTP, f"asked for byte {offset}, got range {first}-{last}")
        if total is not None:
            self.size = total
        declared = last - first + 1
        want = min(declared, span)
        body = bytearray()
        while len(body) < want:
            chunk = yield from _next_chunk()
            if not chunk:
                raise _Stop(Reason.HTTP, "partial response ended early")
            self.used += len(chunk)
            body += chunk
        if want == declared and len(body) == want:
            # Let the response see its end so the connection can go back to the pool.
            self.used += len((yield from _next_chunk()))
        self.chunks.append((offset, bytes(body[:want])))

    def _stream_to(self, offset: int, length: int) -> Generator[_Op, _Reply, bytes]:
        prefix = self.prefix
        if prefix is None:  # pragma: no cover - callers check
            raise TypeError("no streamed body")
        need = offset + length
        while len(prefix) < need and not self.prefix_done:
            if self.used + need - len(prefix) > self.budget:
                # Checked before reading: a 20 MB mdat declared in the first bytes ends
                # the probe at once instead of after the budget has been spent.
                raise _Stop(
                    Reason.LIMIT,
                    f"server ignores Range and moov is past the first {self.budget} bytes",
                )
            chunk = yield from _next_chunk()
            if not chunk:
                self.prefix_done = True
                self.size = len(prefix)
                break
            self.used += len(chunk)
            prefix += chunk
        return bytes(prefix[offset:need])


def _content_range_total(headers: httpx.Headers) -> int | None:
    _, _, total = headers.get("content-range", "").rpartition("/")
    return int(total) if total.strip().isdigit() else None


def _request_headers(op: _Open) -> dict[str, str]:
    # identity: byte ranges must be ranges of the file, not of a gzip of it.
    return {"Range": f"bytes={op.start}-{op.end}", "Accept-Encoding": "identity"}


def _network_failure(exc: Exception) -> _Stop:
    return _Stop(Reason.NETWORK, f"{type(exc).__name__}: {exc}".rstrip(": "))


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise _Stop(Reason.LIMIT, "took longer than the total timeout")


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
    """
    source = _HttpSource(budget)
    steps = source.steps()
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    response_scope = contextlib.ExitStack()
    chunks: Iterator[bytes] = iter(())
    try:
        op = next(steps)
        while True:
            _check_deadline(deadline)
            if isinstance(op, _Open):
                response_scope.close()  # a finished or abandoned earlier response
                response = response_scope.enter_context(
                    client.stream("GET", url, headers=_request_headers(op), follow_redirects=True)
                )
                chunks = response.iter_raw()
                if isinstance(chunks, Generator):  # close it before its response, not at GC
                    response_scope.callback(chunks.close)
                op = steps.send(_Head(response.status_code, response.headers))
            else:
                op = steps.send(next(chunks, b""))
    except StopIteration as done:
        return ProbeResult(done.value, bytes_read=source.used)
    except _Stop as stop:
        return stop.result(source.used)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _network_failure(exc).result(source.used)
    finally:
        steps.close()
        response_scope.close()


async def probe_url(
    client: httpx.AsyncClient,
    url: str,
    *,
    budget: int = DEFAULT_BUDGET,
    total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
) -> ProbeResult:
    """Probe an http(s) URL with Range requests on an async client; see probe_url_sync."""
    source = _HttpSource(budget)
    steps = source.steps()
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    response_scope = contextlib.AsyncExitStack()
    chunks: AsyncIterator[bytes] | None = None
    try:
        op = next(steps)
        while True:
            _check_deadline(deadline)
            if isinstance(op, _Open):
                await response_scope.aclose()
                response = await response_scope.enter_async_context(
                    client.stream("GET", url, headers=_request_headers(op), follow_redirects=True)
                )
                chunks = response.aiter_raw()
                if isinstance(chunks, AsyncGenerator):  # finalize it here, not in the loop's GC
                    response_scope.push_async_callback(chunks.aclose)
                op = steps.send(_Head(response.status_code, response.headers))
            else:
                op = steps.send(b"" if chunks is None else await anext(chunks, b""))
    except StopIteration as done:
        return ProbeResult(done.value, bytes_read=source.used)
    except _Stop as stop:
        return stop.result(source.used)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _network_failure(exc).result(source.used)
    finally:
        steps.close()
        await response_scope.aclose()


def url_duration_sync(client: httpx.Client, url: str) -> Decimal | None:
    """Duration in seconds (ms precision) of the MP4 at ``url``, or None."""
    return probe_url_sync(client, url).duration


async def url_duration(client: httpx.AsyncClient, url: str) -> Decimal | None:
    """Duration in seconds (ms precision) of the MP4 at ``url``, or None."""
    return (await probe_url(client, url)).duration
