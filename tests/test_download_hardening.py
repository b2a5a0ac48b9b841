"""Downloads against hosts, disks and users that misbehave: each ends, says why, and resumes.

- A host that trickles, or says nothing, is cut off by the minimum rate; a
  transfer past its deadline is given up; either way the part stays, and a
  later fetch resumes it with Range. Real loopback sockets, with small
  `Bounds` so the tests take a second; no duration is asserted.
- What arrived is checked before a file is final: an error page, a JSON
  body or bytes that do not start like an MP4 are refused, never saved as
  the video.
- A full disk (ENOSPC, injected) deletes the part, stops the downloads,
  records nothing, and says where and how much; the report write too. Where
  this machine lets us mount a small tmpfs, a real full disk end to end.
- A report never claims a file it has not seen: a deleted or changed video
  is missing in the report, also with `--no-download`.
- Downloads retry under the one retry policy (`mvbatch.api.retry`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from report_helpers import FileServer, add_task, sha256, task_row, video_bytes
from run_helpers import cli, cli_env
from structlog.testing import capture_logs

from mvbatch import errors
from mvbatch.api.retry import RetryPolicy
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.commands.reporting import report_manifest
from mvbatch.downloads import fetch, partfile
from mvbatch.downloads.fetch import Downloader, Fetched
from mvbatch.downloads.naming import output_relpath, report_folder
from mvbatch.ledger import Ledger, SqliteLedger, TaskRow, open_ledger
from mvbatch.report import formats
from mvbatch.report.command import write_report
from mvbatch.settings import Settings

ENV = "sim"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    return SqliteLedger(tmp_path / "state")


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


def succeeded(ledger: Ledger, name: str, url: str | None = None) -> TaskRow:
    return add_task(
        ledger,
        ENV,
        task_row(f"mvb1-{name:0<32}", "shot", {"mode": "std"}),
        urls=[url or f"https://files.example.test/out/{name}.mp4?sig=abc"],
        task_id=f"task_{name}",
    )


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part")) if folder.is_dir() else []


def videos(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.mp4")) if folder.is_dir() else []


def bounds(**values: float) -> Any:
    """Small transfer bounds, so that a test takes a fraction of a second."""
    from mvbatch.downloads.pace import Bounds

    small = {"min_rate": 64 * 1024, "window": 0.5, "grace": 0.5, "deadline_base": 30.0}
    return Bounds(**{**small, **values})


# ---------------------------------------------------- slow hosts (defect 4)


class Host:
    """A file host on loopback, honouring Range, whose manner can change between requests.

    `manner`: "fast" (the whole body at once), "trickle" (64 bytes every
    10 ms: about 6 KB/s), "steady" (2 KB every 10 ms: about 200 KB/s), or
    "silent" (reads the request, never answers).
    """

    def __init__(self, data: bytes, manner: str) -> None:
        self.data, self.manner = data, manner
        self.ranges: list[int | None] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/out.mp4"

    async def __aenter__(self) -> Host:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # Python 3.12's wait_closed waits for every connection: the ones a
        # cut-off transfer left are closed by the client, soon.
        await asyncio.wait_for(self.server.wait_closed(), 10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"\r\nrange: bytes=(\d+)-", head, re.IGNORECASE)
                start = int(found.group(1)) if found else 0
                self.ranges.append(start if found else None)
                if self.manner == "silent":
                    await reader.read()  # until the client hangs up
                    return
                body = self.data[start:]
                status = "200 OK"
                if found:
                    where = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
                    status = f"206 Partial Content\r\nContent-Range: {where}"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: video/mp4\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                step = {"fast": len(body) or 1, "trickle": 64, "steady": 2048}[self.manner]
                for offset in range(0, len(body), step):
                    writer.write(body[offset : offset + step])
                    await writer.drain()
                    if self.manner != "fast":
                        await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up: nothing more to send
        finally:
            writer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("manner", ["trickle", "silent"])
def test_a_slow_host_is_cut_off_retried_with_range_then_reported_and_resumed_later(
    ledger: Ledger, output_dir: Path, manner: str
) -> None:
    data = video_bytes("slow", 200_000)

    async def go() -> tuple[Fetched, Fetched, Host]:
        async with Host(data, manner) as host:
            row = succeeded(ledger, "slow", host.url)
            async with httpx.AsyncClient() as client:
                downloader = Downloader(ledger, client, output_dir, bounds=bounds(), max_failures=2)
                [first] = await downloader.fetch([row])
                host.manner = "fast"  # a later run finds the host well again
                [again] = await Downloader(ledger, client, output_dir).fetch([row])
        return first, again, host

    first, again, host = asyncio.run(go())
    assert first.outcome == "failed"
    assert "slower than 64 KiB/s for 0.5 s" in (first.error or "")
    assert first.attempts == 2  # retried like a broken transfer, then given up
    assert again.outcome == "downloaded"
    assert again.sha256 == sha256(data)
    if manner == "trickle":
        # Each retry resumed from the bytes already on disk.
        assert host.ranges[0] is None
        assert all(start is not None and start > 0 for start in host.ranges[1:])
        assert first.resumed >= 1
    assert parts(output_dir) == []


@pytest.mark.timeout(60)
def test_a_transfer_past_its_deadline_is_given_up_and_its_part_kept(
    ledger: Ledger, output_dir: Path
) -> None:
    data = video_bytes("late", 200_000)  # at ~200 KB/s: about a second

    async def go() -> Fetched:
        async with Host(data, "steady") as host:
            row = succeeded(ledger, "late", host.url)
            async with httpx.AsyncClient() as client:
                limits = bounds(min_rate=1, deadline_base=0.2, deadline_rate=10**12)
                [result] = await Downloader(ledger, client, output_dir, bounds=limits).fetch([row])
        return result

    result = asyncio.run(go())
    assert result.outcome == "failed"
    assert "not finished within 0.2 s" in (result.error or "")
    assert result.attempts == 1  # a deadline is not retried
    assert len(parts(output_dir)) == 1  # kept: the next run resumes it
    assert videos(output_dir) == []


@pytest.mark.timeout(60)
def test_a_host_above_the_minimum_rate_is_never_cut_off(ledger: Ledger, output_dir: Path) -> None:
    data = video_bytes("steady", 300_000)  # at ~200 KB/s: longer than the first window

    async def go() -> Fetched:
        async with Host(data, "steady") as host:
            row = succeeded(ledger, "steady", host.url)
            async with httpx.AsyncClient() as client:
                limits = bounds(min_rate=16 * 1024)  # a tenth of what the host sends
                [result] = await Downloader(ledger, client, output_dir, bounds=limits).fetch([row])
        return result

    result = asyncio.run(go())
    assert (result.outcome, result.attempts) == ("downloaded", 1)
    assert result.sha256 == sha256(data)


def test_the_default_bounds_are_the_documented_ones() -> None:
    from mvbatch.downloads import pace

    limits = pace.Bounds()
    assert (limits.min_rate, limits.window, limits.grace) == (32 * 1024, 30.0, 30.0)
    assert limits.deadline_for(256 * 1024 * 100) == 60.0 + 100
    assert limits.slow_words == "slower than 32 KiB/s for 30 s"


# ------------------------------------------------- what arrived (defect 13)


MP4 = video_bytes("head", 20_000)


@pytest.mark.parametrize(
    ("content_type", "head"),
    [
        ("video/mp4", MP4),
        (None, MP4),
        ("application/octet-stream", MP4),
        ("binary/octet-stream", MP4),
        ("video/quicktime", b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat" + b"\x00" * 100),
        ("video/mp4", b"\x00\x00\x10\x00moov" + b"\x00" * 100),
        ("video/mp4", b"\x00\x00\x00\x08free" + b"\x00" * 100),
        ("video/mp4", b"\x00\x00\x00\x01mdat" + b"\x00" * 100),
    ],
)
def test_a_video_passes_the_check_of_what_arrived(content_type: str | None, head: bytes) -> None:
    from mvbatch.downloads import verify

    assert verify.not_a_video(content_type, head[: verify.HEAD_BYTES]) is None


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        (
            "application/json",
            b'{"error": {"code": "not_found", "message": "The object does not exist."}}',
            'the server sent application/json, not a video: {"error": {"code": "not_found"',
        ),
        (
            "text/html; charset=utf-8",
            b"<!doctype html><html><body>Access denied</body></html>",
            "the server sent text/html, not a video: <!doctype html>",
        ),
        (
            "video/mp4",
            b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>",
            "the server sent video/mp4, not a video: <?xml",
        ),
        (None, b"Not Found", "the server sent data without a Content-Type, not a video: Not Found"),
        ("video/mp4", b"\x00" * 200, "the server sent video/mp4, not a video: \\x00"),
        ("application/problem+json", b"{}", "the server sent application/problem+json"),
    ],
)
def test_anything_else_is_refused_with_what_it_was(
    content_type: str | None, body: bytes, says: str
) -> None:
    from mvbatch.downloads import verify

    words = verify.not_a_video(content_type, body[: verify.HEAD_BYTES])
    assert words is not None
    assert words.startswith(says)
    assert len(words) < 200  # the first 100 characters, not the whole body


def test_what_arrived_is_redacted() -> None:
    from mvbatch.downloads import verify

    words = verify.not_a_video("application/json", b'{"echo": "Bearer mv_live_abcdef123456"}')
    assert words is not None
    assert "mv_live_abcdef123456" not in words


def error_body(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"Content-Type": "application/json"},
        content=b'{"error": {"code": "not_found", "message": "The object does not exist."}}',
    )


def test_a_json_body_at_a_video_url_is_refused_after_fresh_urls_and_never_saved(
    ledger: Ledger, output_dir: Path
) -> None:
    row = succeeded(ledger, "json")
    asked: list[str] = []

    async def refresh(task_id: str) -> list[str]:
        asked.append(task_id)
        return ["https://files.example.test/out/json.mp4?sig=fresh"]

    async def go() -> Fetched:
        async with httpx.AsyncClient(transport=httpx.MockTransport(error_body)) as client:
            downloader = Downloader(ledger, client, output_dir, refresh=refresh, max_refreshes=2)
            [result] = await downloader.fetch([row])
        return result

    result = asyncio.run(go())
    assert result.outcome == "failed"
    assert (result.error or "").startswith(
        'the server sent application/json, not a video: {"error": {"code": "not_found"'
    )
    assert "2 fresh URL(s) tried" in (result.error or "")
    assert asked == ["task_json"] * 2  # refused like an expired URL: fresh URLs first
    assert ledger.outputs(ENV, row.key)[0].path is None
    assert videos(output_dir) == []
    assert parts(output_dir) == []


def test_a_refused_body_then_a_fresh_url_that_serves_the_video(
    ledger: Ledger, output_dir: Path
) -> None:
    row = succeeded(ledger, "then")
    data = video_bytes("then")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("sig") == "fresh":
            return httpx.Response(200, headers={"Content-Type": "video/mp4"}, content=data)
        return httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>")

    async def refresh(task_id: str) -> list[str]:
        return ["https://files.example.test/out/then.mp4?sig=fresh"]

    async def go() -> Fetched:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            [result] = await Downloader(ledger, client, output_dir, refresh=refresh).fetch([row])
        return result

    result = asyncio.run(go())
    assert (result.outcome, result.refreshes) == ("downloaded", 1)
    assert result.sha256 == sha256(data)


@pytest.mark.parametrize("content_type", [None, "video/mp4", "application/octet-stream"])
def test_bytes_that_do_not_start_like_an_mp4_are_not_saved_as_one(
    ledger: Ledger, output_dir: Path, content_type: str | None
) -> None:
    row = succeeded(ledger, "junk")
    body = b"<html><body>Service temporarily in maintenance</body></html>" * 50
    headers = {"Content-Type": content_type} if content_type else {}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, content=body)

    async def go() -> Fetched:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            [result] = await Downloader(ledger, client, output_dir).fetch([row])
        return result

    result = asyncio.run(go())
    assert result.outcome == "failed"
    assert "not a video: <html><body>Service" in (result.error or "")
    assert videos(output_dir) == []
    assert parts(output_dir) == []
    assert ledger.outputs(ENV, row.key)[0].path is None


def test_a_part_that_does_not_start_like_a_video_is_fetched_again_from_zero(
    ledger: Ledger, output_dir: Path
) -> None:
    # A part left by another program (or an older mvbatch that kept an error
    # page): the host is fine, the part is not; it is not made final.
    row = succeeded(ledger, "bad-part")
    data = video_bytes("bad-part")
    final = report_folder(output_dir, "demo") / output_relpath(row, 0)
    final.parent.mkdir(parents=True)
    final.with_name(f".{final.name}.part").write_bytes(b"<html>oops</html>" * 100)
    server = FileServer({"/out/bad-part.mp4": data})

    async def go() -> Fetched:
        async with server.client() as client:
            [result] = await Downloader(ledger, client, output_dir).fetch([row])
        return result

    result = asyncio.run(go())
    assert result.outcome == "downloaded"
    assert final.read_bytes() == data
    assert [r.headers.get("range") for r in server.requests] == ["bytes=1700-", None]


# ---------------------------------------------------- a full disk (defect 8)


def no_space(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every part write fails with ENOSPC from now on; the sizes it was asked to write."""
    asked: list[int] = []

    def full(fd: int, chunks: list[bytes]) -> None:
        asked.append(sum(len(c) for c in chunks))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partfile, "_write_all", full)
    return asked


