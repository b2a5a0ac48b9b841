"""What a task that did not succeed cost, in the words every view shares.

Owns: the charge of a failed, cancelled or rejected task as far as the ledger
knows it (`charge_of`: charged, not charged, or unknown and still counted
against the cap), the words for it ("rejected (not charged)", "failed
(charged $0.0414)") and their grouping for totals. The run summary, `status`
and every report use these, so a user reads the same words everywhere and
knows which retries cost money.

Must not: read or write the ledger (it works on a row's status and costs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mvbatch.money import json_number, total, usd

FAILED_STATUSES = ("failed", "cancelled", "rejected")
CHARGE_ORDER = ("charged", "unknown", "not_charged")


@dataclass(frozen=True, slots=True)
class Charge:
    """What a task that did not succeed cost, as far as the ledger knows.

    `kind`: `charged` (the server's cost_actual is above zero: `usd`),
    `not_charged` (rejected before a task existed, or a cost_actual of zero),
    `unknown` (no cost_actual: `usd` is the server's estimate, which the ledger
    keeps counting against the cap because it cannot know of a refund).
    """

    kind: str
    usd: Decimal = Decimal(0)


def charge_of(
    status: str, cost_actual: Decimal | None, cost_estimate_server: Decimal | None
) -> Charge | None:
    """The charge of a failed, cancelled or rejected task; None for any other status."""
    if status == "rejected":
        return Charge("not_charged")
    if status not in FAILED_STATUSES:
        return None
    if cost_actual is not None:
        return Charge("charged", cost_actual) if cost_actual > 0 else Charge("not_charged")
    return Charge("unknown", cost_estimate_server or Decimal(0))


def status_words(status: str, charge: Charge | None) -> str:
    """`failed (charged $0.0414)`, `rejected (not charged)`; other statuses as they are."""
    if charge is None:
        return status
    if charge.kind == "charged":
        return f"{status} (charged {usd(charge.usd)})"
    if charge.kind == "not_charged":
        return f"{status} (not charged)"
    if charge.usd:
        return f"{status} (charge unknown; its estimate {usd(charge.usd)} counts against the cap)"
    return f"{status} (charge unknown)"


def failures_by_charge(
    items: Iterable[tuple[str, Charge | None]],
) -> list[dict[str, Any]]:
    """Failed, cancelled and rejected tasks grouped by status and charge, with their words.

    `items` are (status, charge) pairs, one per task; tasks without a charge
    (not failed) are skipped. Each group: `status`, `charge` (its kind),
    `tasks`, `usd` (charged, or still counted when unknown) and `text`, the
    words for them all: "failed (charged $0.0828)" for two tasks charged in all
    $0.0828.
    """
    groups: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for status, charge in items:
        if charge is not None:
            groups[(status, charge.kind)].append(charge.usd)
    found = []
    for status in FAILED_STATUSES:
        for kind in CHARGE_ORDER:
            amounts = groups.get((status, kind))
            if not amounts:
                continue
            amount = total(amounts)
            found.append(
                {
                    "status": status,
                    "charge": kind,
                    "tasks": len(amounts),
                    "usd": json_number(amount),
                    "text": status_words(status, Charge(kind, amount)),
                }
            )
    return found
