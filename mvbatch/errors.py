"""The one error tree of mvbatch, and the exit code each branch maps to.

    MvbatchError
    ├── UsageError ................ 2  bad command line or configuration of a command
    │   ├── ManifestError ......... 2  manifest / plan file problems: file, shot, field, expected
    │   ├── MediaError ............ 2  a local "@file" that cannot be used (the planner turns
    │   │                              it into a ManifestError problem at its field)
    │   └── FileChangedError ...... 2  a local file changed after planning: sending it would
    │                                  submit content its key does not describe
    ├── BudgetError ............... 3  refused by the budget (nothing over the cap submitted)
    ├── ApiError .................. 4  the API refused us or could not be reached
    │   ├── AuthError ............. 4  401/403: the key is wrong or lacks rights
    │   ├── ApiUnavailable ........ 4  the API kept failing: attempts or the retry budget ran out
    │   └── TaskRejected .......... 4  the API refused one request for good (a 4xx): the run
    │                                  records it as that task's outcome, it stops nothing
    ├── ConfigError ............... 4  settings, folders or files that make the work impossible
    │   ├── EndpointMissing ....... 4  the base URL answers as no task API would (a wrong URL)
    │   ├── LedgerDamaged ......... 4  the ledger file is not a sound SQLite database: left as it
    │   │                              is, copied aside, and the message says how to recover
    │   └── DiskFull .............. 4  no space left (ENOSPC, EDQUOT) for a video or a report:
    │                                  names the folder and the bytes needed; nothing half-written
    │                                  is kept or recorded, and the same command resumes
    └── Interrupted ............. 130  the user pressed Ctrl-C; state is saved

    MalformedResponse ................ a 2xx whose body is not what the documentation shows.
                                       Not an MvbatchError: inside `mvbatch.api` a body that is
                                       not a task (not JSON, no task_id, too large, too deeply
                                       nested) is retried like a dropped connection
                                       (`ApiUnavailable`, quoting it, when retries run out)

Exit code 1 (some tasks failed) is not an error: it is an outcome, which the
CLI reads from the run's result. `ExitCode` names every code; only
`mvbatch.cli`'s edge exits with them (Ctrl-C included).
The API's errors are raised by `mvbatch.api` only; what each HTTP answer
becomes is drawn in `mvbatch.api.client`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """The contract's exit codes (SPEC §2). `mvbatch.cli` alone exits with them."""

    OK = 0  # everything asked for succeeded
    UNFINISHED = 1  # some tasks failed, were cancelled or did not finish; videos missing
    USAGE = 2  # usage, manifest or validation error: nothing submitted
    BUDGET = 3  # refused by the budget: nothing over the cap submitted
    API = 4  # API, authentication or configuration error
    INTERRUPTED = 130  # Ctrl-C: what was sent is recorded


class MvbatchError(Exception):
    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MvbatchError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as we can."""

    file: str
    message: str
    shot: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.shot is not None:
            parts.append(f"shot '{self.shot}'")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ": ".join([", ".join(parts), self.message])


class ManifestError(UsageError):
    """Every problem found in a manifest, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [str(p) for p in problems]
        super().__init__(f"{len(problems)} {noun} in the manifest:\n  " + "\n  ".join(lines))


class MediaError(UsageError):
    """A local file that cannot be used; the message says why and what to do."""


class FileChangedError(UsageError):
    """A local file's bytes differ from the hash its task's key was made from."""

    def __init__(self, display: str) -> None:
        super().__init__(
            f"{display} changed since it was planned; plan again",
            hint="run `mvbatch plan` again, then `mvbatch run`",
        )
        self.display = display


class BudgetError(MvbatchError):
    exit_code = ExitCode.BUDGET


class ApiError(MvbatchError):
    exit_code = ExitCode.API


class AuthError(ApiError):
    exit_code = ExitCode.API


class ConfigError(MvbatchError):
    exit_code = ExitCode.API


class Interrupted(MvbatchError):
    exit_code = ExitCode.INTERRUPTED


# ------------------------------------------------------------------ the API's


class ApiUnavailable(ApiError):
    """The API kept failing: attempts or the retry budget ran out. The run stops, resumable."""


class TaskRejected(ApiError):
    """The server refused this request for good (a 4xx other than 401/403/408/429).

    Caught by the run, which records it as the task's outcome: it stops
    nothing. `message` is the server's own (redacted), `status_code` its HTTP
    status.
    """

    def __init__(self, status_code: int, message: str, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        # An earlier attempt of the same call may have reached the server (a
        # timeout, a dropped connection, a 5xx, a garbled 2xx): for a POST the
        # task may exist and be charged even though this answer refuses it.
        self.maybe_sent = maybe_sent


class EndpointMissing(ConfigError):
    """The base URL does not lead to the task API: the run stops (exit 4).

    Raised for an answer no task API gives (a 405, a redirect, a 404 that
    names nothing). The request created nothing there, unless `maybe_sent`:
    an earlier attempt of the same call went unanswered (a timeout, a 5xx).
    """

    def __init__(
        self, message: str, *, hint: str, status_code: int, url: str, maybe_sent: bool
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.url = url
        self.maybe_sent = maybe_sent


class LedgerDamaged(ConfigError):
    """The ledger file is damaged: SQLite finds it is not a database, or not a sound one.

    Raised by `mvbatch.ledger` when it opens the file, before anything is
    written to it. `path` is the ledger; the message says where its copy is
    and the hint how to recover (`mvbatch.ledger.connection.check`).
    """

    def __init__(self, message: str, *, hint: str, path: str) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class DiskFull(ConfigError):
    """The disk refused a write for want of space (ENOSPC) or quota (EDQUOT).

    Raised by `mvbatch.report.command` once the reports are written (or
    when they cannot be): the downloads stop at the first full write, and the
    part file is deleted so that its space is given back; nothing is recorded
    as downloaded. `folder` is where the write failed, `needed` the bytes that
    write needed (None when unknown). Running the same command again after
    freeing space resumes.
    """

    def __init__(self, message: str, *, hint: str, folder: str, needed: int | None) -> None:
        super().__init__(message, hint=hint)
        self.folder = folder
        self.needed = needed


class MalformedResponse(Exception):
    """A 2xx response whose body is not the task the documentation shows; its message
    says why and quotes the body (redacted, cut short).

    Not an `MvbatchError`: inside `mvbatch.api` it means "try again" (see
    `mvbatch.api.retry`); it has no exit code of its own.
    """
