"""The ledger in a PostgreSQL database that a fleet of workers shares: `PostgresLedger`.

Owns: implementing the `Ledger` protocol on a `postgresql://` URL through
psycopg 3, with the statements of `queries.sql` (those of `queries_pg.sql`
replacing the few that differ), its own named migrations, and keeping the
URL's password out of every message. Must not: talk to anything but its
database, decide anything (it records), or receive the API key.

Every write is one transaction (autocommit off only inside `with
transaction()`), so a worker that dies mid-step (`kill -9`, a lost network)
leaves the whole step or none of it: PostgreSQL rolls back what a closed
connection did not commit. The cap holds across the fleet as the SQLite
ledger's write lock holds it across processes: a step of intents
(`record_intents`) takes a transaction-scoped advisory lock on each manifest
it touches, sums what every worker has committed, and records each intent only
if it fits, before the locks are let go at commit. The step's own rows are
locked (`FOR UPDATE`, in key order) for the step, so two workers never both
move a task on from the status they read.

Values are stored as SQLite stores them (decimal and JSON text, ISO times),
so `codec.task_row` reads either backend's rows and reports are the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from mvbatch.errors import ConfigError
from mvbatch.ledger.connection import now
from mvbatch.ledger.queries import QUERIES, parse
from mvbatch.ledger.steps import SqlLedger

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT = 10  # seconds to reach the server before saying it cannot be reached
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def is_url(location: str) -> bool:
    """Whether a ledger location names a PostgreSQL database (else it is a SQLite file)."""
    return location.startswith(SCHEMES)


def shown(url: str) -> str:
    """The URL as it may be printed or logged: its password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _psycopg_form(statement: str) -> str:
    return _PARAMETER.sub(r"%(\1)s", statement.replace("%", "%%"))


def _load_queries() -> dict[str, str]:
    overrides = parse(files("mvbatch.ledger").joinpath("queries_pg.sql").read_text("utf-8"))
    return {name: _psycopg_form(sql) for name, sql in {**QUERIES, **overrides}.items()}


Q = _load_queries()

# The schema, as named migrations applied once each, in order, each in its own
# transaction with the row that says it ran. The first holds everything the
# SQLite ledger's m001-m004 built (no PostgreSQL ledger predates them); never
# edit a released one, add a new one.
MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "pg001_initial",
        (
            """CREATE TABLE runs (
                id BIGSERIAL PRIMARY KEY,
                env TEXT NOT NULL,
                manifest TEXT NOT NULL,
                base_url TEXT NOT NULL,
                started_at TEXT NOT NULL,
                finished_at TEXT,
                outcome TEXT,
                max_usd TEXT,
                concurrency INTEGER,
                pid INTEGER
            )""",
            """CREATE TABLE tasks (
                seq BIGSERIAL NOT NULL,
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
                run_id BIGINT REFERENCES runs (id),
                created_at TEXT NOT NULL,
                submitted_at TEXT,
                started_at TEXT,
                finished_at TEXT,
                updated_at TEXT NOT NULL,
                cost_reserved TEXT,
                rerolled_from TEXT,
                PRIMARY KEY (env, key)
            )""",
            "CREATE INDEX tasks_manifest ON tasks (env, manifest, status)",
            """CREATE TABLE events (
                id BIGSERIAL PRIMARY KEY,
                env TEXT NOT NULL,
                key TEXT NOT NULL,
                run_id BIGINT,
                at TEXT NOT NULL,
                previous TEXT,
                status TEXT NOT NULL,
                detail TEXT
            )""",
            "CREATE INDEX events_task ON events (env, key)",
            """CREATE TABLE outputs (
                env TEXT NOT NULL,
                key TEXT NOT NULL,
                idx INTEGER NOT NULL,
                url TEXT NOT NULL,
                path TEXT,
                sha256 TEXT,
                bytes BIGINT,
                downloaded_at TEXT,
                file_stat TEXT,
                verified_at TEXT,
                PRIMARY KEY (env, key, idx)
            )""",
            """CREATE TABLE rates (
                env TEXT NOT NULL,
                price_class TEXT NOT NULL,
                usd_per_second TEXT NOT NULL,
                learned_at TEXT NOT NULL,
                samples INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (env, price_class)
            )""",
            """CREATE TABLE latencies (
                id BIGSERIAL PRIMARY KEY,
                env TEXT NOT NULL,
                latency_class TEXT NOT NULL,
                seconds DOUBLE PRECISION NOT NULL,
                observed_at TEXT NOT NULL
            )""",
            "CREATE INDEX latencies_class ON latencies (env, latency_class)",
            """CREATE TABLE verdicts (
                id BIGSERIAL PRIMARY KEY,
                env TEXT NOT NULL,
                key TEXT NOT NULL,
                at TEXT NOT NULL,
                verdict TEXT,
                note TEXT
            )""",
            "CREATE INDEX verdicts_task ON verdicts (env, key, id)",
            # The event log and the verdicts are evidence: the database itself
            # refuses to rewrite them, whoever connects.
            """CREATE FUNCTION mvbatch_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$""",
            """CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
                FOR EACH ROW EXECUTE FUNCTION mvbatch_append_only()""",
            """CREATE TRIGGER verdicts_append_only BEFORE UPDATE OR DELETE ON verdicts
                FOR EACH ROW EXECUTE FUNCTION mvbatch_append_only()""",
        ),
    ),
    (
        "pg002_claims",
        (
            "ALTER TABLE tasks ADD COLUMN claimed_by TEXT",
            "ALTER TABLE tasks ADD COLUMN lease_until DOUBLE PRECISION",
        ),
    ),
]

