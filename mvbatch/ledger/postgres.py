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

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit, urlunsplit

from mvbatch.errors import ConfigError
from mvbatch.ledger.codec import as_json, money, task_row
from mvbatch.ledger.codec import committed as group_committed
from mvbatch.ledger.connection import now
from mvbatch.ledger.queries import QUERIES, parse
from mvbatch.ledger.reserve import Step, distinct_keys, intent_writes, standing
from mvbatch.ledger.rows import (
    VERDICTS,
    Intent,
    Output,
    Reservation,
    TaskRow,
    Verdict,
)

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


class PostgresLedger:
    """The `Ledger` on a PostgreSQL database; opening it applies pending migrations."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One step, all or nothing; a lost database is `ConfigError`, password hidden."""
        with self._reachable(), self.conn.transaction():
            yield self.conn

    def _rows(self, name: str, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        with self._reachable():
            return self.conn.execute(Q[name], dict(values)).fetchall()

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

    # -- runs

    def start_run(
        self,
        env: str,
        manifest: str,
        base_url: str,
        max_usd: Decimal | None,
        concurrency: int | None = None,
    ) -> int:
        values = {
            "env": env,
            "manifest": manifest,
            "base_url": base_url,
            "started_at": now(),
            "max_usd": money(max_usd),
            "concurrency": concurrency,
            "pid": os.getpid(),
        }
        with self.transaction() as db:
            found = db.execute(Q["start_run"], values).fetchone()
        assert found is not None
        return int(found["id"])

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                Q["finish_run"], {"finished_at": now(), "outcome": outcome, "run_id": run_id}
            )

    def last_run(self, manifest: str) -> dict[str, Any] | None:
        rows = self._rows("last_run", {"manifest": manifest})
        return rows[0] if rows else None

    # -- tasks: reading

    def task(self, env: str, key: str) -> TaskRow | None:
        rows = self._rows("task", {"env": env, "key": key})
        return task_row(rows[0]) if rows else None

    def tasks(self, env: str, manifest: str | None = None) -> list[TaskRow]:
        if manifest is None:
            found = self._rows("tasks_of_env", {"env": env})
        else:
            found = self._rows("tasks_of_manifest", {"env": env, "manifest": manifest})
        return [task_row(r) for r in found]

    def events(self, env: str, key: str) -> list[dict[str, Any]]:
        return self._rows("events", {"env": env, "key": key})

    # -- tasks: writing (one transaction per step, event included)

    def ensure_tasks(self, env: str, rows: Iterable[Mapping[str, Any]]) -> None:
        stamp = now()
        values = [
            {
                "env": env,
                "key": r["key"],
                "manifest": r["manifest"],
                "shot": r["shot"],
                "shots": as_json(list(r["shots"])),
                "variant": as_json(r["variant"]),
                "take": r["take"],
                "model": r["model"],
                "input": as_json(r["input"]),
                "price_class": r["price_class"],
                "seconds": money(r.get("seconds")),
                "upper_bound": int(bool(r.get("upper_bound"))),
                "estimate_local": str(r["estimate_local"]),
                "estimate_source": r["estimate_source"],
                "rerolled_from": r.get("rerolled_from"),
                "stamp": stamp,
            }
            for r in rows
        ]
        if not values:
            return
        with self.transaction() as db, db.cursor() as cursor:
            cursor.executemany(Q["ensure_task"], values)

    def _transition(
        self,
        db: psycopg.Connection[dict[str, Any]],
        query: str,
        values: dict[str, Any],
        *,
        previous: str,
        status: str,
        run_id: int | None,
        detail: Mapping[str, Any] | None,
    ) -> None:
        """Run the named status change (`values` has `env`, `key`, `stamp`) and log its event."""
        db.execute(Q[query], values)
        event = {
            "env": values["env"],
            "key": values["key"],
            "run_id": run_id,
            "at": values["stamp"],
            "previous": previous,
            "status": status,
            "detail": as_json(dict(detail)) if detail else None,
        }
        db.execute(Q["append_event"], event)

    def record_intent(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        submit_key: str,
        attempt: int,
        run_id: int | None,
        estimate: Decimal | None = None,
        cap: Decimal | None = None,
        worker: str | None = None,
        lease: float | None = None,
        in_flight_limit: int | None = None,
    ) -> Reservation:
        intent = Intent(key, previous, submit_key, attempt, estimate, in_flight_limit)
        return self.record_intents(
            env, [intent], run_id=run_id, cap=cap, worker=worker, lease=lease
        )[0]

    def record_intents(
        self,
        env: str,
        intents: Sequence[Intent],
        *,
        run_id: int | None,
        cap: Decimal | None = None,
        worker: str | None = None,
        lease: float | None = None,
    ) -> list[Reservation]:
        keys = distinct_keys(intents)
        if not keys:
            return []
        values = {"env": env, "keys": as_json(keys)}
        with self.transaction() as db:
            # Always the manifests' locks before the rows' (in key order), in
            # every step that takes both: two workers never wait on each other
            # in opposite orders. The caps stay locked until the step commits.
            for found in db.execute(Q["manifests_of_keys"], values).fetchall():
                db.execute(Q["lock_manifest"], {"env": env, "manifest": found["manifest"]})
            rows = {r["key"]: standing(r) for r in db.execute(Q["intent_rows"], values)}
            in_flight = {r.manifest: r.in_flight for r in rows.values()}

            def committed(manifest: str) -> Decimal:
                found = db.execute(
                    Q["committed_of_manifest"], {"env": env, "manifest": manifest}
                ).fetchall()
                return sum((group_committed(g) for g in found), Decimal(0))

            step = Step(cap, worker, self._clock(db), in_flight.__getitem__, committed)
            answers = [step.decide(rows.get(i.key), i) for i in intents]
            writes = intent_writes(
                env, intents, answers, rows, run_id, worker, step.clock, lease, now()
            )
            for forget in writes.forget:
                db.execute(Q["forget_attempt"], forget)
                db.execute(Q["forget_outputs"], {"env": env, "key": forget["key"]})
            with db.cursor() as cursor:
                if writes.changes:
                    cursor.executemany(Q["record_intent"], writes.changes)
                    cursor.executemany(Q["append_event"], writes.events)
            return answers

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
        answer = {
            "task_id": task_id,
            "request_id": request_id,
            "cost_estimate": money(cost_estimate),
        }
        with self.transaction() as db:
            self._transition(
                db,
                "record_submitted",
                {"env": env, "key": key, "status": status, **answer, "stamp": now()},
                previous="submitting",
                status=status,
                run_id=run_id,
                detail=answer,
            )

    def record_progress(
        self,
        env: str,
        key: str,
        *,
        previous: str,
        status: str,
        polls: int,
        run_id: int | None,
        server_status: str | None = None,
        error: str | None = None,
    ) -> None:
        stamp = now()
        started_at = stamp if status == "processing" else None
        values = {"env": env, "key": key, "status": status, "polls": polls, "stamp": stamp}
        unresolved = server_status is not None
        with self.transaction() as db:
            self._transition(
                db,
                "record_progress",
                {**values, "started_at": started_at, "error": error if unresolved else None},
                previous=previous,
                status=status,
                run_id=run_id,
                detail={"server_status": server_status, "error": error} if unresolved else None,
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
        stamp = now()
        task = {"env": env, "key": key}
        detail: dict[str, Any] = {"cost_actual": money(cost_actual)}
        if task_id is not None:
            detail["task_id"] = task_id
        if error:
            detail["error"] = error
        if urls:
            detail["outputs"] = len(urls)
        with self.transaction() as db:
            for idx, url in enumerate(urls):
                db.execute(Q["record_output_url"], {**task, "idx": idx, "url": url})
            if latency is not None:
                seconds = {"latency_class": latency[0], "seconds": latency[1]}
                db.execute(Q["record_latency"], {"env": env, **seconds, "observed_at": stamp})
            self._transition(
                db,
                "record_finished",
                {
                    **task,
                    "status": status,
                    "task_id": task_id,
                    "request_id": request_id,
                    "cost_estimate": money(cost_estimate),
                    "cost_actual": money(cost_actual),
                    "error": error,
                    "polls": polls,
                    "stamp": stamp,
                },
                previous=previous,
                status=status,
                run_id=run_id,
                detail=detail,
            )

    def record_rejected(
        self, env: str, key: str, *, error: str, http_status: int | None, run_id: int | None
    ) -> None:
        with self.transaction() as db:
            self._transition(
                db,
                "record_rejected",
                {"env": env, "key": key, "error": error, "stamp": now()},
                previous="submitting",
                status="rejected",
                run_id=run_id,
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
        values = {"env": env, "key": key, "error": error, "estimate": money(estimate)}
        with self.transaction() as db:
            self._transition(
                db,
                "record_refused_resend",
                {**values, "stamp": now()},
                previous="submitting",
                status="failed",
                run_id=run_id,
                detail={
                    "error": error,
                    "http_status": http_status,
                    "maybe_sent": True,
                    "cost_estimate_local": money(estimate),
                },
            )

    def record_server_events(self, env: str, key: str, server_events: Any) -> None:
        with self.transaction() as db:
            db.execute(
                Q["record_server_events"],
                {"env": env, "key": key, "server_events": as_json(server_events), "stamp": now()},
            )

    # -- outputs

    def record_output_url(self, env: str, key: str, idx: int, url: str) -> None:
        with self.transaction() as db:
            db.execute(Q["record_output_url"], {"env": env, "key": key, "idx": idx, "url": url})

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
        values = {
            "env": env,
            "key": key,
            "idx": idx,
            "path": path,
            "sha256": sha256,
            "bytes": size,
            "file_stat": file_stat,
            "stamp": now(),
        }
        with self.transaction() as db:
            db.execute(Q["record_download"], values)

    def record_verified(self, env: str, key: str, idx: int, file_stat: str) -> None:
        values = {"env": env, "key": key, "idx": idx, "file_stat": file_stat, "stamp": now()}
        with self.transaction() as db:
            db.execute(Q["record_verified"], values)

    def outputs(self, env: str, key: str) -> list[Output]:
        return [Output(**r) for r in self._rows("outputs", {"env": env, "key": key})]

    def undownloaded(self, env: str, manifest: str) -> set[str]:
        return {r["key"] for r in self._rows("undownloaded", {"env": env, "manifest": manifest})}

    # -- claims: which worker holds a task in flight

    @staticmethod
    def _clock(db: psycopg.Connection[dict[str, Any]]) -> float:
        # The database's clock, not this machine's: leases hold whatever the
        # workers' clocks say.
        return float(_first(db, Q["clock"], {}))

    def claim(self, env: str, key: str, worker: str, lease: float) -> TaskRow | None:
        with self.transaction() as db:
            clock = self._clock(db)
            values = {"env": env, "key": key, "worker": worker, "now": clock}
            taken = db.execute(Q["claim"], {**values, "lease_until": clock + lease}).rowcount
            if not taken:
                return None
            found = db.execute(Q["task"], {"env": env, "key": key}).fetchone()
            return task_row(found) if found is not None else None

    def abandoned(self, env: str, manifest: str, worker: str) -> list[TaskRow]:
        with self.transaction() as db:
            values = {"env": env, "manifest": manifest, "worker": worker, "now": self._clock(db)}
            return [task_row(r) for r in db.execute(Q["abandoned"], values).fetchall()]

    def renew(self, env: str, worker: str, lease: float) -> int:
        with self.transaction() as db:
            values = {"env": env, "worker": worker, "lease_until": self._clock(db) + lease}
            return int(db.execute(Q["renew"], values).rowcount)

    def release(self, env: str, worker: str) -> int:
        with self.transaction() as db:
            return int(db.execute(Q["release"], {"env": env, "worker": worker}).rowcount)

    # -- what a person decided

    def record_verdict(self, env: str, key: str, verdict: str | None, note: str | None) -> Verdict:
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"a verdict is one of {', '.join(VERDICTS)} or none, not {verdict!r}")
        stamp = now()
        row = {"env": env, "key": key, "at": stamp, "verdict": verdict, "note": note or None}
        with self.transaction() as db:
            if db.execute(Q["task"], {"env": env, "key": key}).fetchone() is None:
                raise KeyError(key)
            db.execute(Q["append_verdict"], row)
        return Verdict(key, stamp, verdict, row["note"])

    def verdicts(self, env: str, manifest: str) -> dict[str, Verdict]:
        found = self._rows("latest_verdicts", {"env": env, "manifest": manifest})
        return {r["key"]: Verdict(**r) for r in found}

    def verdict_history(self, env: str, key: str) -> list[Verdict]:
        return [Verdict(**r) for r in self._rows("verdict_history", {"env": env, "key": key})]

    # -- what the server taught us

    def record_learned_rate(self, env: str, price_class: str, usd_per_second: Decimal) -> None:
        values = {
            "env": env,
            "price_class": price_class,
            "usd_per_second": str(usd_per_second),
            "learned_at": now(),
        }
        with self.transaction() as db:
            db.execute(Q["record_learned_rate"], values)

    def learned_rates(self, env: str) -> dict[str, Decimal]:
        return {
            r["price_class"]: Decimal(r["usd_per_second"])
            for r in self._rows("learned_rates", {"env": env})
        }

    def latencies(self, env: str, limit_per_class: int = 200) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        values = {"env": env, "limit_per_class": limit_per_class}
        for row in self._rows("latencies", values):
            found.setdefault(row["latency_class"], []).append(float(row["seconds"]))
        return found
