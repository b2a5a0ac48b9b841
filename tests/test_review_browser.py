"""`mvbatch review` in a real browser: headless Chromium (Debian's), driven by Playwright.

A real `mvbatch review` process on loopback serves a ledger the test fills
the way a run would (three takes downloaded, one still processing). In the
page, a person approves one take with the keyboard and rejects another with
the mouse, writes a note; the ledger has each verdict and report.json carries
them once the review stops (Ctrl-C, exit 0). A browser without the token is
refused. The take still processing lands while the page is open (the test
finishes it and downloads its video, as a run would), and the same page, not
reloaded, shows its video. Skipped when /usr/bin/chromium or the playwright
package is missing; CI installs both.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from report_helpers import add_task, video_bytes
from run_helpers import cli_env, cli_popen
from test_report_browser import ARGS, CHROMIUM

from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.downloads.fetch import Downloader
from mvbatch.ledger import Ledger, open_ledger
from mvbatch.settings import Settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent (apt-get install chromium; CI installs it)",
    ),
]

MANIFEST = """
name = "review"
[defaults]
model = "kling-v2-6"
[[shots]]
id = "car-rain"
prompt = "A silver sports car driving through neon-lit rain"
[shots.matrix]
mode = ["std", "pro"]
[[shots]]
id = "dog-beach"
prompt = "A golden retriever running on a beach at sunset"
[shots.matrix]
mode = ["std", "pro"]
"""

T = TypeVar("T")


def eventually(read: Callable[[], T], ok: Callable[[T], bool], what: str, timeout: float = 20) -> T:
    """`read()` until `ok` says yes: the page posts verdicts asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r}")
        time.sleep(0.1)


