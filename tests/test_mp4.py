"""mvbatch.plan.mp4: the sans-I/O parser, driven over bytes in memory and plain readers.

The drivers that do I/O (local files, data: URIs, HTTP Range) are tested in
test_mp4_probe.py.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvbatch.plan import mp4
from mvbatch.plan.mp4 import ProbeResult, Reason

try:  # tests/ as a plain directory on sys.path, or as a package
    from mp4_fixtures import box, make_mp4, mvhd, trak_stub, udta_stub
except ImportError:  # pragma: no cover
    from tests.mp4_fixtures import box, make_mp4, mvhd, trak_stub, udta_stub

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
    assert mp4.probe_bytes(data).duration == Decimal("1000000.001")


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("moov_first", [True, False])
@pytest.mark.parametrize("largesize", [False, True])
def test_layouts(version: int, moov_first: bool, largesize: bool) -> None:
    data = make_mp4(Decimal("12.345"), version=version, moov_first=moov_first, largesize=largesize)
    assert mp4.probe_bytes(data).duration == Decimal("12.345")


def test_moov_after_large_mdat_is_reached_by_jumping() -> None:
    data = make_mp4(30, timescale=600, moov_first=False, mdat_bytes=20 * MB, largesize=True)
    result = mp4.probe_bytes(data)
    assert result.duration == Decimal("30.000")
    assert result.bytes_read < 200  # headers and the mvhd fields, nothing of mdat


def test_boxes_before_mvhd_are_skipped() -> None:
    data = make_mp4(5, before_mvhd=[udta_stub(), trak_stub(5000)], after_mvhd=[trak_stub()])
    assert mp4.probe_bytes(data).duration == 5


def test_mdat_running_to_end_of_file() -> None:
    assert mp4.probe_bytes(make_mp4(3, mdat_to_eof=True)).duration == 3
    no_moov = FTYP + struct.pack(">I4s", 0, b"mdat") + bytes(100)
    assert failed(mp4.probe_bytes(no_moov), Reason.NO_MOOV)


def test_moov_without_ftyp_like_old_quicktime() -> None:
    data = make_mp4(2)
    moov_and_mdat = data[data.index(b"moov") - 4 :]
    assert mp4.probe_bytes(moov_and_mdat).duration == 2


def test_rounding_is_half_up_to_milliseconds() -> None:
    assert mp4.probe_bytes(make_mp4(0, timescale=2000, units=1)).duration == Decimal("0.001")
    assert mp4.probe_bytes(make_mp4(0, timescale=3, units=1)).duration == Decimal("0.333")
    assert mp4.probe_bytes(make_mp4(0, timescale=3, units=2)).duration == Decimal("0.667")
    assert mp4.probe_bytes(make_mp4(0, timescale=2000, units=2999)).duration == Decimal("1.500")


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
    assert mp4.probe_bytes(data).duration == Decimal("1.500")


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


def test_reader_may_end_the_probe_with_its_own_reason() -> None:
    data = make_mp4(4, moov_first=False)
    moov_at = data.index(b"moov") - 4

    def read_at(offset: int, length: int) -> bytes:
        if offset >= moov_at:
            raise mp4.ProbeStop(Reason.NETWORK, "connection lost")
        return data[offset : offset + length]

    result = mp4.probe_reader(read_at)
    assert result == ProbeResult(None, Reason.NETWORK, "connection lost", result.bytes_read)
    assert result.fetch_failed
    assert 0 < result.bytes_read < 100


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
    assert mp4.probe_bytes(mp4_bytes).duration == expected(units, timescale)


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
    assert mp4.probe_bytes(make_mp4(seconds, timescale, version)).duration == seconds


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
