"""The Downloader: each output's bytes from the file host, verified, recorded once final.

Owns: the requests and what their answers mean (206 appends after a Range
request, 200 restarts from 0, 401/403/404/410 ask the API for a fresh URL,
408/425/429/5xx and broken transfers are retried until 6 attempts in a row
move no byte forward), the length check against Content-Length, and the
ledger row of each file (path, bytes, sha256), written only after the rename.
Where a file goes is `naming`; how its bytes are written and made final is
`partfile`.

Must not: send credentials to the host that serves the files. The files
client (`Endpoint.files_client`) carries no Authorization header, and this
module refuses a client that does; refreshing an expired URL goes through the
caller's API client, which is pinned to the API host and never follows
redirects. Must not write anything outside the manifest's output folder.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from mvbatch import logs
from mvbatch.downloads import partfile
from mvbatch.downloads.naming import contained, output_relpath, report_folder
from mvbatch.downloads.partfile import PartFile
from mvbatch.ledger import Ledger, Output, TaskRow

DEFAULT_MAX_BYTES = 4 * 1024**3  # far above any generated clip; stops a runaway body
DEFAULT_CONCURRENCY = 8
MAX_FAILURES = 6  # consecutive failed attempts that moved no byte forward
MAX_REFRESHES = 3  # fresh URLs asked of the API for one output
REFRESH_STATUSES = frozenset({401, 403, 404, 410})  # how expired or refused signed URLs answer
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

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


class _Refused(Exception):
    """The file host refused the URL (expired signature, gone): ask the API again."""


class _Broken(Exception):
    """The transfer stopped early or went wrong in a way a new request may fix."""


class _Fatal(Exception):
    """No new request will help (too large, not a URL we may fetch)."""


# --------------------------------------------------------------- downloader


def default_backoff(failures: int) -> float:
    # Exponential with full jitter, capped: a file host under strain gets room.
    return random.uniform(0, min(8.0, 0.25 * 2 ** (failures - 1)))


class Downloader:
    """Downloads the outputs of succeeded tasks into `output_dir/<manifest>/`.

    Use `fetch(rows)` for a batch (the `report` command), or pass
    `on_succeeded` to the executor, which calls it as each task succeeds.
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
        backoff: Callable[[int], float] = default_backoff,
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
        self.backoff = backoff
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
                    row.key, 0, "", "failed", error=f"no output URL: {_describe(error)}"
                )
                log.warning("download.failed", key=row.key, idx=0, error=failed.error)
                self.stats.add(failed)
                self._results.append(failed)
                return [failed]
            outputs = [Output(i, u, None, None, None, None) for i, u in enumerate(urls)]
        results = await asyncio.gather(*(self._fetch_output(row, record) for record in outputs))
        for fetched in results:
            self.stats.add(fetched)
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
        try:
            return await self._download(transfer)
        except OSError as error:
            return self._failed(transfer, f"cannot write {transfer.relpath}: {error.strerror}")

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
            return transfer.result("kept", record.path, record.sha256, record.bytes)
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
            fd = partfile.open_locked(part_path)
            if fd is None:
                log.info("download.busy", key=transfer.key, idx=transfer.idx, path=transfer.relpath)
                busy = "another mvbatch process is downloading this file"
                return transfer.result("busy", transfer.relpath, error=busy)
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
            except BaseException:
                os.close(fd)
                raise
        try:
            if failed is not None:
                return failed
            try:
                return await self._finish(transfer, part, dest, started)
            finally:
                self._finishing.release()
        finally:
            os.close(fd)

    async def _receive(self, transfer: Transfer, part: PartFile) -> Fetched | None:
        """All the bytes into the part file: None when complete, else why not."""
        failures = 0
        while True:
            transfer.attempts += 1
            before = part.have
            try:
                _check_url(transfer.url)
                if part.have:
                    transfer.resumed += 1
                await self._one_request(transfer.url, part)
                return None
            except _Refused as refused:
                if (
                    self.refresh is None
                    or not transfer.row.task_id
                    or transfer.refreshes >= self.max_refreshes
                ):
                    part.discard()
                    tried = f"{transfer.refreshes} fresh URL(s) tried"
                    return self._failed(transfer, f"{refused} (URL expired or refused; {tried})")
                transfer.refreshes += 1
                fresh = await self._fresh_url(transfer)
                if fresh is None:
                    part.discard()
                    return self._failed(transfer, f"{refused}; the API gave no fresh URL")
                transfer.url = fresh
            except (_Broken, httpx.TransportError) as broken:
                # A transfer that moved forward is not counted against us: a
                # flaky host that always makes progress still finishes.
                failures = 0 if part.have > before else failures + 1
                if failures >= self.max_failures:
                    # The part stays: the next run resumes it with a Range request.
                    return self._failed(
                        transfer, f"gave up after {transfer.attempts} attempts: {_describe(broken)}"
                    )
                log.info(
                    "download.retry",
                    key=transfer.key,
                    idx=transfer.idx,
                    have=part.have,
                    error=_describe(broken),
                    host=_host(transfer.url),
                )
                await asyncio.sleep(self.backoff(max(failures, 1)))
            except (_Fatal, httpx.RequestError) as fatal:
                # Too large, not http(s), too many redirects: no retry helps.
                part.discard()
                return self._failed(transfer, _describe(fatal))

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
        return transfer.result("downloaded", transfer.relpath, digest, part.have)

    async def _one_request(self, url: str, part: PartFile) -> None:
        """One GET appending to the part file; returns when the file is complete."""
        headers = {"Accept-Encoding": "identity"}
        asked = part.have
        if asked:
            headers["Range"] = f"bytes={asked}-"
        async with self.client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status in REFRESH_STATUSES:
                raise _Refused(f"HTTP {status} from {_host(url)}")
            if status == 416 and asked:
                if _range_total(response.headers) == asked:
                    return  # the part was already complete when we were cut off
                part.restart()
                raise _Broken("HTTP 416: the part is longer than the file; starting again")
            if status in RETRY_STATUSES or status >= 500:
                raise _Broken(f"HTTP {status} from {_host(url)}")
            if status == 206 and asked:
                start, total = _content_range(response.headers)
                if start != asked:
                    part.restart()
                    raise _Broken(f"206 from offset {start} when {asked} was asked")
            elif status == 200:
                # No Range asked, or the server ignored it: start from byte 0.
                part.restart()
                length = response.headers.get("content-length", "")
                total = int(length) if length.isdigit() else None
            else:
                raise _Fatal(f"unexpected HTTP {status} from {_host(url)}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("identity", ""):
                # We asked for identity. Lengths and ranges count encoded
                # bytes; decoded, neither can be checked, so take the whole
                # body again in one go.
                part.restart()
                total = None
            if total is not None and total > self.max_bytes:
                raise _Fatal(f"the file is {total} bytes, over the {self.max_bytes}-byte cap")
            try:
                async for chunk in response.aiter_bytes():
                    if part.have + len(chunk) > self.max_bytes:
                        raise _Fatal(f"the file is over the {self.max_bytes}-byte cap")
                    if part.add(chunk):
                        await part.write_batch()
            finally:
                # What arrived before a broken connection is good: keep it
                # for the Range request that resumes the transfer.
                await part.flush()
            if total is not None and part.have != total:
                if part.have > total:
                    part.restart()
                    raise _Broken(f"got more bytes than the {total} announced; starting again")
                raise _Broken(f"transfer ended at {part.have} of {total} bytes")

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
                error=_describe(error),
            )
            return None
        log.info("download.refreshed", key=transfer.key, idx=transfer.idx, urls=len(urls))
        return urls[transfer.idx] if transfer.idx < len(urls) else None

    def _failed(self, transfer: Transfer, error: str) -> Fetched:
        log.warning(
            "download.failed",
            key=transfer.key,
            idx=transfer.idx,
            host=_host(transfer.url),
            error=error,
            attempts=transfer.attempts,
            refreshes=transfer.refreshes,
        )
        return transfer.result("failed", error=error)


