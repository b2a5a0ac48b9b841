"""The simulator is someone else's service: it may import only `mvbatch.schemas` of mvbatch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mvbatch.sim

SIM_DIR = Path(mvbatch.sim.__file__).parent
REPO_ROOT = SIM_DIR.parent.parent
ALLOWED = ("mvbatch.sim", "mvbatch.schemas")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("mvbatch.sim")  # relative imports stay inside the package
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def allowed(name: str) -> bool:
    return not name.startswith("mvbatch") or any(
        name == root or name.startswith(root + ".") for root in ALLOWED
    )


def test_no_sim_module_imports_client_code() -> None:
    sources = sorted(SIM_DIR.rglob("*.py"))
    assert len(sources) > 10
    offenders = {
        f"{path.relative_to(SIM_DIR)}: {name}"
        for path in sources
        for name in imported_modules(path)
        if not allowed(name)
    }
    assert offenders == set()


def test_importing_the_whole_simulator_loads_no_client_module() -> None:
    script = (
        "import sys, mvbatch.sim.app, mvbatch.sim.server, mvbatch.sim.command, "
        "mvbatch.sim.__main__\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('mvbatch'))))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    loaded = result.stdout.split()
    assert "mvbatch.sim.app" in loaded
    assert [m for m in loaded if not allowed(m) and m != "mvbatch"] == []
