"""Synthetic MP4 files for tests: ftyp + moov(mvhd) + mdat, in either order.

The bytes are a structurally valid ISO-BMFF skeleton, enough for anything that reads the
box tree (mvbatch.plan.mp4), not a playable video. Typical use from other tests::

    from mp4_fixtures import write_mp4
    ref = write_mp4(tmp_path / "ref.mp4", 8)  # an exactly 8 s reference clip

``duration_s`` is turned into mvhd units with exact rational arithmetic (half-up), so
``make_mp4(Decimal("8.5"), timescale=1000)`` stores exactly 8500 units.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

__all__ = ["box", "make_mp4", "mvhd", "mvhd_units", "trak_stub", "udta_stub", "write_mp4"]


def box(kind: bytes | str, payload: bytes = b"", *, largesize: bool = False) -> bytes:
    """One box: 32-bit size + type + payload, or size 1 + type + 64-bit largesize."""
    kind = kind.encode("latin-1") if isinstance(kind, str) else kind
    assert len(kind) == 4, kind
    if largesize:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mvhd_units(duration_s: float | Decimal | Fraction | int, timescale: int) -> int:
    """``duration_s * timescale`` rounded half-up, computed exactly."""
    exact = Fraction(str(duration_s)) if isinstance(duration_s, float) else Fraction(duration_s)
    scaled = exact * timescale
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    return whole + (1 if 2 * rest >= scaled.denominator else 0)


def mvhd(units: int, timescale: int, version: int = 0) -> bytes:
    """A complete mvhd box (108 bytes for version 0, 120 for version 1)."""
    tail = (
        struct.pack(">IH10x", 0x00010000, 0x0100)  # rate 1.0, volume 1.0, reserved
        + struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)  # unity matrix
        + bytes(24)  # pre_defined
        + struct.pack(">I", 2)  # next_track_ID
    )
    if version == 0:
        times = struct.pack(">IIII", 0, 0, timescale, units)
    elif version == 1:
        times = struct.pack(">QQIQ", 0, 0, timescale, units)
    else:
        times = bytes(32)  # what a file with an unknown version might carry
    return box("mvhd", struct.pack(">B3x", version) + times + tail)


def udta_stub() -> bytes:
    """A user-data box with a name, the kind of box that may precede mvhd."""
    return box("udta", box("name", b"reference clip"))


def trak_stub(payload_bytes: int = 200) -> bytes:
    """A track box with a tkhd and some opaque media bytes."""
    tkhd = box("tkhd", bytes(84))
    return box("trak", tkhd + box("mdia", bytes(payload_bytes)))


def make_mp4(
    duration_s: float | Decimal | Fraction | int,
    timescale: int = 1000,
    version: int = 0,
    moov_first: bool = True,
    mdat_bytes: int = 1000,
    largesize: bool = False,
    *,
    units: int | None = None,
    before_mvhd: Sequence[bytes] = (),
    after_mvhd: Sequence[bytes] = (),
    mdat_to_eof: bool = False,
    brand: bytes = b"isom",
) -> bytes:
    """ftyp + moov(mvhd) + mdat, or ftyp + mdat + moov when ``moov_first`` is False.

    ``units`` overrides the mvhd duration field (e.g. 0 or 0xFFFFFFFF for "unknown");
    ``before_mvhd``/``after_mvhd`` are boxes placed around mvhd inside moov;
    ``largesize`` writes mdat with a 64-bit size; ``mdat_to_eof`` writes mdat with size
    0 ("to the end of the file"), which only makes sense when it is the last box.
    """
    if units is None:
        units = mvhd_units(duration_s, timescale) if timescale else 0
    ftyp = box("ftyp", brand + struct.pack(">I", 0x200) + brand + b"iso2mp41")
    moov = box(
        "moov", b"".join(before_mvhd) + mvhd(units, timescale, version) + b"".join(after_mvhd)
    )
    media = bytes(mdat_bytes)
    if mdat_to_eof:
        assert moov_first, "a size-0 mdat runs to the end of the file, so it must be last"
        mdat = struct.pack(">I4s", 0, b"mdat") + media
    else:
        mdat = box("mdat", media, largesize=largesize)
    return ftyp + (moov + mdat if moov_first else mdat + moov)


def write_mp4(path: Path, duration_s: float | Decimal | Fraction | int, **options: object) -> Path:
    """Write ``make_mp4(duration_s, **options)`` to ``path`` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_mp4(duration_s, **options))  # type: ignore[arg-type]
    return path