@dataclass
class Transfer:
    """One output on its way: which task, where to, and how it went so far."""

    row: TaskRow
    idx: int
    url: str
    folder: Path
    attempts: int = 0
    refreshes: int = 0
    resumed: int = 0

    @property
    def key(self) -> str:
        return self.row.key

    @functools.cached_property
    def relpath(self) -> str:
        return output_relpath(self.row, self.idx).as_posix()

    def result(
        self,
        outcome: Outcome,
        path: str | None = None,
        sha256: str | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> Fetched:
        """What happened to this output, with the attempts it took so far."""
        counts = (self.attempts, self.refreshes, self.resumed)
        return Fetched(self.key, self.idx, self.url, outcome, path, sha256, size, error, *counts)


# ------------------------------------------------------------ HTTP helpers


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(headers: httpx.Headers) -> tuple[int, int | None]:
    found = _CONTENT_RANGE.match(headers.get("content-range", ""))
    if found is None:
        raise _Broken("206 without a usable Content-Range")
    total = found.group(3)
    return int(found.group(1)), None if total == "*" else int(total)


def _range_total(headers: httpx.Headers) -> int | None:
    found = re.match(r"bytes\s+\*/(\d+)", headers.get("content-range", ""))
    return int(found.group(1)) if found else None


def _check_url(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise _Fatal(f"not an http(s) URL: {url[:60]!r}")


def _host(url: str) -> str:
    # Signed URLs carry their signature in the query: logs get the host only.
    return urlsplit(url).netloc or "?"


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return logs.redact_text(text)
