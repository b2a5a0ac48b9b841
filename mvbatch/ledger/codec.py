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


def task_row(row: Mapping[str, Any]) -> TaskRow:
    """A `tasks` row as stored (JSON and decimal text, 0/1) as a `TaskRow`."""
    return TaskRow(
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
        seconds=decimal(row["seconds"]),
        upper_bound=bool(row["upper_bound"]),
        estimate_local=Decimal(row["estimate_local"]),
        estimate_source=row["estimate_source"],
        status=row["status"],
        attempt=row["attempt"],
        submit_key=row["submit_key"],
        task_id=row["task_id"],
        request_id=row["request_id"],
        cost_estimate=decimal(row["cost_estimate"]),
        cost_actual=decimal(row["cost_actual"]),
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
        cost_reserved=decimal(row["cost_reserved"]),
        rerolled_from=row["rerolled_from"],
        claimed_by=row.get("claimed_by"),
        lease_until=row.get("lease_until"),
    )
