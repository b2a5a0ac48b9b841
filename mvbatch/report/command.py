"""Writing the reports of a manifest: fetch what is missing, then write the four files.

Owns: the two ways a report gets written: `finish_run` (the end of `mvbatch
run`: the downloads catch up, the posters made as videos landed are done
(`posters.PostersAsVideosLand`), then the reports) and `report_command` (`mvbatch
report`: verify or fetch the videos through the downloader, each new
video's poster made as it lands, then the reports); writing report.json,
report.csv, report.md and report.html into `MVBATCH_OUTPUT_DIR/<name>/` next
to the videos, each streamed
(`write_reports`), after the missing poster frames (`posters.make_posters`,
never fatal: without ffmpeg the sheet shows each video's first frame);
a full disk (`DiskFull`, exit 4), raised once the reports are written,
whether the videos or the reports filled it; and `ReportResult`, what the
CLI says afterwards.

Must not: print (the CLI does), change a task (it only reads the ledger, and
the downloader records files), choose the manifest's plan or ledger side (the
caller, `commands.reporting.report_manifest`, passes them in), or write the API key
anywhere: nothing here receives it except through `Endpoint`, whose API
client it hands to the downloader for URL refreshes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvbatch import logs
from mvbatch.api.client import ApiClient
from mvbatch.api.endpoint import Endpoint, choose
from mvbatch.downloads import partfile
from mvbatch.downloads.fetch import Downloader, DownloadStats, Fetched
from mvbatch.downloads.naming import report_folder
from mvbatch.ledger import Ledger, TaskRow
from mvbatch.money import usd
from mvbatch.plan.planner import Plan
from mvbatch.report import formats, posters
from mvbatch.report.build import build_report
from mvbatch.report.formats import csv_chunks, json_chunks, markdown_chunks, percent_text
from mvbatch.report.html import contact_sheet_chunks
from mvbatch.report.model import Report
from mvbatch.settings import Settings

FILES = {"json": "report.json", "csv": "report.csv", "md": "report.md", "html": "report.html"}

log = logs.get("mvbatch.report.command")


def write_reports(report: Report, folder: Path) -> dict[str, Path]:
    """The four files, each streamed and replaced atomically; `DiskFull` if space runs out.

    Each file is written as it is produced (`formats.json_chunks` and the
    others): what is held at once does not grow with the tasks. Secrets were
    taken out where they enter the report (`build.py`), not here.
    """
    written: dict[str, Path] = {}
    left = list(FILES)  # still to write
    try:
        folder.mkdir(parents=True, exist_ok=True)
        posters.make_posters(report, folder)
        chunks: dict[str, Callable[[], Iterator[str]]] = {
            "json": lambda: json_chunks(report),
            "csv": lambda: csv_chunks(report),
            "md": lambda: markdown_chunks(report),
            "html": lambda: contact_sheet_chunks(report, folder),
        }
        for kind, produce in chunks.items():
            formats.write_atomic(folder / FILES[kind], produce())
            written[kind] = folder / FILES[kind]
            left.remove(kind)
    except OSError as error:
        names = ", ".join(FILES[kind] for kind in left)
        # Written as they are produced, the files' sizes are not known ahead:
        # the ones they replace say about how much room they need.
        sizes = [
            (folder / FILES[kind]).stat().st_size
            for kind in left
            if (folder / FILES[kind]).is_file()
        ]
        full = partfile.disk_full(
            error, folder, f"the reports ({names})", sum(sizes) or None, about=True
        )
        if full is None:
            raise
        raise full from None
    return written


@dataclass(frozen=True)
class ReportResult:
    """What the CLI shows after a report: where the files are and how it went."""

    report: Report
    folder: Path
    files: dict[str, Path]
    downloads: DownloadStats | None = None
    fetched: list[Fetched] = field(default_factory=list)
    # Videos the ledger records as downloaded that the report did not find as
    # recorded (deleted, moved or changed since): missing even with --no-download.
    lost: int = 0

    @property
    def complete(self) -> bool:
        return self.report.complete

    def summary(self) -> list[str]:
        """A few lines for a person: counts, money, downloads, where the sheet is."""
        r = self.report
        counts = r.counts
        failures = r.failures_by_charge
        failed = ", ".join(f"{g['tasks']} {g['text']}" for g in failures) or "0 failed"
        lines = [
            f"{r.manifest}{' (simulated: no money was spent)' if r.simulated else ''}: "
            f"{len(r.tasks)} tasks, {counts.get('succeeded', 0)} succeeded, {failed}, "
            f"{counts.get('pending', 0)} pending",
            f"cost: {usd(r.cost_actual)} charged (the server's cost_actual), "
            f"{usd(r.cost_estimate)} estimated (the server's estimate for submitted tasks, "
            "the plan's for the rest)"
            + (
                f"; the plan alone estimated {usd(r.cost_estimate_plan)}"
                if r.cost_estimate_plan != r.cost_estimate
                else ""
            ),
        ]
        variance = r.variance
        if variance.tasks and variance.difference != 0:
            lines.append(
                f"variance: {usd(variance.difference)} ({percent_text(variance.percent)})"
                f" on {len(variance.off)} of {variance.tasks} finished tasks (charged against "
                "the plan's estimate)"
            )
        if r.overrun_text:
            lines.append(f"cost overrun: {r.overrun_text}")
        downloads = r.download_totals
        lines.append(
            f"videos: {downloads['downloaded']} of {downloads['outputs']} on disk"
            + (f", {downloads['missing']} missing" if downloads["missing"] else "")
        )
        if self.downloads is not None and self.downloads.failed:
            first = self.downloads.errors[0]
            lines.append(f"downloads failed: {self.downloads.failed} (first: {first.error})")
        elif downloads["missing"]:
            gone = [o.download_error for t in r.tasks for o in t.outputs if o.download_error]
            if gone:
                lines.append(f"not on disk: {len(gone)} (first: {gone[0]})")
        lines.append(f"contact sheet: {self.files['html']}")
        return lines


def report_folder_of(settings: Settings, name: str) -> Path:
    return report_folder(settings.output_dir, name)


def write_report(
    settings: Settings,
    ledger: Ledger,
    name: str,
    env: str,
    *,
    plan: Plan | None = None,
    fetched: Sequence[Fetched] = (),
    downloads: DownloadStats | None = None,
    rows: Iterable[TaskRow] | None = None,
) -> ReportResult:
    """Read the ledger and write the four report files; no network.

    `rows`: the manifest's tasks, when the caller has them; else they are read
    from the ledger one at a time as the report is built (at 100,000 tasks,
    holding every row at once is a hundred megabytes).
    """
    folder = report_folder_of(settings, name)
    outputs = ledger.manifest_outputs(env, name)
    recorded = {(key, o.idx) for key, found in outputs.items() for o in found if o.path}
    report = build_report(
        name,
        env,
        ledger.each_task(env, name) if rows is None else rows,
        outputs,
        folder,
        plan=plan,
        fetched=fetched,
        downloads=downloads,
        verdicts=ledger.verdicts(env, name),
    )
    files = write_reports(report, folder)
    on_disk = {(t.key, o.idx) for t in report.tasks for o in t.outputs if o.path}
    lost = len(recorded - on_disk)
    log.info(
        "report.written",
        manifest=name,
        env=env,
        folder=str(folder),
        tasks=len(report.tasks),
        complete=report.complete,
        lost=lost,
    )
    return ReportResult(report, folder, files, downloads, list(fetched), lost)


async def finish_run(
    downloader: Downloader | None,
    settings: Settings,
    ledger: Ledger,
    plan: Plan,
    env: str,
    *,
    posters_made: posters.PostersAsVideosLand | None = None,
) -> ReportResult:
    """The end of `mvbatch run`: catch up on downloads, then write the reports.

    `downloader` is the one whose `on_succeeded` the executor called (None
    with `--no-download`); the executor has awaited those calls before it
    returns. Catching up verifies every succeeded task of the manifest and
    fetches what is still missing (a verified file costs one `stat`). An
    output this run already tried is not tried again: the report says why it
    failed, and the next run or `mvbatch report` resumes it.
    """
    fetched: list[Fetched] = []
    stats = None
    if downloader is not None:
        fetched = downloader.results
        tried = {f.key for f in fetched if f.outcome != "busy"}
        rows = [r for r in ledger.tasks(env, plan.name) if r.key not in tried]
        fetched += await downloader.fetch(rows)
        stats = downloader.stats
    if posters_made is not None:  # the rest are the report's to make, a few at a time
        await asyncio.to_thread(posters_made.close)
    result = write_report(
        settings, ledger, plan.name, env, plan=plan, fetched=fetched, downloads=stats
    )
    if downloader is not None and downloader.disk_full is not None:
        raise downloader.disk_full  # the reports say which videos are missing
    return result


def report_command(
    settings: Settings,
    ledger: Ledger,
    plan: Plan,
    env: str,
    *,
    download: bool,
) -> ReportResult:
    """`mvbatch report MANIFEST [--no-download]`: verify or fetch the videos, write the reports.

    The caller chose `env` (the side of the manifest's last run) and built
    `plan` with that side's learned rates (`commands.reporting.report_manifest`).
    """
    if not download:
        return write_report(settings, ledger, plan.name, env, plan=plan)
    rows = [r for r in ledger.tasks(env, plan.name) if r.status == "succeeded"]
    posters_made = posters.PostersAsVideosLand()  # each as its video lands, as `run` does
    try:
        fetched, downloader = asyncio.run(_download(settings, ledger, env, rows, posters_made))
        posters_made.close()
    finally:
        posters_made.close(finish=False)  # interrupted: the queued ones wait for the next report
    result = write_report(
        settings, ledger, plan.name, env, plan=plan, fetched=fetched, downloads=downloader.stats
    )
    if downloader.disk_full is not None:
        raise downloader.disk_full  # the reports say which videos are missing
    return result


async def _download(
    settings: Settings,
    ledger: Ledger,
    env: str,
    rows: list[TaskRow],
    posters_made: posters.PostersAsVideosLand,
) -> tuple[list[Fetched], Downloader]:
    if env == "sim":
        endpoint = choose(settings, simulate=True)
    elif settings.api_key_value() is not None:
        endpoint = choose(settings, simulate=False)
    else:
        # Downloads need no key; only refreshing an expired URL does.
        log.warning(
            "download.no_refresh",
            reason="MINDVIDEO_API_KEY is unset: an expired "
            "output URL cannot be refreshed from the API",
        )
        endpoint = Endpoint("live", settings.base_url, "", None)
    refresh = None
    api = None
    if endpoint.api_key:
        api = ApiClient(endpoint.api_client())
        refresh = api.refresh_outputs
    try:
        async with endpoint.files_client() as files:
            downloader = Downloader(
                ledger, files, settings.output_dir, refresh=refresh, on_saved=posters_made.saved
            )
            return await downloader.fetch(rows), downloader
    finally:
        if api is not None:
            await api.aclose()
