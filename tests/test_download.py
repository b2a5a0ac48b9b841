"""Downloads: verified, resumable, refreshed when expired, never outside the folder.

Most tests drive `Downloader` through an in-process file host
(`report_helpers.FileServer`) with scripted faults; the `slow` ones use real
loopback servers and the files client as runs build it (httpx's own
transport) to prove what crosses a socket: no Authorization header to a file
host, also across a redirect; the environment's proxy honoured; a body cut
short or stalled is resumed, never kept short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import re
import string
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_helpers import (
    Body,
    FileServer,
    add_task,
    api_refresh,
    header_recorder,
    sha256,
    sim_rows,
    sim_tasks,
    task_row,
    video_bytes,
)
from sim_helpers import FakeClock, running_sim

from mvbatch.api.endpoint import Endpoint
from mvbatch.downloads import partfile
from mvbatch.downloads.fetch import Downloader, Fetched
from mvbatch.downloads.naming import contained, output_relpath, report_folder, safe_component
from mvbatch.ledger import Ledger, SqliteLedger, TaskRow, open_ledger
from mvbatch.run.hooks import OnSucceeded
from mvbatch.sim.app import create_app
from mvbatch.sim.config import FaultRates, SimConfig

ENV = "sim"
URL = "https://files.example.test/out/{}.mp4?sig=abc"


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    return SqliteLedger(tmp_path / "state")


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


def succeeded(
    ledger: Ledger,
    name: str,
    shot: str = "car-rain",
    variant: dict[str, Any] | None = None,
    manifest: str = "demo",
) -> TaskRow:
    key = f"mvb1-{name:0<32}"
    return add_task(
        ledger,
        ENV,
        task_row(key, shot, variant or {"mode": "std"}, manifest=manifest),
        urls=[URL.format(name)],
        task_id=f"task_{name}",
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def fetch_all(
    ledger: Ledger, server: FileServer, output_dir: Path, rows: list[TaskRow], **options: Any
) -> list[Fetched]:
    async with server.client() as client:
        downloader = Downloader(ledger, client, output_dir, **options)
        return await downloader.fetch(rows)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


# ------------------------------------------------------------------ naming


def test_names_come_from_our_data_not_the_servers_path(ledger: Ledger) -> None:
    row = succeeded(ledger, "a1", shot="car-rain", variant={"mode": "pro", "duration": 10})
    assert output_relpath(row, 0) == PurePosixPath(
        f"videos/car-rain/mode-pro_duration-10_take1_{row.key[5:13]}.mp4"
    )
    assert output_relpath(row, 1).name.endswith("_2.mp4")


@pytest.mark.parametrize(
    "hostile",
    [
        "..",
        ".",
        "../../etc/passwd",
        "..\\..\\windows",
        "/abs/path",
        "a/../../b",
        "CON",
        "nul.txt",
        "\x00evil",
        "line\nbreak",
        "  ",
        "",
        "-",
        "x" * 500,
        "😀" * 100,
        "<script>alert(1)</script>",
    ],
)
def test_hostile_names_cannot_escape_the_output_folder(tmp_path: Path, hostile: str) -> None:
    folder = report_folder(tmp_path / "out", hostile)
    assert folder.parent == tmp_path / "out"
    component = safe_component(hostile, "x")
    assert component not in ("", ".", "..")
    assert "/" not in component
    assert "\\" not in component
    assert "\x00" not in component
    assert len(component.encode()) <= 80
    base = add_task(open_ledger(tmp_path / "state"), ENV, task_row("mvb1-" + "a" * 32, "shot"))
    row = dataclasses.replace(
        base,
        key=f"mvb1-{hostile}",
        manifest=hostile,
        shot=hostile,
        variant_json=json.dumps({hostile: hostile}),
    )
    target = contained(folder, output_relpath(row, 0))
    assert target is not None
    assert target.resolve().is_relative_to(folder.resolve())


@given(st.text(alphabet=st.characters(), max_size=200))
def test_any_text_is_one_safe_component(text: str) -> None:
    component = safe_component(text, "fallback")
    assert component
    assert component not in (".", "..")
    assert not set(component) & set("/\\\x00" + string.whitespace)
    assert PurePosixPath(component).name == component


@pytest.mark.parametrize("name", ["demo", "launch-teaser_", "a-", "0_x-"])
def test_a_valid_manifest_name_is_the_folder_name_exactly(tmp_path: Path, name: str) -> None:
    assert report_folder(tmp_path, name) == tmp_path / name


def test_contained_refuses_escapes_and_symlinks(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    (folder / "videos").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / "videos" / "link").symlink_to(outside)
    assert contained(folder, "../x.mp4") is None
    assert contained(folder, "/etc/passwd") is None
    assert contained(folder, "videos/link/x.mp4") is None
    assert contained(folder, "videos/ok/x.mp4") == folder.resolve() / "videos/ok/x.mp4"


def test_a_symlinked_shot_folder_is_refused_not_followed(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "s1")
    data = video_bytes("s1")
    outside = output_dir.parent / "elsewhere"
    outside.mkdir(parents=True)
    videos = report_folder(output_dir, "demo") / "videos"
    videos.mkdir(parents=True)
    (videos / "car-rain").symlink_to(outside)
    server = FileServer({"/out/s1.mp4": data})
    [fetched] = run(fetch_all(ledger, server, output_dir, [row]))
    assert fetched.outcome == "failed"
    assert "leaves the folder" in (fetched.error or "")
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------- the happy path


def test_download_is_verified_recorded_and_leaves_no_part(ledger: Ledger, output_dir: Path) -> None:
    rows = [succeeded(ledger, f"h{i}", variant={"mode": m}) for i, m in enumerate(["std", "pro"])]
    data = {f"/out/h{i}.mp4": video_bytes(f"h{i}") for i in range(2)}
    server = FileServer(dict(data))
    results = run(fetch_all(ledger, server, output_dir, rows))
    folder = report_folder(output_dir, "demo")
    assert [r.outcome for r in results] == ["downloaded", "downloaded"]
    for i, result in enumerate(results):
        expected = data[f"/out/h{i}.mp4"]
        assert result.path is not None
        assert (folder / result.path).read_bytes() == expected
        assert result.sha256 == sha256(expected)
        [recorded] = ledger.outputs(ENV, rows[i].key)
        assert (recorded.path, recorded.sha256, recorded.bytes) == (
            result.path,
            sha256(expected),
            len(expected),
        )
    assert leftovers(folder) == []
    for request in server.requests:
        assert "authorization" not in request.headers
        assert request.headers["accept-encoding"] == "identity"


def test_rerun_never_downloads_a_verified_file_again(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "r1")
    server = FileServer({"/out/r1.mp4": video_bytes("r1")})
    run(fetch_all(ledger, server, output_dir, [row]))
    assert len(server.requests) == 1
    [again] = run(fetch_all(ledger, server, output_dir, [row]))
    assert again.outcome == "kept"
    assert len(server.requests) == 1


def test_a_file_changed_on_disk_is_verified_and_fetched_again(
    ledger: Ledger, output_dir: Path
) -> None:
    row = succeeded(ledger, "c1")
    data = video_bytes("c1")
    server = FileServer({"/out/c1.mp4": data})
    [first] = run(fetch_all(ledger, server, output_dir, [row]))
    path = report_folder(output_dir, "demo") / first.path
    corrupted = bytearray(data)
    corrupted[1000] ^= 0xFF  # same size, different bytes: only the hash can tell
    path.write_bytes(bytes(corrupted))
    [second] = run(fetch_all(ledger, server, output_dir, [row]))
    assert second.outcome == "downloaded"
    assert path.read_bytes() == data
    assert len(server.requests) == 2


def test_a_touched_but_identical_file_is_rehashed_and_kept(
    ledger: Ledger, output_dir: Path
) -> None:
    row = succeeded(ledger, "t1")
    data = video_bytes("t1")
    server = FileServer({"/out/t1.mp4": data})
    [first] = run(fetch_all(ledger, server, output_dir, [row]))
    path = report_folder(output_dir, "demo") / first.path
    path.write_bytes(data)  # rewritten: newer mtime, same bytes
    [second] = run(fetch_all(ledger, server, output_dir, [row]))
    assert second.outcome == "kept"
    assert len(server.requests) == 1


def downloaded_once(
    ledger: Ledger, output_dir: Path, name: str
) -> tuple[TaskRow, FileServer, Path, bytes]:
    """One task's video fetched and recorded: its row, its host, the file and its bytes."""
    row = succeeded(ledger, name)
    data = video_bytes(name)
    server = FileServer({f"/out/{name}.mp4": data})
    [first] = run(fetch_all(ledger, server, output_dir, [row]))
    assert first.path is not None
    return row, server, report_folder(output_dir, "demo") / first.path, data


