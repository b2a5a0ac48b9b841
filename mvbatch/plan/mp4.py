"""Read an MP4's duration from its ``moov/mvhd`` header, without doing any I/O.

The planner prices ``kling-v3-motion-control`` by the length of the reference video, so it
needs that length *before* anything is submitted. This module owns the parsing: walking the
ISO-BMFF box structure (``size``/``type`` headers, 64-bit ``largesize`` when ``size == 1``,
``size == 0`` meaning "to the end of the file") to the ``moov`` box and the ``mvhd`` box
inside it (or ``mvex/mehd`` for a fragmented file), and turning ``duration / timescale``
into seconds. It also owns the result every probe returns (:class:`ProbeResult`, with a
:class:`Reason` when there is no duration).

The parser is a generator that yields ``(offset, length)`` reads of at most 32 bytes and
is sent the bytes found there (sans-I/O); :func:`probe_reader` drives it through any
``read_at(offset, length)`` and :func:`probe_bytes` through bytes in memory.
Large boxes (``mdat``) are skipped by their declared size, never read, and the number of
boxes visited is bounded, so a hostile file cannot make a probe spin.

Must not: open files, decode URIs or touch the network. The drivers that do
(local file, ``data:`` URI, HTTP ``Range`` with its byte budget and deadline) live in
``mp4_probe.py``; each is a ``read_at`` handed to :func:`probe_reader`.

Results
-------
* ``duration``: seconds as a ``Decimal`` quantized to milliseconds (``8.000``), computed
  exactly from the integers in the file and rounded half-up; ``None`` when unknown.
* ``reason``: ``None`` on success, else a :class:`Reason` saying why. ``result.fetch_failed``
  separates "could not get the bytes" (``io``, ``network``, ``http``: the drivers' reasons)
  from "got bytes that do not say" (``not-mp4``, ``no-moov``, ``truncated``, ...). Either
  way the caller falls back to an upper bound; the distinction is for messages and logs.
* ``detail``: one human sentence; ``bytes_read``: bytes of file content read or received.

No probe raises for bad input or network trouble; only programming errors propagate.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

__all__ = [
    "ProbeResult",
    "ProbeStop",
    "Reason",
    "probe_bytes",
    "probe_reader",
]

# Boxes visited in one probe, at every level together. Real files have a handful at the
# top level and a few dozen inside moov; a file of millions of 8-byte boxes is an attack.
MAX_BOXES = 1024
# A moov declaring more than this is not a reference clip; refuse rather than trust it.
# (moov is never read whole anyway: its children are walked by header like the top level.)
MAX_MOOV_SIZE = 64 * 1024 * 1024
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


class ProbeStop(Exception):
    """Ends a probe early with a reason; never escapes a ``probe_*`` function.

    The parser raises it for data that says nothing usable, a driver's ``read_at`` for
    bytes it could not get; :func:`probe_reader` turns it into a :class:`ProbeResult`.
    """

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
            raise ProbeStop(Reason.LIMIT, f"more than {MAX_BOXES} boxes before finding mvhd")


def _parse_header(raw: bytes, start: int) -> _Box:
    if len(raw) < 8:
        raise ProbeStop(Reason.TRUNCATED, f"box header at byte {start} is cut short")
    size, kind = struct.unpack_from(">I4s", raw)
    if size == 1:
        if len(raw) < 16:
            raise ProbeStop(Reason.TRUNCATED, f"64-bit box header at byte {start} is cut short")
        (size,) = struct.unpack_from(">Q", raw, 8)
        if size < 16:
            raise ProbeStop(Reason.CORRUPT, f"box at byte {start} has largesize {size} < 16")
        return _checked(_Box(kind, start, 16, start + size))
    if size == 0:
        return _Box(kind, start, 8, None)
    if size < 8:
        raise ProbeStop(Reason.CORRUPT, f"box at byte {start} has size {size} < 8")
    return _Box(kind, start, 8, start + size)


def _checked(box: _Box) -> _Box:
    if box.end is not None and box.end > _MAX_OFFSET:
        raise ProbeStop(Reason.CORRUPT, f"box at byte {box.start} ends past any possible file")
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
                raise ProbeStop(Reason.NOT_MP4, "no data")
            raise ProbeStop(Reason.NO_MOOV, "reached the end of the file without a moov box")
        try:
            box = _parse_header(raw, offset)
        except ProbeStop as stop:
            if first:
                raise ProbeStop(Reason.NOT_MP4, f"not an MP4 ({stop.detail})") from None
            raise
        if first and box.kind not in _FIRST_BOX_TYPES:
            raise ProbeStop(Reason.NOT_MP4, f"not an MP4: starts with {box.kind!r}")
        first = False
        if box.kind == b"moov":
            return (yield from _walk_moov(box, counter))
        if box.end is None:
            raise ProbeStop(Reason.NO_MOOV, f"{box.kind!r} runs to the end of the file, no moov")
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
        raise ProbeStop(Reason.TRUNCATED, f"the file ends inside a box, at byte {offset}")
    box = _parse_header(raw, offset)
    if box.end is None:  # size 0 inside a parent: runs to the parent's end
        return replace(box, end=end)
    if end is not None and box.end > end:
        raise ProbeStop(Reason.CORRUPT, f"box {box.kind!r} at byte {offset} overruns its parent")
    return box


def _walk_moov(moov: _Box, counter: _Counter) -> _Walk:
    if moov.end is not None and moov.end - moov.start > MAX_MOOV_SIZE:
        raise ProbeStop(Reason.LIMIT, f"moov declares {moov.end - moov.start} bytes")
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
        raise ProbeStop(Reason.NO_MVHD, "moov has no mvhd box")
    raise ProbeStop(Reason.NO_DURATION, "mvhd gives no duration (fragmented MP4 without mehd)")


def _read_mvhd(box: _Box) -> Generator[_ReadRequest, bytes, tuple[int, int | None]]:
    raw = yield (box.body, 32)
    if len(raw) < 4:
        raise ProbeStop(Reason.TRUNCATED, "the file ends inside mvhd")
    version = raw[0]
    # Full box: version(1) flags(3), then creation and modification times, timescale
    # (always 32-bit) and duration; the times and duration are 32-bit in version 0 and
    # 64-bit in version 1.
    if version == 0:
        need, layout, unknown = 20, ">8xII", _MAX_U32
    elif version == 1:
        need, layout, unknown = 32, ">16xIQ", _MAX_U64
    else:
        raise ProbeStop(Reason.CORRUPT, f"mvhd version {version} is not 0 or 1")
    if box.end is not None and box.end - box.body < need:
        raise ProbeStop(Reason.CORRUPT, f"mvhd version {version} is too small")
    if len(raw) < need:
        raise ProbeStop(Reason.TRUNCATED, "the file ends inside mvhd")
    timescale, duration = struct.unpack_from(layout, raw, 4)
    if timescale == 0:
        raise ProbeStop(Reason.CORRUPT, "mvhd timescale is 0")
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
# Driving the parser: through any read_at, or over bytes in memory.
# ---------------------------------------------------------------------------------------


def probe_reader(read_at: Callable[[int, int], bytes]) -> ProbeResult:
    """Probe through ``read_at(offset, length)``: the loop every probe shares.

    ``read_at`` returns ``length`` bytes from ``offset``, fewer only at the end of the data
    and ``b""`` past it; it may raise :class:`ProbeStop` to end the probe with a reason of
    its own (``io``, ``network``, ...). Reads are small (at most 32 bytes each) and bounded
    in number. ``bytes_read`` counts the bytes ``read_at`` handed over.
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
    except ProbeStop as stop:
        return stop.result(got)
    finally:
        walker.close()


def probe_bytes(data: bytes | bytearray | memoryview) -> ProbeResult:
    """Probe an MP4 held in memory."""
    view = memoryview(data).cast("B")
    return probe_reader(lambda offset, length: bytes(view[offset : offset + length]))
