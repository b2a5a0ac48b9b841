"""The ledger's schema: named migrations, each applied once, in order, in its own transaction.

Owns: the list of migrations and the DDL text they run (SQLite keeps that text
in the file, and tests/test_migrate.py compares it: never edit a released
migration, add a new one), applying the pending ones, and reading which are
applied or pending without applying anything (as sqlite-utils' migrations do).
Must not: touch a row of the ledger's data, or be skipped: opening a ledger
applies what is pending.

Each migration runs in one transaction together with the row that says it
ran, so a crash mid-migration leaves the previous schema intact, and two
processes opening one ledger apply it once (check, lock, check again).
`PRAGMA user_version` mirrors the count so that any SQLite tool can tell the
schema version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mvbatch.ledger.connection import now, transaction
from mvbatch.ledger.queries import QUERIES as Q

if TYPE_CHECKING:  # imported where a database is opened: start-up is quicker
    import sqlite_utils

Migration = Callable[["sqlite_utils.Database"], None]
MIGRATIONS: list[tuple[str, Migration]] = []

# The table of applied migrations, created before the first one. Its text is
# stored in the file like every migration's: never change it.
CREATE_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, "
    "name TEXT UNIQUE NOT NULL, applied_at TEXT NOT NULL)"
)


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            manifest TEXT NOT NULL,
            base_url TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT,
            max_usd TEXT,
            concurrency INTEGER,
            pid INTEGER
        )""")
    db.execute("""
        CREATE TABLE tasks (
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            manifest TEXT NOT NULL,
            shot TEXT NOT NULL,
            shots TEXT NOT NULL,
            variant TEXT NOT NULL,
            take INTEGER NOT NULL,
            model TEXT NOT NULL,
            input TEXT NOT NULL,
            price_class TEXT NOT NULL,
            seconds TEXT,
            upper_bound INTEGER NOT NULL DEFAULT 0,
            estimate_local TEXT NOT NULL,
            estimate_source TEXT NOT NULL,
            status TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            submit_key TEXT NOT NULL,
            task_id TEXT,
            request_id TEXT,
            cost_estimate TEXT,
            cost_actual TEXT,
            cost_prior TEXT NOT NULL DEFAULT '0',
            error TEXT,
            server_events TEXT,
            submissions INTEGER NOT NULL DEFAULT 0,
            polls INTEGER NOT NULL DEFAULT 0,
            run_id INTEGER REFERENCES runs (id),
            created_at TEXT NOT NULL,
            submitted_at TEXT,
            started_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (env, key)
        )""")
    db.execute("CREATE INDEX tasks_manifest ON tasks (env, manifest, status)")
    db.execute("""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            run_id INTEGER,
            at TEXT NOT NULL,
            previous TEXT,
            status TEXT NOT NULL,
            detail TEXT
        )""")
    db.execute("CREATE INDEX events_task ON events (env, key)")
    # The event log is evidence: make SQLite itself refuse to rewrite it.
    db.execute("""
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END""")
    db.execute("""
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END""")
    db.execute("""
        CREATE TABLE outputs (
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            idx INTEGER NOT NULL,
            url TEXT NOT NULL,
            path TEXT,
            sha256 TEXT,
            bytes INTEGER,
            downloaded_at TEXT,
            PRIMARY KEY (env, key, idx)
        )""")
    db.execute("""
        CREATE TABLE rates (
            env TEXT NOT NULL,
            price_class TEXT NOT NULL,
            usd_per_second TEXT NOT NULL,
            learned_at TEXT NOT NULL,
            samples INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (env, price_class)
        )""")
    db.execute("""
        CREATE TABLE latencies (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            latency_class TEXT NOT NULL,
            seconds REAL NOT NULL,
            observed_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX latencies_class ON latencies (env, latency_class)")


@migration
def m002_output_file_stat(db: sqlite_utils.Database) -> None:
    # How a downloaded file looked on disk when its bytes were last hashed, and
    # when that was: a later run trusts an unchanged file without reading it,
    # and reads it again when anything about it moved.
    db.execute("ALTER TABLE outputs ADD COLUMN file_stat TEXT")
    db.execute("ALTER TABLE outputs ADD COLUMN verified_at TEXT")


@migration
def m003_cost_reserved(db: sqlite_utils.Database) -> None:
    # What an intent reserved against the cap: our estimate when it was
    # recorded, which a rate learned since the plan may have changed. A task
    # whose POST is unanswered counts for it, for every process on the ledger.
    db.execute("ALTER TABLE tasks ADD COLUMN cost_reserved TEXT")
    # Every figure of `committed_cost`, so that the sum each reservation takes
    # under the write lock reads this index alone, in the order it groups by.
    db.execute("""
        CREATE INDEX tasks_committed ON tasks (
            env, manifest, status, estimate_local, cost_reserved, cost_estimate,
            cost_actual, cost_prior
        )""")


@migration
def m004_review(db: sqlite_utils.Database) -> None:
    # A person's verdict on a take (`mvbatch review`): approved, rejected or
    # cleared (NULL), with a note. Each one is appended; the latest counts, and
    # like the event log the table refuses to be rewritten.
    db.execute("""
        CREATE TABLE verdicts (
            id INTEGER PRIMARY KEY,
            env TEXT NOT NULL,
            key TEXT NOT NULL,
            at TEXT NOT NULL,
            verdict TEXT,
            note TEXT
        )""")
    db.execute("CREATE INDEX verdicts_task ON verdicts (env, key, id)")
    db.execute("""
        CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
        BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END""")
    db.execute("""
        CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
        BEGIN SELECT RAISE(ABORT, 'verdicts are append-only'); END""")
    # A take made by `run --reroll-rejected` names the rejected take it replaces.
    db.execute("ALTER TABLE tasks ADD COLUMN rerolled_from TEXT")


@migration
def m005_claims(db: sqlite_utils.Database) -> None:
    # Which worker holds a task in flight, and until when (epoch seconds): a
    # worker that dies loses its tasks when the lease runs out.
    db.execute("ALTER TABLE tasks ADD COLUMN claimed_by TEXT")
    db.execute("ALTER TABLE tasks ADD COLUMN lease_until REAL")


# ------------------------------------------------------------------ applying them


def applied(db: sqlite_utils.Database) -> list[str]:
    """Names of the migrations applied to this file, oldest first."""
    if "migrations" not in db.table_names():
        return []
    return [row[0] for row in db.execute(Q["applied_migrations"])]


def pending(db: sqlite_utils.Database) -> list[str]:
    """Migrations not applied yet, in the order they would run (read only: applies nothing)."""
    done = set(applied(db))
    return [name for name, _ in MIGRATIONS if name not in done]


def migrate(db: sqlite_utils.Database) -> None:
    """Apply every pending migration, each in its own transaction with its `migrations` row."""
    with transaction(db):
        db.execute(CREATE_MIGRATIONS)
    for name, step in MIGRATIONS:
        if name in applied(db):
            continue
        with transaction(db):
            # Check, lock, check again: another process may have applied it
            # between our read and our lock.
            if db.execute(Q["migration_is_applied"], {"name": name}).fetchone():
                continue
            step(db)
            db.execute(Q["record_migration"], {"name": name, "applied_at": now()})
            count = db.execute(Q["count_migrations"]).fetchone()[0]
            # A pragma takes no parameter: the value is an int we counted.
            db.execute(f"PRAGMA user_version = {int(count)}")