def download(ledger: Ledger, settings: Settings, keys: list[str]) -> None:
    """Fetch the videos of `keys` and record them, as a run's downloader does."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=video_bytes(request.url.path, 120_000))

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            rows = [row for row in ledger.tasks("sim") if row.key in keys]
            await Downloader(ledger, client, settings.output_dir).fetch(rows)

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, fetch()).result()


def test_review_in_chromium_keyboard_mouse_token_and_a_take_landing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    # The folders `cli_env` gives the review process.
    settings = Settings(
        MVBATCH_STATE_DIR=tmp_path / "state", MVBATCH_OUTPUT_DIR=tmp_path / "outputs"
    )
    manifest = tmp_path / "review.toml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    plan = build_plan(manifest, settings, "sim")
    rows = list(planned_rows(plan))
    keys = [row["key"] for row in rows]
    ledger = open_ledger(settings.state_dir)
    ledger.start_run("sim", plan.name, "http://sim", None)
    for row in rows[:3]:
        add_task(ledger, "sim", row, urls=[f"https://cdn.test/{row['key']}.mp4"])
    landing = keys[3]
    add_task(ledger, "sim", rows[3], "processing")
    download(ledger, settings, keys[:3])

    env = cli_env(tmp_path, key=None)
    out = tmp_path / "review.out"
    process = cli_popen(["review", str(manifest), "--port", "0", "--no-open"], env, tmp_path, out)
    url = eventually(
        lambda: next(
            (x for x in out.read_text(encoding="utf-8").splitlines() if x.startswith("http")),
            None,
        ),
        lambda found: found is not None or process.poll() is not None,
        "the URL",
        timeout=60,
    )
    assert url is not None, out.read_text(encoding="utf-8")
    origin = url.partition("/?")[0]

    def verdicts(key: str) -> list[tuple[str | None, str | None]]:
        with sqlite3.connect(settings.state_dir / "ledger.sqlite") as db:
            return list(
                db.execute("SELECT verdict, note FROM verdicts WHERE key = ? ORDER BY id", (key,))
            )

    errors: list[str] = []
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # Without the token: refused, and no page to act from.
            stranger = browser.new_page()
            refused = stranger.goto(origin + "/")
            assert refused is not None
            assert refused.status == 403
            assert stranger.locator(".take").count() == 0
            stranger.close()

            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on(
                "console",
                lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(url, wait_until="load")
            # Set once; a reload or navigation would lose it.
            page.evaluate("window.__sameDocument = 'yes'")
            cards = page.locator(".take")
            assert sorted(cards.evaluate_all("els => els.map(e => e.dataset.key)")) == sorted(keys)
            card = {key: page.locator(f'.take[data-key="{key}"]') for key in keys}

            # The keyboard: the first card is current; `a` approves it, then
            # `j` moves on and `n` opens its note.
            first = page.locator(".take.current")
            first_key = first.get_attribute("data-key")
            assert first_key == cards.first.get_attribute("data-key")
            page.keyboard.press("a")
            page.wait_for_selector(f'.take[data-key="{first_key}"][data-verdict="approved"]')
            eventually(lambda: verdicts(first_key), lambda v: v[-1:] == [("approved", None)], "a")
            page.keyboard.press("j")
            second_key = page.locator(".take.current").get_attribute("data-key")
            assert second_key not in (None, first_key)
            page.keyboard.press("n")
            note = card[second_key].locator('textarea[name="note"]')
            assert note.evaluate("el => el === document.activeElement")
            page.keyboard.type("too dark <b>at</b> 2 s")
            page.keyboard.press("Enter")
            eventually(
                lambda: verdicts(second_key),
                lambda v: v[-1:] == [(None, "too dark <b>at</b> 2 s")],
                "the note",
            )

            # The mouse: reject the third take with its button.
            third_key = next(k for k in keys[:3] if k not in (first_key, second_key))
            card[third_key].locator('button[data-action="reject"]').click()
            page.wait_for_selector(f'.take[data-key="{third_key}"][data-verdict="rejected"]')
            eventually(lambda: verdicts(third_key), lambda v: v[-1:] == [("rejected", None)], "r")

            # A cookie-only write from the page itself is refused: the header is needed.
            status = page.evaluate(
                """key => fetch('/api/verdict', {method: 'POST',
                     headers: {'Content-Type': 'application/json'},
                     body: JSON.stringify({key: key, verdict: 'approved', note: null})})
                   .then(r => r.status)""",
                third_key,
            )
            assert status == 403

            # A take lands while the page is open: no video yet, then one. The
            # page has polled the cards at least once before it lands.
            with page.expect_response(lambda r: "/api/cards" in r.url, timeout=10_000):
                pass
            assert card[landing].locator("video").count() == 0
            ledger.record_finished(
                "sim",
                landing,
                previous="processing",
                status="succeeded",
                cost_estimate=Decimal("0.0414"),
                cost_actual=Decimal("0.0414"),
                error=None,
                urls=[f"https://cdn.test/{landing}.mp4"],
                polls=3,
                latency=None,
                run_id=None,
            )
            download(ledger, settings, [landing])
            page.wait_for_selector(f'.take[data-key="{landing}"] video', timeout=30_000)
            assert page.evaluate("window.__sameDocument") == "yes"
            assert card[first_key].get_attribute("data-verdict") == "approved"
            assert card[third_key].get_attribute("data-verdict") == "rejected"
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        finally:
            browser.close()
            ledger.close()
    assert errors == []

    # Ctrl-C stops it cleanly; the reports it writes then carry the verdicts.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, out.read_text(encoding="utf-8")
    report: dict[str, Any] = json.loads(
        (settings.output_dir / "review" / "report.json").read_text(encoding="utf-8")
    )
    tasks = {t["key"]: t for t in report["tasks"]}
    assert (tasks[first_key]["verdict"], tasks[first_key]["note"]) == ("approved", None)
    assert (tasks[second_key]["verdict"], tasks[second_key]["note"]) == (
        None,
        "too dark <b>at</b> 2 s",
    )
    assert tasks[third_key]["verdict"] == "rejected"
    assert tasks[landing]["status"] == "succeeded"
