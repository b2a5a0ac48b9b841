"""`export`: which plan and ledger side the export speaks of, then the export itself.

Picks the side as `report` does (the manifest's last run's, else the
default) and hands `report.export` the ledger, the plan and the folders.

Must not: write anything but what `report.export` writes, or download (the
hint it passes names `mvbatch report`, which does).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mvbatch.commands import folders
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.ledger import open_ledger
from mvbatch.plan import manifest
from mvbatch.report.export import ExportResult, export_takes
from mvbatch.settings import Settings


def export_manifest(path: Path, dest: Path, settings: Settings, *, approved: bool) -> ExportResult:
    """`export`: the manifest's takes (approved only with `approved`) copied into `dest`."""
    name = manifest.load(manifest_of(path)).manifest.name
    folders.writable(settings.state_dir, folders.STATE)  # where the ledger is opened
    with open_ledger(settings.ledger_location()) as ledger:
        run = ledger.last_run(name)
        env = str(run["env"]) if run is not None else default_env(settings)
        the_plan = build_plan(path, settings, env)
        return export_takes(
            ledger,
            the_plan,
            env,
            settings.output_dir,
            dest,
            approved_only=approved,
            fetch_hint=f"mvbatch report {shlex.quote(str(path))}",
        )