def hashed_later(ledger: SqliteLedger, key: str, seconds: float) -> None:
    """Pretend the recorded hash was taken `seconds` after the file last changed."""
    [output] = ledger.outputs(ENV, key)
    assert output.verified_at is not None
    later = datetime.fromisoformat(output.verified_at) + timedelta(seconds=seconds)
    with ledger.transaction() as db:
        db.execute(
            "UPDATE outputs SET verified_at = ? WHERE env = ? AND key = ?",
            [later.isoformat(), ENV, key],
        )


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = partfile.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(partfile, "sha256_file", counting)
    return hashed


def test_a_file_unchanged_since_it_was_hashed_is_kept_without_reading_it(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row, server, _, _ = downloaded_once(ledger, output_dir, "u1")
    hashed_later(ledger, row.key, 10)
    hashed = count_hashes(monkeypatch)
    [again] = run(fetch_all(ledger, server, output_dir, [row]))
    assert again.outcome == "kept"
    assert hashed == []
    assert len(server.requests) == 1


def test_a_file_hashed_in_the_same_tick_it_changed_is_read_once_then_trusted(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right after a download the file's timestamps cannot tell a later write
    # in the same clock tick apart: it is read; once it is old enough, not.
    row, server, _, _ = downloaded_once(ledger, output_dir, "r2")
    hashed = count_hashes(monkeypatch)
    [again] = run(fetch_all(ledger, server, output_dir, [row]))
    assert (again.outcome, len(hashed)) == ("kept", 1)
    hashed_later(ledger, row.key, 10)
    [third] = run(fetch_all(ledger, server, output_dir, [row]))
    assert (third.outcome, len(hashed)) == ("kept", 1)
    assert len(server.requests) == 1


def test_an_edit_that_restores_size_and_mtime_is_still_caught(
    ledger: Ledger, output_dir: Path
) -> None:
    row, server, path, data = downloaded_once(ledger, output_dir, "m1")
    hashed_later(ledger, row.key, 10)
    before = path.stat()
    corrupted = bytearray(data)
    corrupted[5000] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # only ctime still tells
    while path.stat().st_ctime_ns == before.st_ctime_ns:
        # Same coarse clock tick as the download: wait for the next one, so
        # that this test proves what it says (ctime moves on every change).
        time.sleep(0.001)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    [second] = run(fetch_all(ledger, server, output_dir, [row]))
    assert second.outcome == "downloaded"
    assert path.read_bytes() == data
    assert len(server.requests) == 2


def test_a_ledger_row_without_file_stat_is_hashed_then_trusted(
    ledger: SqliteLedger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows written before the ledger kept file metadata (migration m002).
    row, server, _, _ = downloaded_once(ledger, output_dir, "o1")
    with ledger.transaction() as db:
        db.execute("UPDATE outputs SET file_stat = NULL, verified_at = NULL")
    hashed = count_hashes(monkeypatch)
    [again] = run(fetch_all(ledger, server, output_dir, [row]))
    assert (again.outcome, len(hashed)) == ("kept", 1)
    [output] = ledger.outputs(ENV, row.key)
    assert output.file_stat is not None
    assert output.verified_at is not None


def test_a_deleted_file_is_fetched_again(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "d1")
    server = FileServer({"/out/d1.mp4": video_bytes("d1")})
    [first] = run(fetch_all(ledger, server, output_dir, [row]))
    (report_folder(output_dir, "demo") / first.path).unlink()
    [second] = run(fetch_all(ledger, server, output_dir, [row]))
    assert second.outcome == "downloaded"


# ------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", ["truncate", "short"])
def test_a_broken_transfer_resumes_with_a_range_request(
    ledger: Ledger, output_dir: Path, fault: str
) -> None:
    row = succeeded(ledger, "b1")
    data = video_bytes("b1", 300_000)
    server = FileServer({"/out/b1.mp4": data}, script=[fault, fault])
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert result.outcome == "downloaded"
    assert (report_folder(output_dir, "demo") / str(result.path)).read_bytes() == data
    assert result.sha256 == sha256(data)
    ranges = [r.headers.get("range") for r in server.requests]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(data) // 3}-"
    assert result.resumed == 2
    assert leftovers(output_dir) == []


def test_a_server_that_ignores_range_restarts_cleanly(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "i1")
    data = video_bytes("i1", 300_000)
    server = FileServer({"/out/i1.mp4": data}, script=["truncate", "ignore-range"])
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert result.outcome == "downloaded"
    assert (report_folder(output_dir, "demo") / str(result.path)).read_bytes() == data
    assert result.sha256 == sha256(data)


def test_a_part_left_by_a_crash_is_resumed(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "p1")
    data = video_bytes("p1", 300_000)
    final = report_folder(output_dir, "demo") / output_relpath(row, 0)
    final.parent.mkdir(parents=True)
    final.with_name(f".{final.name}.part").write_bytes(data[:123_456])
    server = FileServer({"/out/p1.mp4": data})
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert server.requests[0].headers["range"] == "bytes=123456-"
    assert final.read_bytes() == data
    assert result.sha256 == sha256(data)
    assert leftovers(output_dir) == []


def test_a_part_longer_than_the_file_starts_again(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "l1")
    data = video_bytes("l1", 50_000)
    final = report_folder(output_dir, "demo") / output_relpath(row, 0)
    final.parent.mkdir(parents=True)
    final.with_name(f".{final.name}.part").write_bytes(b"x" * 60_000)
    server = FileServer({"/out/l1.mp4": data})
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert server.requests[0].headers["range"] == "bytes=60000-"  # answered 416
    assert final.read_bytes() == data
    assert result.sha256 == sha256(data)


def test_server_errors_are_retried(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "e1")
    data = video_bytes("e1")
    server = FileServer({"/out/e1.mp4": data}, script=["500", "500"])
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert result.outcome == "downloaded"
    assert result.attempts == 3


def test_a_host_that_never_makes_progress_is_given_up_and_reported(
    ledger: Ledger, output_dir: Path
) -> None:
    row = succeeded(ledger, "g1")
    server = FileServer({"/out/g1.mp4": video_bytes("g1")}, script=["500"] * 20)
    [result] = run(fetch_all(ledger, server, output_dir, [row], max_failures=3))
    assert result.outcome == "failed"
    assert "gave up after 3 attempts" in (result.error or "")
    assert ledger.outputs(ENV, row.key)[0].path is None


def test_an_expired_url_is_refreshed_through_the_api(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "x1")
    data = video_bytes("x1")
    server = FileServer({"/out/fresh.mp4": data}, expired={"/out/x1.mp4"})
    asked: list[str] = []

    async def refresh(task_id: str) -> list[str]:
        asked.append(task_id)
        return ["https://files.example.test/out/fresh.mp4?sig=new"]

    [result] = run(fetch_all(ledger, server, output_dir, [row], refresh=refresh))
    assert asked == ["task_x1"]
    assert result.outcome == "downloaded"
    assert result.refreshes == 1
    assert ledger.outputs(ENV, row.key)[0].url.endswith("fresh.mp4?sig=new")
    assert (report_folder(output_dir, "demo") / str(result.path)).read_bytes() == data


def test_an_expired_url_without_refresh_fails_cleanly(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "y1")
    server = FileServer({}, expired={"/out/y1.mp4"})
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert result.outcome == "failed"
    assert "403" in (result.error or "")
    assert leftovers(output_dir) == []


def test_refresh_gives_up_after_a_few_fresh_urls(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "z1")
    server = FileServer({}, expired={"/out/z1.mp4"})

    async def refresh(task_id: str) -> list[str]:
        return [URL.format("z1")]

    [result] = run(fetch_all(ledger, server, output_dir, [row], refresh=refresh, max_refreshes=2))
    assert result.outcome == "failed"
    assert result.refreshes == 2


def test_urls_missing_from_the_ledger_are_asked_of_the_api(
    ledger: Ledger, output_dir: Path
) -> None:
    row = add_task(ledger, ENV, task_row("mvb1-" + "q" * 32, "shot"), task_id="task_q")
    data = video_bytes("q")
    server = FileServer({"/out/q.mp4": data})

    async def refresh(task_id: str) -> list[str]:
        return [URL.format("q")]

    [result] = run(fetch_all(ledger, server, output_dir, [row], refresh=refresh))
    assert result.outcome == "downloaded"
    assert ledger.outputs(ENV, row.key)[0].sha256 == sha256(data)


@pytest.mark.parametrize("announced", [True, False])
def test_the_size_cap_stops_a_runaway_body(
    ledger: Ledger, output_dir: Path, announced: bool
) -> None:
    row = succeeded(ledger, "m1")

    def handler(request: httpx.Request) -> httpx.Response:
        body = video_bytes("m1", 100_000)
        if announced:
            return httpx.Response(
                200,
                headers={"Content-Length": str(len(body))},
                stream=Body(body, 10_000, None, drop=False),
            )

        async def chunks() -> Any:
            for _ in range(10):
                yield body[:10_000]

        return httpx.Response(200, stream=_Chunks(chunks()))

    async def go() -> list[Fetched]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await Downloader(ledger, client, output_dir, max_bytes=50_000).fetch([row])

    [result] = run(go())
    assert result.outcome == "failed"
    assert "cap" in (result.error or "")
    assert leftovers(output_dir) == []
    assert not list((report_folder(output_dir, "demo")).rglob("*.mp4"))


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> Any:
        async for chunk in self.chunks:
            yield chunk


def test_a_url_that_is_not_http_is_refused(ledger: Ledger, output_dir: Path) -> None:
    key = "mvb1-" + "f" * 32
    row = add_task(ledger, ENV, task_row(key, "shot"), urls=["file:///etc/passwd"])
    [result] = run(fetch_all(ledger, FileServer({}), output_dir, [row]))
    assert result.outcome == "failed"
    assert "not an http(s) URL" in (result.error or "")


def test_a_files_client_with_credentials_is_refused(ledger: Ledger, output_dir: Path) -> None:
    client = Endpoint("sim", "http://api.test/api/v1", "mv_secret_key").api_client()
    with pytest.raises(ValueError, match="Authorization"):
        Downloader(ledger, client, output_dir)
    run(client.aclose())


def test_the_executor_hook_downloads_in_the_background(ledger: Ledger, output_dir: Path) -> None:
    rows = [succeeded(ledger, f"k{i}") for i in range(3)]
    server = FileServer({f"/out/k{i}.mp4": video_bytes(f"k{i}") for i in range(3)})

    async def go() -> list[Fetched]:
        async with server.client() as client:
            downloader = Downloader(ledger, client, output_dir, concurrency=2)
            hook: OnSucceeded = downloader.on_succeeded  # the executor's type
            await asyncio.gather(*(hook(row) for row in rows))
            return downloader.results

    results = run(go())
    assert sorted(r.outcome for r in results) == ["downloaded"] * 3


def test_concurrency_is_bounded(ledger: Ledger, output_dir: Path) -> None:
    rows = [succeeded(ledger, f"n{i}") for i in range(6)]
    active = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return httpx.Response(200, stream=Body(video_bytes("n", 5_000), 1024, None, drop=False))

    async def go() -> list[Fetched]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await Downloader(ledger, client, output_dir, concurrency=2).fetch(rows)

    results = run(go())
    assert all(r.outcome == "downloaded" for r in results)
    assert peak == 2


def test_a_part_locked_by_another_process_is_left_alone(ledger: Ledger, output_dir: Path) -> None:
    import fcntl

    row = succeeded(ledger, "o1")
    final = report_folder(output_dir, "demo") / output_relpath(row, 0)
    final.parent.mkdir(parents=True)
    part = final.with_name(f".{final.name}.part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        server = FileServer({"/out/o1.mp4": video_bytes("o1")})
        [result] = run(fetch_all(ledger, server, output_dir, [row]))
        assert result.outcome == "busy"
        assert server.requests == []
    finally:
        os.close(fd)


# ------------------------------------------------------ real loopback sockets


@pytest.mark.slow
def test_a_redirect_to_another_host_carries_no_authorization(
    ledger: Ledger, output_dir: Path
) -> None:
    data = video_bytes("redirect")
    # The file host (localhost) redirects to a CDN (127.0.0.1): two origins.
    with (
        header_recorder("127.0.0.1", body=data) as cdn,
        header_recorder("localhost", redirect_to=f"{cdn.url}/video.mp4") as files,
    ):
        key = "mvb1-" + "r" * 32
        row = add_task(ledger, ENV, task_row(key, "shot"), urls=[f"{files.url}/out.mp4"])
        endpoint = Endpoint("live", "http://127.0.0.1:9/api/v1", "mv_live_secret_key_123")

        async def go() -> list[Fetched]:
            async with endpoint.files_client() as client:
                return await Downloader(ledger, client, output_dir).fetch([row])

        [result] = run(go())
    assert result.outcome == "downloaded"
    assert result.sha256 == sha256(data)
    assert len(files.seen) == 1
    assert len(cdn.seen) == 1
    for headers in files.seen + cdn.seen:
        assert "authorization" not in headers
        assert "mv_live_secret_key_123" not in repr(headers)


@pytest.mark.slow
def test_downloads_go_through_the_environments_proxy(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # httpx reads the proxy from the environment; the files client leaves that to it.
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    data = video_bytes("proxied")
    with header_recorder("127.0.0.1", body=data) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        url = "http://files.example.invalid/out.mp4"  # reachable only through the proxy
        row = add_task(ledger, ENV, task_row("mvb1-" + "p" * 32, "shot"), urls=[url])
        endpoint = Endpoint("live", "http://127.0.0.1:9/api/v1", "mv_live_secret_key_123")

        async def go() -> list[Fetched]:
            async with endpoint.files_client() as client:
                return await Downloader(ledger, client, output_dir).fetch([row])

        [result] = run(go())
    assert result.outcome == "downloaded"
    assert result.sha256 == sha256(data)
    [headers] = proxy.seen
    assert headers["host"] == "files.example.invalid"
    assert "authorization" not in headers


async def broken_once(data: bytes, fault: str, asked: list[int | None]) -> asyncio.Server:
    """A file host on loopback whose first answer stops a third of the way into the body.

    `fault` "cut": it closes the connection there; "stall": it goes silent
    until the client hangs up. Later requests get the rest, honouring Range.
    `asked` collects each request's Range start (None: no Range).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"\r\nrange: bytes=(\d+)-", head, re.IGNORECASE)
                start = int(found.group(1)) if found else 0
                asked.append(start if found else None)
                body = data[start:]
                status = "200 OK"
                if found:
                    where = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    status = f"206 Partial Content\r\nContent-Range: {where}"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                if len(asked) == 1:
                    writer.write(body[: len(body) // 3])
                    await writer.drain()
                    if fault == "stall":
                        await reader.read()  # until the client gives up and closes
                    return
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection: nothing more to answer
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_body_cut_short_or_stalled_on_a_real_socket_is_resumed(
    ledger: Ledger, output_dir: Path, fault: str
) -> None:
    # Through httpx's own transport: a body shorter than its Content-Length
    # is an error, not a short file, and a silent host is a read timeout.
    # Either way the bytes that arrived are kept and the rest is asked for.
    data = video_bytes("cut", 300_000)
    asked: list[int | None] = []
    endpoint = Endpoint("live", "http://127.0.0.1:9/api/v1", "mv_live_secret_key_123")

    async def go() -> Fetched:
        server = await broken_once(data, fault, asked)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/out.mp4"
        row = add_task(ledger, ENV, task_row("mvb1-" + "c" * 32, "shot"), urls=[url])
        async with server, endpoint.files_client(timeout=0.5) as client:
            downloader = Downloader(ledger, client, output_dir)
            [result] = await downloader.fetch([row])
        return result

    result = run(go())
    assert result.outcome == "downloaded"
    assert result.sha256 == sha256(data)
    assert result.resumed == 1
    assert asked == [None, len(data) // 3]
    assert leftovers(output_dir) == []


# ---------------------------------------------- faults from the simulator


def sim_expected(app: Any, task_id: str) -> bytes:
    service = app.state.service
    return bytes(service.file_bytes(service.store.get(task_id)))


def assert_complete(
    output_dir: Path, results: list[Fetched], expected: dict[str, bytes], rows: list[TaskRow]
) -> None:
    by_key = {row.key: row.task_id for row in rows}
    assert [r.outcome for r in results] == ["downloaded"] * len(rows), results
    for result in results:
        data = expected[str(by_key[result.key])]
        assert (report_folder(output_dir, "demo") / str(result.path)).read_bytes() == data
        assert result.sha256 == sha256(data)
        assert result.bytes == len(data)
    assert leftovers(output_dir) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_simulator_faults_still_end_in_identical_files(
    ledger: Ledger, output_dir: Path, seed: int
) -> None:
    clock = FakeClock()
    config = SimConfig(
        speed=0,
        seed=seed,
        clock=clock,
        url_ttl_seconds=600,
        faults=FaultRates(truncated_download=0.7, expired_url=0.3),
    )
    app = create_app(config)
    endpoint = Endpoint(
        "sim", "http://sim.test/api/v1", "mv_sim_local", httpx.ASGITransport(app=app)
    )

    async def go() -> tuple[list[TaskRow], list[Fetched]]:
        async with endpoint.api_client() as api, endpoint.files_client() as files:
            rows = sim_rows(ledger, ENV, await sim_tasks(api, 8))
            clock.advance(3600)  # every recorded URL has expired by now
            # In-process, a cut body never reaches the client (ASGITransport
            # buffers it), so no attempt makes progress: allow many.
            downloader = Downloader(
                ledger,
                files,
                output_dir,
                refresh=api_refresh(api),
                max_refreshes=20,
                max_failures=30,
            )
            return rows, await downloader.fetch(rows)

    rows, results = run(go())
    expected = {str(r.task_id): sim_expected(app, str(r.task_id)) for r in rows}
    assert_complete(output_dir, results, expected, rows)
    assert all(r.refreshes >= 1 for r in results)
    stats = app.state.service.store.counters()
    assert stats.get("fault:truncated_download", 0) > 0
    assert stats.get("download:with_authorization", 0) == 0


@pytest.mark.slow
def test_real_sockets_truncation_drops_and_expiry_end_in_identical_files(
    tmp_path: Path, ledger: Ledger, output_dir: Path
) -> None:
    port = free_port()
    # Files are served under another host name (localhost) than the API
    # (127.0.0.1): the simulator counts any download that carries a key.
    with running_sim(
        tmp_path,
        port=port,
        speed=0,
        seed=7,
        output_scale=4,
        fault_truncated_download=0.5,
        fault_expired_url=0.3,
        files_base_url=f"http://localhost:{port}",
    ) as base:
        endpoint = Endpoint("live", f"{base}/api/v1", "mv_live_loopback_key")

        async def go() -> tuple[list[TaskRow], list[Fetched]]:
            async with endpoint.api_client() as api, endpoint.files_client() as files:
                rows = sim_rows(ledger, ENV, await sim_tasks(api, 8))
                downloader = Downloader(
                    ledger,
                    files,
                    output_dir,
                    refresh=api_refresh(api),
                    max_refreshes=10,
                    max_failures=10,
                )
                return rows, await downloader.fetch(rows)

        rows, results = run(go())
        stats = httpx.get(f"{base}/_sim/stats").json()
        with httpx.Client() as clean:
            httpx.post(f"{base}/_sim/faults", json={"profile": "none"}).raise_for_status()
            expected = {}
            for row in rows:
                task = clean.get(
                    f"{base}/api/v1/tasks/{row.task_id}",
                    headers={"Authorization": "Bearer mv_live_loopback_key"},
                )
                url = task.json()["output"]["videos"][0]["url"]
                assert url.startswith(f"http://localhost:{port}/")
                expected[str(row.task_id)] = clean.get(url).content
    assert_complete(output_dir, results, expected, rows)
    assert sum(r.resumed for r in results) > 0  # real partial bodies were continued
    assert stats["faults"]["truncated_download"] > 0
    assert stats["downloads_with_authorization"] == 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_cancelled_download_leaves_its_part_and_resumes(ledger: Ledger, output_dir: Path) -> None:
    row = succeeded(ledger, "cx")
    data = video_bytes("cx", 400_000)
    first_chunk = asyncio.Event()

    class Slow(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield data[:100_000]
            first_chunk.set()
            await asyncio.sleep(30)  # the run is stopped here
            yield data[100_000:]

    server = FileServer({"/out/cx.mp4": data})
    slow = True

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal slow
        if slow:
            slow = False
            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=Slow())
        return server.handle(request)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            downloader = Downloader(ledger, client, output_dir)
            task = asyncio.ensure_future(downloader.on_succeeded(row))
            await first_chunk.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            final = report_folder(output_dir, "demo") / output_relpath(row, 0)
            part = final.with_name(f".{final.name}.part")
            assert part.read_bytes() == data[:100_000]  # what arrived is kept
            assert not final.exists()
            [again] = await downloader.fetch([row])
            assert again.outcome == "downloaded"
            assert server.requests[0].headers["range"] == "bytes=100000-"
            assert final.read_bytes() == data
            assert not part.exists()

    run(go())


def test_a_file_made_final_while_cancelled_is_still_recorded(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C lands while the worker thread fsyncs and renames: the thread is
    # let finish, and the file it put in place gets its ledger row before the
    # cancel goes on, so the next run keeps it instead of fetching it again.
    row = succeeded(ledger, "cf")
    data = video_bytes("cf")
    server = FileServer({"/out/cf.mp4": data})
    in_final, release = threading.Event(), threading.Event()
    real_final = partfile._make_final

    def slow_final(fd: int, part: Path, dest: Path) -> str:
        in_final.set()
        assert release.wait(10)  # the cancel lands while this thread runs
        return real_final(fd, part, dest)

    monkeypatch.setattr(partfile, "_make_final", slow_final)

    async def go() -> None:
        async with server.client() as client:
            downloader = Downloader(ledger, client, output_dir)
            task = asyncio.ensure_future(downloader.on_succeeded(row))
            assert await asyncio.to_thread(in_final.wait, 10)
            task.cancel()
            await asyncio.sleep(0)  # the cancel is delivered to the waiting task
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            [kept] = await downloader.fetch([row])
            assert kept.outcome == "kept"

    run(go())
    [output] = ledger.outputs(ENV, row.key)
    assert output.path is not None
    assert output.sha256 == sha256(data)
    final = report_folder(output_dir, "demo") / output.path
    assert final.read_bytes() == data
    assert len(server.requests) == 1  # never fetched again


def test_an_unreachable_api_fails_only_that_task(ledger: Ledger, output_dir: Path) -> None:
    lost = add_task(ledger, ENV, task_row("mvb1-" + "u" * 32, "shot"), task_id="task_u")
    fine = succeeded(ledger, "ok")
    server = FileServer({"/out/ok.mp4": video_bytes("ok")})

    async def refresh(task_id: str) -> list[str]:
        raise httpx.ConnectError("the API is down")

    results = run(fetch_all(ledger, server, output_dir, [lost, fine], refresh=refresh))
    assert [r.outcome for r in results] == ["failed", "downloaded"]
    assert "the API is down" in (results[0].error or "")


# ------------------------------------------------- writing and the hot path


def test_writes_are_bounded_system_calls_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Big writes make the kernel allocate big page-cache folios, which on a
    # virtual machine can land on memory the host has to fault in again.
    calls: list[int] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[Any]) -> int:
        assert len(buffers) <= partfile._IOV_MAX
        size = sum(len(b) for b in buffers)
        calls.append(size)
        # Every third call is a short write, as a signal or a full pipe can cause.
        return real_writev(fd, buffers if len(calls) % 3 else [memoryview(buffers[0])[:1]])

    monkeypatch.setattr(os, "writev", writev)
    sizes = [1, 70_000, 700_000, 5, 300_000, *[3] * 2000]  # and more buffers than writev takes
    chunks = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        partfile._write_all(fd, chunks)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)
    assert max(calls) <= partfile._WRITE_BYTES
    assert sum(calls) == len(b"".join(chunks))


@pytest.mark.parametrize("where", ["event loop", "worker thread"])
def test_a_failed_write_ends_the_output_without_a_hole(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    row = succeeded(ledger, "w1")
    data = video_bytes("w1", 3_000_000)
    if where == "worker thread":  # every write is "slow": after the first, they go to threads
        monkeypatch.setattr(partfile, "_SLOW_WRITE_SECONDS", -1.0)
        monkeypatch.setattr(partfile, "_THREAD_BATCH_BYTES", 512 * 1024)
    else:  # no write is "slow", however loaded the machine
        monkeypatch.setattr(partfile, "_SLOW_WRITE_SECONDS", float("inf"))
    real_write_all = partfile._write_all
    written: list[int] = []
    calls = 0

    def failing(fd: int, chunks: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # once: the disk works again right after
            # (A full disk is another case: its part is given back, see
            # tests/test_download_hardening.py.)
            raise OSError(errno.EIO, "Input/output error")
        real_write_all(fd, chunks)
        written.append(sum(len(c) for c in chunks))

    monkeypatch.setattr(partfile, "_write_all", failing)
    server = FileServer({"/out/w1.mp4": data}, chunk=64 * 1024)
    [result] = run(fetch_all(ledger, server, output_dir, [row]))
    assert result.outcome == "failed"
    assert "Input/output error" in (result.error or "")
    final = report_folder(output_dir, "demo") / output_relpath(row, 0)
    part = final.with_name(f".{final.name}.part")
    assert part.read_bytes() == data[: sum(written)]  # a prefix: nothing after the failure
    assert ledger.outputs(ENV, row.key)[0].path is None

    monkeypatch.setattr(partfile, "_write_all", real_write_all)
    [again] = run(fetch_all(ledger, server, output_dir, [row]))
    assert again.outcome == "downloaded"
    assert server.requests[-1].headers["range"] == f"bytes={sum(written)}-"
    assert final.read_bytes() == data
    assert again.sha256 == sha256(data)


def test_a_slow_disk_moves_writes_off_the_event_loop(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [succeeded(ledger, f"s{i}") for i in range(3)]
    data = {f"/out/s{i}.mp4": video_bytes(f"s{i}", 1_500_000) for i in range(3)}
    monkeypatch.setattr(partfile, "_SLOW_WRITE_SECONDS", 0.0)  # the first write is too slow
    monkeypatch.setattr(partfile, "_THREAD_BATCH_BYTES", 300_000)
    threads: list[str] = []
    real_write_all = partfile._write_all

    def recording(fd: int, chunks: list[bytes]) -> None:
        threads.append(threading.current_thread().name)
        real_write_all(fd, chunks)

    monkeypatch.setattr(partfile, "_write_all", recording)
    server = FileServer(dict(data), chunk=64 * 1024)
    results = run(fetch_all(ledger, server, output_dir, rows))
    assert [r.outcome for r in results] == ["downloaded"] * 3
    for i, result in enumerate(results):
        assert result.sha256 == sha256(data[f"/out/s{i}.mp4"])
    main = threading.main_thread().name
    assert threads[0] == main  # measured in the event loop once...
    assert len(threads) > 3
    assert all(t != main for t in threads[1:])  # ...then in worker threads


def test_the_transfer_slot_is_free_before_fsync_and_rename(
    ledger: Ledger, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one slot, the second transfer starts while the first file is still
    # being made durable (fsync is off the transfers' critical path), but the
    # third waits: files being made durable are bounded too.
    rows = [succeeded(ledger, f"o{i}") for i in range(3)]
    server = FileServer({f"/out/o{i}.mp4": video_bytes(f"o{i}") for i in range(3)})
    second_started = threading.Event()
    seen_meanwhile: list[str] = []
    real_handle, real_final = server.handle, partfile._make_final

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/out/o1.mp4":
            second_started.set()
        return real_handle(request)

    def final(fd: int, part: Path, dest: Path) -> str:
        if dest.name == output_relpath(rows[0], 0).name:
            assert second_started.wait(10), "the next transfer waited for fsync"
            time.sleep(0.3)  # time enough for the second file to arrive, and a third to start
            seen_meanwhile.extend(r.url.path for r in server.requests)
        return real_final(fd, part, dest)

    monkeypatch.setattr(server, "handle", handle)
    monkeypatch.setattr(partfile, "_make_final", final)
    results = run(fetch_all(ledger, server, output_dir, rows, concurrency=1))
    assert [r.outcome for r in results] == ["downloaded"] * 3
    assert seen_meanwhile == ["/out/o0.mp4", "/out/o1.mp4"]
