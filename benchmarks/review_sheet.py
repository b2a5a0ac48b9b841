"""A 500-take contact sheet in headless Chromium: time to first poster, and memory.

Run: python benchmarks/review_sheet.py [--shots 125] [--rounds 3]

Builds a ledger of `shots` shots, each a 2 modes x 2 durations matrix (500
takes by default), every 25th one failed and every 10th one with a verdict;
downloads the 475 videos (real 2 s MP4s from the simulator's writer, ~120 KB
each, through the Downloader on an in-process transport); writes the reports
(`write_report`, so the posters are made by ffmpeg when it is on PATH), and
also renders the same sheet without posters, the page a machine without
ffmpeg gets. Then, for each page and round, a fresh headless Chromium
(Debian's /usr/bin/chromium, driven by Playwright) opens it from file:// at
1366x900 and records:

- first poster: from navigation start to the first poster image decoded in
  the viewport (for the page without posters: the first video frame,
  `readyState >= 2`), read from the page's own clock;
- viewport done: every poster (or first frame) in the first viewport shown;
- DOMContentLoaded and load, from the Navigation Timing entry;
- JS heap (CDP `Performance.getMetrics`, JSHeapUsedSize) and the memory of
  all Chromium processes (sum of PSS, from /proc), once the first viewport
  is done and again after scrolling to the end of the sheet.

Prints the medians as a Markdown table for BENCHMARKS.md ("Review sheet").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

from mvbatch import logs
from mvbatch.commands.planning import build_plan, planned_rows
from mvbatch.downloads.fetch import Downloader
from mvbatch.ledger import Ledger, open_ledger
from mvbatch.report.command import write_report
from mvbatch.report.html import contact_sheet
from mvbatch.settings import Settings
from mvbatch.sim.mp4 import write_mp4

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

SEEN = """const h = innerHeight, w = innerWidth;
  const seen = el => {
    const r = el.getBoundingClientRect();
    return r.bottom > 0 && r.top < h && r.right > 0 && r.left < w;
  };"""
FIRST_POSTER = """() => {
  SEEN
  const imgs = Array.from(document.querySelectorAll('img.poster')).filter(seen);
  const shown = imgs.length ? imgs.filter(i => i.complete && i.naturalWidth > 0)
    : Array.from(document.querySelectorAll('video')).filter(seen).filter(v => v.readyState >= 2);
  return shown.length > 0 ? performance.now() : false;
}""".replace("SEEN", SEEN)
VIEWPORT_DONE = """() => {
  SEEN
  const imgs = Array.from(document.querySelectorAll('img.poster')).filter(seen);
  const vids = Array.from(document.querySelectorAll('video')).filter(seen);
  const done = imgs.length ? imgs.every(i => i.complete && i.naturalWidth > 0)
    : vids.length > 0 && vids.every(v => v.readyState >= 2 || v.error);
  return done ? performance.now() : false;
}""".replace("SEEN", SEEN)


def manifest_text(shots: int) -> str:
    lines = ['name = "review-bench"', "[defaults]", 'model = "kling-v2-6"']
    for n in range(shots):
        lines += [
            "[[shots]]",
            f'id = "shot-{n:03d}"',
            f'prompt = "shot {n}: a silver car in neon rain, take the corner slowly"',
            "[shots.matrix]",
            'mode = ["std", "pro"]',
            "duration = [5, 10]",
        ]
    return "\n".join(lines) + "\n"


def build(root: Path, shots: int) -> tuple[Path, Path, float]:
    """The report folder, the page without posters, and the seconds spent writing reports."""
    settings = Settings(MVBATCH_STATE_DIR=root / "state", MVBATCH_OUTPUT_DIR=root / "out")
    manifest = root / "bench.toml"
    manifest.write_text(manifest_text(shots), encoding="utf-8")
    plan = build_plan(manifest, settings, "sim")
    ledger = open_ledger(settings.state_dir)
    ledger.start_run("sim", plan.name, "http://sim", None)
    rows = planned_rows(plan)
    ledger.ensure_tasks("sim", rows)
    for n, row in enumerate(rows):
        finish(ledger, row, n)

    def serve(request: httpx.Request) -> httpx.Response:
        seed = request.url.path.encode()
        body = write_mp4(seconds=Decimal(2), aspect_ratio="16:9", target_size=120_000, seed=seed)
        return httpx.Response(200, content=body)

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
            await Downloader(ledger, client, settings.output_dir).fetch(ledger.tasks("sim"))

    asyncio.run(fetch())
    for n, row in enumerate(rows):
        if n % 10 == 0 and n % 25:
            ledger.record_verdict("sim", row["key"], "approved" if n % 20 else "rejected", None)
    started = time.perf_counter()
    result = write_report(settings, ledger, plan.name, "sim", plan=plan)
    seconds = time.perf_counter() - started
    bare = result.folder / "report-without-posters.html"
    with tempfile.TemporaryDirectory() as nowhere:  # no posters/ there: the ffmpeg-less page
        bare.write_text(contact_sheet(result.report, Path(nowhere)), encoding="utf-8")
    return result.files["html"], bare, seconds


def finish(ledger: Ledger, row: dict[str, Any], n: int) -> None:
    key, estimate = row["key"], Decimal(str(row["estimate_local"]))
    ledger.record_intent("sim", key, previous="planned", submit_key=key, attempt=0, run_id=None)
    ledger.record_submitted(
        "sim",
        key,
        task_id=f"task_{n}",
        request_id=None,
        status="queued",
        cost_estimate=estimate,
        run_id=None,
    )
    failed = n % 25 == 0
    ledger.record_finished(
        "sim",
        key,
        previous="queued",
        status="failed" if failed else "succeeded",
        cost_estimate=estimate,
        cost_actual=None if failed else estimate,
        error="Moderation: flagged" if failed else None,
        urls=[] if failed else [f"https://cdn.test/{n}.mp4"],
        polls=2,
        latency=None,
        run_id=None,
    )


def chromium_memory(root_pid: int) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) in MB over the Chromium processes below `root_pid`."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    below = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in below and pid not in below:
                below.add(pid)
                changed = True
    pss = rss = 0.0
    for pid in below:
        try:
            if "chrom" not in Path(f"/proc/{pid}/comm").read_text():
                continue
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup:
            name, _, value = line.partition(":")
            if name == "Pss":
                pss += int(value.split()[0]) / 1024
            elif name == "Rss":
                rss += int(value.split()[0]) / 1024
    return pss, rss


def js_heap(page: Page) -> float:
    session = page.context.new_cdp_session(page)
    session.send("Performance.enable")
    metrics = session.send("Performance.getMetrics")["metrics"]
    session.detach()
    return float(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize")) / 2**20


def measure(url: str) -> dict[str, float]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(url, wait_until="commit")
            first = page.wait_for_function(FIRST_POSTER, polling="raf", timeout=60_000)
            done = page.wait_for_function(VIEWPORT_DONE, polling="raf", timeout=60_000)
            page.wait_for_load_state("load")
            nav = page.evaluate(
                "() => { const n = performance.getEntriesByType('navigation')[0];"
                " return [n.domContentLoadedEventEnd, n.loadEventEnd]; }"
            )
            figures = {
                "first": first.json_value(),
                "viewport": done.json_value(),
                "dcl": nav[0],
                "load": nav[1],
                "takes": page.locator(".take").count(),
            }
            pid = os.getpid()
            figures["heap"] = js_heap(page)
            figures["pss"], figures["rss"] = chromium_memory(pid)
            # Scroll the whole sheet, a screen at a time, letting lazy images land.
            page.evaluate(
                """async () => {
                  const box = document.querySelector('.sheet-wrap');
                  for (const el of [box, document.scrollingElement]) {
                    while (el.scrollTop + el.clientHeight < el.scrollHeight - 2) {
                      el.scrollTop += el.clientHeight;
                      await new Promise(r => setTimeout(r, 60));
                    }
                  }
                }"""
            )
            page.wait_for_timeout(1500)
            figures["heap_end"] = js_heap(page)
            figures["pss_end"], figures["rss_end"] = chromium_memory(pid)
            figures["posters_end"], figures["players_end"] = page.evaluate(
                "() => [Array.from(document.querySelectorAll('img.poster'))"
                ".filter(i => i.complete && i.naturalWidth > 0).length,"
                " document.querySelectorAll('video[src]').length]"
            )
            return figures
        finally:
            browser.close()


def empty_page_memory() -> float:
    """Chromium's PSS with about:blank open: the floor under every figure above."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto("about:blank")
            page.wait_for_timeout(500)
            return chromium_memory(os.getpid())[0]
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shots", type=int, default=125, help="shots of 4 takes each")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    logs.configure("json", "warning")  # as the CLI does: info events go to the log file only
    with tempfile.TemporaryDirectory(prefix="mvbatch-sheet-") as tmp:
        started = time.perf_counter()
        page, bare, report_seconds = build(Path(tmp), args.shots)
        built = time.perf_counter() - started
        sizes = sorted(p.stat().st_size for p in (page.parent / "posters").glob("*.jpg"))
        page_kb = page.stat().st_size / 1024
        runs: dict[str, list[dict[str, float]]] = {"with posters": [], "without posters": []}
        for n in range(args.rounds):
            # Alternate which page goes first, so the machine's noise falls on both.
            for name in list(runs) if n % 2 == 0 else list(reversed(runs)):
                url = (page if name == "with posters" else bare).resolve().as_uri()
                runs[name].append(measure(url))
                print(f"round {n + 1}, {name}: {runs[name][-1]}", file=sys.stderr)
        floor = empty_page_memory()
    takes = int(runs["with posters"][0]["takes"])
    poster_kb = statistics.median(sizes) / 1024 if sizes else 0.0
    print(
        f"\n{takes} takes, {len(sizes)} posters ({poster_kb:.0f} KB median), page {page_kb:.0f} KB;"
        f" {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
        f" median of {args.rounds} round(s)\n"
    )
    rows = [
        ("first poster (or first frame) shown", "first", "ms"),
        ("first viewport all shown", "viewport", "ms"),
        ("DOMContentLoaded", "dcl", "ms"),
        ("load event", "load", "ms"),
        ("JS heap, first viewport", "heap", "MB"),
        ("Chromium PSS, first viewport", "pss", "MB"),
        ("JS heap, after scrolling to the end", "heap_end", "MB"),
        ("Chromium PSS, after scrolling to the end", "pss_end", "MB"),
        ("Chromium RSS (sum), after scrolling", "rss_end", "MB"),
        ("posters decoded, after scrolling", "posters_end", ""),
        ("videos holding a player (src set), after scrolling", "players_end", ""),
    ]
    print("| figure | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for label, key, unit in rows:
        cells = []
        for results in runs.values():
            value = statistics.median(r[key] for r in results)
            cells.append(f"{value:.0f} {unit}".strip())
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(
        f"\nledger, videos and reports built in {built:.1f} s; write_report with every"
        f" poster made (ffmpeg) {report_seconds:.1f} s;"
        f" Chromium with about:blank: {floor:.0f} MB PSS"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
