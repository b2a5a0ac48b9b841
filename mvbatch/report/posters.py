"""Poster frames: one small JPEG per downloaded video, so the contact sheet shows pictures first.

Owns: `posters/<sha256>.jpg` in the report folder, one per video, named by
the video's content hash (so a poster is made once per distinct video, kept
across reports, and never goes stale: a changed video has another hash);
making the missing ones with ffmpeg (`make_posters`), each under a timeout,
a few at a time, or one by one as a run downloads each video
(`PostersAsVideosLand`); and `poster_relpath`, the one place the name is decided
(`html.py` asks it whether a video has a poster).

Never fatal: ffmpeg absent, a video ffmpeg cannot read, a timeout or a full
disk leaves that video without a poster and logs `poster.failed` (or
`poster.no_ffmpeg` once); the report is written all the same. Without a
poster the page falls back to the browser's own first frame: the video's
`preload` becomes "metadata" when its card nears the viewport, so Chromium
and Firefox fetch the header and paint frame one (slower on a large sheet,
still lazy).

Must not: change or move a video, write outside `posters/`, or leave a
half-written JPEG (each is written beside its final name and renamed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath

from mvbatch import logs
from mvbatch.downloads.naming import contained
from mvbatch.plan import mp4_probe
from mvbatch.report.model import Report

FOLDER = "posters"
WIDTH = 480  # pixels: a card is at most 320 CSS pixels wide, sharp on a 1.5x screen
TIMEOUT = 20.0  # seconds for one video
DEADLINE = 180.0  # seconds for all of them: the rest are made by the next report
WORKERS = 4

log = logs.get("mvbatch.report.posters")


@dataclass(frozen=True, slots=True)
class PosterStats:
    made: int = 0
    cached: int = 0
    failed: int = 0
    skipped: int = 0  # no ffmpeg, or past the deadline


def poster_relpath(sha256: str) -> PurePosixPath:
    """Where the poster of the video with this content hash lives, inside the report folder."""
    return PurePosixPath(FOLDER, f"{sha256}.jpg")


def make_posters(
    report: Report,
    folder: Path,
    *,
    ffmpeg: str | None = None,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
) -> PosterStats:
    """Make the poster of every downloaded video of `report` that has none yet."""
    wanted: dict[str, tuple[Path, Decimal | None]] = {}
    cached = 0
    for task in report.tasks:
        for output in task.outputs:
            if not output.path or not output.sha256 or output.sha256 in wanted:
                continue
            if (folder / poster_relpath(output.sha256)).is_file():
                cached += 1
                continue
            video = contained(folder, output.path)
            if video is not None:
                wanted[output.sha256] = (video, output.video_seconds)
    if not wanted:
        return PosterStats(cached=cached)
    binary = ffmpeg or shutil.which("ffmpeg")
    if binary is None:
        log.info("poster.no_ffmpeg", videos=len(wanted), fallback="first frame in the browser")
        return PosterStats(cached=cached, skipped=len(wanted))
    try:
        (folder / FOLDER).mkdir(exist_ok=True)
    except OSError as error:
        log.warning("poster.failed", reason=str(error))
        return PosterStats(cached=cached, failed=len(wanted))
    stop = time.monotonic() + deadline

    def one(item: tuple[str, tuple[Path, Decimal | None]]) -> str:
        sha, (video, seconds) = item
        if time.monotonic() > stop:
            return "skipped"
        return _make_one(binary, video, folder / poster_relpath(sha), seconds, timeout)

    with ThreadPoolExecutor(max_workers=min(WORKERS, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(one, wanted.items()))
    stats = PosterStats(
        made=outcomes.count("made"),
        cached=cached,
        failed=outcomes.count("failed"),
        skipped=outcomes.count("skipped"),
    )
    log.info("poster.made", made=stats.made, cached=cached, failed=stats.failed)
    return stats


class PostersAsVideosLand:
    """Posters made while a run runs, one video at a time, as each is downloaded.

    A run used to make every poster after its last video (12 s for 200 videos
    here): its process ended that much later than the videos. Now each new
    video's poster is made in one background thread as the video lands
    (`saved`, the downloader's hook). One thread: ffmpeg never takes more than
    one core from the run. `close` finishes the poster being made and makes
    the ones still queued (videos that landed together) a few at a time: once
    it returns, every video handed in has its poster, or a logged reason.
    """

    def __init__(self, ffmpeg: str | None = None, *, timeout: float = TIMEOUT) -> None:
        self.binary = ffmpeg or shutil.which("ffmpeg")
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1) if self.binary else None
        self._queued: list[tuple[Future[str], tuple[Path, str, str]]] = []
        self._seen: set[str] = set()

    def saved(self, folder: Path, relpath: str, sha256: str) -> None:
        """A video was just downloaded and verified: queue its poster."""
        if self._pool is None or not sha256 or sha256 in self._seen:
            return
        self._seen.add(sha256)
        video = (folder, relpath, sha256)
        self._queued.append((self._pool.submit(self._one, *video), video))

    def close(self, *, finish: bool = True) -> None:
        """Wait for the poster under way; make the queued ones too if `finish`.

        Not `finish` (a run interrupted, the downloads failed): the queued
        ones are dropped, for the next report to make; Ctrl-C must not wait
        for a backlog of ffmpeg runs.
        """
        if self._pool is None:
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        made = [f.result() for f, _ in self._queued if not f.cancelled()]
        backlog = [video for f, video in self._queued if f.cancelled()] if finish else []
        if backlog:
            with ThreadPoolExecutor(max_workers=min(WORKERS, os.cpu_count() or 1)) as pool:
                made += pool.map(lambda video: self._one(*video), backlog)
        self._queued = []
        if made:
            log.info(
                "poster.made_during_run",
                made=made.count("made"),
                failed=made.count("failed"),
                after_the_run=len(backlog),
            )

    def _one(self, folder: Path, relpath: str, sha256: str) -> str:
        target = folder / poster_relpath(sha256)
        video = contained(folder, relpath)
        if self.binary is None or video is None:
            return "skipped"
        if target.is_file():
            return "cached"
        try:
            target.parent.mkdir(exist_ok=True)
        except OSError as error:
            log.warning("poster.failed", reason=str(error))
            return "failed"
        seconds = mp4_probe.local_duration(video)
        return _make_one(self.binary, video, target, seconds, self.timeout)


def _make_one(
    ffmpeg: str, video: Path, target: Path, seconds: Decimal | None, timeout: float
) -> str:
    # A frame a little way in: the first is often black or a fade-in.
    at = 0.0 if seconds is None else min(1.0, float(seconds) / 4)
    part = target.with_name(f".{target.name}.part")
    command = [
        ffmpeg,
        *("-hide_banner", "-loglevel", "error", "-nostdin", "-y"),
        *("-ss", f"{at:.3f}", "-i", str(video)),
        *("-frames:v", "1", "-vf", f"scale='min({WIDTH},iw)':-2", "-q:v", "5"),
        *("-f", "image2", "-c:v", "mjpeg", str(part)),
    ]
    try:
        # A fixed argument list: the video path is our own, inside the report folder.
        done = subprocess.run(  # noqa: S603
            command, capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0 or not part.is_file() or part.stat().st_size == 0:
            reason = done.stderr.decode(errors="replace").strip()[-300:] or "no frame written"
            log.warning("poster.failed", video=str(video), reason=reason)
            part.unlink(missing_ok=True)
            return "failed"
        part.replace(target)
    except subprocess.TimeoutExpired:
        log.warning("poster.failed", video=str(video), reason=f"ffmpeg took over {timeout:g} s")
        part.unlink(missing_ok=True)
        return "failed"
    except OSError as error:
        log.warning("poster.failed", video=str(video), reason=str(error))
        part.unlink(missing_ok=True)
        return "failed"
    return "made"
