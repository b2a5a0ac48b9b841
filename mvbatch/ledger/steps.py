"""What both SQL backends of the ledger do alike: `SqlLedger`, every step of the protocol.

Owns: the `Ledger` protocol's operations written once, over named statements
(`queries.sql`) and a few primitives each backend supplies: a transaction,
running a statement (its row count), reading rows as dicts (all at once, or
one at a time for the large reads), running one
statement for many rows, the clock leases are measured on, a run's new id, and
the locks a step of intents takes before it reads. Must not: open a database,
name one, or hold SQL of its own.

`SqliteLedger` (`sqlite.py`) and `PostgresLedger` (`postgres.py`) differ only
in those primitives, their migrations and their connection: a change of what
a step records is made here, once, for both.
"""

from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Self

from mvbatch.ledger.codec import Shared, as_json, money, task_row
from mvbatch.ledger.codec import committed as group_committed
from mvbatch.ledger.connection import now
from mvbatch.ledger.reserve import Step, distinct_keys, intent_writes, standing
from mvbatch.ledger.rows import (
    VERDICTS,
    Intent,
    Output,
    Reservation,
    TaskRow,
    Verdict,
)

# Rows of `ensure_tasks` a statement is run for at a time.
ENSURE_BATCH = 2000


class SqlLedger(ABC):
    """The protocol over named statements; a backend supplies the primitives below."""

    # -- the primitives (each backend's own)

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """One step, all or nothing; yields the handle the primitives take."""

    @abstractmethod
    def _run(self, db: Any, name: str, values: Mapping[str, Any]) -> int:
        """Run the named statement in step `db`; the rows it changed."""

    @abstractmethod
    def _all(self, db: Any | None, name: str, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows the named read returns, as dicts; `db` None: outside any step."""

    @abstractmethod
    def _each(self, name: str, values: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        """The rows of the named read, outside any step, one at a time: a read of
        100,000 tasks never holds them all as dicts at once."""

    @abstractmethod
    def _many(self, db: Any, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the named statement once per row, in step `db`."""

    @abstractmethod
    def _clock(self, db: Any) -> float:
        """Now, in seconds since the epoch, on the clock every worker's leases are read on."""

    @abstractmethod
    def _new_run(self, db: Any, values: Mapping[str, Any]) -> int:
        """Insert the run (`start_run`) and return its id."""

    @abstractmethod
    def _lock_manifests(self, db: Any, values: Mapping[str, Any]) -> None:
        """Before a step of intents reads (`values`: env and keys): hold their manifests'
        caps until the step commits."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            return self._new_run(db, values)

    def finish_run(self, run_id: int, outcome: str) -> None:
        with self.transaction() as db:
            self._run(
                db, "finish_run", {"finished_at": now(), "outcome": outcome, "run_id": run_id}
            )

    def last_run(self, manifest: str) -> dict[str, Any] | None:
        rows = list(self._all(None, "last_run", {"manifest": manifest}))
        return rows[0] if rows else None

    # -- tasks: reading

    def task(self, env: str, key: str) -> TaskRow | None:
        rows = list(self._all(None, "task", {"env": env, "key": key}))
        return task_row(rows[0]) if rows else None

    def tasks(self, env: str, manifest: str | None = None) -> list[TaskRow]:
        return list(self.each_task(env, manifest))

    def each_task(self, env: str, manifest: str | None = None) -> Iterator[TaskRow]:
        if manifest is None:
            found = self._each("tasks_of_env", {"env": env})
        else:
            found = self._each("tasks_of_manifest", {"env": env, "manifest": manifest})
        shared = Shared()
        for row in found:
            yield task_row(row, shared)

    def task_states(self, env: str, manifest: str) -> dict[str, str]:
        found = self._each("task_states", {"env": env, "manifest": manifest})
        return {r["key"]: r["status"] for r in found}

    def rerolls(self, env: str, manifest: str) -> list[TaskRow]:
        shared = Shared()
        found = self._each("rerolls_of_manifest", {"env": env, "manifest": manifest})
        return [task_row(r, shared) for r in found]

    def events(self, env: str, key: str) -> list[dict[str, Any]]:
        return list(self._all(None, "events", {"env": env, "key": key}))

    # -- tasks: writing (one transaction per step, event included)

    def ensure_tasks(self, env: str, rows: Iterable[Mapping[str, Any]]) -> None:
        stamp = now()
        values = (
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
        )
        # One transaction, written a batch at a time: 100,000 rows are never
        # all held as dicts of text at once.
        with self.transaction() as db:
            while batch := list(itertools.islice(values, ENSURE_BATCH)):
                self._many(db, "ensure_task", batch)

    def _transition(
        self,
        db: Any,
        query: str,
        values: dict[str, Any],
        *,
        previous: str,
        status: str,
        run_id: int | None,
        detail: Mapping[str, Any] | None,
    ) -> None:
        """Run the named status change (`values` has `env`, `key`, `stamp`) and log its event."""
        self._run(db, query, values)
        event = {
            "env": values["env"],
            "key": values["key"],
            "run_id": run_id,
            "at": values["stamp"],
            "previous": previous,
            "status": status,
            "detail": as_json(dict(detail)) if detail else None,
        }
        self._run(db, "append_event", event)

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
            # From here no other process can commit spend to these manifests
            # between the sums and the intents (check, lock, check again).
            self._lock_manifests(db, values)
            found = self._all(db, "intent_rows", values)
            rows = {r["key"]: standing(r) for r in found}
            in_flight = {r.manifest: r.in_flight for r in rows.values()}

            def committed(manifest: str) -> Decimal:
                values = {"env": env, "manifest": manifest}
                groups = self._all(db, "committed_of_manifest", values)
                return sum((group_committed(g) for g in groups), Decimal(0))

            step = Step(cap, worker, self._clock(db), in_flight.__getitem__, committed)
            answers = [step.decide(rows.get(i.key), i) for i in intents]
            writes = intent_writes(
                env, intents, answers, rows, run_id, worker, step.clock, lease, now()
            )
            # Every read is done: only now is anything written, so each intent
            # was decided on the ledger as it stood plus the step's own grants.
            for forget in writes.forget:
                self._run(db, "forget_attempt", forget)
                self._run(db, "forget_outputs", {"env": env, "key": forget["key"]})
            self._many(db, "record_intent", writes.changes)
            self._many(db, "append_event", writes.events)
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
                self._run(db, "record_output_url", {**task, "idx": idx, "url": url})
            if latency is not None:
                seconds = {"latency_class": latency[0], "seconds": latency[1]}
                self._run(db, "record_latency", {"env": env, **seconds, "observed_at": stamp})
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
            self._run(
                db,
                "record_server_events",
                {"env": env, "key": key, "server_events": as_json(server_events), "stamp": now()},
            )

    # -- outputs

    def record_output_url(self, env: str, key: str, idx: int, url: str) -> None:
        with self.transaction() as db:
            self._run(db, "record_output_url", {"env": env, "key": key, "idx": idx, "url": url})

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
            self._run(
                db,
                "record_download",
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
            self._run(
                db,
                "record_verified",
                {"env": env, "key": key, "idx": idx, "file_stat": file_stat, "stamp": now()},
            )

    def outputs(self, env: str, key: str) -> list[Output]:
        return [Output(**r) for r in self._all(None, "outputs", {"env": env, "key": key})]

    def manifest_outputs(self, env: str, manifest: str) -> dict[str, list[Output]]:
        found: dict[str, list[Output]] = {}
        for r in self._each("outputs_of_manifest", {"env": env, "manifest": manifest}):
            values = dict(r)
            found.setdefault(values.pop("key"), []).append(Output(**values))
        return found

    def undownloaded(self, env: str, manifest: str) -> set[str]:
        return {
            r["key"] for r in self._all(None, "undownloaded", {"env": env, "manifest": manifest})
        }

    # -- claims: which worker holds a task in flight

    def claim(self, env: str, key: str, worker: str, lease: float) -> TaskRow | None:
        with self.transaction() as db:
            clock = self._clock(db)
            values = {"env": env, "key": key, "worker": worker, "now": clock}
            taken = self._run(db, "claim", {**values, "lease_until": clock + lease})
            if not taken:
                return None
            (found,) = self._all(db, "task", {"env": env, "key": key})
            return task_row(found)

    def abandoned(self, env: str, manifest: str, worker: str) -> list[TaskRow]:
        with self.transaction() as db:
            values = {"env": env, "manifest": manifest, "worker": worker, "now": self._clock(db)}
            return [task_row(r) for r in self._all(db, "abandoned", values)]

    def renew(self, env: str, worker: str, lease: float) -> int:
        with self.transaction() as db:
            values = {"env": env, "worker": worker, "lease_until": self._clock(db) + lease}
            return self._run(db, "renew", values)

    def release(self, env: str, worker: str) -> int:
        with self.transaction() as db:
            return self._run(db, "release", {"env": env, "worker": worker})

    # -- what a person decided

    def record_verdict(self, env: str, key: str, verdict: str | None, note: str | None) -> Verdict:
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"a verdict is one of {', '.join(VERDICTS)} or none, not {verdict!r}")
        stamp = now()
        row = {"env": env, "key": key, "at": stamp, "verdict": verdict, "note": note or None}
        with self.transaction() as db:
            if not self._all(db, "task", {"env": env, "key": key}):
                raise KeyError(key)
            self._run(db, "append_verdict", row)
        return Verdict(key, stamp, verdict, row["note"])

    def verdicts(self, env: str, manifest: str) -> dict[str, Verdict]:
        found = self._all(None, "latest_verdicts", {"env": env, "manifest": manifest})
        return {r["key"]: Verdict(**r) for r in found}

    def verdict_history(self, env: str, key: str) -> list[Verdict]:
        return [Verdict(**r) for r in self._all(None, "verdict_history", {"env": env, "key": key})]

    # -- what the server taught us

    def record_learned_rate(self, env: str, price_class: str, usd_per_second: Decimal) -> None:
        with self.transaction() as db:
            self._run(
                db,
                "record_learned_rate",
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
            for r in self._all(None, "learned_rates", {"env": env})
        }

    def latencies(self, env: str, limit_per_class: int = 200) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for row in self._all(None, "latencies", {"env": env, "limit_per_class": limit_per_class}):
            found.setdefault(row["latency_class"], []).append(float(row["seconds"]))
        return found
