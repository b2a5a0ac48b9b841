"""The SQLite ledger's statements, loaded by name from `queries.sql` once at import.

Owns: reading that file into `QUERIES` (name → statement). A block is
`-- name: <name>`, its comment lines, then one statement. Must not: hold SQL
itself or run any.
"""

from __future__ import annotations

import re
from importlib.resources import files
from types import MappingProxyType

NAME_LINE = re.compile(r"^-- name: ([a-z][a-z0-9_]*)[ \t]*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Each named block's statement, without its comment lines."""
    parts = NAME_LINE.split(text)  # [header, name, block, name, block, ...]
    found: dict[str, str] = {}
    for name, block in zip(parts[1::2], parts[2::2], strict=True):
        lines = block.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        statement = "\n".join(lines).strip()
        if not statement:
            raise ValueError(f"queries.sql: {name!r} has no statement")
        if name in found:
            raise ValueError(f"queries.sql: {name!r} is named twice")
        found[name] = statement
    return found


QUERIES = MappingProxyType(
    parse(files("mvbatch.ledger").joinpath("queries.sql").read_text("utf-8"))
)
