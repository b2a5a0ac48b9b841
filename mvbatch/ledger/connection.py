"""How the SQLite ledger holds its file: one connection, WAL, writes that lock up front.

Owns: the file's name under the state folder, the connection settings (each
with its reason), the `BEGIN IMMEDIATE` transaction every write runs in, and
the clock rows are stamped with. Must not: know any table (the queries are in
`queries.sql`, the schema in `migrations.py`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

FILE_NAME = "ledger.sqlite"
BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite_utils.Database:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so every
    # write transaction takes the write lock up front instead of failing
    # with SQLITE_BUSY half-way through (a deferred transaction that
    # upgrades from read to write cannot wait for the lock).
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
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
