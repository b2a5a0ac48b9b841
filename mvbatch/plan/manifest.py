"""The TOML manifest: its keys (SPEC §3), read strictly, with located errors.

Owns: reading TOML files (`read_toml`, the one reader of manifests and
reviewed plans, with the nesting limit `MAX_NESTING`), the pydantic models of
every key (`extra="forbid"`, so a typo is an error, not a silently ignored
setting), and turning parser and validation errors into `Problem`s that name
the file, the shot, the field and what was expected. It does not expand
matrices or look at models: that is the planner's job.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from mvbatch.errors import ManifestError, Problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
# How deep tables and arrays may nest in a TOML file mvbatch reads, counted
# from the top of the file (`[[shots]]` is level 1, a shot 2, its `input` 3,
# so an input value may hold 29 more). Far more than any model's input needs,
# and it keeps every walk over a manifest's values (pydantic, the date check,
# canonical JSON, the payload) well inside Python's recursion limit.
MAX_NESTING = 32
TOO_DEEP = (
    f"arrays and tables nested more than {MAX_NESTING} levels deep, counted from the top "
    "of the file (the most a manifest may hold)"
)
MAX_TAKES = 100
RESERVED_MATRIX_KEYS = ("include", "exclude")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Budget(_Strict):
    max_usd: Annotated[Decimal, Field(gt=0, strict=False)] | None = None

    @field_validator("max_usd", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # TOML gives floats; go through their shortest text so 12.5 stays 12.5
        # and never becomes 12.4999999... as a Decimal.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number of US dollars, e.g. max_usd = 12.50")
        return Decimal(repr(value))


class Matrix(_Strict):
    """`[shots.matrix]`: axes are any other keys, each a non-empty list."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def axes(self) -> dict[str, list[Any]]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> Matrix:
        for name, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"matrix axis '{name}' must be a non-empty list of values, "
                    f'e.g. {name} = ["a", "b"]'
                )
        for entry in self.exclude:
            unknown = [k for k in entry if k not in self.axes]
            if unknown:
                raise ValueError(
                    f"exclude key '{unknown[0]}' is not an axis of the matrix "
                    f"(axes: {', '.join(self.axes) or 'none'})"
                )
        for group, entries in (("include", self.include), ("exclude", self.exclude)):
            if any(not entry for entry in entries):
                raise ValueError(f"an empty [[shots.matrix.{group}]] table matches nothing")
        return self


class Defaults(_Strict):
    model: str | None = None
    prompt: str | None = None
    takes: Annotated[int, Field(ge=1, le=MAX_TAKES)] | None = None
    input: dict[str, Any] = Field(default_factory=dict)


ShotId = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f/\\]+$")
]


class Shot(_Strict):
    id: ShotId
    model: str | None = None
    prompt: str | None = None
    takes: Annotated[int, Field(ge=1, le=MAX_TAKES)] | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    matrix: Matrix | None = None


class Manifest(_Strict):
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=64)]
    budget: Budget = Field(default_factory=Budget)
    defaults: Defaults = Field(default_factory=Defaults)
    shots: Annotated[list[Shot], Field(min_length=1)]


class LoadedManifest(BaseModel):
    """A parsed manifest with where it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    sha256: str
    manifest: Manifest

    @property
    def display(self) -> str:
        return display_path(self.path)


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(path: Path) -> LoadedManifest:
    raw, data = read_toml(path)
    shown = display_path(path)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        raise ManifestError(_problems(shown, data, error)) from None
    problems = _consistency(shown, manifest)
    if problems:
        raise ManifestError(problems)
    return LoadedManifest(path=path, sha256=hashlib.sha256(raw).hexdigest(), manifest=manifest)


def read_toml(path: Path) -> tuple[bytes, dict[str, Any]]:
    """A TOML file's bytes and document, or a `ManifestError` that says where it went wrong.

    The one reader of manifests and reviewed plans: a file that cannot be
    read, is not UTF-8, is not TOML, or nests deeper than `MAX_NESTING`.
    """
    shown = display_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([Problem(shown, "file not found")]) from None
    except OSError as error:
        raise ManifestError([Problem(shown, f"cannot read the file: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError([Problem(shown, f"not UTF-8 text (byte {error.start})")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ManifestError([_toml_problem(shown, error)]) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ManifestError([Problem(shown, TOO_DEEP, line=_first_too_deep_line(text))]) from None
    deep = _too_deep(data)
    if deep is not None:
        raise ManifestError([_deep_problem(shown, data, deep)])
    return raw, data


def _first_too_deep_line(text: str) -> int:
    """The line where tomllib runs out of stack: the first whose prefix it cannot read.

    tomllib reads from the start, so a prefix fails that way exactly when it
    holds that line; a binary search needs a few dozen partial reads.
    """
    lines = text.splitlines(keepends=True)
    low, high = 1, len(lines)
    while low < high:
        middle = (low + high) // 2
        try:
            tomllib.loads("".join(lines[:middle]))
        except RecursionError:
            high = middle
            continue
        except tomllib.TOMLDecodeError:
            pass
        low = middle + 1
    return low


def _too_deep(document: dict[str, Any]) -> tuple[str | int, ...] | None:
    """Where a table or array sits deeper than `MAX_NESTING`, or None. No recursion:
    dotted keys nest tables as deep as the file likes without tomllib recursing."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_NESTING:
            return path
        children = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(
            (child, (*path, key)) for key, child in children if isinstance(child, (dict, list))
        )
    return None


