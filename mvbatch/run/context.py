"""What every part of one run shares: where it sends, where it records, the board.

Owns: `RunContext`, handed to the submitter, the follower and the finisher so
that each receives the run's shared pieces in one value instead of five.
Must not: hold behaviour; it is a record.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvbatch.api.client import ApiClient
from mvbatch.ledger import Ledger
from mvbatch.run.jobs import JobBoard


@dataclass(frozen=True, slots=True)
class RunContext:
    client: ApiClient  # the task API, with its retry policy
    ledger: Ledger  # where every step is committed
    env: str  # "live" or "sim": the side of the ledger
    run_id: int | None  # this run's row in the ledger
    board: JobBoard  # the jobs and their tallies
