"""Writes the simulator's output videos and reads the duration of reference videos.

Outputs are real, playable H.264 MP4 files: the moov/trak box tree of ISO/IEC
14496-12 around a few tiny frames from `data/frames.json` (see
`make_frames.py`), repeated at a low frame rate for the clip's duration. A
trailing `free` box of per-task seeded bytes makes every file different and
gives it a size that grows with duration and tier, as real outputs do.

This module knows nothing about tasks or HTTP; it turns numbers into bytes and
back.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib.resources import files

TIMESCALE = 1000  # milliseconds: clip durations are whole or fractional seconds
FRAMES_PER_SECOND = 2  # low on purpose: the picture is a still colour
_IDENTITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


@dataclass(frozen=True, slots=True)
class FrameSet:
    """Parameter sets and two alternating IDR frames of one colour at one size."""

    width: int
    height: int
    avcc: bytes
    frames: tuple[bytes, bytes]


@cache
def _frame_data() -> dict[str, object]:
    text = files("mvbatch.sim").joinpath("data/frames.json").read_text(encoding="utf-8")
    data: dict[str, object] = json.loads(text)
    return data


@cache
def frame_sets(aspect_ratio: str) -> tuple[FrameSet, ...]:
    """Every colour available for an aspect ratio (16:9 when the ratio is unknown)."""
    sets = _frame_data()["sets"]
    assert isinstance(sets, dict)
    entry = sets.get(aspect_ratio) or sets["16:9"]
    return tuple(
        FrameSet(
            width=entry["width"],
            height=entry["height"],
            avcc=bytes.fromhex(variant["avcC"]),
            frames=(
                bytes.fromhex(variant["frames"][0]),
                bytes.fromhex(variant["frames"][1]),
            ),
        )
        for variant in entry["variants"]
    )


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _sample_durations(duration_ms: int) -> list[int]:
    """Frame durations in timescale units that add up to exactly `duration_ms`."""
    step = TIMESCALE // FRAMES_PER_SECOND
    count = max(1, -(-duration_ms // step))
    return [step] * (count - 1) + [duration_ms - step * (count - 1)]


def _stts(durations: list[int]) -> bytes:
    runs: list[tuple[int, int]] = []
    for delta in durations:
        if runs and runs[-1][1] == delta:
            runs[-1] = (runs[-1][0] + 1, delta)
        else:
            runs.append((1, delta))
    entries = b"".join(struct.pack(">II", count, delta) for count, delta in runs)
    return _full_box(b"stts", 0, 0, struct.pack(">I", len(runs)), entries)


def _avc1(frame_set: FrameSet) -> bytes:
    return _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HH", frame_set.width, frame_set.height),
        struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
        bytes(4),
        struct.pack(">H", 1),  # frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),
        _box(b"avcC", frame_set.avcc),
    )


def _moov(frame_set: FrameSet, durations: list[int], sizes: list[int], chunk_offset: int) -> bytes:
    duration = sum(durations)
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">IH", 0x00010000, 0x0100),  # rate 1.0, volume 1.0
        bytes(10),
        _IDENTITY_MATRIX,
        bytes(24),
        struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x3,  # enabled, in movie
        struct.pack(">IIII", 0, 0, 1, 0),
        struct.pack(">I", duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),
        _IDENTITY_MATRIX,
        struct.pack(">II", frame_set.width << 16, frame_set.height << 16),
    )
    mdhd = _full_box(
        b"mdhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, TIMESCALE, duration),
        struct.pack(">HH", 0x55C4, 0),  # language "und"
    )
    hdlr = _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), _avc1(frame_set)),
        _stts(durations),
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(sizes), 1)),
        _full_box(
            b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)), struct.pack(f">{len(sizes)}I", *sizes)
        ),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset)),
    )
    minf = _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))


def write_mp4(*, seconds: Decimal, aspect_ratio: str, target_size: int, seed: bytes) -> bytes:
    """A playable MP4 of `seconds` (mvhd duration exact to the millisecond).

    `seed` picks the colour and the padding bytes, so two seeds give two
    different files; `target_size` is met by the padding when the frames alone
    are smaller.
    """
    rng = random.Random(seed)
    choices = frame_sets(aspect_ratio)
    frame_set = choices[rng.randrange(len(choices))]
    durations = _sample_durations(max(1, int(seconds * TIMESCALE)))
    samples = [frame_set.frames[n % 2] for n in range(len(durations))]
    sizes = [len(s) for s in samples]

    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    provisional = _moov(frame_set, durations, sizes, 0)
    chunk_offset = len(ftyp) + len(provisional) + 8
    moov = _moov(frame_set, durations, sizes, chunk_offset)
    mdat = _box(b"mdat", *samples)

    head = ftyp + moov + mdat
    padding = max(0, target_size - len(head) - 8)
    return head + _box(b"free", rng.randbytes(padding))


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box between `start` and `end`."""
    end = len(data) if end is None else end
    boxes: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                break
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            break
        boxes.append((kind, pos + header, pos + size))
        pos += size
    return boxes


def read_duration(data: bytes) -> Decimal | None:
    """The movie duration in seconds from `moov/mvhd`, or None if there is none.

    `data` may be a prefix of the file, as long as the moov box is inside it.
    """
    for kind, start, end in iter_boxes(data):
        if kind != b"moov":
            continue
        for inner, body, body_end in iter_boxes(data, start, end):
            if inner != b"mvhd" or body_end - body < 20:
                continue
            version = data[body]
            if version == 1 and body_end - body >= 32:
                timescale, duration = struct.unpack_from(">IQ", data, body + 20)
            else:
                timescale, duration = struct.unpack_from(">II", data, body + 12)
            if timescale == 0:
                return None
            return Decimal(duration) / Decimal(timescale)
    return None
