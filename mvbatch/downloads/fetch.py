"""The Downloader: each output's bytes from the file host, verified, recorded once final.

Owns: the requests and what their answers mean (206 appends after a Range
request, 200 restarts from 0, 401/403/404/410 and anything that is not a
video ask the API for a fresh URL, 408/425/429/5xx, broken and too slow
transfers are retried under `DOWNLOAD_RETRIES` until 6 attempts in a row move
no byte forward), the length check against Content-Length, what a full disk
means (the part is given back, no other file is started, `disk_full` says
where), and the ledger row of each file (path, bytes, sha256), written only
after the rename. Where a file goes is `naming`; how slow a transfer may be,
`pace`; what counts as a video, `verify`; how the bytes are written and made
final, `partfile`.

Must not: send credentials to the host that serves the files. The files
client (`Endpoint.files_client`) carries no Authorization header, and this
module refuses a client that does; refreshing an expired URL goes through the
caller's API client, which is pinned to the API host and never follows
redirects. Must not write anything outside the manifest's output folder.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from mvbatch import logs
from mvbatch.api.retry import Backoff, RetryPolicy
from mvbatch.downloads import partfile, request
from mvbatch.downloads.naming import contained, report_folder
from mvbatch.downloads.pace import Bounds
from mvbatch.downloads.partfile import PartFile
from mvbatch.downloads.request import (
    Broken,
    Fatal,
    Refused,
    Slow,
    Transfer,
    describe,
    host_of,
)
from mvbatch.errors import DiskFull
from mvbatch.ledger import Ledger, Output, TaskRow

DEFAULT_MAX_BYTES = 4 * 1024**3  # far above any generated clip; stops a runaway body
DEFAULT_CONCURRENCY = 8
MAX_FAILURES = 6  # consecutive failed attempts that moved no byte forward
MAX_REFRESHES = 3  # fresh URLs asked of the API for one output
# The one retry policy (`mvbatch.api.retry`), with the downloads' own limits:
# no cap on attempts and no retry budget, for `worth_another` (`_receive`)
# stops an output after `max_failures` attempts in a row that moved no byte
# forward, and `pace` bounds its time. Waits: full jitter, at most 8 s.
DOWNLOAD_RETRIES = RetryPolicy(attempts=None, backoff=Backoff(base=0.25, cap=8.0), budget=None)

# task_id -> the task's output URLs, fetched again from the API (the client's
# `refresh_outputs`). Takes the task id, not the URL: the API knows the task.
RefreshOutputs = Callable[[str], Awaitable[list[str]]]
Outcome = Literal["downloaded", "kept", "failed", "busy"]

log = logs.get("mvbatch.downloads.fetch")


# ------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Fetched:
    """What happened to one output."""

    key: str
    idx: int
    url: str
    outcome: Outcome
    path: str | None = None  # relative to the report folder, POSIX separators
    sha256: str | None = None
    bytes: int | None = None
    error: str | None = None
    attempts: int = 0
    refreshes: int = 0
    resumed: int = 0  # Range requests that continued a broken transfer

    @property
    def ok(self) -> bool:
        return self.outcome in ("downloaded", "kept")


@dataclass
class DownloadStats:
    downloaded: int = 0
    kept: int = 0
    failed: int = 0
    busy: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[Fetched] = field(default_factory=list)

    def add(self, fetched: Fetched) -> None:
        if fetched.outcome == "downloaded":
            self.downloaded += 1
            self.bytes += fetched.bytes or 0
        elif fetched.outcome == "kept":
            self.kept += 1
        elif fetched.outcome == "busy":
            self.busy += 1
        else:
            self.failed += 1
            self.errors.append(fetched)


# --------------------------------------------------------------- downloader


class Downloader:
    """Downloads the outputs of succeeded tasks into `output_dir/<manifest>/`.

    Use `fetch(rows)` for a batch (the `report` command), or pass
    `on_succeeded` to the executor, which calls it as each task succeeds.
    `bounds` says how slow a transfer may be (`pace.Bounds`: the documented
    minimum rate and deadline unless given others). After a write refused
    for want of space, `disk_full` holds the error and no new file starts.
    """

    def __init__(
        self,
        ledger: Ledger,
        client: httpx.AsyncClient,
        output_dir: Path,
        *,
        refresh: RefreshOutputs | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_failures: int = MAX_FAILURES,
        max_refreshes: int = MAX_REFRESHES,
        bounds: Bounds = Bounds(),  # noqa: B008 - frozen: one value shared is fine
        on_saved: Callable[[Path, str, str], None] | None = None,
    ) -> None:
        if "authorization" in client.headers:
            # Output files live on other hosts (CDNs, buckets): a client that
            # would send our key there is a bug, refused before any request.
            raise ValueError("the files client must not carry an Authorization header")
        self.ledger = ledger
        self.client = client
        self.output_dir = output_dir
        self.refresh = refresh
        self.max_bytes = max_bytes
        self.max_failures = max_failures
        self.max_refreshes = max_refreshes
        self.bounds = bounds
        # Told of each new video once it is on disk and verified: (report
        # folder, its path there, its SHA-256); the run makes its poster.
        self.on_saved = on_saved
        # The first write refused for want of space: no new file is started
        # after it, and the caller raises it once the reports are written.
        self.disk_full: DiskFull | None = None
        self.stats = DownloadStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._finishing = asyncio.Semaphore(concurrency)  # fsync, rename, ledger row
        self._writes = partfile.Writes()  # shared: one slow write moves them all off the loop
        self._results: list[Fetched] = []

    # -- entry points

    async def on_succeeded(self, row: TaskRow) -> None:
        """The executor's hook (`Executor(on_succeeded=...)`): fetch this task's outputs now.

        The executor runs each call as its own asyncio task, so downloads
        overlap with polling; the semaphore bounds them. What happened is
        kept in `results` for the report.
        """
        await self.fetch_task(row)

    @property
    def results(self) -> list[Fetched]:
        """Every output handled so far, in the order they finished."""
        return list(self._results)

    async def fetch(self, rows: Iterable[TaskRow]) -> list[Fetched]:
        """Download (or verify) the outputs of every succeeded task in `rows`."""
        started = time.monotonic()
        batches = await asyncio.gather(
            *(self.fetch_task(r) for r in rows if r.status == "succeeded")
        )
        self.stats.seconds += time.monotonic() - started
        return [f for batch in batches for f in batch]

    async def fetch_task(self, row: TaskRow) -> list[Fetched]:
        outputs = self.ledger.outputs(row.env, row.key)
        if not outputs and row.task_id and self.refresh is not None:
            # The executor did not record the URLs (or a crash lost them): ask.
            try:
                urls = await self._ask_api(row)
            except Exception as error:
                # The API is down or refuses us: this task's videos wait for
                # the next run or `mvbatch report`; the other tasks go on.
                failed = Fetched(
                    row.key, 0, "", "failed", error=f"no output URL: {describe(error)}"
                )
                log.warning("download.failed", key=row.key, idx=0, error=failed.error)
                self.stats.add(failed)
                self._results.append(failed)
                return [failed]
            outputs = [Output(i, u, None, None, None, None) for i, u in enumerate(urls)]
        results = await asyncio.gather(*(self._fetch_output(row, record) for record in outputs))
        for fetched in results:
            self.stats.add(fetched)
            if self.on_saved and fetched.outcome == "downloaded" and fetched.path:
                folder = report_folder(self.output_dir, row.manifest)
                self.on_saved(folder, fetched.path, fetched.sha256 or "")
        self._results.extend(results)
        return list(results)

    # -- one output

    async def _fetch_output(self, row: TaskRow, record: Output) -> Fetched:
        transfer = Transfer(
            row, record.idx, record.url, report_folder(self.output_dir, row.manifest)
        )
        kept = await self._verify_recorded(transfer, record)
        if kept is not None:
            return kept
        if self.disk_full is not None:
            return self._stopped(transfer)
        try:
            return await self._download(transfer)
        except OSError as error:
            full = partfile.disk_full(error, transfer.folder, transfer.relpath, transfer.size)
            if full is None:
                return self._failed(transfer, f"cannot write {transfer.relpath}: {error.strerror}")
            self.disk_full = self.disk_full or full
            return self._failed(transfer, full.message)

    async def _verify_recorded(self, transfer: Transfer, record: Output) -> Fetched | None:
        """A recorded download that is still intact, or None to fetch it again."""
        if not record.path or not record.sha256 or record.bytes is None:
            return None
        path = contained(transfer.folder, record.path)
        if path is None:
            return None
        found = await partfile.check_recorded(
            path, record.bytes, record.sha256, record.file_stat, record.verified_at
        )
        if found.intact:
            if found.rehashed_stat is not None:
                self.ledger.record_verified(
                    transfer.row.env, transfer.key, transfer.idx, found.rehashed_stat
                )
            return _result(transfer, "kept", (record.path, record.sha256, record.bytes))
        if found.size is not None:
            log.warning(
                "download.changed_on_disk",
                key=transfer.key,
                idx=transfer.idx,
                path=record.path,
                bytes=found.size,
                expected_bytes=record.bytes,
            )
        return None

    async def _download(self, transfer: Transfer) -> Fetched:
        dest = contained(transfer.folder, transfer.relpath)
        if dest is None:  # cannot happen with our naming: a guard, not a branch
            return self._failed(transfer, "refused: the output path leaves the folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if contained(transfer.folder, transfer.relpath) is None:
            # A folder on the way was swapped for a symlink since we checked.
            return self._failed(transfer, "refused: the output path leaves the folder")
        part_path = partfile.part_path(dest)
        # The slot bounds transfers, not bookkeeping: it is taken before the
        # part file is opened and given back before fsync and rename, so the
        # next transfer starts while this one is made durable. Files being
        # made durable are bounded too (`_finishing`, taken before the slot
        # is given back): a disk slower than the network holds transfers
        # back instead of piling up open parts and dirty pages.
        async with self._slots:
            if self.disk_full is not None:  # filled while this one waited for its slot
                return self._stopped(transfer)
            fd = partfile.open_locked(part_path)
            if fd is None:
                log.info("download.busy", key=transfer.key, idx=transfer.idx, path=transfer.relpath)
                busy = "another mvbatch process is downloading this file"
                return _result(transfer, "busy", (transfer.relpath, None, None), error=busy)
            part: PartFile | None = None
            try:
                # Check, lock, check again: another process may have finished
                # it while we waited for the lock.
                outputs = self.ledger.outputs(transfer.row.env, transfer.key)
                again = next((o for o in outputs if o.idx == transfer.idx), None)
                if again is not None and again.path == transfer.relpath:
                    kept = await self._verify_recorded(transfer, again)
                    if kept is not None:
                        part_path.unlink(missing_ok=True)
                        os.close(fd)
                        return kept
                part = PartFile(fd, part_path, self._writes)
                started = time.monotonic()
                failed = await self._receive(transfer, part)
                if failed is None:
                    await self._finishing.acquire()
            except BaseException as error:
                _give_back_if_full(error, part)
                os.close(fd)
                raise
        try:
            if failed is not None:
                return failed
            try:
                return await self._finish(transfer, part, dest, started)
            except BaseException as error:
                _give_back_if_full(error, part)  # fsync may be where the space runs out
                raise
            finally:
                self._finishing.release()
        finally:
            os.close(fd)

    async def _receive(self, transfer: Transfer, part: PartFile) -> Fetched | None:
        """All the bytes into the part file: None when complete, else why not.

        One pass of `DOWNLOAD_RETRIES` per URL; a refused URL (expired, or
        not a video) asks the API for a fresh one and starts the next pass.
        """
        transfer.started = asyncio.get_running_loop().time()
        failures = 0  # attempts in a row that moved no byte forward
        before = part.have

        def worth_another(error: Exception) -> bool | float:
            nonlocal failures
            if not isinstance(error, (Broken, httpx.TransportError)):
                return False  # refused, fatal, or a write error: no retry helps
            if isinstance(error, Slow) and error.late:
                return False
            # A transfer that moved forward is not counted against us: a flaky
            # host that keeps making progress still finishes. A too slow one is.
            moved = part.have > before and not isinstance(error, Slow)
            failures = 0 if moved else failures + 1
            if failures >= self.max_failures:
                return False
            return DOWNLOAD_RETRIES.backoff.wait(max(failures, 1))

        def before_retry(error: Exception, attempt: int, wait: float) -> None:
            log.info(
                "download.retry",
                key=transfer.key,
                idx=transfer.idx,
                attempt=attempt,
                wait=round(wait, 3),
                have=part.have,
                error=describe(error),
                host=host_of(transfer.url),
            )

        while True:  # one pass per URL
            try:
                async for attempt in DOWNLOAD_RETRIES.retrying(worth_another, before_retry):
                    with attempt:
                        transfer.attempts += 1
                        before = part.have
                        if part.have:
                            transfer.resumed += 1
                        await request.get(self.client, transfer, part, self.bounds, self.max_bytes)
                return None
            except Refused as refused:
                if (
                    self.refresh is None
                    or not transfer.row.task_id
                    or transfer.refreshes >= self.max_refreshes
                ):
                    part.discard()
                    tried = f"{transfer.refreshes} fresh URL(s) tried"
                    return self._failed(transfer, f"{refused} ({refused.words}{tried})")
                transfer.refreshes += 1
                fresh = await self._fresh_url(transfer)
                if fresh is None:
                    part.discard()
                    return self._failed(transfer, f"{refused}; the API gave no fresh URL")
                transfer.url = fresh
            except (Broken, httpx.TransportError) as broken:
                # The part stays: the next run resumes it with a Range request.
                why = describe(broken)
                if isinstance(broken, Slow) and broken.late and transfer.slow:
                    why = f"{transfer.slow}; {why}"  # what held it up, then the deadline
                tries = f"{transfer.attempts} attempt{'s' if transfer.attempts != 1 else ''}"
                return self._failed(transfer, f"gave up after {tries}: {why}")
            except (Fatal, httpx.RequestError) as fatal:
                # Too large, not http(s), too many redirects: no retry helps.
                part.discard()
                return self._failed(transfer, describe(fatal))

    async def _finish(
        self, transfer: Transfer, part: PartFile, dest: Path, started: float
    ) -> Fetched:
        digest = part.hasher.hexdigest()
        where = (transfer.row.env, transfer.key, transfer.idx, transfer.relpath)
        # Durable before visible: the bytes reach the disk, then the name
        # appears, then the directory entry is made durable, then the ledger.
        await part.make_final(
            dest, lambda final: self.ledger.record_download(*where, digest, part.have, final)
        )
        log.info(
            "download.done",
            key=transfer.key,
            idx=transfer.idx,
            path=transfer.relpath,
            bytes=part.have,
            sha256=digest,
            attempts=transfer.attempts,
            refreshes=transfer.refreshes,
            resumed=transfer.resumed,
            seconds=round(time.monotonic() - started, 3),
        )
        return _result(transfer, "downloaded", (transfer.relpath, digest, part.have))

    # -- the API side

    async def _ask_api(self, row: TaskRow) -> list[str]:
        if self.refresh is None or row.task_id is None:
            return []
        urls = await self.refresh(row.task_id)
        for i, fresh in enumerate(urls):
            self.ledger.record_output_url(row.env, row.key, i, fresh)
        return urls

    async def _fresh_url(self, transfer: Transfer) -> str | None:
        try:
            urls = await self._ask_api(transfer.row)
        except Exception as error:
            # Whatever went wrong with the API, it ends this output only; the
            # executor's client already retried what deserved a retry.
            log.warning(
                "download.refresh_failed",
                key=transfer.key,
                idx=transfer.idx,
                error=describe(error),
            )
            return None
        log.info("download.refreshed", key=transfer.key, idx=transfer.idx, urls=len(urls))
        return urls[transfer.idx] if transfer.idx < len(urls) else None

    def _stopped(self, transfer: Transfer) -> Fetched:
        """Not started: the disk is full (one warning said so, not one per video)."""
        assert self.disk_full is not None
        why = f"not downloaded: the disk is full ({self.disk_full.folder})"
        log.info("download.skipped", key=transfer.key, idx=transfer.idx, error=why)
        return _result(transfer, "failed", error=why)

    def _failed(self, transfer: Transfer, error: str) -> Fetched:
        log.warning(
            "download.failed",
            key=transfer.key,
            idx=transfer.idx,
            host=host_of(transfer.url),
            error=error,
            attempts=transfer.attempts,
            refreshes=transfer.refreshes,
        )
        return _result(transfer, "failed", error=error)


def _give_back_if_full(error: BaseException, part: PartFile | None) -> None:
    """A write refused for want of space: delete the part, so that the disk is not kept full."""
    if part is not None and isinstance(error, OSError) and error.errno in partfile.DISK_FULL_ERRNOS:
        part.give_back()


def _result(
    transfer: Transfer,
    outcome: Outcome,
    file: tuple[str | None, str | None, int | None] = (None, None, None),
    error: str | None = None,
) -> Fetched:
    """What happened to this output (`file`: its path, sha256 and bytes), with its attempts."""
    counts = (transfer.attempts, transfer.refreshes, transfer.resumed)
    return Fetched(transfer.key, transfer.idx, transfer.url, outcome, *file, error, *counts)
