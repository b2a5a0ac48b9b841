"""Verified, resumable downloads of output videos, as soon as each task succeeds.

Owns: where each output lands (`output_relpath`: our own naming from shot,
variant, take and a short key, never the server's path), and getting the
bytes there safely:

    GET url ──► .name.mp4.part (in the destination folder, locked) ──► fsync ──► rename
       │  206: append after a Range request      200: restart cleanly from 0
       │  broken transfer: resume with Range      401/403/404/410: refresh the URL
       └─ SHA-256 computed while streaming, length checked against Content-Length

A file is final only after the rename, and recorded in the ledger (path,
bytes, sha256) only after that. Re-running never downloads a verified file
again; a file whose size or modification time changed since it was recorded
is hashed again, and fetched again if it no longer matches.

Must not: send credentials to the host that serves the files. The files
client (`Endpoint.files_client`) carries no Authorization header, and this
module refuses a client that does; refreshing an expired URL goes through the
caller's API client, which is pinned to the API host and never follows
redirects. Must not write anything outside the manifest's output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import random
import re
import stat
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from mvbatch import logs
from mvbatch.downloads import tuning
from mvbatch.ledger.store import Ledger, Output, TaskRow
from mvbatch.plan.manifest import NAME_PATTERN

VIDEOS = "videos"
DEFAULT_MAX_BYTES = 4 * 1024**3  # far above any generated clip; stops a runaway body
DEFAULT_CONCURRENCY = 8
MAX_FAILURES = 6  # consecutive failed attempts that moved no byte forward
MAX_REFRESHES = 3  # fresh URLs asked of the API for one output
REFRESH_STATUSES = frozenset({401, 403, 404, 410})  # how expired or refused signed URLs answer
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_HASH_BLOCK = 1 << 20
_WRITE_BYTES = 256 << 10  # per write system call (see `_write_all`), and per batch in the loop
_IOV_MAX = 512  # buffers per writev: POSIX guarantees 16, Linux and macOS allow 1024
_THREAD_BATCH_BYTES = 4 << 20  # per batch handed to a worker thread, once writes are slow
_SLOW_WRITE_SECONDS = 0.05  # an event-loop write slower than this: write in threads from then on
_COMPONENT_BYTES = 80  # per path component: well under every filesystem's 255
_WINDOWS_RESERVED = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{n}" for n in range(1, 10)),
        *(f"LPT{n}" for n in range(1, 10)),
    }
)

# task_id -> the task's output URLs, fetched again from the API (the client's
# `refresh_outputs`). Takes the task id, not the URL: the API knows the task.
RefreshOutputs = Callable[[str], Awaitable[list[str]]]
Outcome = Literal["downloaded", "kept", "failed", "busy"]

log = logs.get("mvbatch.downloads.fetch")


# ------------------------------------------------------------------- naming


def safe_component(text: str, fallback: str) -> str:
    """One path component a person can read, that cannot climb out of its folder.

    Letters and digits of any script stay (people recognise their shot ids);
    everything else, including separators, dots and control characters,
    becomes '-'. Never empty, never '.', '..' or a reserved device name.
    """
    text = unicodedata.normalize("NFC", text)
    kept = "".join(c if c.isalnum() or c in "-_=+" else "-" for c in text)
    kept = re.sub(r"-{2,}", "-", kept).strip("-_")
    encoded = kept.encode("utf-8")[:_COMPONENT_BYTES]
    kept = encoded.decode("utf-8", errors="ignore").strip("-_")
    if not kept:
        return fallback
    if kept.split(".")[0].upper() in _WINDOWS_RESERVED:
        kept = "_" + kept
    return kept


def variant_pairs(variant: Any) -> list[tuple[str, Any]]:
    """The matrix combination as ordered (name, value) pairs, whichever way it was stored."""
    if isinstance(variant, Mapping):
        return [(str(k), v) for k, v in variant.items()]
    if isinstance(variant, (list, tuple)):
        return [
            (str(pair[0]), pair[1])
            for pair in variant
            if isinstance(pair, (list, tuple)) and len(pair) == 2
        ]
    return []


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_key(key: str) -> str:
    return safe_component(key.rsplit("-", 1)[-1][:8], "task")


def output_relpath(row: TaskRow, idx: int) -> PurePosixPath:
    """Where output `idx` of a task lives, relative to the manifest's report folder.

    `videos/<shot>/<variant>_take<N>_<key8>[_<idx+1>].mp4`: sortable, readable,
    unique (the short key), and derived from our data only.
    """
    pairs = variant_pairs(row.variant)
    variant = "_".join(f"{k}-{value_text(v)}" for k, v in pairs)
    name = (
        f"{safe_component(variant, 'default')}_take{int(row.take)}_{short_key(row.key)}"
        f"{f'_{idx + 1}' if idx else ''}.mp4"
    )
    return PurePosixPath(VIDEOS, safe_component(row.shot, "shot"), name)


def report_folder(output_dir: Path, manifest: str) -> Path:
    """`MVBATCH_OUTPUT_DIR/<name>/`: the reports and the videos of one manifest.

    A valid manifest name is already a safe folder name and is kept exactly
    (SPEC §6 fixes the location); anything else is made safe.
    """
    if re.fullmatch(NAME_PATTERN, manifest):
        return output_dir / manifest
    return output_dir / safe_component(manifest, "manifest")


def contained(folder: Path, relpath: str | PurePosixPath) -> Path | None:
    """`folder/relpath` if it resolves inside `folder` (symlinks included), else None."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    root = folder.resolve()
    target = root.joinpath(*rel.parts)
    # The parent may not exist yet: resolve what exists, which is where a
    # symlink planted by someone else would be.
    if not target.parent.resolve().is_relative_to(root):
        return None
    return target


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
        self._writes = _Writes()
        self._results: list[Fetched] = []
        tuning.for_downloads()

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
        job = _Job(row, record.idx, record.url, report_folder(self.output_dir, row.manifest))
        if record.path and record.sha256 and record.bytes is not None:
            kept = await self._verify_recorded(job, record)
            if kept is not None:
                return kept
        try:
            return await self._transfer(job)
        except OSError as error:
            return self._failed(job, f"cannot write {job.relpath}: {error.strerror}")

    async def _verify_recorded(self, job: _Job, record: Output) -> Fetched | None:
        """A recorded download that is still intact, or None to fetch it again."""
        if not record.path or not record.sha256 or record.bytes is None:
            return None
        path = contained(job.folder, record.path)
        if path is None:
            return None
        try:
            info = path.stat(follow_symlinks=False)
        except OSError:
            return None  # deleted or moved: fetch it again
        if not stat.S_ISREG(info.st_mode):
            return None
        size, sha = record.bytes, record.sha256
        kept = Fetched(job.key, job.idx, job.url, "kept", record.path, sha, size)
        if _unchanged_since_hashed(info, record):
            return kept
        # Changed on disk, or too recently hashed to tell: trust the bytes.
        actual = await asyncio.to_thread(sha256_file, path)
        if info.st_size == size and actual == sha:
            self.ledger.record_verified(job.row.env, job.key, job.idx, file_stat(info))
            return kept
        log.warning(
            "download.changed_on_disk",
            key=job.key,
            idx=job.idx,
            path=record.path,
            bytes=info.st_size,
            expected_bytes=size,
        )
        return None

    async def _transfer(self, job: _Job) -> Fetched:
        dest = contained(job.folder, job.relpath)
        if dest is None:  # cannot happen with our naming: a guard, not a branch
            return self._failed(job, "refused: the output path leaves the folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if contained(job.folder, job.relpath) is None:
            # A folder on the way was swapped for a symlink since we checked.
            return self._failed(job, "refused: the output path leaves the folder")
        part_path = dest.with_name(f".{dest.name}.part")
        # The slot bounds transfers, not bookkeeping: it is taken before the
        # part file is opened and given back before fsync and rename, so the
        # next transfer starts while this one is made durable. Files being
        # made durable are bounded too (`_finishing`, taken before the slot
        # is given back): a disk slower than the network holds transfers
        # back instead of piling up open parts and dirty pages.
        async with self._slots:
            fd = _open_locked(part_path)
            if fd is None:
                log.info("download.busy", key=job.key, idx=job.idx, path=job.relpath)
                return Fetched(
                    job.key,
                    job.idx,
                    job.url,
                    "busy",
                    job.relpath,
                    error="another mvbatch process is downloading this file",
                )
            try:
                # Check, lock, check again: another process may have finished
                # it while we waited for the lock.
                again = next(
                    (o for o in self.ledger.outputs(job.row.env, job.key) if o.idx == job.idx), None
                )
                if again is not None and again.path == job.relpath:
                    kept = await self._verify_recorded(job, again)
                    if kept is not None:
                        part_path.unlink(missing_ok=True)
                        os.close(fd)
                        return kept
                part = _Part(fd, part_path, self._writes)
                started = time.monotonic()
                failed = await self._receive(job, part)
                if failed is None:
                    await self._finishing.acquire()
            except BaseException:
                os.close(fd)
                raise
        try:
            if failed is not None:
                return failed
            try:
                return await self._finish(job, part, dest, started)
            finally:
                self._finishing.release()
        finally:
            os.close(fd)

    async def _receive(self, job: _Job, part: _Part) -> Fetched | None:
        """All the bytes into the part file: None when complete, else why not."""
        failures = 0
        while True:
            job.attempts += 1
            before = part.have
            try:
                _check_url(job.url)
                if part.have:
                    job.resumed += 1
                await self._one_request(job.url, part)
                return None
            except _Refused as refused:
                if (
                    self.refresh is None
                    or not job.row.task_id
                    or job.refreshes >= self.max_refreshes
                ):
                    part.discard()
                    return self._failed(
                        job,
                        f"{refused} (URL expired or refused; {job.refreshes} fresh URL(s) tried)",
                    )
                job.refreshes += 1
                fresh = await self._fresh_url(job)
                if fresh is None:
                    part.discard()
                    return self._failed(job, f"{refused}; the API gave no fresh URL")
                job.url = fresh
            except (_Broken, httpx.TransportError) as broken:
                # A transfer that moved forward is not counted against us: a
                # flaky host that always makes progress still finishes.
                failures = 0 if part.have > before else failures + 1
                if failures >= self.max_failures:
                    # The part stays: the next run resumes it with a Range request.
                    return self._failed(
                        job, f"gave up after {job.attempts} attempts: {_describe(broken)}"
                    )
                log.info(
                    "download.retry",
                    key=job.key,
                    idx=job.idx,
                    have=part.have,
                    error=_describe(broken),
                    host=_host(job.url),
                )
                await asyncio.sleep(self.backoff(max(failures, 1)))
            except (_Fatal, httpx.RequestError) as fatal:
                # Too large, not http(s), too many redirects: no retry helps.
                part.discard()
                return self._failed(job, _describe(fatal))

    async def _finish(self, job: _Job, part: _Part, dest: Path, started: float) -> Fetched:
        digest = part.hasher.hexdigest()
        # Durable before visible: the bytes reach the disk, then the name
        # appears, then the directory entry is made durable (one trip to a
        # worker thread for the three), then the ledger.
        final = asyncio.get_running_loop().run_in_executor(
            None, _make_final, part.fd, part.path, dest
        )
        try:
            final_stat = await _settled(final)
        except asyncio.CancelledError:
            # Cancelled while the thread ran (it is always let finish): if the
            # file is in place, the ledger says so before the cancel goes on,
            # or the next run would fetch it again from its first byte.
            if not final.cancelled() and final.exception() is None:
                self.ledger.record_download(
                    job.row.env, job.key, job.idx, job.relpath, digest, part.have, final.result()
                )
            raise
        self.ledger.record_download(
            job.row.env, job.key, job.idx, job.relpath, digest, part.have, final_stat
        )
        log.info(
            "download.done",
            key=job.key,
            idx=job.idx,
            path=job.relpath,
            bytes=part.have,
            sha256=digest,
            attempts=job.attempts,
            refreshes=job.refreshes,
            resumed=job.resumed,
            seconds=round(time.monotonic() - started, 3),
        )
        return Fetched(
            job.key,
            job.idx,
            job.url,
            "downloaded",
            job.relpath,
            digest,
            part.have,
            None,
            job.attempts,
            job.refreshes,
            job.resumed,
        )

    async def _one_request(self, url: str, part: _Part) -> None:
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

    async def _fresh_url(self, job: _Job) -> str | None:
        try:
            urls = await self._ask_api(job.row)
        except Exception as error:
            # Whatever went wrong with the API, it ends this output only; the
            # executor's client already retried what deserved a retry.
            log.warning("download.refresh_failed", key=job.key, idx=job.idx, error=_describe(error))
            return None
        log.info("download.refreshed", key=job.key, idx=job.idx, urls=len(urls))
        return urls[job.idx] if job.idx < len(urls) else None

    def _failed(self, job: _Job, error: str) -> Fetched:
        log.warning(
            "download.failed",
            key=job.key,
            idx=job.idx,
            host=_host(job.url),
            error=error,
            attempts=job.attempts,
            refreshes=job.refreshes,
        )
        return Fetched(
            job.key,
            job.idx,
            job.url,
            "failed",
            error=error,
            attempts=job.attempts,
            refreshes=job.refreshes,
        )


@dataclass
class _Job:
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


# ------------------------------------------------------------ file helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# Filesystem timestamps come from a coarse clock (a jiffy on Linux, up to two
# seconds on FAT): a write in the same tick as our last look leaves mtime and
# ctime as they were. Only a file whose last change is older than this when we
# hashed it may be trusted by its metadata alone (git's "racily clean" rule).
_RACY_SECONDS = 2.0


def file_stat(info: os.stat_result) -> str:
    """What identifies one state of a file without reading it.

    ctime is in it because no one can set it: restoring an edited file's
    mtime still moves its ctime.
    """
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def _unchanged_since_hashed(info: os.stat_result, record: Output) -> bool:
    """Whether the file is provably the one whose bytes we hashed last."""
    if record.file_stat is None or record.file_stat != file_stat(info):
        return False
    try:
        hashed_at = datetime.fromisoformat(record.verified_at or "").timestamp()
    except ValueError:
        return False
    last_change = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
    return last_change + _RACY_SECONDS < hashed_at


def _open_locked(part: Path) -> int | None:
    """Open (creating) the part file and take its exclusive lock; None if another holds it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    while True:
        fd = os.open(part, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder may have renamed the part into place between our open
        # and our lock: then we hold a lock on the final file. Open again.
        try:
            same = part.stat(follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


class _Writes:
    """Where the parts' bytes are written: in the event loop while the disk keeps up.

    A write to the page cache takes well under a millisecond, less than the
    round trip to a worker thread and back (on a small virtual machine, that
    round trip and the wake-ups it causes cost more CPU than the write). A
    disk that falls behind makes `write` block instead (dirty-page
    throttling, a network filesystem): after one write slower than
    `_SLOW_WRITE_SECONDS`, every later batch goes to a worker thread, so the
    event loop (the other transfers, the executor's polling) never waits on
    the disk more than once.
    """

    def __init__(self) -> None:
        self.in_loop = True

    def took(self, seconds: float, size: int) -> None:
        if seconds > _SLOW_WRITE_SECONDS and self.in_loop:
            self.in_loop = False
            log.info("download.slow_disk", seconds=round(seconds, 3), bytes=size)


class _Part:
    """The part file being written: its descriptor, bytes so far and their running hash.

    Each chunk is hashed as it arrives, in the event loop (hashlib lets go of
    the GIL while it hashes), and written in batches (`_Writes` says where).
    A batch given to a worker thread is written while the next one arrives;
    one batch at most is in flight, so the bytes reach the file in order.
    `flush()` returns once every byte received is written, and every way
    out of a request goes through it, so after a request (complete, broken
    or cancelled) the file holds exactly the bytes hashed. After a failed
    write nothing more is written (later bytes would land after a hole): the
    error ends this output, and the next run hashes what the part holds and
    resumes from there.
    """

    def __init__(self, fd: int, path: Path, writes: _Writes) -> None:
        self.fd, self.path = fd, path
        self._writes = writes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writing: asyncio.Future[None] | None = None
        self._write_error: OSError | None = None
        # A part left by an interrupted run is resumed, not thrown away: hash
        # what is there and continue from its end.
        self.hasher = hashlib.sha256()
        self.have = 0  # bytes received and hashed; all on disk after flush()
        os.lseek(fd, 0, os.SEEK_SET)
        while block := os.read(fd, _HASH_BLOCK):
            self.hasher.update(block)
            self.have += len(block)

    def add(self, chunk: bytes) -> bool:
        """Hash and keep `chunk`; True when a batch is due (`await write_batch()`)."""
        self.hasher.update(chunk)
        self.have += len(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        batch = _WRITE_BYTES if self._writes.in_loop else _THREAD_BATCH_BYTES
        return self._pending_bytes >= batch

    async def write_batch(self) -> None:
        """Write what is pending, or start writing it once the batch before it is written."""
        await self._settle()
        self._write_pending()

    async def flush(self) -> None:
        """Return once every byte received is written (not yet fsynced)."""
        await self._settle()
        if self._pending:
            self._write_pending()
            await self._settle()

    def _write_pending(self) -> None:
        if self._write_error is not None:
            raise self._write_error
        chunks, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        if not self._writes.in_loop:
            loop = asyncio.get_running_loop()
            self._writing = loop.run_in_executor(None, _write_all, self.fd, chunks)
            return
        started = time.monotonic()
        try:
            _write_all(self.fd, chunks)
        except OSError as error:
            self._write_error = error
            raise
        self._writes.took(time.monotonic() - started, size)

    async def _settle(self) -> None:
        writing, self._writing = self._writing, None
        if writing is None:
            return
        try:
            await _settled(writing)
        except OSError as error:
            self._write_error = error
            raise

    def restart(self) -> None:
        # Only ever called with no write in flight: after a flush, or before
        # the first chunk of a request.
        if self._writing is not None:
            raise RuntimeError("restart() while a write is in flight")
        self._pending, self._pending_bytes = [], 0
        if self.have:  # a new, empty part needs no system call
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.hasher = hashlib.sha256()
            self.have = 0

    def discard(self) -> None:
        self.restart()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Append `chunks`, in `writev` calls of at most `_WRITE_BYTES` each.

    Not larger: the kernel sizes page-cache folios after the write, and on a
    virtual machine whose host takes freed memory back, large folios come
    from memory the host must fault in again (measured on the benchmark's
    VM: 256 KB writes cost 0.3 s of CPU per GB, 1 MB writes 1.7 s, 4 MB
    writes up to 4.5 s).
    """
    group: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            piece = view[: _WRITE_BYTES - size]
            group.append(piece)
            size += len(piece)
            view = view[len(piece) :]
            if size >= _WRITE_BYTES or len(group) >= _IOV_MAX:
                _writev(fd, group, size)
                group, size = [], 0
    if group:
        _writev(fd, group, size)


def _writev(fd: int, buffers: list[bytes | memoryview], size: int) -> None:
    done = os.writev(fd, buffers)
    if done < size:  # a short write (a full disk, a signal): finish it
        rest = memoryview(b"".join(buffers))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]


async def _settled(future: asyncio.Future[Any]) -> Any:
    """The result of a worker thread's future; cancelling waits for the thread to finish.

    A thread cannot be stopped. If the caller went on to close the file the
    thread is writing to, the descriptor's number could be reused by another
    open file and receive these bytes; so cancellation is held back for the
    few milliseconds one write or fsync takes, then delivered.
    """
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})  # a cancelled wait leaves the future running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


def _make_final(fd: int, part: Path, dest: Path) -> str:
    """fsync the part, rename it to `dest`, fsync the folder: in this order.

    Returns the final file's `file_stat`, taken after the rename (which moves
    its ctime on most filesystems).
    """
    os.fsync(fd)
    part.replace(dest)
    _fsync_dir(dest.parent)
    return file_stat(os.fstat(fd))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems cannot fsync a directory
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


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
