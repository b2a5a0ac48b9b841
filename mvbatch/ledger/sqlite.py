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

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from mvbatch.ledger import connection, migrations
from mvbatch.ledger.codec import as_json, money, task_row
from mvbatch.ledger.codec import committed as group_committed
from mvbatch.ledger.connection import FILE_NAME, now
from mvbatch.ledger.queries import QUERIES as Q
from mvbatch.ledger.reserve import Step, distinct_keys, intent_writes, standing
from mvbatch.ledger.rows import (
    VERDICTS,
    Intent,
    Output,
    Reservation,
    TaskRow,
    Verdict,
)

if TYPE_CHECKING:  # imported where a database is opened: start-up is quicker
    import sqlite_utils


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """A cursor's rows as dicts by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _query(db: sqlite_utils.Database, sql: str, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows a read returns, as dicts. (sqlite-utils' `query` wraps each read in a
    savepoint, in case it is not a read: two more statements per read, for nothing.)"""
    return _dicts(db.conn.execute(sql, dict(values)))


class SqliteLedger:
    """The ledger file, opened (and migrated) for one process. Implements `Ledger`."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One step of raw SQL, all or nothing (tests use it to stage a crash)."""
        with connection.transaction(self.db) as db:
            yield db

    def integrity_check(self) -> str:
        """SQLite's own check of the file: "ok", or what is broken."""
        return str(self.db.execute(Q["integrity_check"]).fetchone()[0])

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
                Q["start_run"],
                {
                    "env": env,
                    "manifest": manifest,
                    "base_url": base_url,
                    "started_at": now(),
                    "max_usd": money(max_usd),
                    "concurrency": concurrency,
                    "pid": os.getpid(),
                },
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                Q["finish_run"], {"finished_at": now(), "outcome": outcome, "run_id": run_id}
            )

    def last_run(self, manifest: str) -> dict[str, Any] | None:
        rows = list(_query(self.db, Q["last_run"], {"manifest": manifest}))
        return rows[0] if rows else None

    # -- tasks: reading

    def task(self, env: str, key: str) -> TaskRow | None:
        rows = list(_query(self.db, Q["task"], {"env": env, "key": key}))
        return task_row(rows[0]) if rows else None

    def tasks(self, env: str, manifest: str | None = None) -> list[TaskRow]:
        if manifest is None:
            found = _query(self.db, Q["tasks_of_env"], {"env": env})
        else:
            found = _query(self.db, Q["tasks_of_manifest"], {"env": env, "manifest": manifest})
        return [task_row(r) for r in found]

    def events(self, env: str, key: str) -> list[dict[str, Any]]:
        return list(_query(self.db, Q["events"], {"env": env, "key": key}))

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
        with self.transaction() as db:
            db.conn.executemany(Q["ensure_task"], values)

    def _transition(
        self,
        db: sqlite_utils.Database,
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
        with self.transaction() as db:
            # The write lock is held from here: no other process can commit
            # spend between the sums and the intents (check, lock, check again).
            found = _query(db, Q["intent_rows"], {"env": env, "keys": as_json(keys)})
            rows = {r["key"]: standing(r) for r in found}
            in_flight = {r.manifest: r.in_flight for r in rows.values()}

            def committed(manifest: str) -> Decimal:
                values = {"env": env, "manifest": manifest}
                groups = _query(db, Q["committed_of_manifest"], values)
                return sum((group_committed(g) for g in groups), Decimal(0))

            step = Step(cap, worker, self._clock(db), in_flight.__getitem__, committed)
            answers = [step.decide(rows.get(i.key), i) for i in intents]
            writes = intent_writes(
                env, intents, answers, rows, run_id, worker, step.clock, lease, now()
            )
            # Every read is done: only now is anything written, so each intent
            # was decided on the ledger as it stood plus the step's own grants.
            for forget in writes.forget:
                db.execute(Q["forget_attempt"], forget)
                db.execute(Q["forget_outputs"], {"env": env, "key": forget["key"]})
            db.conn.executemany(Q["record_intent"], writes.changes)
            db.conn.executemany(Q["append_event"], writes.events)
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
        with self.transaction() as db:
            db.execute(
                Q["record_download"],
                {
                    "env": env,
                    "key": key,
                    "idx": idx,
                    "path": path,
                    "sha256": sha256,
                    "bytes": size,
                    "file_stat": file_stat,
                    "stamp": now(),
                },
            )

    def record_verified(self, env: str, key: str, idx: int, file_stat: str) -> None:
        with self.transaction() as db:
            db.execute(
                Q["record_verified"],
                {"env": env, "key": key, "idx": idx, "file_stat": file_stat, "stamp": now()},
            )

    def outputs(self, env: str, key: str) -> list[Output]:
        return [Output(**r) for r in _query(self.db, Q["outputs"], {"env": env, "key": key})]

    def undownloaded(self, env: str, manifest: str) -> set[str]:
        return {
            r["key"] for r in _query(self.db, Q["undownloaded"], {"env": env, "manifest": manifest})
        }

    # -- claims: which worker holds a task in flight

    @staticmethod
    def _clock(_db: sqlite_utils.Database) -> float:
        # One machine, one clock: the processes on this file share it.
        return time.time()

    def claim(self, env: str, key: str, worker: str, lease: float) -> TaskRow | None:
        with self.transaction() as db:
            clock = self._clock(db)
            values = {"env": env, "key": key, "worker": worker, "now": clock}
            taken = db.execute(Q["claim"], {**values, "lease_until": clock + lease}).rowcount
            if not taken:
                return None
            return task_row(next(iter(_query(db, Q["task"], {"env": env, "key": key}))))

    def abandoned(self, env: str, manifest: str, worker: str) -> list[TaskRow]:
        values = {"env": env, "manifest": manifest, "worker": worker, "now": time.time()}
        return [task_row(r) for r in _query(self.db, Q["abandoned"], values)]

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
            if not db.execute(Q["task"], {"env": env, "key": key}).fetchone():
                raise KeyError(key)
            db.execute(Q["append_verdict"], row)
        return Verdict(key, stamp, verdict, row["note"])

    def verdicts(self, env: str, manifest: str) -> dict[str, Verdict]:
        found = _query(self.db, Q["latest_verdicts"], {"env": env, "manifest": manifest})
        return {r["key"]: Verdict(**r) for r in found}

    def verdict_history(self, env: str, key: str) -> list[Verdict]:
        return [
            Verdict(**r) for r in _query(self.db, Q["verdict_history"], {"env": env, "key": key})
        ]

    # -- what the server taught us

    def record_learned_rate(self, env: str, price_class: str, usd_per_second: Decimal) -> None:
        with self.transaction() as db:
            db.execute(
                Q["record_learned_rate"],
                {
                    "env": env,
                    "price_class": price_class,
                    "usd_per_second": str(usd_per_second),
                    "learned_at": now(),
                },
            )

    def learned_rates(self, env: str) -> dict[str, Decimal]:
        return {
            r["price_class"]: Decimal(r["usd_per_second"])
            for r in _query(self.db, Q["learned_rates"], {"env": env})
        }

    def latencies(self, env: str, limit_per_class: int = 200) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for row in _query(
            self.db, Q["latencies"], {"env": env, "limit_per_class": limit_per_class}
        ):
            found.setdefault(row["latency_class"], []).append(row["seconds"])
        return found
