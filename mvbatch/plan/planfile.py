"""`plan --out PLAN.toml`: the reviewed plan, written and read back.

Owns: the plan file's format (`format = "mvbatch-plan/1"`), and the check
that the manifest it came from is unchanged, so that `run PLAN.toml` executes
exactly what was reviewed or refuses.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from mvbatch.errors import ManifestError, Problem
from mvbatch.plan.manifest import display_path, read_toml
from mvbatch.plan.planner import Plan

FORMAT = "mvbatch-plan/1"


def write(plan: Plan, out: Path) -> None:
    manifest_path = Path(os.path.relpath(plan.manifest.path.resolve(), out.resolve().parent))
    document: dict[str, Any] = {
        "format": FORMAT,
        "name": plan.name,
        "manifest": manifest_path.as_posix(),
        "manifest_sha256": plan.manifest.sha256,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cost_estimate": str(plan.cost_estimate),
        "tasks": [
            {
                "key": t.key,
                "shot": t.shot,
                "shots": list(t.shots),
                "model": t.model,
                "take": t.take,
                "variant": dict(t.variant),
                "input": t.public_input(),
                "cost_estimate": str(t.estimate.cost),
                "price_source": t.estimate.source,
                "price_class": t.estimate.price_class,
                "upper_bound": t.estimate.upper_bound,
            }
            for t in plan.tasks
        ],
    }
    if plan.max_usd is not None:
        document["max_usd"] = str(plan.max_usd)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(tomli_w.dumps(document), encoding="utf-8")
    temporary.replace(out)


def is_plan_file(path: Path) -> bool:
    try:
        return read_toml(path)[1].get("format") == FORMAT
    except ManifestError:  # unreadable, not TOML, nested too deep: the manifest reader says so
        return False


def read(path: Path) -> tuple[Path, str, list[str]]:
    """The manifest path, its reviewed hash and the reviewed task keys."""
    shown = display_path(path)
    document = read_toml(path)[1]
    try:
        manifest = (path.parent / document["manifest"]).resolve()
        keys = [task["key"] for task in document["tasks"]]
        return manifest, str(document["manifest_sha256"]), keys
    except (KeyError, TypeError) as error:
        raise ManifestError([Problem(shown, f"not a readable mvbatch plan ({error})")]) from None


def check_unchanged(path: Path, plan: Plan, reviewed_sha256: str, reviewed_keys: list[str]) -> None:
    shown = display_path(path)
    if plan.manifest.sha256 != reviewed_sha256:
        raise ManifestError(
            [
                Problem(
                    shown,
                    f"the manifest {plan.manifest.display} has changed "
                    "since this plan was written; review it again with "
                    "`mvbatch plan --out`",
                )
            ]
        )
    planned = [t.key for t in plan.tasks]
    if sorted(planned) != sorted(reviewed_keys):
        raise ManifestError(
            [
                Problem(
                    shown,
                    "the tasks planned now differ from the reviewed "
                    "plan (a referenced file changed?); review it again with "
                    "`mvbatch plan --out`",
                )
            ]
        )
