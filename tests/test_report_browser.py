"""The contact sheet in a real browser: headless Chromium (Debian's), driven by Playwright.

Opens report.html from disk with the network effectively off and checks what
a person would: one playable video per succeeded task, every source a local
file that exists and decodes, failed cells saying why, no console errors
(a Content Security Policy violation is one), and no request leaving file://.
Skipped when /usr/bin/chromium or the playwright package is missing; CI
installs both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from report_helpers import add_task, video_bytes

from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.downloads.fetch import Downloader
from mvbatch.ledger import open_ledger
from mvbatch.report.command import ReportResult, write_report
from mvbatch.settings import Settings

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)",
    ),
]

MANIFEST = """
name = "sheet"
[defaults]
model = "kling-v2-6"
[[shots]]
id = "car-rain"
prompt = "A silver sports car driving through neon-lit rain <script>alert(1)</script>"
[shots.matrix]
mode = ["std", "pro"]
duration = [5, 10]
[[shots]]
id = "dog-beach"
prompt = "A golden retriever running on a beach at sunset"
[shots.matrix]
mode = ["std", "pro"]
duration = [5, 10]
"""


def build_sheet(tmp_path: Path) -> tuple[ReportResult, int]:
    """A report with 5 downloaded videos, 1 failure, 1 task running and 1 never submitted."""
    settings = Settings(
        MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "out dir"
    )
    manifest = tmp_path / "sheet.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    plan = build_plan(manifest, settings, "sim")
    ledger = open_ledger(settings.state_dir)
    ledger.start_run("sim", plan.name, "http://sim", None)
    rows = planned_rows(plan)
    succeeded = 0
    for n, row in enumerate(rows):
        if n == 2:
            add_task(ledger, "sim", row, "failed", error="Moderation: <b>flagged</b> prompt")
        elif n == 5:
            add_task(ledger, "sim", row, "processing")
        elif n == 7:
            continue
        else:
            add_task(ledger, "sim", row, urls=[f"https://cdn.test/{n}.mp4"])
            succeeded += 1

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=video_bytes(request.url.path, 120_000))

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await Downloader(ledger, client, settings.output_dir).fetch(ledger.tasks("sim"))

    asyncio.run(fetch())
    return write_report(settings, ledger, plan.name, "sim", plan=plan), succeeded


def test_the_contact_sheet_plays_every_video_in_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    result, succeeded = build_sheet(tmp_path)
    page_url = result.files["html"].resolve().as_uri()
    console: list[str] = []
    requests: list[str] = []
    # Playwright's driver is a Node process it ships: no browser download.
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on(
                "console",
                lambda m: (
                    console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_url, wait_until="load")
            videos = page.locator("video")
            assert videos.count() == succeeded
            # Every clip must load its metadata from the local file: it exists
            # and Chromium can decode it.
            page.wait_for_function(
                "Array.from(document.querySelectorAll('video'))"
                ".every(v => v.readyState >= 1 || v.error)",
                timeout=20_000,
            )
            states: list[dict[str, Any]] = page.evaluate(
                "Array.from(document.querySelectorAll('video')).map(v => ({src: v.currentSrc, "
                "error: v.error && v.error.code, duration: v.duration}))"
            )
            assert page.locator("figure.failed").count() == 1
            assert "Moderation: <b>flagged</b> prompt" in page.locator("figure.failed").inner_text()
            assert page.locator("figure.pending").count() == 2
            assert "<script>alert(1)</script>" in page.locator(".prompt").first.inner_text()
            page.locator("#play-all").click()
            page.wait_for_function(
                "Array.from(document.querySelectorAll('video')).every(v => !v.paused)",
                timeout=10_000,
            )
            page.screenshot(path=str(tmp_path / "contact-sheet.png"), full_page=True)
        finally:
            browser.close()
    for state in states:
        assert state["error"] is None, state
        assert state["duration"] == pytest.approx(2, abs=0.01)
        local = Path(unquote(urlsplit(state["src"]).path))
        assert local.is_file()
        assert local.resolve().is_relative_to(result.folder.resolve())
    assert console == []
    assert all(url.startswith("file://") for url in requests), requests


def test_chromium_dump_dom_sees_the_same_sheet(tmp_path: Path) -> None:
    """Without Playwright: the browser's own --dump-dom, after scripts ran."""
    import subprocess

    result, succeeded = build_sheet(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    dom = subprocess.run(
        [
            CHROMIUM,
            *ARGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            result.files["html"].resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "HOME": str(home)},
    ).stdout
    assert dom.count("<video ") == succeeded
    assert "<script>alert(1)</script>" not in dom
    assert shutil.which(CHROMIUM) is not None
