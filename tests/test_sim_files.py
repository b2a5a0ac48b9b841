"""Output downloads: Content-Length, HEAD, Range, expiry, signatures, sizes, other hosts."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim_helpers import FakeClock, sim_client

from mvbatch.sim.config import SimConfig
from mvbatch.sim.files import RangeNotSatisfiable, parse_range

pytestmark = pytest.mark.anyio


def kling(duration: int = 5, mode: str = "std") -> dict[str, object]:
    return {
        "model": "kling-v2-6",
        "input": {"prompt": "A car", "duration": duration, "mode": mode},
    }


async def output_url(client: httpx.AsyncClient, payload: dict[str, object] | None = None) -> str:
    body = (await client.post("/api/v1/tasks", json=payload or kling())).json()
    assert body["status"] == "succeeded", body
    url: str = body["output"]["videos"][0]["url"]
    return url


async def test_get_and_head_send_content_length() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        url = await output_url(client)
        full = await client.get(url)
        assert full.status_code == 200
        assert full.headers["Content-Type"] == "video/mp4"
        assert full.headers["Accept-Ranges"] == "bytes"
        assert int(full.headers["Content-Length"]) == len(full.content) > 100_000
        head = await client.head(url)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == full.headers["Content-Length"]
        assert head.headers["ETag"] == full.headers["ETag"]
        assert head.content == b""


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=10-19", 10, 19), ("bytes=100-", 100, None), ("bytes=-50", -50, None)],
)
async def test_a_single_range_is_206(header: str, first: int, last: int | None) -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        url = await output_url(client)
        full = (await client.get(url)).content
        part = await client.get(url, headers={"Range": header})
        assert part.status_code == 206
        expected = full[first : None if last is None else last + 1]
        assert part.content == expected
        assert part.headers["Content-Length"] == str(len(expected))
        start = first if first >= 0 else len(full) + first
        assert part.headers["Content-Range"] == (
            f"bytes {start}-{start + len(expected) - 1}/{len(full)}"
        )


async def test_unsatisfiable_ranges_are_416_and_multiple_ranges_get_the_whole_file() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        url = await output_url(client)
        size = int((await client.head(url)).headers["Content-Length"])
        response = await client.get(url, headers={"Range": f"bytes={size}-"})
        assert response.status_code == 416
        assert response.headers["Content-Range"] == f"bytes */{size}"
        response = await client.get(url, headers={"Range": "bytes=0-1,5-9"})
        assert response.status_code == 200
        assert len(response.content) == size


async def test_urls_expire_and_the_task_hands_out_a_fresh_one() -> None:
    clock = FakeClock()
    async with sim_client(SimConfig(speed=0, clock=clock, url_ttl_seconds=60)) as client:
        body = (await client.post("/api/v1/tasks", json=kling())).json()
        url = body["output"]["videos"][0]["url"]
        assert body["output"]["videos"][0]["expires_at"].endswith("Z")
        assert (await client.head(url)).status_code == 200
        clock.advance(61)
        expired = await client.get(url)
        assert expired.status_code == 403
        assert expired.json()["error"]["code"] == "url_expired"
        fresh = (await client.get(f"/api/v1/tasks/{body['task_id']}")).json()
        new_url = fresh["output"]["videos"][0]["url"]
        assert new_url != url
        assert (await client.get(new_url)).status_code == 200


async def test_forged_or_unknown_urls_are_refused() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        url = await output_url(client)
        forged = url.replace("sig=", "sig=0")
        assert (await client.get(forged)).json()["error"]["code"] == "invalid_signature"
        later = url.replace("expires=", "expires=9")
        assert (await client.get(later)).status_code == 403
        no_query = url.split("?")[0]
        assert (await client.get(no_query)).status_code == 403
        assert (await client.get("/files/task_nope/x.mp4?expires=1&sig=x")).status_code == 404


async def test_files_can_live_on_another_host_and_need_no_key() -> None:
    config = SimConfig(speed=0, files_base_url="http://localhost:9999")
    async with sim_client(config) as client:
        url = await output_url(client)
        assert url.startswith("http://localhost:9999/files/")
        # Same app (the transport ignores the host), but no Authorization header.
        async with httpx.AsyncClient(transport=client._transport) as bare:
            assert (await bare.get(url)).status_code == 200
        assert (await client.get("/_sim/stats")).json()["downloads_with_authorization"] == 0
        # A client that leaks its key to the file host is counted.
        assert (await client.get(url)).status_code == 200
        assert (await client.get("/_sim/stats")).json()["downloads_with_authorization"] == 1


async def test_every_task_has_different_bytes_and_size_grows_with_duration_and_mode() -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        first = (await client.get(await output_url(client))).content
        second = (await client.get(await output_url(client))).content
        assert first != second
        sizes = []
        for duration, mode in ((5, "std"), (10, "std"), (10, "pro")):
            url = await output_url(client, kling(duration, mode))
            sizes.append(int((await client.head(url)).headers["Content-Length"]))
        assert sizes == sorted(sizes)
        assert len(set(sizes)) == 3


async def test_output_scale_makes_big_files() -> None:
    async with sim_client(SimConfig(speed=0, output_scale=25)) as client:
        url = await output_url(client)
        assert int((await client.head(url)).headers["Content-Length"]) == 5_000_000


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not installed")
async def test_ffprobe_accepts_a_downloaded_output(tmp_path: Path) -> None:
    async with sim_client(SimConfig(speed=0)) as client:
        path = tmp_path / "out.mp4"
        path.write_bytes((await client.get(await output_url(client, kling(10)))).content)
    probe = await anyio.run_process(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        check=True,
    )
    assert float(probe.stdout) == pytest.approx(10.0)


@given(size=st.integers(1, 10_000), first=st.integers(0, 12_000), length=st.integers(1, 5_000))
def test_parse_range_returns_a_slice_inside_the_file(size: int, first: int, length: int) -> None:
    header = f"bytes={first}-{first + length - 1}"
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    assert parse_range(header, size) == (first, min(first + length - 1, size - 1))


@pytest.mark.parametrize("header", [None, "items=0-1", "bytes=5-1", "bytes=abc", "bytes=1-2,3-4"])
def test_parse_range_ignores_what_it_cannot_honour(header: str | None) -> None:
    assert parse_range(header, 100) is None
