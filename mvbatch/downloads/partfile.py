"""The part file: where a download's bytes are written until they are final.

Owns: opening and locking `.name.mp4.part` (`open_locked`: one writer per
file, across processes), hashing and writing the bytes in order as they
arrive (`PartFile`, in the event loop while the disk keeps up, in worker
threads once it does not: `Writes`), making it final (`PartFile.make_final`: fsync,
rename, folder fsync, in that order), knowing a file again without
reading it (`file_stat`, `sha256_file`, and the "unchanged since hashed"
rule: `unchanged_since_hashed`; `check_recorded` and its blocking twin
`check_recorded_now`, which the report uses), and telling a full disk from
other write errors (`disk_full`).

Must not: touch the network or the ledger, choose where a file goes
(`naming`), or decide what to retry (`fetch`). After a failed write nothing
more is written to a part: a later byte would land after a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mvbatch import logs
from mvbatch.downloads.verify import HEAD_BYTES
from mvbatch.errors import DiskFull

_HASH_BLOCK = 1 << 20
_WRITE_BYTES = 256 << 10  # per write system call (see `_write_all`), and per batch in the loop
_IOV_MAX = 512  # buffers per writev: POSIX guarantees 16, Linux and macOS allow 1024
_THREAD_BATCH_BYTES = 4 << 20  # per batch handed to a worker thread, once writes are slow
_SLOW_WRITE_SECONDS = 0.05  # an event-loop write slower than this: write in threads from then on

# Filesystem timestamps come from a coarse clock (a jiffy on Linux, up to two
# seconds on FAT): a write in the same tick as our last look leaves mtime and
# ctime as they were. Only a file whose last change is older than this when we
# hashed it may be trusted by its metadata alone (git's "racily clean" rule).
_RACY_SECONDS = 2.0
# A write refused for want of space: the disk is full, or the user's quota is.
DISK_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)

log = logs.get("mvbatch.downloads.partfile")


# ------------------------------------------------------ knowing a file again


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_stat(info: os.stat_result) -> str:
    """What identifies one state of a file without reading it.

    ctime is in it because no one can set it: restoring an edited file's
    mtime still moves its ctime.
    """
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def unchanged_since_hashed(
    info: os.stat_result, recorded_stat: str | None, verified_at: str | None
) -> bool:
    """Whether the file is provably the one whose bytes were hashed at `verified_at`.

    `recorded_stat` is the `file_stat` taken then. The last change must also
    be older than the hash by `_RACY_SECONDS`, or a write in the same clock
    tick could hide behind unchanged timestamps.
    """
    if recorded_stat is None or recorded_stat != file_stat(info):
        return False
    try:
        hashed_at = datetime.fromisoformat(verified_at or "").timestamp()
    except ValueError:
        return False
    last_change = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
    return last_change + _RACY_SECONDS < hashed_at


@dataclass(frozen=True, slots=True)
class Found:
    """A recorded file as found on disk now."""

    intact: bool  # the bytes recorded, as far as can be told
    size: int | None = None  # its size now; None when gone or not a regular file
    rehashed_stat: str | None = None  # read again to tell: its `file_stat` now, to record


async def check_recorded(
    path: Path, size: int, sha256: str, recorded_stat: str | None, verified_at: str | None
) -> Found:
    """Whether the file at `path` still holds the bytes recorded, reading it only if need be.

    Trusted unread when `unchanged_since_hashed`; otherwise hashed again (in a
    worker thread) and compared.
    """
    # One stat takes microseconds: in the loop, not worth a thread trip per file.
    looked = _look(path, size, recorded_stat, verified_at)
    if isinstance(looked, Found):
        return looked
    # Changed on disk, or too recently hashed to tell: trust the bytes.
    return _compared(looked, size, sha256, await asyncio.to_thread(sha256_file, path))


def check_recorded_now(
    path: Path,
    size: int,
    sha256: str,
    recorded_stat: str | None,
    verified_at: str | None,
    *,
    seen: bool = False,
) -> Found:
    """`check_recorded`, blocking: for the report, which has no event loop.

    `seen`: this process hashed or wrote the file moments ago (the downloader
    of this run said it is intact), so a `file_stat` as recorded is enough;
    without it, the "unchanged since hashed" rule decides.
    """
    if seen:
        try:
            info = path.stat(follow_symlinks=False)
        except OSError:
            return Found(intact=False)
        if stat.S_ISREG(info.st_mode) and file_stat(info) == recorded_stat:
            return Found(intact=True, size=info.st_size)
    looked = _look(path, size, recorded_stat, verified_at)
    if isinstance(looked, Found):
        return looked
    return _compared(looked, size, sha256, sha256_file(path))


def _look(
    path: Path, size: int, recorded_stat: str | None, verified_at: str | None
) -> Found | os.stat_result:
    """What a stat alone tells: a `Found`, or the stat of a file whose bytes must be read."""
    try:
        info = path.stat(follow_symlinks=False)
    except OSError:
        return Found(intact=False)  # deleted or moved: fetch it again
    if not stat.S_ISREG(info.st_mode):
        return Found(intact=False)
    if unchanged_since_hashed(info, recorded_stat, verified_at):
        return Found(intact=True, size=info.st_size)
    if info.st_size != size:
        return Found(intact=False, size=info.st_size)  # no need to read it to tell
    return info


def _compared(info: os.stat_result, size: int, sha256: str, actual: str) -> Found:
    intact = info.st_size == size and actual == sha256
    return Found(intact, info.st_size, file_stat(info) if intact else None)


# ------------------------------------------------------------- a full disk


def disk_full(
    error: BaseException, folder: Path, what: str, needed: int | None, *, about: bool = False
) -> DiskFull | None:
    """The `DiskFull` that `error` means (ENOSPC, EDQUOT), or None for any other error.

    `folder` is where `what` (a video, a report) could not be written, and
    `needed` the bytes it needs (`about`: an estimate); the message adds what is
    free there now.
    """
    if not isinstance(error, OSError) or error.errno not in DISK_FULL_ERRNOS:
        return None
    try:
        found = os.statvfs(folder)
        free = f"{found.f_bavail * found.f_frsize:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = "its size unknown" if needed is None else f"{needed:,} bytes needed"
    if about and needed is not None:
        need = f"about {need}"
    return DiskFull(
        f"the disk is full: cannot write {what} in {folder} ({need}, {free}; "
        f"{error.strerror or 'no space left'})",
        hint="free some space there (or point MVBATCH_OUTPUT_DIR at a larger disk), then run "
        "the same command again: what is on disk is kept, and nothing is sent twice",
        folder=str(folder),
        needed=needed,
    )


# ------------------------------------------------------------- the part file


def part_path(dest: Path) -> Path:
    """The part file beside `dest`: hidden, in the same folder, so the rename is atomic."""
    return dest.with_name(f".{dest.name}.part")


def open_locked(part: Path) -> int | None:
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


class Writes:
    """Where the parts' bytes are written: in the event loop while the disk keeps up.

    A write to the page cache takes well under a millisecond, less than the
    round trip to a worker thread and back (on a small virtual machine, that
    round trip and the wake-ups it causes cost more CPU than the write). A
    disk that falls behind makes `write` block instead (dirty-page
    throttling, a network filesystem): after one write slower than
    `_SLOW_WRITE_SECONDS`, every later batch goes to a worker thread, so the
    event loop (the other transfers, the executor's polling) never waits on
    the disk more than once. One per Downloader, shared by its parts.
    """

    def __init__(self) -> None:
        self.in_loop = True

    def took(self, seconds: float, size: int) -> None:
        if seconds > _SLOW_WRITE_SECONDS and self.in_loop:
            self.in_loop = False
            log.info("download.slow_disk", seconds=round(seconds, 3), bytes=size)


class PartFile:
    """The part file being written: its descriptor, bytes so far and their running hash.

    Each chunk is hashed as it arrives, in the event loop (hashlib lets go of
    the GIL while it hashes), and written in batches (`Writes` says where).
    A batch given to a worker thread is written while the next one arrives;
    one batch at most is in flight, so the bytes reach the file in order.
    `flush()` returns once every byte received is written, and every way
    out of a request goes through it, so after a request (complete, broken
    or cancelled) the file holds exactly the bytes hashed. After a failed
    write nothing more is written (later bytes would land after a hole): the
    error ends this output, and the next run hashes what the part holds and
    resumes from there; unless the disk was full, when `give_back()` deletes
    the part so that its space comes back. `head` keeps the file's first
    bytes, for the check of what arrived (`verify`).
    """

    def __init__(self, fd: int, path: Path, writes: Writes) -> None:
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
        self.head = b""  # the file's first bytes (HEAD_BYTES at most), for `verify`
        os.lseek(fd, 0, os.SEEK_SET)
        while block := os.read(fd, _HASH_BLOCK):
            self.hasher.update(block)
            self.have += len(block)
            if len(self.head) < HEAD_BYTES:
                self._keep_head(block)

    def add(self, chunk: bytes) -> bool:
        """Hash and keep `chunk`; True when a batch is due (`await write_batch()`)."""
        self.hasher.update(chunk)
        self.have += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self._keep_head(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        batch = _WRITE_BYTES if self._writes.in_loop else _THREAD_BATCH_BYTES
        return self._pending_bytes >= batch

    def _keep_head(self, chunk: bytes) -> None:
        self.head += chunk[: HEAD_BYTES - len(self.head)]

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
            self.head = b""

    def discard(self) -> None:
        self.restart()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def give_back(self) -> None:
        """After the disk filled: empty and delete the part, so that its space comes back.

        Only while it is still the part: once renamed into place it is the
        final file, which is left alone. Nothing more is written to it.
        """
        try:
            here = self.path.stat(follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return
        if here:
            os.ftruncate(self.fd, 0)
            self.path.unlink(missing_ok=True)
        self._write_error = self._write_error or OSError(errno.ENOSPC, "given back")

    async def make_final(self, dest: Path, record: Callable[[str], None]) -> None:
        """Make the flushed part the file `dest`, durably, then `record(file_stat)`.

        fsync, rename and folder fsync run in one trip to a worker thread
        (`_make_final`). Cancelled while the thread runs (it is always let
        finish), `record` is still called if the file is in place, before the
        cancel goes on: or the next run would fetch it again from its first
        byte.
        """
        loop = asyncio.get_running_loop()
        final = loop.run_in_executor(None, _make_final, self.fd, self.path, dest)
        try:
            final_stat = await _settled(final)
        except asyncio.CancelledError:
            if not final.cancelled() and final.exception() is None:
                record(final.result())
            raise
        record(final_stat)


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


# ------------------------------------------------------------------- final


def _make_final(fd: int, part: Path, dest: Path) -> str:
    """fsync the part, rename it to `dest`, fsync the folder: in this order.

    Blocking: run it in a worker thread. Returns the final file's
    `file_stat`, taken after the rename (which moves its ctime on most
    filesystems).
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
