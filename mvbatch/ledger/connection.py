"""How the SQLite ledger holds its file: one connection, WAL, writes that lock up front.

Owns: the file's name under the state folder, its creation (whole or not at
all), the check that it is sound before anything writes to it (`check`), the
copy of a damaged one set aside, the rolling backup (`backup`), the
connection settings (each with its reason), the `BEGIN IMMEDIATE` transaction
every write runs in, and the clock rows are stamped with. Must not: know any
table (the queries are in `queries.sql`, the schema in `migrations.py`), or
ever write to, move or replace a ledger it found damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mvbatch.errors import ConfigError, LedgerDamaged

if TYPE_CHECKING:  # imported where a database is opened: start-up is quicker
    import sqlite_utils

FILE_NAME = "ledger.sqlite"
BACKUP_SUFFIX = ".bak"  # ledger.sqlite.bak: a copy taken after each run that ended
DAMAGED_SUFFIX = ".damaged-"  # ledger.sqlite.damaged-<UTC time>: a damaged ledger's copy
BUSY_TIMEOUT_MS = 30_000
# SQLite's own words for a file that is not a sound database.
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# SQLite's words for a file it cannot open or write for reasons of the disk or
# its folder (permissions, a read-only mount, a full disk), not of the file.
DISK_CODES = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_AUTH,
    }
)


def _code(error: sqlite3.Error) -> int:
    return int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF  # primary code


def is_damage(error: sqlite3.Error) -> bool:
    return _code(error) in DAMAGE_CODES


def is_disk_trouble(error: sqlite3.Error) -> bool:
    return _code(error) in DISK_CODES


def create(path: Path) -> None:
    """A new, empty ledger file at `path`, whole or not at all; nothing if one is there.

    Made aside and linked into place, so `path` never exists half-made: an
    empty `ledger.sqlite` is then always damage (a truncation), never a
    ledger being born, and two processes starting at once never clobber each
    other's (the link fails for the second, which opens the first's).
    """
    if path.exists():
        return
    fresh = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    try:
        with contextlib.closing(sqlite3.connect(fresh)) as db:
            db.execute("PRAGMA journal_mode=WAL")  # writes the header: never an empty file
        try:
            os.link(fresh, path)
        except FileExistsError:
            pass  # another process made it first
        except OSError:
            # No hard links on this file system: let SQLite create it in place.
            pass
    finally:
        for leftover in (fresh, fresh.with_name(fresh.name + "-wal")):
            leftover.unlink(missing_ok=True)
        fresh.with_name(fresh.name + "-shm").unlink(missing_ok=True)


def check(path: Path) -> None:
    """Raise `LedgerDamaged` if the ledger at `path` is not a sound database.

    Read only (SQLite's `quick_check` on a read-only connection, about 0.1 s
    on a 100,000-task ledger): the file is never written, moved or replaced.
    A damaged file is copied aside first, so that recovering never starts
    from the only copy.
    """
    cause = _damage(path)
    if cause is None:
        return
    copy, copy_error = _copy_aside(path)
    shown = str(path)
    kept = (
        f"A copy is at {copy}."
        if copy is not None
        else f"It could not be copied aside ({copy_error}): copy it somewhere safe first."
    )
    source = shlex.quote(str((copy if copy is not None else path).resolve()))
    folder = path.parent.resolve()
    recovered = folder.with_name(folder.name + "-recovered")
    target = shlex.quote(str(recovered / FILE_NAME))
    steps = [
        "to recover what it holds, with SQLite's command-line tool:",
        f"  mkdir -p {shlex.quote(str(recovered))}",
        f"  sqlite3 {source} .recover | sqlite3 {target}",
        "  (if .recover fails, as SQLite 3.40's does on a table with no rows, use .dump instead)",
        f"then run with MVBATCH_STATE_DIR={shlex.quote(str(recovered))}.",
    ]
    backup_file = path.with_name(path.name + BACKUP_SUFFIX)
    if backup_file.is_file():
        steps.append(
            "Or start again from the copy taken after the last run that ended: "
            f"cp {shlex.quote(str(backup_file.resolve()))} {target}"
        )
    steps.append(
        "Tasks a recovered ledger lacks are sent again under the same idempotency keys, "
        "which the API does not charge twice."
    )
    raise LedgerDamaged(
        f"the ledger {shown} is damaged ({cause}); mvbatch did not change it and will not "
        f"use it. {kept}",
        hint="\n".join(steps),
        path=shown,
    )


def _damage(path: Path) -> str | None:
    """What is wrong with the ledger file, in SQLite's words, or None if nothing is."""
    try:
        if not path.is_file():
            return None  # absent (created later) or not a file (opening says why)
        if path.stat().st_size == 0:
            return "the file is empty"  # `create` never leaves one: it was truncated
    except OSError:
        return None  # opening it says why
    sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    existed = [side.exists() for side in sides]
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error:
        return None  # cannot even read it here: opening it for writing says why
    cause = None
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            found = str(rows[0][0]).replace("*** in database main ***", "") if rows else ""
            cause = " ".join(found.split()) or "SQLite's quick_check failed"
    except sqlite3.DatabaseError as error:
        cause = str(error) if is_damage(error) else None
    finally:
        db.close()
    if cause is not None:
        # The read-only look made an empty WAL and index beside it: take them away.
        for side, was_there in zip(sides, existed, strict=True):
            if not was_there:
                with contextlib.suppress(OSError):
                    side.unlink()
    return cause


