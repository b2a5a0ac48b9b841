"""The ledger: every step of every task, recorded so that nothing is lost or charged twice.

Owns: what was planned, sent, answered, charged and downloaded, for every
task of every manifest, across runs and crashes; the runs themselves; what
the server taught us (rates, latencies). Callers speak to it through the
`Ledger` protocol (`interface.py`, each operation with its guarantee) and get
one from `open_ledger`: `SqliteLedger` on a path (its schema in
`migrations.py`), `PostgresLedger` on a `postgresql://` URL; both run the steps
of `steps.py` over the statements of `queries.sql`.

Must not: talk to the network, decide anything (it records what the executor,
the downloader and the user decided), store the API key, or import a later
stage (api, run, downloads, report, ui): it sits below them all.

    rows.py        TaskRow, Output, the statuses, committed_cost (pure data)
    charges.py     what a failed task cost, in the words every view shares
    interface.py   the Ledger protocol
    reserve.py     intents decided under the write lock (cap, claims, in-flight limit), in steps
    steps.py       SqlLedger: every operation written once, over a backend's primitives
    sqlite.py      SqliteLedger, on ledger.sqlite under the state folder
    postgres.py    PostgresLedger, on a postgresql:// database a fleet of workers shares
    codec.py       how values are stored and read back, the same on both backends
    connection.py  the SQLite file and connection: made whole, checked at open (a damaged
                   ledger is copied aside, never changed), backed up; WAL, BEGIN IMMEDIATE
    migrations.py  the schema as named migrations, applied once each
    queries.py     loads queries.sql: every statement, by name
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from mvbatch import logs
from mvbatch.errors import ConfigError
from mvbatch.ledger import connection, postgres
from mvbatch.ledger.connection import FILE_NAME
from mvbatch.ledger.interface import Ledger
from mvbatch.ledger.rows import (
    FAILED,
    IN_FLIGHT,
    PLAN_STATE,
    STATUSES,
    VERDICTS,
    Intent,
    Output,
    Reservation,
    TaskRow,
    Verdict,
    committed_cost,
)
from mvbatch.ledger.sqlite import SqliteLedger

log = logs.get("mvbatch.ledger")

__all__ = [
    "FAILED",
    "IN_FLIGHT",
    "STATUSES",
    "VERDICTS",
    "Intent",
    "Ledger",
    "Output",
    "Reservation",
    "SqliteLedger",
    "TaskRow",
    "Verdict",
    "committed_cost",
    "describe",
    "exists",
    "keep_backup",
    "learned_rates",
    "open_ledger",
    "plan_states",
    "sqlite_file",
]


def sqlite_file(where: Path) -> Path:
    """The SQLite file a ledger location names: a folder's `ledger.sqlite`, or the file itself."""
    if where.suffix in (".sqlite", ".sqlite3", ".db") and not where.is_dir():
        return where
    return where / FILE_NAME


def describe(where: str | Path) -> str:
    """The ledger's location as it may be shown: a path, or a URL without its password."""
    if isinstance(where, str):
        return postgres.shown(where)
    return str(sqlite_file(where))


def open_ledger(where: str | Path) -> Ledger:
    """The ledger at `where`, created and migrated if need be. Close it after use.

    `where` is a state folder (its `ledger.sqlite`), a SQLite file, or a
    `postgresql://` URL (the shared ledger of a fleet of workers). A ledger
    file that is not a sound database raises `LedgerDamaged` before anything
    writes to it (`connection.check`); one that cannot be created or opened
    for reasons of the disk (a read-only mount, permissions) or a database
    that cannot be reached raises `ConfigError`.
    """
    if isinstance(where, str):
        if not postgres.is_url(where):
            raise ConfigError(
                f"the ledger must be a SQLite file or a postgresql:// URL, not {describe(where)!r}",
                hint="set MVBATCH_LEDGER (or --ledger) to a path or postgresql://user@host/db",
            )
        return postgres.PostgresLedger(where)
    path = sqlite_file(where)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection.create(path)
    except (OSError, sqlite3.Error) as error:
        if isinstance(error, sqlite3.Error) and not connection.is_disk_trouble(error):
            raise
        raise connection.open_error(path, error) from None
    connection.check(path)
    try:
        return SqliteLedger(path.parent, path.name)
    except sqlite3.Error as error:
        if connection.is_damage(error):  # damaged between the check and the open
            connection.check(path)
        if connection.is_disk_trouble(error):
            raise connection.open_error(path, error) from None
        raise


def exists(where: str | Path) -> bool:
    """Whether there is a ledger there to read (a database URL always counts)."""
    return isinstance(where, str) or sqlite_file(where).is_file()


def keep_backup(where: str | Path) -> Path | None:
    """Refresh `ledger.sqlite.bak`, the copy a damaged ledger can be restored from.

    Called after each run that ended. Never fatal: a backup that cannot be
    made is logged (`ledger.backup_failed`) and the previous one stays. A
    PostgreSQL ledger is backed up by its server's own means: nothing here.
    """
    if isinstance(where, str):
        return None
    path = sqlite_file(where)
    try:
        return connection.backup(path)
    except (OSError, sqlite3.Error) as error:
        log.warning("ledger.backup_failed", path=str(path), error=str(error))
        return None


def learned_rates(where: str | Path, env: str) -> dict[str, Decimal]:
    """The rates learned so far; none, and no ledger created, if there is none yet."""
    if not exists(where):
        return {}
    with open_ledger(where) as ledger:
        return ledger.learned_rates(env)


def plan_states(where: str | Path, manifest: str, keys: list[str], env: str) -> dict[str, str]:
    """Each known key's plan state (`new`, `in_flight`, `done`, `failed`); creates no ledger."""
    if not exists(where):
        return {}
    with open_ledger(where) as ledger:
        wanted = set(keys)
        found = ledger.task_states(env, manifest).items()
        return {key: PLAN_STATE.get(status, "new") for key, status in found if key in wanted}
