"""The MP4 writer: box structure, exact durations, sizes, per-seed bytes, playability."""

from __future__ import annotations

import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvbatch.sim.mp4 import frame_sets, iter_boxes, read_duration, write_mp4


def video(seconds: str = "5", aspect: str = "16:9", size: int = 0, seed: bytes = b"s") -> bytes:
    return write_mp4(seconds=Decimal(seconds), aspect_ratio=aspect, target_size=size, seed=seed)


def box_tree(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, tuple[int, int]]:
    return {kind: (body, stop) for kind, body, stop in iter_boxes(data, start, end)}


def test_top_level_boxes_are_ftyp_moov_mdat_free() -> None:
    data = video(size=50_000)
    assert [kind for kind, _, _ in iter_boxes(data)] == [b"ftyp", b"moov", b"mdat", b"free"]
    assert data[8:12] == b"isom"
    moov = box_tree(data)[b"moov"]
    assert set(box_tree(data, *moov)) == {b"mvhd", b"trak"}


def test_track_describes_an_avc1_stream_of_the_right_size() -> None:
    data = video(aspect="9:16")
    trak = box_tree(data, *box_tree(data, *box_tree(data)[b"moov"])[b"trak"])
    tkhd_body, _ = trak[b"tkhd"]
    width, height = struct.unpack_from(">II", data, tkhd_body + 76)
    assert (width >> 16, height >> 16) == (180, 320)
    assert b"avc1" in data
    assert b"avcC" in data
    stco = data.index(b"stco")
    (offset,) = struct.unpack_from(">I", data, stco + 12)
    mdat_body, _ = box_tree(data)[b"mdat"]
    assert offset == mdat_body  # the chunk offset points at the first frame


@settings(max_examples=40, deadline=None)
@given(milliseconds=st.integers(100, 30_000))
def test_mvhd_duration_equals_the_clip_duration(milliseconds: int) -> None:
    seconds = Decimal(milliseconds) / 1000
    assert read_duration(video(str(seconds))) == seconds


def test_size_is_met_and_bytes_depend_on_the_seed() -> None:
    assert len(video(size=300_000)) == 300_000
    assert video(seed=b"a") != video(seed=b"b")
    assert video(seed=b"a") == video(seed=b"a")
    assert len(video("10")) > len(video("5"))  # more frames even without padding


def test_every_aspect_ratio_has_eight_colours() -> None:
    for aspect in ("16:9", "9:16", "1:1"):
        assert len(frame_sets(aspect)) == 8
    assert frame_sets("21:9") == frame_sets("16:9")


def test_read_duration_needs_a_moov() -> None:
    assert read_duration(b"") is None
    assert read_duration(b"\x00\x00\x00\x08free") is None
    data = video("8")
    moov_end = box_tree(data)[b"moov"][1]
    assert read_duration(data[:moov_end]) == Decimal(8)  # a header prefix is enough


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
def test_ffmpeg_decodes_every_frame_without_error(tmp_path: Path, aspect: str) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(video("3.5", aspect, size=100_000))
    probe = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
            "-show_entries", "stream=codec_name,nb_read_frames:format=duration",
            "-of", "default=noprint_wrappers=1", path,
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "codec_name=h264" in probe.stdout
    assert "nb_read_frames=7" in probe.stdout
    assert "duration=3.500000" in probe.stdout
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert decode.returncode == 0
    assert decode.stderr == ""
