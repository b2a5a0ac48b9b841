"""What a run reports: snapshots while it runs, and its result when it ends.

Owns: `Snapshot` (what the progress display shows, cheap to take at any
moment), `RunResult` (counts, money, requests, failures, the tasks the run
could not follow) and `Overbill` (a task the server billed more than it stood
for), with the sentences that explain them.

It must not print or compute anything from the ledger: the executor fills
them in, the CLI renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from mvbatch.ledger import FAILED
from mvbatch.money import duration, usd


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
class Overbill:
    """A task the server billed more than the estimate it stood for against the cap."""

    shot: str
    key: str
    estimate: Decimal  # the server's estimate, else ours
    bill: Decimal  # its cost_actual

    @property
    def words(self) -> str:
        return (
            f"the server billed {usd(self.bill)} for task {self.shot} ({self.key}) "
            f"estimated at {usd(self.estimate)}"
        )


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
    # (shot, status) of tasks let go in a status the API docs do not list.
    unresolved: tuple[tuple[str, str], ...] = ()
    downloads_interrupted: bool = False  # Ctrl-C came after the executor, during the downloads
    overbilled: tuple[Overbill, ...] = ()  # tasks billed more than their estimate, in order

    @property
    def over_cap(self) -> bool:
        """Committed spend is past the cap: the server billed more than it estimated."""
        return self.cap is not None and self.committed > self.cap

    @property
    def overrun_message(self) -> str | None:
        """The bills that broke the estimates (the worst named), and the cap if they broke it."""
        if not self.overbilled and not self.over_cap:
            return None
        parts = []
        if self.overbilled:
            worst = max(self.overbilled, key=lambda o: o.bill - o.estimate)
            parts.append(worst.words)
            if len(self.overbilled) > 1:
                parts[-1] += f" ({len(self.overbilled)} tasks billed over their estimate)"
        if self.over_cap:
            parts.append(
                f"committed spend {usd(self.committed)} is over the cap {usd(self.cap)}; "
                "nothing more was submitted"
            )
        elif self.cap is not None:
            parts.append(
                "the class's tasks not yet submitted were re-priced by that bill and held "
                f"against the cap {usd(self.cap)}"
            )
        return "; ".join(parts)

    @property
    def unfollowed_message(self) -> str | None:
        if not self.unfollowed:
            return None
        shots = ", ".join(sorted(set(self.unfollowed)))
        return (
            f"{len(self.unfollowed)} task(s) from an earlier version of the manifest may have "
            f"been charged and cannot be followed: restore shot {shots} to resume them "
            f"(unless another run of a manifest named {self.manifest} is going on: then they "
            "are its tasks, and it follows them)"
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
    def unresolved_message(self) -> str | None:
        if not self.unresolved:
            return None
        shots = ", ".join(sorted({shot for shot, _ in self.unresolved}))
        statuses = ", ".join(sorted({repr(status) for _, status in self.unresolved}))
        return (
            f"{len(self.unresolved)} task(s) stayed in a status the API docs do not list "
            f"({statuses}; shot {shots}): no longer followed in this run. They are not "
            "submitted again; run again to ask the server about them, `mvbatch status` "
            "counts them"
        )

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in FAILED)

    @property
    def pending(self) -> int:
        return self.total - self.failed - self.counts.get("succeeded", 0)
