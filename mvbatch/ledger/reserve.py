"""Deciding intents under the write lock: the rules every backend applies the same way.

Owns: what an intent needs of a task's row (`Standing`, read from the
`intent_rows` columns); `Step`, the decision of each intent of one
`record_intents` step in order (stale, claimed, busy, over the cap, or
granted) with the step's running totals, so that a batch answers exactly as
the same intents recorded one by one would; and `intent_writes`, the rows a
step writes for what it granted. Must not: hold SQL, open anything or write:
the backend reads the rows and the totals under its lock, then writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mvbatch.ledger.codec import as_json, decimal, money
from mvbatch.ledger.rows import FAILED, Intent, Reservation, committed_cost


@dataclass(frozen=True, slots=True)
class Standing:
    """A task's row as an intent sees it: its status, its claim, what it stands for."""

    key: str
    manifest: str
    status: str
    attempt: int
    claimed_by: str | None
    lease_until: float | None
    estimate_local: Decimal
    cost_reserved: Decimal | None
    committed: Decimal  # `TaskRow.committed`
    in_flight: int  # how many of its manifest's tasks are in flight, every worker's


def standing(row: Mapping[str, Any]) -> Standing:
    """A row of `intent_rows` (decimal text, as stored) as a `Standing`."""
    local = Decimal(row["estimate_local"])
    reserved = decimal(row["cost_reserved"])
    committed = Decimal(row["cost_prior"] or "0") + committed_cost(
        row["status"],
        local if reserved is None else reserved,
        decimal(row["cost_estimate"]),
        decimal(row["cost_actual"]),
    )
    lease = row["lease_until"]
    return Standing(
        row["key"],
        row["manifest"],
        row["status"],
        row["attempt"],
        row["claimed_by"],
        None if lease is None else float(lease),
        local,
        reserved,
        committed,
        int(row["in_flight"]),
    )


@dataclass(slots=True)
class Step:
    """One `record_intents` step, the write lock held: each intent decided in order.

    `in_flight` and `committed` say how many of a manifest's tasks are in
    flight and what it has committed, as the ledger held them when the step
    began (asked at most once per manifest, and only when an intent needs
    them); every intent granted in the step is added to both, so the next
    intent sees it as if it had been committed alone.
    """

    cap: Decimal | None
    worker: str | None
    clock: float
    in_flight: Callable[[str], int]
    committed: Callable[[str], Decimal]
    _flying: dict[str, int] = field(default_factory=dict)  # as the ledger counted
    _spent: dict[str, Decimal] = field(default_factory=dict)  # as the ledger summed
    _granted: dict[str, int] = field(default_factory=dict)  # new in flight in this step
    _reserved: dict[str, Decimal] = field(default_factory=dict)  # reserved in this step

    def decide(self, row: Standing | None, intent: Intent) -> Reservation:
        """The intent's answer; a granted one counts in this step's totals from now."""
        cap, previous = self.cap, intent.previous
        if row is None:  # a key the ledger never saw: no intent could be recovered
            return Reservation(False, intent.estimate or Decimal(0), None, cap, stale=True)
        amount = row.estimate_local if intent.estimate is None else intent.estimate
        if row.status != previous or (previous in FAILED and row.attempt >= intent.attempt):
            # Another process moved the task on since this one read it (sent it,
            # retried it, finished it): writing would undo that work.
            return Reservation(False, amount, None, cap, stale=True)
        held = row.claimed_by not in (None, self.worker) and (row.lease_until or 0.0) > self.clock
        if held:  # another worker holds it and is alive: it is theirs to send
            return Reservation(False, amount, None, cap, stale=True)
        manifest = row.manifest
        if previous == "submitting":  # a re-send: reserved, and in flight, since its first intent
            return Reservation(True, amount, None, cap)
        limit = intent.in_flight_limit
        if limit is not None and self._in_flight(manifest) >= limit:
            return Reservation(False, amount, None, cap, busy=True)
        if cap is None:
            answer = Reservation(True, amount, None, cap)
        else:
            committed = self._committed(manifest)
            answer = Reservation(committed + amount <= cap, amount, committed, cap)
        if answer.granted:
            # From now it is in flight and stands for `amount` more: a new task
            # stood for nothing, a retry's earlier attempt moves into cost_prior.
            self._granted[manifest] = self._granted.get(manifest, 0) + 1
            self._reserved[manifest] = self._reserved.get(manifest, Decimal(0)) + amount
        return answer

    def _in_flight(self, manifest: str) -> int:
        if manifest not in self._flying:
            self._flying[manifest] = self.in_flight(manifest)
        return self._flying[manifest] + self._granted.get(manifest, 0)

    def _committed(self, manifest: str) -> Decimal:
        if manifest not in self._spent:
            self._spent[manifest] = self.committed(manifest)
        return self._spent[manifest] + self._reserved.get(manifest, Decimal(0))


@dataclass(slots=True)
class Writes:
    """What a step of intents writes for those granted: named query → its values."""

    forget: list[dict[str, Any]] = field(default_factory=list)  # `forget_attempt`
    changes: list[dict[str, Any]] = field(default_factory=list)  # `record_intent`
    events: list[dict[str, Any]] = field(default_factory=list)  # `append_event`


def intent_writes(  # noqa: PLR0917 - one step's context, passed through as is
    env: str,
    intents: Sequence[Intent],
    answers: Sequence[Reservation],
    rows: Mapping[str, Standing],
    run_id: int | None,
    worker: str | None,
    clock: float,
    lease: float | None,
    stamp: str,
) -> Writes:
    """The rows to write for each granted intent, in the step's order.

    A new attempt (`--retry-failed`) first forgets the previous attempt's
    answer, and what that attempt stood for moves into `cost_prior`. The event
    keeps the key and the attempt, and, when the intent was held against a
    cap, the evidence: what it reserved, what was committed before it, the cap.
    """
    writes = Writes()
    for intent, answer in zip(intents, answers, strict=True):
        if not answer.granted:
            continue
        row = rows[intent.key]
        task = {"env": env, "key": intent.key}
        if intent.attempt > 0 and intent.previous in FAILED:
            writes.forget.append({**task, "cost_prior": money(row.committed) or "0"})
        change: dict[str, Any] = {"submit_key": intent.submit_key, "attempt": intent.attempt}
        if answer.committed is not None:
            change |= {
                "reserved": money(answer.estimate),
                "committed": money(answer.committed),
                "cap": money(answer.cap),
            }
        # A re-send keeps what its first intent reserved.
        reserved = row.cost_reserved if intent.previous == "submitting" else intent.estimate
        writes.changes.append(
            {
                **task,
                "submit_key": intent.submit_key,
                "attempt": intent.attempt,
                "cost_reserved": money(reserved),
                "run_id": run_id,
                "worker": worker,
                "lease_until": None if worker is None else clock + (lease or 0.0),
                "stamp": stamp,
            }
        )
        writes.events.append(
            {
                **task,
                "run_id": run_id,
                "at": stamp,
                "previous": intent.previous,
                "status": "submitting",
                "detail": as_json(change),
            }
        )
    return writes


def distinct_keys(intents: Sequence[Intent]) -> list[str]:
    """The step's keys; a key twice in one step is a caller's mistake (`ValueError`)."""
    keys = [i.key for i in intents]
    if len(set(keys)) != len(keys):
        raise ValueError("a task's intent is recorded at most once per step")
    return keys
