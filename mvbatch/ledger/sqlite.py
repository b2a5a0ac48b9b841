"""The ledger in one SQLite file under the state folder: `SqliteLedger`.

Owns: implementing the `Ledger` protocol on `ledger.sqlite` through
sqlite-utils, with the statements of `queries.sql`, and decoding its columns
(JSON text, decimal text) into `TaskRow`s and `Output`s. Must not: talk to
the network, decide anything (it records), or receive the API key.

Every write is one `BEGIN IMMEDIATE` transaction, so two processes on one
ledger serialise on the write lock instead of failing half-way (with a
`busy_timeout` to wait for it), and a `kill -9` leaves either the whole step or
none of it. WAL mode lets `plan` and `status` read while a run writes. Money is
stored as decimal TEXT, never as a float. Opening a ledger applies its pending
migrations (`migrations.py`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvbatch.ledger import connection, migrations
from mvbatch.ledger.connection import FILE_NAME
from mvbatch.ledger.queries import QUERIES as Q
from mvbatch.ledger.steps import SqlLedger

if TYPE_CHECKING:  # imported where a database is opened: start-up is quicker
    import sqlite_utils


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """A cursor's rows as dicts by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


class SqliteLedger(SqlLedger):
    """The ledger file, opened (and migrated) for one process. Implements `Ledger`;
    the steps themselves are `SqlLedger`'s, over the primitives below."""

    def __init__(self, state_dir: Path, name: str = FILE_NAME) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / name
        self.db = connection.connect(self.path)
        migrations.migrate(self.db)

    @staticmethod
    def exists(state_dir: Path, name: str = FILE_NAME) -> bool:
        """Whether a ledger was ever created under `state_dir` (creates nothing)."""
        return (state_dir / name).is_file()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One step of raw SQL, all or nothing (tests use it to stage a crash)."""
        with connection.transaction(self.db) as db:
            yield db

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok", or what is broken."""
        return str(self.db.execute(Q["integrity_check"]).fetchone()[0])

    # -- the primitives `SqlLedger` runs on

    def _run(self, db: sqlite_utils.Database, name: str, values: Mapping[str, Any]) -> int:
        return int(db.execute(Q[name], dict(values)).rowcount)

    def _all(
        self, db: sqlite_utils.Database | None, name: str, values: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        # Straight on the connection: sqlite-utils' `query` wraps each read in a
        # savepoint, in case it is not a read: two more statements per read.
        return _dicts((db or self.db).conn.execute(Q[name], dict(values)))

    def _each(self, name: str, values: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        cursor = self.db.conn.execute(Q[name], dict(values))
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    def _many(
        self, db: sqlite_utils.Database, name: str, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        db.conn.executemany(Q[name], rows)

    def _clock(self, db: sqlite_utils.Database) -> float:
        # One machine, one clock: the processes on this file share it.
        return time.time()

    def _lock_manifests(self, db: sqlite_utils.Database, values: Mapping[str, Any]) -> None:
        pass  # every step is `BEGIN IMMEDIATE`: it holds the one write lock already

    def _new_run(self, db: sqlite_utils.Database, values: Mapping[str, Any]) -> int:
        return int(db.execute(Q["start_run"], dict(values)).lastrowid or 0)
