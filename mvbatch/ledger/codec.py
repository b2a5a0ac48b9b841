"""How ledger values are stored and read back, the same on every backend.

Owns: money as decimal text (never a float), JSON as compact text, and turning
a stored `tasks` row (JSON and decimal text, 0/1) into a `TaskRow`; the sum of
one group of `committed_of_manifest`. Must not: hold SQL or open anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mvbatch.ledger.rows import TaskRow, committed_cost


def money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def committed(group: Mapping[str, Any]) -> Decimal:
    """What a group of `committed_of_manifest` stands for: `TaskRow.committed` times its tasks."""
    reserved = group["cost_reserved"]
    each = Decimal(group["cost_prior"] or "0") + committed_cost(
        group["status"],
        Decimal(reserved if reserved is not None else group["estimate_local"]),
        decimal(group["cost_estimate"]),
        decimal(group["cost_actual"]),
    )
    return each * int(group["tasks"])


class Shared:
    """One object for each repeated value of a read of many rows.

    A ledger's rows repeat a few values: its env, manifest, models, statuses,
    variants and price classes, a handful of prices, the stamp of the step
    that planned them. Read from the database, each is a new string or
    `Decimal` in every row; handed out through one `Shared` they are one
    object each, however many rows hold them (tens of megabytes at 100,000
    rows). Both kinds are immutable, so sharing is safe. Only for values that
    repeat: a task's own key or input is kept as read.
    """

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.decimals: dict[str, Decimal] = {}

    def text(self, value: str) -> str:
        return self.texts.setdefault(value, value)

    def maybe_text(self, value: str | None) -> str | None:
        return None if value is None else self.texts.setdefault(value, value)

    def decimal(self, value: str) -> Decimal:
        found = self.decimals.get(value)
        if found is None:
            found = self.decimals[value] = Decimal(value)
        return found

    def maybe_decimal(self, value: str | None) -> Decimal | None:
        return None if value is None else self.decimal(value)


def task_row(row: Mapping[str, Any], shared: Shared | None = None) -> TaskRow:
    """A `tasks` row as stored (JSON and decimal text, 0/1) as a `TaskRow`.

    `shared`: for a read of many rows, so their repeated values are one object each.
    """
    one = shared or Shared()
    text, maybe_text, number, maybe_number = (
        one.text,
        one.maybe_text,
        one.decimal,
        one.maybe_decimal,
    )
    return TaskRow(
        env=text(row["env"]),
        key=row["key"],
        manifest=text(row["manifest"]),
        shot=text(row["shot"]),
        shots_json=text(row["shots"]),
        variant_json=text(row["variant"]),
        take=row["take"],
        model=text(row["model"]),
        input_json=row["input"],
        price_class=text(row["price_class"]),
        seconds=maybe_number(row["seconds"]),
        upper_bound=bool(row["upper_bound"]),
        estimate_local=number(row["estimate_local"]),
        estimate_source=text(row["estimate_source"]),
        status=text(row["status"]),
        attempt=row["attempt"],
        submit_key=row["submit_key"],
        task_id=row["task_id"],
        request_id=row["request_id"],
        cost_estimate=maybe_number(row["cost_estimate"]),
        cost_actual=maybe_number(row["cost_actual"]),
        error=maybe_text(row["error"]),
        server_events_json=row["server_events"] or None,
        submissions=row["submissions"],
        polls=row["polls"],
        run_id=row["run_id"],
        created_at=text(row["created_at"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        cost_prior=number(row["cost_prior"] or "0"),
        cost_reserved=maybe_number(row["cost_reserved"]),
        rerolled_from=row["rerolled_from"],
        claimed_by=maybe_text(row.get("claimed_by")),
        lease_until=row.get("lease_until"),
    )