def _copy_aside(path: Path) -> tuple[Path | None, str | None]:
    """A copy of a damaged ledger (and of its WAL, if any) beside it: the copy, or why not.

    A copy, never a move: the original stays where the user left it. An
    identical copy made by an earlier command is reused.
    """
    try:
        digest = _sha256(path)
        for earlier in sorted(path.parent.glob(path.name + DAMAGED_SUFFIX + "*")):
            if earlier.name.endswith(("-wal", "-shm")):
                continue
            if earlier.stat().st_size == path.stat().st_size and _sha256(earlier) == digest:
                return earlier, None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(path.name + DAMAGED_SUFFIX + stamp)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}-{n}")
        shutil.copyfile(path, target)
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            shutil.copyfile(wal, target.with_name(target.name + "-wal"))
    except OSError as error:
        return None, error.strerror or str(error)
    return target, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup(path: Path) -> Path:
    """Copy the ledger to `ledger.sqlite.bak` with SQLite's backup API; return that path.

    The copy is made aside, checked (`quick_check`) and only then renamed over
    the previous backup, so a backup is always whole and sound: a damaged
    ledger never replaces a good backup. Raises `sqlite3.Error` or `OSError`.
    """
    target = path.with_name(path.name + BACKUP_SUFFIX)
    fresh = path.with_name(f".{target.name}.{uuid.uuid4().hex}.new")
    try:
        with (
            contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as source,
            contextlib.closing(sqlite3.connect(fresh)) as copy,
        ):
            source.backup(copy)
            # The copy stands alone: no WAL beside it, whatever the ledger's mode.
            copy.execute("PRAGMA journal_mode=DELETE")
            verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"the copy is not sound: {verdict}")
        fresh.replace(target)
    finally:
        fresh.unlink(missing_ok=True)
    return target


def open_error(path: Path, error: sqlite3.Error | OSError) -> ConfigError:
    """What to say when the ledger file cannot be opened or written for reasons of the disk."""
    cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return ConfigError(
        f"cannot use the ledger {path}: {cause}. Set MVBATCH_STATE_DIR to a folder "
        "mvbatch can write."
    )


def connect(path: Path) -> sqlite_utils.Database:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so every
    # write transaction takes the write lock up front instead of failing
    # with SQLITE_BUSY half-way through (a deferred transaction that
    # upgrades from read to write cannot wait for the lock).
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    # In WAL mode, NORMAL loses nothing committed when the *process* dies
    # (kill -9): the WAL is in the OS page cache. Only a power cut can
    # drop the last transactions, and then a re-run re-POSTs them under
    # the same idempotency keys, which is still free.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One step: all of it committed, or (on any exception, even a cancel) none of it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
