"""The one error tree of mvbatch, and the exit code each branch maps to.

    MvbatchError
    ├── UsageError ............ 2  bad command line or configuration of a command
    │   └── ManifestError ..... 2  manifest / plan file problems: file, shot, field, expected
    ├── BudgetError ........... 3  refused by the budget (nothing over the cap submitted)
    ├── ApiError .............. 4  the API refused us or could not be reached
    │   └── AuthError ......... 4  401/403: the key is wrong or lacks rights
    ├── ConfigError ........... 4  settings that make any API call impossible
    └── Interrupted ......... 130  the user pressed Ctrl-C; state is saved

Exit code 1 (some tasks failed) is not an error: it is an outcome, computed by
the CLI from the run's result. Only `mvbatch.cli` turns these into exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class MvbatchError(Exception):
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MvbatchError):
    exit_code = 2


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


class BudgetError(MvbatchError):
    exit_code = 3


class ApiError(MvbatchError):
    exit_code = 4


class AuthError(ApiError):
    exit_code = 4


class ConfigError(MvbatchError):
    exit_code = 4


class Interrupted(MvbatchError):
    exit_code = 130
