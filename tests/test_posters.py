"""Poster frames (mvbatch/report/posters.py): made by ffmpeg, cached by hash, never fatal."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from report_helpers import sha256, video_bytes
from run_helpers import write_manifest

from mvbatch.commands import reporting, running
from mvbatch.report import posters
from mvbatch.report.html import contact_sheet
from mvbatch.report.model import OutputEntry, Report, TaskEntry
from mvbatch.report.posters import PostersAsVideosLand, make_posters, poster_relpath
from mvbatch.settings import Settings

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is absent (apt-get install ffmpeg; CI has it)"
)


def videos_report(folder: Path, contents: list[bytes]) -> Report:
    tasks = []
    for n, data in enumerate(contents):
        relpath = f"videos/shot/take{n}.mp4"
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_bytes(data)
        tasks.append(
            TaskEntry(
                key=f"mvb1-{n:032d}",
                shot="shot",
                shots=("shot",),
                variant=(("take", n),),
                take=1,
                model="kling-v2-6",
                input={},
                status="succeeded",
                estimate_local=Decimal("0.1"),
                price_class="kling-v2-6",
                price_source="documented",
                upper_bound=False,
                outputs=(
                    OutputEntry(
                        0, "https://cdn.test/v.mp4", relpath, sha256(data), len(data), Decimal(2)
                    ),
                ),
            )
        )
    return Report("demo", "sim", tuple(tasks), ("shot",), {}, "2026-01-01T00:00:00Z")


def jpegs(folder: Path) -> list[Path]:
    return sorted((folder / "posters").glob("*")) if (folder / "posters").exists() else []


@needs_ffmpeg
def test_one_jpeg_per_video_named_by_its_hash_made_once(tmp_path: Path) -> None:
    contents = [video_bytes("a", 60_000), video_bytes("b", 60_000)]
    r = videos_report(tmp_path, contents)
    stats = make_posters(r, tmp_path)
    assert (stats.made, stats.cached, stats.failed) == (2, 0, 0)
    assert jpegs(tmp_path) == sorted(tmp_path / poster_relpath(sha256(c)) for c in contents)
    for poster in jpegs(tmp_path):
        assert poster.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    stamps = [p.stat().st_mtime_ns for p in jpegs(tmp_path)]
    again = make_posters(r, tmp_path)
    assert (again.made, again.cached) == (0, 2)
    assert [p.stat().st_mtime_ns for p in jpegs(tmp_path)] == stamps
    html = contact_sheet(r, tmp_path)
    assert html.count('class="poster"') == 2
    assert f'src="posters/{sha256(contents[0])}.jpg" loading="lazy"' in html


def test_without_ffmpeg_no_poster_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = videos_report(tmp_path, [video_bytes("a", 60_000)])
    stats = make_posters(r, tmp_path)
    assert (stats.made, stats.skipped, stats.failed) == (0, 1, 0)
    assert jpegs(tmp_path) == []
    html = contact_sheet(r, tmp_path)
    assert 'class="poster"' not in html
    assert 'preload="none"' in html  # the page's script asks for the first frame


@needs_ffmpeg
def test_a_video_ffmpeg_cannot_read_is_skipped_and_leaves_nothing(tmp_path: Path) -> None:
    r = videos_report(tmp_path, [b"not a video at all", video_bytes("ok", 60_000)])
    stats = make_posters(r, tmp_path)
    assert (stats.made, stats.failed) == (1, 1)
    assert [p.name for p in jpegs(tmp_path)] == [f"{r.tasks[1].outputs[0].sha256}.jpg"]


def test_a_hung_ffmpeg_is_stopped_by_the_timeout(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 60\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = videos_report(tmp_path, [video_bytes("a", 60_000)])
    stats = make_posters(r, tmp_path, ffmpeg=os.fspath(fake), timeout=0.5)
    assert (stats.made, stats.failed) == (0, 1)
    assert jpegs(tmp_path) == []


@needs_ffmpeg
def test_posters_are_made_as_videos_land_once_each(tmp_path: Path) -> None:
    good, other = video_bytes("a", 60_000), video_bytes("b", 60_000)
    for name, data in (("a.mp4", good), ("b.mp4", other), ("bad.mp4", b"not a video")):
        (tmp_path / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(data)
    maker = PostersAsVideosLand()
    maker.saved(tmp_path, "videos/a.mp4", sha256(good))
    maker.saved(tmp_path, "videos/a.mp4", sha256(good))  # the same video: one poster
    maker.saved(tmp_path, "videos/b.mp4", sha256(other))
    maker.saved(tmp_path, "videos/bad.mp4", sha256(b"not a video"))  # failed, nothing left
    maker.saved(tmp_path, "../outside.mp4", "f" * 64)  # not inside the folder: ignored
    maker.close()
    maker.close()  # twice is harmless
    assert jpegs(tmp_path) == sorted(tmp_path / poster_relpath(sha256(c)) for c in (good, other))
    maker.saved(tmp_path, "videos/b.mp4", "e" * 64)  # after close: nothing, no error
    assert len(jpegs(tmp_path)) == 2


def posters_found_by_the_report(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """The posters on disk each time a report is about to make the missing ones."""
    found: list[list[Path]] = []
    make = posters.make_posters

    def recording(report: Report, folder: Path, **kwargs: Any) -> posters.PosterStats:
        found.append(jpegs(folder))
        return make(report, folder, **kwargs)

    monkeypatch.setattr(posters, "make_posters", recording)
    return found


@needs_ffmpeg
def test_a_run_has_made_its_posters_before_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report of a run finds every video's poster made while the videos landed."""
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")
    path = write_manifest(
        tmp_path, "posters", [{"id": s, "prompt": f"a {s}"} for s in ("fox", "crow", "owl")]
    )
    settings = Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "out")
    found_at_report = posters_found_by_the_report(monkeypatch)
    prepared = running.prepare_run(
        path, settings, simulate=True, max_cost=None, concurrency=3, retry_failed=False
    )
    try:
        outcome = asyncio.run(running.execute(prepared, download=True))
    finally:
        prepared.close()
    assert outcome.report is not None
    videos = [o for t in outcome.report.report.tasks for o in t.outputs]
    assert len(videos) == 3
    assert all(o.sha256 for o in videos)
    folder = tmp_path / "out" / "posters"
    expected = sorted(folder / poster_relpath(o.sha256 or "") for o in videos)
    assert found_at_report == [expected]