CREATE_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS migrations (id BIGSERIAL PRIMARY KEY, "
    "name TEXT UNIQUE NOT NULL, applied_at TEXT NOT NULL)"
)


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """A connection to the ledger's database; `ConfigError` (password hidden) if none."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        return psycopg.connect(
            url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="mvbatch",
        )
    except psycopg.Error as error:
        raise ConfigError(
            f"cannot open the ledger at {shown(url)}: {_without_secret(str(error), url)}"
        ) from None


def _without_secret(text: str, url: str) -> str:
    password = urlsplit(url).password if is_url(url) else None
    first_line = text.strip().splitlines()[0] if text.strip() else "no reason given"
    return first_line.replace(password, "***") if password else first_line


def migrate(conn: psycopg.Connection[dict[str, Any]]) -> None:
    """Apply every pending migration, each once across the fleet (an advisory lock)."""
    for name, statements in MIGRATIONS:
        with conn.transaction():
            conn.execute(Q["lock_migrations"])
            conn.execute(CREATE_MIGRATIONS)
            if conn.execute(Q["migration_is_applied"], {"name": name}).fetchone():
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(Q["record_migration"], {"name": name, "applied_at": now()})


def applied(conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
    """Names of the migrations applied to this database, oldest first."""
    found = conn.execute("SELECT to_regclass('migrations') AS t").fetchone()
    if found is None or found["t"] is None:
        return []
    return [row["name"] for row in conn.execute(Q["applied_migrations"])]


def _first(db: psycopg.Connection[dict[str, Any]], sql: str, values: Mapping[str, Any]) -> Any:
    """The first column of the first row a query returns."""
    found = db.execute(sql, dict(values)).fetchone()
    assert found is not None
    return next(iter(found.values()))


class PostgresLedger(SqlLedger):
    """The `Ledger` on a PostgreSQL database; opening it applies pending migrations.
    The steps themselves are `SqlLedger`'s, over the primitives below."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(url)
        try:
            migrate(self.conn)
        except Exception:
            self.conn.close()
            raise

    def __repr__(self) -> str:  # never the password, whatever prints this object
        return f"PostgresLedger({shown(self.url)!r})"

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One step, all or nothing; a lost database is `ConfigError`, password hidden."""
        with self._reachable(), self.conn.transaction():
            yield self.conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A connection lost mid-run (a network gone, the server restarted) is said plainly:
        this worker stops (exit 4) and, its lease run out, others take its tasks over."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as error:
            raise ConfigError(
                f"lost the ledger at {shown(self.url)}: {_without_secret(str(error), self.url)}",
                hint="what was recorded is safe; run the same command again once it is back",
            ) from None

    def integrity_check(self) -> str:
        return "ok"

    # -- the primitives `SqlLedger` runs on

    def _run(
        self, db: psycopg.Connection[dict[str, Any]], name: str, values: Mapping[str, Any]
    ) -> int:
        return int(db.execute(Q[name], dict(values)).rowcount)

    def _all(
        self,
        db: psycopg.Connection[dict[str, Any]] | None,
        name: str,
        values: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        if db is not None:
            return db.execute(Q[name], dict(values)).fetchall()
        with self._reachable():
            return self.conn.execute(Q[name], dict(values)).fetchall()

    def _each(self, name: str, values: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        # A client-side cursor: libpq holds the result as compact text, and a
        # row becomes a dict only as it is read.
        with self._reachable():
            yield from self.conn.execute(Q[name], dict(values))

    def _many(
        self,
        db: psycopg.Connection[dict[str, Any]],
        name: str,
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        if rows:  # psycopg refuses an empty executemany
            with db.cursor() as cursor:
                cursor.executemany(Q[name], rows)

    def _clock(self, db: psycopg.Connection[dict[str, Any]]) -> float:
        # The database's clock, not this machine's: leases hold whatever the
        # workers' clocks say.
        return float(_first(db, Q["clock"], {}))

    def _new_run(self, db: psycopg.Connection[dict[str, Any]], values: Mapping[str, Any]) -> int:
        return int(_first(db, Q["start_run"], values))

    def _lock_manifests(
        self, db: psycopg.Connection[dict[str, Any]], values: Mapping[str, Any]
    ) -> None:
        # Always the manifests' locks before the rows' (`intent_rows` locks them
        # in key order), in every step that takes both: two workers never wait
        # on each other in opposite orders. The caps stay locked until commit.
        for found in db.execute(Q["manifests_of_keys"], dict(values)).fetchall():
            db.execute(Q["lock_manifest"], {"env": values["env"], "manifest": found["manifest"]})
