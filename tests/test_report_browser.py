"""The contact sheet in a real browser: headless Chromium (Debian's), driven by Playwright.

Opens report.html from disk with the network effectively off and checks what
a person would: a grid of shots by variants, a poster per video before any
video loads (or, without ffmpeg, first frames loaded only near the
viewport), every source a local file that exists and decodes, failed cells
saying why, verdicts read-only, filters and sort, the keyboard, a row played
in sync; and, after every test, no console errors (a Content Security Policy
violation is one) and no request leaving file://. The review page's script
runs against a stub of the agreed review API (`StubReview`): verdicts and
notes are posted, changed cards are replaced at the next poll without
touching the others, and a new layout swaps the grid in place.
Skipped when /usr/bin/chromium or the playwright package is missing; CI
installs both.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
from mvbatch.report.html import ReviewMode, card_fragments, contact_sheet, layout_signature
from mvbatch.report.model import Report
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


def many_shots(count: int) -> str:
    lines = ['name = "sheet"', "[defaults]", 'model = "kling-v2-6"']
    for n in range(count):
        lines += ["[[shots]]", f'id = "shot-{n:03d}"', f'prompt = "shot {n}"', "[shots.matrix]"]
        lines += ['mode = ["std", "pro"]']
    return "\n".join(lines) + "\n"


def build_sheet(tmp_path: Path, shots: int | None = None) -> tuple[ReportResult, int]:
    """A report with 5 downloaded videos, 1 failure, 1 task running and 1 never submitted.

    The first video is approved, with a note. With `shots`, that many shots of
    two variants each instead (the same failures among the first eight tasks).
    """
    settings = Settings(
        MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "out dir"
    )
    manifest = tmp_path / "sheet.toml"
    manifest.write_text(MANIFEST if shots is None else many_shots(shots), encoding="utf-8")
    plan = build_plan(manifest, settings, "sim")
    ledger = open_ledger(settings.state_dir)
    ledger.start_run("sim", plan.name, "http://sim", None)
    rows = list(planned_rows(plan))
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
    ledger.record_verdict("sim", rows[0]["key"], "approved", "great <i>light</i>")
    return write_report(settings, ledger, plan.name, "sim", plan=plan), succeeded


@dataclass
class Browser:
    page: Any
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def visible_keys(self) -> list[str]:
        keys: list[str] = self.page.evaluate(
            "Array.from(document.querySelectorAll('.take'))"
            ".filter(t => t.offsetParent !== null).map(t => t.dataset.key)"
        )
        return keys

    def current(self) -> str | None:
        key: str | None = self.page.evaluate(
            "(document.querySelector('.take.current') || {dataset: {}}).dataset.key || null"
        )
        return key


@contextmanager
def chromium(
    monkeypatch: pytest.MonkeyPatch, page_url: str, *, offline: bool = True
) -> Iterator[Browser]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    # Playwright's driver is a Node process it ships: no browser download.
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            seen = Browser(page)
            page.on(
                "console",
                lambda m: (
                    seen.console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: seen.console.append(f"pageerror: {e}"))
            page.on("request", lambda r: seen.requests.append(r.url))
            page.goto(page_url, wait_until="load")
            yield seen
        finally:
            browser.close()
    assert seen.console == [], [u for u in seen.requests if "/files/" not in u]
    if offline:
        assert all(url.startswith("file://") for url in seen.requests), seen.requests
    else:
        assert all(url.startswith(page_url) for url in seen.requests), seen.requests


def test_the_contact_sheet_shows_posters_then_plays_in_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, succeeded = build_sheet(tmp_path)
    with chromium(monkeypatch, result.files["html"].resolve().as_uri()) as b:
        page = b.page
        videos = page.locator("video")
        assert videos.count() == succeeded
        # The grid: a row per shot, a column per variant, no wrapping cards.
        assert page.locator("tbody tr.shot").count() == 2
        assert page.locator("tbody tr.shot").first.locator("td").count() == 4
        if shutil.which("ffmpeg"):
            assert page.locator("img.poster").count() == succeeded
            page.wait_for_function(
                "Array.from(document.querySelectorAll('img.poster'))"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=20_000,
            )
            # Pictures, and not one video loaded to show them.
            assert page.evaluate(
                "Array.from(document.querySelectorAll('video')).every(v => v.readyState === 0)"
            )
        # Every clip near the viewport gets its source; loaded, each one plays
        # the local file: it exists and decodes.
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('video'))"
            ".every(v => v.getAttribute('src'))",
            timeout=20_000,
        )
        page.evaluate(
            "document.querySelectorAll('video').forEach(v => { v.preload = 'metadata'; v.load(); })"
        )
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('video'))"
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
        # The verdict and the note, read-only.
        approved = page.locator('.take[data-verdict="approved"]')
        assert approved.count() == 1
        assert "great <i>light</i>" in approved.locator(".note").inner_text()
        assert page.locator(".take button, .take textarea").count() == 0
        # Space plays the current take's row in sync; the other row stays paused.
        assert b.current() == page.locator(".take").first.get_attribute("data-key")
        page.keyboard.press("Space")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('tbody tr.shot')[0]"
            ".querySelectorAll('video')).every(v => !v.paused)",
            timeout=20_000,
        )
        assert page.evaluate(
            "Array.from(document.querySelectorAll('tbody tr.shot')[1].querySelectorAll('video'))"
            ".every(v => v.paused)"
        )
        page.keyboard.press("Space")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('video')).every(v => v.paused)",
            timeout=10_000,
        )
        page.screenshot(path=str(tmp_path / "contact-sheet.png"), full_page=True)
    for state in states:
        assert state["error"] is None, state
        assert state["duration"] == pytest.approx(2, abs=0.01)
        local = Path(unquote(urlsplit(state["src"]).path))
        assert local.is_file()
        assert local.resolve().is_relative_to(result.folder.resolve())


def test_filters_sort_and_the_keyboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, succeeded = build_sheet(tmp_path)
    with chromium(monkeypatch, result.files["html"].resolve().as_uri()) as b:
        page = b.page
        everything = b.visible_keys()
        assert len(everything) == 8  # 5 videos, 1 failed, 1 running, 1 planned
        page.select_option('select[name="status"]', "failed")
        assert len(b.visible_keys()) == 1
        assert page.locator("#shown").inner_text() == "1"
        assert page.locator("tbody tr.shot:visible").count() == 1
        page.select_option('select[name="status"]', "succeeded")
        assert len(b.visible_keys()) == succeeded
        page.select_option('select[name="verdict"]', "approved")
        assert len(b.visible_keys()) == 1
        page.select_option('select[name="verdict"]', "none")
        assert len(b.visible_keys()) == succeeded - 1
        page.select_option('select[name="verdict"]', "")
        page.select_option('select[name="model"]', "kling-v2-6")
        assert len(b.visible_keys()) == succeeded
        page.fill('input[name="cost-min"]', "1000")
        assert b.visible_keys() == []
        page.fill('input[name="cost-min"]', "")
        page.select_option('select[name="status"]', "")
        assert b.visible_keys() == everything
        # Sorting moves whole rows: cheapest shot first, then the dearest first.
        costs: list[tuple[str, float]] = page.evaluate(
            "Array.from(document.querySelectorAll('tbody tr.shot')).map(r => [r.dataset.shot, "
            "Array.from(r.querySelectorAll('.take')).reduce((s, t) => s + (+t.dataset.cost), 0)])"
        )
        page.select_option('select[name="sort"]', "cost-asc")
        shots = page.eval_on_selector_all("tbody tr.shot", "rows => rows.map(r => r.dataset.shot)")
        assert shots == [s for s, _ in sorted(costs, key=lambda c: c[1])]
        page.select_option('select[name="sort"]', "cost-desc")
        shots = page.eval_on_selector_all("tbody tr.shot", "rows => rows.map(r => r.dataset.shot)")
        assert shots == [s for s, _ in sorted(costs, key=lambda c: -c[1])]
        page.select_option('select[name="sort"]', "manifest")
        # The keyboard, once focus has left the controls.
        page.locator("h1").click()
        order = b.visible_keys()
        assert b.current() == order[0]
        page.keyboard.press("j")
        assert b.current() == order[1]
        page.keyboard.press("ArrowRight")
        assert b.current() == order[2]
        page.keyboard.press("k")
        page.keyboard.press("ArrowLeft")
        assert b.current() == order[0]
        page.keyboard.press("k")
        assert b.current() == order[0]  # no wrapping past the first
        for _ in range(20):
            page.keyboard.press("j")
        assert b.current() == order[-1]
        # Keys typed into a field are the field's.
        page.locator('input[name="cost-max"]').focus()
        page.keyboard.press("k")
        assert b.current() == order[-1]
        # A filter that hides the current take moves it to the first one shown.
        page.select_option('select[name="status"]', "failed")
        assert b.current() == b.visible_keys()[0]
        assert page.locator(".take.current").count() == 1


def test_without_ffmpeg_first_frames_load_only_near_the_viewport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as no_ffmpeg:
        no_ffmpeg.setenv("PATH", str(tmp_path))
        result, _ = build_sheet(tmp_path, shots=30)
    assert not (result.folder / "posters").exists()
    with chromium(monkeypatch, result.files["html"].resolve().as_uri()) as b:
        page = b.page
        assert page.locator("img.poster").count() == 0
        first, last = (
            "document.querySelector('video')",
            "Array.from(document.querySelectorAll('video')).pop()",
        )
        page.wait_for_function(f"() => {first}.readyState >= 1", timeout=20_000)
        assert page.evaluate(f"{first}.preload") == "metadata"
        assert page.evaluate(
            f"[{last}.readyState, {last}.preload, {last}.getAttribute('src')]"
        ) == [0, "none", None]
        page.evaluate(f"{last}.scrollIntoView()")
        page.wait_for_function(f"() => {last}.readyState >= 1", timeout=20_000)


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


class StubReview:
    """The agreed review API on a loopback socket (the real one is `mvbatch review`'s)."""

    def __init__(self, report: Report, folder: Path) -> None:
        self.report, self.folder, self.token = report, folder, "tok-" + "x" * 20
        self.version = 0
        self.posts: list[dict[str, Any]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/":
                    page = contact_sheet(stub.report, stub.folder, ReviewMode(stub.token))
                    self.answer(200, page.encode(), "text/html; charset=utf-8")
                elif self.path.startswith("/files/"):
                    local = stub.folder / unquote(self.path.removeprefix("/files/"))
                    kind = "image/jpeg" if local.suffix == ".jpg" else "video/mp4"
                    self.answer(200, local.read_bytes(), kind)
                elif self.path == "/api/cards" and self.authorized():
                    cards = card_fragments(stub.report, stub.folder, ReviewMode(stub.token))
                    body = {
                        "version": str(stub.version),
                        "layout": layout_signature(stub.report),
                        "cards": cards,
                    }
                    self.answer(200, json.dumps(body).encode(), "application/json")
                elif not self.path.startswith("/api/"):
                    self.answer(404, b"", "text/plain")

            def do_POST(self) -> None:
                if self.path != "/api/verdict" or not self.authorized():
                    return
                sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.posts.append(sent)
                stub.judge(sent["key"], sent["verdict"], sent["note"])
                answer = {**sent, "at": "2026-01-01T00:00:00Z"}
                self.answer(200, json.dumps(answer).encode(), "application/json")

            def authorized(self) -> bool:
                if self.headers.get("X-Mvbatch-Token") == stub.token:
                    return True
                self.answer(403, b"{}", "application/json")
                return False

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def judge(self, key: str, verdict: str | None, note: str | None) -> None:
        tasks = tuple(
            replace(t, verdict=verdict, note=note) if t.key == key else t for t in self.report.tasks
        )
        self.report = replace(self.report, tasks=tasks)
        self.version += 1


def test_review_mode_posts_verdicts_and_follows_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = build_sheet(tmp_path)
    stub = StubReview(result.report, result.folder)
    thread = threading.Thread(target=stub.server.serve_forever, daemon=True)
    thread.start()
    try:
        with chromium(monkeypatch, stub.url, offline=False) as b:
            page = b.page
            page.evaluate("window.sameDocument = true")
            cards = page.locator(".take")
            first = cards.nth(0)
            key = first.get_attribute("data-key")
            assert b.current() == key
            assert first.get_attribute("data-verdict") == "approved"  # from the ledger
            # Clicking the active verdict clears it; the other sets it.
            first.locator('button[data-action="approve"]').click()
            page.wait_for_function(
                "() => document.querySelector('.take').dataset.verdict === ''", timeout=10_000
            )
            page.locator("h1").click()
            page.keyboard.press("r")
            page.wait_for_function(
                "() => document.querySelector('.take').dataset.verdict === 'rejected'",
                timeout=10_000,
            )
            # The note: saved on Enter with the current verdict; keys typed there stay there.
            page.keyboard.press("n")
            page.keyboard.type("too dark <b>here</b>")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "() => !document.querySelector('.take').classList.contains('saving')"
                " && document.activeElement.tagName !== 'TEXTAREA'",
                timeout=10_000,
            )
            page.locator("h1").click()
            assert stub.posts == [
                {"key": key, "verdict": None, "note": "great <i>light</i>"},
                {"key": key, "verdict": "rejected", "note": "great <i>light</i>"},
                {
                    "key": key,
                    "verdict": "rejected",
                    "note": "great <i>light</i>too dark <b>here</b>",
                },
            ]
            # A change made elsewhere reaches the page at the next poll; other
            # cards (and a video playing in one) are left alone.
            second = cards.nth(1).get_attribute("data-key")
            assert second is not None
            page.evaluate(
                "() => { window.kept = Array.from(document.querySelectorAll('.take video'))"
                ".pop().closest('.take');"
                " const v = window.kept.querySelector('video'); v.src = v.dataset.src;"
                " v.muted = true; return v.play(); }"
            )
            stub.judge(second, "approved", "from another window")
            page.wait_for_function(
                "() => document.querySelectorAll('.take')[1].dataset.verdict === 'approved'",
                timeout=10_000,
            )
            assert "from another window" in cards.nth(1).locator("textarea").input_value()
            assert page.evaluate(
                "() => window.kept === document.querySelector"
                '(`.take[data-key="${window.kept.dataset.key}"]`)'
                " && !window.kept.querySelector('video').paused"
            )
            # A new take changes the layout: the grid is fetched and swapped in place.
            extra = replace(result.report.tasks[0], key="mvb1-" + "e" * 32, take=2, verdict=None)
            stub.report = replace(stub.report, tasks=(*stub.report.tasks, extra))
            stub.version += 1
            page.wait_for_function(
                f"() => document.querySelectorAll('.take').length === {cards.count() + 1}",
                timeout=10_000,
            )
            assert page.evaluate("window.sameDocument") is True
            assert page.locator(f'.take[data-key="{extra.key}"]').count() == 1
    finally:
        stub.server.shutdown()
        stub.server.server_close()
        thread.join(5)