@needs_ffmpeg
def test_a_report_that_downloads_has_made_its_posters_before_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mvbatch report` after `run --no-download`: the posters come with the videos."""
    monkeypatch.setenv("MVBATCH_SIM_SPEED", "0")
    path = write_manifest(
        tmp_path, "later", [{"id": s, "prompt": f"a {s}"} for s in ("elk", "jay")]
    )
    settings = Settings(MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "out")
    prepared = running.prepare_run(
        path, settings, simulate=True, max_cost=None, concurrency=2, retry_failed=False
    )
    try:
        asyncio.run(running.execute(prepared, download=False))
    finally:
        prepared.close()
    found_at_report = posters_found_by_the_report(monkeypatch)
    written = reporting.report_manifest(path, settings, download=True)
    videos = [o for t in written.report.tasks for o in t.outputs]
    assert len(videos) == 2
    folder = tmp_path / "out" / "later"
    assert found_at_report == [sorted(folder / poster_relpath(o.sha256 or "") for o in videos)]


def test_an_interrupted_run_drops_the_queued_posters(tmp_path: Path) -> None:
    """After Ctrl-C the run ends without making the posters still queued (the next
    report makes them): at most the one under way is waited for."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\nexec sleep 0.3\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    maker = PostersAsVideosLand(os.fspath(fake))
    for n in range(4):
        (tmp_path / f"v{n}.mp4").write_bytes(video_bytes(str(n), 1_000))
        maker.saved(tmp_path, f"v{n}.mp4", f"{n}" * 64)
    maker.close(finish=False)
    made = calls.read_text().count("x") if calls.exists() else 0
    assert made <= 1
    assert jpegs(tmp_path) == []
