"""What a run reports: snapshots while it runs, and its result when it ends.

Owns: `Snapshot` (what the progress display shows, cheap to take at any
moment) and `RunResult` (counts, money, requests, failures and the tasks the
run could not follow), with the sentences that explain them.

It must not print or compute anything from the ledger: the executor fills
them in, the CLI renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from mvbatch.ledger import FAILED
from mvbatch.money import duration


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the progress display shows; cheap to take at any moment."""

    manifest: str
    simulated: bool
    total: int
    counts: Mapping[str, int]  # by ledger status
    held: int
    committed: Decimal
    spent: Decimal  # actual cost of finished tasks
    cap: Decimal | None
    concurrency: int
    max_concurrency: int
    elapsed: float
    eta: float | None
    stopping: bool


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did, for the summary, the exit code and the reports."""

    manifest: str
    simulated: bool
    total: int
    counts: Mapping[str, int]
    submitted: int  # POSTs answered in this run
    held: int  # tasks not submitted because of the budget
    held_reason: str | None
    committed: Decimal
    spent: Decimal
    cap: Decimal | None
    interrupted: bool
    elapsed: float
    requests: Mapping[str, int]
    failures: tuple[tuple[str, str, str], ...]  # (shot, key, message) of failed tasks
    # Shots of tasks sent (maybe) by an earlier version of the manifest, with
    # no task id: they may have been charged and cannot be followed.
    unfollowed: tuple[str, ...] = ()
    # Shots of tasks still running on the server when `max_wait` ran out.
    overdue: tuple[str, ...] = ()
    max_wait: float | None = None
    downloads_interrupted: bool = False  # Ctrl-C came after the executor, during the downloads

    @property
    def unfollowed_message(self) -> str | None:
        if not self.unfollowed:
            return None
        shots = ", ".join(sorted(set(self.unfollowed)))
        return (
            f"{len(self.unfollowed)} task(s) from an earlier version of the manifest may have "
            f"been charged and cannot be followed: restore shot {shots} to resume them"
        )

    @property
    def overdue_message(self) -> str | None:
        if not self.overdue:
            return None
        shots = ", ".join(sorted(set(self.overdue)))
        waited = "" if self.max_wait is None else f" after {duration(self.max_wait)}"
        return (
            f"{len(self.overdue)} task(s) had not ended{waited} (shot {shots}): no longer "
            "followed in this run. They keep running on the server and are not submitted "
            "again; run again to collect them"
        )

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in FAILED)

    @property
    def pending(self) -> int:
        return self.total - self.failed - self.counts.get("succeeded", 0)
