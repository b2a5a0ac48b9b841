"""The SQLite ledger: every step of every task, so nothing is lost or charged twice.

Owns: the database file under the state folder (`ledger.sqlite`), its schema
through named migrations, and the few writes the executor and the downloader
make. It must not talk to the network or decide anything: it records.

Every write is one `BEGIN IMMEDIATE` transaction, so two processes on one
ledger serialise on the write lock instead of failing half-way (with a
`busy_timeout` to wait for it), and a `kill -9` leaves either the whole step or
none of it. WAL mode lets `plan` and `status` read while a run writes. Money is
stored as decimal TEXT, never as a float.

Simulated and live work never mix: every row carries `env` ("sim" or "live"),
and a task is identified by `(env, key)`.

Task lifecycle (`tasks.status`); every change appends a row to `events`:

    planned ─► submitting ─► queued ─► processing ─► succeeded
                  │   ▲          └──────────┴──────► failed / cancelled
                  │   └── (--retry-failed: a new attempt, a new submit_key)
                  └─► rejected (the server refused the request: a 4xx)

`submitting` is the intent, committed before the POST. A task found in it
after a crash is POSTed again with the same `submit_key` (the idempotency
key), which the API answers with the original task and no new charge. The
task id is committed right after the POST returns.

The API key is never stored here: nothing in this module receives it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlite_utils

FILE_NAME = "ledger.sqlite"
BUSY_TIMEOUT_MS = 30_000
STATUSES = (
    "planned",
    "submitting",
    "queued",
    "processing",
    "succeeded",
    "failed",
    "cancelled",
    "rejected",
)
IN_FLIGHT = ("submitting", "queued", "processing")
FAILED = ("failed", "cancelled", "rejected")
TERMINAL = ("succeeded", *FAILED)
PLAN_STATE = {
    "planned": "new",
    "submitting": "in_flight",
    "queued": "in_flight",
    "processing": "in_flight",
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "failed",
    "rejected": "failed",
}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


# ---------------------------------------------------------------- migrations
#
# Each migration runs in its own transaction together with the row that says it
# ran, so a crash mid-migration leaves the previous schema intact. Never edit a
# released migration: add a new one. `PRAGMA user_version` mirrors the count so
# that any SQLite tool can tell the schema version.

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


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


# ------------------------------------------------------------------ the ledger


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the ledger knows it (a snapshot; the ledger is the truth)."""

    env: str
    key: str
    manifest: str
    shot: str
    shots: list[str]
    variant: dict[str, Any]
    take: int
    model: str
    input: dict[str, Any]
    price_class: str
    seconds: Decimal | None
    upper_bound: bool
    estimate_local: Decimal
    estimate_source: str
    status: str
    attempt: int
    submit_key: str
    task_id: str | None
    request_id: str | None
    cost_estimate: Decimal | None
    cost_actual: Decimal | None
    error: str | None
    server_events: Any
    submissions: int
    polls: int
    run_id: int | None
    created_at: str
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str
    # What earlier, superseded attempts (`--retry-failed`) committed us to spend.
    cost_prior: Decimal = Decimal(0)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskRow:
        def dec(name: str) -> Decimal | None:
            value = row[name]
            return None if value is None else Decimal(value)

        return cls(
            env=row["env"],
            key=row["key"],
            manifest=row["manifest"],
            shot=row["shot"],
            shots=json.loads(row["shots"]),
            variant=json.loads(row["variant"]),
            take=row["take"],
            model=row["model"],
            input=json.loads(row["input"]),
            price_class=row["price_class"],
            seconds=dec("seconds"),
            upper_bound=bool(row["upper_bound"]),
            estimate_local=Decimal(row["estimate_local"]),
            estimate_source=row["estimate_source"],
            status=row["status"],
            attempt=row["attempt"],
            submit_key=row["submit_key"],
            task_id=row["task_id"],
            request_id=row["request_id"],
            cost_estimate=dec("cost_estimate"),
            cost_actual=dec("cost_actual"),
            error=row["error"],
            server_events=json.loads(row["server_events"]) if row["server_events"] else None,
            submissions=row["submissions"],
            polls=row["polls"],
            run_id=row["run_id"],
            created_at=row["created_at"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
            cost_prior=Decimal(row["cost_prior"] or "0"),
        )

    @property
    def plan_state(self) -> str:
        return PLAN_STATE.get(self.status, "new")

    @property
    def committed(self) -> Decimal:
        """What this task has committed us to spend, as best the ledger knows."""
        return self.cost_prior + committed_cost(
            self.status, self.estimate_local, self.cost_estimate, self.cost_actual
        )


def committed_cost(
    status: str, local: Decimal, server: Decimal | None, actual: Decimal | None
) -> Decimal:
    """The spend a task stands for: actual if known, else the server's estimate, else ours.

    A task with recorded intent but no answer (`submitting`) counts at our
    estimate: the POST may have reached the server. A failed task without an
    actual cost counts at the server's estimate (we cannot know it was
    refunded); one the server refused outright (`rejected`) costs nothing.
    """
    if status in ("planned", "rejected"):
        return Decimal(0)
    if actual is not None:
        return actual
    if server is not None:
        return server
    if status in ("failed", "cancelled"):
        return Decimal(0)
    return local


@dataclass(frozen=True, slots=True)
class Output:
    idx: int
    url: str
    path: str | None
    sha256: str | None
    bytes: int | None
    downloaded_at: str | None
    file_stat: str | None = None
    verified_at: str | None = None


class Ledger:
    """The ledger file, opened (and migrated) for one process."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so every
        # write transaction takes the write lock up front instead of failing
        # with SQLITE_BUSY half-way through (a deferred transaction that
        # upgrades from read to write cannot wait for the lock).
        conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL loses nothing committed when the *process* dies
        # (kill -9): the WAL is in the OS page cache. Only a power cut can
        # drop the last transactions, and then a re-run re-POSTs them under
        # the same idempotency keys, which is still free.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions and migrations

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def applied(self) -> list[str]:
        if "migrations" not in self.db.table_names():
            return []
        return [r[0] for r in self.db.execute("SELECT name FROM migrations ORDER BY id")]

    def pending(self) -> list[str]:
        """Migrations not applied yet (readable without applying them)."""
        done = set(self.applied())
        return [name for name, _ in MIGRATIONS if name not in done]

    def migrate(self) -> None:
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, "
                "name TEXT UNIQUE NOT NULL, applied_at TEXT NOT NULL)"
            )
        for name, step in MIGRATIONS:
            if name in self.applied():
                continue
            with self.transaction() as db:
                # Check, lock, check again: another process may have applied it
                # between our read and our lock.
                if db.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                    continue
                step(db)
                db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", [name, now()])
                count = db.execute("SELECT count(*) FROM migrations").fetchone()[0]
                db.execute(f"PRAGMA user_version = {int(count)}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- runs

    def start_run(
        self,
        env: str,
        manifest: str,
        base_url: str,
        max_usd: Decimal | None,
        concurrency: int | None = None,
    ) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (env, manifest, base_url, started_at, max_usd, concurrency, "
                "pid) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [env, manifest, base_url, now(), _money(max_usd), concurrency, os.getpid()],
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ? WHERE id = ?",
                [now(), outcome, run_id],
            )

    def last_run(self, manifest: str, env: str | None = None) -> dict[str, Any] | None:
        sql = "SELECT * FROM runs WHERE manifest = ?"
        params: list[Any] = [manifest]
        if env is not None:
            sql += " AND env = ?"
            params.append(env)
        rows = list(self.db.query(sql + " ORDER BY id DESC LIMIT 1", params))
        return rows[0] if rows else None

    def was_simulated(self, manifest: str) -> bool | None:
        run = self.last_run(manifest)
        return None if run is None else run["env"] == "sim"

    # -- tasks: reading

    def task(self, env: str, key: str) -> TaskRow | None:
        rows = list(self.db.query("SELECT * FROM tasks WHERE env = ? AND key = ?", [env, key]))
        return TaskRow.from_row(rows[0]) if rows else None

    def tasks(
        self, env: str | None = None, manifest: str | None = None, keys: Iterable[str] | None = None
    ) -> list[TaskRow]:
        where, params = [], []
        if env is not None:
            where.append("env = ?")
            params.append(env)
        if manifest is not None:
            where.append("manifest = ?")
            params.append(manifest)
        # Only fixed column names are joined in; every value is a parameter.
        sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
        rows = [TaskRow.from_row(r) for r in self.db.query(sql + " ORDER BY rowid", params)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r.key in wanted]
        return rows

    def events(self, env: str, key: str) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT at, previous, status, detail, run_id FROM events "
                "WHERE env = ? AND key = ? ORDER BY id",
                [env, key],
            )
        )

    # -- tasks: writing (one transaction per step, event included)

    def ensure_tasks(self, env: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert planned tasks the ledger does not know yet; never touch known ones."""
        stamp = now()
        values = [
            [
                env,
                r["key"],
                r["manifest"],
                r["shot"],
                _json(list(r["shots"])),
                _json(r["variant"]),
                r["take"],
                r["model"],
                _json(r["input"]),
                r["price_class"],
                _money(r.get("seconds")),
                int(bool(r.get("upper_bound"))),
                str(r["estimate_local"]),
                r["estimate_source"],
                r["key"],
                stamp,
                stamp,
            ]
            for r in rows
        ]
        with self.transaction() as db:
            db.conn.executemany(
                "INSERT OR IGNORE INTO tasks (env, key, manifest, shot, shots, variant, take, "
                "model, input, price_class, seconds, upper_bound, estimate_local, "
                "estimate_source, status, submit_key, created_at, updated_at) VALUES (?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
                values,
            )

    def _transition(
        self,
        db: sqlite_utils.Database,
        env: str,
        key: str,
        *,
        run_id: int | None,
        previous: str | None,
        status: str,
        stamp: str,
        detail: Mapping[str, Any] | None,
    ) -> None:
        db.execute(
            "INSERT INTO events (env, key, run_id, at, previous, status, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [env, key, run_id, stamp, previous, status, _json(dict(detail)) if detail else None],
        )

    def record_intent(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        submit_key: str,
        attempt: int,
        run_id: int | None,
    ) -> None:
        """Committed before every POST: "this key is about to be submitted".

        A new attempt (`--retry-failed`) forgets the previous attempt's task
        id, costs and error in the same transaction, so the row never mixes two
        attempts; the events keep the history. What the superseded attempt
        committed us to spend (its actual cost, else the estimate it was
        given) moves into `cost_prior`: a retry never erases money spent.
        """
        stamp = now()
        with self.transaction() as db:
            if attempt > 0 and previous in FAILED:
                rows = list(db.query("SELECT * FROM tasks WHERE env = ? AND key = ?", [env, key]))
                prior = Decimal(0)
                if rows:
                    old = TaskRow.from_row(rows[0])
                    prior = old.committed  # cost_prior + what the old attempt stands for
                db.execute(
                    "UPDATE tasks SET task_id = NULL, request_id = NULL, cost_estimate = "
                    "NULL, cost_actual = NULL, error = NULL, server_events = NULL, "
                    "started_at = NULL, finished_at = NULL, submitted_at = NULL, "
                    "cost_prior = ? WHERE env = ? AND key = ?",
                    [_money(prior) or "0", env, key],
                )
                db.execute("DELETE FROM outputs WHERE env = ? AND key = ?", [env, key])
            db.execute(
                "UPDATE tasks SET status = 'submitting', submit_key = ?, attempt = ?, "
                "submissions = submissions + 1, run_id = ?, updated_at = ? "
                "WHERE env = ? AND key = ?",
                [submit_key, attempt, run_id, stamp, env, key],
            )
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous=previous,
                status="submitting",
                stamp=stamp,
                detail={"submit_key": submit_key, "attempt": attempt},
            )

    def record_submitted(
        self,
        env: str,
        key: str,
        *,
        task_id: str,
        request_id: str | None,
        status: str,
        cost_estimate: Decimal | None,
        run_id: int | None,
    ) -> None:
        """Committed right after the POST returns: the task id, never to be lost."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = ?, task_id = ?, request_id = ?, "
                "cost_estimate = ?, submitted_at = coalesce(submitted_at, ?), "
                "updated_at = ? WHERE env = ? AND key = ?",
                [status, task_id, request_id, _money(cost_estimate), stamp, stamp, env, key],
            )
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous="submitting",
                status=status,
                stamp=stamp,
                detail={
                    "task_id": task_id,
                    "request_id": request_id,
                    "cost_estimate": _money(cost_estimate),
                },
            )

    def record_progress(
        self, env: str, key: str, *, previous: str, status: str, polls: int, run_id: int | None
    ) -> None:
        """A non-terminal status change seen while polling (queued -> processing)."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = ?, polls = ?, started_at = coalesce("
                "started_at, ?), updated_at = ? WHERE env = ? AND key = ?",
                [status, polls, stamp if status == "processing" else None, stamp, env, key],
            )
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous=previous,
                status=status,
                stamp=stamp,
                detail=None,
            )

    def record_finished(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        status: str,
        cost_estimate: Decimal | None,
        cost_actual: Decimal | None,
        error: str | None,
        urls: Sequence[str],
        polls: int,
        latency: tuple[str, float] | None,
        run_id: int | None,
        task_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """A terminal status with everything learned from it, in one transaction.

        The output URLs are committed with the status, so a task is never
        `succeeded` without them. `task_id` is given when the POST itself
        answered with a terminal status: then this is the "right after" write.
        """
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = ?, task_id = coalesce(?, task_id), "
                "request_id = coalesce(?, request_id), "
                "cost_estimate = coalesce(?, cost_estimate), cost_actual = ?, error = ?, "
                "polls = ?, submitted_at = coalesce(submitted_at, ?), finished_at = ?, "
                "updated_at = ? WHERE env = ? AND key = ?",
                [
                    status,
                    task_id,
                    request_id,
                    _money(cost_estimate),
                    _money(cost_actual),
                    error,
                    polls,
                    stamp,
                    stamp,
                    stamp,
                    env,
                    key,
                ],
            )
            for idx, url in enumerate(urls):
                db.execute(
                    "INSERT INTO outputs (env, key, idx, url) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (env, key, idx) DO UPDATE SET url = excluded.url",
                    [env, key, idx, url],
                )
            if latency is not None:
                db.execute(
                    "INSERT INTO latencies (env, latency_class, seconds, observed_at) "
                    "VALUES (?, ?, ?, ?)",
                    [env, latency[0], latency[1], stamp],
                )
            detail: dict[str, Any] = {"cost_actual": _money(cost_actual)}
            if task_id is not None:
                detail["task_id"] = task_id
            if error:
                detail["error"] = error
            if urls:
                detail["outputs"] = len(urls)
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous=previous,
                status=status,
                stamp=stamp,
                detail=detail,
            )

    def record_rejected(
        self, env: str, key: str, *, error: str, http_status: int | None, run_id: int | None
    ) -> None:
        """The server refused the POST (a 4xx): nothing was created, nothing charged."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = 'rejected', error = ?, finished_at = ?, "
                "updated_at = ? WHERE env = ? AND key = ?",
                [error, stamp, stamp, env, key],
            )
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous="submitting",
                status="rejected",
                stamp=stamp,
                detail={"error": error, "http_status": http_status},
            )

    def record_refused_resend(
        self,
        env: str,
        key: str,
        *,
        error: str,
        http_status: int | None,
        estimate: Decimal,
        run_id: int | None,
    ) -> None:
        """A 4xx to a POST that may have reached the server before (a re-send).

        The first send may have created and charged the task: it ends `failed`,
        never `rejected`, and keeps `estimate` (ours, when the server gave none)
        as committed spend.
        """
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET status = 'failed', error = ?, "
                "cost_estimate = coalesce(cost_estimate, ?), finished_at = ?, "
                "updated_at = ? WHERE env = ? AND key = ?",
                [error, _money(estimate), stamp, stamp, env, key],
            )
            self._transition(
                db,
                env,
                key,
                run_id=run_id,
                previous="submitting",
                status="failed",
                stamp=stamp,
                detail={
                    "error": error,
                    "http_status": http_status,
                    "maybe_sent": True,
                    "cost_estimate_local": _money(estimate),
                },
            )

    def record_server_events(self, env: str, key: str, server_events: Any) -> None:
        """The server's event history of a failed task, fetched once and kept."""
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET server_events = ?, updated_at = ? WHERE env = ? AND key = ?",
                [_json(server_events), now(), env, key],
            )

    # -- outputs

    def record_output_url(self, env: str, key: str, idx: int, url: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO outputs (env, key, idx, url) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (env, key, idx) DO UPDATE SET url = excluded.url",
                [env, key, idx, url],
            )

    def record_download(  # noqa: PLR0917 - the downloader calls it positionally
        self,
        env: str,
        key: str,
        idx: int,
        path: str,
        sha256: str,
        size: int,
        file_stat: str | None = None,
    ) -> None:
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE outputs SET path = ?, sha256 = ?, bytes = ?, downloaded_at = ?, "
                "file_stat = ?, verified_at = ? WHERE env = ? AND key = ? AND idx = ?",
                [path, sha256, size, stamp, file_stat, stamp, env, key, idx],
            )

    def record_verified(self, env: str, key: str, idx: int, file_stat: str) -> None:
        """A recorded file was hashed again and still matches: remember how it looks now."""
        with self.transaction() as db:
            db.execute(
                "UPDATE outputs SET file_stat = ?, verified_at = ? "
                "WHERE env = ? AND key = ? AND idx = ?",
                [file_stat, now(), env, key, idx],
            )

    def outputs(self, env: str, key: str) -> list[Output]:
        return [
            Output(**r)
            for r in self.db.query(
                "SELECT idx, url, path, sha256, bytes, downloaded_at, file_stat, verified_at "
                "FROM outputs "
                "WHERE env = ? AND key = ? ORDER BY idx",
                [env, key],
            )
        ]

    def undownloaded(self, env: str, manifest: str) -> set[str]:
        """Keys of succeeded tasks of a manifest with an output not downloaded yet."""
        return {
            r["key"]
            for r in self.db.query(
                "SELECT DISTINCT o.key FROM outputs o JOIN tasks t ON t.env = o.env AND "
                "t.key = o.key WHERE o.env = ? AND t.manifest = ? AND t.status = 'succeeded' "
                "AND o.downloaded_at IS NULL",
                [env, manifest],
            )
        }

    # -- what the server taught us

    def learn_rate(self, env: str, price_class: str, usd_per_second: Decimal) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rates (env, price_class, usd_per_second, learned_at) VALUES "
                "(?, ?, ?, ?) ON CONFLICT (env, price_class) DO UPDATE SET "
                "usd_per_second = excluded.usd_per_second, learned_at = excluded.learned_at,"
                " samples = samples + 1",
                [env, price_class, str(usd_per_second), now()],
            )

    def rates(self, env: str) -> dict[str, Decimal]:
        return {
            r["price_class"]: Decimal(r["usd_per_second"])
            for r in self.db.query(
                "SELECT price_class, usd_per_second FROM rates WHERE env = ?", [env]
            )
        }

    def latencies(self, env: str, limit_per_class: int = 200) -> dict[str, list[float]]:
        """The most recent task latencies (seconds) per latency class, newest first."""
        found: dict[str, list[float]] = {}
        for row in self.db.query(
            "SELECT latency_class, seconds FROM (SELECT latency_class, seconds, "
            "row_number() OVER (PARTITION BY latency_class ORDER BY id DESC) AS n "
            "FROM latencies WHERE env = ?) WHERE n <= ?",
            [env, limit_per_class],
        ):
            found.setdefault(row["latency_class"], []).append(row["seconds"])
        return found


# ------------------------------------------- read-only helpers for other commands


def _existing(state_dir: Path) -> Path | None:
    path = state_dir / FILE_NAME
    return path if path.is_file() else None


def learned_rates(state_dir: Path, env: str) -> dict[str, Decimal]:
    if _existing(state_dir) is None:
        return {}
    with Ledger(state_dir) as ledger:
        return ledger.rates(env)


def plan_states(state_dir: Path, manifest: str, keys: list[str], env: str) -> dict[str, str]:
    """Each key's plan state: `new`, `in_flight`, `done` or `failed`."""
    if _existing(state_dir) is None:
        return {}
    with Ledger(state_dir) as ledger:
        wanted = set(keys)
        return {row.key: row.plan_state for row in ledger.tasks(env, manifest) if row.key in wanted}
