"""What the ledger hands out: task rows, outputs, the statuses, what a task costs.

Owns: the shapes every backend takes and returns (`Intent`, `TaskRow`,
`Output`, `Reservation`), the task statuses and their groups, and
`committed_cost`, the one rule for how much a task stands for. Pure data: no
SQL, no I/O; a row's JSON columns stay the compact text every backend stores
(`codec.as_json`) until they are read.

A task's life (`status`); every change appends an event:

    planned ─► submitting ─► queued ─► processing ─► succeeded
                  │   ▲          └──────────┴──────► failed / cancelled
                  │   └── (--retry-failed: a new attempt, a new submit_key)
                  └─► rejected (the server refused the request: a 4xx)

`submitting` is the intent, committed before the POST; the task id is
committed right after it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

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
# How `plan` and `status` group the statuses.
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


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the ledger knows it (a snapshot; the ledger is the truth).

    The shot list, variant, input and the server's events are kept as the
    ledger stores them (compact JSON text) and decoded on each read of
    `shots`, `variant`, `input` or `server_events`: `status` and `run` never
    read them, and 100,000 rows of decoded dicts were most of a large
    ledger's 3.4 KB a row (hold what you decode if you read it twice).
    """

    env: str
    key: str
    manifest: str
    shot: str
    shots_json: str
    variant_json: str
    take: int
    model: str
    input_json: str
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
    server_events_json: str | None
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
    # What the intent reserved against the cap: our estimate when it was
    # recorded (a rate learned since the plan included); None: `estimate_local`.
    cost_reserved: Decimal | None = None
    # The rejected take this one re-rolls (`run --reroll-rejected`), if it is one.
    rerolled_from: str | None = None
    # The worker that holds the task while it is in flight, and until when
    # (seconds since the epoch, the ledger's clock): past it, another may take it.
    claimed_by: str | None = None
    lease_until: float | None = None

    @property
    def shots(self) -> list[str]:
        shots: list[str] = json.loads(self.shots_json)
        return shots

    @property
    def variant(self) -> dict[str, Any]:
        variant: dict[str, Any] = json.loads(self.variant_json)
        return variant

    @property
    def input(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.input_json)
        return value

    @property
    def server_events(self) -> Any:
        return json.loads(self.server_events_json) if self.server_events_json else None

    @property
    def plan_state(self) -> str:
        return PLAN_STATE.get(self.status, "new")

    @property
    def committed(self) -> Decimal:
        """What this task has committed us to spend, as best the ledger knows."""
        ours = self.estimate_local if self.cost_reserved is None else self.cost_reserved
        return self.cost_prior + committed_cost(
            self.status, ours, self.cost_estimate, self.cost_actual
        )


VERDICTS = ("approved", "rejected")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A person's latest word on a take: `approved`, `rejected` or None (cleared), and a note."""

    key: str
    at: str
    verdict: str | None
    note: str | None


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
class Intent:
    """One task about to be POSTed: what `Ledger.record_intents` records for it.

    `previous` is the status the caller saw (the step is refused as stale if
    the row moved on since); `estimate` is ours (None: the plan's); with
    `in_flight_limit`, a task not yet in flight is refused (`busy`) while the
    manifest has that many in flight, every worker's counted.
    """

    key: str
    previous: str
    submit_key: str
    attempt: int
    estimate: Decimal | None = None
    in_flight_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """The ledger's answer to an intent held against a cap (`Ledger.record_intent`).

    `granted`: the intent was recorded. Refused, nothing was: the task's
    estimate on top of what the manifest's tasks have committed (every
    process's, as the ledger holds it) would pass the cap.
    """

    granted: bool
    estimate: Decimal  # what the task was reserved at (or would have been)
    committed: Decimal | None  # the manifest's committed spend before it; None: no cap asked
    cap: Decimal | None
    # Refused because the row is not as the caller saw it: another process
    # moved the task on, holds a live claim on it (or the ledger does not know
    # it). Not a budget matter.
    stale: bool = False
    # Refused because the manifest already has `in_flight_limit` tasks in
    # flight, every worker's counted: the fleet's concurrency. Try again later.
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Output:
    """One output video of a task: its URL, and the file once downloaded and verified."""

    idx: int
    url: str
    path: str | None
    sha256: str | None
    bytes: int | None
    downloaded_at: str | None
    file_stat: str | None = None  # how the file looked on disk when last hashed
    verified_at: str | None = None