def _deep_problem(file: str, data: Any, path: tuple[str | int, ...]) -> Problem:
    """Located at the shot and the key a person would look for (`input.x`), not at the
    thirty levels below it."""
    shot = None
    if len(path) >= 2 and path[0] == "shots" and isinstance(path[1], int):
        shot, path = _shot_label(data, path[1]), path[2:]
    keys: list[str] = []
    for part in path:
        if isinstance(part, int) or len(keys) == 2:
            break
        keys.append(part)
    return Problem(file, TOO_DEEP, shot=shot, field=".".join(keys) or None)


def _consistency(file: str, manifest: Manifest) -> list[Problem]:
    """Rules across keys, located at the key a person would edit."""
    problems: list[Problem] = []
    if manifest.defaults.prompt is not None and "prompt" in manifest.defaults.input:
        problems.append(
            Problem(
                file,
                "give the default prompt either as `prompt` or as `input.prompt`, not both",
                field="defaults.input.prompt",
            )
        )
    problems += _no_dates(file, None, "defaults.input", manifest.defaults.input)
    first_index: dict[str, int] = {}
    for index, shot in enumerate(manifest.shots):
        if shot.id in first_index:
            problems.append(
                Problem(
                    file,
                    f"the id is used by shots #{first_index[shot.id] + 1} "
                    f"and #{index + 1}; ids must be unique",
                    shot=shot.id,
                    field="id",
                )
            )
        first_index.setdefault(shot.id, index)
        if shot.prompt is not None and "prompt" in shot.input:
            problems.append(
                Problem(
                    file,
                    "give the prompt either as `prompt` or as `input.prompt`, not both",
                    shot=shot.id,
                    field="input.prompt",
                )
            )
        problems += _no_dates(file, shot.id, "input", shot.input)
        if shot.matrix is not None:
            problems += _no_dates(file, shot.id, "matrix", shot.matrix.axes)
            for group in ("include", "exclude"):
                for i, entry in enumerate(getattr(shot.matrix, group)):
                    problems += _no_dates(file, shot.id, f"matrix.{group}[{i}]", entry)
    return problems


def _no_dates(file: str, shot: str | None, where: str, value: Any) -> list[Problem]:
    """TOML has dates and times; JSON, and so the API, does not."""
    if isinstance(value, (date, time)):
        return [
            Problem(
                file,
                f"a TOML date/time ({value.isoformat()}) is not a valid input "
                "value; write it in quotes if a string is meant",
                shot=shot,
                field=where,
            )
        ]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _no_dates(file, shot, f"{where}.{k}", v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _no_dates(file, shot, f"{where}[{i}]", v)]
    return []


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _toml_problem(file: str, error: tomllib.TOMLDecodeError) -> Problem:
    message = str(error)
    found = _AT.search(message)
    if found is None:
        return Problem(file, f"TOML syntax error: {message}")
    return Problem(
        file,
        f"TOML syntax error: {message[: found.start()]}",
        line=int(found.group(1)),
        column=int(found.group(2)),
    )


def _problems(file: str, data: Any, error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        location = list(item["loc"])
        shot: str | None = None
        if len(location) >= 2 and location[0] == "shots" and isinstance(location[1], int):
            index = location[1]
            shot = _shot_label(data, index)
            location = location[2:]
        field = _dotted(location)
        problems.append(Problem(file, _explain(item), shot=shot, field=field or None))
    return problems


def _shot_label(data: Any, index: int) -> str:
    try:
        shot_id = data["shots"][index]["id"]
    except (KeyError, IndexError, TypeError):
        shot_id = None
    return str(shot_id) if isinstance(shot_id, str) and shot_id else f"#{index + 1}"


def _dotted(location: list[Any]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before", "constrained-str", "[key]"):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text


def _explain(item: Any) -> str:
    kind = item["type"]
    ctx = item.get("ctx", {})
    got = item.get("input")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see SPEC §3 for the manifest keys)"
    if kind == "missing":
        return "required key missing"
    if kind == "string_pattern_mismatch":
        if item["loc"] == ("name",):
            return (
                f"expected lowercase letters, digits, '-' or '_', starting with a letter or "
                f'digit (e.g. "launch-teaser"); got {got!r}'
            )
        return f"must not contain '/', '\\' or control characters; got {got!r}"
    if kind in (
        "string_type",
        "int_type",
        "list_type",
        "dict_type",
        "decimal_type",
        "model_type",
        "bool_type",
    ):
        expected = {
            "string_type": "a string",
            "int_type": "an integer",
            "list_type": "a list",
            "dict_type": "a table",
            "decimal_type": "a number",
            "model_type": "a table",
            "bool_type": "true or false",
        }[kind]
        return f"expected {expected}; got {_toml_type(got)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        words = {
            "greater_than_equal": "at least",
            "greater_than": "more than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return f"expected {words} {bound}; got {_shown(got)}"
    if kind == "too_short" and item["loc"] == ("shots",):
        return "at least one [[shots]] entry is required"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", item["msg"]))
    return str(item["msg"])


def _shown(value: Any) -> str:
    return str(value) if isinstance(value, (Decimal, int, float)) else repr(value)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
