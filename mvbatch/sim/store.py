"""The simulator's SQLite state: tasks, the billing ledger and request counters.

One file, `sim.sqlite3` in the state folder (or an in-memory database), so a
restarted simulator resumes exactly where it stopped. The schema changes only
through the named migrations below, each applied in its own transaction.

Every public method is atomic: one lock around one connection, and writes in
`BEGIN IMMEDIATE` transactions, so two requests with the same new
Idempotency-Key can never create two tasks (the UNIQUE constraint is the
second line of defence). Money is stored as Decimal text, never as float.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

DB_NAME = "sim.sqlite3"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_initial",
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,            -- sha256 of the API key, never the key
            idempotency_key TEXT,           -- NULL: no key sent, never replayed
            payload_hash TEXT NOT NULL,
            request_id TEXT NOT NULL,
            model TEXT NOT NULL,
            input_json TEXT NOT NULL,
            tier TEXT NOT NULL,
            output_seconds TEXT NOT NULL,
            aspect_ratio TEXT NOT NULL,
            cost TEXT NOT NULL,
            created_at REAL NOT NULL,
            queued_seconds REAL NOT NULL,
            run_seconds REAL NOT NULL,
            failure_message TEXT,
            cancelled_at REAL,
            UNIQUE (owner, idempotency_key)
        );
        CREATE TABLE billing (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks (task_id),
            owner TEXT NOT NULL,
            idempotency_key TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
            amount TEXT NOT NULL,
            at REAL NOT NULL,
            UNIQUE (task_id, kind)          -- a task is charged once, refunded at most once
        );
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        """,
    ),
]


@dataclass(frozen=True, slots=True)
class TaskRecord:
    seq: int
    task_id: str
    owner: str
    idempotency_key: str | None
    payload_hash: str
    request_id: str
    model: str
    input_json: str
    tier: str
    output_seconds: Decimal
    aspect_ratio: str
    cost: Decimal
    created_at: float
    queued_seconds: float
    run_seconds: float
    failure_message: str | None
    cancelled_at: float | None


_COLUMNS = ", ".join(f.name for f in fields(TaskRecord))


def _record(row: sqlite3.Row) -> TaskRecord:
    values = dict(row)
    values["output_seconds"] = Decimal(values["output_seconds"])
    values["cost"] = Decimal(values["cost"])
    return TaskRecord(**values)


@dataclass(frozen=True, slots=True)
class Conflict:
    """The Idempotency-Key is already bound to a different payload."""

    existing: TaskRecord


class Store:
    def __init__(self, state_dir: Path | None) -> None:
        if state_dir is None:
            target = ":memory:"
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            target = str(state_dir / DB_NAME)
        # One connection shared by the event loop and any worker thread, guarded by _lock.
        self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        # Apps are dropped without a shutdown hook (no lifespan): close with the object.
        weakref.finalize(self, self._db.close)
        if state_dir is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
            )
            done = {row[0] for row in self._db.execute("SELECT name FROM _migrations")}
            for name, script in MIGRATIONS:
                if name in done:
                    continue
                with self._transaction() as db:
                    for statement in script.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (name,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta -----------------------------------------------------------------

    def meta(self, name: str, default: Callable[[], str]) -> str:
        """The stored value of `name`, storing `default()` the first time."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return str(row[0])
            value = default()
            db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
            return value

    def set_meta(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )

    # -- tasks ----------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?",  # noqa: S608 - fixed columns
                (task_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def all_tasks(self) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY seq").fetchall()  # noqa: S608
        return [_record(row) for row in rows]

    def create_or_replay(
        self,
        *,
        owner: str,
        idempotency_key: str | None,
        payload_hash: str,
        build: Callable[[int], TaskRecord],
    ) -> tuple[TaskRecord, bool] | Conflict:
        """Check the key, create and bill the task in one transaction.

        Returns (task, created). `build(seq)` makes the new record; it runs
        inside the transaction, so it must not block.
        """
        with self._transaction() as db:
            if idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? AND idempotency_key = ?",  # noqa: S608
                    (owner, idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _record(row)
                    if existing.payload_hash != payload_hash:
                        return Conflict(existing)
                    return existing, False
            seq = 1 + int(db.execute("SELECT coalesce(max(seq), 0) FROM tasks").fetchone()[0])
            record = build(seq)
            values = astuple(record)
            row_values = tuple(str(v) if isinstance(v, Decimal) else v for v in values)
            marks = ", ".join("?" for _ in values)
            db.execute(f"INSERT INTO tasks ({_COLUMNS}) VALUES ({marks})", row_values)  # noqa: S608
            db.execute(
                "INSERT INTO billing (task_id, owner, idempotency_key, kind, amount, at)"
                " VALUES (?, ?, ?, 'charge', ?, ?)",
                (record.task_id, owner, idempotency_key, str(record.cost), record.created_at),
            )
            return record, True

    def cancel(self, task_id: str, at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE tasks SET cancelled_at = ? WHERE task_id = ? AND cancelled_at IS NULL",
                (at, task_id),
            )

    # -- billing --------------------------------------------------------------

    def refund(self, record: TaskRecord, at: float) -> None:
        """Give the charge of a failed or cancelled task back (once)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO billing (task_id, owner, idempotency_key, kind, amount, at)"
                " VALUES (?, ?, ?, 'refund', ?, ?)",
                (record.task_id, record.owner, record.idempotency_key, str(record.cost), at),
            )

    def billing(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, idempotency_key, kind, amount, at FROM billing ORDER BY id"
            ).fetchall()
        return [dict(row) | {"amount": Decimal(row["amount"])} for row in rows]

    # -- counters -------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO counters VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters ORDER BY name")
            return {row[0]: int(row[1]) for row in rows}

    def reset(self) -> None:
        """Forget every task, charge and counter (the signing secret stays)."""
        with self._transaction() as db:
            for table in ("billing", "tasks", "counters"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
