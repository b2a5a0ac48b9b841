"""The shape of the package: stages that import only down, no cycles, no test hooks.

A reader walks manifest → plan → ledger → api → run → downloads → report by
opening folders in that order; these tests keep that walk true. They read the
source with `ast` (every import, at module level, inside functions and under
`TYPE_CHECKING`), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mvbatch"

# Each stage may import its own and any earlier stage, never a later one.
# `sim` stands apart (tests/test_sim_isolation.py keeps it so).
STAGES = (
    ("errors", "settings", "logs", "money", "schemas"),
    ("plan",),
    ("ledger",),
    ("api",),
    ("run",),
    ("downloads",),
    ("report",),
    ("review",),
    ("commands",),
    ("ui",),
    ("cli", "__main__"),
)
RANK = {name: rank for rank, names in enumerate(STAGES) for name in names}
# Where the environment may be read: the settings, the logging set-up, the CLI.
ENVIRONMENT_READERS = {"settings", "logs", "cli"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] == "sim":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("mvbatch", *parts)), path


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path) -> set[str]:
    """Every mvbatch module this file imports, wherever the import stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mvbatch"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("mvbatch"):
                continue
            known = {m for m, _ in modules()}
            for alias in node.names:
                # `from mvbatch.plan import manifest` imports a module.
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
    return {name for name in found if not name.startswith("mvbatch.sim")}


GRAPH = {module: imports_of(module, path) for module, path in modules()}


def test_every_module_belongs_to_a_stage() -> None:
    unknown = {stage_of(m) for m in GRAPH} - set(RANK) - {"__init__"}
    assert not unknown, f"modules outside any stage: {unknown}"


def test_stages_import_only_down() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if stage_of(module) in RANK
        for target in targets
        if stage_of(target) in RANK and RANK[stage_of(target)] > RANK[stage_of(module)]
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_environment_is_read_only_by_settings_logs_and_the_cli() -> None:
    readers = []
    for module, path in modules():
        if stage_of(module) in ENVIRONMENT_READERS:
            continue
        text = path.read_text(encoding="utf-8")
        for word in ("os.environ", "os.getenv", "getenv("):
            if word in text:
                readers.append(f"{module}: {word}")
    assert not readers, "\n".join(readers)


def test_no_test_hooks_in_the_package() -> None:
    hooks = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "MVBATCH_TEST_" in path.read_text(encoding="utf-8")
    ]
    assert not hooks


@pytest.mark.parametrize(("module", "path"), list(modules()), ids=str)
def test_every_module_says_what_it_owns(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if path.name == "__main__.py":
        return
    assert ast.get_docstring(tree), f"{module} has no docstring"