def test_a_full_disk_deletes_the_part_stops_the_downloads_and_says_where_and_how_much(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [succeeded(ledger, f"full{i}") for i in range(3)]
    data = {f"/out/full{i}.mp4": video_bytes(f"full{i}", 300_000) for i in range(3)}
    server = FileServer(dict(data), chunk=64 * 1024)
    real_write_all = partfile._write_all
    asked = no_space(monkeypatch)

    async def go() -> tuple[list[Fetched], Downloader]:
        async with server.client() as client:
            downloader = Downloader(ledger, client, output_dir, concurrency=1)
            return await downloader.fetch(rows), downloader

    results, downloader = asyncio.run(go())
    assert asked  # the disk was written to, and refused
    assert [r.outcome for r in results] == ["failed"] * 3
    assert len(server.requests) == 1  # stopped: no other file was fetched
    assert all("disk is full" in (r.error or "") for r in results)
    assert parts(output_dir) == []  # the space is given back
    assert all(ledger.outputs(ENV, r.key)[0].path is None for r in rows)
    full = downloader.disk_full
    assert isinstance(full, errors.DiskFull)
    assert full.exit_code == errors.ExitCode.API
    assert str(report_folder(output_dir, "demo")) in full.message
    assert "300,000 bytes" in full.message  # what the file needs (its Content-Length)

    monkeypatch.setattr(partfile, "_write_all", real_write_all)  # space was freed
    again = asyncio.run(go())[0]
    assert [r.outcome for r in again] == ["downloaded"] * 3


def test_a_full_disk_in_the_final_fsync_is_a_full_disk_too(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delayed allocation, NFS, quotas: the space may be refused only at fsync.
    row = succeeded(ledger, "late-full")
    server = FileServer({"/out/late-full.mp4": video_bytes("late-full")})

    def final(fd: int, part: Path, dest: Path) -> str:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(partfile, "_make_final", final)

    async def go() -> tuple[Fetched, Downloader]:
        async with server.client() as client:
            downloader = Downloader(ledger, client, output_dir)
            [result] = await downloader.fetch([row])
            return result, downloader

    result, downloader = asyncio.run(go())
    assert result.outcome == "failed"
    assert isinstance(downloader.disk_full, errors.DiskFull)
    assert parts(output_dir) == []
    assert videos(output_dir) == []
    assert ledger.outputs(ENV, row.key)[0].path is None


def simulated_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Settings]:
    """jobs/demo.toml (9 tasks) run on the in-process simulator, nothing downloaded yet."""
    from mvbatch.api.client import ApiClient
    from mvbatch.api.endpoint import choose
    from mvbatch.run.executor import Executor

    settings = Settings(
        MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs"
    )
    monkeypatch.setenv("MVBATCH_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("MVBATCH_OUTPUT_DIR", str(settings.output_dir))
    path = tmp_path / "demo.toml"
    shutil.copy(REPO / "jobs" / "demo.toml", path)
    plan = build_plan(path, settings, "sim")
    endpoint = choose(settings, simulate=True, sim_speed=0)

    async def go() -> None:
        with open_ledger(settings.state_dir) as ledger:
            run_id = ledger.start_run("sim", plan.name, endpoint.base_url, None)
            ledger.ensure_tasks("sim", planned_rows(plan))
            async with ApiClient(endpoint.api_client()) as client:
                await Executor(plan, ledger, client, env="sim", cap=None, run_id=run_id).run()

    asyncio.run(go())
    return path, settings


def test_report_on_a_full_disk_writes_the_reports_then_stops_and_resumes_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, settings = simulated_demo(tmp_path, monkeypatch)
    real_write_all = partfile._write_all
    no_space(monkeypatch)
    with pytest.raises(errors.DiskFull) as raised:
        report_manifest(path, settings, download=True)
    folder = settings.output_dir / "demo"
    assert "disk is full" in raised.value.message
    assert str(folder) in raised.value.message
    document = json.loads((folder / "report.json").read_text())  # written all the same
    assert document["totals"]["downloads"]["downloaded"] == 0
    assert document["totals"]["downloads"]["missing"] == 9
    assert parts(folder) == []
    with open_ledger(settings.state_dir) as ledger:
        assert all(
            o.path is None
            for r in ledger.tasks("sim", "demo")
            for o in ledger.outputs("sim", r.key)
        )

    monkeypatch.setattr(partfile, "_write_all", real_write_all)
    again = report_manifest(path, settings, download=True)
    assert again.complete
    assert again.report.download_totals["downloaded"] == 9


@pytest.mark.parametrize("where", ["fsync", "write_atomic"])
def test_a_full_disk_when_writing_the_reports_says_so_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    settings = Settings(
        MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs"
    )
    ledger = open_ledger(settings.state_dir)
    add_task(ledger, ENV, task_row("mvb1-" + "r" * 32, "shot"), urls=["https://x.test/v.mp4"])
    write_report(settings, ledger, "demo", ENV)
    folder = settings.output_dir / "demo"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":  # inside write_atomic, after the temp file was written
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(formats, "write_atomic", full)
    with pytest.raises(errors.DiskFull) as raised:
        write_report(settings, ledger, "demo", ENV)
    monkeypatch.undo()
    message = raised.value.message
    assert "disk is full" in message
    assert str(folder) in message
    assert re.search(r"[\d,]+ bytes needed", message)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp file left


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount(8)); skipped where it cannot be mounted."""
    where = tmp_path / "small-disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.mark.slow
def test_a_real_full_disk_ends_the_run_with_a_message_and_resumes_after_space_is_freed(
    tmp_path: Path, small_disk: Path
) -> None:
    # The demo's 9 videos take 2.4 MB; the output folder has 1 MiB.
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0", MVBATCH_OUTPUT_DIR=str(small_disk))
    ran = cli(["run", "jobs/demo.toml", "--yes"], env, tmp_path)
    text = ran.stdout + ran.stderr
    assert ran.returncode == 4, text
    assert "Traceback" not in text
    assert "disk is full" in text
    assert str(small_disk / "demo") in text
    assert parts(small_disk) == []  # no part holds the disk full
    on_disk = len(videos(small_disk))
    assert on_disk < 9

    grown = subprocess.run(
        ["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True, check=False
    )
    assert grown.returncode == 0, grown.stderr
    resumed = cli(["report", "jobs/demo.toml"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "videos: 9 of 9 on disk" in resumed.stdout
    assert len(videos(small_disk)) == 9


# ------------------------------------------- a report sees its files (defect 9)


def demo_videos(settings: Settings) -> list[Path]:
    return sorted((settings.output_dir / "demo" / "videos").rglob("*.mp4"))


def test_a_deleted_or_changed_video_is_missing_from_a_report_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, settings = simulated_demo(tmp_path, monkeypatch)
    assert report_manifest(path, settings, download=True).complete
    deleted, changed, touched = demo_videos(settings)[:3]
    deleted.unlink()
    data = bytearray(changed.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes: a stat alone cannot tell
    changed.write_bytes(bytes(data))
    touched.write_bytes(touched.read_bytes())  # rewritten, same bytes: still the video

    result = report_manifest(path, settings, download=False)
    totals = result.report.download_totals
    assert (totals["downloaded"], totals["missing"]) == (7, 2)
    assert not result.complete
    assert "videos: 7 of 9 on disk, 2 missing" in result.summary()
    document = json.loads((result.folder / "report.json").read_text())
    assert document["totals"]["downloads"]["missing"] == 2
    outputs = [o for t in document["tasks"] for o in t["outputs"]]
    reasons = [o["download_error"] for o in outputs if not o["path"]]
    assert any(deleted.name in r and "gone" in r for r in reasons), reasons
    assert any(changed.name in r and "changed" in r for r in reasons), reasons

    fetched = report_manifest(path, settings, download=True)
    assert fetched.complete
    assert fetched.downloads is not None
    assert fetched.downloads.downloaded == 2


@pytest.mark.slow
def test_report_no_download_after_rm_says_what_is_on_disk(tmp_path: Path) -> None:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0")
    ran = cli(["run", "jobs/demo.toml", "--yes"], env, tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    folder = tmp_path / "outputs" / "demo"
    [first, *_] = sorted((folder / "videos").rglob("*.mp4"))
    first.unlink()

    offline = cli(["report", "jobs/demo.toml", "--no-download"], env, tmp_path)
    assert "videos: 8 of 9 on disk, 1 missing" in offline.stdout, offline.stdout + offline.stderr
    assert f"{first.name} is gone" in offline.stdout
    assert json.loads((folder / "report.json").read_text())["totals"]["downloads"]["missing"] == 1
    assert offline.returncode in (0, 1), offline.stderr  # see the exit code's own test below

    fetched = cli(["report", "jobs/demo.toml"], env, tmp_path)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "videos: 9 of 9 on disk" in fetched.stdout
    assert first.is_file()


def test_a_report_counts_the_videos_it_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, settings = simulated_demo(tmp_path, monkeypatch)
    assert report_manifest(path, settings, download=True).lost == 0
    demo_videos(settings)[0].unlink()
    assert report_manifest(path, settings, download=False).lost == 1
    assert report_manifest(path, settings, download=True).lost == 0  # fetched again


@pytest.mark.slow
def test_report_no_download_exits_1_when_a_downloaded_video_is_gone(tmp_path: Path) -> None:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    env = cli_env(tmp_path, key=None, MVBATCH_SIM_SPEED="0")
    assert cli(["run", "jobs/demo.toml", "--yes"], env, tmp_path).returncode == 0
    next((tmp_path / "outputs" / "demo" / "videos").rglob("*.mp4")).unlink()
    assert cli(["report", "jobs/demo.toml", "--no-download"], env, tmp_path).returncode == 1


# ------------------------------------------------ one retry policy for all


def test_downloads_retry_under_the_one_retry_policy(ledger: Ledger, output_dir: Path) -> None:
    assert not hasattr(fetch, "default_backoff")
    policy = fetch.DOWNLOAD_RETRIES
    assert isinstance(policy, RetryPolicy)
    assert (policy.attempts, policy.budget) == (None, None)
    assert (policy.backoff.base, policy.backoff.cap) == (0.25, 8.0)

    row = succeeded(ledger, "retry")
    server = FileServer({"/out/retry.mp4": video_bytes("retry")}, script=["500"] * 3)

    async def go() -> Fetched:
        async with server.client() as client:
            [result] = await Downloader(ledger, client, output_dir).fetch([row])
        return result

    with capture_logs() as events:
        result = asyncio.run(go())
    assert (result.outcome, result.attempts) == ("downloaded", 4)
    retries = [e for e in events if e["event"] == "download.retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    for n, event in enumerate(retries, start=1):
        assert 0 <= event["wait"] <= policy.backoff.ceiling(n)


@pytest.mark.parametrize("url", ["https://[bad]/x.mp4", "https://host:abc/x", "ftp://host/x"])
def test_a_url_no_client_can_fetch_is_a_reason_not_a_traceback(url: str) -> None:
    """A server's malformed output URL fails that output (`Fatal`: a reason in the report);
    it must not escape as ValueError/InvalidURL and stop every other download."""
    from mvbatch.downloads.request import Fatal, check_url, host_of

    with pytest.raises(Fatal):
        check_url(url)
    assert isinstance(host_of(url), str)
